//! Each command: load the configuration, call the library, print the report, choose
//! the exit code (0 ok, 1 failure, 2 bad usage or configuration).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::flow::FlowRef;
use crate::index::ListParams;
use crate::pipeline::{HoldList, Pipeline};
use crate::policy::{Clock, ManualClock, SystemClock};
use crate::read::Reader;
use crate::replay::ReplayTarget;
use crate::service::{RunOptions, ServiceError};
use crate::source::SourceError;

use super::output::{print_json, print_report, progress, usage};
use super::{Cli, Command, ConfigCommand, IndexCommand, LifecycleCommand, LogFormat, StateCommand};

pub async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = &cli.config;
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            print!("{}", load(config)?.to_toml());
            eprintln!("configuration is valid");
            Ok(ExitCode::SUCCESS)
        }
        Command::State { command } => state(load(config)?, command),
        Command::Lifecycle { command } => {
            let config = load(config)?;
            let (plan, json) = match command {
                LifecycleCommand::Plan { json } => (crate::lifecycle::plan(&config)?, json),
                LifecycleCommand::Apply { json } => {
                    let objects = crate::archive::ArchiveStore::from_config(&config.archive)?;
                    (crate::lifecycle::apply(&config, &objects).await?, json)
                }
            };
            print_report(&plan, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { source, until_idle } => {
            run(load(config)?, source, until_idle, cli.log_format).await
        }
        Command::Ingest { input, json } => {
            let pipeline = open(config, None).await?;
            let bar = progress(None, json, "ingesting events");
            let totals = pipeline
                .ingest_input(&input, &mut |t| bar.set_position(t.records))
                .await?;
            bar.finish_and_clear();
            if json {
                print_json(&totals)?;
            } else {
                print!("{}", totals.summary(&pipeline.config().dead_letter.path));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sweep { dry_run, now, json } => {
            let now_ms = now_or(now.as_deref())?;
            let pipeline = open(config, Some(now_ms)).await?;
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
            print_report(&report, json)?;
            Ok(exit_code(report.failures.is_empty()))
        }
        Command::Archive { flow, json } => {
            let flow = flow_ref(&flow)?;
            let pipeline = open(config, None).await?;
            let report = pipeline.archive_flow(&flow.tenant, &flow.flow_id).await?;
            print_report(&report, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Purge {
            dry_run,
            now,
            actor,
            json,
        } => {
            let now_ms = now_or(now.as_deref())?;
            let pipeline = open(config, Some(now_ms)).await?;
            let report = pipeline
                .purge(now_ms, dry_run, &actor_or_user(actor))
                .await?;
            print_report(&report, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Hold {
            flow,
            reason,
            actor,
        } => {
            let flow = flow_ref(&flow)?;
            if reason.trim().is_empty() {
                return Err(usage("--reason must say why the flow is held"));
            }
            let pipeline = open(config, None).await?;
            pipeline
                .hold(&flow.tenant, &flow.flow_id, &reason, &actor_or_user(actor))
                .await?;
            println!("{flow} is on hold: {reason}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Release {
            flow,
            reason,
            actor,
        } => {
            let flow = flow_ref(&flow)?;
            let pipeline = open(config, None).await?;
            pipeline
                .release(&flow.tenant, &flow.flow_id, &reason, &actor_or_user(actor))
                .await?;
            println!("{flow} is released");
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore {
            flow,
            days,
            tier,
            wait,
            json,
        } => {
            let flow = flow_ref(&flow)?;
            let reader = Reader::open(load(config)?)?;
            // S3 spells tiers capitalised.
            let tier = format!("{}{}", tier[..1].to_uppercase(), &tier[1..]);
            let mut report = reader
                .restore(&flow.tenant, &flow.flow_id, days, &tier, true)
                .await?;
            if report.objects.is_empty() {
                return Err(anyhow::anyhow!(
                    "no archived part of {}/{} in the index",
                    flow.tenant,
                    flow.flow_id
                ));
            }
            if wait && !report.readable() {
                let bar = progress(Some(report.objects.len() as u64), json, "restoring objects");
                while !report.readable() {
                    tokio::time::sleep(crate::restore::POLL).await;
                    report = reader
                        .restore(&flow.tenant, &flow.flow_id, days, &tier, false)
                        .await?;
                    let ready = report
                        .objects
                        .iter()
                        .filter(|o| matches!(o.state, "not_needed" | "restored"))
                        .count();
                    bar.set_position(ready as u64);
                }
                bar.finish_and_clear();
            }
            print_report(&report, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Holds { json } => {
            let holds = open(config, None).await?.holds().await?;
            if json {
                print_json(&holds)?;
            } else {
                print!("{}", HoldList(&holds));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Erase {
            flow,
            reason,
            dry_run,
            bypass_governance,
            actor,
            json,
        } => {
            let flow = flow_ref(&flow)?;
            if reason.trim().is_empty() {
                return Err(usage("--reason must say why the flow is erased"));
            }
            let pipeline = open(config, None).await?;
            let report = pipeline
                .erase(
                    &flow.tenant,
                    &flow.flow_id,
                    &reason,
                    &actor_or_user(actor),
                    dry_run,
                    bypass_governance,
                )
                .await?;
            print_report(&report, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { since, json } => {
            let since_ms = since.map(|t| parse_time("--since", &t)).transpose()?;
            let records = crate::audit::read(&load(config)?.audit.path, since_ms)?;
            if json {
                print_json(&records)?;
            } else {
                for r in &records {
                    println!("{r}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { flow, to, json } => {
            let flow = flow_ref(&flow)?;
            let target = ReplayTarget::parse(&to).map_err(usage)?;
            let pipeline = open(config, None).await?;
            let report = crate::replay::replay(
                &pipeline,
                &flow.tenant,
                &flow.flow_id,
                &target,
                &actor_or_user(None),
            )
            .await?;
            // With `--to stdout` the events own stdout; the summary goes to stderr.
            if json && target != ReplayTarget::Stdout {
                print_json(&report)?;
            } else {
                eprint!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { flow } => {
            let flow = flow_ref(&flow)?;
            let reader = Reader::open(load(config)?)?;
            if let Some(live) = reader.live_flow(&flow.tenant, &flow.flow_id).await? {
                print_json(&live)?;
                return Ok(ExitCode::SUCCESS);
            }
            reader.catch_up().await?;
            match reader.archived_flow(&flow.tenant, &flow.flow_id).await? {
                Some(archived) => {
                    print_json(&archived)?;
                    Ok(ExitCode::SUCCESS)
                }
                None if reader.sees_live_flows() => {
                    eprintln!("no flow {flow}");
                    Ok(ExitCode::from(1))
                }
                None => {
                    eprintln!("no archived flow {flow} (live flows are held by the running archiver: ask its API)");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::List {
            tenant,
            flow_id_prefix,
            status,
            label,
            archived_after,
            archived_before,
            limit,
            cursor,
            json,
        } => {
            let reader = Reader::open(load(config)?)?;
            reader.catch_up().await?;
            let query = ListParams {
                tenant,
                flow_id_prefix,
                status,
                label,
                archived_after,
                archived_before,
                limit: Some(limit),
                cursor,
                labels: Vec::new(),
            }
            .parse()
            .map_err(|e| usage(format!("--{} {}", e.param.replace('_', "-"), e.problem)))?;
            print_report(&reader.index().list(&query)?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { tenant, json } => {
            let reader = Reader::open(load(config)?)?;
            reader.catch_up().await?;
            print_report(&reader.index().stats(tenant.as_deref())?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Index {
            command,
            from_beginning,
            json,
        } => {
            let reader = Reader::open(load(config)?)?;
            let (report, from) = match command {
                Some(IndexCommand::Rebuild {
                    from_archive: true,
                    json: j,
                }) => {
                    let bar = progress(Some(0), j || json, "reading manifests");
                    let r = crate::index::builder::from_archive(
                        reader.index().clone(),
                        reader.objects(),
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
                    let r = crate::index::builder::from_destination(
                        reader.index().clone(),
                        reader.config(),
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
                print!("{}", report.summary(from));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { listen } => serve(load(config)?, listen).await,
        Command::GraphqlSchema => {
            print!("{}", crate::api::graphql_sdl());
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            target,
            holds,
            repair,
            json,
        } => {
            // The state store is not needed: verify runs beside a live archiver.
            let reader = Reader::open(load(config)?)?;
            if holds {
                let bar = progress(Some(0), json, "checking legal holds");
                let report = reader
                    .check_holds(repair, &mut |done, total| {
                        bar.set_length(total);
                        bar.set_position(done);
                    })
                    .await?;
                bar.finish_and_clear();
                print_report(&report, json)?;
                return Ok(exit_code(report.ok()));
            }
            let bar = progress(Some(0), json, "verifying objects");
            let report = reader
                .verify(target.as_deref(), &mut |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                })
                .await?;
            bar.finish_and_clear();
            print_report(&report, json)?;
            Ok(exit_code(report.ok()))
        }
        Command::Demo { flows, json } => {
            let report = crate::demo::demo(load(config)?, flows)
                .await
                .context("demo failed")?;
            print_report(&report, json)?;
            Ok(exit_code(report.ok()))
        }
        Command::Bench(args) => {
            use crate::bench;
            if args.api {
                print_report(&bench::api::run(&args).await?, args.json)?;
            } else if let Some(url) = &args.state {
                print_report(&bench::state::run(&args, url).await?, args.json)?;
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

/// `run`: the service until a signal (or `--until-idle`), then a summary on stderr.
async fn run(
    config: Config,
    source: Option<String>,
    until_idle: Option<std::time::Duration>,
    log_format: LogFormat,
) -> anyhow::Result<ExitCode> {
    if until_idle.is_some() && source.is_none() {
        return Err(usage("--until-idle needs a --source to wait on"));
    }
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("Shutdown requested; draining in-flight work.");
        on_signal.cancel();
    });
    let options = RunOptions { source, until_idle };
    let report = crate::service::run(config, options, cancel)
        .await
        .map_err(service_error)?;
    if matches!(log_format, LogFormat::Json) {
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
        eprint!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `serve`: the API alone, with its own index follower, until a signal.
async fn serve(config: Config, listen: Option<String>) -> anyhow::Result<ExitCode> {
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    crate::service::serve(config, listen, cancel)
        .await
        .map_err(service_error)?;
    Ok(ExitCode::SUCCESS)
}

/// A service's error, keeping bad configuration and a bad source spec usage errors
/// (exit 2).
fn service_error(e: ServiceError) -> anyhow::Error {
    match e {
        ServiceError::Config(e) => e.into(),
        ServiceError::Source(SourceError::Spec(_)) => usage(e.to_string()),
        e => e.into(),
    }
}

fn load(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(Config::load_from_env(path.as_deref())?)
}

/// The pipeline over the configured stores; `now_ms` pins its clock (`--now`).
async fn open(path: &Option<PathBuf>, now_ms: Option<i64>) -> anyhow::Result<Pipeline> {
    let clock: Arc<dyn Clock> = match now_ms {
        Some(ms) => Arc::new(ManualClock::new(ms)),
        None => Arc::new(SystemClock),
    };
    Ok(Pipeline::open(load(path)?, clock).await?)
}

fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn flow_ref(text: &str) -> anyhow::Result<FlowRef> {
    FlowRef::parse(text).map_err(usage)
}

fn parse_time(flag: &str, text: &str) -> anyhow::Result<i64> {
    crate::time::parse_rfc3339_ms(text)
        .map_err(|e| usage(format!("{flag} {text:?} is not RFC 3339: {e}")))
}

/// `--now`, else the present.
fn now_or(now: Option<&str>) -> anyhow::Result<i64> {
    match now {
        Some(text) => parse_time("--now", text),
        None => Ok(SystemClock.now_ms()),
    }
}

/// `--actor`, else the login name, for the audit trail.
fn actor_or_user(actor: Option<String>) -> String {
    actor
        .or_else(|| std::env::var("USER").ok())
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| "cli".into())
}

/// Ctrl-C or SIGTERM.
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

/// `state migrate` and `state status`. The embedded store has no migrations to apply
/// and reports its counts.
fn state(config: Config, command: StateCommand) -> anyhow::Result<ExitCode> {
    use crate::config::StateBackend;
    use crate::state::{PostgresStore, StateStore};
    match (config.state.backend, command) {
        (StateBackend::Postgres, StateCommand::Migrate) => {
            let store = PostgresStore::connect(&config.state)?;
            let applied = store.migrate()?;
            let status = store.status()?;
            match applied.is_empty() {
                true => println!("schema is at version {}: nothing to apply", status.version),
                false => println!(
                    "applied migration(s) {:?}: schema is at version {}",
                    applied, status.version
                ),
            }
        }
        (StateBackend::Postgres, StateCommand::Status { json }) => {
            let status = PostgresStore::connect(&config.state)?.status()?;
            print_report(&status, json)?;
        }
        (StateBackend::Embedded, StateCommand::Migrate) => {
            println!("the embedded store has no migrations (state.backend = \"embedded\")");
        }
        (StateBackend::Postgres, StateCommand::Check { .. } | StateCommand::Repair { .. }) => {
            return Err(usage(
                "state check and state repair are for the embedded store; PostgreSQL checks \
                 its own storage (pg_amcheck, and its WAL replays after a crash)",
            ));
        }
        (StateBackend::Embedded, StateCommand::Check { json }) => {
            let bar = progress(None, json, "checking the state store");
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            let found = crate::state::EmbeddedStore::check(&config.state);
            bar.finish_and_clear();
            let found = found?;
            print_report(&found, json)?;
            if !found.is_clean() {
                return Ok(ExitCode::from(1));
            }
        }
        (StateBackend::Embedded, StateCommand::Repair { json }) => {
            let bar = progress(None, json, "checking and repairing the state store");
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            let repaired = crate::state::EmbeddedStore::repair(&config.state);
            bar.finish_and_clear();
            let (_, repaired) = repaired?;
            print_report(&repaired, json)?;
        }
        (StateBackend::Embedded, StateCommand::Status { json }) => {
            let stats = crate::state::EmbeddedStore::open(&config.state)?.stats()?;
            if json {
                print_json(&stats)?;
            } else {
                println!("embedded store at {}", config.state.path.display());
                println!("live flows        {}", stats.live_flows);
                println!("stored events     {}", stats.stored_events);
                println!("timers            {}", stats.timers);
                println!("archive intents   {}", stats.pending_intents);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
