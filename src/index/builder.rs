//! Feeding the index: from the published `flow.archived` records (the local records
//! file, followed like `tail -f`), or from the segment manifests alone when the
//! records are gone (`index rebuild --from-archive`).

use std::io::{BufRead, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Index, IndexError, IndexRecord};
use crate::archive::{ArchiveError, ArchiveStore};
use crate::publish::{EventData, FlowArchived, PublishedEvent};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Broker(String),
}

/// What a build did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BuildReport {
    pub records: u64,
    pub applied: u64,
    pub skipped: u64,
    pub seconds: f64,
}

impl BuildReport {
    /// The CLI's summary line; `from` says what was read ("segment manifests").
    pub fn summary<'a>(&'a self, from: &'a str) -> impl std::fmt::Display + 'a {
        struct Summary<'a>(&'a BuildReport, &'a str);
        impl std::fmt::Display for Summary<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let r = self.0;
                writeln!(
                    f,
                    "indexed {} flow parts from {} ({} records read, {} skipped) in {:.2}s ({:.0} records/s)",
                    r.applied,
                    self.1,
                    r.records,
                    r.skipped,
                    r.seconds,
                    r.records as f64 / r.seconds.max(1e-9)
                )
            }
        }
        Summary(self, from)
    }
}

const BATCH: usize = 1000;

/// The index record in one published line; `None` for lines that are not ours
/// (other event types, damaged lines).
pub fn record_from_line(line: &[u8]) -> Option<IndexRecord> {
    let event: PublishedEvent = serde_json::from_slice(line).ok()?;
    IndexRecord::from_event(&event.event_type, event.data)
}

/// Applies the records file from the saved position (or from its start) to its end;
/// with `follow`, keeps reading until `cancel` fires.
pub async fn from_records_file(
    index: std::sync::Arc<Index>,
    path: &Path,
    from_beginning: bool,
    follow: Option<CancellationToken>,
) -> Result<BuildReport, BuildError> {
    let started = std::time::Instant::now();
    let source = format!(
        "file:{}",
        std::path::absolute(path)
            .unwrap_or(path.to_path_buf())
            .display()
    );
    if from_beginning {
        let ix = index.clone();
        tokio::task::spawn_blocking(move || ix.clear()).await??;
    }
    let mut report = BuildReport::default();
    loop {
        let (ix, p, s) = (index.clone(), path.to_path_buf(), source.clone());
        let step = tokio::task::spawn_blocking(move || apply_new_lines(&ix, &p, &s)).await??;
        report.records += step.records;
        report.applied += step.applied;
        report.skipped += step.skipped;
        let Some(cancel) = &follow else { break };
        if step.records == 0 {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Reads whole lines after the saved byte offset, in batches, each applied with the
/// offset after it.
fn apply_new_lines(index: &Index, path: &Path, source: &str) -> Result<BuildReport, BuildError> {
    let io = |e| BuildError::Io {
        path: path.display().to_string(),
        source: e,
    };
    let mut report = BuildReport::default();
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(io(e)),
    };
    let mut offset: u64 = index
        .position(source)?
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut batch = Vec::with_capacity(BATCH);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io)?;
        // A line without its newline is still being written: leave it for later.
        let complete = n > 0 && line.last() == Some(&b'\n');
        if complete {
            offset += n as u64;
            report.records += 1;
            match record_from_line(&line) {
                Some(r) => batch.push(r),
                None => report.skipped += 1,
            }
        }
        if batch.len() >= BATCH || (!complete && (!batch.is_empty() || report.records > 0)) {
            report.applied += batch.len() as u64;
            index.apply(&batch, Some((source, &offset.to_string())))?;
            batch.clear();
        }
        if !complete {
            return Ok(report);
        }
    }
}

/// How long a one-shot build waits for more broker records before it stops.
const QUIET: Duration = Duration::from_secs(2);

/// Decodes one `flow.archived` Kafka record (binary-mode CloudEvent, Avro or JSON data).
pub fn record_from_kafka(
    headers: &[(String, Vec<u8>)],
    value: &[u8],
    avro: &crate::publish::encoding::DataDecoder,
) -> Option<IndexRecord> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    };
    let Some(event_type) = header("ce_type").and_then(|t| std::str::from_utf8(t).ok()) else {
        // Structured mode.
        return record_from_line(value);
    };
    let data = match header("content-type") {
        Some(b"application/avro") => avro.decode(value).ok()?,
        _ => serde_json::from_slice::<EventData>(value).ok()?,
    };
    IndexRecord::from_event(event_type, data)
}

/// Applies the archived Kafka topic from the positions saved in the index (partition
/// offsets, stored with the rows they produced), or from its start.
pub async fn from_kafka(
    index: std::sync::Arc<Index>,
    k: &crate::config::KafkaConfig,
    from_beginning: bool,
    follow: Option<CancellationToken>,
) -> Result<BuildReport, BuildError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let started = std::time::Instant::now();
    let kafka = |e: String| BuildError::Broker(format!("kafka: {e}"));
    if from_beginning {
        let ix = index.clone();
        tokio::task::spawn_blocking(move || ix.clear()).await??;
    }
    let (k, ix, cancel) = (k.clone(), index.clone(), follow.clone());
    let report = tokio::task::spawn_blocking(move || -> Result<BuildReport, BuildError> {
        let consumer: BaseConsumer<crate::kafka::QuietLogs> = crate::kafka::client_config(&k)
            .set("group.id", format!("{}-index", k.group_id))
            .set("enable.auto.commit", "false")
            .create_with_context(crate::kafka::QuietLogs::default())
            .map_err(|e| kafka(crate::kafka::describe(&e)))?;
        let topic = k.archived_topic.as_str();
        crate::kafka::require_topics(consumer.client(), &k.brokers, &[topic]).map_err(kafka)?;
        let metadata = consumer
            .fetch_metadata(Some(topic), crate::kafka::METADATA_TIMEOUT)
            .map_err(|e| kafka(crate::kafka::describe(&e)))?;
        let mut assignment = rdkafka::TopicPartitionList::new();
        for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let saved = ix
                .position(&format!("kafka:{topic}/{}", p.id()))?
                .and_then(|o| o.parse::<i64>().ok());
            let offset = saved
                .map(rdkafka::Offset::Offset)
                .unwrap_or(rdkafka::Offset::Beginning);
            assignment
                .add_partition_offset(topic, p.id(), offset)
                .map_err(|e| kafka(e.to_string()))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| kafka(e.to_string()))?;
        let decoder =
            crate::publish::encoding::DataDecoder::new().map_err(|e| kafka(e.to_string()))?;
        let mut report = BuildReport::default();
        let mut last_record = std::time::Instant::now();
        loop {
            let mut batch = Vec::new();
            let mut positions = std::collections::BTreeMap::new();
            while batch.len() < BATCH {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        report.records += 1;
                        let headers: Vec<(String, Vec<u8>)> = m
                            .headers()
                            .map(|h| {
                                h.iter()
                                    .map(|h| {
                                        (h.key.to_string(), h.value.unwrap_or_default().to_vec())
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        match record_from_kafka(&headers, m.payload().unwrap_or_default(), &decoder)
                        {
                            Some(r) => batch.push(r),
                            None => report.skipped += 1,
                        }
                        positions.insert(
                            format!("kafka:{topic}/{}", m.partition()),
                            (m.offset() + 1).to_string(),
                        );
                        last_record = std::time::Instant::now();
                    }
                    // Transient (a broker restart): librdkafka reconnects.
                    Some(Err(e)) => consumer
                        .context()
                        .error(&e, "error while indexing; retrying"),
                    None => break,
                }
            }
            if !positions.is_empty() {
                report.applied += batch.len() as u64;
                let positions: Vec<(String, String)> = positions.into_iter().collect();
                ix.apply_at(&batch, &positions)?;
            }
            match &cancel {
                Some(c) if c.is_cancelled() => break,
                Some(_) => {}
                None if last_record.elapsed() >= QUIET => break,
                None => {}
            }
        }
        Ok(report)
    })
    .await??;
    Ok(BuildReport {
        seconds: started.elapsed().as_secs_f64(),
        ..report
    })
}

/// Applies the compacted archived NATS stream from the stream sequence saved in the
/// index, or from its start, through an ephemeral consumer.
pub async fn from_nats(
    index: std::sync::Arc<Index>,
    n: &crate::config::NatsConfig,
    from_beginning: bool,
    follow: Option<CancellationToken>,
) -> Result<BuildReport, BuildError> {
    use async_nats::jetstream::{self, consumer};
    use futures::StreamExt;
    let started = std::time::Instant::now();
    let nats = |e: String| BuildError::Broker(format!("nats: {e}"));
    if from_beginning {
        let ix = index.clone();
        tokio::task::spawn_blocking(move || ix.clear()).await??;
    }
    let client = crate::nats::connect(n).await.map_err(nats)?;
    let js = jetstream::new(client);
    let stream = crate::nats::ensure_stream(&js, crate::nats::archived_stream_config(n))
        .await
        .map_err(nats)?;
    let source = format!("nats:{}", n.archived_stream);
    let ix = index.clone();
    let s = source.clone();
    let saved = tokio::task::spawn_blocking(move || ix.position(&s)).await??;
    let deliver_policy = match saved.and_then(|p| p.parse::<u64>().ok()) {
        Some(seq) => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
        None => consumer::DeliverPolicy::All,
    };
    let reader: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(|e| nats(e.to_string()))?;
    let mut messages = reader
        .stream()
        .max_messages_per_batch(BATCH)
        .messages()
        .await
        .map_err(|e| nats(e.to_string()))?;
    let mut report = BuildReport::default();
    loop {
        let mut batch = Vec::new();
        let mut last_seq = None;
        while batch.len() < BATCH {
            let wait = if batch.is_empty() {
                QUIET
            } else {
                Duration::from_millis(100)
            };
            let next = match &follow {
                Some(c) => tokio::select! {
                    _ = c.cancelled() => None,
                    m = tokio::time::timeout(wait, messages.next()) => Some(m),
                },
                None => Some(tokio::time::timeout(wait, messages.next()).await),
            };
            match next {
                None => break,
                Some(Err(_quiet)) => break,
                Some(Ok(None)) => break,
                Some(Ok(Some(Err(e)))) => {
                    tracing::warn!(error = %e, "NATS error while indexing; retrying.");
                    break;
                }
                Some(Ok(Some(Ok(m)))) => {
                    report.records += 1;
                    if let Ok(info) = m.info() {
                        last_seq = Some(info.stream_sequence);
                    }
                    match record_from_line(&m.payload) {
                        Some(r) => batch.push(r),
                        None => report.skipped += 1,
                    }
                }
            }
        }
        if let Some(seq) = last_seq {
            report.applied += batch.len() as u64;
            let ix = index.clone();
            let positions = vec![(source.clone(), seq.to_string())];
            tokio::task::spawn_blocking(move || ix.apply_at(&batch, &positions)).await??;
        } else {
            match &follow {
                Some(c) if !c.is_cancelled() => continue,
                _ => break,
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Follows (or, without `follow`, catches up with) wherever `flow.archived` goes.
pub async fn from_destination(
    index: std::sync::Arc<Index>,
    config: &crate::config::Config,
    from_beginning: bool,
    follow: Option<CancellationToken>,
) -> Result<BuildReport, BuildError> {
    use crate::config::Destination;
    match config.publish.destination {
        Destination::File => {
            from_records_file(index, &config.publish.archived_path, from_beginning, follow).await
        }
        Destination::Kafka => from_kafka(index, &config.kafka, from_beginning, follow).await,
        Destination::Nats => from_nats(index, &config.nats, from_beginning, follow).await,
    }
}

/// Rebuilds the index from the segment manifests alone: every object under the archive
/// prefix is listed, its manifest read, and each part indexed as its `flow.archived`
/// record had it. The object SHA-256 comes from the object's metadata, or is computed.
pub async fn from_archive(
    index: std::sync::Arc<Index>,
    objects: &ArchiveStore,
    on_object: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<BuildReport, BuildError> {
    let started = std::time::Instant::now();
    let ix = index.clone();
    tokio::task::spawn_blocking(move || ix.clear()).await??;
    let keys = objects.list_keys(None).await?;
    let total = keys.len() as u64;
    let mut report = BuildReport::default();
    for (n, key) in keys.into_iter().enumerate() {
        let manifest = crate::archive::read_manifest(objects, &key).await?;
        let (actual, kept) = match objects.object_sha256(&key).await? {
            (actual, Some(kept)) => (actual, kept),
            (actual, None) => (actual.clone(), actual),
        };
        if actual != kept {
            tracing::warn!(key = %key, "Object does not match its recorded SHA-256; indexed anyway (run verify).");
        }
        let parts = manifest.parts.iter().filter(|p| {
            match crate::archive::entry_problem(&manifest, p) {
                Some(why) => {
                    tracing::warn!(key = %key, problem = %why, "Manifest entry not indexed (run verify).");
                    report.skipped += 1;
                    false
                }
                None => true,
            }
        });
        let records: Vec<IndexRecord> = parts
            .map(|p| {
                IndexRecord::Archived(Box::new(FlowArchived::from_manifest(
                    &manifest,
                    p,
                    &objects.uri(&key),
                    &key,
                    &kept,
                )))
            })
            .collect();
        report.records += records.len() as u64;
        report.applied += records.len() as u64;
        let ix = index.clone();
        tokio::task::spawn_blocking(move || ix.apply(&records, None)).await??;
        on_object(n as u64 + 1, total);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
