//! The archive index: flow part → object, offset, length, checksums, status, labels,
//! times, sizes — an embedded SQLite database built only from `flow.archived` records
//! (or, for disaster recovery, from segment manifests).
//!
//! Guarantees:
//! - applying records is idempotent (an upsert keyed by tenant, flow id and part), so
//!   replaying a topic or stream from the beginning rebuilds exactly the same rows,
//!   and a record seen twice (at-least-once publishing) changes nothing;
//! - a batch of records and the source position after it are written in one
//!   transaction: after a crash the builder resumes where the index is;
//! - listing uses keyset pagination in a stable order (`archived_at`, tenant, flow id,
//!   part), so pages neither skip nor repeat rows while the index grows.

pub mod builder;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use base64::Engine;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::publish::{EventData, FlowArchived, ARCHIVED_TYPE, HOLD_TYPE, PURGED_TYPE};
use crate::units::human_bytes;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index {path}: {source}")]
    Sql {
        path: String,
        source: rusqlite::Error,
    },
    #[error("invalid cursor: {0}")]
    Cursor(String),
}

/// A record the index applies.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexRecord {
    /// Upsert the part.
    Archived(Box<FlowArchived>),
    /// Delete the part (purged or erased).
    Purged {
        tenant: String,
        flow_id: String,
        part: i32,
    },
    /// A hold placed (`held`) or released on every part of a flow, present and future.
    Hold {
        tenant: String,
        flow_id: String,
        held: bool,
    },
}

impl IndexRecord {
    /// The record a published event stands for; `None` when its type and data do
    /// not match.
    pub fn from_event(event_type: &str, data: EventData) -> Option<IndexRecord> {
        match (event_type, data) {
            (ARCHIVED_TYPE, EventData::Archived(d)) => Some(IndexRecord::Archived(Box::new(d))),
            (PURGED_TYPE, EventData::Purged(d)) => Some(IndexRecord::Purged {
                tenant: d.tenant,
                flow_id: d.flow_id,
                part: d.part,
            }),
            (HOLD_TYPE, EventData::Hold(d)) => Some(IndexRecord::Hold {
                tenant: d.tenant,
                flow_id: d.flow_id,
                held: d.held,
            }),
            _ => None,
        }
    }
}

/// One indexed flow part, as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexedPart {
    pub tenant: String,
    pub flow_id: String,
    pub part: u32,
    pub status: String,
    pub labels: BTreeMap<String, String>,
    /// RFC 3339.
    pub archived_at: String,
    pub purge_at: String,
    pub first_event_time: String,
    pub last_event_time: String,
    pub event_count: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub object_uri: String,
    pub object_key: String,
    pub segment_id: String,
    pub compression: String,
    pub offset: u64,
    pub length: u64,
    pub frame_sha256: String,
    pub events_sha256: String,
    pub object_sha256: String,
    pub held: bool,
    /// `flow-archive/v2`: the part's place in its decompressed frame, when the frame
    /// holds several parts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain_offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain_length: Option<u64>,
}

/// Filters of `list`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    pub tenant: Option<String>,
    /// Flow ids starting with this (characters, not a pattern).
    pub flow_id_prefix: Option<String>,
    pub status: Option<String>,
    /// Labels every listed part has (key, value).
    pub labels: Vec<(String, String)>,
    /// Microseconds since the epoch, inclusive / exclusive.
    pub archived_after: Option<i64>,
    pub archived_before: Option<i64>,
    pub limit: usize,
    pub cursor: Option<String>,
}

/// The filters of a listing as the CLI and the API take them: text, parsed by
/// [`ListParams::parse`] in one place.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListParams {
    pub tenant: Option<String>,
    pub flow_id_prefix: Option<String>,
    pub status: Option<String>,
    /// `key:value`.
    pub label: Option<String>,
    /// More labels, as pairs (GraphQL gives them so); all must match.
    #[serde(skip)]
    pub labels: Vec<(String, String)>,
    /// RFC 3339, inclusive.
    pub archived_after: Option<String>,
    /// RFC 3339, exclusive.
    pub archived_before: Option<String>,
    /// Default 100.
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// A listing parameter that cannot be parsed: which one, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param} {problem}")]
pub struct InvalidParam {
    /// As the API names it (`archived_after`); the CLI flag is `--archived-after`.
    pub param: &'static str,
    pub problem: String,
}

impl ListParams {
    pub fn parse(self) -> Result<ListQuery, InvalidParam> {
        let time = |param: &'static str, text: Option<String>| {
            text.map(|t| {
                crate::time::parse_rfc3339_us(&t).map_err(|e| InvalidParam {
                    param,
                    problem: format!("{t:?} is not RFC 3339: {e}"),
                })
            })
            .transpose()
        };
        let mut labels = self.labels;
        if let Some(l) = self.label {
            labels.push(
                l.split_once(':')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| InvalidParam {
                        param: "label",
                        problem: "takes key:value".into(),
                    })?,
            );
        }
        Ok(ListQuery {
            tenant: self.tenant,
            flow_id_prefix: self.flow_id_prefix.filter(|p| !p.is_empty()),
            status: self.status,
            labels,
            archived_after: time("archived_after", self.archived_after)?,
            archived_before: time("archived_before", self.archived_before)?,
            limit: self.limit.unwrap_or(100),
            cursor: self.cursor,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ListPage {
    pub items: Vec<IndexedPart>,
    pub next_cursor: Option<String>,
    /// Each item's own cursor (a listing resumed from it starts after the item), for
    /// connections that give every edge one (GraphQL).
    #[serde(skip)]
    pub cursors: Vec<String>,
}

/// One line per part, then how to ask for the next page.
impl std::fmt::Display for ListPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.items {
            writeln!(
                f,
                "{}/{} part {}  {}  archived {}  purge {}  {} events  {} -> {}",
                p.tenant,
                p.flow_id,
                p.part,
                p.status,
                p.archived_at,
                p.purge_at,
                p.event_count,
                human_bytes(p.raw_bytes),
                human_bytes(p.stored_bytes)
            )?;
        }
        if let Some(c) = &self.next_cursor {
            writeln!(f, "more: --cursor {c}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatsRow {
    pub tenant: String,
    pub status: String,
    /// YYYY-MM-DD of `archived_at` (UTC).
    pub day: String,
    pub flow_parts: u64,
    pub events: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub flow_parts: u64,
    pub events: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// stored / raw.
    pub compression_ratio: f64,
    pub by_tenant_status_day: Vec<StatsRow>,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} flow parts, {} events, {} raw -> {} stored (ratio {:.3})",
            self.flow_parts,
            self.events,
            human_bytes(self.raw_bytes),
            human_bytes(self.stored_bytes),
            self.compression_ratio
        )?;
        for r in &self.by_tenant_status_day {
            writeln!(
                f,
                "  {} {} {}: {} parts, {} events, {} -> {}",
                r.day,
                r.tenant,
                r.status,
                r.flow_parts,
                r.events,
                human_bytes(r.raw_bytes),
                human_bytes(r.stored_bytes)
            )?;
        }
        Ok(())
    }
}

/// Counts and bytes by tenant, status and day. A `flow-archive/v2` frame holds several
/// parts, and each part's `stored_bytes` is its whole frame's length; summing those
/// would count a frame once per part. Here a frame's bytes are shared among its parts
/// by their plain lengths, so the sums are the bytes stored. (A frame never spans
/// tenants: objects are per tenant.)
const STATS: &str = "WITH p AS (
    SELECT tenant, status, archived_at, event_count, raw_bytes,
        CASE WHEN plain_length IS NULL THEN stored_bytes
             ELSE length * plain_length
                  / max(1, sum(plain_length) OVER (PARTITION BY object_key, offset))
        END AS stored
    FROM parts WHERE ?1 IS NULL OR tenant = ?1)
SELECT tenant, status, date(archived_at / 1000000, 'unixepoch') AS day,
    count(*), sum(event_count), sum(raw_bytes), sum(stored)
FROM p GROUP BY tenant, status, day ORDER BY tenant, status, day";

pub struct Index {
    path: String,
    // One connection; calls are short and run on blocking threads.
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS parts (
    tenant TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    part INTEGER NOT NULL,
    status TEXT NOT NULL,
    labels TEXT NOT NULL,
    archived_at INTEGER NOT NULL,
    purge_at INTEGER NOT NULL,
    first_event_time INTEGER NOT NULL,
    last_event_time INTEGER NOT NULL,
    event_count INTEGER NOT NULL,
    raw_bytes INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL,
    object_uri TEXT NOT NULL,
    object_key TEXT NOT NULL,
    segment_id TEXT NOT NULL,
    compression TEXT NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    frame_sha256 TEXT NOT NULL,
    events_sha256 TEXT NOT NULL,
    object_sha256 TEXT NOT NULL,
    held INTEGER NOT NULL DEFAULT 0,
    plain_offset INTEGER,
    plain_length INTEGER,
    PRIMARY KEY (tenant, flow_id, part)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS parts_by_time ON parts (archived_at, tenant, flow_id, part);
CREATE TABLE IF NOT EXISTS part_labels (
    tenant TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    part INTEGER NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (key, value, tenant, flow_id, part)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS part_labels_by_part ON part_labels (tenant, flow_id, part);
CREATE TABLE IF NOT EXISTS holds (
    tenant TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    PRIMARY KEY (tenant, flow_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS positions (
    source TEXT PRIMARY KEY,
    position TEXT NOT NULL
);
";

const COLUMNS: &str = "tenant, flow_id, part, status, labels, archived_at, purge_at, \
    first_event_time, last_event_time, event_count, raw_bytes, stored_bytes, object_uri, \
    object_key, segment_id, compression, offset, length, frame_sha256, events_sha256, \
    object_sha256, held, plain_offset, plain_length";

fn micros_text(us: i64) -> String {
    crate::time::rfc3339_ms(us.div_euclid(1000))
}

fn row_to_part(row: &rusqlite::Row<'_>) -> rusqlite::Result<IndexedPart> {
    let labels: String = row.get(4)?;
    Ok(IndexedPart {
        tenant: row.get(0)?,
        flow_id: row.get(1)?,
        part: row.get(2)?,
        status: row.get(3)?,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        archived_at: micros_text(row.get(5)?),
        purge_at: micros_text(row.get(6)?),
        first_event_time: micros_text(row.get(7)?),
        last_event_time: micros_text(row.get(8)?),
        event_count: row.get::<_, i64>(9)? as u64,
        raw_bytes: row.get::<_, i64>(10)? as u64,
        stored_bytes: row.get::<_, i64>(11)? as u64,
        object_uri: row.get(12)?,
        object_key: row.get(13)?,
        segment_id: row.get(14)?,
        compression: row.get(15)?,
        offset: row.get::<_, i64>(16)? as u64,
        length: row.get::<_, i64>(17)? as u64,
        frame_sha256: row.get(18)?,
        events_sha256: row.get(19)?,
        object_sha256: row.get(20)?,
        held: row.get::<_, i64>(21)? != 0,
        plain_offset: row.get::<_, Option<i64>>(22)?.map(|o| o as u64),
        plain_length: row.get::<_, Option<i64>>(23)?.map(|l| l as u64),
    })
}

/// Opaque keyset cursor: the sort key of the last row of a page.
#[derive(Serialize, Deserialize)]
struct Cursor(i64, String, String, u32);

impl Index {
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let name = path.display().to_string();
        let sql = |source| IndexError::Sql {
            path: name.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        // An index made before flow-archive/v2 gains the part's place in its frame.
        let has_range: bool = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('parts') WHERE name = 'plain_offset'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(sql)?
            > 0;
        if !has_range {
            conn.execute_batch(
                "ALTER TABLE parts ADD COLUMN plain_offset INTEGER;
                 ALTER TABLE parts ADD COLUMN plain_length INTEGER;",
            )
            .map_err(sql)?;
        }
        Ok(Index {
            path: name,
            conn: Mutex::new(conn),
        })
    }

    fn err(&self, source: rusqlite::Error) -> IndexError {
        IndexError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies records and stores `position` for `source`, in one transaction.
    pub fn apply(
        &self,
        records: &[IndexRecord],
        position: Option<(&str, &str)>,
    ) -> Result<(), IndexError> {
        let positions: Vec<(String, String)> = position
            .map(|(s, p)| vec![(s.to_string(), p.to_string())])
            .unwrap_or_default();
        self.apply_at(records, &positions)
    }

    /// Applies records and stores every (source, position) pair, in one transaction.
    pub fn apply_at(
        &self,
        records: &[IndexRecord],
        positions: &[(String, String)],
    ) -> Result<(), IndexError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        for record in records {
            match record {
                IndexRecord::Archived(d) => {
                    let labels = serde_json::to_string(&d.labels).unwrap_or_else(|_| "{}".into());
                    // A hold survives re-publication of the same part.
                    tx.prepare_cached(
                        &format!(
                            "INSERT INTO parts ({COLUMNS}) VALUES \
                             (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21, \
                              EXISTS (SELECT 1 FROM holds WHERE tenant = ?1 AND flow_id = ?2), ?22, ?23) \
                             ON CONFLICT (tenant, flow_id, part) DO UPDATE SET \
                             status=excluded.status, labels=excluded.labels, archived_at=excluded.archived_at, \
                             purge_at=excluded.purge_at, first_event_time=excluded.first_event_time, \
                             last_event_time=excluded.last_event_time, event_count=excluded.event_count, \
                             raw_bytes=excluded.raw_bytes, stored_bytes=excluded.stored_bytes, \
                             object_uri=excluded.object_uri, object_key=excluded.object_key, \
                             segment_id=excluded.segment_id, compression=excluded.compression, \
                             offset=excluded.offset, length=excluded.length, \
                             frame_sha256=excluded.frame_sha256, events_sha256=excluded.events_sha256, \
                             object_sha256=excluded.object_sha256, \
                             plain_offset=excluded.plain_offset, plain_length=excluded.plain_length"
                        ),
                    )
                    .and_then(|mut stmt| stmt.execute(params![
                            d.tenant,
                            d.flow_id,
                            d.part,
                            d.status,
                            labels,
                            d.archived_at,
                            d.purge_at,
                            d.first_event_time,
                            d.last_event_time,
                            d.event_count,
                            d.raw_bytes,
                            d.stored_bytes,
                            d.object_uri,
                            d.object_key,
                            d.segment_id,
                            d.compression,
                            d.offset,
                            d.length,
                            d.frame_sha256,
                            d.events_sha256,
                            d.object_sha256,
                            d.plain_offset,
                            d.plain_length,
                        ]))
                    .map_err(|e| self.err(e))?;
                    tx.prepare_cached(
                        "DELETE FROM part_labels WHERE tenant=?1 AND flow_id=?2 AND part=?3",
                    )
                    .and_then(|mut stmt| stmt.execute(params![d.tenant, d.flow_id, d.part]))
                    .map_err(|e| self.err(e))?;
                    for (k, v) in &d.labels {
                        tx.prepare_cached(
                            "INSERT INTO part_labels (tenant, flow_id, part, key, value) VALUES (?1,?2,?3,?4,?5)",
                        )
                        .and_then(|mut stmt| stmt.execute(params![d.tenant, d.flow_id, d.part, k, v]))
                        .map_err(|e| self.err(e))?;
                    }
                }
                IndexRecord::Purged {
                    tenant,
                    flow_id,
                    part,
                } => {
                    for sql in [
                        "DELETE FROM parts WHERE tenant=?1 AND flow_id=?2 AND part=?3",
                        "DELETE FROM part_labels WHERE tenant=?1 AND flow_id=?2 AND part=?3",
                    ] {
                        tx.prepare_cached(sql)
                            .and_then(|mut stmt| stmt.execute(params![tenant, flow_id, part]))
                            .map_err(|e| self.err(e))?;
                    }
                }
                IndexRecord::Hold {
                    tenant,
                    flow_id,
                    held,
                } => {
                    let sql = if *held {
                        "INSERT OR IGNORE INTO holds (tenant, flow_id) VALUES (?1, ?2)"
                    } else {
                        "DELETE FROM holds WHERE tenant=?1 AND flow_id=?2"
                    };
                    tx.prepare_cached(sql)
                        .and_then(|mut stmt| stmt.execute(params![tenant, flow_id]))
                        .map_err(|e| self.err(e))?;
                    tx.prepare_cached("UPDATE parts SET held=?3 WHERE tenant=?1 AND flow_id=?2")
                        .and_then(|mut stmt| stmt.execute(params![tenant, flow_id, *held as i64]))
                        .map_err(|e| self.err(e))?;
                }
            }
        }
        for (source, pos) in positions {
            tx.execute(
                "INSERT INTO positions (source, position) VALUES (?1, ?2) \
                 ON CONFLICT (source) DO UPDATE SET position = excluded.position",
                params![source, pos],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    pub fn position(&self, source: &str) -> Result<Option<String>, IndexError> {
        self.conn()
            .query_row(
                "SELECT position FROM positions WHERE source = ?1",
                params![source],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Empties the index (rebuilds start from nothing).
    pub fn clear(&self) -> Result<(), IndexError> {
        self.conn()
            .execute_batch("DELETE FROM parts; DELETE FROM part_labels; DELETE FROM holds; DELETE FROM positions;")
            .map_err(|e| self.err(e))
    }

    /// The flows on hold, as the `flow.hold` records replayed so far say.
    pub fn holds(&self) -> Result<Vec<(String, String)>, IndexError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT tenant, flow_id FROM holds ORDER BY tenant, flow_id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// A flow's archived parts, in part order.
    pub fn parts_of(&self, tenant: &str, flow_id: &str) -> Result<Vec<IndexedPart>, IndexError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM parts WHERE tenant = ?1 AND flow_id = ?2 ORDER BY part"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![tenant, flow_id], row_to_part)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Every part in the stable list order (for comparisons and exports).
    pub fn all(&self) -> Result<Vec<IndexedPart>, IndexError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM parts ORDER BY archived_at, tenant, flow_id, part"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], row_to_part).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    pub fn list(&self, q: &ListQuery) -> Result<ListPage, IndexError> {
        let mut sql = format!("SELECT {COLUMNS} FROM parts p WHERE 1=1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
        };
        if let Some(t) = &q.tenant {
            arg(&mut sql, " AND p.tenant = ?", t.clone().into());
        }
        if let Some(prefix) = &q.flow_id_prefix {
            // substr and length count characters, so any prefix matches whole.
            arg(
                &mut sql,
                " AND substr(p.flow_id, 1, length(?",
                prefix.clone().into(),
            );
            arg(&mut sql, ")) = ?", prefix.clone().into());
        }
        if let Some(s) = &q.status {
            arg(&mut sql, " AND p.status = ?", s.clone().into());
        }
        for (k, v) in &q.labels {
            arg(
                &mut sql,
                " AND EXISTS (SELECT 1 FROM part_labels l WHERE l.tenant = p.tenant AND l.flow_id = p.flow_id AND l.part = p.part AND l.key = ?",
                k.clone().into(),
            );
            arg(&mut sql, " AND l.value = ?)", v.clone().into());
        }
        if let Some(a) = q.archived_after {
            arg(&mut sql, " AND p.archived_at >= ?", a.into());
        }
        if let Some(b) = q.archived_before {
            arg(&mut sql, " AND p.archived_at < ?", b.into());
        }
        if let Some(c) = &q.cursor {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .map_err(|e| IndexError::Cursor(e.to_string()))?;
            let Cursor(at, tenant, flow, part) =
                serde_json::from_slice(&bytes).map_err(|e| IndexError::Cursor(e.to_string()))?;
            arg(
                &mut sql,
                " AND (p.archived_at, p.tenant, p.flow_id, p.part) > (?",
                at.into(),
            );
            arg(&mut sql, ", ?", tenant.into());
            arg(&mut sql, ", ?", flow.into());
            arg(&mut sql, ", ?)", (part as i64).into());
        }
        let limit = q.limit.clamp(1, 1000);
        sql.push_str(&format!(
            " ORDER BY p.archived_at, p.tenant, p.flow_id, p.part LIMIT {}",
            limit + 1
        ));
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args.iter()), |row| {
                Ok((row.get::<_, i64>(5)?, row_to_part(row)?))
            })
            .map_err(|e| self.err(e))?;
        let mut items: Vec<(i64, IndexedPart)> =
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?;
        let more = items.len() > limit;
        items.truncate(limit);
        let cursor_of = |(at, p): &(i64, IndexedPart)| {
            let c = Cursor(*at, p.tenant.clone(), p.flow_id.clone(), p.part);
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::to_vec(&c).unwrap_or_default())
        };
        let cursors: Vec<String> = items.iter().map(cursor_of).collect();
        Ok(ListPage {
            next_cursor: more.then(|| cursors.last().cloned()).flatten(),
            cursors,
            items: items.into_iter().map(|(_, p)| p).collect(),
        })
    }

    /// Counts and bytes, in total and by tenant, status and day; `tenant` narrows it.
    pub fn stats(&self, tenant: Option<&str>) -> Result<Stats, IndexError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(STATS).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![tenant], |r| {
                Ok(StatsRow {
                    tenant: r.get(0)?,
                    status: r.get(1)?,
                    day: r.get(2)?,
                    flow_parts: r.get::<_, i64>(3)? as u64,
                    events: r.get::<_, i64>(4)? as u64,
                    raw_bytes: r.get::<_, i64>(5)? as u64,
                    stored_bytes: r.get::<_, i64>(6)? as u64,
                })
            })
            .map_err(|e| self.err(e))?;
        let rows: Vec<StatsRow> = rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?;
        let mut s = Stats::default();
        for r in &rows {
            s.flow_parts += r.flow_parts;
            s.events += r.events;
            s.raw_bytes += r.raw_bytes;
            s.stored_bytes += r.stored_bytes;
        }
        s.compression_ratio = if s.raw_bytes > 0 {
            s.stored_bytes as f64 / s.raw_bytes as f64
        } else {
            0.0
        };
        s.by_tenant_status_day = rows;
        Ok(s)
    }
}
