//! S3 outages during `run` (`docs/reliability.md`, "Outages"): the endpoint answering
//! 503 and 500 (through [`FaultProxy`]), the server stopped for 30 s, and the server
//! hung (SIGSTOP). Meanwhile ingest goes on, failures show in the metrics and the log,
//! nothing is deleted from the live state, and once the server is back every flow is
//! archived exactly once and verifies. Also a trace collector that hangs or is gone.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const BUCKET: &str = "flow-archive";
const FLOWS_PER_BATCH: usize = 40;

/// `FLOWS_PER_BATCH` terminal flows of 3 events, due at once (1 s retention).
fn batch(n: usize) -> String {
    let mut out = String::new();
    for f in 0..FLOWS_PER_BATCH {
        let flow = format!("flow-{n}-{f:02}");
        for seq in 1..=3u64 {
            let kind = if seq == 3 { "completed" } else { "step" };
            let id = format!("{flow}-{seq}");
            out.push_str(&ce("acme", &flow, &id, seq, kind, "2026-01-01T00:00:00Z"));
            out.push('\n');
        }
    }
    out
}

fn metric(port: u16, name: &str) -> i64 {
    metric_of(port, name).unwrap_or(0)
}

fn archived(port: u16) -> i64 {
    metric(port, "flow_archiver_flow_parts_archived_total")
}

fn storage_failures(port: u16) -> i64 {
    metric(port, "flow_archiver_failures_total{stage=\"storage\"}")
}

fn wait_archived(port: u16, n: usize, limit: Duration) {
    eventually(limit, &format!("{n} flow parts archived"), || {
        (archived(port) == n as i64).then_some(())
    });
}

/// The batch's first flow is still live in the state store: nothing went early.
fn still_live(port: u16, n: usize) {
    let (code, body) = http_get(
        &format!("http://127.0.0.1:{port}/flows/acme/flow-{n}-00"),
        "",
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["archived"], false, "{body}");
}

#[test]
fn s3_failing_stopped_for_30s_and_hung_delays_archiving_and_loses_nothing() {
    let mut s3 = S3Server::start(BUCKET);
    let proxy = FaultProxy::start(s3.port);
    let port = free_port();
    let mut env = Env::new(&format!(
        r#"
[archive]
bucket = "{BUCKET}"
endpoint = "http://127.0.0.1:{}"
segment_max_flows = 20
request_timeout = "2s"
[retention]
completed = "1s"
[scheduler]
interval = "200ms"
[api]
listen = "127.0.0.1:{port}"
"#,
        proxy.port
    ));
    env.vars = vec![
        ("AWS_ACCESS_KEY_ID".into(), s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY".into(), s3.secret_key.clone()),
        ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
    ];
    env.write("events.jsonl", batch(0).as_bytes());
    let mut input = std::fs::OpenOptions::new()
        .append(true)
        .open(env.path().join("events.jsonl"))
        .unwrap();
    let run = env.spawn(&["run", "--source", "file:events.jsonl"]);
    wait_archived(port, FLOWS_PER_BATCH, Duration::from_secs(60));

    // The endpoint answers 503, then 500.
    for (n, status) in [(1, 503), (2, 500)] {
        let before = storage_failures(port);
        proxy.fail_with(status);
        input.write_all(batch(n).as_bytes()).unwrap();
        eventually(
            Duration::from_secs(60),
            &format!("{status}s counted"),
            || (storage_failures(port) > before).then_some(()),
        );
        assert_eq!(archived(port), (n * FLOWS_PER_BATCH) as i64);
        still_live(port, n);
        proxy.fail_with(0);
        let back = Instant::now();
        wait_archived(port, (n + 1) * FLOWS_PER_BATCH, Duration::from_secs(120));
        eprintln!(
            "outage: {status}s: archived {:.1} s after the endpoint recovered",
            back.elapsed().as_secs_f64()
        );
    }

    // The server is down for 30 s.
    let before = storage_failures(port);
    s3.stop();
    input.write_all(batch(3).as_bytes()).unwrap();
    let down = Instant::now();
    eventually(
        Duration::from_secs(60),
        "refused connections counted",
        || (storage_failures(port) > before).then_some(()),
    );
    while down.elapsed() < Duration::from_secs(30) {
        assert_eq!(archived(port), (3 * FLOWS_PER_BATCH) as i64);
        std::thread::sleep(Duration::from_millis(500));
    }
    still_live(port, 3);
    s3.restart();
    let back = Instant::now();
    // The archiver's backoff has grown to tens of seconds by now.
    wait_archived(port, 4 * FLOWS_PER_BATCH, Duration::from_secs(120));
    eprintln!(
        "outage: down {:.0} s: archived {:.1} s after the restart",
        (back - down).as_secs_f64(),
        back.elapsed().as_secs_f64()
    );

    // The server hangs: it accepts connections and never answers.
    let before = storage_failures(port);
    s3.hang(true);
    input.write_all(batch(4).as_bytes()).unwrap();
    eventually(
        Duration::from_secs(60),
        "timed-out requests counted",
        || (storage_failures(port) > before).then_some(()),
    );
    assert_eq!(archived(port), (4 * FLOWS_PER_BATCH) as i64);
    still_live(port, 4);
    s3.hang(false);
    let back = Instant::now();
    wait_archived(port, 5 * FLOWS_PER_BATCH, Duration::from_secs(120));
    eprintln!(
        "outage: hung: archived {:.1} s after SIGCONT; storage failures counted {}",
        back.elapsed().as_secs_f64(),
        storage_failures(port)
    );

    let stderr = run.stop();
    assert!(stderr.contains("Archive attempt failed"), "{stderr}");
    assert!(proxy.refused.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    let mut parts = std::collections::BTreeMap::new();
    for r in env.archived() {
        *parts
            .entry(r["partitionkey"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(parts.len(), 5 * FLOWS_PER_BATCH);
    assert!(parts.values().all(|&n| n == 1), "each part published once");
    let verify: Value = serde_json::from_str(&env.ok(&["verify", "--json"])).unwrap();
    assert_eq!(verify["flow_parts"], 5 * FLOWS_PER_BATCH, "{verify}");
}

/// A trace collector that accepts connections and never answers, and one that refuses
/// them: archiving completes all the same, and the process exits within the export
/// timeout instead of waiting on the collector.
#[test]
fn a_hung_or_dead_trace_collector_neither_stops_nor_stalls_archiving() {
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_port = hung.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = held.clone();
    std::thread::spawn(move || {
        for conn in hung.incoming().flatten() {
            holder.lock().unwrap().push(conn);
        }
    });
    for endpoint in [
        format!("http://127.0.0.1:{hung_port}"),
        format!("http://127.0.0.1:{}", free_port()),
    ] {
        let mut env = Env::new("[archive]\nsegment_max_flows = 10\n");
        env.vars = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT".into(), "2000".into()),
        ];
        env.write("events.jsonl", (batch(0) + &batch(1)).as_bytes());
        let started = Instant::now();
        env.ok(&["ingest", "events.jsonl"]);
        let report: Value =
            serde_json::from_str(&env.ok(&["sweep", "--now", "2026-06-01T00:00:00Z", "--json"]))
                .unwrap();
        assert_eq!(
            report["flow_parts"],
            2 * FLOWS_PER_BATCH,
            "{endpoint}: {report}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{endpoint}: took {:?}",
            started.elapsed()
        );
        let verify: Value = serde_json::from_str(&env.ok(&["verify", "--json"])).unwrap();
        assert_eq!(verify["flow_parts"], 2 * FLOWS_PER_BATCH);
    }
    assert!(
        !held.lock().unwrap().is_empty(),
        "the hung collector was tried"
    );
}
