//! The operations behind the CLI, as library calls returning reports: tests call
//! exactly what users run, and `main.rs` only parses arguments and prints.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use crate::archive::{verify_object, VerifyProblem};
use crate::config::{Config, ConfigError, Retention};
use crate::pipeline::{IngestTotals, Pipeline, PipelineError, SweepReport};
use crate::policy::{Clock, SystemClock};
use crate::source::open_spec;
use crate::time::rfc3339_ms;
use crate::workload::{generate, WorkloadSpec, WorkloadStats};

/// Loads the configuration from `--config` (or `./flow-archiver.toml`) and the process
/// environment.
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    Config::load(path, &env)
}

/// Ingests a file (`PATH`, `file:PATH`) or stdin (`-`) to its end.
pub async fn ingest(
    p: &Pipeline,
    spec: &str,
    on_batch: &mut (dyn FnMut(&IngestTotals) + Send),
) -> Result<IngestTotals, PipelineError> {
    let mut source = open_spec(spec, false, p.config.input.max_event_bytes)?;
    p.ingest_stage()
        .run(
            &mut source,
            &tokio_util::sync::CancellationToken::new(),
            on_batch,
        )
        .await
}

/// How often [`get_flow`] reads again when an erasure of the flow overlapped its read,
/// and how long it waits in between (an erasure commits right after zeroing).
const ERASED_RETRIES: u32 = 5;
const ERASED_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// A live flow as JSON: metadata, a snapshot and every event in order; `None` when
/// the store does not hold it (not seen, already archived, or erased — also while the
/// read was under way).
pub async fn get_flow(
    store: &Arc<dyn crate::state::StateStore>,
    tenant: &str,
    flow_id: &str,
) -> Result<Option<Value>, PipelineError> {
    let store = store.clone();
    let (t, f) = (tenant.to_string(), flow_id.to_string());
    let found = tokio::task::spawn_blocking(move || {
        let mut attempt = 0;
        loop {
            match read_flow(store.as_ref(), &t, &f) {
                Err(crate::state::StateError::Erased { .. }) if attempt < ERASED_RETRIES => {
                    attempt += 1;
                    std::thread::sleep(ERASED_BACKOFF);
                }
                other => return other,
            }
        }
    })
    .await??;
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

type FlowRead = (crate::state::FlowMeta, Option<String>, Vec<Value>);

/// A live or sealed flow part and its events. A live part's meta and its events come
/// from one snapshot. A sealed part's intent is read after that snapshot; the flow was
/// not live in it, so (short of being created and sealed in between) the part was
/// sealed before it and its events are there; an intent completed in between is
/// simply not found.
fn read_flow(
    store: &dyn crate::state::StateStore,
    t: &str,
    f: &str,
) -> Result<Option<FlowRead>, crate::state::StateError> {
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

/// Re-reads archive objects and checks every checksum: each frame's `frame_sha256`
/// and `events_sha256`, event counts, the manifest, and the object SHA-256 against the
/// store's metadata and the published `flow.archived` records. `target` is an object
/// URI or key, or a key prefix; `None` checks everything under the archive prefix.
pub async fn verify(
    objects: &crate::archive::ArchiveStore,
    config: &Config,
    target: Option<&str>,
    on_object: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<VerifyReport, PipelineError> {
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
fn published_object_hashes(path: &Path) -> Result<HashMap<String, String>, PipelineError> {
    let mut map = HashMap::new();
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(map);
    };
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|source| crate::publish::PublishError::Io {
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

/// The outcome of `demo`.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub workload: WorkloadStats,
    pub input_file: String,
    pub ingest: IngestTotals,
    pub ingest_seconds: f64,
    pub sweep: SweepReport,
    pub live_flows: u64,
    pub archive: String,
    pub published: String,
    pub verify_command: String,
}

/// Generates a realistic workload, runs it through the real pipeline into the
/// configured directories with shortened retention, and reports what happened.
pub async fn demo(mut config: Config, flows: u64) -> Result<DemoReport, PipelineError> {
    // Shortened retention: flows that ended more than a few minutes ago are due now;
    // the most recent ones and every running flow stay live.
    let minutes = |m: u64| Retention::After(Duration::from_secs(m * 60));
    let r = &mut config.retention;
    (r.completed, r.cancelled) = (minutes(3), minutes(3));
    (r.failed, r.error, r.timed_out) = (minutes(6), minutes(6), minutes(6));
    r.abandoned = Retention::Off;
    let clock = Arc::new(SystemClock);
    let now = clock.now_ms();
    let run_id = format!("demo{:06x}", rand::random::<u32>() & 0xff_ffff);
    let input = config
        .state
        .path
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("demo/{run_id}.jsonl"));
    if let Some(dir) = input.parent() {
        std::fs::create_dir_all(dir).map_err(|source| crate::publish::PublishError::Io {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let spec = WorkloadSpec {
        flows,
        events_per_flow: 8,
        tenants: 4,
        running_share: 0.1,
        start_ms: now - 20 * 60_000,
        span_ms: 18 * 60_000,
        seed: rand::random(),
        run_id,
        interleave: 64,
    };
    let io_err = |source| crate::publish::PublishError::Io {
        path: input.display().to_string(),
        source,
    };
    let file = std::fs::File::create(&input).map_err(io_err)?;
    let mut out = std::io::BufWriter::new(file);
    let workload = generate(&spec, &mut out).map_err(io_err)?;
    drop(out);

    let p = Pipeline::open(config, clock.clone()).await?;
    let started = Instant::now();
    let ingest = ingest(&p, &input.display().to_string(), &mut |_| {}).await?;
    let ingest_seconds = started.elapsed().as_secs_f64();
    let sweep = p.sweep(clock.now_ms(), &mut |_| {}).await?;
    let store = p.store.clone();
    let stats = tokio::task::spawn_blocking(move || store.stats()).await??;
    Ok(DemoReport {
        workload,
        input_file: input.display().to_string(),
        ingest,
        ingest_seconds,
        sweep,
        live_flows: stats.live_flows,
        archive: p.objects.uri(p.objects.prefix()),
        published: p.config.publish.archived_path.display().to_string(),
        verify_command: "flow-archiver verify".into(),
    })
}

/// Human-readable byte counts.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn own_usage() -> Option<libc::rusage> {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    (unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0).then_some(usage)
}

/// Peak resident set size of this process, in bytes.
pub fn peak_rss_bytes() -> u64 {
    own_usage().map_or(0, |u| u.ru_maxrss as u64 * 1024)
}

/// CPU time (user + system) this process has used so far, over all its threads, in
/// seconds: steadier than wall-clock rates on a shared machine.
pub fn cpu_seconds() -> f64 {
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    own_usage().map_or(0.0, |u| secs(u.ru_utime) + secs(u.ru_stime))
}

/// CPU time all processes on this machine have spent busy so far (user, nice, system,
/// interrupts, steal; from `/proc/stat`), in seconds; `None` where there is no
/// `/proc/stat`. Less [`cpu_seconds`] over the same interval, it is what other
/// processes used — a broker on the same machine, in the benchmarks.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let busy = busy_ticks(stat.lines().next()?)?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| busy as f64 / hz as f64)
}

/// Busy ticks of the `cpu` summary line of `/proc/stat`: every field but idle and
/// iowait (fields 4 and 5), and not guest time, which user time already counts.
fn busy_ticks(line: &str) -> Option<u64> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let field = |i: usize| ticks.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal guest guest_nice
    Some(field(0) + field(1) + field(2) + field(5) + field(6) + field(7))
}

/// The p-th percentile (0–100) of `values` (sorted in place).
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank.min(values.len() - 1)]
}

/// Where `replay` sends events.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayTarget {
    Kafka(String),
    Nats(String),
    /// JSON Lines on stdout.
    Stdout,
}

impl ReplayTarget {
    pub fn parse(text: &str) -> Result<ReplayTarget, String> {
        match text {
            "-" | "stdout" => Ok(ReplayTarget::Stdout),
            t if t.starts_with("nats:") => {
                let subject = &t["nats:".len()..];
                if crate::nats::valid_subject(subject, false) {
                    Ok(ReplayTarget::Nats(subject.to_string()))
                } else {
                    Err(format!(
                        "{subject:?} is not a NATS subject without wildcards"
                    ))
                }
            }
            t => match t.strip_prefix("kafka:") {
                Some(topic) if crate::kafka::valid_topic_name(topic) => {
                    Ok(ReplayTarget::Kafka(topic.to_string()))
                }
                Some(topic) => Err(format!("{topic:?} is not a valid Kafka topic name")),
                None => Err(format!(
                    "unknown replay target {t:?}: use kafka:TOPIC, nats:SUBJECT or stdout"
                )),
            },
        }
    }
}

/// What `replay` sent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    pub tenant: String,
    pub flow_id: String,
    pub target: String,
    pub parts: Vec<String>,
    pub events: u64,
    pub bytes: u64,
}

/// The archived parts of one flow, part order, found from the segment manifests under
/// the tenant's prefix (the index, when present, answers faster).
pub async fn archived_parts(
    p: &Pipeline,
    tenant: &str,
    flow_id: &str,
) -> Result<Vec<(String, crate::archive::ManifestPart)>, PipelineError> {
    let under = format!("{}/{tenant}/", p.objects.prefix().trim_end_matches('/'));
    let mut found = Vec::new();
    for key in p.objects.list_keys(Some(&under)).await? {
        let manifest = crate::archive::read_manifest(&p.objects, &key).await?;
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

/// Re-publishes an archived flow's events, in order, as they were received.
pub async fn replay(
    p: &Pipeline,
    tenant: &str,
    flow_id: &str,
    target: &ReplayTarget,
) -> Result<ReplayReport, PipelineError> {
    let parts = archived_parts(p, tenant, flow_id).await?;
    if parts.is_empty() {
        let store = p.store.clone();
        let (t, f) = (tenant.to_string(), flow_id.to_string());
        let live = tokio::task::spawn_blocking(move || store.live_flow(&t, &f)).await??;
        return Err(PipelineError::NotFound(match live {
            Some(_) => format!("{tenant}/{flow_id} is not archived yet (it is still live)"),
            None => format!("no archived flow {tenant}/{flow_id}"),
        }));
    }
    enum Writer {
        Kafka(crate::publish::KafkaEventWriter),
        Nats(Box<crate::publish::NatsEventWriter>),
        Stdout,
    }
    let writer = match target {
        ReplayTarget::Kafka(topic) => {
            let (k, topic) = (p.config.kafka.clone(), topic.clone());
            Writer::Kafka(
                tokio::task::spawn_blocking(move || {
                    crate::publish::KafkaEventWriter::open(&k, &topic)
                })
                .await??,
            )
        }
        ReplayTarget::Nats(subject) => Writer::Nats(Box::new(
            crate::publish::NatsEventWriter::open(&p.config.nats, subject).await?,
        )),
        ReplayTarget::Stdout => Writer::Stdout,
    };
    let mut report = ReplayReport {
        tenant: tenant.to_string(),
        flow_id: flow_id.to_string(),
        target: match target {
            ReplayTarget::Kafka(t) => format!("kafka:{t}"),
            ReplayTarget::Nats(s) => format!("nats:{s}"),
            ReplayTarget::Stdout => "stdout".into(),
        },
        ..Default::default()
    };
    for (key, part) in parts {
        // Each part is read and verified whole before any of it is sent.
        let contents = crate::archive::read_part(&p.objects, &key, &part).await?;
        report.events += contents.events.len() as u64;
        report.bytes += contents.events.iter().map(|e| e.len() as u64).sum::<u64>();
        match &writer {
            Writer::Kafka(w) => w.send(flow_id, &contents.events).await?,
            Writer::Nats(w) => w.send(&contents.events).await?,
            Writer::Stdout => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                for event in &contents.events {
                    let written = out.write_all(event).and_then(|_| out.write_all(b"\n"));
                    written.map_err(|source| crate::publish::PublishError::Io {
                        path: "stdout".into(),
                        source,
                    })?;
                }
            }
        }
        report
            .parts
            .push(format!("{} part {} ({key})", part.flow_id, part.part));
    }
    Ok(report)
}

/// An archived flow as JSON, in the shape of a live one (`events`, `snapshot`,
/// `status`, `labels`) plus `"archived": true` and its `parts`; `None` when the index
/// knows no part of it. Every part is read with a ranged GET and both of its checksums
/// are verified before anything is returned: damaged data is an error, never an answer.
pub async fn archived_flow(
    index: &Arc<crate::index::Index>,
    objects: &crate::archive::ArchiveStore,
    tenant: &str,
    flow_id: &str,
) -> Result<Option<Value>, ArchivedFlowError> {
    let ix = index.clone();
    let (t, f) = (tenant.to_string(), flow_id.to_string());
    let parts = tokio::task::spawn_blocking(move || ix.parts_of(&t, &f))
        .await
        .map_err(|e| ArchivedFlowError::Index(e.to_string()))?
        .map_err(|e| ArchivedFlowError::Index(e.to_string()))?;
    let Some(last) = parts.last().cloned() else {
        return Ok(None);
    };
    let mut events = Vec::new();
    let mut listed = Vec::new();
    let mut snapshot = Value::Null;
    for p in &parts {
        let manifest_part = crate::archive::ManifestPart {
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
            traceparent: None,
        };
        let contents = crate::archive::read_part(objects, &p.object_key, &manifest_part)
            .await
            .map_err(|e| ArchivedFlowError::Archive {
                part: p.part,
                message: e.to_string(),
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

#[derive(Debug, thiserror::Error)]
pub enum ArchivedFlowError {
    #[error("index: {0}")]
    Index(String),
    #[error("archived part {part} cannot be read back intact: {message}")]
    Archive { part: u32, message: String },
}

/// What the read side (`get`, `list`, `stats`, `serve`, `index`) works with.
pub struct Reader {
    pub config: Config,
    pub index: Arc<crate::index::Index>,
    pub objects: crate::archive::ArchiveStore,
    /// `None` when a running archiver holds the state store.
    pub store: Option<Arc<dyn crate::state::StateStore>>,
}

impl Reader {
    /// Opens the index and the object store, and the state store unless another
    /// process (a running archiver) holds it.
    pub fn open(config: Config) -> Result<Reader, PipelineError> {
        let index = crate::index::Index::open(&config.index.path)
            .map_err(|e| PipelineError::NotFound(e.to_string()))?;
        let objects = crate::archive::ArchiveStore::from_config(&config.archive)?;
        let store: Option<Arc<dyn crate::state::StateStore>> =
            match crate::state::EmbeddedStore::open(&config.state) {
                Ok(s) => Some(Arc::new(s)),
                Err(crate::state::StateError::Locked { .. }) => None,
                Err(e) => return Err(e.into()),
            };
        Ok(Reader {
            config,
            index: Arc::new(index),
            objects,
            store,
        })
    }

    /// Brings the index up to date with wherever flow.archived goes (records file,
    /// Kafka topic, NATS stream).
    pub async fn catch_up(&self) -> Result<(), PipelineError> {
        crate::index::builder::from_destination(self.index.clone(), &self.config, false, None)
            .await
            .map_err(|e| PipelineError::NotFound(e.to_string()))?;
        Ok(())
    }

    pub fn api_state(&self) -> crate::api::ApiState {
        crate::api::ApiState {
            index: self.index.clone(),
            objects: self.objects.clone(),
            store: self.store.clone(),
            pipeline: None,
            auth: self.config.api.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
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
    async fn get_flow_reads_again_when_an_erasure_overlaps_and_then_finds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn StateStore> = Arc::new(open_store(
            dir.path(),
            crate::config::Config::default().state.journal_file_bytes,
        ));
        let raw = |id: &str| format!(r#"{{"id":"{id}"}}"#);
        let events = [event("f", "1", raw("1")), event("f", "2", raw("2"))];
        store.ingest(&events, &default_policy(), 0, None).unwrap();
        let got = get_flow(&store, "t", "f").await.unwrap().unwrap();
        assert_eq!(got["events"], json!([{"id": "1"}, {"id": "2"}]));

        // Zeroed bytes whose pointers stay: after its retries, an error that says so.
        zero_journal(dir.path());
        let err = get_flow(&store, "t", "f").await.unwrap_err();
        assert!(err.to_string().contains("reads as zeros"), "{err}");

        // The erasure commits while get_flow waits between reads: it finds nothing.
        let erasing = store.clone();
        let erase = std::thread::spawn(move || {
            std::thread::sleep(ERASED_BACKOFF / 2);
            erasing.erase_live("t", "f").unwrap()
        });
        assert_eq!(get_flow(&store, "t", "f").await.unwrap(), None);
        assert_eq!(erase.join().unwrap().events, 2);
    }

    #[test]
    fn busy_ticks_leave_out_idle_iowait_and_guest_time() {
        let line = "cpu  100 2 30 5000 40 6 7 8 90 1";
        assert_eq!(busy_ticks(line), Some(100 + 2 + 30 + 6 + 7 + 8));
        // Older kernels have fewer fields.
        assert_eq!(busy_ticks("cpu 1 2 3 4"), Some(6));
        assert_eq!(busy_ticks("cpu0 1 2 3 4"), None);
        assert_eq!(busy_ticks("cpu 1 x 3 4"), None);
    }

    #[test]
    fn machine_busy_time_moves_forward() {
        let Some(before) = machine_busy_seconds() else {
            return; // no /proc/stat here
        };
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        let after = machine_busy_seconds().unwrap_or(0.0);
        assert!(after >= before, "{before} -> {after}");
    }
}
