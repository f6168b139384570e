//! `flow-archiver bench --nats URL`: the NATS source measured against a plain
//! JetStream consumer, and expiry→archived latency, on a real server.
//!
//! 1. Generates the workload and publishes it to a new stream (every publish acked).
//! 2. Three plain pull consumers read the whole stream and do nothing else with it:
//!    one that never acks (`AckPolicy::None`: the least work a reader can make the
//!    server do), one made with JetStream's defaults, which acks every message
//!    (`AckPolicy::Explicit`), and one that acks the way the ingest stage does, once
//!    per batch of `input.batch_size` messages (`AckPolicy::All`); then the archiver's
//!    ingest stage (NATS source → decode → durable state → acks) reads it
//!    through its own durable consumer. Rates side by side give the ratio, each timed
//!    from its first message. For each reader the CPU time it used and what the rest
//!    of the machine used meanwhile (the server, when it runs here) are reported per
//!    million events.
//! 3. Latency: flows that finish now, a 2 s retention, the whole `run` pipeline
//!    publishing `flow.archived` to NATS; per record, arrival minus (last event time +
//!    retention).

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{io_err, machine, write_workload, MB};
use crate::bench::measure::{peak_rss_bytes, percentile};
use crate::config::{Config, Destination, NatsConfig, Retention};
use crate::pipeline::{Pipeline, PipelineError};
use crate::policy::SystemClock;
use crate::publish::PublishError;
use crate::source::{NatsSource, SourceError};
use crate::workload::WorkloadSpec;

#[derive(Debug, Clone, Serialize)]
pub struct NatsBenchReport {
    pub servers: String,
    pub events: u64,
    pub bytes: u64,
    pub publish_events_per_sec: f64,
    /// A plain consumer that never acks (`AckPolicy::None`).
    pub plain_consumer_events_per_sec: f64,
    /// A plain consumer with JetStream's default ack policy, acking every message.
    pub default_consumer_events_per_sec: f64,
    /// A plain consumer that acks once per batch (`AckPolicy::All`), as ingest does.
    pub acking_consumer_events_per_sec: f64,
    pub ingest_events_per_sec: f64,
    /// CPU seconds per million events: (this process, the rest of the machine) while
    /// each reader ran; `None` without `/proc/stat`.
    pub plain_cpu_per_million: Option<(f64, f64)>,
    pub default_cpu_per_million: Option<(f64, f64)>,
    pub acking_cpu_per_million: Option<(f64, f64)>,
    pub ingest_cpu_per_million: Option<(f64, f64)>,
    pub ingest_mb_per_sec: f64,
    /// Ingest rate / plain consumer rate (target ≥ 0.7).
    pub ratio: f64,
    /// Ingest rate / default (per-message acking) consumer rate.
    pub ratio_to_default: f64,
    /// Ingest rate / acking consumer rate.
    pub ratio_to_acking: f64,
    pub latency_flows: u64,
    pub expiry_to_archived_p50_ms: f64,
    pub expiry_to_archived_p99_ms: f64,
    pub expiry_to_archived_max_ms: f64,
    pub peak_rss_bytes: u64,
    pub machine: String,
}

fn nats_err(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Source(SourceError::Nats(e.to_string()))
}

/// Publishes a JSON Lines file to `subject`, acks awaited in windows; (events, bytes).
async fn publish(
    js: &jetstream::Context,
    subject: &str,
    path: &std::path::Path,
) -> Result<(u64, u64), PipelineError> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|e| io_err("workload", e))?;
    let (mut events, mut bytes) = (0u64, 0u64);
    let mut acks = Vec::with_capacity(5_000);
    for line in std::io::BufReader::with_capacity(1 << 20, file).split(b'\n') {
        let line = line.map_err(|e| io_err("workload", e))?;
        if line.is_empty() {
            continue;
        }
        bytes += line.len() as u64;
        events += 1;
        let ack = js
            .publish(subject.to_string(), line.into())
            .await
            .map_err(nats_err)?;
        acks.push(ack.into_future());
        if acks.len() >= 5_000 {
            for a in futures::future::join_all(acks.drain(..)).await {
                a.map_err(nats_err)?;
            }
        }
    }
    for a in futures::future::join_all(acks).await {
        a.map_err(nats_err)?;
    }
    Ok((events, bytes))
}

/// CPU seconds per million events used by this process and by the rest of the
/// machine between two [`CpuMark`]s.
#[derive(Clone, Copy)]
struct CpuMark {
    own: f64,
    machine: Option<f64>,
}

impl CpuMark {
    fn now() -> CpuMark {
        CpuMark {
            own: crate::bench::measure::cpu_seconds(),
            machine: crate::bench::measure::machine_busy_seconds(),
        }
    }

    fn per_million_since(self, start: CpuMark, events: u64) -> Option<(f64, f64)> {
        let millions = events.max(1) as f64 / 1e6;
        let own = self.own - start.own;
        let machine = self.machine? - start.machine?;
        Some((own / millions, (machine - own).max(0.0) / millions))
    }
}

/// How a plain consumer acknowledges what it reads.
#[derive(Debug, Clone, Copy)]
enum Acks {
    /// `AckPolicy::None`.
    Never,
    /// `AckPolicy::Explicit` (JetStream's default), one ack per message.
    EachMessage,
    /// `AckPolicy::All`, one ack every that many messages and on the last one.
    Every(u64),
}

/// Reads the whole stream with a new durable pull consumer that does nothing with the
/// messages but ack them as `acks` says. Its rate in events/s.
async fn plain_consumer(
    stream: &jetstream::stream::Stream,
    events: u64,
    acks: Acks,
) -> Result<f64, PipelineError> {
    use jetstream::consumer::AckPolicy;
    let (name, ack_policy) = match acks {
        Acks::Never => ("bench-plain", AckPolicy::None),
        Acks::EachMessage => ("bench-default", AckPolicy::Explicit),
        Acks::Every(_) => ("bench-acking", AckPolicy::All),
    };
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(name.into()),
            ack_policy,
            // As for the archiver's consumer below.
            max_ack_pending: 50_000,
            ..Default::default()
        })
        .await
        .map_err(nats_err)?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(4096)
        .messages()
        .await
        .map_err(nats_err)?;
    let mut seen = 0u64;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen < events && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
            Ok(Some(Ok(m))) => {
                started.get_or_insert_with(Instant::now);
                std::hint::black_box(&m.payload);
                seen += 1;
                let ack = match acks {
                    Acks::Never => false,
                    Acks::EachMessage => true,
                    Acks::Every(n) => seen % n == 0 || seen == events,
                };
                if ack {
                    m.ack().await.map_err(nats_err)?;
                }
            }
            Ok(Some(Err(e))) => return Err(nats_err(e)),
            Ok(None) | Err(_) => break,
        }
    }
    let secs = started
        .map(|s| s.elapsed().as_secs_f64())
        .unwrap_or(f64::NAN);
    Ok(seen as f64 / secs)
}

pub async fn run(args: &super::BenchArgs, servers: &str) -> Result<NatsBenchReport, PipelineError> {
    let tmp = tempfile::tempdir().map_err(|e| io_err("temporary directory", e))?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir.display().to_string(), e))?;
    let run_id = format!("{}{}", std::process::id(), chrono::Utc::now().timestamp());
    let base = NatsConfig {
        servers: servers.to_string(),
        ..NatsConfig::default()
    };
    let client = crate::nats::connect(&base).await.map_err(nats_err)?;
    let js = jetstream::new(client);

    let now_ms = chrono::Utc::now().timestamp_millis();
    let spec = WorkloadSpec::bench(args.flows, args.events, now_ms, &run_id);
    let input = dir.join("events.jsonl");
    write_workload(&spec, &input)?;
    let stream_name = format!("BENCH_{run_id}");
    let subject = format!("bench.{run_id}.events");
    let stream = crate::nats::ensure_stream(
        &js,
        jetstream::stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("bench.{run_id}.>")],
            ..Default::default()
        },
    )
    .await
    .map_err(nats_err)?;
    let started = Instant::now();
    let (events, bytes) = publish(&js, &subject, &input).await?;
    let publish_rate = events as f64 / started.elapsed().as_secs_f64();
    eprintln!("published {events} events to {stream_name}; reading them back");

    let mark = CpuMark::now();
    let plain = plain_consumer(&stream, events, Acks::Never).await?;
    let plain_cpu = CpuMark::now().per_million_since(mark, events);
    let mark = CpuMark::now();
    let default = plain_consumer(&stream, events, Acks::EachMessage).await?;
    let default_cpu = CpuMark::now().per_million_since(mark, events);
    let mark = CpuMark::now();
    // The ingest stage below acks once per input batch.
    let ack_every = Config::default().input.batch_size as u64;
    let acking = plain_consumer(&stream, events, Acks::Every(ack_every)).await?;
    let acking_cpu = CpuMark::now().per_million_since(mark, events);

    let mut config = Config::rooted_at(&dir.join("ingest"));
    config.nats = NatsConfig {
        stream: stream_name.clone(),
        create_stream: false,
        consumer: "bench-archiver".into(),
        max_ack_pending: 50_000,
        ..base.clone()
    };
    let hour = Retention::After(Duration::from_secs(3600));
    let r = &mut config.retention;
    (r.completed, r.failed, r.error, r.cancelled, r.timed_out) = (hour, hour, hour, hour, hour);
    let pipeline = Pipeline::open(config.clone(), Arc::new(SystemClock)).await?;
    let mut source = NatsSource::open(&config.nats, config.input.batch_size, false).await?;
    let mark = CpuMark::now();
    let (records, ingest_rate) = super::ingest_until(&pipeline, &mut source, events).await?;
    let ingest_cpu = CpuMark::now().per_million_since(mark, records);
    drop(source);
    drop(pipeline);

    let latency_flows = (args.flows / 20).clamp(200, 5000);
    let mut ms = latency(&js, &base, &dir, &run_id, latency_flows).await?;
    let _ = js.delete_stream(&stream_name).await;
    Ok(NatsBenchReport {
        servers: servers.to_string(),
        events,
        bytes,
        publish_events_per_sec: publish_rate,
        plain_consumer_events_per_sec: plain,
        default_consumer_events_per_sec: default,
        acking_consumer_events_per_sec: acking,
        ingest_events_per_sec: ingest_rate,
        plain_cpu_per_million: plain_cpu,
        default_cpu_per_million: default_cpu,
        acking_cpu_per_million: acking_cpu,
        ingest_cpu_per_million: ingest_cpu,
        ingest_mb_per_sec: bytes as f64 / MB / (records as f64 / ingest_rate),
        ratio: ingest_rate / plain,
        ratio_to_default: ingest_rate / default,
        ratio_to_acking: ingest_rate / acking,
        latency_flows: ms.len() as u64,
        expiry_to_archived_p50_ms: percentile(&mut ms, 50.0),
        expiry_to_archived_p99_ms: percentile(&mut ms, 99.0),
        expiry_to_archived_max_ms: percentile(&mut ms, 100.0),
        peak_rss_bytes: peak_rss_bytes(),
        machine: machine(),
    })
}

async fn latency(
    js: &jetstream::Context,
    base: &NatsConfig,
    dir: &std::path::Path,
    run_id: &str,
    flows: u64,
) -> Result<Vec<f64>, PipelineError> {
    let retention = Duration::from_secs(2);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let spec = WorkloadSpec::finishing_now(flows, now_ms, &format!("lat-{run_id}"));
    let input = dir.join("latency.jsonl");
    let stats = write_workload(&spec, &input)?;
    let mut config = Config::rooted_at(&dir.join("latency"));
    config.nats = NatsConfig {
        stream: format!("BENCH_LAT_{run_id}"),
        subjects: vec![format!("benchlat.{run_id}.>")],
        consumer: "bench-latency".into(),
        archived_stream: format!("BENCH_ARCHIVED_{run_id}"),
        archived_prefix: format!("benchlat.archived.{run_id}"),
        dead_letter_stream: format!("BENCH_DLQ_{run_id}"),
        dead_letter_subject: format!("benchlat.dlq.{run_id}"),
        ..base.clone()
    };
    config.publish.destination = Destination::Nats;
    config.scheduler.interval = Duration::from_millis(250);
    let after = Retention::After(retention);
    let r = &mut config.retention;
    (r.completed, r.failed, r.error, r.cancelled, r.timed_out) =
        (after, after, after, after, after);

    let expected = stats.flows - stats.running_flows;
    let retention_ms = retention.as_millis() as f64;
    let mut archived = js
        .client()
        .subscribe(format!("{}.>", config.nats.archived_prefix))
        .await
        .map_err(nats_err)?;
    let reading = tokio::spawn(async move {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        while (out.len() as u64) < expected {
            let Ok(Some(m)) = tokio::time::timeout_at(deadline, archived.next()).await else {
                break;
            };
            let arrived = chrono::Utc::now().timestamp_millis() as f64;
            let event: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            if let Some(last_us) = event["data"]["last_event_time"].as_i64() {
                out.push(arrived - (last_us as f64 / 1000.0 + retention_ms));
            }
        }
        out
    });

    let pipeline = Arc::new(Pipeline::open(config.clone(), Arc::new(SystemClock)).await?);
    let source = NatsSource::open(&config.nats, config.input.batch_size, false).await?;
    let cancel = CancellationToken::new();
    let running = tokio::spawn(pipeline.clone().run(Some(Box::new(source)), cancel.clone()));
    publish(js, &format!("benchlat.{run_id}.events"), &input).await?;
    let latencies = reading.await?;
    cancel.cancel();
    running.await??;
    for stream in [
        &config.nats.stream,
        &config.nats.archived_stream,
        &config.nats.dead_letter_stream,
    ] {
        let _ = js.delete_stream(stream).await;
    }
    if (latencies.len() as u64) < expected {
        return Err(PipelineError::Publish(PublishError::Broker(format!(
            "only {} of {expected} flows were archived within 5 minutes",
            latencies.len()
        ))));
    }
    Ok(latencies)
}

impl std::fmt::Display for NatsBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "flow-archiver bench --nats {} on {}",
            self.servers, self.machine
        )?;
        writeln!(
            f,
            "  stream     {} events ({:.1} MiB); published at {:.0} events/s",
            self.events,
            self.bytes as f64 / (1024.0 * 1024.0),
            self.publish_events_per_sec
        )?;
        let cpu = |c: Option<(f64, f64)>| match c {
            Some((own, rest)) => {
                format!("; CPU s per million events: {own:.1} here, {rest:.1} rest of machine")
            }
            None => String::new(),
        };
        writeln!(
            f,
            "  plain      pull consumer that only reads (no acks): {:.0} events/s{}",
            self.plain_consumer_events_per_sec,
            cpu(self.plain_cpu_per_million)
        )?;
        writeln!(
            f,
            "  default    pull consumer with the default policy, one ack per message: {:.0} events/s{}",
            self.default_consumer_events_per_sec,
            cpu(self.default_cpu_per_million)
        )?;
        writeln!(
            f,
            "  acking     pull consumer that acks once per batch: {:.0} events/s{}",
            self.acking_consumer_events_per_sec,
            cpu(self.acking_cpu_per_million)
        )?;
        writeln!(
            f,
            "  ingest     NATS source → durable state → acks: {:.0} events/s, {:.1} MB/s{}",
            self.ingest_events_per_sec,
            self.ingest_mb_per_sec,
            cpu(self.ingest_cpu_per_million)
        )?;
        writeln!(
            f,
            "  ratio      {:.2} of the plain consumer (target ≥ 0.70); {:.2} of the default one; {:.2} of the acking one",
            self.ratio, self.ratio_to_default, self.ratio_to_acking
        )?;
        writeln!(
            f,
            "  latency    expiry → flow.archived published, {} flows: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            self.latency_flows,
            self.expiry_to_archived_p50_ms,
            self.expiry_to_archived_p99_ms,
            self.expiry_to_archived_max_ms
        )?;
        writeln!(
            f,
            "  memory     peak RSS {:.1} MiB",
            self.peak_rss_bytes as f64 / (1024.0 * 1024.0)
        )
    }
}
