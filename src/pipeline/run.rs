//! `run`, the long-running service: one task per stage — ingest, scheduler, archive,
//! purge — joined by a bounded channel (the scheduler waits while the archive stage is
//! busy) and stopped by one [`CancellationToken`]. On cancellation the source stops
//! reading and commits what is durable, in-flight segments finish (or stay intents for
//! the next start), and every task is awaited before `run` returns, within
//! [`SHUTDOWN_PATIENCE`].

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use super::archiver::ArchivedSegment;
use super::ingest::IngestTotals;
use super::jobs::BoundedJobs;
use super::sweep::SweepReport;
use super::{blocking, compact_journal, Pipeline, PipelineError};
use crate::source::Source;
use crate::state::ArchiveIntent;

/// How long `run` waits for in-flight work after a shutdown signal.
pub const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(30);

impl Pipeline {
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
                let mut ticks = Ticks::every(this.config.scheduler.purge_interval);
                while ticks.next(&cancel).await {
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
                let mut ticks = Ticks::every(this.config.scheduler.interval);
                // The gauge of tracked flows: the embedded store keeps the count, a
                // shared database counts rows, so every instance asking every tick
                // would scan the live set once a second each.
                let count_every = match this.config.state.backend {
                    crate::config::StateBackend::Embedded => std::time::Duration::ZERO,
                    crate::config::StateBackend::Postgres => std::time::Duration::from_secs(30),
                };
                let mut counted: Option<std::time::Instant> = None;
                while ticks.next(&cancel).await {
                    let tick = async {
                        // Intents no live instance works on: at start, those a stopped
                        // run left; with a shared store, also those of an instance whose
                        // lease expired (`docs/design.md`, "Scale").
                        let store = this.store.clone();
                        for intent in blocking(move || store.claim_intents()).await? {
                            if tx.send((intent, true)).await.is_err() {
                                return Ok(false);
                            }
                        }
                        let now_ms = this.clock.now_ms();
                        let store = this.store.clone();
                        let batch = this.config.archive.batch_size;
                        let due = blocking(move || store.due_flows(now_ms, batch)).await?;
                        let metrics = crate::telemetry::metrics();
                        metrics.timers_due.set(due.len() as i64);
                        if counted.is_none_or(|at| at.elapsed() >= count_every) {
                            counted = Some(std::time::Instant::now());
                            let store = this.store.clone();
                            if let Ok(stats) = blocking(move || store.stats()).await {
                                metrics.flows_tracked.set(stats.live_flows as i64);
                            }
                        }
                        let mut sealing = this.seal_due(due, now_ms);
                        while let Some(sealed) = sealing.next().await? {
                            tokio::select! {
                                // Cancelled while the archive stage is busy: the sealed
                                // intent is picked up again at the next start.
                                _ = cancel.cancelled() => break,
                                sent = tx.send((sealed, false)) => if sent.is_err() { break },
                            }
                        }
                        compact_journal(this.store.clone()).await;
                        Ok::<bool, PipelineError>(true)
                    };
                    match tick.await {
                        Ok(true) => {}
                        Ok(false) => break,
                        // A seal that met a full disk changed nothing: the next tick
                        // seals again (`docs/operations.md`, "Full disk").
                        Err(PipelineError::State(e)) if e.is_disk_full() => {
                            crate::telemetry::metrics().failed("state");
                            tracing::warn!(error = %e, "Sealing due flows failed on a full disk; retrying at the next tick.");
                        }
                        Err(e) => return Err(e),
                    }
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
                let mut jobs = BoundedJobs::new(concurrency);
                let mut record =
                    |done: Result<Result<ArchivedSegment, PipelineError>, JoinError>| match done {
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
                    jobs.wait_for_room(&mut record).await;
                    let (archiver, cancel) = (archiver.clone(), cancel.clone());
                    jobs.spawn(async move {
                        archiver
                            .process_with_retry(intent, resumed, None, &cancel)
                            .await
                    });
                }
                jobs.drain(&mut record).await;
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

/// The periodic passes of `run` (scheduler, purge): the first tick at once, and a pass
/// that overruns its period delays the next tick rather than bunching ticks up.
struct Ticks(tokio::time::Interval);

impl Ticks {
    fn every(period: Duration) -> Ticks {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticks(interval)
    }

    /// Waits for the next tick; `false` once `cancel` fires.
    async fn next(&mut self, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = self.0.tick() => true,
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

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "stopped: read {} records, ingested {} events ({} duplicates, {} dead-lettered); archived {} flow parts in {} segments",
            self.ingest.records,
            self.ingest.stored,
            self.ingest.duplicates,
            self.ingest.dead_lettered,
            self.sweep.flow_parts,
            self.sweep.segments
        )
    }
}
