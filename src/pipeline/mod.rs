//! The running pipeline: stages wired together (DESIGN.md §2).
//!
//! [`Pipeline`] owns the components built from a validated [`Config`]. `run` starts
//! one task per stage — ingest, scheduler, archive — joined by a bounded channel (the
//! scheduler waits while the archive stage is busy) and stopped by one
//! [`CancellationToken`]: the source stops reading, in-flight segments finish or are
//! left as intents for the next start, and every task is awaited before `run` returns.

pub mod archiver;
pub mod erase;
pub mod ingest;
pub mod purge;
pub mod scheduler;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use archiver::{ArchivedSegment, Archiver};
pub use ingest::{Ingest, IngestTotals};
pub use scheduler::{plan, IntentIds};

use crate::archive::{ArchiveError, ArchiveStore};
use crate::config::{Config, Destination};
use crate::event::Decoder;
use crate::failpoint;
use crate::policy::{Clock, RetentionPolicy};
use crate::publish::{
    DeadLetterSink, FileDeadLetters, FilePublisher, KafkaDeadLetters, KafkaPublisher,
    NatsDeadLetters, NatsPublisher, PublishError, Publisher,
};
use crate::source::{Source, SourceError};
use crate::state::{ArchiveIntent, EmbeddedStore, StateError, StateStore};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("a pipeline task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    NotFound(String),
    /// The operation is not allowed in the current state (e.g. erasing a held flow).
    #[error("{0}")]
    Refused(String),
}

/// One planned segment, as a dry run reports it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlannedSegment {
    pub tenant: String,
    pub object_key: String,
    pub flows: Vec<String>,
    pub events: u64,
    pub raw_bytes: u64,
}

/// The outcome of a sweep (or dry run).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SweepReport {
    pub dry_run: bool,
    pub now: String,
    pub recovered_intents: u64,
    pub segments: u64,
    pub flow_parts: u64,
    pub events: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub seconds: f64,
    pub failures: Vec<String>,
    /// Dry run only: what a live run would write.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<PlannedSegment>,
    #[serde(skip)]
    pub segment_seconds: Vec<f64>,
    #[serde(skip)]
    pub lateness_ms: Vec<i64>,
    /// Time per commit-protocol step, summed over segments.
    pub steps: archiver::StepSeconds,
}

impl SweepReport {
    fn add(&mut self, s: &ArchivedSegment) {
        self.steps.add(&s.steps);
        self.segments += 1;
        self.flow_parts += s.parts;
        self.events += s.events;
        self.raw_bytes += s.raw_bytes;
        self.stored_bytes += s.stored_bytes;
        self.segment_seconds.push(s.seconds);
        self.lateness_ms.extend_from_slice(&s.lateness_ms);
    }
}

/// The components of one flow-archiver instance.
pub struct Pipeline {
    pub config: Config,
    pub store: Arc<dyn StateStore>,
    pub policy: Arc<RetentionPolicy>,
    pub objects: ArchiveStore,
    pub publisher: Arc<dyn Publisher>,
    pub dead_letters: Arc<dyn DeadLetterSink>,
    pub clock: Arc<dyn Clock>,
    pub audit: Arc<crate::audit::AuditLog>,
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
        let store = EmbeddedStore::open(&config.state)?;
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
            store: Arc::new(store),
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

    /// How long since `run` last read input (or since the pipeline opened).
    pub fn input_idle_for(&self) -> Duration {
        let last = self
            .last_input_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        self.started
            .elapsed()
            .saturating_sub(Duration::from_millis(last))
    }

    fn mark_input(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_input_ms
            .store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// Appends to the audit trail, durably.
    pub async fn audit(&self, record: crate::audit::AuditRecord) -> Result<(), PipelineError> {
        Ok(self.audit.append(record).await?)
    }

    /// Places a legal hold on a flow (all its parts, live and archived): recorded in
    /// the state store, published as `flow.hold` (the index marks the parts), audited.
    pub async fn hold(
        &self,
        tenant: &str,
        flow_id: &str,
        reason: &str,
        actor: &str,
    ) -> Result<(), PipelineError> {
        self.change_hold(tenant, flow_id, true, reason, actor).await
    }

    /// Releases a flow's legal hold; an error when there is none.
    pub async fn release(
        &self,
        tenant: &str,
        flow_id: &str,
        reason: &str,
        actor: &str,
    ) -> Result<(), PipelineError> {
        self.change_hold(tenant, flow_id, false, reason, actor)
            .await
    }

    async fn change_hold(
        &self,
        tenant: &str,
        flow_id: &str,
        held: bool,
        reason: &str,
        actor: &str,
    ) -> Result<(), PipelineError> {
        let now_ms = self.clock.now_ms();
        let hold = crate::state::Hold {
            tenant: tenant.to_string(),
            flow_id: flow_id.to_string(),
            reason: reason.to_string(),
            actor: actor.to_string(),
            at_ms: now_ms,
        };
        let store = self.store.clone();
        let (t, f, h) = (tenant.to_string(), flow_id.to_string(), hold.clone());
        let previous = {
            let _removal = self.removal.lock().await;
            blocking(move || store.set_hold(&t, &f, held.then_some(&h))).await?
        };
        if !held && previous.is_none() {
            return Err(PipelineError::NotFound(format!(
                "{tenant}/{flow_id} is not on hold"
            )));
        }
        self.publisher
            .publish(&[crate::publish::PublishedEvent::hold(
                crate::publish::FlowHold {
                    tenant: tenant.to_string(),
                    flow_id: flow_id.to_string(),
                    held,
                    reason: reason.to_string(),
                    actor: actor.to_string(),
                    at: now_ms * 1000,
                },
            )])
            .await?;
        let mut record =
            crate::audit::AuditRecord::new(if held { "hold" } else { "release" }, actor, now_ms)
                .flow(tenant, flow_id);
        record.reason = Some(reason.to_string());
        self.audit(record).await
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
            audit: self.audit.clone(),
        }
    }

    /// Plans the due flows without changing anything.
    pub async fn dry_run(&self, now_ms: i64) -> Result<SweepReport, PipelineError> {
        let store = self.store.clone();
        // A dry run lists everything due; its memory is proportional to the report.
        let due = blocking(move || store.due_flows(now_ms, usize::MAX)).await?;
        let intents = plan(due, &self.policy, &self.config.archive, now_ms, &self.ids);
        let mut report = SweepReport {
            dry_run: true,
            now: crate::time::rfc3339_ms(now_ms),
            ..Default::default()
        };
        for intent in intents {
            let events: u64 = intent.parts.iter().map(|p| p.meta.event_count).sum();
            let raw: u64 = intent.parts.iter().map(|p| p.meta.raw_bytes).sum();
            report.segments += 1;
            report.flow_parts += intent.parts.len() as u64;
            report.events += events;
            report.raw_bytes += raw;
            report.planned.push(PlannedSegment {
                tenant: intent.tenant.clone(),
                object_key: intent.object_key.clone(),
                flows: intent
                    .parts
                    .iter()
                    .map(|p| {
                        format!(
                            "{}/{} part {} ({})",
                            p.meta.tenant, p.meta.flow_id, p.meta.part, p.archive_status
                        )
                    })
                    .collect(),
                events,
                raw_bytes: raw,
            });
        }
        Ok(report)
    }

    /// Archives every due flow once (after finishing any interrupted intents), with
    /// `archive.concurrency` segments in flight. Stops sealing new segments after the
    /// first failure; failed intents stay in the store for the next run.
    pub async fn sweep(
        &self,
        now_ms: i64,
        on_segment: &mut (dyn FnMut(&SweepReport) + Send),
    ) -> Result<SweepReport, PipelineError> {
        let started = std::time::Instant::now();
        self.objects.preflight().await?;
        let mut report = SweepReport {
            now: crate::time::rfc3339_ms(now_ms),
            ..Default::default()
        };
        let archiver = self.archiver();
        let cancel = CancellationToken::new();
        let concurrency = self.config.archive.concurrency;
        let mut jobs: JoinSet<Result<ArchivedSegment, (String, PipelineError)>> = JoinSet::new();
        let spawn = |jobs: &mut JoinSet<_>, intent: ArchiveIntent, resumed: bool| {
            let archiver = archiver.clone();
            let cancel = cancel.clone();
            jobs.spawn(async move {
                let id = intent.id.clone();
                archiver
                    .process_with_retry(intent, resumed, Some(3), &cancel)
                    .await
                    .map_err(|e| (id, e))
            });
        };
        let mut collect = |report: &mut SweepReport,
                           done: Result<
            Result<ArchivedSegment, (String, PipelineError)>,
            tokio::task::JoinError,
        >| {
            match done {
                Ok(Ok(segment)) => report.add(&segment),
                Ok(Err((id, e))) => report.failures.push(format!("intent {id}: {e}")),
                Err(e) => report.failures.push(format!("archive task: {e}")),
            }
            on_segment(report);
        };

        let store = self.store.clone();
        let pending = blocking(move || store.intents()).await?;
        report.recovered_intents = pending.len() as u64;
        for intent in pending {
            while jobs.len() >= concurrency {
                if let Some(done) = jobs.join_next().await {
                    collect(&mut report, done);
                }
            }
            spawn(&mut jobs, intent, true);
        }

        let batch = self.config.archive.batch_size;
        'passes: while report.failures.is_empty() {
            let store = self.store.clone();
            let due = blocking(move || store.due_flows(now_ms, batch)).await?;
            if due.is_empty() {
                break;
            }
            let mut sealed_any = false;
            for intent in plan(due, &self.policy, &self.config.archive, now_ms, &self.ids) {
                let store = self.store.clone();
                let Some(sealed) = blocking(move || store.seal(intent)).await? else {
                    continue;
                };
                sealed_any = true;
                failpoint::hit("after-intent");
                while jobs.len() >= concurrency {
                    if let Some(done) = jobs.join_next().await {
                        collect(&mut report, done);
                    }
                }
                if !report.failures.is_empty() {
                    // Sealed but not started: it stays pending for the next run.
                    break 'passes;
                }
                spawn(&mut jobs, sealed, false);
            }
            if !sealed_any {
                break;
            }
        }
        // Every due flow is sealed: the journal files that the finished segments
        // emptied are compacted while the last ones are in flight, rather than after
        // them on an otherwise idle machine (compaction is safe beside archival).
        let early = report
            .failures
            .is_empty()
            .then(|| tokio::spawn(compact_journal(self.store.clone())));
        while let Some(done) = jobs.join_next().await {
            collect(&mut report, done);
        }
        if let Some(early) = early {
            if let Err(error) = early.await {
                // Its own failures are logged inside; this is a panic or a cancellation.
                tracing::warn!(%error, "The journal compaction task did not finish.");
            }
        }
        if report.failures.is_empty() {
            // The files the last segments emptied.
            compact_journal(self.store.clone()).await;
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Archives one live flow now, whatever its timer says.
    pub async fn archive_flow(
        &self,
        tenant: &str,
        flow_id: &str,
    ) -> Result<SweepReport, PipelineError> {
        self.objects.preflight().await?;
        let now_ms = self.clock.now_ms();
        let store = self.store.clone();
        let (t, f) = (tenant.to_string(), flow_id.to_string());
        let meta = blocking(move || store.live_flow(&t, &f))
            .await?
            .ok_or_else(|| PipelineError::NotFound(format!("no live flow {tenant}/{flow_id}")))?;
        let mut report = SweepReport {
            now: crate::time::rfc3339_ms(now_ms),
            ..Default::default()
        };
        for intent in plan(
            vec![meta],
            &self.policy,
            &self.config.archive,
            now_ms,
            &self.ids,
        ) {
            let store = self.store.clone();
            let Some(sealed) = blocking(move || store.seal(intent)).await? else {
                return Err(PipelineError::NotFound(format!(
                    "{tenant}/{flow_id} changed while being archived; try again"
                )));
            };
            failpoint::hit("after-intent");
            let done = self
                .archiver()
                .process_with_retry(sealed, false, Some(3), &CancellationToken::new())
                .await?;
            report.add(&done);
        }
        Ok(report)
    }

    /// The long-running service: ingest from `source` (if any) while archiving due
    /// flows every `scheduler.interval`, until `cancel` fires.
    pub async fn run(
        self: Arc<Self>,
        source: Option<Box<dyn Source>>,
        cancel: CancellationToken,
    ) -> Result<RunReport, PipelineError> {
        self.objects.preflight().await?;
        let concurrency = self.config.archive.concurrency;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(ArchiveIntent, bool)>(concurrency);
        let mut tasks: JoinSet<Result<RunReport, PipelineError>> = JoinSet::new();

        if let Some(mut source) = source {
            let ingest = self.ingest_stage();
            let cancel = cancel.clone();
            let this = self.clone();
            tasks.spawn(async move {
                let mut seen = 0;
                let totals = ingest
                    .run(&mut *source, &cancel, &mut |t| {
                        if t.records > seen {
                            seen = t.records;
                            this.mark_input();
                        }
                    })
                    .await?;
                tracing::info!(
                    records = totals.records,
                    stored = totals.stored,
                    "Ingest stopped."
                );
                Ok(RunReport {
                    ingest: totals,
                    ..Default::default()
                })
            });
        }

        // Purge: on start and every `scheduler.purge_interval`. A failed pass is
        // logged and counted; the next one repeats it (purges are idempotent).
        {
            let this = self.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(this.config.scheduler.purge_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let now_ms = this.clock.now_ms();
                    let pass = tokio::select! {
                        _ = cancel.cancelled() => break,
                        pass = this.purge(now_ms, false, "flow-archiver") => pass,
                    };
                    match pass {
                        Ok(r) if r.objects > 0 || r.recovered > 0 => tracing::info!(
                            objects = r.objects,
                            flow_parts = r.flow_parts,
                            bytes = r.bytes,
                            held_objects = r.held_objects,
                            "Purged."
                        ),
                        Ok(_) => {}
                        Err(error) => {
                            crate::telemetry::metrics().failed("storage");
                            tracing::warn!(%error, "Purge pass failed; retrying at the next interval.");
                        }
                    }
                }
                Ok(RunReport::default())
            });
        }

        // Scheduler: finish interrupted intents, then seal due flows on every tick.
        {
            let this = self.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move {
                let store = this.store.clone();
                for intent in blocking(move || store.intents()).await? {
                    if tx.send((intent, true)).await.is_err() {
                        return Ok(RunReport::default());
                    }
                }
                let mut tick = tokio::time::interval(this.config.scheduler.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let now_ms = this.clock.now_ms();
                    let store = this.store.clone();
                    let batch = this.config.archive.batch_size;
                    let due = blocking(move || store.due_flows(now_ms, batch)).await?;
                    let metrics = crate::telemetry::metrics();
                    metrics.timers_due.set(due.len() as i64);
                    let store = this.store.clone();
                    if let Ok(stats) = blocking(move || store.stats()).await {
                        metrics.flows_tracked.set(stats.live_flows as i64);
                    }
                    for intent in plan(due, &this.policy, &this.config.archive, now_ms, &this.ids) {
                        let store = this.store.clone();
                        let Some(sealed) = blocking(move || store.seal(intent)).await? else {
                            continue;
                        };
                        failpoint::hit("after-intent");
                        tokio::select! {
                            // Cancelled while the archive stage is busy: the sealed
                            // intent is picked up again at the next start.
                            _ = cancel.cancelled() => break,
                            sent = tx.send((sealed, false)) => if sent.is_err() { break },
                        }
                    }
                    compact_journal(this.store.clone()).await;
                }
                Ok(RunReport::default())
            });
        }

        // Archive stage: up to `concurrency` intents in flight.
        {
            let archiver = self.archiver();
            let cancel = cancel.clone();
            tasks.spawn(async move {
                let mut report = RunReport::default();
                let mut jobs = JoinSet::new();
                let record = |report: &mut RunReport,
                              done: Result<
                    Result<ArchivedSegment, PipelineError>,
                    tokio::task::JoinError,
                >| match done {
                    Ok(Ok(s)) => {
                        tracing::info!(
                            segment = %s.intent_id,
                            uri = %s.object_uri,
                            parts = s.parts,
                            events = s.events,
                            raw_bytes = s.raw_bytes,
                            stored_bytes = s.stored_bytes,
                            seconds = s.seconds,
                            trace_id = %s.trace_id,
                            "Archived segment."
                        );
                        report.sweep.add(&s);
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "Segment left for the next start.");
                        report.sweep.failures.push(error.to_string());
                    }
                    Err(error) => report.sweep.failures.push(error.to_string()),
                };
                while let Some((intent, resumed)) = rx.recv().await {
                    while jobs.len() >= concurrency {
                        if let Some(done) = jobs.join_next().await {
                            record(&mut report, done);
                        }
                    }
                    let archiver = archiver.clone();
                    let cancel = cancel.clone();
                    jobs.spawn(async move {
                        archiver
                            .process_with_retry(intent, resumed, None, &cancel)
                            .await
                    });
                }
                while let Some(done) = jobs.join_next().await {
                    record(&mut report, done);
                }
                Ok(report)
            });
        }

        let mut total = RunReport::default();
        let mut first_error = None;
        loop {
            let next = if cancel.is_cancelled() {
                match tokio::time::timeout(SHUTDOWN_PATIENCE, tasks.join_next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        tracing::warn!("In-flight work did not finish in time; aborting it (intents resume at the next start).");
                        tasks.abort_all();
                        continue;
                    }
                }
            } else {
                tokio::select! {
                    next = tasks.join_next() => next,
                    _ = cancel.cancelled() => continue,
                }
            };
            let Some(done) = next else { break };
            match done {
                Ok(Ok(r)) => total.merge(r),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "Pipeline stage failed; shutting down.");
                    cancel.cancel();
                    first_error.get_or_insert(e);
                }
                Err(e) if e.is_cancelled() => {}
                Err(e) => {
                    cancel.cancel();
                    first_error.get_or_insert(PipelineError::Task(e));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }
}

/// What `run` did before it stopped.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub ingest: IngestTotals,
    pub sweep: SweepReport,
}

impl RunReport {
    fn merge(&mut self, other: RunReport) {
        if other.ingest.records > 0 || other.ingest.batches > 0 {
            self.ingest = other.ingest;
        }
        let s = other.sweep;
        self.sweep.segments += s.segments;
        self.sweep.flow_parts += s.flow_parts;
        self.sweep.events += s.events;
        self.sweep.raw_bytes += s.raw_bytes;
        self.sweep.stored_bytes += s.stored_bytes;
        self.sweep.failures.extend(s.failures);
    }
}

/// How long `run` waits for in-flight work after a shutdown signal.
pub const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(30);

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
