//! The archive side of the commit protocol on a shared database: claiming due flows,
//! sealing them into an intent owned by this instance, taking over the intents of an
//! instance whose lease expired, and the fenced steps (`record_upload`,
//! `confirm_claim`, `complete`). Also erasing a live flow.

use super::*;
use std::collections::HashSet;

use crate::state::{IntentStage, SealedPart};

/// The columns that identify a flow part across `unnest` arrays.
#[derive(Default)]
struct Parts {
    tenants: Vec<String>,
    flow_ids: Vec<String>,
    parts: Vec<i32>,
}

impl Parts {
    fn push(&mut self, meta: &FlowMeta) {
        self.tenants.push(meta.tenant.to_string());
        self.flow_ids.push(meta.flow_id.to_string());
        self.parts.push(meta.part as i32);
    }
}

impl PostgresStore {
    /// Up to `limit` due flows, claimed for a lease: another instance's `due_flows`
    /// skips them (and rows another transaction holds) until the lease ends.
    pub(super) async fn claim_due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<FlowMeta>, StateError> {
        let client = self.client().await?;
        let claim = client
            .prepare_cached(
                "UPDATE flows f SET claimed_until = now() + $3::int8 * interval '1 millisecond'
                 FROM (SELECT ctid FROM flows
                       WHERE deadline_ms <= $1
                         AND (claimed_until IS NULL OR claimed_until < now())
                       ORDER BY deadline_ms
                       LIMIT $2
                       FOR UPDATE SKIP LOCKED) AS due
                 WHERE f.ctid = due.ctid
                 RETURNING f.meta, f.ctid::text",
            )
            .await
            .map_err(storage)?;
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = client
            .query(&claim, &[&now_ms, &limit, &self.lease_ms()])
            .await
            .map_err(storage)?;
        let mut due = Vec::with_capacity(rows.len());
        let mut claimed = self.claimed_rows.lock().unwrap_or_else(|p| p.into_inner());
        if claimed.len() > 4 * rows.len().max(10_000) {
            // Claims that were never sealed (a flow that changed, a sweep that stopped).
            claimed.clear();
        }
        for row in rows {
            let bytes: Option<&[u8]> = row.get(0);
            let bytes = bytes.ok_or_else(|| corrupt("deadline", "a timer without an open part"))?;
            let meta: FlowMeta = decode("flow meta", bytes)?;
            claimed.insert(
                (meta.tenant.to_string(), meta.flow_id.to_string()),
                row.get(1),
            );
            due.push(meta);
        }
        due.sort_by_key(|m| m.deadline_ms);
        Ok(due)
    }

    pub(super) async fn read_due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<FlowMeta>, StateError> {
        let client = self.client().await?;
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = client
            .query(
                "SELECT meta FROM flows WHERE deadline_ms <= $1 AND meta IS NOT NULL
                 ORDER BY deadline_ms LIMIT $2",
                &[&now_ms, &limit],
            )
            .await
            .map_err(storage)?;
        rows.iter()
            .map(|r| decode("flow meta", r.get::<_, &[u8]>(0)))
            .collect()
    }

    /// Seals the parts whose stored meta still equals the given one. A retry
    /// (`attempt` > 1) after a commit whose answer was lost finds its intent and
    /// returns it.
    pub(super) async fn seal_parts(
        &self,
        intent: &ArchiveIntent,
        attempt: u32,
    ) -> Result<Option<ArchiveIntent>, StateError> {
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(storage)?;
        if attempt > 1 {
            if let Some(row) = txn
                .query_opt(
                    "SELECT body, fence FROM intents WHERE id = $1",
                    &[&intent.id],
                )
                .await
                .map_err(storage)?
            {
                let stored: ArchiveIntent = decode("intent", row.get::<_, &[u8]>(0))?;
                self.set_fence(&stored.id, row.get(1));
                return Ok(Some(stored));
            }
        }
        // The parts whose stored meta is still the one read at the claim (byte for
        // byte: the encoding is deterministic) are sealed; a flow that changed since
        // keeps its open part. Rows are locked in key order, as ingest locks them.
        let mut order: Vec<&SealedPart> = intent.parts.iter().collect();
        order.sort_by(|a, b| {
            (&a.meta.tenant, &a.meta.flow_id).cmp(&(&b.meta.tenant, &b.meta.flow_id))
        });
        // Where this instance's claim left the rows: by that hint when every part has
        // one (the claim's own pass), else by key. A row the hint misses (it moved: a
        // late event, another instance's claim, a VACUUM FULL) is looked up by key
        // after the others; that rare second statement may meet ingest's locks in
        // another order, and a deadlock is retried like any lost transaction.
        let hints: Option<Vec<String>> = {
            let mut claimed = self.claimed_rows.lock().unwrap_or_else(|p| p.into_inner());
            let hints: Vec<Option<String>> = order
                .iter()
                .map(|p| claimed.remove(&(p.meta.tenant.to_string(), p.meta.flow_id.to_string())))
                .collect();
            hints.into_iter().collect()
        };
        let mut sealed_flows = HashSet::new();
        if let Some(hints) = hints {
            sealed_flows = seal_rows(&txn, &order, Some(&hints)).await?;
        }
        let missed: Vec<&SealedPart> = order
            .into_iter()
            .filter(|p| {
                !sealed_flows.contains(&(p.meta.tenant.to_string(), p.meta.flow_id.to_string()))
            })
            .collect();
        if !missed.is_empty() {
            sealed_flows.extend(seal_rows(&txn, &missed, None).await?);
        }
        let sealed = ArchiveIntent {
            parts: intent
                .parts
                .iter()
                .filter(|p| {
                    sealed_flows.contains(&(p.meta.tenant.to_string(), p.meta.flow_id.to_string()))
                })
                .cloned()
                .collect(),
            stage: IntentStage::Pending,
            ..intent.clone()
        };
        if sealed.parts.is_empty() {
            return Ok(None);
        }
        txn.execute(
            "INSERT INTO intents (id, body, owner, fence, lease_until)
             VALUES ($1, $2, $3, 1, now() + $4::int8 * interval '1 millisecond')",
            &[
                &sealed.id,
                &encode("intent", &sealed)?,
                &self.owner,
                &self.lease_ms(),
            ],
        )
        .await
        .map_err(storage)?;
        txn.commit().await.map_err(storage)?;
        self.set_fence(&sealed.id, 1);
        Ok(Some(sealed))
    }

    pub(super) async fn all_intents(&self) -> Result<Vec<ArchiveIntent>, StateError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT body, verified FROM intents ORDER BY id", &[])
            .await
            .map_err(storage)?;
        rows.iter()
            .map(|r| with_stage(r.get(0), r.get(1)))
            .collect()
    }

    /// Claims the intents whose owner's lease expired: a new owner and fence.
    pub(super) async fn take_over_intents(&self) -> Result<Vec<ArchiveIntent>, StateError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "UPDATE intents SET owner = $1, fence = fence + 1,
                                    lease_until = now() + $2::int8 * interval '1 millisecond'
                 WHERE lease_until < now()
                 RETURNING id, body, verified, fence",
                &[&self.owner, &self.lease_ms()],
            )
            .await
            .map_err(storage)?;
        let mut taken = Vec::with_capacity(rows.len());
        for r in &rows {
            let intent = with_stage(r.get(1), r.get(2))?;
            self.set_fence(&intent.id, r.get(3));
            taken.push(intent);
        }
        if !taken.is_empty() {
            tracing::info!(
                intents = taken.len(),
                "Took over intents whose lease expired."
            );
        }
        taken.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(taken)
    }

    /// Why a fenced statement changed nothing: the intent is gone, or is another's.
    async fn refusal(&self, client: &Object, intent_id: &str) -> StateError {
        match client
            .query_opt("SELECT 1 FROM intents WHERE id = $1", &[&intent_id])
            .await
        {
            Ok(Some(_)) => StateError::Fenced(intent_id.to_string()),
            Ok(None) => StateError::UnknownIntent(intent_id.to_string()),
            Err(e) => storage(e),
        }
    }

    /// Extends this instance's lease on the intent, or fails if it is no longer its.
    pub(super) async fn renew_claim(&self, intent_id: &str) -> Result<(), StateError> {
        let client = self.client().await?;
        let fence = self.fence_of(intent_id).unwrap_or(-1);
        let n = client
            .execute(
                "UPDATE intents SET lease_until = now() + $4::int8 * interval '1 millisecond'
                 WHERE id = $1 AND owner = $2 AND fence = $3",
                &[&intent_id, &self.owner, &fence, &self.lease_ms()],
            )
            .await
            .map_err(storage)?;
        match n {
            0 => Err(self.refusal(&client, intent_id).await),
            _ => Ok(()),
        }
    }

    pub(super) async fn record_verified(
        &self,
        intent_id: &str,
        verified: &VerifiedObject,
    ) -> Result<(), StateError> {
        let client = self.client().await?;
        let fence = self.fence_of(intent_id).unwrap_or(-1);
        let n = client
            .execute(
                "UPDATE intents SET verified = $4 WHERE id = $1 AND owner = $2 AND fence = $3",
                &[
                    &intent_id,
                    &self.owner,
                    &fence,
                    &encode("verified record", verified)?,
                ],
            )
            .await
            .map_err(storage)?;
        match n {
            0 => Err(self.refusal(&client, intent_id).await),
            _ => Ok(()),
        }
    }

    /// Deletes the intent and its parts' events, if this instance still holds it. A
    /// retry (`attempt` > 1) that finds the intent gone takes it as its own first
    /// attempt's commit.
    pub(super) async fn complete_intent(
        &self,
        intent_id: &str,
        attempt: u32,
    ) -> Result<(), StateError> {
        let mut client = self.client().await?;
        let fence = self.fence_of(intent_id).unwrap_or(-1);
        let txn = client.transaction().await.map_err(storage)?;
        let Some(row) = txn
            .query_opt(
                "DELETE FROM intents WHERE id = $1 AND owner = $2 AND fence = $3 RETURNING body",
                &[&intent_id, &self.owner, &fence],
            )
            .await
            .map_err(storage)?
        else {
            drop(txn);
            return match self.refusal(&client, intent_id).await {
                StateError::UnknownIntent(_) if attempt > 1 => Ok(()),
                refused => Err(refused),
            };
        };
        let intent: ArchiveIntent = decode("intent", row.get::<_, &[u8]>(0))?;
        let mut parts = Parts::default();
        for p in &intent.parts {
            parts.push(&p.meta);
        }
        // Sealed parts take no new events (they go to the next part), so these rows
        // are exactly what was archived.
        txn.execute(
            "DELETE FROM event_runs e USING unnest($1::text[], $2::text[], $3::int4[]) AS u(t, id, p)
             WHERE e.tenant = u.t AND e.flow_id = u.id AND e.part = u.p",
            &[&parts.tenants, &parts.flow_ids, &parts.parts],
        )
        .await
        .map_err(storage)?;
        txn.commit().await.map_err(storage)
    }

    pub(super) async fn erase_flow(
        &self,
        tenant: &str,
        flow_id: &str,
    ) -> Result<ErasedLive, StateError> {
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(storage)?;
        let open = txn
            .query_opt(
                "SELECT meta IS NOT NULL FROM flows WHERE tenant = $1 AND flow_id = $2 FOR UPDATE",
                &[&tenant, &flow_id],
            )
            .await
            .map_err(storage)?
            .is_some_and(|r| r.get::<_, bool>(0));
        // The part number stays: a late event cannot reuse an archived part's number.
        txn.execute(
            "UPDATE flows SET meta = NULL, deadline_ms = NULL, claimed_until = NULL
             WHERE tenant = $1 AND flow_id = $2",
            &[&tenant, &flow_id],
        )
        .await
        .map_err(storage)?;
        let events: i64 = txn
            .query_one(
                "WITH erased AS (DELETE FROM event_runs WHERE tenant = $1 AND flow_id = $2
                                 RETURNING n)
                 SELECT coalesce(sum(n), 0)::int8 FROM erased",
                &[&tenant, &flow_id],
            )
            .await
            .map_err(storage)?
            .get(0);
        let (first, last) = super::ingest::dedupe_range(tenant, flow_id);
        txn.execute(
            "DELETE FROM dedupe WHERE key BETWEEN $1 AND $2",
            &[&first, &last],
        )
        .await
        .map_err(storage)?;
        txn.commit().await.map_err(storage)?;
        Ok(ErasedLive {
            open_part: open,
            events: events as u64,
        })
    }
}

/// An intent as stored, with its stage from the `verified` column.
fn with_stage(body: &[u8], verified: Option<&[u8]>) -> Result<ArchiveIntent, StateError> {
    let mut intent: ArchiveIntent = decode("intent", body)?;
    if let Some(v) = verified {
        intent.stage = IntentStage::Verified(decode("verified record", v)?);
    }
    Ok(intent)
}

/// Seals the parts (in key order) whose row still holds the given meta, found at
/// `hints` (their `ctid`s) or by key; returns the flows sealed.
async fn seal_rows(
    txn: &deadpool_postgres::Transaction<'_>,
    parts: &[&SealedPart],
    hints: Option<&[String]>,
) -> Result<HashSet<(String, String)>, StateError> {
    let (mut tenants, mut flow_ids, mut metas) = (vec![], vec![], vec![]);
    for part in parts {
        tenants.push(part.meta.tenant.as_str());
        flow_ids.push(part.meta.flow_id.as_str());
        metas.push(encode("flow meta", &part.meta)?);
    }
    macro_rules! seal {
        ($from_where:literal) => {
            concat!(
                "UPDATE flows f SET meta = NULL, deadline_ms = NULL, claimed_until = NULL,
                                    part = f.part + 1 ",
                $from_where,
                " RETURNING f.tenant, f.flow_id"
            )
        };
    }
    let rows = match hints {
        Some(hints) => {
            let statement = txn
                .prepare_cached(seal!(
                    "FROM unnest($4::text[]::tid[], $1::text[], $2::text[], $3::bytea[])
                       AS u(c, t, id, m)
                     WHERE f.ctid = u.c AND f.tenant = u.t AND f.flow_id = u.id AND f.meta = u.m"
                ))
                .await
                .map_err(storage)?;
            txn.query(&statement, &[&tenants, &flow_ids, &metas, &hints])
                .await
        }
        None => {
            let statement = txn
                .prepare_cached(seal!(
                    "FROM unnest($1::text[], $2::text[], $3::bytea[]) AS u(t, id, m)
                     WHERE f.tenant = u.t AND f.flow_id = u.id AND f.meta = u.m"
                ))
                .await
                .map_err(storage)?;
            txn.query(&statement, &[&tenants, &flow_ids, &metas]).await
        }
    }
    .map_err(storage)?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}
