//! `flow-archiver bench --api`: `GET /flows/...` latency for archived and for live
//! flows, and index build/rebuild rates.
//!
//! Generates and ingests the workload, archives about half of the flows (a sweep
//! halfway through their deadlines), builds the index from the records file and again
//! from the segment manifests, then serves the API on a loopback port and times
//! `GET /flows/{tenant}/{flow_id}` for up to 1,000 random archived and 1,000 random
//! live flows from a plain HTTP/1.1 client (one connection per request). Then the web
//! console's two hot paths through `/graphql`: its flow page query for the same
//! archived flows, and its search (a page of 50 archived and 50 live matches of a
//! flow id prefix) for 200 random prefixes.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{io_err, machine, write_workload};
use crate::bench::measure::{peak_rss_bytes, percentile};
use crate::config::{Config, Retention};
use crate::pipeline::{Pipeline, PipelineError};
use crate::policy::ManualClock;
use crate::workload::WorkloadSpec;

#[derive(Debug, Clone, Serialize)]
pub struct ApiBenchReport {
    pub flows: u64,
    pub archived_parts: u64,
    pub index_records_per_sec: f64,
    pub rebuild_from_archive_records_per_sec: f64,
    pub archived_requests: u64,
    pub archived_p50_ms: f64,
    pub archived_p99_ms: f64,
    pub live_requests: u64,
    pub live_p50_ms: f64,
    pub live_p99_ms: f64,
    pub graphql_flow_requests: u64,
    pub graphql_flow_p50_ms: f64,
    pub graphql_flow_p99_ms: f64,
    pub search_requests: u64,
    pub archived_search_p50_ms: f64,
    pub archived_search_p99_ms: f64,
    pub live_search_p50_ms: f64,
    pub live_search_p99_ms: f64,
    pub peak_rss_bytes: u64,
    pub machine: String,
}

fn other(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::NotFound(e.to_string())
}

/// Sends one HTTP/1.1 request over a fresh connection; the status code, or 0 when the
/// answer holds GraphQL errors.
fn exchange(addr: std::net::SocketAddr, request: &str) -> std::io::Result<u16> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let status = std::str::from_utf8(&response[..response.len().min(12)])
        .ok()
        .and_then(|l| l.get(9..12))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let errors = memchr::memmem::find(&response, b"\"errors\"").is_some();
    Ok(if errors { 0 } else { status })
}

fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
}

fn graphql_request(query: &str, variables: serde_json::Value) -> String {
    let body = serde_json::json!({ "query": query, "variables": variables }).to_string();
    format!(
        "POST /graphql HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Each request's latency in ms, one after another; an error on any answer but 200.
async fn timed(
    addr: std::net::SocketAddr,
    requests: Vec<String>,
) -> Result<Vec<f64>, PipelineError> {
    tokio::task::spawn_blocking(move || {
        let mut ms = Vec::with_capacity(requests.len());
        for request in requests {
            let started = Instant::now();
            let status = exchange(addr, &request).map_err(other)?;
            if status != 200 {
                let line = request.lines().next().unwrap_or_default();
                return Err(other(format!("{line}: {status} ({request})")));
            }
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(ms)
    })
    .await?
}

/// The console's flow page query (`src/api/ui/app.js`).
const FLOW_PAGE: &str = "query($t: String!, $f: String!) { flow(tenant: $t, flowId: $f) { \
    tenant flowId status live archived eventCount labels { key value } hold { reason } \
    parts { part state status labels { key value } eventCount firstEventTime lastEventTime archivedAt purgeAt held objectUri storedBytes dueAt } \
    events(first: 200) { total nextCursor items { position part id type time json } } } }";

/// The console's search: archived, then live matches of a prefix, 50 each.
const ARCHIVED_SEARCH: &str =
    "query($p: String) { archivedFlows(filter: {flowIdPrefix: $p}, first: 50) { \
     edges { node { tenant flowId part status eventCount archivedAt purgeAt held } } \
     pageInfo { hasNextPage endCursor } } }";
const LIVE_SEARCH: &str = "query($p: String) { liveFlows(filter: {flowIdPrefix: $p}, first: 50) { \
     edges { node { tenant flowId part status eventCount lastEventTime dueAt } } \
     pageInfo { hasNextPage endCursor } } }";

pub async fn run(args: &super::BenchArgs) -> Result<ApiBenchReport, PipelineError> {
    let tmp = tempfile::tempdir().map_err(|e| io_err("temporary directory", e))?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir.display().to_string(), e))?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let spec = WorkloadSpec::bench(args.flows, args.events, now_ms, "apibench");
    let input = dir.join("events.jsonl");
    write_workload(&spec, &input)?;
    let mut config = Config::rooted_at(&dir);
    let hour = Retention::After(Duration::from_secs(3600));
    let r = &mut config.retention;
    (r.completed, r.failed, r.error, r.cancelled, r.timed_out) = (hour, hour, hour, hour, hour);
    let pipeline = Pipeline::open(config.clone(), Arc::new(ManualClock::new(now_ms))).await?;
    pipeline
        .ingest_input(&input.display().to_string(), &mut |_| {})
        .await?;
    // Halfway through the deadlines: about half of the flows are archived.
    let sweep = pipeline.sweep(now_ms + 25 * 60_000, &mut |_| {}).await?;
    let store = pipeline.store().clone();
    let live = tokio::task::spawn_blocking(move || store.peek_due(i64::MAX, 1000)).await??;

    let index = Arc::new(crate::index::Index::open(&config.index.path).map_err(other)?);
    let built = crate::index::builder::from_records_file(
        index.clone(),
        &config.publish.archived_path,
        true,
        None,
    )
    .await
    .map_err(other)?;
    let rebuilt =
        crate::index::builder::from_archive(index.clone(), pipeline.objects(), &mut |_, _| {})
            .await
            .map_err(other)?;
    let ix = index.clone();
    let mut archived = tokio::task::spawn_blocking(move || ix.all())
        .await?
        .map_err(other)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    archived.shuffle(&mut rng);
    archived.truncate(1000);

    let state = Arc::new(crate::api::ApiState::for_reader(crate::read::Reader::new(
        config.clone(),
        index.clone(),
        pipeline.objects().clone(),
        Some(pipeline.store().clone()),
    )));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| io_err("listen", e))?;
    let addr = listener.local_addr().map_err(|e| io_err("listen", e))?;
    drop(listener);
    let cancel = CancellationToken::new();
    let server = tokio::spawn(crate::api::serve(state, addr, cancel.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut archived_ms = timed(
        addr,
        archived
            .iter()
            .map(|p| get_request(&format!("/flows/{}/{}", p.tenant, p.flow_id)))
            .collect(),
    )
    .await?;
    let mut live_ms = timed(
        addr,
        live.iter()
            .map(|m| get_request(&format!("/flows/{}/{}", m.tenant, m.flow_id)))
            .collect(),
    )
    .await?;
    let mut flow_ms = timed(
        addr,
        archived
            .iter()
            .map(|p| {
                graphql_request(
                    FLOW_PAGE,
                    serde_json::json!({"t": p.tenant, "f": p.flow_id}),
                )
            })
            .collect(),
    )
    .await?;
    // Prefixes of random archived flow ids: a few characters short of the whole id,
    // so each matches a handful of flows among many.
    let prefixes: Vec<String> = archived
        .iter()
        .take(100)
        .map(|p| {
            let keep = p.flow_id.chars().count().saturating_sub(2);
            p.flow_id.chars().take(keep).collect()
        })
        .collect();
    let search = |query: &'static str| {
        let requests = prefixes
            .iter()
            .map(|p| graphql_request(query, serde_json::json!({ "p": p })))
            .collect();
        timed(addr, requests)
    };
    let mut archived_search_ms = search(ARCHIVED_SEARCH).await?;
    let mut live_search_ms = search(LIVE_SEARCH).await?;
    cancel.cancel();
    let _ = server.await;
    Ok(ApiBenchReport {
        flows: args.flows,
        archived_parts: sweep.flow_parts,
        index_records_per_sec: built.records as f64 / built.seconds.max(1e-9),
        rebuild_from_archive_records_per_sec: rebuilt.records as f64 / rebuilt.seconds.max(1e-9),
        archived_requests: archived_ms.len() as u64,
        archived_p50_ms: percentile(&mut archived_ms, 50.0),
        archived_p99_ms: percentile(&mut archived_ms, 99.0),
        live_requests: live_ms.len() as u64,
        live_p50_ms: percentile(&mut live_ms, 50.0),
        live_p99_ms: percentile(&mut live_ms, 99.0),
        graphql_flow_requests: flow_ms.len() as u64,
        graphql_flow_p50_ms: percentile(&mut flow_ms, 50.0),
        graphql_flow_p99_ms: percentile(&mut flow_ms, 99.0),
        search_requests: prefixes.len() as u64,
        archived_search_p50_ms: percentile(&mut archived_search_ms, 50.0),
        archived_search_p99_ms: percentile(&mut archived_search_ms, 99.0),
        live_search_p50_ms: percentile(&mut live_search_ms, 50.0),
        live_search_p99_ms: percentile(&mut live_search_ms, 99.0),
        peak_rss_bytes: peak_rss_bytes(),
        machine: machine(),
    })
}

impl std::fmt::Display for ApiBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "flow-archiver bench --api on {}", self.machine)?;
        writeln!(
            f,
            "  workload   {} flows; {} flow parts archived, the rest live",
            self.flows, self.archived_parts
        )?;
        writeln!(
            f,
            "  index      from records {:.0} records/s; rebuilt from manifests {:.0} records/s",
            self.index_records_per_sec, self.rebuild_from_archive_records_per_sec
        )?;
        writeln!(
            f,
            "  archived   GET /flows/… ({} random flows): p50 {:.2} ms, p99 {:.2} ms",
            self.archived_requests, self.archived_p50_ms, self.archived_p99_ms
        )?;
        writeln!(
            f,
            "  live       GET /flows/… ({} flows): p50 {:.2} ms, p99 {:.2} ms",
            self.live_requests, self.live_p50_ms, self.live_p99_ms
        )?;
        writeln!(
            f,
            "  graphql    console flow page ({} flows): p50 {:.2} ms, p99 {:.2} ms",
            self.graphql_flow_requests, self.graphql_flow_p50_ms, self.graphql_flow_p99_ms
        )?;
        writeln!(
            f,
            "  search     console search by flow id prefix ({} prefixes): archived p50 {:.2} ms, p99 {:.2} ms; live p50 {:.2} ms, p99 {:.2} ms",
            self.search_requests,
            self.archived_search_p50_ms,
            self.archived_search_p99_ms,
            self.live_search_p50_ms,
            self.live_search_p99_ms
        )?;
        writeln!(
            f,
            "  memory     peak RSS {:.1} MiB",
            self.peak_rss_bytes as f64 / (1024.0 * 1024.0)
        )
    }
}
