//! The archive side of the commit protocol: finding due flows, sealing them into an
//! intent, recording the verified upload, and completing the intent by deleting the
//! archived state; also erasing a live flow. See "Sealing" in the module doc of
//! [`super`].

use super::*;

impl EmbeddedStore {
    pub(super) fn find_due(&self, now_ms: i64, limit: usize) -> Result<Vec<FlowMeta>, StateError> {
        let txn = self.read()?;
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

    pub(super) fn seal_parts(
        &self,
        mut intent: ArchiveIntent,
    ) -> Result<Option<ArchiveIntent>, StateError> {
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

    pub(super) fn pending_intents(&self) -> Result<Vec<ArchiveIntent>, StateError> {
        let txn = self.read()?;
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

    pub(super) fn record_verified(
        &self,
        intent_id: &str,
        verified: &VerifiedObject,
    ) -> Result<(), StateError> {
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

    pub(super) fn complete_intent(&self, intent_id: &str) -> Result<(), StateError> {
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

    /// Deletes the flow's live state. `zero` first overwrites its event bytes (an
    /// erasure); a repair drops bytes that are already damaged and leaves them.
    pub(super) fn erase_flow(
        &self,
        tenant: &str,
        flow_id: &str,
        zero: bool,
    ) -> Result<ErasedLive, StateError> {
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
                        Some(&EVENT) if holds_run(part_prefix_len, k) => {
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
            if zero {
                self.journal.zero(&pointers)?;
            }
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
}

/// What outlives a part's meta record: its dedupe digests (a redelivered event of an
/// archived part is still a duplicate) and the tombstone that numbers the next part.
pub(super) fn keep_digests_and_tombstone(
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
