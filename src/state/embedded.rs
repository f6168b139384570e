//! The embedded state store: redb (ACID transactions, copy-on-write B-trees, fsync on
//! commit with `Durability::Immediate`, a bounded page cache) for everything but the
//! event bytes, which go to the append-only [journal](super::journal).
//!
//! Key layout (all integers big-endian so byte order is numeric order):
//! - `flow key` = `u16 len | tenant | u16 len | flow_id` (prefix-free)
//! - `flows`, one table for everything about a flow, so that one flow's records
//!   share B-tree pages and an ingest batch dirties one region per flow, not three:
//!   - flow key | `0x00` → meta record: postcard [`FlowMeta`] of the open part, then
//!     its inline index (the pointers of its first events and the flow's first dedupe
//!     digests; see [`inline`](super::inline))
//!   - flow key | `0x01` | u16 len | key a | u16 len | key b → `[]` (a dedupe key that
//!     did not fit inline); flow key | `0x01 0xFF` → the digests of archived parts
//!   - flow key | `0x02` | u32 part | order | u64 arrival → event pointer
//!     (`0xFF` | u32 file | u64 offset | u32 length | u32 CRC-32) of an event that did
//!     not fit inline, where `order` is the encoded [`Sequence`] or `0x02` when the
//!     event has none. Stores written before the journal hold the event bytes here
//!     instead; both are read. flow key | `0x02` | u32 part | `0xFF` → the inline
//!     events of a sealed part.
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

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ops::Bound;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use super::inline::{digest, Digests, MetaRecord, Run};
use super::journal::{EventPointer, FileRow, Journal, JournalReader, COMPACTION_BUDGET};
use super::keys::*;
use super::*;
use crate::config::StateConfig;

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
    db: Database,
    journal: Journal,
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
        let db = match Database::builder()
            .set_cache_size(cache_bytes as usize)
            .create(&path)
        {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StateError::Locked {
                    path: path.display().to_string(),
                })
            }
            Err(e) => return Err(open_err(e.into())),
        };
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
        }
        txn.commit().map_err(|e| open_err(e.into()))?;
        // A new state file must keep its name before anything it holds is acknowledged.
        crate::durable::sync_dir_of(&path).map_err(|e| open_err(redb::Error::Io(e)))?;
        let rows = {
            let txn = db.begin_read().map_err(|e| open_err(e.into()))?;
            let table = txn.open_table(JOURNAL).map_err(|e| open_err(e.into()))?;
            let mut rows = Vec::new();
            for entry in table.iter().map_err(|e| open_err(e.into()))? {
                let (k, v) = entry.map_err(|e| open_err(e.into()))?;
                rows.push((k.value(), FileRow::decode(v.value())?));
            }
            rows
        };
        let journal = Journal::open(&dir.join("journal"), &rows, config.journal_file_bytes)?;
        Ok(EmbeddedStore { db, journal })
    }

    /// Takes `released` (file id → events and bytes no longer pointed at) off the
    /// journal rows; returns the files no live event points into any more, except the
    /// active one. Their rows are removed: delete them after the commit.
    fn release_events(
        &self,
        txn: &redb::WriteTransaction,
        released: Released,
    ) -> Result<Vec<u32>, StateError> {
        let mut table = txn.open_table(JOURNAL).map_err(storage)?;
        let active = self.journal.active_id();
        let mut freed = Vec::new();
        for (id, (n, bytes)) in released {
            let Some(row) = table
                .get(id)
                .map_err(storage)?
                .map(|v| FileRow::decode(v.value()))
                .transpose()?
            else {
                return Err(corrupt(
                    "journal",
                    format!("events point into file {id}, which has no row"),
                ));
            };
            let live = row.live.saturating_sub(n);
            if live == 0 && id != active {
                table.remove(id).map_err(storage)?;
                freed.push(id);
            } else {
                let row = FileRow {
                    live,
                    live_bytes: row.live_bytes.saturating_sub(bytes),
                    ..row
                };
                table.insert(id, row.encode().as_slice()).map_err(storage)?;
            }
        }
        Ok(freed)
    }

    /// Counts `events` events of `bytes` bytes, just appended, in the active file's
    /// row, with its new committed end.
    fn add_to_active(
        txn: &redb::WriteTransaction,
        active: &super::journal::Active,
        events: u64,
        bytes: u64,
    ) -> Result<(), StateError> {
        let mut journal = txn.open_table(JOURNAL).map_err(storage)?;
        let row = journal
            .get(active.id)
            .map_err(storage)?
            .map(|v| FileRow::decode(v.value()))
            .transpose()?
            .unwrap_or_default();
        let row = FileRow {
            live: row.live + events,
            live_bytes: row.live_bytes + bytes,
            end: active.len,
        };
        journal
            .insert(active.id, row.encode().as_slice())
            .map_err(storage)?;
        Ok(())
    }

    /// Journal files other than the active one with less than a quarter still live.
    fn mostly_dead_files(&self) -> Result<Vec<(u32, FileRow)>, StateError> {
        let active = self.journal.active_id();
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(JOURNAL).map_err(storage)?;
        let mut rows = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let row = FileRow::decode(v.value())?;
            if k.value() != active && row.mostly_dead() {
                rows.push((k.value(), row));
            }
        }
        Ok(rows)
    }

    /// The keys whose values point into any of `files`: one pass over the index,
    /// O(stored events), in a read snapshot so that ingest and archival go on
    /// meanwhile. Compaction runs only for mostly-dead files, and scans once for all of
    /// them.
    fn pointer_holders(&self, files: &HashSet<u32>) -> Result<Vec<HolderKey>, StateError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let flows = txn.open_table(FLOWS).map_err(storage)?;
        let mut keys = Vec::new();
        for entry in flows.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            if let Some(holder) = PointerHolder::of(k.value(), v.value())? {
                let mut into: Vec<u32> = holder
                    .pointers()
                    .map(|p| p.file)
                    .filter(|f| files.contains(f))
                    .collect();
                if !into.is_empty() {
                    into.sort_unstable();
                    into.dedup();
                    keys.push(HolderKey {
                        key: k.value().to_vec(),
                        files: into,
                    });
                }
            }
        }
        Ok(keys)
    }

    /// Moves the live events of `group`'s files to the active file and frees them, in
    /// one transaction. The holders found by the scan are read again here, as they are
    /// now; a file is freed only if their pointers into it account for every live
    /// event the journal table counts in it. One that falls short (a holder created
    /// after the scan, e.g. a part sealed meanwhile) is left as it is. Returns what it
    /// did, the freed files (for the caller to delete) and the files left.
    fn compact_group(
        &self,
        keys: &[HolderKey],
        group: &[(u32, FileRow)],
    ) -> Result<(Compaction, Vec<u32>, Vec<u32>), StateError> {
        let mut done = Compaction::default();
        let txn = self.write()?;
        let rows: HashMap<u32, FileRow> = {
            let journal = txn.open_table(JOURNAL).map_err(storage)?;
            let mut rows = HashMap::new();
            for (id, _) in group {
                if let Some(v) = journal.get(*id).map_err(storage)? {
                    rows.insert(*id, FileRow::decode(v.value())?);
                }
            }
            rows
        };
        let mut flows = txn.open_table(FLOWS).map_err(storage)?;
        let mut holders: Vec<(&[u8], PointerHolder)> = Vec::new();
        let mut found: HashMap<u32, u64> = HashMap::new();
        // Only the keys that pointed into this group's files at the scan: pointers into
        // a file that is not active are never added to a key, only moved to a new key
        // (which the count check below catches) or removed.
        let relevant = keys
            .iter()
            .filter(|k| k.files.iter().any(|f| rows.contains_key(f)));
        for HolderKey { key, .. } in relevant {
            let holder = match flows.get(key.as_slice()).map_err(storage)? {
                Some(v) => PointerHolder::of(key, v.value())?,
                None => None,
            };
            let Some(holder) = holder else { continue };
            let mut touches = false;
            for p in holder.pointers().filter(|p| rows.contains_key(&p.file)) {
                *found.entry(p.file).or_default() += 1;
                touches = true;
            }
            if touches {
                holders.push((key.as_slice(), holder));
            }
        }
        let accounted =
            |(id, row): (&u32, &FileRow)| found.get(id).copied().unwrap_or(0) == row.live;
        let freed: HashSet<u32> = rows
            .iter()
            .filter(|r| accounted(*r))
            .map(|(id, _)| *id)
            .collect();
        let left: Vec<u32> = rows
            .keys()
            .filter(|id| !freed.contains(id))
            .copied()
            .collect();
        if freed.is_empty() {
            return Ok((done, Vec::new(), left));
        }
        let mut active = self.journal.active()?;
        let mut bytes = Vec::new();
        let mut moved = 0u64;
        let mut changed = Vec::new();
        {
            let mut reader = self.journal.reader();
            for (key, mut holder) in holders {
                let before = moved;
                for p in holder.pointers_mut() {
                    if !freed.contains(&p.file) {
                        continue;
                    }
                    let at = active.len + bytes.len() as u64;
                    bytes.extend_from_slice(reader.read(p)?);
                    (p.file, p.offset) = (active.id, at);
                    moved += 1;
                }
                if moved > before {
                    changed.push((key, holder));
                }
            }
        }
        if !bytes.is_empty() {
            active.append(&bytes)?;
        }
        for (key, holder) in &changed {
            flows
                .insert(*key, holder.encode()?.as_slice())
                .map_err(storage)?;
        }
        drop(flows);
        let mut journal = txn.open_table(JOURNAL).map_err(storage)?;
        for id in &freed {
            journal.remove(*id).map_err(storage)?;
            done.files += 1;
            done.freed_bytes += rows[id].end;
        }
        drop(journal);
        Self::add_to_active(&txn, &active, moved, bytes.len() as u64)?;
        done.moved_events = moved;
        done.freed_bytes = done.freed_bytes.saturating_sub(bytes.len() as u64);
        txn.commit().map_err(storage)?;
        Ok((done, freed.into_iter().collect(), left))
    }

    /// [`StateStore::compact`], handing the files each group frees to `freed` once
    /// its transaction has committed.
    fn compact_with(&self, freed: &mut dyn FnMut(Vec<u32>)) -> Result<Compaction, StateError> {
        let mut done = Compaction::default();
        // Files this call could not free (a holder appeared after the scan): left for
        // the next pass rather than scanned for again.
        let mut skipped = HashSet::new();
        loop {
            // The mostly-dead files, emptiest first.
            let mut picked = self.mostly_dead_files()?;
            picked.retain(|(id, _)| !skipped.contains(id));
            if picked.is_empty() {
                return Ok(done);
            }
            picked.sort_by_key(|(_, row)| row.live_bytes);
            let all: HashSet<u32> = picked.iter().map(|(id, _)| *id).collect();
            let keys = self.pointer_holders(&all)?;
            let mut freed_any = false;
            for group in budget_groups(&picked) {
                let (compacted, files, left) = self.compact_group(&keys, &group)?;
                freed_any |= compacted.files > 0;
                done.files += compacted.files;
                done.moved_events += compacted.moved_events;
                done.freed_bytes += compacted.freed_bytes;
                skipped.extend(left);
                freed(files);
            }
            if !freed_any {
                return Ok(done);
            }
        }
    }

    fn write(&self) -> Result<redb::WriteTransaction, StateError> {
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        Ok(txn)
    }
}

/// Per journal file: events and bytes no longer pointed at.
type Released = HashMap<u32, (u64, u64)>;

/// The journal pointers of one entry under a part prefix of `prefix_len` bytes: one
/// for an individual event, all of them for a sealed part's inline run, none for an
/// event stored inline by an older store.
fn part_entry_pointers(
    prefix_len: usize,
    key: &[u8],
    value: &[u8],
) -> Result<Vec<EventPointer>, StateError> {
    if is_run_key(prefix_len, key) {
        return Ok(Run::decode(value)?.pointers());
    }
    Ok(EventPointer::decode(value).into_iter().collect())
}

/// A key found holding pointers into files being compacted, and which of them.
struct HolderKey {
    key: Vec<u8>,
    files: Vec<u32>,
}

/// An index value that points into the journal (what compaction repoints).
enum PointerHolder {
    Event(EventPointer),
    Run(Run),
    Meta(Box<MetaRecord>),
}

impl PointerHolder {
    /// What `key`'s value holds, if it can hold event pointers.
    fn of(key: &[u8], value: &[u8]) -> Result<Option<PointerHolder>, StateError> {
        let Some(len) = flow_key_len(key) else {
            return Ok(None);
        };
        Ok(match key.get(len) {
            Some(&META) if key.len() == len + 1 => {
                Some(PointerHolder::Meta(Box::new(MetaRecord::decode(value)?)))
            }
            Some(&EVENT) if is_run_key(len + 5, key) => {
                Some(PointerHolder::Run(Run::decode(value)?))
            }
            Some(&EVENT) => EventPointer::decode(value).map(PointerHolder::Event),
            _ => None,
        })
    }

    fn pointers(&self) -> Box<dyn Iterator<Item = &EventPointer> + '_> {
        match self {
            PointerHolder::Event(p) => Box::new(std::iter::once(p)),
            PointerHolder::Run(r) => Box::new(r.events.iter().map(|(_, p)| p)),
            PointerHolder::Meta(m) => Box::new(m.run.events.iter().map(|(_, p)| p)),
        }
    }

    fn pointers_mut(&mut self) -> Box<dyn Iterator<Item = &mut EventPointer> + '_> {
        match self {
            PointerHolder::Event(p) => Box::new(std::iter::once(p)),
            PointerHolder::Run(r) => Box::new(r.events.iter_mut().map(|(_, p)| p)),
            PointerHolder::Meta(m) => Box::new(m.run.events.iter_mut().map(|(_, p)| p)),
        }
    }

    fn encode(&self) -> Result<Vec<u8>, StateError> {
        Ok(match self {
            PointerHolder::Event(p) => p.encode().to_vec(),
            PointerHolder::Run(r) => r.encode(),
            PointerHolder::Meta(m) => m.encode()?,
        })
    }
}

/// `files` (emptiest first) cut into groups of at most [`COMPACTION_BUDGET`] live
/// bytes, one transaction each; a file larger than the budget is a group of its own.
fn budget_groups(files: &[(u32, FileRow)]) -> Vec<Vec<(u32, FileRow)>> {
    let mut groups: Vec<Vec<(u32, FileRow)>> = Vec::new();
    let mut budget = 0u64;
    for file in files {
        let bytes = file.1.live_bytes.max(1);
        match groups.last_mut() {
            Some(group) if budget + bytes <= COMPACTION_BUDGET => {
                group.push(*file);
                budget += bytes;
            }
            _ => {
                groups.push(vec![*file]);
                budget = bytes;
            }
        }
    }
    groups
}

fn is_run_key(prefix_len: usize, key: &[u8]) -> bool {
    key.len() == prefix_len + 1 && key[prefix_len] == 0xFF
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

/// What outlives a part's meta record: its dedupe digests (a redelivered event of an
/// archived part is still a duplicate) and the tombstone that numbers the next part.
fn keep_digests_and_tombstone(
    flows: &mut redb::Table<Bytes, Bytes>,
    archived: &mut redb::Table<Bytes, u32>,
    fkey: &[u8],
    record: &MetaRecord,
) -> Result<(), StateError> {
    if !record.digests.list.is_empty() {
        flows
            .insert(
                digests_key(fkey).as_slice(),
                record.digests.encode().as_slice(),
            )
            .map_err(storage)?;
    }
    archived
        .insert(fkey, record.meta.part + 1)
        .map_err(storage)?;
    Ok(())
}

/// Moves a sealed part's meta record off the flow's live key when an event opens the
/// next part: its inline events go to the part's run key until complete deletes them.
fn displace_sealed(
    flows: &mut redb::Table<Bytes, Bytes>,
    archived: &mut redb::Table<Bytes, u32>,
    fkey: &[u8],
    record: &MetaRecord,
) -> Result<(), StateError> {
    flows.remove(meta_key(fkey).as_slice()).map_err(storage)?;
    if !record.run.events.is_empty() {
        flows
            .insert(
                run_key(fkey, record.meta.part).as_slice(),
                record.run.encode().as_slice(),
            )
            .map_err(storage)?;
    }
    keep_digests_and_tombstone(flows, archived, fkey, record)
}

fn release(released: &mut Released, pointer: &EventPointer) {
    let r = released.entry(pointer.file).or_default();
    (r.0, r.1) = (r.0 + 1, r.1 + u64::from(pointer.len));
}

impl StateStore for EmbeddedStore {
    fn ingest(
        &self,
        events: &[FlowEvent],
        policy: &RetentionPolicy,
        now_ms: i64,
        checkpoint: Option<(&str, &[u8])>,
    ) -> Result<IngestOutcome, StateError> {
        let mut outcome = IngestOutcome::default();
        let txn = self.write()?;
        {
            let mut flows = txn.open_table(FLOWS).map_err(storage)?;
            let mut deadlines = txn.open_table(DEADLINES).map_err(storage)?;
            let mut archived = txn.open_table(ARCHIVED).map_err(storage)?;
            let sealed = txn.open_table(SEALED).map_err(storage)?;
            // Usually no intent is in flight: skip the lookups.
            let any_sealed = !sealed.is_empty().map_err(storage)?;
            let mut new_flows = 0i64;
            // Every B-tree access below goes in key order, not arrival order: a batch
            // touches many flows, and sorted access finds the previous leaf still hot.
            // Within a flow, events go in arrival order (the first of two duplicates
            // is the one kept).
            // The flow keys back to back in one buffer, and the events ordered by
            // key with a stable sort: no allocation per event or per flow.
            let mut key_bytes = Vec::with_capacity(events.len() * 40);
            let mut key_ends = Vec::with_capacity(events.len());
            for e in events {
                push_flow_key(&mut key_bytes, &e.tenant, &e.flow_id);
                key_ends.push(key_bytes.len());
            }
            let fkey_of =
                |i: usize| &key_bytes[i.checked_sub(1).map_or(0, |p| key_ends[p])..key_ends[i]];
            let mut sorted: Vec<usize> = (0..events.len()).collect();
            sorted.sort_by(|&a, &b| fkey_of(a).cmp(fkey_of(b)));
            let by_flow = sorted
                .chunk_by(|&a, &b| fkey_of(a) == fkey_of(b))
                .map(|indices| (fkey_of(indices[0]), indices.iter().copied()));

            let mut active = self.journal.active()?;
            // Sized once: grown by doubling, a 2 MB batch was copied about twice over.
            let mut bytes: Vec<u8> = Vec::with_capacity(events.iter().map(|e| e.raw.len()).sum());
            // Events and dedupe keys that did not fit inline (see `inline`).
            let mut individual: Vec<(Vec<u8>, [u8; super::journal::POINTER_LEN])> = Vec::new();
            for (fkey, indices) in by_flow {
                let mkey = meta_key(fkey);
                let (mut record, mut indexed_deadline) =
                    match flows.get(mkey.as_slice()).map_err(storage)? {
                        Some(v) => {
                            let record = MetaRecord::decode(v.value())?;
                            let deadline = record.meta.deadline_ms;
                            (Some(record), deadline)
                        }
                        None => (None, None),
                    };
                let sealed_through = match any_sealed {
                    true => sealed_part(&sealed, fkey)?,
                    false => None,
                };
                // A flow without an open part opens one with its first new event: the
                // next part number, and the dedupe digests of its archived parts.
                let (mut next_part, mut digests_before) = (1, Digests::default());
                if let Some(displaced) =
                    record.take_if(|r| sealed_through.is_some_and(|s| r.meta.part <= s))
                {
                    // The record is a sealed part's: it makes way for the next part.
                    displace_sealed(&mut flows, &mut archived, fkey, &displaced)?;
                    next_part = displaced.meta.part + 1;
                    digests_before = displaced.digests;
                    indexed_deadline = None; // removed at seal
                } else if record.is_none() {
                    // A sealed part whose record went (erased) still takes its number.
                    if let Some(s) = sealed_through {
                        next_part = s + 1;
                    }
                    if let Some(next) = archived.get(fkey).map_err(storage)? {
                        next_part = next_part.max(next.value());
                        digests_before =
                            match flows.get(digests_key(fkey).as_slice()).map_err(storage)? {
                                Some(v) => Digests::decode(v.value())?,
                                // Archived before inline digests: individual keys.
                                None => Digests::spilled(),
                            };
                    }
                }
                for i in indices {
                    let event = &events[i];
                    if let Some((a, b)) = &event.dedupe_key {
                        let digests = match &mut record {
                            Some(r) => &mut r.digests,
                            None => &mut digests_before,
                        };
                        let d = digest(a, b);
                        let mut duplicate = digests.list.contains(&d);
                        if !duplicate && (digests.is_spilled() || !digests.push(d)) {
                            duplicate = flows
                                .insert(dedupe_key(fkey, a, b).as_slice(), [].as_slice())
                                .map_err(storage)?
                                .is_some();
                        }
                        if duplicate {
                            outcome.duplicates += 1;
                            continue;
                        }
                    }
                    let r = record.get_or_insert_with(|| {
                        new_flows += 1;
                        if next_part > 1 {
                            outcome.reopened += 1;
                        }
                        let meta = new_meta(event, next_part, now_ms);
                        MetaRecord::new(meta, std::mem::take(&mut digests_before))
                    });
                    let order = apply_event(&mut r.meta, event, now_ms);
                    let pointer = EventPointer {
                        file: active.id,
                        offset: active.len + bytes.len() as u64,
                        len: event.raw.len() as u32,
                        crc: crc32fast::hash(&event.raw),
                    };
                    bytes.extend_from_slice(&event.raw);
                    outcome.stored += 1;
                    if let Some((order, pointer)) = r.run.insert(order, pointer) {
                        let mut key = part_prefix(fkey, r.meta.part);
                        key.extend_from_slice(&order);
                        individual.push((key, pointer.encode()));
                    }
                }
                let Some(mut record) = record else {
                    // Every event was a duplicate of an archived one.
                    continue;
                };
                let meta = &mut record.meta;
                meta.deadline_ms = policy
                    .decide(&meta.tenant, meta.status, &meta.labels, meta.last_event_ms)
                    .deadline_ms;
                if indexed_deadline != meta.deadline_ms {
                    if let Some(old) = indexed_deadline {
                        deadlines
                            .remove(deadline_key(old, fkey).as_slice())
                            .map_err(storage)?;
                    }
                    if let Some(new) = meta.deadline_ms {
                        deadlines
                            .insert(deadline_key(new, fkey).as_slice(), ())
                            .map_err(storage)?;
                    }
                }
                flows
                    .insert(mkey.as_slice(), record.encode()?.as_slice())
                    .map_err(storage)?;
            }
            individual.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (ekey, pointer) in &individual {
                flows
                    .insert(ekey.as_slice(), pointer.as_slice())
                    .map_err(storage)?;
            }
            if outcome.stored > 0 {
                // Durable before the transaction that points at the bytes commits.
                active.append(&bytes)?;
                Self::add_to_active(&txn, &active, outcome.stored, bytes.len() as u64)?;
            }
            let mut settings = txn.open_table(SETTINGS).map_err(storage)?;
            add_counter(&mut settings, LIVE_FLOWS, new_flows)?;
            add_counter(&mut settings, STORED_EVENTS, outcome.stored as i64)?;
            if let Some((source, position)) = checkpoint {
                let mut cps = txn.open_table(CHECKPOINTS).map_err(storage)?;
                cps.insert(source, position).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        // Files freed while a reader was open go once it has closed.
        self.journal.delete_later([]);
        Ok(outcome)
    }

    fn checkpoint(&self, source: &str) -> Result<Option<Vec<u8>>, StateError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let cps = txn.open_table(CHECKPOINTS).map_err(storage)?;
        Ok(cps
            .get(source)
            .map_err(storage)?
            .map(|v| v.value().to_vec()))
    }

    fn due_flows(&self, now_ms: i64, limit: usize) -> Result<Vec<FlowMeta>, StateError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let deadlines = txn.open_table(DEADLINES).map_err(storage)?;
        let flows = txn.open_table(FLOWS).map_err(storage)?;
        let end = ((now_ms as u64) ^ (1 << 63))
            .saturating_add(1)
            .to_be_bytes();
        let mut due = Vec::new();
        for entry in deadlines.range::<&[u8]>(..&end[..]).map_err(storage)? {
            if due.len() >= limit {
                break;
            }
            let (key, _) = entry.map_err(storage)?;
            let fkey = &key.value()[8..];
            match flows.get(meta_key(fkey).as_slice()).map_err(storage)? {
                Some(v) => due.push(decode_meta(v.value())?),
                None => return Err(corrupt("deadline index", "entry without a live flow")),
            }
        }
        Ok(due)
    }

    fn live_flow(&self, tenant: &str, flow_id: &str) -> Result<Option<FlowMeta>, StateError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let flows = txn.open_table(FLOWS).map_err(storage)?;
        let markers = txn.open_table(SEALED).map_err(storage)?;
        live_meta(&flows, &markers, &flow_key(tenant, flow_id))
    }

    fn for_each_event(
        &self,
        tenant: &str,
        flow_id: &str,
        part: u32,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), StateError> {
        self.event_reader()?
            .for_each_event(tenant, flow_id, part, sink)
    }

    fn event_reader(&self) -> Result<Box<dyn EventReader>, StateError> {
        // The journal reader first: from then on no file is deleted, so every file
        // the snapshot below points into stays readable.
        let journal = RefCell::new(self.journal.reader());
        let txn = self.db.begin_read().map_err(storage)?;
        let events = txn.open_table(FLOWS).map_err(storage)?;
        let markers = txn.open_table(SEALED).map_err(storage)?;
        Ok(Box::new(EmbeddedEventReader {
            events,
            markers,
            journal,
        }))
    }

    fn seal(&self, mut intent: ArchiveIntent) -> Result<Option<ArchiveIntent>, StateError> {
        let txn = self.write()?;
        let given = std::mem::take(&mut intent.parts);
        let mut sealed = ArchiveIntent {
            parts: Vec::with_capacity(given.len()),
            ..intent
        };
        {
            // Only the marker, the deadline and the intent: the meta record stays put
            // until complete (see "Sealing" in the module doc).
            let flows = txn.open_table(FLOWS).map_err(storage)?;
            let mut deadlines = txn.open_table(DEADLINES).map_err(storage)?;
            let mut markers = txn.open_table(SEALED).map_err(storage)?;
            let mut expected = Vec::new();
            for part in given {
                let m = &part.meta;
                let fkey = flow_key(&m.tenant, &m.flow_id);
                // A meta record starts with its meta's postcard bytes, which are
                // canonical: equal bytes are an equal meta, without decoding it.
                expected.clear();
                postcard::to_io(m, &mut expected).map_err(|e| corrupt("flow meta", e))?;
                let unchanged = match flows.get(meta_key(&fkey).as_slice()).map_err(storage)? {
                    Some(v) => v.value().starts_with(&expected),
                    None => continue,
                };
                let already = sealed_part(&markers, &fkey)?.is_some_and(|s| s >= m.part);
                if !unchanged || already {
                    continue;
                }
                if let Some(d) = m.deadline_ms {
                    deadlines
                        .remove(deadline_key(d, &fkey).as_slice())
                        .map_err(storage)?;
                }
                markers.insert(fkey.as_slice(), m.part).map_err(storage)?;
                sealed.parts.push(part);
            }
            if sealed.parts.is_empty() {
                drop((flows, deadlines, markers));
                txn.abort().map_err(storage)?;
                return Ok(None);
            }
            let mut intents = txn.open_table(INTENTS).map_err(storage)?;
            intents
                .insert(sealed.id.as_str(), encode("intent", &sealed)?.as_slice())
                .map_err(storage)?;
            let mut settings = txn.open_table(SETTINGS).map_err(storage)?;
            add_counter(&mut settings, LIVE_FLOWS, -(sealed.parts.len() as i64))?;
        }
        txn.commit().map_err(storage)?;
        Ok(Some(sealed))
    }

    fn intents(&self) -> Result<Vec<ArchiveIntent>, StateError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let intents = txn.open_table(INTENTS).map_err(storage)?;
        let verified = txn.open_table(VERIFIED).map_err(storage)?;
        let mut out = Vec::new();
        for entry in intents.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let mut intent: ArchiveIntent = postcard::from_bytes(v.value())
                .map_err(|e| corrupt(format!("intent {}", k.value()), e))?;
            if let Some(v) = verified.get(k.value()).map_err(storage)? {
                let proof: VerifiedObject = postcard::from_bytes(v.value())
                    .map_err(|e| corrupt(format!("verified record of {}", k.value()), e))?;
                intent.stage = IntentStage::Verified(proof);
            }
            out.push(intent);
        }
        Ok(out)
    }

    fn record_upload(&self, intent_id: &str, verified: &VerifiedObject) -> Result<(), StateError> {
        let txn = self.write()?;
        {
            let intents = txn.open_table(INTENTS).map_err(storage)?;
            if intents.get(intent_id).map_err(storage)?.is_none() {
                return Err(StateError::UnknownIntent(intent_id.to_string()));
            }
            let mut table = txn.open_table(VERIFIED).map_err(storage)?;
            table
                .insert(intent_id, encode("verified record", verified)?.as_slice())
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    fn complete(&self, intent_id: &str) -> Result<(), StateError> {
        let txn = self.write()?;
        let freed;
        {
            let mut intents = txn.open_table(INTENTS).map_err(storage)?;
            let intent: ArchiveIntent = match intents.remove(intent_id).map_err(storage)? {
                Some(v) => postcard::from_bytes(v.value())
                    .map_err(|e| corrupt(format!("intent {intent_id}"), e))?,
                None => return Err(StateError::UnknownIntent(intent_id.to_string())),
            };
            txn.open_table(VERIFIED)
                .map_err(storage)?
                .remove(intent_id)
                .map_err(storage)?;
            let mut events = txn.open_table(FLOWS).map_err(storage)?;
            let mut archived = txn.open_table(ARCHIVED).map_err(storage)?;
            let mut markers = txn.open_table(SEALED).map_err(storage)?;
            let mut settings = txn.open_table(SETTINGS).map_err(storage)?;
            let removed: u64 = intent.parts.iter().map(|p| p.meta.event_count).sum();
            add_counter(&mut settings, STORED_EVENTS, -(removed as i64))?;
            let mut released = Released::new();
            for part in &intent.parts {
                let fkey = flow_key(&part.meta.tenant, &part.meta.flow_id);
                // The part's meta record, unless the next part displaced it (or a store
                // of an older layout moved it at seal): it goes now, its digests and
                // the tombstone stay.
                let mkey = meta_key(&fkey);
                let record = match events.get(mkey.as_slice()).map_err(storage)? {
                    Some(v) => Some(MetaRecord::decode(v.value())?),
                    None => None,
                };
                let sealed_through = sealed_part(&markers, &fkey)?;
                let sealed_here = |r: &MetaRecord| {
                    r.meta.part == part.meta.part
                        && sealed_through.is_some_and(|s| s >= part.meta.part)
                };
                if let Some(record) = record.filter(sealed_here) {
                    events.remove(mkey.as_slice()).map_err(storage)?;
                    record
                        .run
                        .pointers()
                        .iter()
                        .for_each(|p| release(&mut released, p));
                    keep_digests_and_tombstone(&mut events, &mut archived, &fkey, &record)?;
                }
                if sealed_through.is_some_and(|s| s <= part.meta.part) {
                    markers.remove(fkey.as_slice()).map_err(storage)?;
                }
                let start = part_prefix(&fkey, part.meta.part);
                let end = prefix_end(&start).unwrap_or_else(|| vec![0xff; start.len() + 1]);
                let mut damaged = None;
                events
                    .retain_in::<&[u8], _>(start.as_slice()..end.as_slice(), |k, v| {
                        match part_entry_pointers(start.len(), k, v) {
                            Ok(pointers) => pointers.iter().for_each(|p| release(&mut released, p)),
                            Err(e) => damaged = Some(e),
                        }
                        false
                    })
                    .map_err(storage)?;
                if let Some(e) = damaged {
                    return Err(e);
                }
            }
            drop((events, archived, markers, settings));
            freed = self.release_events(&txn, released)?;
        }
        txn.commit().map_err(storage)?;
        self.journal.delete_later(freed);
        Ok(())
    }

    fn apply_policy(&self, policy: &RetentionPolicy) -> Result<u64, StateError> {
        let fingerprint = policy.fingerprint();
        {
            let txn = self.db.begin_read().map_err(storage)?;
            let settings = txn.open_table(SETTINGS).map_err(storage)?;
            if let Some(v) = settings.get(POLICY_FINGERPRINT).map_err(storage)? {
                if v.value() == fingerprint.as_bytes() {
                    return Ok(0);
                }
            }
        }
        // The policy changed (or this is a new store): every stored deadline may be
        // stale. One O(tracked) pass at start-up, in chunks so memory stays bounded,
        // keeps due_flows O(due) afterwards.
        let txn = self.write()?;
        let mut updated = 0;
        {
            let mut flows = txn.open_table(FLOWS).map_err(storage)?;
            let mut deadlines = txn.open_table(DEADLINES).map_err(storage)?;
            let markers = txn.open_table(SEALED).map_err(storage)?;
            let mut cursor: Option<Vec<u8>> = None;
            loop {
                let mut chunk = Vec::new();
                let range = match &cursor {
                    Some(c) => {
                        flows.range::<&[u8]>((Bound::Excluded(c.as_slice()), Bound::Unbounded))
                    }
                    None => flows.range::<&[u8]>(..),
                }
                .map_err(storage)?;
                let mut last = None;
                for entry in range.take(10_000) {
                    let (k, v) = entry.map_err(storage)?;
                    let key = k.value();
                    last = Some(key.to_vec());
                    if let Some(len) = flow_key_len(key) {
                        if key[len] == META && key.len() == len + 1 {
                            chunk.push((key[..len].to_vec(), MetaRecord::decode(v.value())?));
                        }
                    }
                }
                let Some(last) = last else { break };
                cursor = Some(last);
                for (fkey, mut record) in chunk {
                    if sealed_part(&markers, &fkey)?.is_some_and(|s| s >= record.meta.part) {
                        continue; // in an intent: no deadline until a new part opens
                    }
                    let meta = &mut record.meta;
                    let new = policy
                        .decide(&meta.tenant, meta.status, &meta.labels, meta.last_event_ms)
                        .deadline_ms;
                    if new == meta.deadline_ms {
                        continue;
                    }
                    if let Some(old) = meta.deadline_ms {
                        deadlines
                            .remove(deadline_key(old, &fkey).as_slice())
                            .map_err(storage)?;
                    }
                    if let Some(d) = new {
                        deadlines
                            .insert(deadline_key(d, &fkey).as_slice(), ())
                            .map_err(storage)?;
                    }
                    meta.deadline_ms = new;
                    flows
                        .insert(meta_key(&fkey).as_slice(), record.encode()?.as_slice())
                        .map_err(storage)?;
                    updated += 1;
                }
            }
            let mut settings = txn.open_table(SETTINGS).map_err(storage)?;
            settings
                .insert(POLICY_FINGERPRINT, fingerprint.as_bytes())
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(updated)
    }

    fn set_hold(
        &self,
        tenant: &str,
        flow_id: &str,
        hold: Option<&Hold>,
    ) -> Result<Option<Hold>, StateError> {
        let value = hold.map(|h| encode("hold", h)).transpose()?;
        let previous = self.put(
            HOLDS,
            flow_key(tenant, flow_id).as_slice(),
            value.as_deref(),
        )?;
        previous
            .map(|p| postcard::from_bytes(&p).map_err(|e| corrupt("hold", e)))
            .transpose()
    }

    fn holds(&self) -> Result<Vec<Hold>, StateError> {
        self.all(HOLDS, "hold")
    }

    fn begin_purge(&self, intent: &PurgeIntent) -> Result<(), StateError> {
        let value = encode("purge intent", intent)?;
        self.put(PURGES, intent.object_key.as_str(), Some(&value))
            .map(|_| ())
    }

    fn purge_intents(&self) -> Result<Vec<PurgeIntent>, StateError> {
        self.all(PURGES, "purge intent")
    }

    fn finish_purge(&self, object_key: &str) -> Result<(), StateError> {
        self.put(PURGES, object_key, None).map(|_| ())
    }

    fn begin_erase(&self, intent: &EraseIntent) -> Result<(), StateError> {
        let value = encode("erase intent", intent)?;
        self.put(ERASURES, intent.old_key.as_str(), Some(&value))
            .map(|_| ())
    }

    fn erase_intents(&self) -> Result<Vec<EraseIntent>, StateError> {
        self.all(ERASURES, "erase intent")
    }

    fn finish_erase(&self, old_key: &str) -> Result<(), StateError> {
        self.put(ERASURES, old_key, None).map(|_| ())
    }

    fn compact(&self) -> Result<Compaction, StateError> {
        // Deleting a freed 64 MiB file costs about a third of compacting a group (the
        // kernel drops its cached pages): a helper thread deletes while the next group
        // is compacted.
        std::thread::scope(|scope| {
            let (freed_files, deletions) = std::sync::mpsc::channel::<Vec<u32>>();
            scope.spawn(move || {
                for ids in deletions {
                    self.journal.delete(ids);
                }
            });
            self.compact_with(&mut |freed| {
                let ready = self.journal.deletable(freed);
                if let Err(unsent) = freed_files.send(ready) {
                    self.journal.delete(unsent.0);
                }
            })
        })
    }

    fn erase_live(&self, tenant: &str, flow_id: &str) -> Result<ErasedLive, StateError> {
        let fkey = flow_key(tenant, flow_id);
        let txn = self.write()?;
        let mut erased = ErasedLive::default();
        let freed;
        {
            let mut flows = txn.open_table(FLOWS).map_err(storage)?;
            let markers = txn.open_table(SEALED).map_err(storage)?;
            // A sealed part's record is not an open part (the seal counted it out); its
            // events go all the same.
            if let Some(meta) = live_meta(&flows, &markers, &fkey)? {
                erased.open_part = true;
                if let Some(d) = meta.deadline_ms {
                    txn.open_table(DEADLINES)
                        .map_err(storage)?
                        .remove(deadline_key(d, &fkey).as_slice())
                        .map_err(storage)?;
                }
            }
            let end = prefix_end(&fkey).unwrap_or_else(|| vec![0xff; fkey.len() + 1]);
            // Meta record (0x00, with the open part's inline events), dedupe keys and
            // digests (0x01), and events of every part (0x02, individual and runs).
            let mut events = 0u64;
            let mut pointers = Vec::new();
            let mut damaged = None;
            let part_prefix_len = fkey.len() + 5;
            flows
                .retain_in::<&[u8], _>(fkey.as_slice()..end.as_slice(), |k, v| {
                    let counted = |ps: Vec<EventPointer>| (ps.len() as u64, ps);
                    let found = match k.get(fkey.len()) {
                        Some(&META) if k.len() == fkey.len() + 1 => {
                            MetaRecord::decode(v).map(|r| counted(r.run.pointers()))
                        }
                        Some(&EVENT) if is_run_key(part_prefix_len, k) => {
                            Run::decode(v).map(|r| counted(r.pointers()))
                        }
                        // One event: a pointer, or its bytes in an older store.
                        Some(&EVENT) => Ok((1, EventPointer::decode(v).into_iter().collect())),
                        _ => Ok((0, Vec::new())),
                    };
                    match found {
                        Ok((n, found)) => {
                            events += n;
                            pointers.extend(found);
                        }
                        Err(e) => damaged = Some(e),
                    }
                    false
                })
                .map_err(storage)?;
            if let Some(e) = damaged {
                return Err(e);
            }
            erased.events = events;
            let mut settings = txn.open_table(SETTINGS).map_err(storage)?;
            add_counter(&mut settings, STORED_EVENTS, -(events as i64))?;
            if erased.open_part {
                add_counter(&mut settings, LIVE_FLOWS, -1)?;
            }
            drop((flows, settings));
            // The bytes go before the pointers: if this fails, the erasure fails and
            // is retried, and a crash in between leaves zeros, never the history.
            self.journal.zero(&pointers)?;
            let mut released = Released::new();
            for p in &pointers {
                release(&mut released, p);
            }
            freed = self.release_events(&txn, released)?;
        }
        txn.commit().map_err(storage)?;
        self.journal.delete_later(freed);
        Ok(erased)
    }

    fn stats(&self) -> Result<StoreStats, StateError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let settings = txn.open_table(SETTINGS).map_err(storage)?;
        Ok(StoreStats {
            live_flows: read_counter(&settings, LIVE_FLOWS)?,
            stored_events: read_counter(&settings, STORED_EVENTS)?,
            pending_intents: txn
                .open_table(INTENTS)
                .map_err(storage)?
                .len()
                .map_err(storage)?,
            timers: txn
                .open_table(DEADLINES)
                .map_err(storage)?
                .len()
                .map_err(storage)?,
        })
    }
}

impl EmbeddedStore {
    fn put<K: redb::Key + 'static>(
        &self,
        table: TableDefinition<K, Bytes>,
        key: K::SelfType<'_>,
        value: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, StateError> {
        let txn = self.write()?;
        let previous = {
            let mut t = txn.open_table(table).map_err(storage)?;
            let previous = match value {
                Some(v) => t.insert(key, v).map_err(storage)?,
                None => t.remove(key).map_err(storage)?,
            };
            previous.map(|p| p.value().to_vec())
        };
        txn.commit().map_err(storage)?;
        Ok(previous)
    }

    fn all<K: redb::Key + 'static, T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<K, Bytes>,
        what: &str,
    ) -> Result<Vec<T>, StateError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(table).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            out.push(postcard::from_bytes(v.value()).map_err(|e| corrupt(what, e))?);
        }
        Ok(out)
    }
}

/// A read-only snapshot of the events table (it keeps its transaction alive) and the
/// journal files it points into (kept until the reader is dropped).
struct EmbeddedEventReader {
    events: redb::ReadOnlyTable<Bytes<'static>, Bytes<'static>>,
    markers: redb::ReadOnlyTable<Bytes<'static>, u32>,
    journal: RefCell<JournalReader>,
}

impl EventReader for EmbeddedEventReader {
    fn live_flow(&self, tenant: &str, flow_id: &str) -> Result<Option<FlowMeta>, StateError> {
        live_meta(&self.events, &self.markers, &flow_key(tenant, flow_id))
    }

    fn for_each_event(
        &self,
        tenant: &str,
        flow_id: &str,
        part: u32,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), StateError> {
        let fkey = flow_key(tenant, flow_id);
        let start = part_prefix(&fkey, part);
        let end = prefix_end(&start).unwrap_or_else(|| vec![0xff; start.len() + 1]);
        let mut journal = self.journal.borrow_mut();
        let mut emit = |bytes: &[u8]| -> Result<(), StateError> {
            sink(bytes).map_err(|source| StateError::Stream {
                tenant: tenant.to_string(),
                flow_id: flow_id.to_string(),
                part,
                source,
            })
        };
        // The part's inline events: in its meta record while it is open, under its
        // run key once sealed. They merge by order with the individual entries.
        let open = self
            .events
            .get(meta_key(&fkey).as_slice())
            .map_err(storage)?
            .map(|v| MetaRecord::decode(v.value()))
            .transpose()?
            .filter(|r| r.meta.part == part);
        let run = match open {
            Some(record) => record.run,
            None => match self
                .events
                .get(run_key(&fkey, part).as_slice())
                .map_err(storage)?
            {
                Some(v) => Run::decode(v.value())?,
                None => Run::default(),
            },
        };
        let mut inline = run.events.into_iter().peekable();
        for entry in self
            .events
            .range::<&[u8]>(start.as_slice()..end.as_slice())
            .map_err(storage)?
        {
            let (key, value) = entry.map_err(storage)?;
            let order = &key.value()[start.len()..];
            if order == [0xFF] {
                continue; // the run itself
            }
            while let Some((_, p)) = inline.next_if(|(o, _)| o.as_slice() < order) {
                emit(journal.read(&p)?)?;
            }
            match EventPointer::decode(value.value()) {
                Some(p) => emit(journal.read(&p)?)?,
                // An event stored inline by an older store.
                None => emit(value.value())?,
            }
        }
        for (_, p) in inline {
            emit(journal.read(&p)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::state::test_support::{
        archive_now, default_policy, event as test_event, events_of, open_store, seal_now,
    };

    /// A meta record written before inline indexes is postcard alone, and its flow's
    /// events and dedupe keys are individual entries: it keeps deduplicating against
    /// them, and new events join in order.
    #[test]
    fn meta_records_of_an_older_layout_keep_their_dedupe_keys_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), Config::default().state.journal_file_bytes);
        let policy = default_policy();
        let event = |id: &str, seq: &str| FlowEvent {
            sequence: Some(crate::flow::Sequence::Number(seq.into())),
            ..test_event("f", id, format!(r#"{{"id":"{id}"}}"#))
        };
        store
            .ingest(&[event("old", "5")], &policy, 0, None)
            .unwrap();
        // Rewrite it in the older layout: meta alone, an individual event entry and an
        // individual dedupe key.
        let fkey = flow_key("t", "f");
        let txn = store.write().unwrap();
        {
            let mut flows = txn.open_table(FLOWS).unwrap();
            let record = MetaRecord::decode(
                flows
                    .get(meta_key(&fkey).as_slice())
                    .unwrap()
                    .unwrap()
                    .value(),
            )
            .unwrap();
            let (order, pointer) = record.run.events[0].clone();
            let mut ekey = part_prefix(&fkey, 1);
            ekey.extend_from_slice(&order);
            flows
                .insert(ekey.as_slice(), pointer.encode().as_slice())
                .unwrap();
            flows
                .insert(dedupe_key(&fkey, "s", "old").as_slice(), [].as_slice())
                .unwrap();
            flows
                .insert(
                    meta_key(&fkey).as_slice(),
                    encode("flow meta", &record.meta).unwrap().as_slice(),
                )
                .unwrap();
        }
        txn.commit().unwrap();

        let out = store
            .ingest(
                &[event("old", "5"), event("first", "1"), event("last", "9")],
                &policy,
                0,
                None,
            )
            .unwrap();
        assert_eq!((out.stored, out.duplicates), (2, 1));
        assert_eq!(
            events_of(&store, "f", 1),
            [r#"{"id":"first"}"#, r#"{"id":"old"}"#, r#"{"id":"last"}"#]
        );
        let erased = store.erase_live("t", "f").unwrap();
        assert_eq!(erased.events, 3);
    }

    /// A store written before the journal holds event bytes inline in `flows`; they
    /// are read, archived and deleted like journal events.
    #[test]
    fn inline_events_of_an_older_store_are_read_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), Config::default().state.journal_file_bytes);
        let policy = default_policy();
        let event = FlowEvent {
            status: FlowStatus::Completed,
            event_type: "flow.completed".into(),
            ..test_event("f", "1", r#"{"new":1}"#.to_string())
        };
        store.ingest(&[event], &policy, 0, None).unwrap();
        // The layout of an older store: an event before the new one, bytes inline.
        let fkey = flow_key("t", "f");
        let mut key = part_prefix(&fkey, 1);
        key.extend_from_slice(&order_key(
            Some(&crate::flow::Sequence::Number("0".into())),
            0,
        ));
        let txn = store.write().unwrap();
        txn.open_table(FLOWS)
            .unwrap()
            .insert(key.as_slice(), br#"{"old":0}"#.as_slice())
            .unwrap();
        txn.commit().unwrap();

        assert_eq!(events_of(&store, "f", 1), [r#"{"old":0}"#, r#"{"new":1}"#]);

        archive_now(&store, "i", &["f"]);
        assert_eq!(events_of(&store, "f", 1).len(), 0);
    }

    /// Seal compares the stored meta's bytes with the given meta's: any field that
    /// differs, however small, leaves the flow unsealed; the same meta seals it.
    #[test]
    fn seal_takes_a_flow_only_with_the_meta_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), Config::default().state.journal_file_bytes);
        let event = FlowEvent {
            labels: [("team", "a"), ("zone", "ü✓")].into_iter().collect(),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            ..test_event("f", "1", "{}".to_string())
        };
        store.ingest(&[event], &default_policy(), 0, None).unwrap();
        let meta = store.live_flow("t", "f").unwrap().expect("live");
        let intent = |meta: FlowMeta| ArchiveIntent {
            id: "i".into(),
            tenant: "t".into(),
            object_key: "k".into(),
            archived_at_ms: 0,
            compression: crate::config::Compression::Zstd,
            zstd_level: 3,
            parts: vec![SealedPart {
                meta,
                archive_status: FlowStatus::Abandoned,
                purge_at_ms: 0,
            }],
            stage: IntentStage::Pending,
        };
        let changes: [fn(&mut FlowMeta); 5] = [
            |m| m.labels.merge(&[("team", "b")].into_iter().collect()),
            |m| m.labels.merge(&[("a", "")].into_iter().collect()),
            |m| m.traceparent = None,
            |m| m.event_count += 1,
            |m| m.deadline_ms = Some(m.deadline_ms.unwrap_or(0) + 1),
        ];
        for change in changes {
            let mut other = meta.clone();
            change(&mut other);
            assert!(store.seal(intent(other)).unwrap().is_none());
        }
        assert!(store.live_flow("t", "f").unwrap().is_some(), "still live");
        let sealed = store.seal(intent(meta.clone())).unwrap().expect("sealed");
        assert_eq!(sealed.parts[0].meta, meta);
        assert!(store.live_flow("t", "f").unwrap().is_none());
    }

    /// A reader whose snapshot predates an erasure finds the bytes zeroed: that is
    /// reported as an erasure, not corruption, and a fresh snapshot no longer has the
    /// flow.
    #[test]
    fn a_snapshot_older_than_an_erasure_reads_erased_not_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), Config::default().state.journal_file_bytes);
        let events = [
            test_event("f", "1", r#"{"id":"1"}"#.to_string()),
            test_event("f", "2", r#"{"id":"2"}"#.to_string()),
        ];
        store.ingest(&events, &default_policy(), 0, None).unwrap();
        let before = store.event_reader().unwrap();
        store.erase_live("t", "f").unwrap();

        let meta = before.live_flow("t", "f").unwrap();
        assert_eq!(meta.map(|m| m.event_count), Some(2), "the snapshot's meta");
        let err = before
            .for_each_event("t", "f", 1, &mut |_| Ok(()))
            .unwrap_err();
        assert!(matches!(err, StateError::Erased { .. }), "{err}");
        assert!(err.to_string().contains("reads as zeros"), "{err}");

        let fresh = store.event_reader().unwrap();
        assert_eq!(fresh.live_flow("t", "f").unwrap(), None);
        assert_eq!(events_of(&store, "f", 1).len(), 0);
    }

    /// Compaction scans for pointer holders in a snapshot and moves them in later
    /// transactions. A holder that appears in between (here: sealing moves a flow's
    /// inline pointers from its meta record to a run entry) leaves its file unfreed
    /// rather than dangling; the next pass frees it.
    #[test]
    fn a_holder_created_after_the_compaction_scan_keeps_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), 4096);
        let policy = default_policy();
        let mut done = Vec::new();
        // Three files, each with one event of the pinning flow and 150 of flows that
        // are then archived.
        for b in 0..3 {
            let mut batch = vec![test_event(
                "pin",
                &format!("p{b}"),
                format!(r#"{{"pin":{b}}}"#),
            )];
            for i in 0..150 {
                let flow = format!("d-{b}-{i}");
                batch.push(test_event(&flow, "1", format!(r#"{{"done":"{flow}"}}"#)));
                done.push(flow);
            }
            store.ingest(&batch, &policy, 0, None).unwrap();
        }
        let done: Vec<&str> = done.iter().map(String::as_str).collect();
        archive_now(&store, "i1", &done);

        let picked = store.mostly_dead_files().unwrap();
        assert!(!picked.is_empty(), "files pinned by one live event each");
        let ids: HashSet<u32> = picked.iter().map(|(id, _)| *id).collect();
        let keys = store.pointer_holders(&ids).unwrap();
        // Sealed, then displaced by an event of its next part: the sealed run moves
        // to a key the scan did not see.
        seal_now(&store, "i2", &["pin"]);
        let late = test_event("pin", "late", r#"{"pin":"late"}"#.into());
        store.ingest(&[late], &policy, 0, None).unwrap();

        let (freed, files, left) = store.compact_group(&keys, &picked).unwrap();
        assert_eq!(freed.files, 0, "{freed:?}");
        assert!(files.is_empty(), "{files:?}");
        let mut left = left;
        left.sort();
        let mut expected: Vec<u32> = ids.iter().copied().collect();
        expected.sort();
        assert_eq!(left, expected);
        let pinned = [r#"{"pin":0}"#, r#"{"pin":1}"#, r#"{"pin":2}"#];
        assert_eq!(events_of(&store, "pin", 1), pinned);

        // A fresh pass finds the run entry and frees every picked file.
        let c = store.compact().unwrap();
        assert_eq!(c.files as usize, ids.len(), "{c:?}");
        assert_eq!(events_of(&store, "pin", 1), pinned);
        store.complete("i2").unwrap();
        assert_eq!(events_of(&store, "pin", 2), [r#"{"pin":"late"}"#]);
        assert_eq!(store.stats().unwrap().stored_events, 1);
    }
}
