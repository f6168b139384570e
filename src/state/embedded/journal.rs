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
//!   it. Files with no row in the table (created by a batch that never committed, or
//!   freed just before a crash) are deleted at open, with a warning naming each.
//! - A file that is missing or shorter than its committed end fails the open with
//!   [`StateError::Damaged`]; it is never recreated or padded (`state check` and
//!   `state repair`, in `check`, deal with it).
//! - Erasure overwrites an event's bytes with zeros in place before its pointer goes;
//!   readers then drop the stretches of file they hold (see `Stretches`), so none
//!   serves the bytes from memory after the zeros are on file.
//!
//! Files: `{state dir}/journal/{id:08}.log`, a new one once the active file passes
//! `state.journal_file_bytes`. Disk use is bounded by the oldest file a live flow still points
//! into: with an `abandoned` retention every flow is archived within that period.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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

pub(super) fn io(path: &Path, e: std::io::Error) -> StateError {
    StateError::File {
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
    /// Bumped by every erasure: readers drop the stretches they hold, which may
    /// predate the zeros.
    erasures: Arc<AtomicU64>,
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
        if let Some(problem) = file_problems(dir, rows)?.into_iter().next() {
            return Err(problem.into_error());
        }
        let known: HashMap<u32, FileRow> = rows.iter().copied().collect();
        let newest = rows.iter().map(|(id, _)| *id).max().unwrap_or(0);
        for (id, path) in journal_files(dir)? {
            if known.contains_key(&id) {
                continue;
            }
            // Both cases are the commit protocol's own leftovers, never history: no
            // committed pointer can name a file without a row.
            let why = if id > newest {
                "created for a batch that never committed"
            } else {
                "freed by a committed transaction before a crash"
            };
            tracing::warn!(path = %path.display(), "Deleting a journal file without a row: {why}.");
            std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
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
        // Bytes past the committed end belong to a batch that never committed (the
        // checks above made sure the file is not shorter than that end).
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
            erasures: Arc::new(AtomicU64::new(0)),
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
            stretches: Stretches::new(self.erasures.clone()),
            _open: self.readers.clone(),
        }
    }

    /// Schedules files for deletion (their rows are gone in a committed transaction)
    /// and deletes every scheduled file if no reader is open.
    pub fn delete_later(&self, ids: impl IntoIterator<Item = u32>) {
        let ready = self.deletable(ids);
        self.delete(ready);
    }

    /// Schedules files for deletion like [`Journal::delete_later`], but hands back the
    /// scheduled files that may go now (all of them when no reader is open, else none)
    /// for the caller to [`delete`](Journal::delete), on another thread if it likes.
    pub fn deletable(&self, ids: impl IntoIterator<Item = u32>) -> Vec<u32> {
        let mut doomed = self.doomed.lock().unwrap_or_else(|p| p.into_inner());
        doomed.extend(ids);
        // Readers opened after the commit cannot reach these files; counting them too
        // only delays the deletion.
        if doomed.is_empty() || Arc::strong_count(&self.readers) > 1 {
            return Vec::new();
        }
        std::mem::take(&mut *doomed)
    }

    /// Deletes files [`Journal::deletable`] handed out; one that cannot be deleted is
    /// scheduled again.
    pub fn delete(&self, ids: Vec<u32>) {
        for id in ids {
            let path = Journal::path_of(&self.dir, id);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "Could not delete a journal file; retrying later.");
                    self.doomed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(id);
                }
            }
        }
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
        // After the zeros are written, not before: a reader that drops its stretches
        // on seeing the new count must read zeros, never re-read the old bytes and
        // keep them.
        self.erasures.fetch_add(1, Ordering::AcqRel);
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
    stretches: Stretches,
    _open: Arc<()>,
}

impl JournalReader {
    /// The bytes `pointer` names, checked against its CRC.
    pub fn read(&mut self, pointer: &EventPointer) -> Result<&[u8], StateError> {
        let path = || Journal::path_of(&self.dir, pointer.file);
        let at = match self.stretches.find(pointer) {
            Some(at) => Some(at),
            None if (pointer.len as usize) < self.stretches.read_size => {
                let file = open(&mut self.files, &self.dir, pointer.file)?;
                // `None` when the file ends before the event does: the direct read
                // below reports it.
                self.stretches
                    .load(file, pointer)
                    .map_err(|e| io(&path(), e))?
            }
            None => None,
        };
        let bytes = match at {
            Some((i, from)) => &self.stretches.list[i].bytes[from..from + pointer.len as usize],
            None => {
                let file = open(&mut self.files, &self.dir, pointer.file)?;
                self.buffer.resize(pointer.len as usize, 0);
                file.read_exact_at(&mut self.buffer, pointer.offset)
                    .map_err(|e| io(&path(), e))?;
                &self.buffer[..]
            }
        };
        if crc32fast::hash(bytes) != pointer.crc {
            if bytes.iter().all(|&b| b == 0) {
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
        Ok(bytes)
    }
}

/// What an operator can do about a damaged journal file or index.
pub(super) const DAMAGE_FIX: &str = "Run `flow-archiver state check` to list the flows it \
    affects, then `flow-archiver state repair` to drop them (their events are lost), or \
    restore the state directory from a backup";

/// A journal file that does not hold what the `journal` table says it does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JournalFileProblem {
    pub file: u32,
    pub path: String,
    /// Bytes on disk; `None` when the file is missing.
    pub size: Option<u64>,
    /// Bytes committed transactions wrote to it.
    pub committed: u64,
    /// Live events that point into it.
    pub live_events: u64,
}

impl JournalFileProblem {
    pub fn problem(&self) -> String {
        match self.size {
            None => format!(
                "it is missing, and {} live events point into it",
                self.live_events
            ),
            Some(size) => format!(
                "it is {size} bytes long, shorter than the {} bytes committed to it ({} live \
                 events point into it)",
                self.committed, self.live_events
            ),
        }
    }

    pub fn into_error(self) -> StateError {
        StateError::Damaged {
            problem: self.problem(),
            path: self.path,
            fix: DAMAGE_FIX.to_string(),
        }
    }
}

/// The journal files of `rows` that are missing or shorter than their committed end.
pub(super) fn file_problems(
    dir: &Path,
    rows: &[(u32, FileRow)],
) -> Result<Vec<JournalFileProblem>, StateError> {
    let mut problems = Vec::new();
    for (id, row) in rows {
        let path = Journal::path_of(dir, *id);
        let size = match std::fs::metadata(&path) {
            Ok(m) if m.len() >= row.end => continue,
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&path, e)),
        };
        problems.push(JournalFileProblem {
            file: *id,
            path: path.display().to_string(),
            size,
            committed: row.end,
            live_events: row.live,
        });
    }
    Ok(problems)
}

/// The `{id:08}.log` files in `dir`.
pub(super) fn journal_files(dir: &Path) -> Result<Vec<(u32, PathBuf)>, StateError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let id = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(id) = id {
            files.push((id, entry.path()));
        }
    }
    files.sort_unstable();
    Ok(files)
}

fn open<'f>(
    files: &'f mut HashMap<u32, File>,
    dir: &Path,
    id: u32,
) -> Result<&'f File, StateError> {
    Ok(match files.entry(id) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => {
            let path = Journal::path_of(dir, id);
            e.insert(File::open(&path).map_err(|err| io(&path, err))?)
        }
    })
}

/// Stretches of journal files a reader read recently, around the events it asked for.
///
/// Why: flows archived together were active together, so one segment's events sit
/// close to each other in the journal, and a pread per event was a tenth of the
/// archive's CPU. One read of the stretch around a miss serves its neighbours from
/// memory. The read size adapts: it doubles while stretches serve several events
/// each and halves when they serve one or two, so scattered reads (one flow's `get`)
/// cost about what a read per event did. Bytes in a file are never rewritten while a
/// reader can see them, except by an erasure's zeros: every erasure bumps a counter
/// and stretches read before it are dropped.
struct Stretches {
    list: Vec<Stretch>,
    read_size: usize,
    erasures: Arc<AtomicU64>,
    seen_erasures: u64,
    /// Counts uses, for `Stretch::used`.
    clock: u64,
    /// Reads issued.
    #[cfg(test)]
    loads: u64,
}

struct Stretch {
    file: u32,
    start: u64,
    bytes: Vec<u8>,
    /// Events served, to decide how much the next read takes.
    served: u32,
    /// Last use, for eviction.
    used: u64,
}

const STRETCHES: usize = 8;
const MIN_STRETCH: usize = 4 << 10;
const MAX_STRETCH: usize = 256 << 10;

impl Stretches {
    fn new(erasures: Arc<AtomicU64>) -> Stretches {
        let seen_erasures = erasures.load(Ordering::Acquire);
        Stretches {
            list: Vec::with_capacity(STRETCHES),
            read_size: 64 << 10,
            erasures,
            seen_erasures,
            clock: 0,
            #[cfg(test)]
            loads: 0,
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The stretch holding all of `pointer`'s bytes, and where they start in it.
    fn find(&mut self, pointer: &EventPointer) -> Option<(usize, usize)> {
        let erasures = self.erasures.load(Ordering::Acquire);
        if erasures != self.seen_erasures {
            self.list.clear();
            self.seen_erasures = erasures;
            return None;
        }
        let end = pointer.offset + u64::from(pointer.len);
        let i = self.list.iter().position(|s| {
            s.file == pointer.file
                && s.start <= pointer.offset
                && end <= s.start + s.bytes.len() as u64
        })?;
        let tick = self.tick();
        let s = &mut self.list[i];
        s.served += 1;
        s.used = tick;
        Some((i, (pointer.offset - s.start) as usize))
    }

    /// Reads the stretch around `pointer` in place of the least recently used one.
    /// `None` when the file ends before the event does.
    fn load(
        &mut self,
        file: &File,
        pointer: &EventPointer,
    ) -> std::io::Result<Option<(usize, usize)>> {
        #[cfg(test)]
        {
            self.loads += 1;
        }
        let tick = self.tick();
        let slot = if self.list.len() < STRETCHES {
            self.list.push(Stretch {
                file: 0,
                start: 0,
                bytes: Vec::new(),
                served: 0,
                used: 0,
            });
            self.list.len() - 1
        } else {
            let (i, old) = self
                .list
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.used)
                .expect("the list is full");
            self.read_size = match old.served {
                0..=2 => (self.read_size / 2).max(MIN_STRETCH),
                3..=7 => self.read_size,
                _ => (self.read_size * 2).min(MAX_STRETCH),
            };
            i
        };
        // A little before the event too: the flows around it were written around it.
        let start = pointer.offset.saturating_sub(self.read_size as u64 / 4) & !4095;
        let s = &mut self.list[slot];
        s.file = pointer.file;
        s.start = start;
        s.served = 1;
        s.used = tick;
        s.bytes.resize(
            self.read_size
                .max((pointer.offset - start) as usize + pointer.len as usize),
            0,
        );
        let mut filled = 0;
        while filled < s.bytes.len() {
            match file.read_at(&mut s.bytes[filled..], start + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    s.bytes.clear();
                    return Err(e);
                }
            }
        }
        s.bytes.truncate(filled);
        let from = (pointer.offset - start) as usize;
        Ok((from + pointer.len as usize <= filled).then_some((slot, from)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(journal: &Journal, bytes: &[u8]) -> EventPointer {
        let mut active = journal.active().unwrap();
        let offset = active.len;
        active.append(bytes).unwrap();
        EventPointer {
            file: active.id,
            offset,
            len: bytes.len() as u32,
            crc: crc32fast::hash(bytes),
        }
    }

    fn event(i: usize, len: usize) -> Vec<u8> {
        let mut bytes = format!("{{\"i\":{i},\"pad\":\"").into_bytes();
        bytes.resize(len - 2, b'x');
        bytes.extend_from_slice(b"\"}");
        bytes
    }

    #[test]
    fn neighbouring_events_come_from_a_few_reads_and_later_appends_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), &[], 1 << 30).unwrap();
        let events: Vec<Vec<u8>> = (0..1000).map(|i| event(i, 100 + i % 50)).collect();
        let pointers: Vec<EventPointer> = events.iter().map(|e| append(&journal, e)).collect();
        let mut reader = journal.reader();
        // Two interleaved flows, as a segment reads them.
        for i in (0..1000).step_by(2).chain((1..1000).step_by(2)) {
            assert_eq!(
                reader.read(&pointers[i]).unwrap(),
                &events[i][..],
                "event {i}"
            );
        }
        assert!(
            reader.stretches.loads <= 8,
            "{} reads",
            reader.stretches.loads
        );

        // The last stretch ends at the file's end as it was; an event appended
        // after it is read from the file, not from the stretch.
        let later = event(1000, 120);
        let pointer = append(&journal, &later);
        assert_eq!(reader.read(&pointer).unwrap(), &later[..]);
    }

    #[test]
    fn scattered_reads_shrink_the_stretches_to_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), &[], 1 << 30).unwrap();
        let gap = vec![b' '; 300 << 10];
        let mut pointers = Vec::new();
        for i in 0..40 {
            pointers.push((append(&journal, &event(i, 200)), event(i, 200)));
            append(&journal, &gap);
        }
        let mut reader = journal.reader();
        for (pointer, bytes) in &pointers {
            assert_eq!(reader.read(pointer).unwrap(), &bytes[..]);
        }
        assert_eq!(reader.stretches.read_size, MIN_STRETCH);
        assert_eq!(reader.stretches.loads, 40);
    }

    #[test]
    fn an_erasure_drops_the_stretches_read_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), &[], 1 << 30).unwrap();
        let (a, b) = (event(1, 150), event(2, 150));
        let (pa, pb) = (append(&journal, &a), append(&journal, &b));
        let mut reader = journal.reader();
        assert_eq!(reader.read(&pa).unwrap(), &a[..]);
        journal.zero(&[pb]).unwrap();
        // `b` was in the stretch read for `a`; after the erasure it reads as zeros.
        let err = reader.read(&pb).unwrap_err();
        assert!(matches!(err, StateError::Erased { .. }), "{err}");
        assert_eq!(reader.read(&pa).unwrap(), &a[..]);
    }

    #[test]
    fn an_event_larger_than_a_stretch_is_read_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), &[], 1 << 30).unwrap();
        let big = event(1, MAX_STRETCH + 10);
        let pointer = append(&journal, &big);
        let mut reader = journal.reader();
        assert_eq!(reader.read(&pointer).unwrap(), &big[..]);
        assert_eq!(reader.stretches.loads, 0);
    }
}
