//! `flow-archiver bench --kafka BROKERS`: the Kafka source measured against a plain
//! consumer, and expiry→archived latency, on a real broker.
//!
//! 1. Generates the workload, creates a topic and produces it (keyed by flow id).
//! 2. A plain consumer (a `BaseConsumer` in a fresh group that only counts records)
//!    reads the whole topic; then the archiver's ingest stage (Kafka source → decode
//!    → durable state → offsets) reads the same topic in another fresh group. Their
//!    rates side by side give the ratio.
//! 3. Latency: a smaller workload whose flows finish now, a 2 s retention and the
//!    full `run` pipeline publishing to a Kafka topic; for each `flow.archived`
//!    record, arrival time minus (last event time + retention).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{io_err, machine, write_workload, MB};
use crate::bench::measure::{peak_rss_bytes, percentile};
use crate::config::{Config, DataEncoding, Destination, KafkaConfig, Retention};
use crate::pipeline::{Pipeline, PipelineError};
use crate::policy::SystemClock;
use crate::publish::PublishError;
use crate::source::{KafkaSource, SourceError};
use crate::workload::WorkloadSpec;

#[derive(Debug, Clone, Serialize)]
pub struct KafkaBenchReport {
    pub brokers: String,
    pub partitions: i32,
    pub events: u64,
    pub bytes: u64,
    pub produce_events_per_sec: f64,
    pub plain_consumer_events_per_sec: f64,
    pub ingest_events_per_sec: f64,
    pub ingest_mb_per_sec: f64,
    /// Ingest rate / plain consumer rate (target ≥ 0.7).
    pub ratio: f64,
    pub latency_flows: u64,
    pub expiry_to_archived_p50_ms: f64,
    pub expiry_to_archived_p99_ms: f64,
    pub expiry_to_archived_max_ms: f64,
    pub peak_rss_bytes: u64,
    pub machine: String,
}

fn kafka_err(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Source(SourceError::Kafka(e.to_string()))
}

async fn create_topic(k: &KafkaConfig, name: &str, partitions: i32) -> Result<(), PipelineError> {
    let admin: AdminClient<_> = crate::kafka::client_config(k).create().map_err(kafka_err)?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for result in admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .map_err(kafka_err)?
    {
        result.map_err(|(t, e)| kafka_err(format!("create topic {t}: {e}")))?;
    }
    Ok(())
}

/// Produces a JSON Lines file keyed by each event's `subject`; returns (events, bytes).
/// Lines are streamed from disk, so memory stays flat whatever the size.
async fn produce(
    k: &KafkaConfig,
    topic: &str,
    path: &std::path::Path,
) -> Result<(u64, u64), PipelineError> {
    use std::io::BufRead;
    let producer: FutureProducer = crate::kafka::client_config(k)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("enable.idempotence", "true")
        .create()
        .map_err(kafka_err)?;
    let file = std::fs::File::open(path).map_err(|e| io_err("workload", e))?;
    let mut pending = Vec::with_capacity(10_000);
    let (mut events, mut bytes) = (0u64, 0u64);
    #[derive(serde::Deserialize)]
    struct Subject<'a> {
        #[serde(borrow)]
        subject: &'a str,
    }
    for line in std::io::BufReader::with_capacity(1 << 20, file).split(b'\n') {
        let line = line.map_err(|e| io_err("workload", e))?;
        if line.is_empty() {
            continue;
        }
        let key = serde_json::from_slice::<Subject>(&line)
            .map(|s| s.subject)
            .unwrap_or("");
        let mut record = FutureRecord::to(topic).key(key).payload(&line);
        // Enqueue now (librdkafka copies the bytes); wait for room when the queue is full.
        loop {
            match producer.send_result(record) {
                Ok(delivery) => break pending.push(delivery),
                Err((e, back))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(kafka_err(e)),
            }
        }
        events += 1;
        bytes += line.len() as u64;
        if pending.len() >= 10_000 {
            for d in futures::future::join_all(pending.drain(..)).await {
                d.map_err(kafka_err)?.map_err(|(e, _)| kafka_err(e))?;
            }
        }
    }
    for d in futures::future::join_all(pending).await {
        d.map_err(kafka_err)?.map_err(|(e, _)| kafka_err(e))?;
    }
    Ok((events, bytes))
}

/// A consumer that reads `events` records and does nothing with them; events/s.
fn plain_consumer(k: &KafkaConfig, topic: &str, events: u64) -> Result<f64, PipelineError> {
    let consumer: BaseConsumer = crate::kafka::client_config(k)
        .set("group.id", format!("bench-plain-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(kafka_err)?;
    consumer.subscribe(&[topic]).map_err(kafka_err)?;
    let mut seen = 0u64;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen < events && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            started.get_or_insert_with(Instant::now);
            std::hint::black_box(m.payload());
            seen += 1;
        }
    }
    let secs = started
        .map(|s| s.elapsed().as_secs_f64())
        .unwrap_or(f64::NAN);
    Ok(seen as f64 / secs)
}

pub async fn run(
    args: &super::BenchArgs,
    brokers: &str,
) -> Result<KafkaBenchReport, PipelineError> {
    let tmp = tempfile::tempdir().map_err(|e| io_err("temporary directory", e))?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir.display().to_string(), e))?;
    let run_id = format!("{}-{}", std::process::id(), chrono::Utc::now().timestamp());
    let partitions = 3;
    let k = KafkaConfig {
        brokers: brokers.to_string(),
        ..KafkaConfig::default()
    };

    // 1. The workload, produced once.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let spec = WorkloadSpec::bench(args.flows, args.events, now_ms, &run_id);
    let input = dir.join("events.jsonl");
    write_workload(&spec, &input)?;
    let topic = format!("bench.events.{run_id}");
    create_topic(&k, &topic, partitions).await?;
    let started = Instant::now();
    let (events, bytes) = produce(&k, &topic, &input).await?;
    let produce_rate = events as f64 / started.elapsed().as_secs_f64();
    eprintln!("produced {events} events to {topic}; reading them back");

    // 2. Plain consumer, then the ingest stage, over the same topic.
    let plain = {
        let (k, topic) = (k.clone(), topic.clone());
        tokio::task::spawn_blocking(move || plain_consumer(&k, &topic, events)).await??
    };
    let mut config = Config::rooted_at(&dir.join("ingest"));
    config.kafka = KafkaConfig {
        topics: vec![topic.clone()],
        group_id: format!("bench-archiver-{run_id}"),
        ..k.clone()
    };
    let hour = Retention::After(Duration::from_secs(3600));
    let r = &mut config.retention;
    (r.completed, r.failed, r.error, r.cancelled, r.timed_out) = (hour, hour, hour, hour, hour);
    let pipeline = Pipeline::open(config.clone(), Arc::new(SystemClock)).await?;
    let mut source = {
        let (kc, batch) = (config.kafka.clone(), config.input.batch_size);
        tokio::task::spawn_blocking(move || KafkaSource::open(&kc, batch, false)).await??
    };
    let (records, ingest_rate) = super::ingest_until(&pipeline, &mut source, events).await?;
    drop(source);
    drop(pipeline);

    // 3. Expiry → archived latency through the whole `run` pipeline.
    let latency_flows = (args.flows / 20).clamp(200, 5000);
    let latency = latency(&k, &dir, &run_id, latency_flows).await?;
    let mut ms = latency;
    Ok(KafkaBenchReport {
        brokers: brokers.to_string(),
        partitions,
        events,
        bytes,
        produce_events_per_sec: produce_rate,
        plain_consumer_events_per_sec: plain,
        ingest_events_per_sec: ingest_rate,
        ingest_mb_per_sec: bytes as f64 / MB / (records as f64 / ingest_rate),
        ratio: ingest_rate / plain,
        latency_flows: ms.len() as u64,
        expiry_to_archived_p50_ms: percentile(&mut ms, 50.0),
        expiry_to_archived_p99_ms: percentile(&mut ms, 99.0),
        expiry_to_archived_max_ms: percentile(&mut ms, 100.0),
        peak_rss_bytes: peak_rss_bytes(),
        machine: machine(),
    })
}

/// Runs the pipeline over flows that finish now with a 2 s retention; returns, per
/// archived flow part, milliseconds from its deadline to its record's arrival.
async fn latency(
    k: &KafkaConfig,
    dir: &std::path::Path,
    run_id: &str,
    flows: u64,
) -> Result<Vec<f64>, PipelineError> {
    let retention = Duration::from_secs(2);
    let events_topic = format!("bench.latency.{run_id}");
    let archived_topic = format!("bench.archived.{run_id}");
    create_topic(k, &events_topic, 3).await?;
    create_topic(k, &archived_topic, 1).await?;
    let audit_topic = format!("bench.audit.{run_id}");
    create_topic(k, &audit_topic, 1).await?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let spec = WorkloadSpec::finishing_now(flows, now_ms, &format!("lat-{run_id}"));
    let input = dir.join("latency.jsonl");
    let stats = write_workload(&spec, &input)?;
    let mut config = Config::rooted_at(&dir.join("latency"));
    config.kafka = KafkaConfig {
        topics: vec![events_topic.clone()],
        group_id: format!("bench-latency-{run_id}"),
        archived_topic: archived_topic.clone(),
        data_encoding: DataEncoding::Json,
        ..k.clone()
    };
    config.publish.destination = Destination::Kafka;
    config.audit.topic = audit_topic;
    config.scheduler.interval = Duration::from_millis(250);
    let after = Retention::After(retention);
    let r = &mut config.retention;
    (r.completed, r.failed, r.error, r.cancelled, r.timed_out) =
        (after, after, after, after, after);

    // The reader of the archived topic: arrival time − deadline per record.
    let reader: BaseConsumer = crate::kafka::client_config(k)
        .set("group.id", format!("bench-reader-{run_id}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(kafka_err)?;
    reader.subscribe(&[&archived_topic]).map_err(kafka_err)?;
    let expected = stats.flows - stats.running_flows;
    let retention_ms = retention.as_millis() as f64;
    let reading = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        while (out.len() as u64) < expected && Instant::now() < deadline {
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(50)) {
                let arrived = chrono::Utc::now().timestamp_millis() as f64;
                let data: serde_json::Value =
                    serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
                if let Some(last_us) = data["last_event_time"].as_i64() {
                    out.push(arrived - (last_us as f64 / 1000.0 + retention_ms));
                }
            }
        }
        out
    });

    let pipeline = Arc::new(Pipeline::open(config.clone(), Arc::new(SystemClock)).await?);
    let source = {
        let (kc, batch) = (config.kafka.clone(), config.input.batch_size);
        tokio::task::spawn_blocking(move || KafkaSource::open(&kc, batch, false)).await??
    };
    let cancel = CancellationToken::new();
    let running = tokio::spawn(pipeline.clone().run(Some(Box::new(source)), cancel.clone()));
    produce(k, &events_topic, &input).await?;
    let latencies = reading.await?;
    cancel.cancel();
    running.await??;
    if (latencies.len() as u64) < expected {
        return Err(PipelineError::Publish(PublishError::Broker(format!(
            "only {} of {expected} flows were archived within 5 minutes",
            latencies.len()
        ))));
    }
    Ok(latencies)
}

impl std::fmt::Display for KafkaBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "flow-archiver bench --kafka {} on {}",
            self.brokers, self.machine
        )?;
        writeln!(
            f,
            "  topic      {} events ({:.1} MiB) in {} partitions; produced at {:.0} events/s",
            self.events,
            self.bytes as f64 / (1024.0 * 1024.0),
            self.partitions,
            self.produce_events_per_sec
        )?;
        writeln!(
            f,
            "  plain      consumer that does nothing: {:.0} events/s",
            self.plain_consumer_events_per_sec
        )?;
        writeln!(
            f,
            "  ingest     Kafka source → durable state → offsets: {:.0} events/s, {:.1} MB/s",
            self.ingest_events_per_sec, self.ingest_mb_per_sec
        )?;
        writeln!(
            f,
            "  ratio      {:.2} of the plain consumer (target ≥ 0.70)",
            self.ratio
        )?;
        writeln!(
            f,
            "  latency    expiry → flow.archived on the topic, {} flows: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
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
