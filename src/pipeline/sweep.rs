//! Archiving due flows on demand: `sweep` (every due flow once, then exit), its dry run,
//! and `archive` of one flow now. `run` seals through the same `Sealing`, so a
//! flow is sealed the same way however its archival starts.

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::archiver::{ArchivedSegment, StepSeconds};
use super::jobs::BoundedJobs;
use super::scheduler::plan;
use super::{blocking, compact_journal, Pipeline, PipelineError};
use crate::failpoint;
use crate::state::{ArchiveIntent, FlowMeta};
use crate::time::rfc3339_ms;
use crate::units::human_bytes;

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
    pub steps: StepSeconds,
}

impl SweepReport {
    pub(super) fn add(&mut self, s: &ArchivedSegment) {
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

impl std::fmt::Display for SweepReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run {
            "would archive"
        } else {
            "archived"
        };
        write!(
            f,
            "{verb} {} flow parts ({} events, {} raw) in {} segments",
            self.flow_parts,
            self.events,
            human_bytes(self.raw_bytes),
            self.segments,
        )?;
        if !self.dry_run {
            write!(
                f,
                " -> {} stored ({:.1}% of raw) in {:.2}s",
                human_bytes(self.stored_bytes),
                100.0 * self.stored_bytes as f64 / self.raw_bytes.max(1) as f64,
                self.seconds
            )?;
        }
        writeln!(f)?;
        if self.recovered_intents > 0 {
            writeln!(f, "resumed {} interrupted segments", self.recovered_intents)?;
        }
        for planned in &self.planned {
            writeln!(
                f,
                "  {} ({} flows, {} events, {})",
                planned.object_key,
                planned.flows.len(),
                planned.events,
                human_bytes(planned.raw_bytes)
            )?;
        }
        for failure in &self.failures {
            writeln!(f, "FAILED: {failure}")?;
        }
        Ok(())
    }
}

/// Due flows being sealed into intents: the one way a flow enters archival, for
/// `run`, `sweep` and `archive` alike.
pub(super) struct Sealing<'p> {
    pipeline: &'p Pipeline,
    planned: std::vec::IntoIter<ArchiveIntent>,
    /// Intents sealed so far.
    pub sealed: usize,
}

impl Sealing<'_> {
    /// Seals the next planned segment whose flows are unchanged since they were read (a
    /// flow that changed is left for the next pass); `None` when none is left.
    pub async fn next(&mut self) -> Result<Option<ArchiveIntent>, PipelineError> {
        for intent in self.planned.by_ref() {
            let store = self.pipeline.store.clone();
            if let Some(sealed) = blocking(move || store.seal(intent)).await? {
                self.sealed += 1;
                failpoint::hit("after-intent");
                return Ok(Some(sealed));
            }
        }
        Ok(None)
    }
}

/// What one archive job returns: its segment, or the intent id and why it failed.
type JobResult = Result<ArchivedSegment, (String, PipelineError)>;

impl Pipeline {
    /// Plans `due` into segments (see [`plan`]) to be sealed one at a time by
    /// [`Sealing::next`], so that the archival of one overlaps the sealing of the next.
    pub(super) fn seal_due(&self, due: Vec<FlowMeta>, now_ms: i64) -> Sealing<'_> {
        Sealing {
            pipeline: self,
            planned: plan(due, &self.policy, &self.config.archive, now_ms, &self.ids).into_iter(),
            sealed: 0,
        }
    }

    /// Plans the due flows without changing anything.
    pub async fn dry_run(&self, now_ms: i64) -> Result<SweepReport, PipelineError> {
        let store = self.store.clone();
        // A dry run lists everything due; its memory is proportional to the report.
        let due = blocking(move || store.peek_due(now_ms, usize::MAX)).await?;
        let intents = plan(due, &self.policy, &self.config.archive, now_ms, &self.ids);
        let mut report = SweepReport {
            dry_run: true,
            now: rfc3339_ms(now_ms),
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
            now: rfc3339_ms(now_ms),
            ..Default::default()
        };
        let archiver = self.archiver();
        let cancel = CancellationToken::new();
        let mut jobs: BoundedJobs<JobResult> = BoundedJobs::new(self.config.archive.concurrency);
        let job = |intent: ArchiveIntent, resumed: bool| {
            let (archiver, cancel) = (archiver.clone(), cancel.clone());
            async move {
                let id = intent.id.clone();
                archiver
                    .process_with_retry(intent, resumed, Some(3), &cancel)
                    .await
                    .map_err(|e| (id, e))
            }
        };
        let mut collect = |report: &mut SweepReport, done: Result<JobResult, _>| {
            match done {
                Ok(Ok(segment)) => report.add(&segment),
                Ok(Err((id, e))) => report.failures.push(format!("intent {id}: {e}")),
                Err(e) => report.failures.push(format!("archive task: {e}")),
            }
            on_segment(report);
        };

        let store = self.store.clone();
        let pending = blocking(move || store.claim_intents()).await?;
        report.recovered_intents = pending.len() as u64;
        for intent in pending {
            jobs.wait_for_room(&mut |done| collect(&mut report, done))
                .await;
            jobs.spawn(job(intent, true));
        }

        let batch = self.config.archive.batch_size;
        while report.failures.is_empty() {
            let store = self.store.clone();
            let due = blocking(move || store.due_flows(now_ms, batch)).await?;
            if due.is_empty() {
                break;
            }
            let mut sealing = self.seal_due(due, now_ms);
            while let Some(intent) = sealing.next().await? {
                jobs.wait_for_room(&mut |done| collect(&mut report, done))
                    .await;
                if !report.failures.is_empty() {
                    // Sealed but not started: it stays pending for the next run.
                    break;
                }
                jobs.spawn(job(intent, false));
            }
            if sealing.sealed == 0 {
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
        jobs.drain(&mut |done| collect(&mut report, done)).await;
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
            now: rfc3339_ms(now_ms),
            ..Default::default()
        };
        let mut sealing = self.seal_due(vec![meta], now_ms);
        let Some(intent) = sealing.next().await? else {
            return Err(PipelineError::NotFound(format!(
                "{tenant}/{flow_id} changed while being archived; try again"
            )));
        };
        let done = self
            .archiver()
            .process_with_retry(intent, false, Some(3), &CancellationToken::new())
            .await?;
        report.add(&done);
        Ok(report)
    }
}
