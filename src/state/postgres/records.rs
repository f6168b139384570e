//! Small records shared by every instance: source checkpoints, legal holds (visible to
//! all at once: there is one copy), purge and erase intents (owned and leased like
//! archive intents, and taken over when their owner's lease expires), and counts.

use super::*;

impl PostgresStore {
    pub(super) async fn stored_checkpoint(
        &self,
        source: &str,
    ) -> Result<Option<Vec<u8>>, StateError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT position FROM checkpoints WHERE source = $1",
                &[&source],
            )
            .await
            .map_err(storage)?;
        Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
    }

    pub(super) async fn set_hold_record(
        &self,
        tenant: &str,
        flow_id: &str,
        hold: Option<&Hold>,
    ) -> Result<Option<Hold>, StateError> {
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(storage)?;
        let previous = txn
            .query_opt(
                "SELECT body FROM holds WHERE tenant = $1 AND flow_id = $2 FOR UPDATE",
                &[&tenant, &flow_id],
            )
            .await
            .map_err(storage)?
            .map(|r| decode::<Hold>("hold", r.get::<_, &[u8]>(0)))
            .transpose()?;
        match hold {
            Some(h) => txn
                .execute(
                    "INSERT INTO holds (tenant, flow_id, body) VALUES ($1, $2, $3)
                     ON CONFLICT (tenant, flow_id) DO UPDATE SET body = excluded.body",
                    &[&tenant, &flow_id, &encode("hold", h)?],
                )
                .await
                .map_err(storage)?,
            None => txn
                .execute(
                    "DELETE FROM holds WHERE tenant = $1 AND flow_id = $2",
                    &[&tenant, &flow_id],
                )
                .await
                .map_err(storage)?,
        };
        txn.commit().await.map_err(storage)?;
        Ok(previous)
    }

    pub(super) async fn hold_records(&self) -> Result<Vec<Hold>, StateError> {
        let client = self.client().await?;
        client
            .query("SELECT body FROM holds ORDER BY tenant, flow_id", &[])
            .await
            .map_err(storage)?
            .iter()
            .map(|r| decode("hold", r.get::<_, &[u8]>(0)))
            .collect()
    }

    pub(super) async fn put_purge(&self, intent: &PurgeIntent) -> Result<(), StateError> {
        self.put_leased(
            "purge_intents",
            "object_key",
            &intent.object_key,
            encode("purge intent", intent)?,
        )
        .await
    }

    pub(super) async fn put_erase(&self, intent: &EraseIntent) -> Result<(), StateError> {
        self.put_leased(
            "erase_intents",
            "old_key",
            &intent.old_key,
            encode("erase intent", intent)?,
        )
        .await
    }

    async fn put_leased(
        &self,
        table: &str,
        key_column: &str,
        key: &str,
        body: Vec<u8>,
    ) -> Result<(), StateError> {
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO {table} ({key_column}, body, owner, fence, lease_until)
             VALUES ($1, $2, $3, 1, now() + $4::int8 * interval '1 millisecond')
             ON CONFLICT ({key_column}) DO UPDATE SET body = excluded.body, owner = excluded.owner,
                 fence = {table}.fence + 1, lease_until = excluded.lease_until"
        );
        client
            .execute(sql.as_str(), &[&key, &body, &self.owner, &self.lease_ms()])
            .await
            .map_err(storage)?;
        Ok(())
    }

    pub(super) async fn claim_purges(&self) -> Result<Vec<PurgeIntent>, StateError> {
        self.claim_leased("purge_intents", "object_key", "purge intent")
            .await
    }

    pub(super) async fn claim_erasures(&self) -> Result<Vec<EraseIntent>, StateError> {
        self.claim_leased("erase_intents", "old_key", "erase intent")
            .await
    }

    /// This instance's own unfinished records and those whose owner's lease expired,
    /// now this instance's.
    async fn claim_leased<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        key_column: &str,
        what: &str,
    ) -> Result<Vec<T>, StateError> {
        let client = self.client().await?;
        let sql = format!(
            "UPDATE {table} SET owner = $1, fence = fence + 1,
                                lease_until = now() + $2::int8 * interval '1 millisecond'
             WHERE owner = $1 OR lease_until < now()
             RETURNING {key_column}, body"
        );
        let mut rows = client
            .query(sql.as_str(), &[&self.owner, &self.lease_ms()])
            .await
            .map_err(storage)?;
        rows.sort_by(|a, b| a.get::<_, &str>(0).cmp(b.get::<_, &str>(0)));
        rows.iter()
            .map(|r| decode(what, r.get::<_, &[u8]>(1)))
            .collect()
    }

    pub(super) async fn remove_row(
        &self,
        table: &str,
        key_column: &str,
        key: &str,
    ) -> Result<(), StateError> {
        let client = self.client().await?;
        let sql = format!("DELETE FROM {table} WHERE {key_column} = $1");
        client
            .execute(sql.as_str(), &[&key])
            .await
            .map_err(storage)?;
        Ok(())
    }

    /// Exact counts: O(tracked) scans of indexes, cheap at the scale one scheduler
    /// tick tolerates (see `docs/scaling.md` for millions of flows).
    pub(super) async fn counts(&self) -> Result<StoreStats, StateError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM flows WHERE meta IS NOT NULL),
                        (SELECT coalesce(sum(n), 0)::int8 FROM event_runs),
                        (SELECT count(*) FROM intents),
                        (SELECT count(*) FROM flows WHERE deadline_ms IS NOT NULL)",
                &[],
            )
            .await
            .map_err(storage)?;
        Ok(StoreStats {
            live_flows: row.get::<_, i64>(0) as u64,
            stored_events: row.get::<_, i64>(1) as u64,
            pending_intents: row.get::<_, i64>(2) as u64,
            timers: row.get::<_, i64>(3) as u64,
        })
    }
}
