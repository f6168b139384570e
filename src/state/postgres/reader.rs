//! Reads: a live flow's open part, and a part's events streamed in flow order (rows
//! arrive as the server sends them, so memory does not grow with a flow's size). A
//! [`Snapshot`] reads many parts from one repeatable-read transaction.

use futures::{pin_mut, TryStreamExt};

use super::*;

const OPEN_PART: &str =
    "SELECT meta FROM flows WHERE tenant = $1 AND flow_id = $2 AND meta IS NOT NULL";
const PART_EVENTS: &str =
    "SELECT raw FROM events WHERE tenant = $1 AND flow_id = $2 AND part = $3 ORDER BY ord";

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
    client: &tokio_postgres::Client,
    tenant: &str,
    flow_id: &str,
    part: u32,
    sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<(), StateError> {
    let part = part as i32;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&tenant, &flow_id, &part];
    let rows = client
        .query_raw(PART_EVENTS, params)
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
        })
    }
}

/// One repeatable-read transaction on a pooled connection, rolled back on drop.
pub(super) struct Snapshot {
    client: Option<Object>,
    handle: tokio::runtime::Handle,
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
        let client = self.client()?;
        self.block(stream_part(client, tenant, flow_id, part, sink))
    }
}
