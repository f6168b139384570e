//! The pipeline: the stages of flow-archiver wired together over one state store
//! (`docs/design.md`, "Pipeline").
//!
//! [`Pipeline`] owns the components built from a validated [`Config`] — state store,
//! retention policy, object store, publisher, dead-letter sink, audit log — and offers
//! what the CLI, the API and the service do with them:
//! - [`run`]: the long-running service, one task per stage;
//! - [`sweep`]: archive every due flow once, its dry run, and `archive` of one flow;
//! - [`purge`] and [`erase`]: remove archived flows when their time is up, or on request;
//! - [`holds`]: legal holds;
//! - [`archiver`]: the archive commit protocol for one sealed intent;
//! - [`ingest`]: decode and store input; [`scheduler`]: plan due flows into segments.
//!
//! Its fields are private: other modules go through these operations, so the lock
//! that orders holds before removals, and the rules about what may be sealed, cannot be
//! bypassed.

pub mod archiver;
pub mod erase;
mod error;
pub mod holds;
pub mod ingest;
mod jobs;
pub mod purge;
pub mod run;
pub mod scheduler;
pub mod sweep;

use std::sync::Arc;

pub use archiver::{ArchivedSegment, Archiver};
pub use error::PipelineError;
pub use holds::HoldList;
pub use ingest::{Ingest, IngestTotals};
pub use run::{RunReport, SHUTDOWN_PATIENCE};
pub use scheduler::{plan, IntentIds};
pub use sweep::{PlannedSegment, SweepReport};

use crate::archive::ArchiveStore;
use crate::config::{Config, Destination};
use crate::event::Decoder;
use crate::policy::{Clock, RetentionPolicy};
use crate::publish::{
    DeadLetterSink, FileDeadLetters, FilePublisher, KafkaDeadLetters, KafkaPublisher,
    NatsDeadLetters, NatsPublisher, Publisher,
};
use crate::source::open_spec;
use crate::state::{StateError, StateStore, StoreStats};

/// The components of one flow-archiver instance.
pub struct Pipeline {
    config: Config,
    store: Arc<dyn StateStore>,
    policy: Arc<RetentionPolicy>,
    objects: ArchiveStore,
    publisher: Arc<dyn Publisher>,
    dead_letters: Arc<dyn DeadLetterSink>,
    clock: Arc<dyn Clock>,
    audit: Arc<crate::audit::AuditLog>,
    ids: IntentIds,
    /// Held while a hold changes and while an object is purged or erased, so that once
    /// `hold` returns no removal that has not yet checked the holds can proceed.
    removal: tokio::sync::Mutex<()>,
    /// When `run` last stored input, in ms since `started` (for `run --until-idle`).
    started: std::time::Instant,
    last_input_ms: std::sync::atomic::AtomicU64,
}

/// Gives back journal files that archival has mostly emptied (see
/// [`StateStore::compact`]); a failure is logged and retried at the next pass.
async fn compact_journal(store: Arc<dyn StateStore>) {
    let started = std::time::Instant::now();
    match blocking(move || store.compact()).await {
        Ok(c) if c.files > 0 => tracing::info!(
            files = c.files,
            moved_events = c.moved_events,
            freed_bytes = c.freed_bytes,
            seconds = started.elapsed().as_secs_f64(),
            "Compacted the event journal."
        ),
        Ok(_) => {}
        Err(error) => {
            crate::telemetry::metrics().failed("storage");
            tracing::warn!(%error, "Compacting the event journal failed; retrying at the next pass.")
        }
    }
}

/// Runs a blocking state-store call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> Result<T, PipelineError> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

impl Pipeline {
    /// Opens the state store, object store and destinations named by `config`.
    pub async fn open(config: Config, clock: Arc<dyn Clock>) -> Result<Pipeline, PipelineError> {
        let store = crate::state::open(&config.state)?;
        let policy = RetentionPolicy::new(config.retention.clone());
        let updated = store.apply_policy(&policy)?;
        if updated > 0 {
            tracing::info!(
                flows = updated,
                "Retention policy changed; deadlines recomputed."
            );
        }
        let objects = ArchiveStore::from_config(&config.archive)?;
        let publisher: Arc<dyn Publisher> = match config.publish.destination {
            Destination::File => Arc::new(FilePublisher::open(&config.publish.archived_path)?),
            Destination::Kafka => Arc::new(KafkaPublisher::open(&config.kafka)?),
            Destination::Nats => Arc::new(NatsPublisher::open(&config.nats).await?),
        };
        let dead_letters: Arc<dyn DeadLetterSink> = match config.dead_letter.destination {
            Destination::File => Arc::new(FileDeadLetters::open(&config.dead_letter.path)?),
            Destination::Kafka => Arc::new(KafkaDeadLetters::open(&config.kafka)?),
            Destination::Nats => Arc::new(NatsDeadLetters::open(&config.nats).await?),
        };
        let audit = Arc::new(crate::audit::AuditLog::open_for(&config).await?);
        Ok(Pipeline {
            audit,
            store,
            policy: Arc::new(policy),
            objects,
            publisher,
            dead_letters,
            clock,
            ids: IntentIds::default(),
            removal: tokio::sync::Mutex::new(()),
            started: std::time::Instant::now(),
            last_input_ms: std::sync::atomic::AtomicU64::new(0),
            config,
        })
    }

    /// The validated configuration it was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The archive's object store.
    pub fn objects(&self) -> &ArchiveStore {
        &self.objects
    }

    /// The state store (shared with the API of `run`, which reads live flows from it).
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// The time by the pipeline's clock (pinned by `--now` for sweep and purge).
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Counts of live flows, stored events, pending intents and timers.
    pub async fn stats(&self) -> Result<StoreStats, PipelineError> {
        let store = self.store.clone();
        blocking(move || store.stats()).await
    }

    /// Appends to the audit trail, durably.
    pub async fn audit(&self, record: crate::audit::AuditRecord) -> Result<(), PipelineError> {
        Ok(self.audit.append(record).await?)
    }

    pub fn ingest_stage(&self) -> Ingest {
        Ingest {
            decoder: Decoder::new(&self.config.input),
            store: self.store.clone(),
            policy: self.policy.clone(),
            dead_letters: self.dead_letters.clone(),
            clock: self.clock.clone(),
            batch_size: self.config.input.batch_size,
        }
    }

    pub fn archiver(&self) -> Archiver {
        Archiver {
            store: self.store.clone(),
            objects: self.objects.clone(),
            publisher: self.publisher.clone(),
            spool_dir: self.config.archive.spool_dir.clone(),
            frame_target: self.config.archive.frame_target_bytes,
            audit: self.audit.clone(),
            policy: self.policy.clone(),
        }
    }

    /// Ingests a file (`PATH`, `file:PATH`) or stdin (`-`) to its end.
    pub async fn ingest_input(
        &self,
        spec: &str,
        on_batch: &mut (dyn FnMut(&IngestTotals) + Send),
    ) -> Result<IngestTotals, PipelineError> {
        let mut source = open_spec(spec, false, self.config.input.max_event_bytes)?;
        self.ingest_stage()
            .run(
                &mut source,
                &tokio_util::sync::CancellationToken::new(),
                on_batch,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{FlowEvent, FlowStatus};
    use crate::state::test_support::{
        archive_now, default_policy, event as test_event, open_store,
    };

    fn storage_failures() -> u64 {
        crate::telemetry::metrics()
            .failures
            .get_or_create(&crate::telemetry::Stage {
                stage: "storage".into(),
            })
            .get()
    }

    /// A compaction that cannot read what it must move (here: a damaged journal byte)
    /// fails, counts a storage failure and leaves every event where it was.
    #[tokio::test]
    async fn a_failed_compaction_is_counted_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn StateStore> = Arc::new(open_store(dir.path(), 4096));
        let policy = default_policy();
        let event = |flow: &str, id: String, status| FlowEvent {
            status,
            event_type: format!("flow.{status}").into(),
            ..test_event(
                flow,
                &id,
                format!(r#"{{"id":"{id}","pad":"{}"}}"#, "x".repeat(40)),
            )
        };
        // One file of finished flows and the first event of a running one, then a
        // second file: the first becomes mostly dead once the finished flows go.
        let mut first: Vec<FlowEvent> = (0..80)
            .map(|i| {
                event(
                    &format!("done-{}", i % 8),
                    format!("d{i}"),
                    FlowStatus::Completed,
                )
            })
            .collect();
        first.push(event("running", "r0".into(), FlowStatus::Running));
        store.ingest(&first, &policy, 0, None).unwrap();
        store
            .ingest(
                &[event("running", "r1".into(), FlowStatus::Running)],
                &policy,
                0,
                None,
            )
            .unwrap();
        let done: Vec<String> = (0..8).map(|i| format!("done-{i}")).collect();
        let done: Vec<&str> = done.iter().map(String::as_str).collect();
        archive_now(&*store, "i", &done);

        // Damage the running flow's first event, the one compaction must move.
        let path = dir.path().join("journal/00000001.log");
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(4).position(|w| w == b"\"r0\"").unwrap();
        bytes[at + 1] = b'R';
        std::fs::write(&path, &bytes).unwrap();

        let before = storage_failures();
        compact_journal(store.clone()).await;
        assert!(storage_failures() > before, "the failure is counted");
        assert!(path.exists(), "nothing was moved or deleted");
        let err = store
            .for_each_event("t", "running", 1, &mut |_| Ok(()))
            .expect_err("the damaged event is still an error, not different history");
        assert!(err.to_string().contains("CRC"), "{err}");
    }
}
