//! Crash safety of the commit protocol (`docs/design.md`, "Commit protocol"), with the real binary:
//! SIGKILL after the intent, after the upload, after verification, halfway through
//! publishing and after publishing (before the state is deleted); then restart. Every
//! flow part must appear exactly once in the published records, every object must
//! verify, and nothing may be lost. Also `kill -9` at a random moment during ingest.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use crate::support::*;
use serde_json::Value;

const CONFIG: &str = r#"
[input]
batch_size = 16
[archive]
segment_max_flows = 4
concurrency = 2
"#;

const FLOWS: usize = 30;

/// 30 terminal flows of 3–6 events, plus one running flow; returns (input, events per flow).
fn workload() -> (String, BTreeMap<String, usize>) {
    // The running flow comes first: its event keeps the first journal file alive
    // after the others are archived, so that the sweep ends by compacting it.
    let mut lines = vec![ce(
        "t0",
        "running",
        "r1",
        1,
        "started",
        "2026-01-01T00:00:00Z",
    )];
    let mut counts = BTreeMap::new();
    for f in 0..FLOWS {
        let flow = format!("flow-{f:02}");
        let n = 3 + f % 4;
        for seq in 1..=n {
            let kind = if seq == n { "completed" } else { "step" };
            lines.push(ce(
                &format!("t{}", f % 2),
                &flow,
                &format!("{flow}-{seq}"),
                seq as u64,
                kind,
                "2026-01-01T00:00:00Z",
            ));
        }
        counts.insert(format!("t{}/{flow}", f % 2), n);
    }
    (lines.join("\n") + "\n", counts)
}

const NOW: &str = "2026-06-01T00:00:00Z";

fn assert_archived_exactly_once(env: &Env, counts: &BTreeMap<String, usize>) {
    let records = env.archived();
    let mut by_key: HashMap<String, Vec<&Value>> = HashMap::new();
    for r in &records {
        by_key
            .entry(r["partitionkey"].as_str().unwrap().to_string())
            .or_default()
            .push(r);
    }
    for (key, recs) in &by_key {
        assert_eq!(recs.len(), 1, "{key} published {} times", recs.len());
    }
    assert_eq!(
        by_key.len(),
        counts.len(),
        "every terminal flow archived: {:?}",
        by_key.keys().collect::<Vec<_>>()
    );
    for (flow, n) in counts {
        let rec = by_key
            .get(&format!("{flow}/1"))
            .unwrap_or_else(|| panic!("{flow} not archived"));
        assert_eq!(
            rec[0]["data"]["event_count"].as_u64().unwrap() as usize,
            *n,
            "{flow} lost events"
        );
    }
    let verify = env.run(&["verify", "--json"]);
    assert!(
        verify.status.success(),
        "{}",
        describe(&["verify"], env.path(), &verify)
    );
    let report: Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(
        report["flow_parts"].as_u64().unwrap() as usize,
        counts.len(),
        "no orphaned or duplicate parts in the archive"
    );
    // Nothing left to archive, nothing pending; the running flow is still live.
    let dry: Value =
        serde_json::from_str(&env.ok(&["sweep", "--dry-run", "--now", NOW, "--json"])).unwrap();
    assert_eq!(dry["flow_parts"], 0);
    let again: Value = serde_json::from_str(&env.ok(&["sweep", "--now", NOW, "--json"])).unwrap();
    assert_eq!(again["recovered_intents"], 0, "no intent left behind");
    assert_eq!(again["flow_parts"], 0);
    env.ok(&["get", "t0/running"]);
    // Archived flows are gone from the live state: `get` answers from the archive.
    let archived: Value = serde_json::from_str(&env.ok(&["get", "t0/flow-00"])).unwrap();
    assert_eq!(
        archived["archived"], true,
        "archived flows are deleted from the live state"
    );
}

fn crash_during_sweep_at(failpoint: &str) {
    let env = Env::new(CONFIG);
    let (input, counts) = workload();
    env.write("events.jsonl", input.as_bytes());
    env.ok(&["ingest", "events.jsonl"]);

    let out = env
        .command(&["sweep", "--now", NOW])
        .env("FLOW_ARCHIVER_FAILPOINT", failpoint)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "failpoint {failpoint} must kill the process: {}",
        describe(&["sweep"], env.path(), &out)
    );

    let out = env.run(&["sweep", "--now", NOW, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        describe(&["sweep (restart)"], env.path(), &out)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["recovered_intents"].as_u64().unwrap() >= 1,
        "the interrupted intent is resumed: {report}"
    );
    assert_archived_exactly_once(&env, &counts);
}

#[test]
fn sigkill_after_intent() {
    crash_during_sweep_at("after-intent:3");
}

#[test]
fn sigkill_after_upload_before_verify() {
    crash_during_sweep_at("after-upload:2");
}

#[test]
fn sigkill_after_verify_before_publish() {
    crash_during_sweep_at("after-verify:2");
}

#[test]
fn sigkill_halfway_through_publishing() {
    crash_during_sweep_at("mid-publish:2");
}

#[test]
fn sigkill_after_publish_before_delete() {
    crash_during_sweep_at("after-publish:2");
}

#[test]
fn sigkill_between_ingest_batches_resumes_at_the_checkpoint() {
    let env = Env::new(CONFIG);
    let (input, counts) = workload();
    env.write("events.jsonl", input.as_bytes());
    let out = env
        .command(&["ingest", "events.jsonl"])
        .env("FLOW_ARCHIVER_FAILPOINT", "after-ingest:3")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGKILL));
    let totals: Value =
        serde_json::from_str(&env.ok(&["ingest", "events.jsonl", "--json"])).unwrap();
    assert_eq!(
        totals["duplicates"], 0,
        "the restart resumes after the last durable batch"
    );
    env.ok(&["sweep", "--now", NOW]);
    assert_archived_exactly_once(&env, &counts);
}

#[test]
fn kill_9_at_a_random_moment_during_ingest_loses_nothing() {
    let env = Env::new("[input]\nbatch_size = 64\n");
    let mut lines = Vec::new();
    let flows = 2000;
    for f in 0..flows {
        for seq in 1..=5u64 {
            let kind = if seq == 5 { "completed" } else { "step" };
            lines.push(ce(
                "t",
                &format!("f{f}"),
                &format!("{f}-{seq}"),
                seq,
                kind,
                "2026-01-01T00:00:00Z",
            ));
        }
    }
    env.write("events.jsonl", (lines.join("\n") + "\n").as_bytes());
    let log = env.path().join("steps.log");
    let mut child = env
        .command(&["ingest", "events.jsonl"])
        .env("FLOW_ARCHIVER_FAILPOINT_LOG", &log)
        .spawn()
        .unwrap();
    // In the middle of ingesting 10k events: once a few batches are durable.
    let batches = |log: &std::path::Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == "after-ingest")
            .count()
    };
    eventually(Duration::from_secs(60), "three batches stored", || {
        (batches(&log) >= 3).then_some(())
    });
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "killed, not finished");
    let stored_before = batches(&log);
    let resumed: Value =
        serde_json::from_str(&env.ok(&["ingest", "events.jsonl", "--json"])).unwrap();
    assert!(
        resumed["stored"].as_u64().unwrap() > 0,
        "the kill landed before the end of the input: {resumed}"
    );
    eprintln!(
        "killed after {stored_before} batches; the restart stored {}",
        resumed["stored"]
    );
    let report: Value = serde_json::from_str(&env.ok(&["sweep", "--now", NOW, "--json"])).unwrap();
    assert_eq!(report["flow_parts"].as_u64().unwrap(), flows);
    assert_eq!(
        report["events"].as_u64().unwrap(),
        flows * 5,
        "no event lost or stored twice"
    );
    let records = env.archived();
    assert_eq!(records.len() as u64, flows);
    assert!(records.iter().all(|r| r["data"]["event_count"] == 5));
}

/// A small journal, so that the sweep ends by compacting the file the running flow
/// keeps alive.
const MATRIX_CONFIG: &str = r#"
[state]
journal_file_bytes = 4096
[input]
batch_size = 16
[archive]
segment_max_flows = 4
concurrency = 2
"#;

/// How often each step is reached by a clean ingest + sweep of [`workload`].
fn step_counts() -> BTreeMap<String, usize> {
    let env = Env::new(MATRIX_CONFIG);
    let (input, _) = workload();
    env.write("events.jsonl", input.as_bytes());
    let log = env.path().join("steps.log");
    let log_var = [(
        "FLOW_ARCHIVER_FAILPOINT_LOG".to_string(),
        log.display().to_string(),
    )];
    for args in [
        &["ingest", "events.jsonl"][..],
        &["sweep", "--now", NOW][..],
    ] {
        let out = env
            .command(args)
            .envs(log_var.iter().cloned())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(args, env.path(), &out));
    }
    steps_reached(&log)
}

/// Every failpoint of ingest, the commit protocol and compaction, at its first,
/// middle and last hit: then a restart, and every flow is archived exactly once, the
/// running flow intact.
#[test]
fn kill_matrix_every_step_at_its_first_middle_and_last_hit() {
    let counts = step_counts();
    let steps = [
        "before-ack",
        "after-ingest",
        "after-intent",
        "after-upload",
        "after-verify",
        "mid-publish",
        "after-publish",
        "mid-compaction",
        "after-compaction",
    ];
    let mut cases = 0;
    for step in steps {
        for at in first_middle_last(&counts, step) {
            let env = Env::new(MATRIX_CONFIG);
            let (input, expected) = workload();
            env.write("events.jsonl", input.as_bytes());
            if step == "before-ack" || step == "after-ingest" {
                env.run_killed_at(&[], &["ingest", "events.jsonl"], &format!("{step}:{at}"));
                env.ok(&["ingest", "events.jsonl"]);
                env.ok(&["sweep", "--now", NOW]);
            } else {
                env.ok(&["ingest", "events.jsonl"]);
                env.run_killed_at(&[], &["sweep", "--now", NOW], &format!("{step}:{at}"));
                env.ok(&["sweep", "--now", NOW]);
            }
            assert_archived_exactly_once(&env, &expected);
            let running: Value = serde_json::from_str(&env.ok(&["get", "t0/running"])).unwrap();
            assert_eq!(running["archived"], false, "{step}:{at}: {running}");
            cases += 1;
        }
    }
    eprintln!("kill matrix: {cases} kills, each at its step, each recovered: {counts:?}");
}

/// The short form of `scripts/soak.sh`: `run` SIGKILLed at 10 random moments while a
/// stream of events (with duplicates) arrives, then the invariants (every flow
/// archived once with all its events, every object verified). The long form (≥ 200
/// kills) is a command; its figure is in `docs/reliability.md`.
#[test]
fn randomized_sigkill_soak() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/soak.sh");
    let out = std::process::Command::new(script)
        .args(["10", "10"])
        .env("FLOW_ARCHIVER_BIN", BIN)
        .env_remove("FLOW_ARCHIVER_FAILPOINT")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("100 flows archived exactly once"),
        "{stdout}"
    );
    eprintln!("{stdout}");
}
