//! Reading flows: a live flow's meta, and its events streamed in flow order from one
//! snapshot of the index and the journal files it points into.

use super::*;

impl EmbeddedStore {
    pub(super) fn open_part(
        &self,
        tenant: &str,
        flow_id: &str,
    ) -> Result<Option<FlowMeta>, StateError> {
        let txn = self.read()?;
        let flows = txn.open_table(FLOWS).map_err(storage)?;
        let markers = txn.open_table(SEALED).map_err(storage)?;
        live_meta(&flows, &markers, &flow_key(tenant, flow_id))
    }

    /// [`StateStore::live_flows`]: a skip scan of the flows table, one seek per flow
    /// (flow keys are prefix-free, so the end of one flow's keys starts the next).
    pub(super) fn search_live(&self, query: &LiveQuery) -> Result<LiveFlows, StateError> {
        let txn = self.read()?;
        let flows = txn.open_table(FLOWS).map_err(storage)?;
        let markers = txn.open_table(SEALED).map_err(storage)?;
        let mut tenant_prefix = Vec::new();
        if let Some(t) = &query.tenant {
            put_component(&mut tenant_prefix, t.as_bytes());
        }
        let mut next = match &query.after {
            Some((t, f)) => prefix_end(&flow_key(t, f)),
            None => Some(tenant_prefix.clone()),
        };
        let mut found = LiveFlows::default();
        let mut looked_at = 0;
        while let Some(start) = next.take() {
            let Some(entry) = flows
                .range::<&[u8]>(start.as_slice()..)
                .map_err(storage)?
                .next()
            else {
                break;
            };
            let (key, _) = entry.map_err(storage)?;
            let key = key.value();
            if !key.starts_with(&tenant_prefix) {
                break;
            }
            let Some(len) = flow_key_len(key) else {
                return Err(corrupt("flows key", "too short for a flow key"));
            };
            let fkey = &key[..len];
            next = prefix_end(fkey);
            looked_at += 1;
            let meta = live_meta(&flows, &markers, fkey)?;
            if let Some(meta) = meta.filter(|m| m.flow_id.starts_with(&query.flow_id_prefix)) {
                found.flows.push(meta);
            }
            if found.flows.len() >= query.limit.max(1) || looked_at >= LIVE_SCAN {
                found.resume_after = split_flow_key(fkey);
                break;
            }
        }
        Ok(found)
    }

    pub(super) fn snapshot_reader(&self) -> Result<Box<dyn EventReader>, StateError> {
        // The journal reader first: from then on no file is deleted, so every file
        // the snapshot below points into stays readable.
        let journal = RefCell::new(self.journal.reader());
        let txn = self.read()?;
        let events = txn.open_table(FLOWS).map_err(storage)?;
        let markers = txn.open_table(SEALED).map_err(storage)?;
        Ok(Box::new(EmbeddedEventReader {
            events,
            markers,
            journal,
        }))
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
        let mut journal = self.journal.borrow_mut();
        let mut emit = |bytes: &[u8]| -> Result<(), StateError> {
            sink(bytes).map_err(|source| StateError::Stream {
                tenant: tenant.to_string(),
                flow_id: flow_id.to_string(),
                part,
                source,
            })
        };
        // The part's inline events (in its meta record while it is open, under its
        // run key once sealed) and its chunks, in one run: they merge by order with
        // the individual entries of an older store.
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
        let mut chunks_start = start.clone();
        chunks_start.push(CHUNK_TAG);
        let mut chunks_end = start.clone();
        chunks_end.push(RUN_TAG);
        let mut chunked = ChunkedEvents::new(run, &self.events, &chunks_start, &chunks_end)?;
        for entry in self
            .events
            .range::<&[u8]>(start.as_slice()..chunks_start.as_slice())
            .map_err(storage)?
        {
            let (key, value) = entry.map_err(storage)?;
            let order = &key.value()[start.len()..];
            while let Some(p) = chunked.next_below(Some(order))? {
                emit(journal.read(&p)?)?;
            }
            match EventPointer::decode(value.value()) {
                Some(p) => emit(journal.read(&p)?)?,
                // An event stored inline by an older store.
                None => emit(value.value())?,
            }
        }
        while let Some(p) = chunked.next_below(None)? {
            emit(journal.read(&p)?)?;
        }
        Ok(())
    }
}

/// A part's inline events and chunks (see `inline`) in order, each chunk read only
/// when the next event could be in it: a long part that arrived roughly in order
/// holds about one chunk in memory, not all of its pointers.
struct ChunkedEvents<'t> {
    table: &'t redb::ReadOnlyTable<Bytes<'static>, Bytes<'static>>,
    /// Read but not yet emitted, by order.
    pending: std::collections::BTreeMap<Vec<u8>, EventPointer>,
    /// The chunks' keys in key order, with the smallest order in that chunk or any
    /// later one.
    chunks: Vec<(Vec<u8>, Vec<u8>)>,
    next: usize,
}

impl<'t> ChunkedEvents<'t> {
    fn new(
        inline: Run,
        table: &'t redb::ReadOnlyTable<Bytes<'static>, Bytes<'static>>,
        start: &[u8],
        end: &[u8],
    ) -> Result<ChunkedEvents<'t>, StateError> {
        let mut chunks = Vec::new();
        for entry in table.range::<&[u8]>(start..end).map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            if let Some(first) = Run::first_order(value.value())? {
                chunks.push((key.value().to_vec(), first));
            }
        }
        for i in (1..chunks.len()).rev() {
            if chunks[i].1 < chunks[i - 1].1 {
                chunks[i - 1].1 = chunks[i].1.clone();
            }
        }
        Ok(ChunkedEvents {
            table,
            pending: inline.events.into_iter().collect(),
            chunks,
            next: 0,
        })
    }

    /// The next event in order if its order is below `bound` (`None`: any).
    fn next_below(&mut self, bound: Option<&[u8]>) -> Result<Option<EventPointer>, StateError> {
        loop {
            let horizon = self.chunks.get(self.next).map(|(_, min)| min.as_slice());
            if let Some((order, _)) = self.pending.first_key_value() {
                let o = order.as_slice();
                if horizon.is_none_or(|h| o < h) && bound.is_none_or(|b| o < b) {
                    return Ok(self.pending.pop_first().map(|(_, p)| p));
                }
            }
            match horizon {
                Some(h) if bound.is_none_or(|b| h < b) => {
                    let key = &self.chunks[self.next].0;
                    let chunk = match self.table.get(key.as_slice()).map_err(storage)? {
                        Some(v) => Run::decode(v.value())?,
                        None => return Err(corrupt("event chunk", "gone from its snapshot")),
                    };
                    self.pending.extend(chunk.events);
                    self.next += 1;
                }
                _ => return Ok(None),
            }
        }
    }
}
