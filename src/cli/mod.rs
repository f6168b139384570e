//! The command line: what each command takes ([`Cli`]), what it does
//! ([`dispatch`]), and how its results print ([`output`]). The work itself is in the
//! rest of the library; this only calls it and prints. `main.rs` parses the arguments
//! and calls [`run`].
//!
//! This is the binary's edge, the one module that reports errors with `anyhow`. It is
//! compiled into the library, not the binary, for build time: a crate that polls the
//! library's futures compiles their state machines again, and with the dispatch in
//! `main.rs` the binary re-compiled most of the pipeline (~45 s of a fresh build).

pub mod dispatch;
pub mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::ConfigError;
use output::{error_chain, UsageError};

#[derive(Parser)]
#[command(
    name = "flow-archiver",
    version,
    about = "Archives finished workflow histories into checksummed, compressed segments and publishes flow.archived events."
)]
pub struct Cli {
    /// Configuration file (default: ./flow-archiver.toml when present).
    #[arg(long, global = true, env = "FLOW_ARCHIVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// Lift S3 Object Lock GOVERNANCE retention on the objects holding the flow
        /// (recorded in the audit trail with --reason). COMPLIANCE retention cannot be
        /// lifted.
        #[arg(long)]
        bypass_governance: bool,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Restore a flow's archived objects from an S3 archive tier (GLACIER,
    /// DEEP_ARCHIVE) so that they can be read; repeat, or --wait, to follow it.
    Restore {
        /// TENANT/FLOW_ID
        flow: String,
        /// How long the restored copy stays readable.
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(i32).range(1..=36500))]
        days: i32,
        /// Retrieval tier: standard, bulk or expedited.
        #[arg(long, default_value = "standard", value_parser = ["standard", "bulk", "expedited"])]
        tier: String,
        /// Wait until every object is readable, showing progress.
        #[arg(long)]
        wait: bool,
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
        /// Compare each object's S3 legal hold with the recorded holds instead
        /// (archive.object_lock on).
        #[arg(long, conflicts_with = "target")]
        holds: bool,
        /// With --holds: set each differing legal hold to what the holds call for.
        #[arg(long, requires = "holds")]
        repair: bool,
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
    Bench(crate::bench::BenchArgs),
    /// List archived flow parts from the index.
    List {
        #[arg(long)]
        tenant: Option<String>,
        /// Flow ids starting with this
        #[arg(long)]
        flow_id_prefix: Option<String>,
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
    /// Serve the HTTP API, GraphQL and the web console (/ui) alone, beside a running
    /// archiver or on its own.
    Serve {
        /// Default: api.listen, else 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Print the GraphQL schema (SDL) that /graphql serves.
    GraphqlSchema,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The state store: apply schema migrations, show its version and counts, check
    /// and repair it.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// The S3 bucket lifecycle the policy calls for: storage-class transitions
    /// ([[archive.transition]]), aborted uploads, replaced versions.
    Lifecycle {
        #[command(subcommand)]
        command: LifecycleCommand,
    },
}

#[derive(Subcommand)]
pub enum LifecycleCommand {
    /// Print the rules and what the retention policy makes of them; change nothing.
    Plan {
        #[arg(long)]
        json: bool,
    },
    /// Put the rules on the bucket, keeping its other rules.
    Apply {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum StateCommand {
    /// Apply the schema migrations the shared (postgres) store lacks; `run` also does
    /// this at start, safely from several instances at once.
    Migrate,
    /// Print the schema version, the migrations applied, and counts.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check the embedded store offline (stop `run` first): the database file, every
    /// journal file and every event's bytes. Exits 1 when it finds damage.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Drop the live state of the flows `state check` finds damaged, and list them;
    /// then the store opens again. Never touches history already verified in the
    /// archive.
    Repair {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum IndexCommand {
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
pub enum ConfigCommand {
    /// Validate the configuration and print the effective values.
    Check,
}

/// Runs a parsed command line to its exit code: 0 ok, 1 failure, 2 bad usage or
/// configuration. Starts the async runtime and the logs and traces, and flushes the
/// traces before returning.
pub fn run(cli: Cli) -> ExitCode {
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
        let mut traces = crate::traces::init(json_logs).map_err(|e| UsageError(e.to_string()))?;
        let result = dispatch::execute(cli).await;
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
