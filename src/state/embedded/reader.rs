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
