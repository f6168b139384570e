//! Checking a store offline and repairing the damage found (`state check`,
//! `state repair`; `docs/operations.md`, "Damaged state").
//!
//! The check reads everything: redb's own integrity check over `state.redb` (page
//! checksums and allocator state), every journal file against the bytes committed to
//! it, and every event pointer against its file's length and the event's CRC-32.
//!
//! Guarantees:
//! - `check` changes nothing the store holds. (redb's check may rebuild its free-page
//!   bookkeeping, as its crash recovery at every open after a crash does.)
//! - `repair` drops the live state of exactly the flows whose history is damaged and
//!   lists each one; it never touches a part already verified in the archive (its
//!   history is safe there and completion deletes it as usual), and it refuses a
//!   database file redb cannot read: that is restored from a backup, not guessed at.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::panic::AssertUnwindSafe;

use serde::Serialize;

use super::compaction::PointerHolder;
use super::journal::{file_problems, io, JournalFileProblem};
use super::*;

/// What [`check`] found.
#[derive(Debug, Clone, Serialize)]
pub struct StoreCheck {
    pub path: String,
    /// `ok`, or what redb's integrity check had to repair in its own bookkeeping.
    pub database: String,
    /// Journal files missing or shorter than the bytes committed to them.
    pub journal_files: Vec<JournalFileProblem>,
    /// Flow parts with events whose bytes are missing or damaged.
    pub damaged_parts: Vec<DamagedPart>,
    pub events_checked: u64,
    pub bytes_checked: u64,
}

impl StoreCheck {
    pub fn is_clean(&self) -> bool {
        self.journal_files.is_empty() && self.damaged_parts.is_empty()
    }
}

/// One flow part with damaged events.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DamagedPart {
    pub tenant: String,
    pub flow_id: String,
    pub part: u32,
    /// Its events whose bytes are missing or do not match their CRC-32.
    pub damaged_events: u64,
    /// The first problem found, naming the file and offset.
    pub problem: String,
    /// The archive intent the part is sealed into, if any, and whether its object is
    /// already verified (then the history is safe in the archive).
    pub intent: Option<String>,
    pub verified: bool,
}

/// What [`repair`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreRepair {
    /// Flows whose live state was dropped (every part still live), with their events.
    pub dropped_flows: Vec<DroppedFlow>,
    /// Damaged parts left alone because their object is verified in the archive.
    pub kept_archived: Vec<DamagedPart>,
    /// Pending intents a damaged part was taken out of (deleted when it was the last).
    pub intents_changed: Vec<String>,
    /// Journal files whose committed end was set back to what is on disk (a missing
    /// one recreated empty).
    pub journal_files_cut: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DroppedFlow {
    pub tenant: String,
    pub flow_id: String,
    pub events: u64,
}

impl EmbeddedStore {
    /// Checks the store in `config.path` without opening it for work (it must not be
    /// in use). An unreadable database file is an error; all else is in the report.
    pub fn check(config: &StateConfig) -> Result<StoreCheck, StateError> {
        check(config)
    }

    /// Drops the live state of every flow [`EmbeddedStore::check`] finds damaged
    /// (see the module doc), and says what it dropped.
    pub fn repair(config: &StateConfig) -> Result<(StoreCheck, StoreRepair), StateError> {
        repair(config)
    }
}

fn check(config: &StateConfig) -> Result<StoreCheck, StateError> {
    let dir = config.path.as_path();
    let path = dir.join("state.redb");
    if !path.exists() {
        return Err(StateError::Open {
            path: path.display().to_string(),
            source: Box::new(redb::Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no state store here (check state.path)",
            ))),
        });
    }
    let mut db = open_database(&path, config.cache_bytes as usize, false)?;
    let database = match verify_database(&mut db, &path)? {
        true => "ok".to_string(),
        false => "ok after redb rebuilt its free-page bookkeeping".to_string(),
    };
    // redb trusts pages it has verified once; a page damaged behind its back can still
    // trip an internal assertion. That is this file's damage, not a bug to crash on.
    let scanned = std::panic::catch_unwind(AssertUnwindSafe(|| scan(&db, dir)));
    let (journal_files, damaged_parts, events_checked, bytes_checked) = match scanned {
        Ok(found) => found?,
        Err(_) => {
            return Err(database_damaged(
                &path,
                "a page fails redb's own assertions",
            ))
        }
    };
    Ok(StoreCheck {
        path: dir.display().to_string(),
        database,
        journal_files,
        damaged_parts,
        events_checked,
        bytes_checked,
    })
}

type Scan = (Vec<JournalFileProblem>, Vec<DamagedPart>, u64, u64);

fn scan(db: &Database, dir: &Path) -> Result<Scan, StateError> {
    let journal_dir = dir.join("journal");
    let txn = db.begin_read().map_err(storage)?;
    let rows = journal_rows(&txn.open_table(JOURNAL).map_err(storage)?)?;
    let journal_files = file_problems(&journal_dir, &rows)?;
    let sealed_in = sealed_parts(&txn)?;
    let mut files = Files::new(&journal_dir);
    let mut damaged: BTreeMap<(Vec<u8>, u32), DamagedPart> = BTreeMap::new();
    let (mut events, mut bytes) = (0u64, 0u64);
    let flows = txn.open_table(FLOWS).map_err(storage)?;
    for entry in flows.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let (key, value) = (k.value(), v.value());
        let Some(holder) = PointerHolder::of(key, value)? else {
            continue;
        };
        let Some(len) = flow_key_len(key) else {
            continue;
        };
        let part = match &holder {
            PointerHolder::Meta(record) => record.meta.part,
            _ => key
                .get(len + 1..len + 5)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| corrupt("event key", "too short for its part number"))?,
        };
        for pointer in holder.pointers() {
            events += 1;
            bytes += u64::from(pointer.len);
            let Some(problem) = files.problem(pointer)? else {
                continue;
            };
            let fkey = key[..len].to_vec();
            let (tenant, flow_id) = split_flow_key(&fkey);
            let intent = sealed_in.get(&(fkey.clone(), part)).cloned();
            damaged
                .entry((fkey, part))
                .or_insert_with(|| DamagedPart {
                    tenant,
                    flow_id,
                    part,
                    damaged_events: 0,
                    problem,
                    verified: intent.as_ref().is_some_and(|i| i.1),
                    intent: intent.map(|i| i.0),
                })
                .damaged_events += 1;
        }
    }
    Ok((
        journal_files,
        damaged.into_values().collect(),
        events,
        bytes,
    ))
}

fn repair(config: &StateConfig) -> Result<(StoreCheck, StoreRepair), StateError> {
    let found = check(config)?;
    let mut done = StoreRepair::default();
    if found.is_clean() {
        return Ok((found, done));
    }
    done.journal_files_cut = cut_journal_rows(config, &found.journal_files)?;
    let store = EmbeddedStore::open(config)?;
    let mut flows: BTreeMap<(String, String), ()> = BTreeMap::new();
    for part in &found.damaged_parts {
        if part.verified {
            done.kept_archived.push(part.clone());
            continue;
        }
        if let Some(intent) = &part.intent {
            store.take_out_of_intent(intent, &part.tenant, &part.flow_id, part.part)?;
            if !done.intents_changed.contains(intent) {
                done.intents_changed.push(intent.clone());
            }
        }
        flows.insert((part.tenant.clone(), part.flow_id.clone()), ());
    }
    for (tenant, flow_id) in flows.into_keys() {
        let erased = store.erase_flow(&tenant, &flow_id, false)?;
        done.dropped_flows.push(DroppedFlow {
            tenant,
            flow_id,
            events: erased.events,
        });
    }
    Ok((found, done))
}

/// Sets each damaged file's committed end back to the bytes it has (creating a
/// missing one empty), so the store opens; the pointers past that end belong to the
/// flows the repair drops next.
fn cut_journal_rows(
    config: &StateConfig,
    problems: &[JournalFileProblem],
) -> Result<Vec<String>, StateError> {
    if problems.is_empty() {
        return Ok(Vec::new());
    }
    let path = config.path.join("state.redb");
    let db = open_database(&path, config.cache_bytes as usize, false)?;
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate).map_err(storage)?;
    let mut cut = Vec::new();
    {
        let mut table = txn.open_table(JOURNAL).map_err(storage)?;
        for problem in problems {
            let file = std::path::PathBuf::from(&problem.path);
            if problem.size.is_none() {
                File::create(&file)
                    .and_then(|_| crate::durable::sync_dir_of(&file))
                    .map_err(|e| StateError::File {
                        path: problem.path.clone(),
                        source: e,
                    })?;
            }
            let row = table
                .get(problem.file)
                .map_err(storage)?
                .map(|v| FileRow::decode(v.value()))
                .transpose()?
                .unwrap_or_default();
            let row = FileRow {
                end: problem.size.unwrap_or(0),
                ..row
            };
            table
                .insert(problem.file, row.encode().as_slice())
                .map_err(storage)?;
            cut.push(problem.path.clone());
        }
    }
    txn.commit().map_err(storage)?;
    Ok(cut)
}

impl EmbeddedStore {
    /// Takes a damaged part out of the pending intent it is sealed into: the part is
    /// live again (for the erase that follows) and the intent archives the others.
    fn take_out_of_intent(
        &self,
        intent_id: &str,
        tenant: &str,
        flow_id: &str,
        part: u32,
    ) -> Result<(), StateError> {
        let txn = self.write()?;
        {
            let mut intents = txn.open_table(INTENTS).map_err(storage)?;
            let Some(mut intent) = intents
                .get(intent_id)
                .map_err(storage)?
                .map(|v| postcard::from_bytes::<ArchiveIntent>(v.value()))
                .transpose()
                .map_err(|e| corrupt(format!("intent {intent_id}"), e))?
            else {
                return Ok(());
            };
            let before = intent.parts.len();
            intent.parts.retain(|p| {
                !(p.meta.tenant == tenant && p.meta.flow_id == flow_id && p.meta.part == part)
            });
            if intent.parts.len() == before {
                return Ok(());
            }
            if intent.parts.is_empty() {
                intents.remove(intent_id).map_err(storage)?;
            } else {
                intents
                    .insert(intent_id, encode("intent", &intent)?.as_slice())
                    .map_err(storage)?;
            }
            let fkey = flow_key(tenant, flow_id);
            let mut markers = txn.open_table(SEALED).map_err(storage)?;
            if sealed_part(&markers, &fkey)?.is_some_and(|s| s <= part) {
                markers.remove(fkey.as_slice()).map_err(storage)?;
                // The seal counted the part out of the live flows; the erase counts it
                // out again.
                let mut settings = txn.open_table(SETTINGS).map_err(storage)?;
                add_counter(&mut settings, LIVE_FLOWS, 1)?;
            }
        }
        txn.commit().map_err(storage)
    }
}

/// (flow key, part) → (intent id, verified) for every part sealed into an intent.
type SealedIn = HashMap<(Vec<u8>, u32), (String, bool)>;

fn sealed_parts(txn: &redb::ReadTransaction) -> Result<SealedIn, StateError> {
    let intents = txn.open_table(INTENTS).map_err(storage)?;
    let verified = txn.open_table(VERIFIED).map_err(storage)?;
    let mut out = HashMap::new();
    for entry in intents.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let intent: ArchiveIntent = postcard::from_bytes(v.value())
            .map_err(|e| corrupt(format!("intent {}", k.value()), e))?;
        let is_verified = verified.get(k.value()).map_err(storage)?.is_some();
        for p in &intent.parts {
            out.insert(
                (flow_key(&p.meta.tenant, &p.meta.flow_id), p.meta.part),
                (intent.id.clone(), is_verified),
            );
        }
    }
    Ok(out)
}

/// Tenant and flow id of a flow key, lossily (they were valid UTF-8 when written).
fn split_flow_key(fkey: &[u8]) -> (String, String) {
    let component = |at: usize| -> Option<(String, usize)> {
        let len = u16::from_be_bytes([*fkey.get(at)?, *fkey.get(at + 1)?]) as usize;
        let bytes = fkey.get(at + 2..at + 2 + len)?;
        Some((String::from_utf8_lossy(bytes).into_owned(), at + 2 + len))
    };
    component(0)
        .and_then(|(t, next)| Some((t, component(next)?.0)))
        .unwrap_or_default()
}

/// The journal files, opened once each, for checking pointers.
struct Files<'a> {
    dir: &'a Path,
    open: HashMap<u32, Option<(File, u64)>>,
    buffer: Vec<u8>,
}

impl<'a> Files<'a> {
    fn new(dir: &'a Path) -> Files<'a> {
        Files {
            dir,
            open: HashMap::new(),
            buffer: Vec::new(),
        }
    }

    /// Why `pointer`'s bytes cannot be read back intact, if they cannot.
    fn problem(&mut self, pointer: &EventPointer) -> Result<Option<String>, StateError> {
        let path = Journal::path_of(self.dir, pointer.file);
        let file = match self.open.entry(pointer.file) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let opened = match File::open(&path) {
                    Ok(f) => {
                        let len = f.metadata().map_err(|e| io(&path, e))?.len();
                        Some((f, len))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(io(&path, e)),
                };
                e.insert(opened)
            }
        };
        let at = || format!("{}:{}", path.display(), pointer.offset);
        let Some((file, len)) = file else {
            return Ok(Some(format!("event at {}: the file is missing", at())));
        };
        let end = pointer.offset + u64::from(pointer.len);
        if end > *len {
            return Ok(Some(format!(
                "event at {}: the file ends at byte {len}, before the event's end {end}",
                at()
            )));
        }
        self.buffer.resize(pointer.len as usize, 0);
        file.read_exact_at(&mut self.buffer, pointer.offset)
            .map_err(|e| io(&path, e))?;
        if crc32fast::hash(&self.buffer) != pointer.crc {
            let zeros = self.buffer.iter().all(|&b| b == 0);
            return Ok(Some(format!(
                "event at {}: its bytes do not match their CRC-32{}",
                at(),
                if zeros { " (they are zeros)" } else { "" }
            )));
        }
        Ok(None)
    }
}

impl std::fmt::Display for StoreCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "embedded store at {}", self.path)?;
        writeln!(f, "database        {}", self.database)?;
        writeln!(
            f,
            "events checked  {} ({:.1} MB)",
            self.events_checked,
            self.bytes_checked as f64 / 1e6
        )?;
        for p in &self.journal_files {
            writeln!(f, "journal file    {}: {}", p.path, p.problem())?;
        }
        for p in &self.damaged_parts {
            let intent = match (&p.intent, p.verified) {
                (Some(id), true) => format!(" [verified in the archive by intent {id}: kept]"),
                (Some(id), false) => format!(" [sealed in pending intent {id}]"),
                (None, _) => String::new(),
            };
            writeln!(
                f,
                "damaged part    {}/{} part {}: {} event(s); {}{intent}",
                p.tenant, p.flow_id, p.part, p.damaged_events, p.problem
            )?;
        }
        if self.is_clean() {
            writeln!(f, "result          clean")
        } else {
            writeln!(
                f,
                "result          damaged: `flow-archiver state repair` drops the live state of \
                 the flows listed (their events are lost; re-ingest them from the source if \
                 it still holds them), or restore the state directory from a backup"
            )
        }
    }
}

impl std::fmt::Display for StoreRepair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dropped_flows.is_empty()
            && self.kept_archived.is_empty()
            && self.journal_files_cut.is_empty()
        {
            return writeln!(f, "nothing to repair: the store is clean");
        }
        for path in &self.journal_files_cut {
            writeln!(f, "journal file    {path}: committed end set to its length")?;
        }
        for id in &self.intents_changed {
            writeln!(f, "intent          {id}: damaged parts taken out")?;
        }
        for p in &self.kept_archived {
            writeln!(
                f,
                "kept            {}/{} part {}: verified in the archive, deleted when its intent completes",
                p.tenant, p.flow_id, p.part
            )?;
        }
        for d in &self.dropped_flows {
            writeln!(
                f,
                "dropped         {}/{}: {} event(s) of live state",
                d.tenant, d.flow_id, d.events
            )?;
        }
        writeln!(f, "repaired: {} flow(s) dropped", self.dropped_flows.len())
    }
}
