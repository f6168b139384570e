//! Journal compaction: a journal file is deleted once no live event points into it; a
//! few long-running flows could pin mostly-archived files for ever, so their live
//! events are moved into the active file and the files freed. One scan of the index
//! in a read snapshot finds every file's holders while ingest goes on, then each group
//! of at most [`COMPACTION_BUDGET`] live bytes moves in one short write transaction,
//! which checks that the pointers it moves account for every live event the file
//! still counts (else the file is left for the next pass).

use super::*;

impl EmbeddedStore {
    /// journal rows; returns the files no live event points into any more, except the
    /// active one. Their rows are removed: delete them after the commit.
    pub(super) fn release_events(
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
    pub(super) fn add_to_active(
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
    pub(super) fn mostly_dead_files(&self) -> Result<Vec<(u32, FileRow)>, StateError> {
        let active = self.journal.active_id();
        let txn = self.read()?;
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
    pub(super) fn pointer_holders(
        &self,
        files: &HashSet<u32>,
    ) -> Result<Vec<HolderKey>, StateError> {
        let txn = self.read()?;
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
    pub(super) fn compact_group(
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
            crate::failpoint::hit("mid-compaction");
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
    pub(super) fn compact_with(
        &self,
        freed: &mut dyn FnMut(Vec<u32>),
    ) -> Result<Compaction, StateError> {
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
                if !files.is_empty() {
                    crate::failpoint::hit("after-compaction");
                }
                freed(files);
            }
            if !freed_any {
                return Ok(done);
            }
        }
    }

    pub(super) fn compact_journal(&self) -> Result<Compaction, StateError> {
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
}

/// Per journal file: events and bytes no longer pointed at.
pub(super) type Released = HashMap<u32, (u64, u64)>;

/// The journal pointers of one entry under a part prefix of `prefix_len` bytes: one
/// for an individual event, all of them for a sealed part's inline run or a chunk, none for an
/// event stored inline by an older store.
pub(super) fn part_entry_pointers(
    prefix_len: usize,
    key: &[u8],
    value: &[u8],
) -> Result<Vec<EventPointer>, StateError> {
    if holds_run(prefix_len, key) {
        return Ok(Run::decode(value)?.pointers());
    }
    Ok(EventPointer::decode(value).into_iter().collect())
}

/// A key found holding pointers into files being compacted, and which of them.
pub(super) struct HolderKey {
    key: Vec<u8>,
    files: Vec<u32>,
}

/// An index value that points into the journal (what compaction repoints).
pub(super) enum PointerHolder {
    Event(EventPointer),
    Run(Run),
    Meta(Box<MetaRecord>),
}

impl PointerHolder {
    /// What `key`'s value holds, if it can hold event pointers.
    pub(super) fn of(key: &[u8], value: &[u8]) -> Result<Option<PointerHolder>, StateError> {
        let Some(len) = flow_key_len(key) else {
            return Ok(None);
        };
        Ok(match key.get(len) {
            Some(&META) if key.len() == len + 1 => {
                Some(PointerHolder::Meta(Box::new(MetaRecord::decode(value)?)))
            }
            Some(&EVENT) if holds_run(len + 5, key) => {
                Some(PointerHolder::Run(Run::decode(value)?))
            }
            Some(&EVENT) => EventPointer::decode(value).map(PointerHolder::Event),
            _ => None,
        })
    }

    pub(super) fn pointers(&self) -> Box<dyn Iterator<Item = &EventPointer> + '_> {
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

pub(super) fn release(released: &mut Released, pointer: &EventPointer) {
    let r = released.entry(pointer.file).or_default();
    (r.0, r.1) = (r.0 + 1, r.1 + u64::from(pointer.len));
}
