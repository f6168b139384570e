//! Where workflow events come from.
//!
//! [`Source`] is the seam: a source hands out batches of raw records and learns,
//! through [`Source::commit`], when records are durable in the state store so it may
//! acknowledge them upstream (commit offsets, ack messages). It never acknowledges
//! earlier. The file source (`file:PATH`, `stdin`) keeps its position in the state
//! store itself, in the same transaction as the events.

mod file;

use async_trait::async_trait;

pub use file::FileSource;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {input}: {source}")]
    Io {
        input: String,
        source: std::io::Error,
    },
    #[error("invalid source {0:?}: use file:PATH, a path, or stdin (-)")]
    Spec(String),
}

/// One input record, as received.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    pub payload: Vec<u8>,
    /// Broker headers (empty for files).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Human-readable position (`offset 1234`, `partition 3 offset 99`).
    pub position: String,
    /// The payload was cut at the size limit; `original_len` is the full length.
    pub truncated: bool,
    pub original_len: u64,
}

/// A batch plus the checkpoint that marks it consumed.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<RawRecord>,
    /// Opaque position after the batch; stored with the events when the source keeps
    /// its checkpoint in the state store.
    pub checkpoint: Option<Vec<u8>>,
}

#[async_trait]
pub trait Source: Send {
    /// A stable name for dead letters and checkpoints (`file:/abs/path`, `stdin`).
    fn name(&self) -> &str;

    /// Whether the source's position lives in the state store (files) rather than
    /// upstream (brokers).
    fn checkpoint_in_state(&self) -> bool;

    /// Resumes after a checkpoint read back from the state store.
    async fn resume(&mut self, checkpoint: &[u8]) -> Result<(), SourceError>;

    /// Up to `max` records; `Ok(None)` when a finite source is exhausted. A following
    /// source waits for more input instead.
    async fn next_batch(&mut self, max: usize) -> Result<Option<Batch>, SourceError>;

    /// Everything handed out so far is durable: acknowledge it upstream.
    async fn commit(&mut self) -> Result<(), SourceError>;
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
