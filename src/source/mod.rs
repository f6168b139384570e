//! Where workflow events come from.
//!
//! [`Source`] is the seam: a source hands out numbered batches of raw records and
//! learns, through [`Source::commit`], which of them are durable in the state store so
//! it may acknowledge them upstream (store offsets, ack messages). It never
//! acknowledges earlier. The file source (`file:PATH`, `stdin`) keeps its position in
//! the state store itself, in the same transaction as the events; the Kafka source
//! stores consumer offsets only for committed batches.

mod cumulative_acks;
mod file;
pub mod kafka;
pub mod nats;

use async_trait::async_trait;

pub use file::FileSource;
pub use kafka::KafkaSource;
pub use nats::NatsSource;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {input}: {source}")]
    Io {
        input: String,
        source: std::io::Error,
    },
    #[error("invalid source {0:?}: use nats, kafka, file:PATH, a path, or stdin (-)")]
    Spec(String),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("nats: {0}")]
    Nats(String),
}

/// One input record, as received.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawRecord {
    /// The broker record key, if any.
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Broker headers (empty for files).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Where the record is in its source; formatted only when a dead letter names it.
    pub position: Position,
    /// The payload was cut at the size limit; `original_len` is the full length.
    pub truncated: bool,
    pub original_len: u64,
    /// Set when the source gives up on the record (delivered too many times): it is
    /// dead-lettered with this detail instead of decoded.
    pub given_up: Option<String>,
}

/// Where a record came from. Formatting every record's position cost a measurable
/// share of ingest, and only dead letters print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// A byte offset in a file: `offset 1234`.
    Offset(u64),
    /// A message of a stream: `{stream} seq {n}`.
    Sequence {
        stream: std::sync::Arc<str>,
        seq: u64,
    },
    /// Anything else, already in words (`topic/partition@offset`).
    Named(String),
}

impl Default for Position {
    fn default() -> Position {
        Position::Named(String::new())
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Offset(n) => write!(f, "offset {n}"),
            Position::Sequence { stream, seq } => write!(f, "{stream} seq {seq}"),
            Position::Named(text) => f.write_str(text),
        }
    }
}

/// A batch plus the checkpoint that marks it consumed. A batch may be empty: a
/// source that waits for input returns one now and then, so that work in flight is
/// finished and acknowledged while the input is idle.
#[derive(Debug, Default)]
pub struct Batch {
    /// Numbers the batches in the order `next_batch` returns them, so that
    /// [`Source::commit`] can say exactly which are durable.
    pub seq: u64,
    pub records: Vec<RawRecord>,
    /// Opaque position after the batch; stored with the events when the source keeps
    /// its checkpoint in the state store.
    pub checkpoint: Option<Vec<u8>>,
}

/// What ingest spans say about a source (OpenTelemetry messaging attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Messaging {
    /// `messaging.system`: `kafka`, `nats` or `file`.
    pub system: &'static str,
    /// `messaging.destination.name`: topics, subject filter, or the file.
    pub destination: String,
    /// `messaging.consumer.group.name`: the Kafka group or the JetStream consumer.
    pub consumer_group: Option<String>,
}

#[async_trait]
pub trait Source: Send {
    /// A stable name for dead letters and checkpoints (`file:/abs/path`, `stdin`).
    fn name(&self) -> &str;

    /// Whether the source's position lives in the state store, written with each batch
    /// (files), rather than upstream in committed offsets or acks (brokers, the
    /// default).
    fn checkpoint_in_state(&self) -> bool {
        false
    }

    /// For spans; files and stdin by default.
    fn messaging(&self) -> Messaging {
        Messaging {
            system: "file",
            destination: self.name().to_string(),
            consumer_group: None,
        }
    }

    /// Resumes after a checkpoint read back from the state store; called only when
    /// [`Source::checkpoint_in_state`] (a broker resumes where its group or consumer
    /// committed).
    async fn resume(&mut self, _checkpoint: &[u8]) -> Result<(), SourceError> {
        Ok(())
    }

    /// Up to `max` records; `Ok(None)` when a finite source is exhausted. A following
    /// source waits for more input instead.
    async fn next_batch(&mut self, max: usize) -> Result<Option<Batch>, SourceError>;

    /// Batches up to and including `through` (by [`Batch::seq`]) are durable:
    /// acknowledge them upstream. Batches handed out later are not covered.
    async fn commit(&mut self, through: u64) -> Result<(), SourceError>;

    /// Stops reading and releases upstream resources (leaves a consumer group after a
    /// final commit). Called once, after the last [`Source::commit`].
    async fn close(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// Opens the source `run` reads: `nats` (the `nats` section), `kafka` (the `kafka`
/// section), `kafka:T1,T2` (those topics), or a file to follow (`file:PATH`, a path,
/// `stdin`).
pub async fn open_for_run(
    spec: &str,
    config: &crate::config::Config,
) -> Result<Box<dyn Source>, SourceError> {
    if spec == "nats" {
        let shared = config.state.backend == crate::config::StateBackend::Postgres;
        let source = NatsSource::open(&config.nats, config.input.batch_size, shared).await?;
        return Ok(Box::new(source));
    }
    if spec == "kafka" || spec.starts_with("kafka:") {
        let mut k = config.kafka.clone();
        if let Some(topics) = spec.strip_prefix("kafka:") {
            k.topics = topics.split(',').map(|t| t.trim().to_string()).collect();
            if let Some(bad) = k.topics.iter().find(|t| !crate::kafka::valid_topic_name(t)) {
                return Err(SourceError::Spec(format!(
                    "kafka:{topics} (topic {bad:?} is not a valid name)"
                )));
            }
        }
        let batch = config.input.batch_size;
        let local = config.state.backend == crate::config::StateBackend::Embedded;
        let source = tokio::task::spawn_blocking(move || KafkaSource::open(&k, batch, local))
            .await
            .map_err(|e| SourceError::Kafka(e.to_string()))??;
        return Ok(Box::new(source));
    }
    Ok(Box::new(open_spec(
        spec,
        true,
        config.input.max_event_bytes,
    )?))
}

/// Parses `file:PATH`, `stdin`, `-` or a bare path.
pub fn open_spec(
    spec: &str,
    follow: bool,
    max_record_bytes: usize,
) -> Result<FileSource, SourceError> {
    match spec {
        "-" | "stdin" => Ok(FileSource::stdin(max_record_bytes)),
        s if s.starts_with("file:") => Ok(FileSource::path(
            &s["file:".len()..],
            follow,
            max_record_bytes,
        )),
        s if s.contains("://") || s.is_empty() => Err(SourceError::Spec(s.to_string())),
        s => Ok(FileSource::path(s, follow, max_record_bytes)),
    }
}
