//! Executes the archive commit protocol for one intent (`docs/design.md`, "Archive"):
//!
//! ```text
//! sealed intent ─► build segment (spool file) ─► upload ─► read back + verify
//!   ─► record "verified" ─► publish flow.archived (durable) ─► delete state + intent
//! ```
//!
//! Every step is safe to repeat, so recovery simply runs the intent again from the
//! stage it recorded: a `Pending` intent is rebuilt from the still-present events into
//! the same bytes under the same key; a `Verified` one resumes at publish, skipping
//! events the publisher already holds. State is deleted only after the publisher
//! reported every record durable.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::PipelineError;
use crate::archive::{build_segment, read_manifest, ArchiveStore};
use crate::failpoint;
use crate::publish::{PublishedEvent, Publisher};
use crate::state::{
    ArchiveIntent, IntentStage, PartLocation, StateStore, UploadedSegment, VerifiedObject,
};

/// What one completed intent produced.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ArchivedSegment {
    pub intent_id: String,
    pub object_uri: String,
    pub parts: u64,
    pub events: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// From the start of processing to the state deletion.
    pub seconds: f64,
    /// Per part: `archived_at - deadline` in ms (how late after becoming due).
    #[serde(skip)]
    pub lateness_ms: Vec<i64>,
    /// Seconds spent in each step of the commit protocol.
    pub steps: StepSeconds,
    /// The `archive segment` trace, for log lines (empty when traces are off).
    #[serde(skip)]
    pub trace_id: String,
}

/// Time spent per commit-protocol step, summed over segments in reports.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct StepSeconds {
    pub build: f64,
    pub upload: f64,
    pub verify: f64,
    pub record: f64,
    pub publish: f64,
    pub delete: f64,
}

impl StepSeconds {
    pub fn add(&mut self, o: &StepSeconds) {
        self.build += o.build;
        self.upload += o.upload;
        self.verify += o.verify;
        self.record += o.record;
        self.publish += o.publish;
        self.delete += o.delete;
    }
}

fn lap(clock: &mut Instant) -> f64 {
    let s = clock.elapsed().as_secs_f64();
    *clock = Instant::now();
    s
}

#[derive(Clone)]
pub struct Archiver {
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) objects: ArchiveStore,
    pub(crate) publisher: Arc<dyn Publisher>,
    pub(crate) spool_dir: PathBuf,
    /// `archive.frame_target_bytes`.
    pub(crate) frame_target: u64,
    pub(crate) audit: Arc<crate::audit::AuditLog>,
    /// For the storage class a retention override gives a segment's flows.
    pub(crate) policy: Arc<crate::policy::RetentionPolicy>,
}

impl Archiver {
    /// Puts an S3 legal hold on a new object holding a flow on hold. Read after the
    /// upload: a hold placed before this read is seen here, and one placed after it
    /// finds the object when it lists the tenant's objects (`holds`), so the object
    /// carries the hold either way (`docs/compliance.md`).
    async fn hold_if_held(&self, intent: &ArchiveIntent, key: &str) -> Result<(), PipelineError> {
        let Some(s3) = self.objects.object_lock_client() else {
            return Ok(());
        };
        let store = self.store.clone();
        let holds = super::blocking(move || store.holds()).await?;
        let held = intent.parts.iter().any(|p| {
            holds
                .iter()
                .any(|h| h.tenant == p.meta.tenant && h.flow_id == p.meta.flow_id)
        });
        if held {
            s3.set_legal_hold(key, true).await?;
        }
        Ok(())
    }

    /// Runs the intent to completion. `resumed` says the intent may have been partly
    /// processed before (a restart, or a retry after an error).
    ///
    /// Traced as one `archive segment` trace: a child span per commit-protocol step and
    /// one `archive flow` span per flow part, linked to the flow's own trace; each
    /// part's `flow.archived` carries its `archive flow` span as `traceparent`.
    pub async fn process(
        &self,
        intent: Arc<ArchiveIntent>,
        resumed: bool,
    ) -> Result<ArchivedSegment, PipelineError> {
        let segment_span = tracing::info_span!(
            parent: None,
            "archive segment",
            "flow_archiver.segment.id" = %intent.id,
            "flow_archiver.tenant" = %intent.tenant,
            "flow_archiver.segment.parts" = intent.parts.len(),
            "flow_archiver.resumed" = resumed,
            "flow_archiver.segment.events" = tracing::field::Empty,
            "flow_archiver.segment.raw_bytes" = tracing::field::Empty,
            "flow_archiver.segment.stored_bytes" = tracing::field::Empty,
            "flow_archiver.object.uri" = %self.objects.uri(&intent.object_key),
        );
        let part_spans: Vec<tracing::Span> = if crate::traces::enabled() {
            intent
                .parts
                .iter()
                .map(|p| {
                    let m = &p.meta;
                    let span = tracing::info_span!(
                        parent: &segment_span,
                        "archive flow",
                        "flow_archiver.tenant" = %m.tenant,
                        "flow_archiver.flow_id" = %m.flow_id,
                        "flow_archiver.part" = m.part,
                        "flow_archiver.status" = p.archive_status.as_str(),
                        "flow_archiver.event_count" = m.event_count,
                    );
                    crate::traces::link(&span, m.traceparent.as_deref(), m.tracestate.as_deref());
                    span
                })
                .collect()
        } else {
            Vec::new()
        };
        let segment_id = intent.id.clone();
        let result = self
            .process_steps(intent, resumed, &part_spans)
            .instrument(segment_span.clone())
            .await
            .map(|mut done| {
                done.trace_id = crate::traces::trace_id(&segment_span);
                done
            });
        match &result {
            Ok(done) => {
                segment_span.record("flow_archiver.segment.events", done.events);
                segment_span.record("flow_archiver.segment.raw_bytes", done.raw_bytes);
                segment_span.record("flow_archiver.segment.stored_bytes", done.stored_bytes);
            }
            Err(error) => {
                tracing::warn!(
                    parent: &segment_span,
                    segment = %segment_id,
                    %error,
                    trace_id = %crate::traces::trace_id(&segment_span),
                    "Archive attempt failed."
                );
                crate::traces::record_error(&segment_span, error);
                for span in &part_spans {
                    crate::traces::record_error(span, error);
                }
            }
        }
        result
    }

    async fn process_steps(
        &self,
        intent: Arc<ArchiveIntent>,
        resumed: bool,
        part_spans: &[tracing::Span],
    ) -> Result<ArchivedSegment, PipelineError> {
        let started = Instant::now();
        let mut step = Instant::now();
        let mut steps = StepSeconds::default();
        let key = intent.object_key.clone();
        let upload = match &intent.stage {
            IntentStage::Verified(proof) => {
                self.locations_from_manifest(&intent, proof)
                    .instrument(tracing::info_span!("read manifest"))
                    .await?
            }
            IntentStage::Pending => {
                let spool = self.spool_dir.join(format!("{}.segment", intent.id));
                let store = self.store.clone();
                // Shared, not copied: an intent holds every part's metadata.
                let for_build = intent.clone();
                let path = spool.clone();
                let frame_target = self.frame_target;
                let upload = tokio::task::spawn_blocking(move || {
                    build_segment(&*store, &for_build, frame_target, &path)
                })
                .instrument(tracing::info_span!("build segment"))
                .await??;
                steps.build = lap(&mut step);
                // Retained until the last of its parts may be purged (Object Lock).
                let retain_until = intent.parts.iter().map(|p| p.purge_at_ms).max();
                // Planned so that a segment's flows share it (scheduler::plan).
                let class = intent.parts.first().and_then(|p| {
                    self.policy
                        .storage_class(&p.meta.tenant, p.meta.status, &p.meta.labels)
                });
                self.objects
                    .upload(
                        &key,
                        &spool,
                        &upload.object_sha256,
                        retain_until.unwrap_or_default(),
                        class,
                    )
                    .instrument(self.object_span("PutObject", &key, upload.object_size))
                    .await?;
                self.hold_if_held(&intent, &key).await?;
                steps.upload = lap(&mut step);
                failpoint::hit("after-upload");
                self.objects
                    .verify(&key, &upload.object_sha256, upload.object_size)
                    .instrument(tracing::info_span!("verify segment"))
                    .await?;
                steps.verify = lap(&mut step);
                let store = self.store.clone();
                let id = intent.id.clone();
                let proof = VerifiedObject {
                    object_sha256: upload.object_sha256.clone(),
                    object_size: upload.object_size,
                };
                tokio::task::spawn_blocking(move || store.record_upload(&id, &proof))
                    .instrument(tracing::info_span!("record verified"))
                    .await??;
                steps.record = lap(&mut step);
                let _ = tokio::fs::remove_file(&spool).await;
                failpoint::hit("after-verify");
                upload
            }
        };

        // Published records are seen by everyone: only while this instance holds the
        // intent (a lapsed lease means another instance resumed it).
        let store = self.store.clone();
        let id = intent.id.clone();
        tokio::task::spawn_blocking(move || store.confirm_claim(&id)).await??;
        let uri = self.objects.uri(&key);
        let mut events = PublishedEvent::archived(&intent, &upload, &uri);
        for (event, span) in events.iter_mut().zip(part_spans) {
            event.traceparent = crate::traces::traceparent(span);
        }
        if resumed {
            let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
            let done = self.publisher.already_published(&ids).await?;
            events.retain(|e| !done.contains(&e.id));
        }
        let (system, destination) = self.publisher.destination();
        self.publisher
            .publish(&events)
            .instrument(tracing::info_span!(
                "send",
                "otel.name" = %format!("send {destination}"),
                "otel.kind" = "producer",
                "messaging.system" = system,
                "messaging.operation.type" = "send",
                "messaging.destination.name" = %destination,
                "messaging.batch.message_count" = events.len(),
            ))
            .await?;
        steps.publish = lap(&mut step);
        failpoint::hit("after-publish");

        let store = self.store.clone();
        let id = intent.id.clone();
        tokio::task::spawn_blocking(move || store.complete(&id))
            .instrument(tracing::info_span!("delete state"))
            .await??;
        steps.delete = lap(&mut step);

        let archived_at = intent.archived_at_ms;
        Ok(ArchivedSegment {
            intent_id: intent.id.clone(),
            object_uri: uri,
            parts: intent.parts.len() as u64,
            events: upload.locations.iter().map(|l| l.event_count).sum(),
            raw_bytes: upload.locations.iter().map(|l| l.raw_bytes).sum(),
            stored_bytes: upload.object_size,
            seconds: started.elapsed().as_secs_f64(),
            lateness_ms: intent
                .parts
                .iter()
                .map(|p| archived_at - p.meta.deadline_ms.unwrap_or(archived_at))
                .collect(),
            steps,
            trace_id: String::new(),
        })
    }

    /// A client span for an object-store call, named as the S3 conventions name them
    /// (`S3.PutObject`) when the store is S3.
    fn object_span(&self, method: &str, key: &str, size: u64) -> tracing::Span {
        match self.objects.bucket() {
            Some(bucket) => tracing::info_span!(
                "S3",
                "otel.name" = %format!("S3.{method}"),
                "otel.kind" = "client",
                "rpc.system" = "aws-api",
                "rpc.service" = "S3",
                "rpc.method" = method,
                "aws.s3.bucket" = bucket,
                "aws.s3.key" = key,
                "flow_archiver.object.size" = size,
            ),
            None => tracing::info_span!(
                "upload",
                "otel.name" = %format!("file.{method}"),
                "flow_archiver.object.uri" = %self.objects.uri(key),
                "flow_archiver.object.size" = size,
            ),
        }
    }

    /// Rebuilds part locations of a verified object from its manifest (the object
    /// was read back intact before it was recorded as verified; checked again here).
    async fn locations_from_manifest(
        &self,
        intent: &ArchiveIntent,
        proof: &VerifiedObject,
    ) -> Result<UploadedSegment, PipelineError> {
        let key = &intent.object_key;
        self.objects
            .verify(key, &proof.object_sha256, proof.object_size)
            .await?;
        let manifest = read_manifest(&self.objects, key).await?;
        let matches = manifest.parts.len() == intent.parts.len()
            && manifest.parts.iter().zip(&intent.parts).all(|(m, p)| {
                m.tenant == p.meta.tenant && m.flow_id == p.meta.flow_id && m.part == p.meta.part
            });
        if !matches {
            return Err(PipelineError::Archive(
                crate::archive::ArchiveError::Format {
                    key: key.clone(),
                    detail: format!("manifest does not list the parts of intent {}", intent.id),
                },
            ));
        }
        Ok(UploadedSegment {
            object_sha256: proof.object_sha256.clone(),
            object_size: proof.object_size,
            locations: manifest
                .parts
                .iter()
                .map(|m| PartLocation {
                    offset: m.offset,
                    length: m.length,
                    frame_sha256: m.frame_sha256.clone(),
                    events_sha256: m.events_sha256.clone(),
                    event_count: m.event_count,
                    raw_bytes: m.raw_bytes,
                    plain_offset: m.plain_offset,
                    plain_length: m.plain_length,
                })
                .collect(),
        })
    }

    /// [`Archiver::process`] with exponential backoff (1 s doubling to 60 s) for up to
    /// `attempts` tries (`None`: until it succeeds or `cancel` fires). Each retry
    /// reloads the intent, which records how far the last try got.
    pub async fn process_with_retry(
        &self,
        intent: ArchiveIntent,
        mut resumed: bool,
        attempts: Option<u32>,
        cancel: &CancellationToken,
    ) -> Result<ArchivedSegment, PipelineError> {
        let mut delay = Duration::from_secs(1);
        let mut tries = 0;
        let mut current = Arc::new(intent);
        loop {
            tries += 1;
            match self.process(current.clone(), resumed).await {
                Ok(done) => {
                    record_success(&done);
                    let mut record = crate::audit::AuditRecord::new(
                        "archive",
                        "flow-archiver",
                        chrono::Utc::now().timestamp_millis(),
                    )
                    .count("flow_parts", done.parts)
                    .count("events", done.events)
                    .count("raw_bytes", done.raw_bytes)
                    .count("stored_bytes", done.stored_bytes);
                    record.tenant = Some(current.tenant.clone());
                    record.object_uri = Some(done.object_uri.clone());
                    // The segment is archived whatever happens to its audit line; a
                    // failed append is logged, not retried into a second archival.
                    if let Err(e) = self.audit.append(record).await {
                        tracing::error!(error = %e, "Audit line not written.");
                    }
                    return Ok(done);
                }
                Err(error) => {
                    crate::telemetry::metrics().failed(stage_of(&error));
                    if let PipelineError::State(crate::state::StateError::Fenced(_)) = &error {
                        // Another instance resumed it after this one's lease lapsed.
                        tracing::warn!(segment = %current.id, "Segment taken over by another instance; leaving it.");
                        return Err(error);
                    }
                    if attempts.is_some_and(|max| tries >= max) || cancel.is_cancelled() {
                        return Err(error);
                    }
                    tracing::info!(segment = %current.id, retry_in = ?delay, "Retrying the segment.");
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(error),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(60));
                    resumed = true;
                    let store = self.store.clone();
                    let id = current.id.clone();
                    let reloaded = tokio::task::spawn_blocking(move || store.intents()).await??;
                    match reloaded.into_iter().find(|i| i.id == id) {
                        Some(i) => current = Arc::new(i),
                        // Completed by the failed attempt after all (e.g. an error
                        // reported after the state deletion): nothing left to do.
                        None => return Err(error),
                    }
                }
            }
        }
    }
}

fn record_success(done: &ArchivedSegment) {
    let m = crate::telemetry::metrics();
    m.segments_archived.inc();
    m.flow_parts_archived.inc_by(done.parts);
    m.archived_raw_bytes.inc_by(done.raw_bytes);
    m.archived_stored_bytes.inc_by(done.stored_bytes);
    m.segment_upload_seconds.observe(done.steps.upload);
    for late in &done.lateness_ms {
        m.expiry_to_archived_seconds
            .observe((*late).max(0) as f64 / 1000.0);
    }
    m.last_archive_success.set(chrono::Utc::now().timestamp());
}

/// The pipeline stage an error belongs to, for `flow_archiver_failures_total{stage}`.
fn stage_of(error: &PipelineError) -> &'static str {
    match error {
        PipelineError::Archive(_) => "storage",
        PipelineError::Publish(_) => "publish",
        PipelineError::Source(_) => "source",
        _ => "state",
    }
}
