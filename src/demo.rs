//! `demo`: the quick start. Generates a realistic workload, runs it through the real
//! pipeline — the embedded state store, a directory archive, records in a file — with
//! retention shortened to minutes, and reports what happened.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Config, Retention};
use crate::pipeline::{IngestTotals, Pipeline, PipelineError, SweepReport};
use crate::policy::{Clock, SystemClock};
use crate::units::human_bytes;
use crate::workload::{generate, WorkloadSpec, WorkloadStats};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot write the demo input {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// The outcome of `demo`.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub workload: WorkloadStats,
    pub input_file: String,
    pub ingest: IngestTotals,
    pub ingest_seconds: f64,
    pub sweep: SweepReport,
    pub live_flows: u64,
    pub archive: String,
    pub published: String,
    pub verify_command: String,
}

/// Generates a realistic workload, runs it through the real pipeline into the
/// configured directories with shortened retention, and reports what happened.
pub async fn demo(mut config: Config, flows: u64) -> Result<DemoReport, DemoError> {
    // Shortened retention: flows that ended more than a few minutes ago are due now;
    // the most recent ones and every running flow stay live.
    let minutes = |m: u64| Retention::After(Duration::from_secs(m * 60));
    let r = &mut config.retention;
    (r.completed, r.cancelled) = (minutes(3), minutes(3));
    (r.failed, r.error, r.timed_out) = (minutes(6), minutes(6), minutes(6));
    r.abandoned = Retention::Off;
    let clock = Arc::new(SystemClock);
    let now = clock.now_ms();
    let run_id = format!("demo{:06x}", rand::random::<u32>() & 0xff_ffff);
    let input = config
        .state
        .path
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("demo/{run_id}.jsonl"));
    if let Some(dir) = input.parent() {
        std::fs::create_dir_all(dir).map_err(|source| DemoError::Io {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let spec = WorkloadSpec {
        flows,
        events_per_flow: 8,
        tenants: 4,
        running_share: 0.1,
        start_ms: now - 20 * 60_000,
        span_ms: 18 * 60_000,
        seed: rand::random(),
        run_id,
        interleave: 64,
    };
    let io_err = |source| DemoError::Io {
        path: input.display().to_string(),
        source,
    };
    let file = std::fs::File::create(&input).map_err(io_err)?;
    let mut out = std::io::BufWriter::new(file);
    let workload = generate(&spec, &mut out).map_err(io_err)?;
    out.into_inner().map_err(|e| io_err(e.into_error()))?;

    let p = Pipeline::open(config, clock.clone()).await?;
    let started = Instant::now();
    let ingest = p
        .ingest_input(&input.display().to_string(), &mut |_| {})
        .await?;
    let ingest_seconds = started.elapsed().as_secs_f64();
    let sweep = p.sweep(clock.now_ms(), &mut |_| {}).await?;
    let stats = p.stats().await?;
    Ok(DemoReport {
        workload,
        input_file: input.display().to_string(),
        ingest,
        ingest_seconds,
        sweep,
        live_flows: stats.live_flows,
        archive: p.objects().uri(p.objects().prefix()),
        published: p.config().publish.archived_path.display().to_string(),
        verify_command: "flow-archiver verify".into(),
    })
}

impl DemoReport {
    /// Whether every segment was archived.
    pub fn ok(&self) -> bool {
        self.sweep.failures.is_empty()
    }
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (w, s) = (&self.workload, &self.sweep);
        writeln!(f, "flow-archiver demo")?;
        writeln!(
            f,
            "  workload      {} flows ({} still running), {} events, {} in {}",
            w.flows,
            w.running_flows,
            w.events,
            human_bytes(w.bytes),
            self.input_file
        )?;
        writeln!(
            f,
            "  ingest        {} stored, {} duplicates, {} dead-lettered in {:.2}s ({:.0} events/s)",
            self.ingest.stored,
            self.ingest.duplicates,
            self.ingest.dead_lettered,
            self.ingest_seconds,
            self.ingest.stored as f64 / self.ingest_seconds.max(1e-9)
        )?;
        writeln!(
            f,
            "  archived      {} flow parts, {} events in {} segments in {:.2}s",
            s.flow_parts, s.events, s.segments, s.seconds
        )?;
        writeln!(
            f,
            "  bytes         {} raw -> {} stored (ratio {:.3}, {:.1}x smaller)",
            human_bytes(s.raw_bytes),
            human_bytes(s.stored_bytes),
            s.stored_bytes as f64 / s.raw_bytes.max(1) as f64,
            s.raw_bytes as f64 / s.stored_bytes.max(1) as f64
        )?;
        writeln!(
            f,
            "  left live     {} flows (running, or not idle long enough yet)",
            self.live_flows
        )?;
        writeln!(f, "  objects       {}", self.archive)?;
        writeln!(f, "  records       {}", self.published)?;
        writeln!(f, "  verify with   cargo run --release -- verify")?;
        writeln!(
            f,
            "  browse with   cargo run --release -- serve, then open http://127.0.0.1:8080/ui"
        )?;
        for failure in &s.failures {
            writeln!(f, "  FAILED: {failure}")?;
        }
        Ok(())
    }
}
