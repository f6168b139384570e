//! `flow-archiver bench`: the load generator and the measured figures.
//!
//! Generates N flows × M events as CloudEvents JSON Lines, ingests them from the file
//! source into a fresh durable store, archives every terminal flow to a directory
//! store, and prints ingest events/s and MB/s, archive MB/s of raw history, the
//! stored/raw ratio, batch and segment latency percentiles, and peak RSS. When the
//! `zstd` and `sha256sum` tools are installed it times `zstd -3 -T1 | sha256sum` over
//! the same JSON Lines in the same run, as the reference for archive throughput.

pub mod api;
pub mod kafka;
pub mod measure;
pub mod nats;
pub mod state;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::bench::measure::{peak_rss_bytes, percentile};
use crate::config::{Config, Retention};
use crate::pipeline::{Pipeline, PipelineError};
use crate::policy::ManualClock;
use crate::workload::{generate, WorkloadSpec};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Flows to generate.
    #[arg(long, default_value_t = 100_000)]
    pub flows: u64,
    /// Events per flow.
    #[arg(long, default_value_t = 10)]
    pub events: u32,
    /// Work directory (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Events per state-store transaction (default: `input.batch_size`).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Skip the archive phase (ingest and memory only).
    #[arg(long)]
    pub ingest_only: bool,
    /// Measure the Kafka source instead, on these brokers (`host:port`): ingest rate
    /// against a plain consumer of the same topic, and expiry→archived latency.
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// Measure the NATS source instead, on this server (`nats://host:port`): ingest
    /// rate against a plain JetStream consumer, and expiry→archived latency.
    #[arg(long, value_name = "URL", conflicts_with = "kafka")]
    pub nats: Option<String>,
    /// Measure the index and the HTTP API instead: GET latency for archived and live
    /// flows, index build and rebuild rates.
    #[arg(long, conflicts_with_all = ["kafka", "nats"])]
    pub api: bool,
    /// Measure the PostgreSQL state backend on this server
    /// (`postgres://user:pass@host:port/db`), next to the embedded one and to `psql`
    /// COPY of the same event rows. Creates and drops a database of its own there.
    #[arg(long, value_name = "URL", conflicts_with_all = ["kafka", "nats", "api"])]
    pub state: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub flows: u64,
    pub events: u64,
    pub input_bytes: u64,
    pub ingest_seconds: f64,
    pub ingest_events_per_sec: f64,
    pub ingest_mb_per_sec: f64,
    pub ingest_batch_p50_ms: f64,
    pub ingest_batch_p99_ms: f64,
    /// CPU seconds (all threads) per million events ingested.
    pub ingest_cpu_seconds_per_million: f64,
    pub tracked_flows: u64,
    pub archived_parts: u64,
    pub archive_raw_bytes: u64,
    pub archive_stored_bytes: u64,
    pub archive_seconds: f64,
    pub archive_mb_per_sec: f64,
    /// CPU seconds (all threads) per GB of raw history archived.
    pub archive_cpu_seconds_per_gb: f64,
    pub stored_ratio: f64,
    pub segment_p50_ms: f64,
    pub segment_p99_ms: f64,
    /// `zstd -3 -T1 | sha256sum` over the same input, MB/s (None when the tools are missing).
    pub reference_mb_per_sec: Option<f64>,
    pub archive_vs_reference: Option<f64>,
    /// Compressed/raw of `zstd -3 -T1` over the whole input as one stream: what
    /// compression allows, next to `stored_ratio`.
    pub whole_stream_ratio: Option<f64>,
    /// The format's own floor: each archived part compressed again as its own frame
    /// (reused context, the configured level) and hashed as the format requires, on
    /// one core, MB/s of raw history. Reading and decompressing are not timed.
    pub part_frames_mb_per_sec: Option<f64>,
    pub peak_rss_bytes: u64,
    pub machine: String,
    pub archive_steps: crate::pipeline::archiver::StepSeconds,
}

const MB: f64 = 1_000_000.0;

pub async fn run(args: &BenchArgs) -> Result<BenchReport, PipelineError> {
    let tmp = tempfile::tempdir().map_err(|e| io_err("temporary directory", e))?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    measure(args, &dir, |_| {}).await
}

/// Generates the workload in `dir`, ingests and archives it with the configuration
/// rooted there (changed by `configure`), and measures every figure.
pub(crate) async fn measure(
    args: &BenchArgs,
    dir: &std::path::Path,
    configure: impl FnOnce(&mut Config),
) -> Result<BenchReport, PipelineError> {
    let input = dir.join("events.jsonl");
    let now_ms = chrono::Utc::now().timestamp_millis();
    let spec = WorkloadSpec::bench(args.flows, args.events, now_ms, "bench");
    std::fs::create_dir_all(dir).map_err(|e| io_err(&dir.display().to_string(), e))?;
    let file = std::fs::File::create(&input).map_err(|e| io_err("events.jsonl", e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let workload = generate(&spec, &mut out).map_err(|e| io_err("events.jsonl", e))?;
    drop(out);

    let mut config = Config::rooted_at(dir);
    if let Some(n) = args.batch_size {
        config.input.batch_size = n;
    }
    configure(&mut config);
    let hour = Retention::After(std::time::Duration::from_secs(3600));
    let r = &mut config.retention;
    (r.completed, r.failed, r.error, r.cancelled, r.timed_out) = (hour, hour, hour, hour, hour);
    let clock = Arc::new(ManualClock::new(now_ms));
    let pipeline = Pipeline::open(config, clock.clone()).await?;

    let mut batch_ms = Vec::new();
    let mut last = Instant::now();
    let started = Instant::now();
    let cpu_before_ingest = crate::bench::measure::cpu_seconds();
    let totals = pipeline
        .ingest_input(&input.display().to_string(), &mut |_| {
            batch_ms.push(last.elapsed().as_secs_f64() * 1000.0);
            last = Instant::now();
        })
        .await?;
    let ingest_seconds = started.elapsed().as_secs_f64();
    let ingest_cpu = crate::bench::measure::cpu_seconds() - cpu_before_ingest;
    let stats = pipeline.stats().await?;

    let cpu_before_archive = crate::bench::measure::cpu_seconds();
    let (mut segment_ms, sweep) = if args.ingest_only {
        (Vec::new(), None)
    } else {
        // Every terminal flow is due two hours later.
        let sweep = pipeline.sweep(now_ms + 2 * 3_600_000, &mut |_| {}).await?;
        let ms: Vec<f64> = sweep.segment_seconds.iter().map(|s| s * 1000.0).collect();
        (ms, Some(sweep))
    };
    let archive_cpu = crate::bench::measure::cpu_seconds() - cpu_before_archive;
    let (reference, whole_stream_ratio) = if args.ingest_only {
        (None, None)
    } else {
        (reference_mb_per_sec(&input), whole_stream_ratio(&input))
    };
    let part_frames = match &sweep {
        Some(s) if s.flow_parts > 0 => {
            part_frames_mb_per_sec(pipeline.objects(), pipeline.config().archive.zstd_level).await?
        }
        _ => None,
    };
    let (raw, stored, secs, parts) = sweep
        .as_ref()
        .map(|s| (s.raw_bytes, s.stored_bytes, s.seconds, s.flow_parts))
        .unwrap_or_default();
    let archive_mb_per_sec = if secs > 0.0 {
        raw as f64 / MB / secs
    } else {
        0.0
    };
    Ok(BenchReport {
        flows: workload.flows,
        events: totals.stored,
        input_bytes: workload.bytes,
        ingest_seconds,
        ingest_events_per_sec: totals.stored as f64 / ingest_seconds,
        ingest_mb_per_sec: workload.bytes as f64 / MB / ingest_seconds,
        ingest_batch_p50_ms: percentile(&mut batch_ms, 50.0),
        ingest_batch_p99_ms: percentile(&mut batch_ms, 99.0),
        ingest_cpu_seconds_per_million: ingest_cpu / (totals.stored.max(1) as f64 / 1e6),
        tracked_flows: stats.live_flows,
        archived_parts: parts,
        archive_raw_bytes: raw,
        archive_stored_bytes: stored,
        archive_seconds: secs,
        archive_mb_per_sec,
        archive_cpu_seconds_per_gb: archive_cpu / (raw.max(1) as f64 / 1e9),
        stored_ratio: stored as f64 / raw.max(1) as f64,
        segment_p50_ms: percentile(&mut segment_ms, 50.0),
        segment_p99_ms: percentile(&mut segment_ms, 99.0),
        reference_mb_per_sec: reference,
        archive_vs_reference: reference.map(|r| archive_mb_per_sec / r),
        whole_stream_ratio,
        part_frames_mb_per_sec: part_frames,
        peak_rss_bytes: peak_rss_bytes(),
        machine: machine(),
        archive_steps: sweep.as_ref().map(|s| s.steps).unwrap_or_default(),
    })
}

/// Runs the ingest stage over `source` until `events` records are read; returns the
/// records read and the rate, timed from the first durable batch (like a plain
/// consumer timed from its first record, so group join and metadata time is left out).
pub(crate) async fn ingest_until(
    pipeline: &Pipeline,
    source: &mut dyn crate::source::Source,
    events: u64,
) -> Result<(u64, f64), PipelineError> {
    let cancel = tokio_util::sync::CancellationToken::new();
    let stop = cancel.clone();
    let (mut first, mut done_at) = (None, None);
    let totals = pipeline
        .ingest_stage()
        .run(source, &cancel, &mut |t| {
            first.get_or_insert_with(Instant::now);
            if t.records >= events && done_at.is_none() {
                done_at = Some(Instant::now());
                stop.cancel();
            }
        })
        .await?;
    let seconds = match (first, done_at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => f64::NAN,
    };
    Ok((totals.records, totals.records as f64 / seconds))
}

/// Writes the generated workload to `path` as JSON Lines.
pub(crate) fn write_workload(
    spec: &WorkloadSpec,
    path: &std::path::Path,
) -> Result<crate::workload::WorkloadStats, PipelineError> {
    let file = std::fs::File::create(path).map_err(|e| io_err("workload", e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let stats = generate(spec, &mut out).map_err(|e| io_err("workload", e))?;
    std::io::Write::flush(&mut out).map_err(|e| io_err("workload", e))?;
    Ok(stats)
}

pub(crate) fn io_err(path: &str, source: std::io::Error) -> PipelineError {
    PipelineError::Publish(crate::publish::PublishError::Io {
        path: path.to_string(),
        source,
    })
}

/// Times `zstd -3 -T1 -c FILE | sha256sum` in MB/s of input.
fn reference_mb_per_sec(input: &std::path::Path) -> Option<f64> {
    let size = std::fs::metadata(input).ok()?.len();
    let started = Instant::now();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("zstd -3 -T1 -q -c \"$1\" | sha256sum > /dev/null")
        .arg("sh")
        .arg(input)
        .status()
        .ok()?;
    status
        .success()
        .then(|| size as f64 / MB / started.elapsed().as_secs_f64())
}

/// Compressed/raw of `zstd -3 -T1 -c FILE` (untimed).
fn whole_stream_ratio(input: &std::path::Path) -> Option<f64> {
    let size = std::fs::metadata(input).ok()?.len();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("zstd -3 -T1 -q -c \"$1\" | wc -c")
        .arg("sh")
        .arg(input)
        .output()
        .ok()?;
    let compressed: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (out.status.success() && size > 0).then(|| compressed as f64 / size as f64)
}

/// Compresses every archived part again as its own zstd frame and hashes it the way
/// the segment writer must (the frame and the object over the compressed bytes, the
/// events over the plaintext), timing only that, on this thread. This is what the
/// archive format costs before any reading, writing or state change: the ceiling of
/// one core's archive rate, to set beside the single-stream reference. None when no
/// zstd object was written.
async fn part_frames_mb_per_sec(
    objects: &crate::archive::ArchiveStore,
    level: i32,
) -> Result<Option<f64>, PipelineError> {
    use sha2::{Digest, Sha256};
    let mut compressor = zstd::bulk::Compressor::new(level).map_err(|e| io_err("zstd", e))?;
    compressor
        .set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
        .map_err(|e| io_err("zstd", e))?;
    let (mut raw, mut timed) = (0u64, std::time::Duration::ZERO);
    let mut plain = Vec::new();
    for key in objects.list_keys(None).await? {
        if !key.ends_with(".zst") {
            continue;
        }
        let manifest = crate::archive::read_manifest(objects, &key).await?;
        let object = objects.get_range(&key, 0..manifest.object_size).await?;
        let mut object_hash = Sha256::new();
        // Frame by frame (a v2 frame holds consecutive parts), each part's lines hashed.
        struct Frame {
            offset: u64,
            length: u64,
            ranges: Vec<(u64, u64)>,
            raw: u64,
        }
        let mut frames: Vec<Frame> = Vec::new();
        for part in &manifest.parts {
            let range = part.plain_offset.zip(part.plain_length);
            match frames.last_mut() {
                Some(f) if (f.offset, f.length) == (part.offset, part.length) => {
                    f.ranges.extend(range);
                    f.raw += part.raw_bytes;
                }
                _ => frames.push(Frame {
                    offset: part.offset,
                    length: part.length,
                    ranges: range.into_iter().collect(),
                    raw: part.raw_bytes,
                }),
            }
        }
        for Frame {
            offset,
            length,
            ranges,
            raw: part_raw,
        } in frames
        {
            let frame = &object[offset as usize..(offset + length) as usize];
            plain.clear();
            zstd::stream::copy_decode(frame, &mut plain).map_err(|e| io_err(&key, e))?;
            let started = Instant::now();
            let compressed = compressor.compress(&plain).map_err(|e| io_err("zstd", e))?;
            let frame_hash = Sha256::digest(&compressed);
            object_hash.update(&compressed);
            if ranges.is_empty() {
                std::hint::black_box(Sha256::digest(&plain));
            }
            for (start, len) in ranges {
                let lines = plain
                    .get(start as usize..(start + len) as usize)
                    .unwrap_or_default();
                std::hint::black_box(Sha256::digest(lines));
            }
            timed += started.elapsed();
            std::hint::black_box(frame_hash);
            raw += part_raw;
        }
        std::hint::black_box(object_hash.finalize());
    }
    Ok((raw > 0).then(|| raw as f64 / MB / timed.as_secs_f64().max(f64::EPSILON)))
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{cpu}, {cores} cores")
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        writeln!(f, "flow-archiver bench on {}", self.machine)?;
        writeln!(
            f,
            "  workload   {} flows, {} events, {:.1} MiB of JSON Lines",
            self.flows,
            self.events,
            mib(self.input_bytes)
        )?;
        writeln!(
            f,
            "  ingest     {:.0} events/s, {:.1} MB/s ({:.2}s); batch latency p50 {:.1} ms, p99 {:.1} ms; {:.2} CPU s per million events",
            self.ingest_events_per_sec, self.ingest_mb_per_sec, self.ingest_seconds, self.ingest_batch_p50_ms, self.ingest_batch_p99_ms, self.ingest_cpu_seconds_per_million
        )?;
        writeln!(
            f,
            "  tracked    {} live flows after ingest",
            self.tracked_flows
        )?;
        if self.archived_parts > 0 {
            writeln!(
                f,
                "  archive    {} flow parts, {:.1} MB/s of raw history ({:.2}s); segment latency p50 {:.0} ms, p99 {:.0} ms; {:.1} CPU s per GB",
                self.archived_parts, self.archive_mb_per_sec, self.archive_seconds, self.segment_p50_ms, self.segment_p99_ms, self.archive_cpu_seconds_per_gb
            )?;
            let t = &self.archive_steps;
            writeln!(
                f,
                "  steps      build {:.2}s, upload {:.2}s, verify {:.2}s, record {:.2}s, publish {:.2}s, delete {:.2}s (summed over concurrent segments)",
                t.build, t.upload, t.verify, t.record, t.publish, t.delete
            )?;
            write!(
                f,
                "  stored     {:.1} MiB of {:.1} MiB raw (ratio {:.3})",
                mib(self.archive_stored_bytes),
                mib(self.archive_raw_bytes),
                self.stored_ratio
            )?;
            match self.whole_stream_ratio {
                Some(w) if w > 0.0 => writeln!(
                    f,
                    "; whole-stream zstd -3 -T1: {w:.3}, the archive is {:.2}× it",
                    self.stored_ratio / w
                )?,
                _ => writeln!(f)?,
            }
        }
        if let (Some(r), Some(ratio)) = (self.reference_mb_per_sec, self.archive_vs_reference) {
            writeln!(
                f,
                "  reference  zstd -3 -T1 | sha256sum: {r:.1} MB/s; archive = {:.0}% of it",
                ratio * 100.0
            )?;
        }
        if let Some(p) = self.part_frames_mb_per_sec {
            write!(
                f,
                "  format     the frames and hashes alone, one core: {p:.1} MB/s"
            )?;
            match self.reference_mb_per_sec {
                Some(r) => writeln!(f, " = {:.0}% of the reference", p / r * 100.0)?,
                None => writeln!(f)?,
            }
        }
        writeln!(
            f,
            "  memory     peak RSS {:.1} MiB",
            mib(self.peak_rss_bytes)
        )
    }
}
