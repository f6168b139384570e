//! A JSON Lines file or stdin as a source; one record per line.
//!
//! Positions are byte offsets. A line longer than the record limit is read to its end
//! but only its first `limit + 1` bytes are kept (and marked truncated), so one
//! enormous line cannot exhaust memory. With `follow`, the source waits at end of file
//! for more lines (like `tail -f`) and never hands out an unterminated last line.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncSeekExt, BufReader};

use super::{Batch, Position, RawRecord, Source, SourceError};

enum Input {
    Path(PathBuf),
    Stdin,
}

pub struct FileSource {
    input: Input,
    name: String,
    follow: bool,
    limit: usize,
    reader: Option<Box<dyn AsyncBufRead + Send + Unpin>>,
    /// Byte offset of the next unread line.
    offset: u64,
    /// Partial line carried over while following.
    pending: Vec<u8>,
    pending_len: u64,
    pending_terminated: bool,
    eof: bool,
    batches: u64,
}

impl FileSource {
    pub fn path(path: &str, follow: bool, limit: usize) -> FileSource {
        let abs = std::path::absolute(path).unwrap_or_else(|_| PathBuf::from(path));
        Self::new(
            format!("file:{}", abs.display()),
            Input::Path(abs),
            follow,
            limit,
        )
    }

    /// Stdin is read to its end; its position is not checkpointed.
    pub fn stdin(limit: usize) -> FileSource {
        Self::new("stdin".into(), Input::Stdin, false, limit)
    }

    fn new(name: String, input: Input, follow: bool, limit: usize) -> FileSource {
        FileSource {
            input,
            name,
            follow,
            limit,
            reader: None,
            offset: 0,
            pending: Vec::new(),
            pending_len: 0,
            pending_terminated: false,
            eof: false,
            batches: 0,
        }
    }

    fn io_err(&self, source: std::io::Error) -> SourceError {
        SourceError::Io {
            input: self.name.clone(),
            source,
        }
    }

    async fn open(&mut self) -> Result<(), SourceError> {
        if self.reader.is_some() {
            return Ok(());
        }
        let reader: Box<dyn AsyncBufRead + Send + Unpin> = match &self.input {
            Input::Stdin => Box::new(BufReader::with_capacity(1 << 20, tokio::io::stdin())),
            Input::Path(p) => {
                let mut f = tokio::fs::File::open(p).await.map_err(|e| self.io_err(e))?;
                f.seek(std::io::SeekFrom::Start(self.offset))
                    .await
                    .map_err(|e| self.io_err(e))?;
                Box::new(BufReader::with_capacity(1 << 20, f))
            }
        };
        self.reader = Some(reader);
        Ok(())
    }

    /// Reads up to the next newline into `pending`, keeping at most `limit + 1` bytes.
    /// Returns true when a whole line (or a final unterminated line) is ready.
    async fn read_line(&mut self) -> Result<bool, SourceError> {
        let keep = self.limit + 1;
        loop {
            let Some(reader) = self.reader.as_mut() else {
                return Ok(false);
            };
            let buf = match reader.fill_buf().await {
                Ok(b) => b,
                Err(e) => return Err(self.io_err(e)),
            };
            if buf.is_empty() {
                return Ok(false);
            }
            let (chunk, done) = match memchr::memchr(b'\n', buf) {
                Some(i) => (&buf[..=i], true),
                None => (buf, false),
            };
            let room = keep.saturating_sub(self.pending.len());
            self.pending
                .extend_from_slice(&chunk[..chunk.len().min(room)]);
            let n = chunk.len();
            self.pending_len += n as u64;
            reader.consume(n);
            if done {
                self.pending_terminated = true;
                return Ok(true);
            }
        }
    }

    fn take_record(&mut self) -> RawRecord {
        let mut payload = std::mem::take(&mut self.pending);
        let mut len = self.pending_len;
        self.pending_len = 0;
        let start = self.offset;
        self.offset += len;
        let kept_whole = payload.len() as u64 == len;
        if self.pending_terminated {
            len -= 1;
            if kept_whole {
                payload.pop();
            }
            if kept_whole && payload.last() == Some(&b'\r') {
                payload.pop();
                len -= 1;
            }
        }
        self.pending_terminated = false;
        let truncated = len > payload.len() as u64;
        RawRecord {
            key: None,
            payload,
            headers: Vec::new(),
            position: Position::Offset(start),
            truncated,
            original_len: len,
            given_up: None,
        }
    }
}

#[async_trait]
impl Source for FileSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn checkpoint_in_state(&self) -> bool {
        matches!(self.input, Input::Path(_))
    }

    async fn resume(&mut self, checkpoint: &[u8]) -> Result<(), SourceError> {
        if let Ok(bytes) = <[u8; 8]>::try_from(checkpoint) {
            self.offset = u64::from_be_bytes(bytes);
            self.reader = None;
        }
        Ok(())
    }

    async fn next_batch(&mut self, max: usize) -> Result<Option<Batch>, SourceError> {
        self.open().await?;
        let mut records = Vec::new();
        while records.len() < max {
            if self.read_line().await? {
                let record = self.take_record();
                // Blank lines carry nothing to dead-letter; they still advance the offset.
                if !record.payload.iter().all(u8::is_ascii_whitespace) || record.truncated {
                    records.push(record);
                }
                continue;
            }
            // End of the input for now.
            if self.follow {
                if records.is_empty() {
                    // Idle: hand back an empty batch after a pause so the caller can
                    // finish what is in flight.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                break;
            }
            if !self.pending.is_empty() || self.pending_len > 0 {
                let record = self.take_record();
                if !record.payload.iter().all(u8::is_ascii_whitespace) {
                    records.push(record);
                }
            }
            self.eof = true;
            break;
        }
        if records.is_empty() && self.eof {
            return Ok(None);
        }
        // With `follow`, a partial line stays pending: the checkpoint covers only whole
        // lines, so a restart re-reads it from its start.
        self.batches += 1;
        Ok(Some(Batch {
            seq: self.batches,
            records,
            checkpoint: Some(self.offset.to_be_bytes().to_vec()),
        }))
    }

    async fn commit(&mut self, _through: u64) -> Result<(), SourceError> {
        // The position is stored with the events themselves.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_offsets_and_oversize() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let long = "x".repeat(100);
        std::fs::write(&path, format!("a\r\n\n{long}\nlast")).unwrap();
        let mut src = FileSource::path(path.to_str().unwrap(), false, 10);
        let batch = src.next_batch(100).await.unwrap().unwrap();
        let r = &batch.records;
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].payload, b"a");
        assert_eq!(r[1].position.to_string(), "offset 4");
        assert!(r[1].truncated && r[1].payload.len() == 11 && r[1].original_len == 100);
        assert_eq!(r[2].payload, b"last");
        assert_eq!(
            batch.checkpoint,
            Some((4 + 101 + 4u64).to_be_bytes().to_vec())
        );
        assert!(src.next_batch(100).await.unwrap().is_none());

        let mut again = FileSource::path(path.to_str().unwrap(), false, 10);
        again.resume(&4u64.to_be_bytes()).await.unwrap();
        let batch = again.next_batch(1).await.unwrap().unwrap();
        assert_eq!(batch.records[0].position.to_string(), "offset 4");
    }
}
