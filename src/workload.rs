//! A realistic synthetic workload for `demo` and `bench`: CloudEvents JSON Lines for
//! many flows across tenants, with mixed terminal statuses, some flows still running,
//! labels, trace context, zero-padded sequences, and events interleaved across flows
//! the way a busy engine emits them.

use std::io::Write;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What was generated.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkloadStats {
    pub flows: u64,
    pub events: u64,
    pub bytes: u64,
    pub running_flows: u64,
}

#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub flows: u64,
    pub events_per_flow: u32,
    pub tenants: u32,
    /// Share of flows left running (no terminal event).
    pub running_share: f64,
    /// Time of the first event (ms); flows spread over `span_ms` after it.
    pub start_ms: i64,
    pub span_ms: i64,
    pub seed: u64,
    /// Prefix making flow ids unique per run.
    pub run_id: String,
    /// Flows interleaved at once (events of this many flows are mixed).
    pub interleave: usize,
}

impl WorkloadSpec {
    /// The benchmarks' workload: `flows` flows of `events` events over 8 tenants, 5%
    /// still running, spread over the 50 minutes before the last hour, seeded so every
    /// run generates the same events.
    pub fn bench(flows: u64, events: u32, now_ms: i64, run_id: &str) -> WorkloadSpec {
        WorkloadSpec {
            flows,
            events_per_flow: events,
            tenants: 8,
            running_share: 0.05,
            start_ms: now_ms - 3_600_000,
            span_ms: 3_000_000,
            seed: 7,
            run_id: run_id.to_string(),
            interleave: 256,
        }
    }

    /// Flows of five events that all finish within a second of `now_ms`: what the
    /// expiry-to-archived latency is measured on.
    pub fn finishing_now(flows: u64, now_ms: i64, run_id: &str) -> WorkloadSpec {
        WorkloadSpec {
            flows,
            events_per_flow: 5,
            tenants: 4,
            running_share: 0.0,
            start_ms: now_ms,
            span_ms: 1000,
            seed: 11,
            run_id: run_id.to_string(),
            interleave: 64,
        }
    }
}

const STEPS: &[&str] = &[
    "fetch",
    "validate",
    "transform",
    "train",
    "evaluate",
    "publish",
    "notify",
];
const TEAMS: &[&str] = &["ml", "data", "payments", "search", "security"];

/// Writes the workload as JSON Lines to `out`.
pub fn generate(spec: &WorkloadSpec, out: &mut impl Write) -> std::io::Result<WorkloadStats> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut stats = WorkloadStats::default();
    let mut next_flow = 0u64;
    // Active flows: (flow number, events emitted, total events, outcome).
    let mut active: Vec<(u64, u32, u32, &str)> = Vec::new();
    let mut line = Vec::with_capacity(1024);
    loop {
        while active.len() < spec.interleave && next_flow < spec.flows {
            let running = rng.random_bool(spec.running_share);
            let outcome = if running {
                "running"
            } else {
                match rng.random_range(0..100) {
                    0..=69 => "completed",
                    70..=84 => "failed",
                    85..=89 => "errored",
                    90..=94 => "cancelled",
                    _ => "timed_out",
                }
            };
            let total = spec.events_per_flow.max(2);
            active.push((next_flow, 0, total, outcome));
            next_flow += 1;
            stats.flows += 1;
            if running {
                stats.running_flows += 1;
            }
        }
        if active.is_empty() {
            break;
        }
        let i = rng.random_range(0..active.len());
        let (flow, emitted, total, outcome) = active[i];
        let seq = emitted + 1;
        let last = seq == total;
        let kind = match (seq, last, outcome) {
            (1, _, _) => "flow.started".to_string(),
            (_, true, "running") => "step.started".to_string(),
            (_, true, o) => format!("flow.{o}"),
            _ => "step.completed".to_string(),
        };
        let tenant = format!("tenant-{}", flow % spec.tenants.max(1) as u64);
        let team = TEAMS[(flow % TEAMS.len() as u64) as usize];
        let step = STEPS[(seq as usize) % STEPS.len()];
        let base = spec.start_ms + (flow as i64 * spec.span_ms) / spec.flows.max(1) as i64;
        let time_ms = base + seq as i64 * 1_500;
        let time = chrono::DateTime::from_timestamp_millis(time_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        let trace = format!("{:032x}", (flow as u128 + 1) * 0x9e37_79b9_7f4a_7c15);
        line.clear();
        write!(
            line,
            r#"{{"specversion":"1.0","id":"{}-{flow}-{seq}","source":"/engines/orchestrator-{}","type":"io.flows.{kind}","subject":"{}-flow-{flow:08}","time":"{time}","tenant":"{tenant}","sequence":"{seq:06}","traceparent":"00-{trace}-{:016x}-01","datacontenttype":"application/json","data":{{"step":"{step}","attempt":{},"labels":{{"team":"{team}","pipeline":"{}"}},"output":{{"rows":{},"duration_ms":{},"message":"step {step} of flow {flow} finished with {} warnings"}}}}}}"#,
            spec.run_id,
            flow % 3,
            spec.run_id,
            seq as u64 + 1,
            rng.random_range(1..3),
            STEPS[(flow as usize) % STEPS.len()],
            rng.random_range(0..1_000_000),
            rng.random_range(5..60_000),
            rng.random_range(0..4),
        )?;
        line.push(b'\n');
        out.write_all(&line)?;
        stats.events += 1;
        stats.bytes += line.len() as u64;
        if last {
            active.swap_remove(i);
        } else {
            active[i].1 = seq;
        }
    }
    out.flush()?;
    Ok(stats)
}
