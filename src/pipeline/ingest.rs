//! The ingest stage: source → decode → dead letters / state store → commit.
//!
//! Order of effects per batch, which is what makes a crash harmless: dead letters are
//! written durably, then the good events and the source checkpoint in one state
//! transaction, then the source is told to acknowledge upstream. A crash before the
//! state commit re-reads the batch (dead letters may repeat, with the same `id`); a
//! crash after it loses nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::PipelineError;
use crate::event::{Decoder, RejectReason};
use crate::failpoint;
use crate::flow::FlowEvent;
use crate::policy::{Clock, RetentionPolicy};
use crate::publish::{DeadLetter, DeadLetterSink};
use crate::source::{Batch, Source};
use crate::state::{IngestOutcome, StateError, StateStore};
use crate::time::rfc3339_ms;

/// Running totals of an ingest.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct IngestTotals {
    pub records: u64,
    pub bytes: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub reopened: u64,
    pub batches: u64,
    pub dead_letter_reasons: BTreeMap<String, u64>,
}

impl IngestTotals {
    /// The CLI's summary: counts, where dead letters went, and their reasons.
    pub fn summary<'a>(&'a self, dead_letters: &'a std::path::Path) -> impl std::fmt::Display + 'a {
        struct Summary<'a>(&'a IngestTotals, &'a std::path::Path);
        impl std::fmt::Display for Summary<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let t = self.0;
                write!(
                    f,
                    "ingested {} records ({}): {} stored, {} duplicates, {} dead-lettered",
                    t.records,
                    crate::units::human_bytes(t.bytes),
                    t.stored,
                    t.duplicates,
                    t.dead_lettered,
                )?;
                if t.dead_lettered > 0 {
                    write!(f, " -> {}", self.1.display())?;
                }
                writeln!(f)?;
                for (reason, n) in &t.dead_letter_reasons {
                    writeln!(f, "  {reason}: {n}")?;
                }
                Ok(())
            }
        }
        Summary(self, dead_letters)
    }
}

/// A batch's durable write in flight; it hands the batch's events back.
/// A batch being written: the outcome, and the events and checkpoint handed back for
/// another attempt while the disk is full.
type PendingWrite = tokio::task::JoinHandle<(
    Result<IngestOutcome, StateError>,
    Vec<FlowEvent>,
    Option<Vec<u8>>,
)>;

/// A batch whose durable write runs while the next one is decoded.
struct InFlight {
    write: PendingWrite,
    /// The source's batch number, acknowledged once the write is durable.
    seq: u64,
    span: tracing::Span,
}

/// Retries of a batch while the state store's disk is full: from this ...
const DISK_FULL_FIRST_RETRY: Duration = Duration::from_millis(250);
/// ... doubling up to this, so that ingest resumes within seconds of space returning.
const DISK_FULL_MAX_RETRY: Duration = Duration::from_secs(5);

pub struct Ingest {
    pub(crate) decoder: Decoder,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) policy: Arc<RetentionPolicy>,
    pub(crate) dead_letters: Arc<dyn DeadLetterSink>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) batch_size: usize,
}

impl Ingest {
    /// Consumes `source` until it ends or `cancel` fires; `on_batch` sees the totals
    /// after every durable batch (progress bars, metrics).
    pub async fn run(
        &self,
        source: &mut dyn Source,
        cancel: &CancellationToken,
        on_batch: &mut (dyn FnMut(&IngestTotals) + Send),
    ) -> Result<IngestTotals, PipelineError> {
        if source.checkpoint_in_state() {
            let store = self.store.clone();
            let name = source.name().to_string();
            let checkpoint = tokio::task::spawn_blocking(move || store.checkpoint(&name)).await??;
            if let Some(cp) = checkpoint {
                source.resume(&cp).await?;
            }
        }
        let mut totals = IngestTotals::default();
        // Decoding batch N+1 overlaps the durable write of batch N; writes (and so
        // checkpoints and upstream commits) still happen strictly in order.
        let mut writing: Option<InFlight> = None;
        let in_state = source.checkpoint_in_state();
        let messaging = source.messaging();
        loop {
            let batch = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                batch = source.next_batch(self.batch_size) => batch?,
            };
            let Some(batch) = batch else { break };
            if batch.records.is_empty() {
                // The input is idle: make what is in flight durable and acknowledged.
                if let Some(previous) = writing.take() {
                    if self
                        .finish_write(previous, source, &mut totals, on_batch, cancel)
                        .await?
                        .is_none()
                    {
                        break;
                    }
                }
                source.commit(batch.seq).await?;
                continue;
            }
            let seq = batch.seq;
            let span = batch_span(&messaging, batch.records.len());
            let (good, checkpoint) = self
                .decode(source.name(), batch, &mut totals)
                .instrument(span.clone())
                .await?;
            if crate::traces::enabled() {
                // A batch has no single parent: it links to each message's own trace
                // (the SDK keeps the first 128 links of a span).
                for e in good.iter().filter(|e| e.traceparent.is_some()).take(128) {
                    crate::traces::link(&span, e.traceparent.as_deref(), e.tracestate.as_deref());
                }
            }
            let mut written = Vec::new();
            if let Some(previous) = writing.take() {
                match self
                    .finish_write(previous, source, &mut totals, on_batch, cancel)
                    .await?
                {
                    Some(events) => written = events,
                    // Shut down while the disk was full: that batch is not stored, so
                    // no later one may be either (the checkpoint would skip it).
                    None => break,
                }
            }
            let write = self.start_write(good, source.name(), checkpoint.filter(|_| in_state));
            writing = Some(InFlight { write, seq, span });
            // The previous batch's events are freed here, while the next write runs:
            // freeing them on the writer's thread made both threads contend for the
            // allocator's lock.
            drop(written);
        }
        if let Some(previous) = writing.take() {
            self.finish_write(previous, source, &mut totals, on_batch, cancel)
                .await?;
        }
        source.close().await?;
        Ok(totals)
    }

    /// Decodes one batch and writes its dead letters durably; returns the good events
    /// and the batch checkpoint.
    pub async fn decode(
        &self,
        source_name: &str,
        batch: Batch,
        totals: &mut IngestTotals,
    ) -> Result<(Vec<FlowEvent>, Option<Vec<u8>>), PipelineError> {
        let now = self.clock.now_ms();
        let mut good = Vec::with_capacity(batch.records.len());
        let mut bad = Vec::new();
        for mut record in batch.records {
            totals.records += 1;
            totals.bytes += record.original_len;
            let decoded = if let Some(detail) = &record.given_up {
                Err(crate::event::Rejection {
                    reason: RejectReason::TooManyDeliveries,
                    detail: detail.clone(),
                })
            } else if record.truncated {
                Err(crate::event::Rejection {
                    reason: RejectReason::Oversize,
                    detail: format!(
                        "{} bytes exceeds input.max_event_bytes = {}",
                        record.original_len,
                        self.decoder.max_event_bytes()
                    ),
                })
            } else {
                self.decoder
                    .decode_record(&mut record.payload, &record.headers, now)
            };
            match decoded {
                Ok(event) => good.push(event),
                Err(rejection) => {
                    *totals
                        .dead_letter_reasons
                        .entry(rejection.reason.as_str().to_string())
                        .or_default() += 1;
                    bad.push(dead_letter(source_name, record, rejection, now));
                }
            }
        }
        let metrics = crate::telemetry::metrics();
        metrics.records_read.inc_by((good.len() + bad.len()) as u64);
        if !bad.is_empty() {
            if let Err(e) = self.dead_letters.send(&bad).await {
                metrics.failed("publish");
                return Err(e.into());
            }
            totals.dead_lettered += bad.len() as u64;
            for letter in &bad {
                metrics.dead_lettered(letter.reason.as_str(), 1);
            }
        }
        Ok((good, batch.checkpoint))
    }

    fn start_write(
        &self,
        good: Vec<FlowEvent>,
        source_name: &str,
        checkpoint: Option<Vec<u8>>,
    ) -> PendingWrite {
        let store = self.store.clone();
        let policy = self.policy.clone();
        let name = source_name.to_string();
        let now = self.clock.now_ms();
        tokio::task::spawn_blocking(move || {
            let cp = checkpoint.as_deref().map(|c| (name.as_str(), c));
            let bytes: u64 = good.iter().map(|e| e.raw.len() as u64).sum();
            let outcome = store
                .room(bytes)
                .and_then(|()| store.ingest(&good, &policy, now, cp));
            (outcome, good, checkpoint)
        })
    }

    /// Writes the batch, waiting while the state store's disk is full: nothing is
    /// acknowledged meanwhile, `/readyz` says so, and the batch is stored as soon as
    /// there is room. `None` when shutdown came first (the batch stays unacknowledged
    /// and comes again after the restart).
    async fn write_when_room(
        &self,
        write: PendingWrite,
        source_name: &str,
        span: &tracing::Span,
        cancel: &CancellationToken,
    ) -> Result<Option<(Result<IngestOutcome, StateError>, Vec<FlowEvent>)>, PipelineError> {
        let (mut outcome, mut events, mut checkpoint) = write.instrument(span.clone()).await?;
        let mut paused: Option<std::time::Instant> = None;
        let mut delay = DISK_FULL_FIRST_RETRY;
        while let Err(e) = outcome.as_ref().map(drop) {
            if !e.is_disk_full() {
                break;
            }
            let metrics = crate::telemetry::metrics();
            if paused.is_none() {
                paused = Some(std::time::Instant::now());
                metrics.state_disk_full.set(1);
                metrics.failed("state");
                tracing::error!(parent: span, error = %e, "The state store's disk is full: ingest is paused and nothing more is acknowledged; it resumes by itself once archiving or an operator frees space.");
            }
            tokio::select! {
                _ = cancel.cancelled() => {
                    metrics.state_disk_full.set(0);
                    return Ok(None);
                }
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(DISK_FULL_MAX_RETRY);
            (outcome, events, checkpoint) = self
                .start_write(events, source_name, checkpoint)
                .instrument(span.clone())
                .await?;
        }
        if let Some(since) = paused {
            crate::telemetry::metrics().state_disk_full.set(0);
            tracing::warn!(parent: span, paused_seconds = since.elapsed().as_secs_f64(), "Space is back: ingest resumed.");
        }
        Ok(Some((outcome, events)))
    }

    /// Waits for the batch's write, then acknowledges it upstream. Returns its events
    /// (to be freed off the writer's thread), or `None` when shutdown came while the
    /// disk was full and the batch was not stored.
    async fn finish_write(
        &self,
        in_flight: InFlight,
        source: &mut dyn Source,
        totals: &mut IngestTotals,
        on_batch: &mut (dyn FnMut(&IngestTotals) + Send),
        cancel: &CancellationToken,
    ) -> Result<Option<Vec<FlowEvent>>, PipelineError> {
        let InFlight { write, seq, span } = in_flight;
        let Some((outcome, events)) = self
            .write_when_room(write, source.name(), &span, cancel)
            .await?
        else {
            return Ok(None);
        };
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                crate::telemetry::metrics().failed("state");
                crate::traces::record_error(&span, &e);
                tracing::error!(parent: &span, error = %e, trace_id = %crate::traces::trace_id(&span), "Storing a batch failed.");
                return Err(e.into());
            }
        };
        span.record("flow_archiver.events.stored", outcome.stored);
        span.record("flow_archiver.events.duplicate", outcome.duplicates);
        let metrics = crate::telemetry::metrics();
        metrics.events_ingested.inc_by(outcome.stored);
        metrics.events_duplicate.inc_by(outcome.duplicates);
        totals.stored += outcome.stored;
        totals.duplicates += outcome.duplicates;
        totals.reopened += outcome.reopened;
        totals.batches += 1;
        failpoint::hit("before-ack");
        source.commit(seq).instrument(span).await?;
        failpoint::hit("after-ingest");
        on_batch(totals);
        Ok(Some(events))
    }
}

/// The span of one ingest batch, named and attributed per the OpenTelemetry messaging
/// conventions (`process {destination}`, a consumer span).
fn batch_span(m: &crate::source::Messaging, records: usize) -> tracing::Span {
    tracing::info_span!(
        parent: None,
        "process",
        "otel.name" = %format!("process {}", m.destination),
        "otel.kind" = "consumer",
        "messaging.system" = m.system,
        "messaging.operation.type" = "process",
        "messaging.destination.name" = %m.destination,
        "messaging.consumer.group.name" = m.consumer_group.as_deref(),
        "messaging.batch.message_count" = records,
        "flow_archiver.events.stored" = tracing::field::Empty,
        "flow_archiver.events.duplicate" = tracing::field::Empty,
    )
}

fn dead_letter(
    source: &str,
    record: crate::source::RawRecord,
    rejection: crate::event::Rejection,
    now_ms: i64,
) -> DeadLetter {
    let headers = record
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    DeadLetter {
        id: format!("{source}@{}", record.position),
        reason: rejection.reason,
        detail: rejection.detail,
        source: source.to_string(),
        position: record.position.to_string(),
        received_at: rfc3339_ms(now_ms),
        payload_base64: base64::engine::general_purpose::STANDARD.encode(&record.payload),
        payload_text: String::from_utf8(record.payload.clone()).ok(),
        payload_bytes: record.original_len,
        truncated: record.truncated,
        headers,
        key_base64: record
            .key
            .as_ref()
            .map(|k| base64::engine::general_purpose::STANDARD.encode(k)),
        original: record,
    }
}
