//! Versioned migrations, embedded in the binary and applied at start. They run in one
//! transaction under an advisory lock: instances starting together take turns, and
//! the ones after the first find nothing left to do.

use serde::Serialize;

use super::*;

/// `(version, name, SQL)`, in order. A released migration never changes; a change of
/// schema is a new one.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../../migrations/0001_initial.sql"),
    ),
    (
        2,
        "event_runs",
        include_str!("../../../migrations/0002_event_runs.sql"),
    ),
];

/// Any constant shared by every flow-archiver: the advisory lock of migrations.
const MIGRATION_LOCK: i64 = 0x666c_6f77_6172_6368; // "flowarch"

/// What `state status` prints.
#[derive(Debug, Clone, Serialize)]
pub struct SchemaStatus {
    pub url: String,
    /// The highest migration applied; 0 on an empty database.
    pub version: i32,
    /// The highest migration this binary knows.
    pub known: i32,
    pub applied: Vec<AppliedMigration>,
    /// Counts, when the schema exists.
    pub stats: Option<StoreStats>,
    pub sealed_intents: u64,
    pub purge_intents: u64,
    pub erase_intents: u64,
    pub holds: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppliedMigration {
    pub version: i32,
    pub name: String,
    pub applied_at: String,
}

impl std::fmt::Display for SchemaStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "database          {}", self.url)?;
        writeln!(
            f,
            "schema version    {} (this binary knows {})",
            self.version, self.known
        )?;
        for m in &self.applied {
            writeln!(f, "  {:>4} {:<12} {}", m.version, m.name, m.applied_at)?;
        }
        if let Some(s) = &self.stats {
            writeln!(f, "live flows        {}", s.live_flows)?;
            writeln!(f, "stored events     {}", s.stored_events)?;
            writeln!(f, "timers            {}", s.timers)?;
        }
        writeln!(f, "archive intents   {}", self.sealed_intents)?;
        writeln!(f, "purge intents     {}", self.purge_intents)?;
        writeln!(f, "erase intents     {}", self.erase_intents)?;
        writeln!(f, "holds             {}", self.holds)
    }
}

impl PostgresStore {
    /// Applies the migrations this database lacks; returns the versions applied.
    pub fn migrate(&self) -> Result<Vec<i32>, StateError> {
        self.retrying("migrate", |_| self.apply_migrations())
    }

    async fn apply_migrations(&self) -> Result<Vec<i32>, StateError> {
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(storage)?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(storage)?;
        txn.batch_execute(
            "CREATE TABLE IF NOT EXISTS flow_archiver_migrations (
                version    integer     PRIMARY KEY,
                name       text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(storage)?;
        let current: i32 = txn
            .query_one(
                "SELECT coalesce(max(version), 0) FROM flow_archiver_migrations",
                &[],
            )
            .await
            .map_err(storage)?
            .get(0);
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if current > known {
            return Err(StateError::SchemaTooNew {
                found: current,
                known,
            });
        }
        let mut applied = Vec::new();
        for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            txn.batch_execute(sql).await.map_err(|e| StateError::Open {
                path: self.url.clone(),
                source: format!("migration {version} ({name}): {e}").into(),
            })?;
            txn.execute(
                "INSERT INTO flow_archiver_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await
            .map_err(storage)?;
            applied.push(*version);
        }
        txn.commit().await.map_err(storage)?;
        if !applied.is_empty() {
            tracing::info!(versions = ?applied, "State schema migrated.");
        }
        Ok(applied)
    }

    /// The schema version, the migrations applied, and counts.
    pub fn status(&self) -> Result<SchemaStatus, StateError> {
        self.retrying("status", |_| self.read_status())
    }

    async fn read_status(&self) -> Result<SchemaStatus, StateError> {
        let client = self.client().await?;
        let exists: bool = client
            .query_one(
                "SELECT to_regclass('flow_archiver_migrations') IS NOT NULL",
                &[],
            )
            .await
            .map_err(storage)?
            .get(0);
        let mut status = SchemaStatus {
            url: self.url.clone(),
            version: 0,
            known: MIGRATIONS.last().map_or(0, |m| m.0),
            applied: Vec::new(),
            stats: None,
            sealed_intents: 0,
            purge_intents: 0,
            erase_intents: 0,
            holds: 0,
        };
        if !exists {
            return Ok(status);
        }
        for row in client
            .query(
                "SELECT version, name, to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                 FROM flow_archiver_migrations ORDER BY version",
                &[],
            )
            .await
            .map_err(storage)?
        {
            status.applied.push(AppliedMigration {
                version: row.get(0),
                name: row.get(1),
                applied_at: row.get(2),
            });
        }
        status.version = status.applied.last().map_or(0, |m| m.version);
        if status.version >= 1 {
            drop(client);
            status.stats = Some(self.counts().await?);
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM intents), (SELECT count(*) FROM purge_intents),
                            (SELECT count(*) FROM erase_intents), (SELECT count(*) FROM holds)",
                    &[],
                )
                .await
                .map_err(storage)?;
            status.sealed_intents = row.get::<_, i64>(0) as u64;
            status.purge_intents = row.get::<_, i64>(1) as u64;
            status.erase_intents = row.get::<_, i64>(2) as u64;
            status.holds = row.get::<_, i64>(3) as u64;
        }
        Ok(status)
    }
}
