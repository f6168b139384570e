//! Ingest: a batch of events and the source checkpoint in one durable transaction
//! (the batch's bytes appended to the journal and fsynced before it commits), and the
//! recomputation of deadlines when the retention policy changes.

use super::*;

impl EmbeddedStore {
    pub(super) fn store_batch(
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
            // Chunks of events that did not fit inline (see `inline`), by key.
            let mut chunks: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
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
                // The chunk this flow's events past the inline ones go to: read once,
                // written once per batch.
                let mut chunk: Option<(u32, Run)> = None;
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
                        // The k-th event past the inline ones (k from 0) goes to chunk
                        // k / CHUNK_EVENTS, so a chunk never holds more than that.
                        let past_inline = r.meta.event_count.saturating_sub(MAX_RUN as u64 + 1);
                        let n = u32::try_from(past_inline / CHUNK_EVENTS)
                            .map_err(|_| corrupt("flow meta", "more chunks than a u32 counts"))?;
                        let part = r.meta.part;
                        if chunk.as_ref().is_none_or(|(c, _)| *c != n) {
                            if let Some((c, run)) = chunk.take() {
                                chunks.push((chunk_key(fkey, part, c), run.encode()));
                            }
                            let stored = match flows.get(chunk_key(fkey, part, n).as_slice()) {
                                Ok(Some(v)) => Run::decode(v.value())?,
                                Ok(None) => Run::default(),
                                Err(e) => return Err(storage(e)),
                            };
                            chunk = Some((n, stored));
                        }
                        if let Some((_, run)) = chunk.as_mut() {
                            run.push(order, pointer);
                        }
                    }
                }
                let Some(mut record) = record else {
                    // Every event was a duplicate of an archived one.
                    continue;
                };
                if let Some((c, run)) = chunk {
                    chunks.push((chunk_key(fkey, record.meta.part, c), run.encode()));
                }
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
            // Flows went in key order, so the chunks are in key order too.
            for (ckey, run) in &chunks {
                flows
                    .insert(ckey.as_slice(), run.as_slice())
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

    pub(super) fn recompute_deadlines(&self, policy: &RetentionPolicy) -> Result<u64, StateError> {
        let fingerprint = policy.fingerprint();
        {
            let txn = self.read()?;
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
