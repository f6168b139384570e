//! Reads: a live flow's open part, and a part's events in flow order. A part's rows
//! are runs ([`super::runs`]), each in flow order and listed by their first event: a
//! single part is streamed with a merge that holds only the events a later run may
//! still precede (usually one run), so memory does not grow with a flow's size. A
//! [`Snapshot`] reads many parts from one repeatable-read transaction.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use futures::{pin_mut, TryStreamExt};
use tokio_postgres::Row;

use super::runs::{split_run, EventAt};
use super::*;

const OPEN_PART: &str =
    "SELECT meta FROM flows WHERE tenant = $1 AND flow_id = $2 AND meta IS NOT NULL";
/// The flow-id prefix is matched with `starts_with`, not `LIKE`: `%` and `_` in ids
/// are plain characters.
const LIVE_FLOWS: &str = "SELECT meta FROM flows
     WHERE meta IS NOT NULL AND ($1::text IS NULL OR tenant = $1)
       AND ($2::text IS NULL OR (tenant, flow_id) > ($2, $3::text))
       AND starts_with(flow_id, $4)
     ORDER BY tenant, flow_id LIMIT $5";
const PART_RUNS: &str = "SELECT ord, raw, n FROM event_runs
     WHERE tenant = $1 AND flow_id = $2 AND part = $3 ORDER BY ord";
/// Unsorted: the events are put in flow order here (runs usually arrive in it), which
/// spares the database a sort that spilled to disk for a 4 MiB run.
const RUN_EVENTS: &str = "SELECT u.i, e.ord, e.raw, e.n
     FROM unnest($1::text[], $2::text[], $3::int4[]) WITH ORDINALITY AS u(t, id, p, i)
     JOIN event_runs e ON e.tenant = u.t AND e.flow_id = u.id AND e.part = u.p";

/// The name of a flow part in errors.
fn part_name(tenant: &str, flow_id: &str, part: u32) -> String {
    format!("{tenant}/{flow_id} part {part}")
}

/// An event of a row: its key and bytes, as slices of the row's `ord` and `raw` columns
/// (`ord_column` and `ord_column + 1`).
fn event_of<'r>(row: &'r Row, ord_column: usize, at: &EventAt) -> (&'r [u8], &'r [u8]) {
    let raw: &[u8] = row.get(ord_column + 1);
    match at {
        EventAt::Whole => (row.get(ord_column), raw),
        EventAt::Framed { key, raw: event } => (&raw[key.clone()], &raw[event.clone()]),
    }
}

async fn open_part_on(
    client: &tokio_postgres::Client,
    tenant: &str,
    flow_id: &str,
) -> Result<Option<FlowMeta>, StateError> {
    let row = client
        .query_opt(OPEN_PART, &[&tenant, &flow_id])
        .await
        .map_err(storage)?;
    row.map(|r| decode("flow meta", r.get::<_, &[u8]>(0)))
        .transpose()
}

pub(super) async fn stream_part(
    client: &Object,
    tenant: &str,
    flow_id: &str,
    part: u32,
    sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<(), StateError> {
    let number = part as i32;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&tenant, &flow_id, &number];
    let statement = client.prepare_cached(PART_RUNS).await.map_err(storage)?;
    let rows = client
        .query_raw(&statement, params)
        .await
        .map_err(storage)?;
    pin_mut!(rows);
    let what = || part_name(tenant, flow_id, part);
    let mut emit = |raw: &[u8]| {
        sink(raw).map_err(|source| StateError::Stream {
            tenant: tenant.to_string(),
            flow_id: flow_id.to_string(),
            part,
            source,
        })
    };
    // Events read but not yet emitted, smallest key first. Runs come by first key, so
    // every event keyed below the next run's first key is final.
    let mut pending: BinaryHeap<Reverse<(Vec<u8>, Vec<u8>)>> = BinaryHeap::new();
    while let Some(row) = rows.try_next().await.map_err(storage)? {
        let first: &[u8] = row.get(0);
        while let Some(Reverse((key, raw))) = pending.peek() {
            if key.as_slice() >= first {
                break;
            }
            emit(raw)?;
            pending.pop();
        }
        for at in split_run(row.get(1), row.get(2), &what)? {
            let (key, raw) = event_of(&row, 0, &at);
            pending.push(Reverse((key.to_vec(), raw.to_vec())));
        }
    }
    while let Some(Reverse((_, raw))) = pending.pop() {
        emit(&raw)?;
    }
    Ok(())
}

impl PostgresStore {
    pub(super) async fn open_part(
        &self,
        tenant: &str,
        flow_id: &str,
    ) -> Result<Option<FlowMeta>, StateError> {
        let client = self.client().await?;
        open_part_on(&client, tenant, flow_id).await
    }

    /// [`StateStore::live_flows`]: one indexed range query on the primary key.
    pub(super) async fn search_live(&self, query: &LiveQuery) -> Result<LiveFlows, StateError> {
        let client = self.client().await?;
        let (after_tenant, after_flow) = query.after.clone().unzip();
        let limit = query.limit.clamp(1, LIVE_SCAN) as i64;
        let rows = client
            .query(
                LIVE_FLOWS,
                &[
                    &query.tenant,
                    &after_tenant,
                    &after_flow,
                    &query.flow_id_prefix,
                    &limit,
                ],
            )
            .await
            .map_err(storage)?;
        let mut found = LiveFlows::default();
        for row in &rows {
            found
                .flows
                .push(decode("flow meta", row.get::<_, &[u8]>(0))?);
        }
        if rows.len() as i64 == limit {
            found.resume_after = found
                .flows
                .last()
                .map(|m| (m.tenant.to_string(), m.flow_id.to_string()));
        }
        Ok(found)
    }

    pub(super) async fn snapshot(&self) -> Result<Snapshot, StateError> {
        let client = self.client().await?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(storage)?;
        Ok(Snapshot {
            client: Some(client),
            handle: self.handle.clone(),
            read_ahead: RefCell::new(HashMap::new()),
        })
    }
}

type PartKey = (String, String, u32);

/// A part's rows from a read-ahead, and its events in flow order as positions in them.
#[derive(Default)]
struct PartEvents {
    rows: Vec<Row>,
    /// (row index, where the event is in that row).
    order: Vec<(usize, EventAt)>,
}

impl PartEvents {
    fn event(&self, (row, at): &(usize, EventAt)) -> (&[u8], &[u8]) {
        // Read-ahead rows hold (i, ord, raw, n).
        event_of(&self.rows[*row], 1, at)
    }
}

/// One repeatable-read transaction on a pooled connection, rolled back on drop.
pub(super) struct Snapshot {
    client: Option<Object>,
    handle: tokio::runtime::Handle,
    /// Events of the parts announced by `read_ahead` and not yet read.
    read_ahead: RefCell<HashMap<PartKey, PartEvents>>,
}

impl Snapshot {
    fn block<T>(&self, future: impl Future<Output = T>) -> T {
        let _guard = self.handle.enter();
        futures::executor::block_on(future)
    }

    fn client(&self) -> Result<&Object, StateError> {
        self.client
            .as_ref()
            .ok_or_else(|| corrupt("snapshot", "used after it was closed"))
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Back to the pool only once the transaction is over.
            self.handle.spawn(async move {
                if client.batch_execute("ROLLBACK").await.is_err() {
                    // A connection in an unknown state is not reused.
                    let _ = Object::take(client);
                }
            });
        }
    }
}

impl EventReader for Snapshot {
    fn live_flow(&self, tenant: &str, flow_id: &str) -> Result<Option<FlowMeta>, StateError> {
        let client = self.client()?;
        self.block(open_part_on(client, tenant, flow_id))
    }

    fn for_each_event(
        &self,
        tenant: &str,
        flow_id: &str,
        part: u32,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), StateError> {
        let key = (tenant.to_string(), flow_id.to_string(), part);
        let fetched = self.read_ahead.borrow_mut().remove(&key);
        match fetched {
            Some(events) => {
                for position in &events.order {
                    sink(events.event(position).1).map_err(|source| StateError::Stream {
                        tenant: tenant.to_string(),
                        flow_id: flow_id.to_string(),
                        part,
                        source,
                    })?;
                }
                Ok(())
            }
            None => {
                let client = self.client()?;
                self.block(stream_part(client, tenant, flow_id, part, sink))
            }
        }
    }

    /// One query for the whole run, in place of a round trip per part.
    fn read_ahead(&self, parts: &[&FlowMeta]) -> Result<(), StateError> {
        let client = self.client()?;
        let mut keys: Vec<PartKey> = Vec::with_capacity(parts.len());
        let (mut tenants, mut flow_ids, mut numbers) = (Vec::new(), Vec::new(), Vec::new());
        for m in parts {
            tenants.push(m.tenant.as_str());
            flow_ids.push(m.flow_id.as_str());
            numbers.push(m.part as i32);
            keys.push((m.tenant.to_string(), m.flow_id.to_string(), m.part));
        }
        let rows = self.block(async {
            let statement = client.prepare_cached(RUN_EVENTS).await.map_err(storage)?;
            client
                .query(&statement, &[&tenants, &flow_ids, &numbers])
                .await
                .map_err(storage)
        })?;
        let mut parts: Vec<PartEvents> = Vec::new();
        parts.resize_with(keys.len(), PartEvents::default);
        for row in rows {
            let index = row.get::<_, i64>(0) as usize;
            let Some(part) = index.checked_sub(1).and_then(|i| parts.get_mut(i)) else {
                continue;
            };
            let (tenant, flow_id, number) = &keys[index - 1];
            let events = split_run(row.get(2), row.get(3), &|| {
                part_name(tenant, flow_id, *number)
            })?;
            let at = part.rows.len();
            part.order.extend(events.into_iter().map(|e| (at, e)));
            part.rows.push(row);
        }
        for part in &mut parts {
            let sorted = part
                .order
                .windows(2)
                .all(|w| part.event(&w[0]).0 <= part.event(&w[1]).0);
            if !sorted {
                let mut order = std::mem::take(&mut part.order);
                order.sort_by(|a, b| part.event(a).0.cmp(part.event(b).0));
                part.order = order;
            }
        }
        let events = parts;
        let mut cache = self.read_ahead.borrow_mut();
        cache.clear();
        cache.extend(keys.into_iter().zip(events));
        Ok(())
    }
}
