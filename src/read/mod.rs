//! The read path: a flow as `get` and the API show it — live from the state store, or
//! archived, read back through the index with every frame verified — and `verify`,
//! which re-reads archive objects and checks every checksum. The CLI and the API both
//! read through here.
//!
//! Guarantees:
//! - a live flow's meta and events come from one snapshot of the store; an erasure
//!   that overlaps the read makes it read again, never answer half a flow;
//! - an archived part is returned only after its `frame_sha256` and `events_sha256`
//!   match: damaged or missing data is an error naming the part, never wrong data.

mod search;

pub use search::{LiveItem, LivePage};

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};

use crate::archive::{verify_object, ArchiveError, ArchiveStore, ManifestPart, VerifyProblem};
use crate::config::Config;
use crate::index::builder::BuildError;
use crate::index::{Index, IndexError};
use crate::state::{FlowMeta, StateError, StateStore};
use crate::time::rfc3339_ms;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("archived part {part} cannot be read back intact: {message}")]
    Part { part: u32, message: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("a read task failed: {0}")]
    Task(tokio::task::JoinError),
    /// A search cursor this process did not issue.
    #[error("{0}")]
    Cursor(String),
}

/// What the read side (`get`, `list`, `stats`, `serve`, `index`, `verify`, and the
/// API of `run`) reads from: the index, the object store and, when this process holds
/// it, the state store.
pub struct Reader {
    config: Config,
    index: Arc<Index>,
    objects: ArchiveStore,
    /// `None` when a running archiver holds the state store.
    store: Option<Arc<dyn StateStore>>,
}

impl Reader {
    /// Opens the index and the object store, and the state store unless another
    /// process (a running archiver) holds it.
    pub fn open(config: Config) -> Result<Reader, ReadError> {
        let index = Index::open(&config.index.path)?;
        let objects = ArchiveStore::from_config(&config.archive)?;
        let store: Option<Arc<dyn StateStore>> = match crate::state::open(&config.state) {
            Ok(s) => Some(s),
            Err(StateError::Locked { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(Reader::new(config, Arc::new(index), objects, store))
    }

    /// A reader over stores opened elsewhere (`run` serves its API from its own).
    pub fn new(
        config: Config,
        index: Arc<Index>,
        objects: ArchiveStore,
        store: Option<Arc<dyn StateStore>>,
    ) -> Reader {
        Reader {
            config,
            index,
            objects,
            store,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    pub fn objects(&self) -> &ArchiveStore {
        &self.objects
    }

    /// Whether live flows can be read here (this process holds the state store).
    pub fn sees_live_flows(&self) -> bool {
        self.store.is_some()
    }

    /// Brings the index up to date with wherever flow.archived goes (records file,
    /// Kafka topic, NATS stream).
    pub async fn catch_up(&self) -> Result<(), ReadError> {
        crate::index::builder::from_destination(self.index.clone(), &self.config, false, None)
            .await?;
        Ok(())
    }

    /// A live flow ([`live_flow`]); `None` when it is not live or the state store is
    /// held by another process.
    pub async fn live_flow(&self, tenant: &str, flow_id: &str) -> Result<Option<Value>, ReadError> {
        match &self.store {
            Some(store) => live_flow(store, tenant, flow_id).await,
            None => Ok(None),
        }
    }

    /// An archived flow ([`archived_flow`]), as the index knows it now.
    pub async fn archived_flow(
        &self,
        tenant: &str,
        flow_id: &str,
    ) -> Result<Option<Value>, ReadError> {
        archived_flow(&self.index, &self.objects, tenant, flow_id).await
    }

    /// Verifies archive objects ([`verify`]).
    pub async fn verify(
        &self,
        target: Option<&str>,
        on_object: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<VerifyReport, ReadError> {
        verify(&self.objects, &self.config, target, on_object).await
    }

    /// Verifies the objects holding the flow's archived parts: every checksum of each
    /// object is checked, and the problems reported are those of this flow's parts
    /// and of the objects themselves (other flows in a shared object are not the
    /// caller's to see).
    pub async fn verify_flow(
        &self,
        tenant: &str,
        flow_id: &str,
    ) -> Result<VerifyReport, ReadError> {
        let index = self.index.clone();
        let (t, f) = (tenant.to_string(), flow_id.to_string());
        let parts = tokio::task::spawn_blocking(move || index.parts_of(&t, &f))
            .await
            .map_err(ReadError::Task)??;
        let mut keys: Vec<String> = parts.iter().map(|p| p.object_key.clone()).collect();
        keys.sort();
        keys.dedup();
        let mut report = VerifyReport {
            flow_parts: parts.len() as u64,
            ..VerifyReport::default()
        };
        let this_flow = format!("{tenant}/{flow_id} part ");
        for key in keys {
            let (_, problems) = verify_object(&self.objects, &key, None).await?;
            report.objects += 1;
            report.problems.extend(
                problems
                    .into_iter()
                    .filter(|p| p.flow.as_deref().is_none_or(|f| f.starts_with(&this_flow))),
            );
        }
        Ok(report)
    }

    /// Requests (`request`) or reports the restores of a flow's objects from S3
    /// archive tiers ([`crate::restore`]), with the index brought up to date first.
    pub async fn restore(
        &self,
        tenant: &str,
        flow_id: &str,
        days: i32,
        tier: &str,
        request: bool,
    ) -> Result<crate::restore::RestoreReport, ReadError> {
        self.catch_up().await?;
        let keys = self
            .index
            .parts_of(tenant, flow_id)?
            .into_iter()
            .map(|p| p.object_key)
            .collect();
        Ok(
            crate::restore::restore(&self.objects, (tenant, flow_id), keys, days, tier, request)
                .await?,
        )
    }

    /// Compares every object's S3 legal hold with the recorded holds
    /// ([`crate::hold_check`]): the state store's, or the index's (brought up to
    /// date first) while an archiver holds the store.
    pub async fn check_holds(
        &self,
        repair: bool,
        on_object: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<crate::hold_check::HoldCheck, ReadError> {
        let (holds, from): (std::collections::HashSet<(String, String)>, &str) = match &self.store {
            Some(store) => {
                let store = store.clone();
                let holds = tokio::task::spawn_blocking(move || store.holds())
                    .await
                    .map_err(ReadError::Task)??;
                let holds = holds.into_iter().map(|h| (h.tenant, h.flow_id)).collect();
                (holds, "state store")
            }
            None => {
                self.catch_up().await?;
                (self.index.holds()?.into_iter().collect(), "index")
            }
        };
        let mut report = crate::hold_check::check(&self.objects, &holds, repair, on_object).await?;
        report.holds_from = from.to_string();
        Ok(report)
    }
}

/// How often [`live_flow`] reads again when an erasure of the flow overlapped its read,
/// and how long it waits in between (an erasure commits right after zeroing).
const ERASED_RETRIES: u32 = 5;
const ERASED_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// A live flow as JSON: metadata, a snapshot and every event in order; `None` when
/// the store does not hold it (not seen, already archived, or erased — also while the
/// read was under way).
pub async fn live_flow(
    store: &Arc<dyn StateStore>,
    tenant: &str,
    flow_id: &str,
) -> Result<Option<Value>, ReadError> {
    let store = store.clone();
    let (t, f) = (tenant.to_string(), flow_id.to_string());
    let found = tokio::task::spawn_blocking(move || {
        let mut attempt = 0;
        loop {
            match read_flow(store.as_ref(), &t, &f) {
                Err(StateError::Erased { .. }) if attempt < ERASED_RETRIES => {
                    attempt += 1;
                    std::thread::sleep(ERASED_BACKOFF);
                }
                other => return other,
            }
        }
    })
    .await
    .map_err(ReadError::Task)??;
    Ok(found.map(|(m, intent, events)| {
        json!({
            "tenant": m.tenant,
            "flow_id": m.flow_id,
            "part": m.part,
            "status": m.status,
            "labels": m.labels,
            "archived": false,
            "archiving": intent,
            "event_count": m.event_count,
            "first_event_time": rfc3339_ms(m.first_event_ms),
            "last_event_time": rfc3339_ms(m.last_event_ms),
            "due_at": m.deadline_ms.map(rfc3339_ms),
            "snapshot": {
                "status": m.status,
                "last_event_type": m.event_type,
                "labels": m.labels,
                "traceparent": m.traceparent,
            },
            "events": events,
        })
    }))
}

type FlowRead = (FlowMeta, Option<String>, Vec<Value>);

/// A live or sealed flow part and its events. A live part's meta and its events come
/// from one snapshot. A sealed part's intent is read after that snapshot; the flow was
/// not live in it, so (short of being created and sealed in between) the part was
/// sealed before it and its events are there; an intent completed in between is
/// simply not found.
fn read_flow(store: &dyn StateStore, t: &str, f: &str) -> Result<Option<FlowRead>, StateError> {
    let reader = store.event_reader()?;
    // A flow sealed for archival is still readable until its intent completes.
    let (meta, intent) = match reader.live_flow(t, f)? {
        Some(m) => (m, None),
        None => {
            let sealed = store.intents()?.into_iter().find_map(|i| {
                let id = i.id.clone();
                i.parts
                    .into_iter()
                    .find(|p| p.meta.tenant == t && p.meta.flow_id == f)
                    .map(|p| (p.meta, Some(id)))
            });
            match sealed {
                Some(s) => s,
                None => return Ok(None),
            }
        }
    };
    let mut events = Vec::with_capacity(meta.event_count as usize);
    reader.for_each_event(t, f, meta.part, &mut |bytes| {
        let v: Value = serde_json::from_slice(bytes).map_err(std::io::Error::other)?;
        events.push(v);
        Ok(())
    })?;
    Ok(Some((meta, intent, events)))
}

/// An archived flow as JSON, in the shape of a live one (`events`, `snapshot`,
/// `status`, `labels`) plus `"archived": true` and its `parts`; `None` when the index
/// knows no part of it. Every part is read with a ranged GET and both of its checksums
/// are verified before anything is returned: damaged data is an error, never an answer.
pub async fn archived_flow(
    index: &Arc<Index>,
    objects: &ArchiveStore,
    tenant: &str,
    flow_id: &str,
) -> Result<Option<Value>, ReadError> {
    let ix = index.clone();
    let (t, f) = (tenant.to_string(), flow_id.to_string());
    let parts = tokio::task::spawn_blocking(move || ix.parts_of(&t, &f))
        .await
        .map_err(ReadError::Task)??;
    let Some(last) = parts.last().cloned() else {
        return Ok(None);
    };
    let mut events = Vec::new();
    let mut listed = Vec::new();
    let mut snapshot = Value::Null;
    for p in &parts {
        let manifest_part = ManifestPart {
            tenant: p.tenant.as_str().into(),
            flow_id: p.flow_id.as_str().into(),
            part: p.part,
            status: p.status.clone(),
            labels: p.labels.iter().collect(),
            offset: p.offset,
            length: p.length,
            frame_sha256: p.frame_sha256.clone(),
            events_sha256: p.events_sha256.clone(),
            event_count: p.event_count,
            raw_bytes: p.raw_bytes,
            first_event_time: p.first_event_time.clone(),
            last_event_time: p.last_event_time.clone(),
            purge_at: p.purge_at.clone(),
            plain_offset: p.plain_offset,
            plain_length: p.plain_length,
            traceparent: None,
        };
        let contents = crate::archive::read_part(objects, &p.object_key, &manifest_part)
            .await
            .map_err(|e| match e {
                // Not damage: the caller can act on it (API 409, `restore`).
                ArchiveError::RestoreRequired { .. } => ReadError::Archive(e),
                e => ReadError::Part {
                    part: p.part,
                    message: e.to_string(),
                },
            })?;
        for line in &contents.events {
            events.push(serde_json::from_slice::<Value>(line).unwrap_or(Value::Null));
        }
        snapshot = contents
            .trailer
            .get("snapshot")
            .cloned()
            .unwrap_or(Value::Null);
        listed.push(json!({
            "part": p.part,
            "status": p.status,
            "object_uri": p.object_uri,
            "offset": p.offset,
            "length": p.length,
            "frame_sha256": p.frame_sha256,
            "event_count": p.event_count,
            "archived_at": p.archived_at,
            "purge_at": p.purge_at,
            "held": p.held,
        }));
    }
    Ok(Some(json!({
        "tenant": last.tenant,
        "flow_id": last.flow_id,
        "part": last.part,
        "status": last.status,
        "labels": last.labels,
        "archived": true,
        "event_count": events.len(),
        "first_event_time": parts[0].first_event_time,
        "last_event_time": last.last_event_time,
        "snapshot": snapshot,
        "parts": listed,
        "events": events,
    })))
}

/// The archived parts of one flow, part order, found from the segment manifests under
/// the tenant's prefix (the index, when present, answers faster).
pub async fn archived_parts(
    objects: &ArchiveStore,
    tenant: &str,
    flow_id: &str,
) -> Result<Vec<(String, ManifestPart)>, ArchiveError> {
    let under = format!("{}/{tenant}/", objects.prefix().trim_end_matches('/'));
    let mut found = Vec::new();
    for key in objects.list_keys(Some(&under)).await? {
        let manifest = crate::archive::read_manifest(objects, &key).await?;
        for part in manifest.parts {
            if part.tenant == tenant && part.flow_id == flow_id {
                found.push((key.clone(), part));
            }
        }
    }
    found.sort_by_key(|(_, part)| part.part);
    // A re-archived part (after a crash) may sit in two objects; one copy is enough.
    found.dedup_by_key(|(_, part)| part.part);
    Ok(found)
}

/// The outcome of `verify`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub objects: u64,
    pub flow_parts: u64,
    pub problems: Vec<VerifyProblem>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcome = if self.ok() {
            "all checksums match".to_string()
        } else {
            format!("{} problems", self.problems.len())
        };
        writeln!(
            f,
            "checked {} objects, {} flow parts: {outcome}",
            self.objects, self.flow_parts
        )?;
        for p in &self.problems {
            writeln!(
                f,
                "  {} {}: {}",
                p.key,
                p.flow.as_deref().unwrap_or("(object)"),
                p.problem
            )?;
        }
        Ok(())
    }
}

/// Re-reads archive objects and checks every checksum: each frame's `frame_sha256`
/// and `events_sha256`, event counts, the manifest, and the object SHA-256 against the
/// store's metadata and the published `flow.archived` records. `target` is an object
/// URI or key, or a key prefix; `None` checks everything under the archive prefix.
pub async fn verify(
    objects: &ArchiveStore,
    config: &Config,
    target: Option<&str>,
    on_object: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<VerifyReport, ReadError> {
    let keys = match target {
        Some(t) => {
            let key = objects.key_of(t);
            if key.ends_with(".jsonl.zst") || key.ends_with(".jsonl.gz") {
                vec![key.to_string()]
            } else {
                objects.list_keys(Some(key)).await?
            }
        }
        None => objects.list_keys(None).await?,
    };
    let published = published_object_hashes(&config.publish.archived_path)?;
    let mut report = VerifyReport::default();
    let total = keys.len() as u64;
    for key in keys {
        let expected = published.get(&key).map(String::as_str);
        let (parts, problems) = verify_object(objects, &key, expected).await?;
        report.objects += 1;
        report.flow_parts += parts as u64;
        report.problems.extend(problems);
        on_object(report.objects, total);
    }
    Ok(report)
}

/// object key → object SHA-256, from the published records file (if present).
fn published_object_hashes(path: &Path) -> Result<HashMap<String, String>, ReadError> {
    let mut map = HashMap::new();
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(map);
    };
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|source| ReadError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if let (Some(k), Some(s)) = (
                v["data"]["object_key"].as_str(),
                v["data"]["object_sha256"].as_str(),
            ) {
                map.insert(k.to_string(), s.to_string());
            }
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::state::test_support::{default_policy, event, open_store};
    use crate::state::StateStore;

    /// Overwrites every journal file under `state_dir` with zeros, as an erasure does
    /// to a flow's bytes before its pointers go.
    fn zero_journal(state_dir: &std::path::Path) {
        for entry in std::fs::read_dir(state_dir.join("journal")).unwrap() {
            let path = entry.unwrap().path();
            let len = std::fs::metadata(&path).unwrap().len();
            std::fs::write(&path, vec![0u8; len as usize]).unwrap();
        }
    }

    #[tokio::test]
    async fn live_flow_reads_again_when_an_erasure_overlaps_and_then_finds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn StateStore> = Arc::new(open_store(
            dir.path(),
            crate::config::Config::default().state.journal_file_bytes,
        ));
        let raw = |id: &str| format!(r#"{{"id":"{id}"}}"#);
        let events = [event("f", "1", raw("1")), event("f", "2", raw("2"))];
        store.ingest(&events, &default_policy(), 0, None).unwrap();
        let got = live_flow(&store, "t", "f").await.unwrap().unwrap();
        assert_eq!(got["events"], json!([{"id": "1"}, {"id": "2"}]));

        // Zeroed bytes whose pointers stay: after its retries, an error that says so.
        zero_journal(dir.path());
        let err = live_flow(&store, "t", "f").await.unwrap_err();
        assert!(err.to_string().contains("reads as zeros"), "{err}");

        // The erasure commits while get_flow waits between reads: it finds nothing.
        let erasing = store.clone();
        let erase = std::thread::spawn(move || {
            std::thread::sleep(ERASED_BACKOFF / 2);
            erasing.erase_live("t", "f").unwrap()
        });
        assert_eq!(live_flow(&store, "t", "f").await.unwrap(), None);
        assert_eq!(erase.join().unwrap().events, 2);
    }
}
