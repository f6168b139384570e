//! The event journal: event bytes live in append-only files next to the B-tree, which
//! keeps a 21-byte pointer per event instead of the bytes themselves.
//!
//! Why: a copy-on-write B-tree rewrites every leaf page an ingest batch touches, so
//! storing ~500-byte events in it wrote each event several times over (page copies,
//! splits, and again at deletion). Appending the batch to one file and indexing small
//! pointers keeps the B-tree an order of magnitude smaller and its pages hot.
//!
//! Guarantees:
//! - A batch's bytes are written and `fdatasync`ed before the transaction that points
//!   at them commits; the committed end of the active file is stored in that same
//!   transaction, so a crash leaves at most an unreferenced tail, cut off at open. A
//!   new file's directory entry is fsynced when it is created, before any pointer
//!   into it can commit.
//! - Every pointer carries the CRC-32 of its bytes; a read that does not match is an
//!   error naming the file, never silently wrong history (`StateError::Erased` when
//!   the bytes are zeros, which an erasure leaves for snapshots older than it).
//! - A file is deleted once no live event points into it (its live count, kept in the
//!   `journal` table, reaches zero) and no reader opened before that could still read
//!   it. Files with no row in the table (created by a batch that never committed) are
//!   deleted at open.
//! - Erasure overwrites an event's bytes with zeros in place before its pointer goes.
//!
//! Files: `{state dir}/journal/{id:08}.log`, a new one once the active file passes
//! `state.journal_file_bytes`. Disk use is bounded by the oldest file a live flow still points
//! into: with an `abandoned` retention every flow is archived within that period.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::StateError;

/// First byte of a pointer value in the `flows` table. Stored event bytes are UTF-8
/// (the decoder rejects anything else), which never contains `0xFF`; so a value
/// starting with it is a pointer, and any other value is an event stored inline by a
/// store written before the journal existed.
pub(super) const POINTER_TAG: u8 = 0xFF;
pub(super) const POINTER_LEN: usize = 21;

/// Where one event's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct EventPointer {
    pub file: u32,
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
}

impl EventPointer {
    pub fn encode(&self) -> [u8; POINTER_LEN] {
        let mut out = [0u8; POINTER_LEN];
        out[0] = POINTER_TAG;
        out[1..5].copy_from_slice(&self.file.to_be_bytes());
        out[5..13].copy_from_slice(&self.offset.to_be_bytes());
        out[13..17].copy_from_slice(&self.len.to_be_bytes());
        out[17..21].copy_from_slice(&self.crc.to_be_bytes());
        out
    }

    /// `None` when `value` is not a pointer (an inline event of an older store).
    pub fn decode(value: &[u8]) -> Option<EventPointer> {
        if value.len() != POINTER_LEN || value[0] != POINTER_TAG {
            return None;
        }
        let u32_at =
            |i: usize| u32::from_be_bytes([value[i], value[i + 1], value[i + 2], value[i + 3]]);
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&value[5..13]);
        Some(EventPointer {
            file: u32_at(1),
            offset: u64::from_be_bytes(offset),
            len: u32_at(13),
            crc: u32_at(17),
        })
    }
}

/// Per-file bookkeeping stored in the `journal` table:
/// `live events u64 | live bytes u64 | end u64`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct FileRow {
    /// Events still pointing into the file.
    pub live: u64,
    /// Their bytes.
    pub live_bytes: u64,
    /// Bytes of the file covered by committed transactions.
    pub end: u64,
}

impl FileRow {
    pub fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.live.to_be_bytes());
        out[8..16].copy_from_slice(&self.live_bytes.to_be_bytes());
        out[16..].copy_from_slice(&self.end.to_be_bytes());
        out
    }

    pub fn decode(value: &[u8]) -> Result<FileRow, StateError> {
        if value.len() != 24 {
            return Err(super::keys::corrupt(
                "journal row",
                format!("{} bytes, not 24", value.len()),
            ));
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&value[i..i + 8]);
            u64::from_be_bytes(b)
        };
        Ok(FileRow {
            live: u64_at(0),
            live_bytes: u64_at(8),
            end: u64_at(16),
        })
    }

    /// Worth compacting: less than a quarter of the file is still live.
    pub fn mostly_dead(&self) -> bool {
        self.live_bytes.saturating_mul(4) < self.end
    }
}

/// Live bytes moved by one compaction transaction at most (one file may exceed it:
/// a mostly-dead file holds at most a quarter of `state.journal_file_bytes`).
pub(super) const COMPACTION_BUDGET: u64 = 8 << 20;

fn io(path: &Path, e: std::io::Error) -> StateError {
    StateError::Journal {
        path: path.display().to_string(),
        source: e,
    }
}

/// The file being appended to.
pub(super) struct Active {
    pub id: u32,
    file: File,
    path: PathBuf,
    /// Next write offset (committed end, plus any bytes of batches that failed).
    pub len: u64,
}

impl Active {
    /// Appends `bytes` at the end (offset `len`) and makes them durable.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let at = self.len;
        // Whatever happens, never hand out these offsets again.
        self.len += bytes.len() as u64;
        self.file
            .write_all_at(bytes, at)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io(&self.path, e))
    }
}

pub(super) struct Journal {
    dir: PathBuf,
    /// Size after which the next batch starts a new file.
    file_bytes: u64,
    active: Mutex<Active>,
    /// One clone per open reader: files are only deleted when no reader is open.
    readers: Arc<()>,
    /// Files no live event points into any more, waiting for readers to close.
    doomed: Mutex<Vec<u32>>,
}

impl Journal {
    pub fn path_of(dir: &Path, id: u32) -> PathBuf {
        dir.join(format!("{id:08}.log"))
    }

    /// Opens the journal in `dir` given the committed rows (`id → row`): cuts the
    /// newest file back to its committed end and deletes files without a row.
    pub fn open(
        dir: &Path,
        rows: &[(u32, FileRow)],
        file_bytes: u64,
    ) -> Result<Journal, StateError> {
        crate::durable::create_dir_all_synced(dir).map_err(|e| io(dir, e))?;
        let known: HashMap<u32, FileRow> = rows.iter().copied().collect();
        for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let entry = entry.map_err(|e| io(dir, e))?;
            let name = entry.file_name();
            let id = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u32>().ok());
            match id {
                Some(id) if known.contains_key(&id) => {}
                // Written by a batch that never committed, or freed before a crash.
                Some(_) => std::fs::remove_file(entry.path()).map_err(|e| io(&entry.path(), e))?,
                None => {}
            }
        }
        let (id, len) = match rows.iter().max_by_key(|(id, _)| *id) {
            Some((id, row)) => (*id, row.end),
            None => (1, 0),
        };
        let path = Journal::path_of(dir, id);
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        // Bytes past the committed end belong to a batch that never committed.
        file.set_len(len).map_err(|e| io(&path, e))?;
        crate::durable::sync_dir_of(&path).map_err(|e| io(&path, e))?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            file_bytes,
            active: Mutex::new(Active {
                id,
                file,
                path,
                len,
            }),
            readers: Arc::new(()),
            doomed: Mutex::new(Vec::new()),
        })
    }

    /// The active file, rotated first when it is full. Call with the write
    /// transaction open: the transaction serializes writers.
    pub fn active(&self) -> Result<MutexGuard<'_, Active>, StateError> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if active.len >= self.file_bytes {
            let id = active.id + 1;
            let path = Journal::path_of(&self.dir, id);
            let file = OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| io(&path, e))?;
            // Before any pointer into the file can commit.
            crate::durable::sync_dir_of(&path).map_err(|e| io(&path, e))?;
            *active = Active {
                id,
                file,
                path,
                len: 0,
            };
        }
        Ok(active)
    }

    pub fn active_id(&self) -> u32 {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).id
    }

    /// A reader over the files as they are now.
    pub fn reader(&self) -> JournalReader {
        JournalReader {
            dir: self.dir.clone(),
            files: HashMap::new(),
            buffer: Vec::new(),
            _open: self.readers.clone(),
        }
    }

    /// Schedules files for deletion (their rows are gone in a committed transaction)
    /// and deletes every scheduled file if no reader is open.
    pub fn delete_later(&self, ids: impl IntoIterator<Item = u32>) {
        let mut doomed = self.doomed.lock().unwrap_or_else(|p| p.into_inner());
        doomed.extend(ids);
        // Readers opened after the commit cannot reach these files; counting them too
        // only delays the deletion.
        if doomed.is_empty() || Arc::strong_count(&self.readers) > 1 {
            return;
        }
        doomed.retain(|id| {
            let path = Journal::path_of(&self.dir, *id);
            match std::fs::remove_file(&path) {
                Ok(()) => false,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "Could not delete a journal file; retrying later.");
                    true
                }
            }
        });
    }

    /// Overwrites the bytes of `pointers` with zeros and makes that durable.
    pub fn zero(&self, pointers: &[EventPointer]) -> Result<(), StateError> {
        let mut files: HashMap<u32, (File, PathBuf)> = HashMap::new();
        for p in pointers {
            let (file, path) = match files.entry(p.file) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let path = Journal::path_of(&self.dir, p.file);
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|err| io(&path, err))?;
                    e.insert((file, path))
                }
            };
            file.write_all_at(&vec![0u8; p.len as usize], p.offset)
                .map_err(|e| io(path, e))?;
        }
        for (file, path) in files.values() {
            file.sync_data().map_err(|e| io(path, e))?;
        }
        Ok(())
    }
}

/// Reads event bytes by pointer; keeps its files open for its lifetime.
pub(super) struct JournalReader {
    dir: PathBuf,
    files: HashMap<u32, File>,
    buffer: Vec<u8>,
    _open: Arc<()>,
}

impl JournalReader {
    /// The bytes `pointer` names, checked against its CRC.
    pub fn read(&mut self, pointer: &EventPointer) -> Result<&[u8], StateError> {
        let path = || Journal::path_of(&self.dir, pointer.file);
        let file = match self.files.entry(pointer.file) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let path = path();
                e.insert(File::open(&path).map_err(|err| io(&path, err))?)
            }
        };
        self.buffer.resize(pointer.len as usize, 0);
        file.read_exact_at(&mut self.buffer, pointer.offset)
            .map_err(|e| io(&path(), e))?;
        if crc32fast::hash(&self.buffer) != pointer.crc {
            if self.buffer.iter().all(|&b| b == 0) {
                // An erasure zeroes the bytes before its transaction removes the
                // pointer, so a snapshot taken before that commit can land here.
                return Err(StateError::Erased {
                    what: format!("event at {}:{}", path().display(), pointer.offset),
                });
            }
            return Err(super::keys::corrupt(
                format!("event at {}:{}", path().display(), pointer.offset),
                "its bytes do not match the CRC-32 stored with its pointer",
            ));
        }
        Ok(&self.buffer)
    }
}
