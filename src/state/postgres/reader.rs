//! Reads: a live flow's open part, and a part's events streamed in flow order (rows
//! arrive as the server sends them, so memory does not grow with a flow's size). A
//! [`Snapshot`] reads many parts from one repeatable-read transaction.

use std::cell::RefCell;

use futures::{pin_mut, TryStreamExt};

use super::*;

const OPEN_PART: &str =
    "SELECT meta FROM flows WHERE tenant = $1 AND flow_id = $2 AND meta IS NOT NULL";
const PART_EVENTS: &str =
    "SELECT raw FROM events WHERE tenant = $1 AND flow_id = $2 AND part = $3 ORDER BY ord";
/// Unsorted: the rows are put in flow order here (they usually arrive in it), which
/// spares the database a sort that spilled to disk for a 4 MiB run.
const RUN_EVENTS: &str = "SELECT u.i, e.ord, e.raw
     FROM unnest($1::text[], $2::text[], $3::int4[]) WITH ORDINALITY AS u(t, id, p, i)
     JOIN events e ON e.tenant = u.t AND e.flow_id = u.id AND e.part = u.p";

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
    let part = part as i32;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&tenant, &flow_id, &part];
    let statement = client.prepare_cached(PART_EVENTS).await.map_err(storage)?;
    let rows = client
        .query_raw(&statement, params)
        .await
        .map_err(storage)?;
    pin_mut!(rows);
    while let Some(row) = rows.try_next().await.map_err(storage)? {
        sink(row.get::<_, &[u8]>(0)).map_err(|source| StateError::Stream {
            tenant: tenant.to_string(),
            flow_id: flow_id.to_string(),
            part: part as u32,
            source,
        })?;
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

/// One repeatable-read transaction on a pooled connection, rolled back on drop.
pub(super) struct Snapshot {
    client: Option<Object>,
    handle: tokio::runtime::Handle,
    /// Events of the parts announced by `read_ahead` and not yet read.
    read_ahead: RefCell<HashMap<PartKey, Vec<Vec<u8>>>>,
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
                for event in &events {
                    sink(event).map_err(|source| StateError::Stream {
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
        let mut ordered: Vec<Vec<(Vec<u8>, Vec<u8>)>> = vec![Vec::new(); keys.len()];
        for row in rows {
            let index = row.get::<_, i64>(0) as usize;
            if let Some(slot) = index.checked_sub(1).and_then(|i| ordered.get_mut(i)) {
                slot.push((
                    row.get::<_, &[u8]>(1).to_vec(),
                    row.get::<_, &[u8]>(2).to_vec(),
                ));
            }
        }
        let events = ordered.into_iter().map(|mut part| {
            if !part.is_sorted_by(|a, b| a.0 <= b.0) {
                part.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            }
            part.into_iter().map(|(_, raw)| raw).collect::<Vec<_>>()
        });
        let mut cache = self.read_ahead.borrow_mut();
        cache.clear();
        cache.extend(keys.into_iter().zip(events));
        Ok(())
    }
}
