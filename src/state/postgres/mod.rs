//! The shared state store: PostgreSQL, so that any number of flow-archiver instances
//! are interchangeable (`docs/design.md`, "Scale"; the tables in `docs/scaling.md`).
//!
//! - Any instance ingests any event: a batch locks its flows' rows (in key order, so
//!   two instances never deadlock for long), dedupes by a unique constraint, and
//!   commits the events, the flows' metas and the source checkpoint in one transaction.
//!   A flow whose events reach several instances keeps one history.
//! - Any instance archives any due flow: `due_flows` claims rows with
//!   `FOR UPDATE SKIP LOCKED` and a lease; `seal` stays optimistic (a flow whose meta
//!   changed is not sealed). Intents carry an owner, a lease renewed by a heartbeat,
//!   and a fencing token: an instance whose lease expired finds its `record_upload`,
//!   `confirm_claim` and `complete` refused, and another one resumes the intent at its
//!   recorded stage (object keys are deterministic, so a re-run writes the same bytes).
//! - Operations that fail because the database is unreachable are retried with backoff
//!   for `state.retry_for`; each one is idempotent under a retry whose first attempt
//!   did commit (see the notes at `seal` and `complete`).
//!
//! The trait is synchronous; this store drives its async driver (tokio-postgres, pooled
//! by deadpool) on a small runtime of its own, so it can be called from any thread.

mod archival;
mod ingest;
mod reader;
mod records;
mod runs;
mod schema;
mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};

use super::{
    ArchiveIntent, Compaction, EraseIntent, ErasedLive, EventReader, FlowMeta, Hold, IngestOutcome,
    LiveFlows, LiveQuery, PurgeIntent, StateError, StateStore, StoreStats, VerifiedObject,
    LIVE_SCAN,
};
use crate::config::StateConfig;
use crate::flow::FlowEvent;
use crate::policy::RetentionPolicy;

pub use schema::SchemaStatus;

/// [`StateStore`] on PostgreSQL (see the module doc).
pub struct PostgresStore {
    pool: Pool,
    /// Runs the driver's connections and the lease heartbeat; shut down on drop.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    /// This process's name in `owner` columns: host, pid and a random suffix.
    owner: String,
    lease: Duration,
    retry_for: Duration,
    /// The fencing token this instance holds for each intent it works on.
    fences: Arc<Mutex<HashMap<String, i64>>>,
    /// Where `due_flows` left the rows it claimed (`ctid`), so that their seal finds
    /// them without an index lookup. Only a hint: the seal still checks the key and
    /// the meta, and a row that moved since is simply not sealed this time.
    claimed_rows: Mutex<HashMap<(String, String), String>>,
    /// Where the store is, for errors (the URL without its password).
    url: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.url)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.pool.close();
        // Dropping a runtime blocks; the store may be dropped on an async thread.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn storage<E: std::error::Error + Send + Sync + 'static>(e: E) -> StateError {
    StateError::Storage(Box::new(e))
}

fn corrupt(what: impl Into<String>, detail: impl std::fmt::Display) -> StateError {
    StateError::Corrupt {
        what: what.into(),
        detail: detail.to_string(),
    }
}

fn encode<T: serde::Serialize>(what: &str, value: &T) -> Result<Vec<u8>, StateError> {
    postcard::to_allocvec(value).map_err(|e| corrupt(what, e))
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StateError> {
    postcard::from_bytes(bytes).map_err(|e| corrupt(what, e))
}

/// Whether an error is the database being away (restarting, unreachable, a dropped
/// connection) or a transaction lost to a concurrent one: worth another attempt.
fn retryable(e: &StateError) -> bool {
    let StateError::Storage(source) = e else {
        return false;
    };
    if let Some(pool) = source.downcast_ref::<deadpool_postgres::PoolError>() {
        return match pool {
            deadpool_postgres::PoolError::Backend(e) => pg_retryable(e),
            deadpool_postgres::PoolError::Timeout(_) => true,
            _ => false,
        };
    }
    source
        .downcast_ref::<tokio_postgres::Error>()
        .is_some_and(pg_retryable)
}

fn pg_retryable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            code.code().starts_with("08") // connection exception
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
        }
        // No SQL state: the connection itself failed (refused, reset, timed out) —
        // unless TLS refused the server: a certificate does not fix itself.
        None => {
            let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
            if io.is_some_and(|io| {
                io.get_ref()
                    .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
            }) {
                return false;
            }
            io.is_some() || e.to_string().contains("connection")
        }
    }
}

impl PostgresStore {
    /// Connects to `config.url`, applies the schema migrations, and starts the lease
    /// heartbeat.
    pub fn open(config: &StateConfig) -> Result<PostgresStore, StateError> {
        let store = Self::connect(config)?;
        store.migrate()?;
        store.start_heartbeat();
        Ok(store)
    }

    /// Connects without migrating (for `state status`).
    pub fn connect(config: &StateConfig) -> Result<PostgresStore, StateError> {
        let url = config.redacted_url();
        let open_err = |detail: String| StateError::Open {
            path: url.clone(),
            source: detail.into(),
        };
        let raw = config
            .url
            .as_deref()
            .ok_or_else(|| open_err("state.url is not set".into()))?;
        let (pg_config, tls) = tls::client_config(raw, config.tls_ca_file.as_deref())
            .map_err(|e| open_err(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("state-postgres")
            .enable_all()
            .build()
            .map_err(|e| open_err(format!("cannot start the driver's runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let manager = Manager::from_config(
            pg_config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = {
            let _guard = handle.enter();
            Pool::builder(manager)
                .max_size(config.pool_size)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .create_timeout(Some(Duration::from_secs(10)))
                .wait_timeout(Some(Duration::from_secs(60)))
                .build()
                .map_err(|e| open_err(e.to_string()))?
        };
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
        let owner = format!(
            "{host}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let store = PostgresStore {
            pool,
            runtime: Some(runtime),
            handle,
            owner,
            lease: config.lease,
            retry_for: config.retry_for,
            fences: Default::default(),
            claimed_rows: Default::default(),
            url: url.clone(),
        };
        // Fail at start, with the URL, rather than at the first batch.
        store
            .block(async { store.client().await.map(drop) })
            .map_err(|e| open_err(e.to_string()))?;
        Ok(store)
    }

    /// This instance's name in the `owner` columns.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Runs `future` to completion on this thread, inside the store's runtime (its
    /// connections and timers live there). Never called from that runtime's threads.
    fn block<T>(&self, future: impl Future<Output = T>) -> T {
        let _guard = self.handle.enter();
        futures::executor::block_on(future)
    }

    async fn client(&self) -> Result<Object, StateError> {
        self.pool.get().await.map_err(storage)
    }

    /// Runs `op` (one transaction) until it succeeds, fails for a reason other than
    /// the database being away, or `state.retry_for` has passed. `op` gets the attempt
    /// number, from 1.
    fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StateError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, StateError>>,
    {
        self.block(async {
            let started = Instant::now();
            let mut delay = Duration::from_millis(100);
            let mut attempt = 1;
            loop {
                match op(attempt).await {
                    Err(e) if retryable(&e) && started.elapsed() < self.retry_for => {
                        if attempt == 1 {
                            tracing::warn!(error = %e, operation = what, "State database unavailable; retrying.");
                        }
                        crate::telemetry::metrics().failed("state");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                    Ok(v) => {
                        if attempt > 1 {
                            tracing::info!(operation = what, attempts = attempt, "State database reachable again.");
                        }
                        return Ok(v);
                    }
                }
            }
        })
    }

    /// Renews the leases of everything this instance owns, every third of a lease,
    /// until the store is dropped. A lease that lapses (the database away for longer,
    /// or this process stalled) lets another instance take the work over; this one is
    /// then fenced off it.
    fn start_heartbeat(&self) {
        let pool = self.pool.clone();
        let owner = self.owner.clone();
        let lease_ms = self.lease.as_millis() as i64;
        let every = self.lease / 3;
        self.handle.spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if pool.is_closed() {
                    return;
                }
                let renewed = async {
                    let client = pool.get().await.map_err(storage)?;
                    for table in ["intents", "purge_intents", "erase_intents"] {
                        let sql = format!(
                            "UPDATE {table} SET lease_until = now() + $2::int8 * interval '1 millisecond' WHERE owner = $1"
                        );
                        client
                            .execute(sql.as_str(), &[&owner, &lease_ms])
                            .await
                            .map_err(storage)?;
                    }
                    Ok::<_, StateError>(())
                };
                if let Err(e) = renewed.await {
                    tracing::warn!(error = %e, "Lease renewal failed; retrying.");
                }
            }
        });
    }

    fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }

    fn set_fence(&self, intent_id: &str, fence: i64) {
        let mut fences = self.fences.lock().unwrap_or_else(|p| p.into_inner());
        fences.insert(intent_id.to_string(), fence);
    }

    fn fence_of(&self, intent_id: &str) -> Option<i64> {
        let fences = self.fences.lock().unwrap_or_else(|p| p.into_inner());
        fences.get(intent_id).copied()
    }

    fn forget_fence(&self, intent_id: &str) {
        let mut fences = self.fences.lock().unwrap_or_else(|p| p.into_inner());
        fences.remove(intent_id);
    }
}

/// The trait's methods, each implemented in the file named beside it.
impl StateStore for PostgresStore {
    // ingest.rs
    fn ingest(
        &self,
        events: &[FlowEvent],
        policy: &RetentionPolicy,
        now_ms: i64,
        checkpoint: Option<(&str, &[u8])>,
    ) -> Result<IngestOutcome, StateError> {
        if events.is_empty() && checkpoint.is_none() {
            return Ok(IngestOutcome::default());
        }
        let batch = ingest::Batch::new(events);
        self.retrying("ingest", |_| {
            self.store_batch(&batch, events, policy, now_ms, checkpoint)
        })
    }

    fn apply_policy(&self, policy: &RetentionPolicy) -> Result<u64, StateError> {
        self.retrying("apply policy", |_| self.recompute_deadlines(policy))
    }

    // archival.rs
    fn due_flows(&self, now_ms: i64, limit: usize) -> Result<Vec<FlowMeta>, StateError> {
        self.retrying("due flows", |_| self.claim_due(now_ms, limit))
    }

    fn peek_due(&self, now_ms: i64, limit: usize) -> Result<Vec<FlowMeta>, StateError> {
        self.retrying("due flows", |_| self.read_due(now_ms, limit))
    }

    fn seal(&self, intent: ArchiveIntent) -> Result<Option<ArchiveIntent>, StateError> {
        self.retrying("seal", |attempt| self.seal_parts(&intent, attempt))
    }

    fn intents(&self) -> Result<Vec<ArchiveIntent>, StateError> {
        self.retrying("intents", |_| self.all_intents())
    }

    fn claim_intents(&self) -> Result<Vec<ArchiveIntent>, StateError> {
        self.retrying("claim intents", |_| self.take_over_intents())
    }

    fn confirm_claim(&self, intent_id: &str) -> Result<(), StateError> {
        self.retrying("confirm claim", |_| self.renew_claim(intent_id))
    }

    fn record_upload(&self, intent_id: &str, verified: &VerifiedObject) -> Result<(), StateError> {
        self.retrying("record upload", |_| {
            self.record_verified(intent_id, verified)
        })
    }

    fn complete(&self, intent_id: &str) -> Result<(), StateError> {
        self.retrying("complete", |attempt| {
            self.complete_intent(intent_id, attempt)
        })?;
        self.forget_fence(intent_id);
        Ok(())
    }

    fn erase_live(&self, tenant: &str, flow_id: &str) -> Result<ErasedLive, StateError> {
        self.retrying("erase", |_| self.erase_flow(tenant, flow_id))
    }

    /// Nothing to give back by hand: deleted rows are reclaimed by autovacuum.
    fn compact(&self) -> Result<Compaction, StateError> {
        Ok(Compaction::default())
    }

    // reader.rs
    fn live_flow(&self, tenant: &str, flow_id: &str) -> Result<Option<FlowMeta>, StateError> {
        self.retrying("live flow", |_| self.open_part(tenant, flow_id))
    }

    fn live_flows(&self, query: &LiveQuery) -> Result<LiveFlows, StateError> {
        self.retrying("live flows", |_| self.search_live(query))
    }

    fn for_each_event(
        &self,
        tenant: &str,
        flow_id: &str,
        part: u32,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), StateError> {
        self.block(async {
            let client = self.client().await?;
            reader::stream_part(&client, tenant, flow_id, part, sink).await
        })
    }

    fn event_reader(&self) -> Result<Box<dyn EventReader>, StateError> {
        self.retrying("snapshot", |_| self.snapshot())
            .map(|r| Box::new(r) as Box<dyn EventReader>)
    }

    // records.rs
    fn checkpoint(&self, source: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.retrying("checkpoint", |_| self.stored_checkpoint(source))
    }

    fn stats(&self) -> Result<StoreStats, StateError> {
        self.retrying("stats", |_| self.counts())
    }

    fn set_hold(
        &self,
        tenant: &str,
        flow_id: &str,
        hold: Option<&Hold>,
    ) -> Result<Option<Hold>, StateError> {
        self.retrying("hold", |_| self.set_hold_record(tenant, flow_id, hold))
    }

    fn holds(&self) -> Result<Vec<Hold>, StateError> {
        self.retrying("holds", |_| self.hold_records())
    }

    fn begin_purge(&self, intent: &PurgeIntent) -> Result<(), StateError> {
        self.retrying("begin purge", |_| self.put_purge(intent))
    }

    fn purge_intents(&self) -> Result<Vec<PurgeIntent>, StateError> {
        self.retrying("purge intents", |_| self.claim_purges())
    }

    fn finish_purge(&self, object_key: &str) -> Result<(), StateError> {
        self.retrying("finish purge", |_| {
            self.remove_row("purge_intents", "object_key", object_key)
        })
    }

    fn begin_erase(&self, intent: &EraseIntent) -> Result<(), StateError> {
        self.retrying("begin erase", |_| self.put_erase(intent))
    }

    fn erase_intents(&self) -> Result<Vec<EraseIntent>, StateError> {
        self.retrying("erase intents", |_| self.claim_erasures())
    }

    fn finish_erase(&self, old_key: &str) -> Result<(), StateError> {
        self.retrying("finish erase", |_| {
            self.remove_row("erase_intents", "old_key", old_key)
        })
    }
}
