//! Small records beside the flows: source checkpoints, legal holds, purge and erase
//! intents, and the counters behind `stats`.

use super::*;

impl EmbeddedStore {
    pub(super) fn stored_checkpoint(&self, source: &str) -> Result<Option<Vec<u8>>, StateError> {
        let txn = self.read()?;
        let cps = txn.open_table(CHECKPOINTS).map_err(storage)?;
        Ok(cps
            .get(source)
            .map_err(storage)?
            .map(|v| v.value().to_vec()))
    }

    pub(super) fn set_hold_record(
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

    pub(super) fn hold_records(&self) -> Result<Vec<Hold>, StateError> {
        self.all(HOLDS, "hold")
    }

    pub(super) fn put_purge(&self, intent: &PurgeIntent) -> Result<(), StateError> {
        let value = encode("purge intent", intent)?;
        self.put(PURGES, intent.object_key.as_str(), Some(&value))
            .map(|_| ())
    }

    pub(super) fn purge_records(&self) -> Result<Vec<PurgeIntent>, StateError> {
        self.all(PURGES, "purge intent")
    }

    pub(super) fn remove_purge(&self, object_key: &str) -> Result<(), StateError> {
        self.put(PURGES, object_key, None).map(|_| ())
    }

    pub(super) fn put_erase(&self, intent: &EraseIntent) -> Result<(), StateError> {
        let value = encode("erase intent", intent)?;
        self.put(ERASURES, intent.old_key.as_str(), Some(&value))
            .map(|_| ())
    }

    pub(super) fn erase_records(&self) -> Result<Vec<EraseIntent>, StateError> {
        self.all(ERASURES, "erase intent")
    }

    pub(super) fn remove_erase(&self, old_key: &str) -> Result<(), StateError> {
        self.put(ERASURES, old_key, None).map(|_| ())
    }

    pub(super) fn counts(&self) -> Result<StoreStats, StateError> {
        let txn = self.read()?;
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
        let txn = self.read()?;
        let t = txn.open_table(table).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            out.push(postcard::from_bytes(v.value()).map_err(|e| corrupt(what, e))?);
        }
        Ok(out)
    }
}
