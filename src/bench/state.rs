//! `flow-archiver bench --state postgres://…`: the PostgreSQL state backend measured
//! beside its two references, in one run on one machine:
//! - the embedded backend, on the same workload;
//! - the physical limit of this design: `psql`'s `\copy` of the same event rows into a
//!   table with the same primary key, as fast as PostgreSQL takes rows at all.
//!
//! The bench creates a database of its own on the server (`flow_archiver_bench_…`, so
//! the role needs CREATEDB) and drops it afterwards. PostgreSQL runs first, so the
//! peak RSS printed for it is its own.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::{io_err, measure, BenchArgs, BenchReport};
use crate::config::StateBackend;
use crate::pipeline::PipelineError;

#[derive(Debug, Clone, Serialize)]
pub struct StateBenchReport {
    pub postgres: BenchReport,
    pub embedded: BenchReport,
    /// Rows per second `psql \copy` loaded the same events at.
    pub copy_rows_per_sec: f64,
    pub ingest_vs_copy: f64,
    pub archive_vs_embedded: f64,
}

pub async fn run(args: &BenchArgs, url: &str) -> Result<StateBenchReport, PipelineError> {
    let tmp = tempfile::tempdir().map_err(|e| io_err("temporary directory", e))?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let psql = find_psql()?;
    let database = format!("flow_archiver_bench_{}", std::process::id());
    let bench_url = with_database(url, &database)?;
    run_psql(&psql, url, &format!("CREATE DATABASE {database}"))?;
    let measured = async {
        let postgres = measure(args, &dir.join("postgres"), |c| {
            c.state.backend = StateBackend::Postgres;
            c.state.url = Some(bench_url.clone());
        })
        .await?;
        let copy_rows_per_sec = copy_reference(&psql, &bench_url, &dir.join("postgres"))?;
        let embedded = measure(args, &dir.join("embedded"), |_| {}).await?;
        Ok::<_, PipelineError>(StateBenchReport {
            ingest_vs_copy: postgres.ingest_events_per_sec / copy_rows_per_sec,
            archive_vs_embedded: match embedded.archive_mb_per_sec {
                e if e > 0.0 => postgres.archive_mb_per_sec / e,
                _ => 0.0,
            },
            postgres,
            embedded,
            copy_rows_per_sec,
        })
    }
    .await;
    // The store's connections close with it; the database goes either way.
    let dropped = run_psql(
        &psql,
        url,
        &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
    );
    let report = measured?;
    dropped?;
    Ok(report)
}

/// Loads the workload's events with `\copy` into a table keyed like the store's
/// `events` (tenant, flow, part, order), and returns rows per second. The rows file is
/// written first and not timed.
fn copy_reference(psql: &Path, url: &str, dir: &Path) -> Result<f64, PipelineError> {
    let input = dir.join("events.jsonl");
    let rows_path = dir.join("events.csv");
    let text = std::fs::read_to_string(&input).map_err(|e| io_err("events.jsonl", e))?;
    let file = std::fs::File::create(&rows_path).map_err(|e| io_err("events.csv", e))?;
    let mut out = std::io::BufWriter::new(file);
    let mut rows = 0u64;
    for (arrival, line) in text.lines().enumerate() {
        let event: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let field = |k: &str| {
            event
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let (tenant, flow, sequence) = (field("tenant"), field("subject"), field("sequence"));
        let mut ord = sequence.into_bytes();
        ord.extend_from_slice(&(arrival as u64).to_be_bytes());
        writeln!(
            out,
            "{},{},1,\\x{},\\x{}",
            csv(&tenant),
            csv(&flow),
            hex::encode(&ord),
            hex::encode(line.as_bytes())
        )
        .map_err(|e| io_err("events.csv", e))?;
        rows += 1;
    }
    out.flush().map_err(|e| io_err("events.csv", e))?;
    drop(out);
    // The store's own rows were just written or deleted: vacuum them now, so the
    // autovacuum does not compete with the timed COPY.
    run_psql(psql, url, "VACUUM (ANALYZE)")?;
    run_psql(
        psql,
        url,
        "CREATE TABLE copy_events (tenant text NOT NULL, flow_id text NOT NULL, part integer NOT NULL,
                                   ord bytea NOT NULL, raw bytea NOT NULL,
                                   PRIMARY KEY (tenant, flow_id, part, ord))",
    )?;
    let started = Instant::now();
    run_psql(
        psql,
        url,
        &format!(
            "\\copy copy_events FROM '{}' WITH (FORMAT csv)",
            rows_path.display()
        ),
    )?;
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

fn csv(field: &str) -> String {
    format!("\"{}\"", field.replace('"', "\"\""))
}

/// `url` with its database replaced.
fn with_database(url: &str, database: &str) -> Result<String, PipelineError> {
    let mut u = url::Url::parse(url).map_err(|e| bench_error(format!("--state {url}: {e}")))?;
    u.set_path(&format!("/{database}"));
    Ok(u.to_string())
}

fn find_psql() -> Result<PathBuf, PipelineError> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("psql"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin/psql")))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    on_path
        .into_iter()
        .chain(versions.into_iter().rev())
        .find(|p| p.exists())
        .ok_or_else(|| bench_error("psql is not installed (Debian: postgresql-client)".into()))
}

fn run_psql(psql: &Path, url: &str, command: &str) -> Result<(), PipelineError> {
    let out = std::process::Command::new(psql)
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            command,
        ])
        .output()
        .map_err(|e| io_err("psql", e))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(bench_error(format!(
            "psql {command}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

fn bench_error(message: String) -> PipelineError {
    PipelineError::Refused(message)
}

impl fmt::Display for StateBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, e) = (&self.postgres, &self.embedded);
        writeln!(f, "flow-archiver bench --state on {}", p.machine)?;
        writeln!(
            f,
            "  workload   {} flows, {} events, {:.1} MiB of JSON Lines",
            p.flows,
            p.events,
            p.input_bytes as f64 / (1024.0 * 1024.0)
        )?;
        writeln!(
            f,
            "  ingest     postgres {:.0} events/s (batch p50 {:.1} ms, p99 {:.1} ms); embedded {:.0} events/s",
            p.ingest_events_per_sec, p.ingest_batch_p50_ms, p.ingest_batch_p99_ms, e.ingest_events_per_sec
        )?;
        writeln!(
            f,
            "  reference  psql \\copy of the same rows: {:.0} rows/s; postgres ingest = {:.2}× of it",
            self.copy_rows_per_sec, self.ingest_vs_copy
        )?;
        if p.archived_parts > 0 {
            writeln!(
                f,
                "  archive    postgres {:.1} MB/s (segment p50 {:.0} ms, p99 {:.0} ms); embedded {:.1} MB/s; postgres = {:.2}× embedded",
                p.archive_mb_per_sec, p.segment_p50_ms, p.segment_p99_ms, e.archive_mb_per_sec, self.archive_vs_embedded
            )?;
        }
        writeln!(
            f,
            "  memory     peak RSS with postgres {:.1} MiB ({} live flows tracked after ingest)",
            p.peak_rss_bytes as f64 / (1024.0 * 1024.0),
            p.tracked_flows
        )
    }
}
