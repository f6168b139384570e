//! Ingest: one transaction per batch, a constant number of statements whatever its
//! size (arrays through `unnest`): create the flows' rows that are new, lock every
//! flow's row in key order, insert the dedupe keys (digests; a conflict is a
//! duplicate), fold the new events into the metas (shared with the embedded store,
//! [`crate::state::meta`]), insert the events (a run per flow part,
//! [`super::runs`]), update the metas and deadlines, store the checkpoint, commit.
//! Also the recomputation of deadlines when the policy changes.

use std::collections::{HashMap, HashSet};

use super::runs::{build_runs, RunBytes};
use super::*;
use crate::state::meta::{apply_event, digest, new_meta};

/// A batch grouped by flow, in key order (the order rows are locked in).
pub(super) struct Batch {
    tenants: Vec<String>,
    flow_ids: Vec<String>,
    /// Per flow (index-aligned with `tenants`), its events' indices in arrival order.
    members: Vec<Vec<usize>>,
}

impl Batch {
    pub(super) fn new(events: &[FlowEvent]) -> Batch {
        let mut by_flow: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            by_flow
                .entry((e.tenant.as_str(), e.flow_id.as_str()))
                .or_default()
                .push(i);
        }
        let mut flows: Vec<_> = by_flow.into_iter().collect();
        flows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut batch = Batch {
            tenants: Vec::with_capacity(flows.len()),
            flow_ids: Vec::with_capacity(flows.len()),
            members: Vec::with_capacity(flows.len()),
        };
        for ((t, f), members) in flows {
            batch.tenants.push(t.to_string());
            batch.flow_ids.push(f.to_string());
            batch.members.push(members);
        }
        batch
    }
}

/// The `event_runs` rows of a batch, as `unnest` arrays.
#[derive(Default)]
struct Runs<'a> {
    tenants: Vec<&'a str>,
    flow_ids: Vec<&'a str>,
    parts: Vec<i32>,
    keys: Vec<Vec<u8>>,
    raws: Vec<RunBytes<'a>>,
    counts: Vec<i32>,
}

impl<'a> Runs<'a> {
    /// Adds a flow part's events of this batch, in flow order.
    fn push(
        &mut self,
        tenant: &'a str,
        flow_id: &'a str,
        part: u32,
        events: &[(Vec<u8>, &'a [u8])],
    ) {
        for (key, raw, n) in build_runs(events) {
            self.tenants.push(tenant);
            self.flow_ids.push(flow_id);
            self.parts.push(part as i32);
            self.keys.push(key);
            self.raws.push(raw);
            self.counts.push(n);
        }
    }
}

/// A flow's row as locked at the start of the batch.
struct Row {
    part: i32,
    meta: Option<FlowMeta>,
}

impl PostgresStore {
    pub(super) async fn store_batch(
        &self,
        batch: &Batch,
        events: &[FlowEvent],
        policy: &RetentionPolicy,
        now_ms: i64,
        checkpoint: Option<(&str, &[u8])>,
    ) -> Result<IngestOutcome, StateError> {
        let mut outcome = IngestOutcome::default();
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(storage)?;
        if !batch.tenants.is_empty() {
            let create = txn
                .prepare_cached(
                    "INSERT INTO flows (tenant, flow_id, part)
                     SELECT t, f, 1 FROM unnest($1::text[], $2::text[]) AS u(t, f)
                     ON CONFLICT DO NOTHING",
                )
                .await
                .map_err(storage)?;
            txn.execute(&create, &[&batch.tenants, &batch.flow_ids])
                .await
                .map_err(storage)?;
            let lock = txn
                .prepare_cached(
                    "SELECT f.tenant, f.flow_id, f.part, f.meta
                     FROM flows f JOIN unnest($1::text[], $2::text[]) AS u(t, id)
                       ON f.tenant = u.t AND f.flow_id = u.id
                     ORDER BY f.tenant, f.flow_id
                     FOR UPDATE OF f",
                )
                .await
                .map_err(storage)?;
            let mut rows: HashMap<(String, String), Row> = HashMap::new();
            for r in txn
                .query(&lock, &[&batch.tenants, &batch.flow_ids])
                .await
                .map_err(storage)?
            {
                let meta: Option<&[u8]> = r.get(3);
                rows.insert(
                    (r.get(0), r.get(1)),
                    Row {
                        part: r.get(2),
                        meta: meta.map(|m| decode("flow meta", m)).transpose()?,
                    },
                );
            }

            // Dedupe keys: the ones that were new come back.
            let keys: Vec<Option<Vec<u8>>> = events
                .iter()
                .map(|e| {
                    e.dedupe_key
                        .as_ref()
                        .map(|(source, id)| dedupe_key(&e.tenant, &e.flow_id, source, id))
                })
                .collect();
            let wanted: Vec<&[u8]> = keys.iter().flatten().map(Vec::as_slice).collect();
            let mut fresh: HashSet<Vec<u8>> = HashSet::new();
            if !wanted.is_empty() {
                let dedupe = txn
                    .prepare_cached(
                        "INSERT INTO dedupe (key) SELECT * FROM unnest($1::bytea[])
                         ON CONFLICT DO NOTHING
                         RETURNING key",
                    )
                    .await
                    .map_err(storage)?;
                for r in txn.query(&dedupe, &[&wanted]).await.map_err(storage)? {
                    fresh.insert(r.get(0));
                }
            }

            let mut runs = Runs::default();
            let (mut ut, mut uf, mut um, mut ud) = (vec![], vec![], vec![], vec![]);
            for (i, members) in batch.members.iter().enumerate() {
                let key = (batch.tenants[i].clone(), batch.flow_ids[i].clone());
                let Some(row) = rows.remove(&key) else {
                    return Err(corrupt(
                        format!("flow {}/{}", key.0, key.1),
                        "its row vanished inside the transaction",
                    ));
                };
                let mut meta = row.meta;
                let mut changed = false;
                let mut stored: Vec<(Vec<u8>, &[u8])> = Vec::new();
                for &e in members {
                    let event = &events[e];
                    if let Some(k) = &keys[e] {
                        // The first of two equal keys in one batch is the one kept.
                        if !fresh.remove(k) {
                            outcome.duplicates += 1;
                            continue;
                        }
                    }
                    let m = meta.get_or_insert_with(|| {
                        if row.part > 1 {
                            outcome.reopened += 1;
                        }
                        new_meta(event, row.part as u32, now_ms)
                    });
                    let order = apply_event(m, event, now_ms);
                    changed = true;
                    stored.push((order, event.raw.as_slice()));
                    outcome.stored += 1;
                }
                let Some(mut meta) = meta.filter(|_| changed) else {
                    // Every event was a duplicate.
                    continue;
                };
                // A run is in flow order; arrival order is it unless sequences disagree.
                if !stored.is_sorted_by(|a, b| a.0 <= b.0) {
                    stored.sort_by(|a, b| a.0.cmp(&b.0));
                }
                runs.push(&batch.tenants[i], &batch.flow_ids[i], meta.part, &stored);
                meta.deadline_ms = policy
                    .decide(&meta.tenant, meta.status, &meta.labels, meta.last_event_ms)
                    .deadline_ms;
                ut.push(key.0);
                uf.push(key.1);
                um.push(encode("flow meta", &meta)?);
                ud.push(meta.deadline_ms);
            }
            if !runs.tenants.is_empty() {
                let insert = txn
                    .prepare_cached(
                        "INSERT INTO event_runs (tenant, flow_id, part, ord, raw, n)
                         SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::bytea[],
                                              $5::bytea[], $6::int4[])",
                    )
                    .await
                    .map_err(storage)?;
                let raws: Vec<&[u8]> = runs.raws.iter().map(RunBytes::as_slice).collect();
                txn.execute(
                    &insert,
                    &[
                        &runs.tenants,
                        &runs.flow_ids,
                        &runs.parts,
                        &runs.keys,
                        &raws,
                        &runs.counts,
                    ],
                )
                .await
                .map_err(storage)?;
            }
            if !ut.is_empty() {
                let update = txn
                    .prepare_cached(
                        "UPDATE flows f SET meta = u.m, deadline_ms = u.d
                         FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int8[]) AS u(t, id, m, d)
                         WHERE f.tenant = u.t AND f.flow_id = u.id",
                    )
                    .await
                    .map_err(storage)?;
                txn.execute(&update, &[&ut, &uf, &um, &ud])
                    .await
                    .map_err(storage)?;
            }
        }
        if let Some((source, position)) = checkpoint {
            let upsert = txn
                .prepare_cached(
                    "INSERT INTO checkpoints (source, position) VALUES ($1, $2)
                     ON CONFLICT (source) DO UPDATE SET position = excluded.position",
                )
                .await
                .map_err(storage)?;
            txn.execute(&upsert, &[&source, &position])
                .await
                .map_err(storage)?;
        }
        txn.commit().await.map_err(storage)?;
        Ok(outcome)
    }

    /// Recomputes every open part's deadline when the policy's fingerprint differs
    /// from the stored one. In chunks, each update conditional on the meta it was
    /// computed from, so a flow ingested meanwhile (by any instance) keeps the
    /// deadline its ingest gave it.
    pub(super) async fn recompute_deadlines(
        &self,
        policy: &RetentionPolicy,
    ) -> Result<u64, StateError> {
        let fingerprint = policy.fingerprint();
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(storage)?;
        // One instance at a time recomputes; the others then find the new fingerprint.
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&POLICY_LOCK])
            .await
            .map_err(storage)?;
        let stored = txn
            .query_opt(
                "SELECT value FROM settings WHERE name = 'policy_fingerprint'",
                &[],
            )
            .await
            .map_err(storage)?;
        if stored.is_some_and(|r| r.get::<_, &[u8]>(0) == fingerprint.as_bytes()) {
            return Ok(0);
        }
        let mut updated = 0u64;
        let (mut after_t, mut after_f) = (String::new(), String::new());
        loop {
            let rows = txn
                .query(
                    "SELECT tenant, flow_id, meta, deadline_ms FROM flows
                     WHERE meta IS NOT NULL AND (tenant, flow_id) > ($1, $2)
                     ORDER BY tenant, flow_id LIMIT 10000",
                    &[&after_t, &after_f],
                )
                .await
                .map_err(storage)?;
            let Some(last) = rows.last() else { break };
            after_t = last.get(0);
            after_f = last.get(1);
            let (mut ut, mut uf, mut um, mut ud) = (vec![], vec![], vec![], vec![]);
            for r in &rows {
                let bytes: &[u8] = r.get(2);
                let mut meta: FlowMeta = decode("flow meta", bytes)?;
                let new = policy
                    .decide(&meta.tenant, meta.status, &meta.labels, meta.last_event_ms)
                    .deadline_ms;
                if new == r.get::<_, Option<i64>>(3) && new == meta.deadline_ms {
                    continue;
                }
                meta.deadline_ms = new;
                ut.push(r.get::<_, String>(0));
                uf.push(r.get::<_, String>(1));
                um.push((bytes.to_vec(), encode("flow meta", &meta)?));
                ud.push(new);
            }
            if ut.is_empty() {
                continue;
            }
            let (old, new): (Vec<Vec<u8>>, Vec<Vec<u8>>) = um.into_iter().unzip();
            updated += txn
                .execute(
                    "UPDATE flows f SET meta = u.new, deadline_ms = u.d
                     FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::int8[])
                       AS u(t, id, old, new, d)
                     WHERE f.tenant = u.t AND f.flow_id = u.id AND f.meta = u.old",
                    &[&ut, &uf, &old, &new, &ud],
                )
                .await
                .map_err(storage)?;
        }
        txn.execute(
            "INSERT INTO settings (name, value) VALUES ('policy_fingerprint', $1)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            &[&fingerprint.as_bytes()],
        )
        .await
        .map_err(storage)?;
        txn.commit().await.map_err(storage)?;
        Ok(updated)
    }
}

/// The advisory lock of deadline recomputation.
const POLICY_LOCK: i64 = 0x666c_6f77_706f_6c69; // "flowpoli"

/// A flow's dedupe keys share their first 16 bytes (see `migrations/0001_initial.sql`).
pub(super) fn dedupe_key(tenant: &str, flow_id: &str, source: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(32);
    key.extend_from_slice(&digest(tenant, flow_id));
    key.extend_from_slice(&digest(source, id));
    key
}

/// The first and last possible dedupe key of a flow.
pub(super) fn dedupe_range(tenant: &str, flow_id: &str) -> (Vec<u8>, Vec<u8>) {
    let flow = digest(tenant, flow_id);
    let (mut first, mut last) = (flow.to_vec(), flow.to_vec());
    first.extend_from_slice(&[0; 16]);
    last.extend_from_slice(&[0xff; 16]);
    (first, last)
}
