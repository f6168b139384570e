//! The embedded state store: redb (ACID transactions, copy-on-write B-trees, fsync on
//! commit with `Durability::Immediate`, a bounded page cache) for everything but the
//! event bytes, which go to the append-only [journal](self::journal).
//!
//! Key layout (all integers big-endian so byte order is numeric order):
//! - `flow key` = `u16 len | tenant | u16 len | flow_id` (prefix-free)
//! - `flows`, one table for everything about a flow, so that one flow's records
//!   share B-tree pages and an ingest batch dirties one region per flow, not three:
//!   - flow key | `0x00` → meta record: postcard [`FlowMeta`] of the open part, then
//!     its inline index (the pointers of its first events and the flow's first dedupe
//!     digests; see [`inline`](self::inline))
//!   - flow key | `0x01` | u16 len | key a | u16 len | key b → `[]` (a dedupe key that
//!     did not fit inline); flow key | `0x01 0xFF` → the digests of archived parts
//!   - flow key | `0x02` | u32 part | `0xFE` | u32 chunk → a chunk of the event
//!     pointers (`0xFF` | u32 file | u64 offset | u32 length | u32 CRC-32) past the
//!     part's inline ones, each with its order: the encoded [`Sequence`] or `0x02`
//!     when the event has none, then its u64 arrival number
//!   - flow key | `0x02` | u32 part | `0xFF` → the inline events of a sealed part
//!   - flow key | `0x02` | u32 part | order → one event pointer: how stores written
//!     before chunks kept events past the inline ones, and before the journal kept
//!     the event bytes themselves; all are read
//! - `deadlines`: u64 (deadline ms, sign bit flipped) | flow key → ()
//! - `archived`:  flow key → u32 next part (tombstone of an archived flow)
//! - `sealed`:    flow key → u32 highest part sealed into an intent not yet completed
//!   (see "Sealing" below)
//! - `intents`:   intent id → postcard [`ArchiveIntent`] (written once, at seal)
//! - `verified`:  intent id → postcard [`VerifiedObject`]
//! - `checkpoints`: source name → opaque position
//! - `settings`:  name → bytes (policy fingerprint, live flow and event counters)
//! - `journal`:   u32 file id → u64 live events | u64 live bytes | u64 committed end
//!
//! Sealing leaves a part's meta record where it is and writes only its `sealed` marker,
//! its deadline's removal and the intent. Why: the flows due together are scattered
//! over the `flows` table, so each one's update rewrites a leaf page of its own; moving
//! the record at seal and deleting it at complete rewrote every such page twice, and
//! the seal held the one writer for most of an archive pass. Now the page is rewritten
//! once, at complete. A meta record whose part is at or below its flow's `sealed`
//! marker is not live: `live_flow` does not return it and a policy change does not give
//! it a deadline. An event for such a flow first moves the record out of the way (its
//! run to the part's run key, its digests to the digests key, the tombstone written) as
//! a seal used to, then opens the next part.

mod archival;
mod check;
mod compaction;
mod ingest;
mod inline;
mod journal;
mod keys;
mod reader;
mod records;
#[cfg(test)]
mod tests;

pub use self::check::{DamagedPart, DroppedFlow, StoreCheck, StoreRepair};
pub use self::journal::JournalFileProblem;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::Path;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use self::archival::keep_digests_and_tombstone;
use self::compaction::{part_entry_pointers, release, Released};
use self::inline::{digest, Digests, MetaRecord, Run, CHUNK_EVENTS, MAX_RUN};
use self::journal::{EventPointer, FileRow, Journal, JournalReader, COMPACTION_BUDGET};
use self::keys::*;
use super::{
    ArchiveIntent, Compaction, EraseIntent, ErasedLive, EventReader, FlowMeta, Hold, IngestOutcome,
    IntentStage, LiveFlows, LiveQuery, PurgeIntent, StateError, StateStore, StoreStats,
    VerifiedObject, LIVE_SCAN,
};
use crate::config::StateConfig;
use crate::flow::FlowEvent;
use crate::policy::RetentionPolicy;

type Bytes<'a> = &'a [u8];
const FLOWS: TableDefinition<Bytes, Bytes> = TableDefinition::new("flows");
const DEADLINES: TableDefinition<Bytes, ()> = TableDefinition::new("deadlines");

const LIVE_FLOWS: &str = "live_flows";
const STORED_EVENTS: &str = "stored_events";
const ARCHIVED: TableDefinition<Bytes, u32> = TableDefinition::new("archived");
const SEALED: TableDefinition<Bytes, u32> = TableDefinition::new("sealed");
const INTENTS: TableDefinition<&str, Bytes> = TableDefinition::new("intents");
const VERIFIED: TableDefinition<&str, Bytes> = TableDefinition::new("verified");
const CHECKPOINTS: TableDefinition<&str, Bytes> = TableDefinition::new("checkpoints");
const SETTINGS: TableDefinition<&str, Bytes> = TableDefinition::new("settings");
const HOLDS: TableDefinition<Bytes, Bytes> = TableDefinition::new("holds");
const PURGES: TableDefinition<&str, Bytes> = TableDefinition::new("purges");
const ERASURES: TableDefinition<&str, Bytes> = TableDefinition::new("erasures");
const JOURNAL: TableDefinition<u32, Bytes> = TableDefinition::new("journal");

const POLICY_FINGERPRINT: &str = "policy_fingerprint";
/// The key layout a store was last opened with. 2: event chunks (see `inline`). A
/// binary refuses a store of a later layout rather than misread it; layout 1 (and
/// stores from before this marker) are read as they are.
const LAYOUT: &str = "layout";
const LAYOUT_VERSION: u64 = 2;

fn storage<E: Into<redb::Error>>(e: E) -> StateError {
    StateError::Storage(Box::new(e.into()))
}

fn add_counter(
    settings: &mut redb::Table<&str, Bytes>,
    name: &str,
    delta: i64,
) -> Result<(), StateError> {
    if delta == 0 {
        return Ok(());
    }
    let current = read_counter(settings, name)?;
    let next = (current as i64).saturating_add(delta).max(0) as u64;
    settings
        .insert(name, next.to_be_bytes().as_slice())
        .map_err(storage)?;
    Ok(())
}

fn read_counter(
    settings: &impl ReadableTable<&'static str, Bytes<'static>>,
    name: &str,
) -> Result<u64, StateError> {
    Ok(settings
        .get(name)
        .map_err(storage)?
        .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// The default [`StateStore`]: redb in `{dir}/state.redb`, event bytes in
/// `{dir}/journal/`.
pub struct EmbeddedStore {
    /// `None` only while [`EmbeddedStore::reopen`] swaps it.
    db: std::sync::RwLock<Option<Database>>,
    /// Bumped by every reopen, so that threads that met the same failure reopen once.
    db_generation: std::sync::atomic::AtomicU64,
    db_path: std::path::PathBuf,
    cache_bytes: usize,
    journal: Journal,
    /// `state.path` and `state.min_free_bytes`, for [`StateStore::room`].
    dir: std::path::PathBuf,
    min_free_bytes: u64,
    /// Intents this process works on: the ones it sealed and the ones it claimed.
    claimed: std::sync::Mutex<HashSet<String>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`. Fails if another process has it
    /// open: one writer per store file.
    pub fn open(config: &StateConfig) -> Result<EmbeddedStore, StateError> {
        let (dir, cache_bytes) = (config.path.as_path(), config.cache_bytes);
        let path = dir.join("state.redb");
        let open_err = |e: redb::Error| StateError::Open {
            path: path.display().to_string(),
            source: Box::new(e),
        };
        crate::durable::create_dir_all_synced(dir).map_err(|e| open_err(redb::Error::Io(e)))?;
        let mut db = open_database(&path, cache_bytes as usize, true)?;
        if config.verify_on_open {
            verify_database(&mut db, &path)?;
        }
        // Create every table once so read transactions never meet a missing table.
        let txn = db.begin_write().map_err(|e| open_err(e.into()))?;
        {
            txn.open_table(FLOWS).map_err(|e| open_err(e.into()))?;
            txn.open_table(DEADLINES).map_err(|e| open_err(e.into()))?;
            txn.open_table(ARCHIVED).map_err(|e| open_err(e.into()))?;
            txn.open_table(SEALED).map_err(|e| open_err(e.into()))?;
            txn.open_table(INTENTS).map_err(|e| open_err(e.into()))?;
            txn.open_table(VERIFIED).map_err(|e| open_err(e.into()))?;
            txn.open_table(CHECKPOINTS)
                .map_err(|e| open_err(e.into()))?;
            txn.open_table(SETTINGS).map_err(|e| open_err(e.into()))?;
            txn.open_table(HOLDS).map_err(|e| open_err(e.into()))?;
            txn.open_table(PURGES).map_err(|e| open_err(e.into()))?;
            txn.open_table(ERASURES).map_err(|e| open_err(e.into()))?;
            txn.open_table(JOURNAL).map_err(|e| open_err(e.into()))?;
            let mut settings = txn.open_table(SETTINGS).map_err(|e| open_err(e.into()))?;
            let found = read_counter(&settings, LAYOUT)?;
            if found > LAYOUT_VERSION {
                return Err(StateError::SchemaTooNew {
                    found: found as i32,
                    known: LAYOUT_VERSION as i32,
                });
            }
            settings
                .insert(LAYOUT, LAYOUT_VERSION.to_be_bytes().as_slice())
                .map_err(|e| open_err(e.into()))?;
        }
        txn.commit().map_err(|e| open_err(e.into()))?;
        // A new state file must keep its name before anything it holds is acknowledged.
        crate::durable::sync_dir_of(&path).map_err(|e| open_err(redb::Error::Io(e)))?;
        let rows = {
            let txn = db.begin_read().map_err(|e| open_err(e.into()))?;
            journal_rows(&txn.open_table(JOURNAL).map_err(|e| open_err(e.into()))?)?
        };
        let journal = Journal::open(&dir.join("journal"), &rows, config.journal_file_bytes)?;
        Ok(EmbeddedStore {
            db: std::sync::RwLock::new(Some(db)),
            db_generation: Default::default(),
            db_path: path,
            cache_bytes: cache_bytes as usize,
            journal,
            dir: dir.to_path_buf(),
            min_free_bytes: config.min_free_bytes,
            claimed: Default::default(),
        })
    }

    /// A write transaction that fsyncs on commit.
    pub(super) fn write(&self) -> Result<redb::WriteTransaction, StateError> {
        let mut txn = self.with_database(|db| db.begin_write().map_err(redb::Error::from))?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        Ok(txn)
    }

    /// A read transaction: a snapshot of the last commit.
    pub(super) fn read(&self) -> Result<redb::ReadTransaction, StateError> {
        self.with_database(|db| db.begin_read().map_err(redb::Error::from))
    }

    /// Runs `begin` on the database, reopening it first if an earlier write failed.
    ///
    /// Why: a commit that fails on I/O (a full disk under redb, when something else
    /// took the `state.min_free_bytes` reserve) leaves redb refusing every later
    /// transaction with `PreviousIo` until the file is opened again. Reopening is what
    /// a restart would do, and what has committed is intact (`docs/operations.md`,
    /// "Full disk"); the failed transaction never happened.
    fn with_database<T>(
        &self,
        begin: impl Fn(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, StateError> {
        use std::sync::atomic::Ordering;
        let generation = self.db_generation.load(Ordering::Acquire);
        let first = {
            let db = self.db.read().unwrap_or_else(|p| p.into_inner());
            db.as_ref().map(&begin)
        };
        match first {
            Some(Ok(txn)) => return Ok(txn),
            Some(Err(redb::Error::PreviousIo)) | None => {}
            Some(Err(e)) => return Err(storage(e)),
        }
        self.reopen(generation)?;
        let db = self.db.read().unwrap_or_else(|p| p.into_inner());
        match db.as_ref() {
            Some(db) => begin(db).map_err(storage),
            None => Err(self.closed()),
        }
    }

    /// Closes and opens the database file again, unless another thread already did
    /// since `seen` (the generation its failure happened in).
    fn reopen(&self, seen: u64) -> Result<(), StateError> {
        use std::sync::atomic::Ordering;
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        if self.db_generation.load(Ordering::Acquire) != seen && db.is_some() {
            return Ok(());
        }
        // The file lock goes with the old handle, so it must be gone before the open.
        drop(db.take());
        // Should the file lock not be free yet, the next transaction tries again.
        let opened =
            open_database(&self.db_path, self.cache_bytes, false).map_err(|e| match e {
                StateError::Locked { .. } => self.closed(),
                e => e,
            })?;
        *db = Some(opened);
        self.db_generation.fetch_add(1, Ordering::AcqRel);
        tracing::warn!(
            path = %self.db_path.display(),
            "The state database was reopened after a failed write; committed state is intact."
        );
        Ok(())
    }

    fn closed(&self) -> StateError {
        StateError::Open {
            path: self.db_path.display().to_string(),
            source: "the database is being reopened after a failed write".into(),
        }
    }
}

/// The `journal` table's rows: file id → what committed transactions put in it.
fn journal_rows(
    table: &impl ReadableTable<u32, Bytes<'static>>,
) -> Result<Vec<(u32, FileRow)>, StateError> {
    let mut rows = Vec::new();
    for entry in table.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        rows.push((k.value(), FileRow::decode(v.value())?));
    }
    Ok(rows)
}

/// Bytes an unprivileged writer may still use on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` is written by
    // statvfs before it is read, only when the call succeeds.
    let stat = unsafe {
        if libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stat.assume_init()
    };
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Opens (`create`: creating if missing) the database file. A file redb cannot read
/// (cut short, not a database, failed checksums) is [`StateError::Damaged`].
fn open_database(path: &Path, cache_bytes: usize, create: bool) -> Result<Database, StateError> {
    let mut builder = Database::builder();
    builder.set_cache_size(cache_bytes);
    // redb reads its root pages here; a damaged one can trip an internal assertion.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match create {
        true => builder.create(path),
        false => builder.open(path),
    }))
    .map_err(|_| database_damaged(path, "a page fails redb's own assertions"))?;
    opened.map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StateError::Locked {
            path: path.display().to_string(),
        },
        e if is_damage(&e) => database_damaged(path, e),
        e => StateError::Open {
            path: path.display().to_string(),
            source: Box::new(redb::Error::from(e)),
        },
    })
}

/// redb's integrity check (every page's checksum); `false` when it had to rebuild its
/// free-page bookkeeping, which is not history. A damaged page is
/// [`StateError::Damaged`], also when it trips one of redb's internal assertions
/// instead of its checksum test.
fn verify_database(db: &mut Database, path: &Path) -> Result<bool, StateError> {
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.check_integrity()));
    match checked {
        Ok(Ok(intact)) => Ok(intact),
        Ok(Err(e)) => Err(database_damaged(path, e)),
        Err(_) => Err(database_damaged(path, "a page fails redb's own assertions")),
    }
}

fn is_damage(e: &redb::DatabaseError) -> bool {
    use std::io::ErrorKind;
    match e {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => true,
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => {
            matches!(io.kind(), ErrorKind::UnexpectedEof | ErrorKind::InvalidData)
        }
        _ => false,
    }
}

/// What an operator can do about a database file redb cannot read.
const DATABASE_FIX: &str = "flow-archiver cannot repair this file: restore the state \
    directory from a backup (see docs/operations.md, \"Damaged state\")";

fn database_damaged(path: &Path, e: impl std::fmt::Display) -> StateError {
    StateError::Damaged {
        path: path.display().to_string(),
        problem: e.to_string(),
        fix: DATABASE_FIX.to_string(),
    }
}

/// The open part of the flow at `fkey`: its meta record, unless that part is sealed.
fn live_meta(
    flows: &impl ReadableTable<Bytes<'static>, Bytes<'static>>,
    markers: &impl ReadableTable<Bytes<'static>, u32>,
    fkey: &[u8],
) -> Result<Option<FlowMeta>, StateError> {
    let Some(meta) = flows
        .get(meta_key(fkey).as_slice())
        .map_err(storage)?
        .map(|v| decode_meta(v.value()))
        .transpose()?
    else {
        return Ok(None);
    };
    let sealed = sealed_part(markers, fkey)?.is_some_and(|s| s >= meta.part);
    Ok((!sealed).then_some(meta))
}

/// The highest part of the flow at `fkey` sealed into an intent not yet completed.
fn sealed_part(
    markers: &impl ReadableTable<Bytes<'static>, u32>,
    fkey: &[u8],
) -> Result<Option<u32>, StateError> {
    Ok(markers.get(fkey).map_err(storage)?.map(|v| v.value()))
}

/// The trait's methods, each implemented in the file named beside it.
impl StateStore for EmbeddedStore {
    // ingest.rs
    fn ingest(
        &self,
        events: &[FlowEvent],
        policy: &RetentionPolicy,
        now_ms: i64,
        checkpoint: Option<(&str, &[u8])>,
    ) -> Result<IngestOutcome, StateError> {
        self.store_batch(events, policy, now_ms, checkpoint)
    }

    fn apply_policy(&self, policy: &RetentionPolicy) -> Result<u64, StateError> {
        self.recompute_deadlines(policy)
    }

    // archival.rs
    fn due_flows(&self, now_ms: i64, limit: usize) -> Result<Vec<FlowMeta>, StateError> {
        self.find_due(now_ms, limit)
    }

    fn seal(&self, intent: ArchiveIntent) -> Result<Option<ArchiveIntent>, StateError> {
        let sealed = self.seal_parts(intent)?;
        if let Some(s) = &sealed {
            let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
            claimed.insert(s.id.clone());
        }
        Ok(sealed)
    }

    fn intents(&self) -> Result<Vec<ArchiveIntent>, StateError> {
        self.pending_intents()
    }

    fn claim_intents(&self) -> Result<Vec<ArchiveIntent>, StateError> {
        let mut intents = self.pending_intents()?;
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        intents.retain(|i| claimed.insert(i.id.clone()));
        Ok(intents)
    }

    fn record_upload(&self, intent_id: &str, verified: &VerifiedObject) -> Result<(), StateError> {
        self.record_verified(intent_id, verified)
    }

    fn complete(&self, intent_id: &str) -> Result<(), StateError> {
        self.complete_intent(intent_id)?;
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        claimed.remove(intent_id);
        Ok(())
    }

    fn erase_live(&self, tenant: &str, flow_id: &str) -> Result<ErasedLive, StateError> {
        self.erase_flow(tenant, flow_id, true)
    }

    // compaction.rs
    fn compact(&self) -> Result<Compaction, StateError> {
        self.compact_journal()
    }

    // reader.rs
    fn live_flow(&self, tenant: &str, flow_id: &str) -> Result<Option<FlowMeta>, StateError> {
        self.open_part(tenant, flow_id)
    }

    fn live_flows(&self, query: &LiveQuery) -> Result<LiveFlows, StateError> {
        self.search_live(query)
    }

    fn for_each_event(
        &self,
        tenant: &str,
        flow_id: &str,
        part: u32,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), StateError> {
        self.snapshot_reader()?
            .for_each_event(tenant, flow_id, part, sink)
    }

    fn event_reader(&self) -> Result<Box<dyn EventReader>, StateError> {
        self.snapshot_reader()
    }

    fn room(&self, bytes: u64) -> Result<(), StateError> {
        let free = free_bytes(&self.dir).map_err(|source| StateError::File {
            path: self.dir.display().to_string(),
            source,
        })?;
        // The journal takes the bytes; the index grows by a fraction of them.
        let needed = bytes.saturating_add(bytes / 4);
        if free.saturating_sub(needed) < self.min_free_bytes {
            return Err(StateError::DiskFull {
                path: self.dir.display().to_string(),
                free,
                needed,
                reserve: self.min_free_bytes,
            });
        }
        Ok(())
    }

    // records.rs
    fn checkpoint(&self, source: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.stored_checkpoint(source)
    }

    fn stats(&self) -> Result<StoreStats, StateError> {
        self.counts()
    }

    fn set_hold(
        &self,
        tenant: &str,
        flow_id: &str,
        hold: Option<&Hold>,
    ) -> Result<Option<Hold>, StateError> {
        self.set_hold_record(tenant, flow_id, hold)
    }

    fn holds(&self) -> Result<Vec<Hold>, StateError> {
        self.hold_records()
    }

    fn begin_purge(&self, intent: &PurgeIntent) -> Result<(), StateError> {
        self.put_purge(intent)
    }

    fn purge_intents(&self) -> Result<Vec<PurgeIntent>, StateError> {
        self.purge_records()
    }

    fn finish_purge(&self, object_key: &str) -> Result<(), StateError> {
        self.remove_purge(object_key)
    }

    fn begin_erase(&self, intent: &EraseIntent) -> Result<(), StateError> {
        self.put_erase(intent)
    }

    fn erase_intents(&self) -> Result<Vec<EraseIntent>, StateError> {
        self.erase_records()
    }

    fn finish_erase(&self, old_key: &str) -> Result<(), StateError> {
        self.remove_erase(old_key)
    }
}
