//! The `flow-archiver` command: parses arguments, sets up logging, calls the library
//! and prints its reports. Exit codes: 0 ok, 1 failure, 2 bad usage or configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use flow_archiver::config::{Config, ConfigError};
use flow_archiver::ops::{self, human_bytes};
use flow_archiver::pipeline::{Pipeline, SweepReport};
use flow_archiver::policy::{Clock, ManualClock, SystemClock};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "flow-archiver",
    version,
    about = "Archives finished workflow histories into checksummed, compressed segments and publishes flow.archived events."
)]
struct Cli {
    /// Configuration file (default: ./flow-archiver.toml when present).
    #[arg(long, global = true, env = "FLOW_ARCHIVER_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: ingest from a source and archive due flows until Ctrl-C.
    Run {
        /// `nats`, `kafka` (topics from the config), `kafka:TOPIC[,TOPIC]`, `file:PATH`
        /// (followed like tail -f) or `stdin`; none archives only.
        #[arg(long, env = "FLOW_ARCHIVER_SOURCE")]
        source: Option<String>,
        /// Stop (draining in-flight work, committing) once no input has arrived for this
        /// long, e.g. `30s`: for cron-style operation (then `sweep` and `purge`).
        #[arg(long, value_parser = humantime::parse_duration)]
        until_idle: Option<std::time::Duration>,
    },
    /// Ingest a file (or `-` for stdin) to its end, then exit.
    Ingest {
        input: String,
        #[arg(long)]
        json: bool,
    },
    /// Archive every due flow once, then exit (cron-friendly).
    Sweep {
        /// Report what would be archived; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Evaluate retention at this time (RFC 3339) instead of now.
        #[arg(long)]
        now: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete archive objects whose every flow part is past its purge date (none under
    /// legal hold), then publish flow.purged for their parts.
    Purge {
        /// Report exactly what would be purged; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Evaluate purge dates at this time (RFC 3339) instead of now.
        #[arg(long)]
        now: Option<String>,
        /// Who runs it, for the audit trail (default: $USER).
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Place a legal hold on a flow: none of its parts is purged or erased until released.
    Hold {
        /// TENANT/FLOW_ID
        flow: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        actor: Option<String>,
    },
    /// Release a flow's legal hold.
    Release {
        /// TENANT/FLOW_ID
        flow: String,
        #[arg(long, default_value = "released")]
        reason: String,
        #[arg(long)]
        actor: Option<String>,
    },
    /// Erase a flow (right to be forgotten): delete its live state and rewrite every
    /// archive object holding it without it. Refused for a flow on legal hold.
    Erase {
        /// TENANT/FLOW_ID
        flow: String,
        /// Why (the request or ticket), for the audit trail.
        #[arg(long)]
        reason: String,
        /// Report exactly what would be erased and moved; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List legal holds.
    Holds {
        #[arg(long)]
        json: bool,
    },
    /// Print the audit trail (archive, purge, hold, release, erase, replay).
    Audit {
        /// Only records at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Archive one live flow now, ignoring its timer.
    Archive {
        /// TENANT/FLOW_ID
        flow: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a live flow as JSON.
    Get {
        /// TENANT/FLOW_ID
        flow: String,
    },
    /// Re-publish an archived flow's events, in order, with their original attributes.
    Replay {
        /// TENANT/FLOW_ID
        flow: String,
        /// `kafka:TOPIC`, `nats:SUBJECT` or `stdout`.
        #[arg(long)]
        to: String,
        #[arg(long)]
        json: bool,
    },
    /// Re-read archive objects and check every checksum.
    Verify {
        /// An object URI or key, or a key prefix; default: the whole archive.
        target: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Generate a realistic workload and run it through the pipeline into ./data.
    Demo {
        #[arg(long, default_value_t = 5000)]
        flows: u64,
        #[arg(long)]
        json: bool,
    },
    /// Measure ingest and archive throughput, latency and memory.
    Bench(flow_archiver::bench::BenchArgs),
    /// List archived flow parts from the index.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        status: Option<String>,
        /// key:value
        #[arg(long)]
        label: Option<String>,
        /// RFC 3339
        #[arg(long)]
        archived_after: Option<String>,
        /// RFC 3339
        #[arg(long)]
        archived_before: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Counts and bytes of the archive by tenant, status and day.
    Stats {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Bring the archive index up to date from the flow.archived records.
    Index {
        #[command(subcommand)]
        command: Option<IndexCommand>,
        /// Start over from the first record.
        #[arg(long)]
        from_beginning: bool,
        #[arg(long)]
        json: bool,
    },
    /// Serve the HTTP API alone (beside a running archiver, or on its own).
    Serve {
        /// Default: api.listen, else 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Rebuild the index from scratch.
    Rebuild {
        /// From the segment manifests alone (when the records are gone).
        #[arg(long)]
        from_archive: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print the effective values.
    Check,
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let json_logs = matches!(cli.log_format, LogFormat::Json);
    let result = runtime.block_on(async {
        // Inside the runtime: the gRPC trace exporter needs it, also while flushing.
        let mut traces =
            flow_archiver::traces::init(json_logs).map_err(|e| UsageError(e.to_string()))?;
        let result = execute(cli).await;
        // Flushing blocks until the exporter is done; keep it off the runtime's workers.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
        result
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            let usage = e.chain().any(|c| c.downcast_ref::<ConfigError>().is_some())
                || e.downcast_ref::<UsageError>().is_some();
            eprintln!("error: {}", error_chain(&e));
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

/// The error and its causes, skipping causes whose text an outer message already
/// includes (library errors often embed their source in their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn parse_time(flag: &str, text: &str) -> anyhow::Result<i64> {
    Ok(chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| UsageError(format!("{flag} {text:?} is not RFC 3339: {e}")))?
        .timestamp_millis())
}

/// `--actor`, else the login name, for the audit trail.
fn actor_or_user(actor: Option<String>) -> String {
    actor
        .or_else(|| std::env::var("USER").ok())
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| "cli".into())
}

fn print_purge(r: &flow_archiver::pipeline::purge::PurgeReport) {
    let verb = if r.dry_run { "would purge" } else { "purged" };
    println!(
        "{verb} {} objects, {} flow parts, {} (at {})",
        r.objects,
        r.flow_parts,
        human_bytes(r.bytes),
        r.now
    );
    for (tenant, t) in &r.by_tenant {
        println!(
            "  {tenant}: {} objects, {} flow parts, {}",
            t.objects,
            t.flow_parts,
            human_bytes(t.bytes)
        );
    }
    if r.dry_run {
        for o in &r.purged {
            println!(
                "  {} ({}): {}",
                o.object_uri,
                human_bytes(o.bytes),
                o.flow_parts.join(" ")
            );
        }
    }
    if r.held_objects > 0 {
        println!(
            "kept {} objects holding flows under legal hold",
            r.held_objects
        );
    }
    if r.recovered > 0 {
        println!("finished {} interrupted purges", r.recovered);
    }
}

fn print_erase(r: &flow_archiver::pipeline::erase::EraseReport) {
    let (erase, rewrite, delete) = if r.dry_run {
        ("would erase", "would rewrite", "would delete")
    } else {
        ("erased", "rewrote", "deleted")
    };
    if r.recovered > 0 {
        println!("finished {} interrupted erasures", r.recovered);
    }
    if !r.live && r.objects.is_empty() {
        println!(
            "found nothing of {}/{} (live or archived): nothing to erase",
            r.tenant, r.flow_id
        );
        return;
    }
    println!(
        "{erase} {}/{}: {} live events, {} archived parts",
        r.tenant, r.flow_id, r.live_events, r.parts_erased
    );
    println!(
        "  {rewrite} {} objects ({} other parts moved), {delete} {} objects, scanned {}",
        r.objects_rewritten, r.parts_relocated, r.objects_deleted, r.objects_scanned
    );
    for o in &r.objects {
        match &o.rewritten_uri {
            Some(new) => println!("  {} -> {}", o.object_uri, new),
            None => println!("  {} (deleted)", o.object_uri),
        }
    }
}

fn load(cli_config: &Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(ops::load_config(cli_config.as_deref())?)
}

fn flow_ref(text: &str) -> anyhow::Result<(String, String)> {
    flow_archiver::flow::FlowRef::parse(text)
        .map(|r| (r.tenant, r.flow_id))
        .map_err(|e| UsageError(e).into())
}

fn progress(len: Option<u64>, hidden: bool, what: &str) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let template = if len.is_some() {
        "{spinner} {msg} [{bar:30}] {pos}/{len} ({eta})"
    } else {
        "{spinner} {msg} {pos} {per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A report as JSON (`--json`) or as its readable summary.
fn print_report(
    report: &(impl serde::Serialize + std::fmt::Display),
    json: bool,
) -> anyhow::Result<()> {
    if json {
        print_json(report)
    } else {
        print!("{report}");
        Ok(())
    }
}

fn print_sweep(report: &SweepReport) {
    let verb = if report.dry_run {
        "would archive"
    } else {
        "archived"
    };
    println!(
        "{verb} {} flow parts ({} events, {} raw) in {} segments{}",
        report.flow_parts,
        report.events,
        human_bytes(report.raw_bytes),
        report.segments,
        if report.dry_run {
            String::new()
        } else {
            format!(
                " -> {} stored ({:.1}% of raw) in {:.2}s",
                human_bytes(report.stored_bytes),
                100.0 * report.stored_bytes as f64 / report.raw_bytes.max(1) as f64,
                report.seconds
            )
        }
    );
    if report.recovered_intents > 0 {
        println!("resumed {} interrupted segments", report.recovered_intents);
    }
    for planned in &report.planned {
        println!(
            "  {} ({} flows, {} events, {})",
            planned.object_key,
            planned.flows.len(),
            planned.events,
            human_bytes(planned.raw_bytes)
        );
    }
    for failure in &report.failures {
        println!("FAILED: {failure}");
    }
}

async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let config = load(&cli.config)?;
            print!("{}", config.to_toml());
            eprintln!("configuration is valid");
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { source, until_idle } => {
            if until_idle.is_some() && source.is_none() {
                return Err(UsageError("--until-idle needs a --source to wait on".into()).into());
            }
            let config = load(&cli.config)?;
            let source = match source.as_deref() {
                Some(spec) => Some(
                    flow_archiver::source::open_for_run(spec, &config)
                        .await
                        .map_err(|e| match e {
                            flow_archiver::source::SourceError::Spec(_) => {
                                anyhow::Error::from(UsageError(e.to_string()))
                            }
                            e => e.into(),
                        })?,
                ),
                None => None,
            };
            let pipeline = Arc::new(Pipeline::open(config, Arc::new(SystemClock)).await?);
            let cancel = tokio_util::sync::CancellationToken::new();
            let on_signal = cancel.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("Shutdown requested; draining in-flight work.");
                on_signal.cancel();
            });
            // The API and the index follow the pipeline when configured.
            let mut side_tasks = Vec::new();
            let index_path = pipeline.config.index.path.clone();
            let index = Arc::new(flow_archiver::index::Index::open(&index_path)?);
            {
                let (index, config, cancel) =
                    (index.clone(), pipeline.config.clone(), cancel.clone());
                side_tasks.push(tokio::spawn(async move {
                    flow_archiver::index::builder::from_destination(
                        index,
                        &config,
                        false,
                        Some(cancel),
                    )
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
                }));
            }
            if let Some(listen) = pipeline.config.api.listen.clone() {
                let addr = flow_archiver::config::check_listen(&pipeline.config.api, &listen)?;
                let state = Arc::new(flow_archiver::api::ApiState {
                    index: index.clone(),
                    objects: pipeline.objects.clone(),
                    store: Some(pipeline.store.clone()),
                    pipeline: Some(pipeline.clone()),
                    auth: pipeline.config.api.clone(),
                });
                let cancel = cancel.clone();
                side_tasks.push(tokio::spawn(async move {
                    flow_archiver::api::serve(state, addr, cancel)
                        .await
                        .with_context(|| format!("cannot serve on {addr}"))
                }));
            }
            if let Some(idle) = until_idle {
                let (pipeline, cancel) = (pipeline.clone(), cancel.clone());
                tokio::spawn(async move {
                    while !cancel.is_cancelled() {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        if pipeline.input_idle_for() >= idle {
                            tracing::info!(?idle, "No input for the idle period; stopping.");
                            cancel.cancel();
                        }
                    }
                });
            }
            let report = pipeline.run(source, cancel.clone()).await;
            cancel.cancel();
            for task in side_tasks {
                task.await??;
            }
            let report = report?;
            if matches!(cli.log_format, LogFormat::Json) {
                // Every stderr line stays JSON for log shippers.
                tracing::info!(
                    records = report.ingest.records,
                    ingested = report.ingest.stored,
                    duplicates = report.ingest.duplicates,
                    dead_lettered = report.ingest.dead_lettered,
                    flow_parts = report.sweep.flow_parts,
                    segments = report.sweep.segments,
                    "Stopped."
                );
            } else {
                eprintln!(
                    "stopped: read {} records, ingested {} events ({} duplicates, {} dead-lettered); archived {} flow parts in {} segments",
                    report.ingest.records, report.ingest.stored, report.ingest.duplicates,
                    report.ingest.dead_lettered, report.sweep.flow_parts, report.sweep.segments
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { flow, to, json } => {
            let (tenant, flow_id) = flow_ref(&flow)?;
            let target = ops::ReplayTarget::parse(&to).map_err(UsageError)?;
            let pipeline = Pipeline::open(load(&cli.config)?, Arc::new(SystemClock)).await?;
            let report = ops::replay(&pipeline, &tenant, &flow_id, &target).await?;
            let record = flow_archiver::audit::AuditRecord::new(
                "replay",
                &actor_or_user(None),
                SystemClock.now_ms(),
            )
            .flow(&tenant, &flow_id)
            .count("events", report.events)
            .count("flow_parts", report.parts.len() as u64);
            pipeline.audit(record).await?;
            // With `--to stdout` the events own stdout; the summary goes to stderr.
            if json && target != ops::ReplayTarget::Stdout {
                print_json(&report)?;
            } else {
                eprintln!(
                    "replayed {}/{}: {} events ({}) from {} parts to {}",
                    report.tenant,
                    report.flow_id,
                    report.events,
                    human_bytes(report.bytes),
                    report.parts.len(),
                    report.target
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest { input, json } => {
            let pipeline = Pipeline::open(load(&cli.config)?, Arc::new(SystemClock)).await?;
            let bar = progress(None, json, "ingesting events");
            let totals =
                ops::ingest(&pipeline, &input, &mut |t| bar.set_position(t.records)).await?;
            bar.finish_and_clear();
            if json {
                print_json(&totals)?;
            } else {
                println!(
                    "ingested {} records ({}): {} stored, {} duplicates, {} dead-lettered{}",
                    totals.records,
                    human_bytes(totals.bytes),
                    totals.stored,
                    totals.duplicates,
                    totals.dead_lettered,
                    if totals.dead_lettered > 0 {
                        format!(" -> {}", pipeline.config.dead_letter.path.display())
                    } else {
                        String::new()
                    }
                );
                for (reason, n) in &totals.dead_letter_reasons {
                    println!("  {reason}: {n}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sweep { dry_run, now, json } => {
            let now_ms = match now {
                Some(text) => parse_time("--now", &text)?,
                None => SystemClock.now_ms(),
            };
            let pipeline =
                Pipeline::open(load(&cli.config)?, Arc::new(ManualClock::new(now_ms))).await?;
            let report = if dry_run {
                pipeline.dry_run(now_ms).await?
            } else {
                let bar = progress(None, json, "archiving flow parts");
                let r = pipeline
                    .sweep(now_ms, &mut |r| bar.set_position(r.flow_parts))
                    .await?;
                bar.finish_and_clear();
                r
            };
            if json {
                print_json(&report)?;
            } else {
                print_sweep(&report);
            }
            Ok(if report.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Purge {
            dry_run,
            now,
            actor,
            json,
        } => {
            let now_ms = match now {
                Some(text) => parse_time("--now", &text)?,
                None => SystemClock.now_ms(),
            };
            let pipeline =
                Pipeline::open(load(&cli.config)?, Arc::new(ManualClock::new(now_ms))).await?;
            let report = pipeline
                .purge(now_ms, dry_run, &actor_or_user(actor))
                .await?;
            if json {
                print_json(&report)?;
            } else {
                print_purge(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Hold {
            flow,
            reason,
            actor,
        } => {
            let (tenant, flow_id) = flow_ref(&flow)?;
            if reason.trim().is_empty() {
                return Err(UsageError("--reason must say why the flow is held".into()).into());
            }
            let pipeline = Pipeline::open(load(&cli.config)?, Arc::new(SystemClock)).await?;
            pipeline
                .hold(&tenant, &flow_id, &reason, &actor_or_user(actor))
                .await?;
            println!("{tenant}/{flow_id} is on hold: {reason}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Release {
            flow,
            reason,
            actor,
        } => {
            let (tenant, flow_id) = flow_ref(&flow)?;
            let pipeline = Pipeline::open(load(&cli.config)?, Arc::new(SystemClock)).await?;
            pipeline
                .release(&tenant, &flow_id, &reason, &actor_or_user(actor))
                .await?;
            println!("{tenant}/{flow_id} is released");
            Ok(ExitCode::SUCCESS)
        }
        Command::Erase {
            flow,
            reason,
            dry_run,
            actor,
            json,
        } => {
            let (tenant, flow_id) = flow_ref(&flow)?;
            if reason.trim().is_empty() {
                return Err(UsageError("--reason must say why the flow is erased".into()).into());
            }
            let pipeline = Pipeline::open(load(&cli.config)?, Arc::new(SystemClock)).await?;
            let report = pipeline
                .erase(&tenant, &flow_id, &reason, &actor_or_user(actor), dry_run)
                .await?;
            if json {
                print_json(&report)?;
            } else {
                print_erase(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Holds { json } => {
            let pipeline = Pipeline::open(load(&cli.config)?, Arc::new(SystemClock)).await?;
            let holds = pipeline.store.holds()?;
            if json {
                print_json(&holds)?;
            } else if holds.is_empty() {
                println!("no holds");
            } else {
                for h in &holds {
                    println!(
                        "{}/{}  since {}  by {}: {}",
                        h.tenant,
                        h.flow_id,
                        flow_archiver::time::rfc3339_ms(h.at_ms),
                        h.actor,
                        h.reason
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { since, json } => {
            let since_ms = since.map(|t| parse_time("--since", &t)).transpose()?;
            let config = load(&cli.config)?;
            let records = flow_archiver::audit::read(&config.audit.path, since_ms)?;
            if json {
                print_json(&records)?;
            } else {
                for r in &records {
                    let flow = match (&r.tenant, &r.flow_id) {
                        (Some(t), Some(f)) => format!(" {t}/{f}"),
                        (Some(t), None) => format!(" {t}"),
                        _ => String::new(),
                    };
                    let counts: Vec<String> =
                        r.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "{}  {:<8} {}{}{}{}{}",
                        r.time,
                        r.action,
                        r.actor,
                        flow,
                        r.reason
                            .as_deref()
                            .map(|x| format!(" reason={x:?}"))
                            .unwrap_or_default(),
                        r.object_uri
                            .as_deref()
                            .map(|x| format!(" {x}"))
                            .unwrap_or_default(),
                        if counts.is_empty() {
                            String::new()
                        } else {
                            format!(" {}", counts.join(" "))
                        }
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Archive { flow, json } => {
            let (tenant, flow_id) = flow_ref(&flow)?;
            let pipeline = Pipeline::open(load(&cli.config)?, Arc::new(SystemClock)).await?;
            let report = pipeline.archive_flow(&tenant, &flow_id).await?;
            if json {
                print_json(&report)?;
            } else {
                print_sweep(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { flow } => {
            let (tenant, flow_id) = flow_ref(&flow)?;
            let reader = ops::Reader::open(load(&cli.config)?)?;
            if let Some(store) = &reader.store {
                if let Some(v) = ops::get_flow(store, &tenant, &flow_id).await? {
                    print_json(&v)?;
                    return Ok(ExitCode::SUCCESS);
                }
            }
            reader.catch_up().await?;
            match ops::archived_flow(&reader.index, &reader.objects, &tenant, &flow_id).await? {
                Some(v) => {
                    print_json(&v)?;
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    if reader.store.is_none() {
                        eprintln!("no archived flow {tenant}/{flow_id} (live flows are held by the running archiver: ask its API)");
                    } else {
                        eprintln!("no flow {tenant}/{flow_id}");
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::List {
            tenant,
            status,
            label,
            archived_after,
            archived_before,
            limit,
            cursor,
            json,
        } => {
            let reader = ops::Reader::open(load(&cli.config)?)?;
            reader.catch_up().await?;
            let when = |name: &str, t: Option<String>| -> anyhow::Result<Option<i64>> {
                t.map(|t| {
                    chrono::DateTime::parse_from_rfc3339(&t)
                        .map(|d| d.timestamp_micros())
                        .map_err(|e| UsageError(format!("--{name} {t:?}: {e}")).into())
                })
                .transpose()
            };
            let label = match label {
                None => None,
                Some(l) => Some(
                    l.split_once(':')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| UsageError("--label takes key:value".into()))?,
                ),
            };
            let query = flow_archiver::index::ListQuery {
                tenant,
                status,
                label,
                archived_after: when("archived-after", archived_after)?,
                archived_before: when("archived-before", archived_before)?,
                limit,
                cursor,
            };
            let page = reader.index.list(&query)?;
            if json {
                print_json(&page)?;
            } else {
                for p in &page.items {
                    println!(
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
                    );
                }
                if let Some(c) = &page.next_cursor {
                    println!("more: --cursor {c}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { tenant, json } => {
            let reader = ops::Reader::open(load(&cli.config)?)?;
            reader.catch_up().await?;
            let stats = reader.index.stats(tenant.as_deref())?;
            if json {
                print_json(&stats)?;
            } else {
                println!(
                    "{} flow parts, {} events, {} raw -> {} stored (ratio {:.3})",
                    stats.flow_parts,
                    stats.events,
                    human_bytes(stats.raw_bytes),
                    human_bytes(stats.stored_bytes),
                    stats.compression_ratio
                );
                for r in &stats.by_tenant_status_day {
                    println!(
                        "  {} {} {}: {} parts, {} events, {} -> {}",
                        r.day,
                        r.tenant,
                        r.status,
                        r.flow_parts,
                        r.events,
                        human_bytes(r.raw_bytes),
                        human_bytes(r.stored_bytes)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Index {
            command,
            from_beginning,
            json,
        } => {
            let reader = ops::Reader::open(load(&cli.config)?)?;
            let (report, what) = match command {
                Some(IndexCommand::Rebuild {
                    from_archive: true,
                    json: j,
                }) => {
                    let bar = progress(Some(0), j || json, "reading manifests");
                    let r = flow_archiver::index::builder::from_archive(
                        reader.index.clone(),
                        &reader.objects,
                        &mut |done, total| {
                            bar.set_length(total);
                            bar.set_position(done);
                        },
                    )
                    .await?;
                    bar.finish_and_clear();
                    (r, "segment manifests")
                }
                other => {
                    let start_over =
                        from_beginning || matches!(other, Some(IndexCommand::Rebuild { .. }));
                    let r = flow_archiver::index::builder::from_destination(
                        reader.index.clone(),
                        &reader.config,
                        start_over,
                        None,
                    )
                    .await?;
                    (r, "flow.archived records")
                }
            };
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "indexed {} flow parts from {} ({} records read, {} skipped) in {:.2}s ({:.0} records/s)",
                    report.applied, what, report.records, report.skipped, report.seconds,
                    report.records as f64 / report.seconds.max(1e-9)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { listen } => {
            let config = load(&cli.config)?;
            let listen = listen
                .or_else(|| config.api.listen.clone())
                .unwrap_or_else(|| "127.0.0.1:8080".into());
            let addr = flow_archiver::config::check_listen(&config.api, &listen)?;
            let reader = ops::Reader::open(config)?;
            if reader.store.is_none() {
                tracing::warn!(
                    "The state store is held by a running archiver: serving archived flows only."
                );
            }
            let cancel = tokio_util::sync::CancellationToken::new();
            let on_signal = cancel.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                on_signal.cancel();
            });
            let indexer = {
                let (index, config, cancel) =
                    (reader.index.clone(), reader.config.clone(), cancel.clone());
                tokio::spawn(async move {
                    flow_archiver::index::builder::from_destination(
                        index,
                        &config,
                        false,
                        Some(cancel),
                    )
                    .await
                })
            };
            flow_archiver::api::serve(Arc::new(reader.api_state()), addr, cancel.clone())
                .await
                .with_context(|| format!("cannot serve on {addr}"))?;
            cancel.cancel();
            indexer.await??;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { target, json } => {
            // The state store is not needed: verify runs beside a live archiver.
            let reader = ops::Reader::open(load(&cli.config)?)?;
            let bar = progress(Some(0), json, "verifying objects");
            let report = ops::verify(
                &reader.objects,
                &reader.config,
                target.as_deref(),
                &mut |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                },
            )
            .await?;
            bar.finish_and_clear();
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "checked {} objects, {} flow parts: {}",
                    report.objects,
                    report.flow_parts,
                    if report.ok() {
                        "all checksums match".to_string()
                    } else {
                        format!("{} problems", report.problems.len())
                    }
                );
                for p in &report.problems {
                    println!(
                        "  {} {}: {}",
                        p.key,
                        p.flow.as_deref().unwrap_or("(object)"),
                        p.problem
                    );
                }
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Demo { flows, json } => {
            let config = load(&cli.config)?;
            let report = ops::demo(config, flows).await.context("demo failed")?;
            if json {
                print_json(&report)?;
            } else {
                let s = &report.sweep;
                println!("flow-archiver demo");
                println!(
                    "  workload      {} flows ({} still running), {} events, {} in {}",
                    report.workload.flows,
                    report.workload.running_flows,
                    report.workload.events,
                    human_bytes(report.workload.bytes),
                    report.input_file
                );
                println!("  ingest        {} stored, {} duplicates, {} dead-lettered in {:.2}s ({:.0} events/s)", report.ingest.stored, report.ingest.duplicates, report.ingest.dead_lettered, report.ingest_seconds, report.ingest.stored as f64 / report.ingest_seconds.max(1e-9));
                println!(
                    "  archived      {} flow parts, {} events in {} segments in {:.2}s",
                    s.flow_parts, s.events, s.segments, s.seconds
                );
                println!(
                    "  bytes         {} raw -> {} stored (ratio {:.3}, {:.1}x smaller)",
                    human_bytes(s.raw_bytes),
                    human_bytes(s.stored_bytes),
                    s.stored_bytes as f64 / s.raw_bytes.max(1) as f64,
                    s.raw_bytes as f64 / s.stored_bytes.max(1) as f64
                );
                println!(
                    "  left live     {} flows (running, or not idle long enough yet)",
                    report.live_flows
                );
                println!("  objects       {}", report.archive);
                println!("  records       {}", report.published);
                println!("  verify with   cargo run --release -- verify");
                for failure in &s.failures {
                    println!("  FAILED: {failure}");
                }
            }
            Ok(if report.sweep.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Bench(args) => {
            use flow_archiver::bench;
            if args.api {
                print_report(&bench::api::run(&args).await?, args.json)?;
            } else if let Some(url) = &args.nats {
                print_report(&bench::nats::run(&args, url).await?, args.json)?;
            } else if let Some(brokers) = &args.kafka {
                print_report(&bench::kafka::run(&args, brokers).await?, args.json)?;
            } else {
                print_report(&bench::run(&args).await?, args.json)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// glibc gives each allocating thread its own arena (up to 8 per core) and keeps freed
/// memory in it. Measured with `bench` (30k flows x 10 events, blocking pool capped at
/// 8 threads): 4 arenas keep throughput within noise of the default while peak RSS
/// falls from ~210 MiB to ~118 MiB; 2 arenas save more memory but cost ~25% of ingest.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator tuning; called before other threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 4);
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
