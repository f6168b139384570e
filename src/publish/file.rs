//! JSON Lines files as publish and dead-letter destinations.
//!
//! Appends are fsynced before a call returns. A crash in the middle of a write can
//! leave a partial last line; opening the file cuts it off (it was never reported as
//! written, so it will be written again).

use std::collections::HashSet;
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;

use super::{DeadLetter, DeadLetterSink, PublishError, PublishedEvent, Publisher};

/// An append-only JSON Lines file, safe to share between tasks.
#[derive(Debug)]
pub struct JsonLinesFile {
    path: PathBuf,
    // A std Mutex: held only for a write + fsync, never across an await.
    file: Mutex<std::fs::File>,
}

impl JsonLinesFile {
    pub fn open(path: &Path) -> Result<JsonLinesFile, PublishError> {
        let io_err = |source| PublishError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            crate::durable::create_dir_all_synced(dir).map_err(io_err)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io_err)?;
        crate::durable::sync_dir_of(path).map_err(io_err)?;
        cut_partial_line(&mut file).map_err(io_err)?;
        Ok(JsonLinesFile {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line per item and fsyncs.
    pub fn append<T: Serialize>(&self, items: &[T]) -> Result<(), PublishError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for item in items {
            serde_json::to_writer(&mut buf, item)
                .map_err(|e| PublishError::Encode(e.to_string()))?;
            buf.push(b'\n');
        }
        self.append_raw(&buf)
    }

    fn append_raw(&self, buf: &[u8]) -> Result<(), PublishError> {
        let io_err = |source| PublishError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let file = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut f: &std::fs::File = &file;
        f.write_all(buf).map_err(io_err)?;
        f.sync_data().map_err(io_err)
    }
}

/// Truncates the file after its last newline.
fn cut_partial_line(file: &mut std::fs::File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut pos = len;
    let mut buf = [0u8; 4096];
    while pos > 0 {
        let start = pos.saturating_sub(buf.len() as u64);
        let n = (pos - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep != len {
                file.set_len(keep)?;
                file.sync_all()?;
            }
            return Ok(());
        }
        pos = start;
    }
    file.set_len(0)?;
    file.sync_all()
}

/// `flow.archived` events as JSON Lines (`./data/events/archived.jsonl` by default).
#[derive(Debug)]
pub struct FilePublisher {
    out: Arc<JsonLinesFile>,
}

impl FilePublisher {
    pub fn open(path: &Path) -> Result<FilePublisher, PublishError> {
        Ok(FilePublisher {
            out: Arc::new(JsonLinesFile::open(path)?),
        })
    }
}

#[async_trait]
impl Publisher for FilePublisher {
    async fn publish(&self, events: &[PublishedEvent]) -> Result<(), PublishError> {
        let events_len = events.len();
        let mut buf = Vec::new();
        for e in events {
            serde_json::to_writer(&mut buf, e).map_err(|e| PublishError::Encode(e.to_string()))?;
            buf.push(b'\n');
        }
        let out = self.out.clone();
        blocking(move || {
            if crate::failpoint::armed("mid-publish") && buf.len() > 1 {
                // Test hook: a crash after half of the lines reached the disk.
                let half = buf
                    .iter()
                    .enumerate()
                    .filter(|(_, &b)| b == b'\n')
                    .nth(events_len / 2);
                if let Some((i, _)) = half {
                    out.append_raw(&buf[..=i])?;
                    crate::failpoint::hit("mid-publish");
                    return out.append_raw(&buf[i + 1..]);
                }
            }
            out.append_raw(&buf)
        })
        .await
    }

    async fn already_published(&self, ids: &[String]) -> Result<HashSet<String>, PublishError> {
        // A full scan, run only when resuming an interrupted intent after a restart.
        let wanted: HashSet<String> = ids.iter().cloned().collect();
        let path = self.out.path().to_path_buf();
        blocking(move || scan_ids(&path, &wanted)).await
    }

    fn destination(&self) -> (&'static str, String) {
        let path = self.out.path();
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        ("file", path.display().to_string())
    }
}

fn scan_ids(path: &Path, wanted: &HashSet<String>) -> Result<HashSet<String>, PublishError> {
    let io_err = |source| PublishError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let mut found = HashSet::new();
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: String,
    }
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(io_err)?;
        if let Ok(rec) = serde_json::from_str::<IdOnly>(&line) {
            if wanted.contains(&rec.id) {
                found.insert(rec.id);
            }
        }
    }
    Ok(found)
}

/// Runs blocking file I/O off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PublishError> + Send + 'static,
) -> Result<T, PublishError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PublishError::Io {
            path: "blocking task".into(),
            source: std::io::Error::other(e),
        })?
}

/// Dead letters as JSON Lines (`./data/dead-letter.jsonl` by default).
#[derive(Debug)]
pub struct FileDeadLetters {
    out: Arc<JsonLinesFile>,
}

impl FileDeadLetters {
    pub fn open(path: &Path) -> Result<FileDeadLetters, PublishError> {
        Ok(FileDeadLetters {
            out: Arc::new(JsonLinesFile::open(path)?),
        })
    }
}

#[async_trait]
impl DeadLetterSink for FileDeadLetters {
    async fn send(&self, letters: &[DeadLetter]) -> Result<(), PublishError> {
        let out = self.out.clone();
        let letters = letters.to_vec();
        blocking(move || out.append(&letters)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_last_line_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(&path, b"{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":").unwrap();
        let f = JsonLinesFile::open(&path).unwrap();
        f.append(&[serde_json::json!({"id": "c"})]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"c\"}\n");
        std::fs::write(&path, b"no newline at all").unwrap();
        JsonLinesFile::open(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }
}
