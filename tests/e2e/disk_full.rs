//! A full disk under the state store and under the spool (`docs/operations.md`,
//! "Full disk"), on small tmpfs filesystems mounted by the test (the tests run as
//! root). Filled mid-ingest, `run` stops taking input (nothing acknowledged past what
//! is stored), says so in its log, its metrics and `/readyz`, and resumes by itself
//! once space returns, losing nothing. Filled mid-archive, the segment is retried
//! until the spool has room, and every flow is archived once.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// A tmpfs of `bytes` mounted at a directory, unmounted on drop.
struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    fn mount(at: &Path, bytes: u64) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a {bytes}-byte tmpfs at {} needs root: {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk {
            at: at.to_path_buf(),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there does not keep the mount alive.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.at)
            .status();
    }
}

/// Writes `path` until the disk is full, then gives back `leave` bytes.
fn fill_disk(path: &Path, leave: u64) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5au8; 64 << 10];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    file.set_len(written.saturating_sub(leave)).unwrap();
    file.sync_all().unwrap();
}

/// `flows` terminal flows of 3 events from `first` on, ~500 bytes each.
fn events(first: usize, flows: usize) -> String {
    let pad = "x".repeat(300);
    let mut out = String::new();
    for f in first..first + flows {
        for seq in 1..=3u64 {
            let kind = if seq == 3 { "completed" } else { "step" };
            let line = ce(
                "acme",
                &format!("flow-{f:05}"),
                &format!("e-{f}-{seq}"),
                seq,
                kind,
                "2026-01-01T00:00:00Z",
            );
            // A label makes each event the size of a real one.
            out.push_str(&line.replacen(
                "\"data\":{",
                &format!("\"data\":{{\"pad\":\"{pad}\","),
                1,
            ));
            out.push('\n');
        }
    }
    out
}

fn metric(port: u16, name: &str) -> i64 {
    metric_of(port, name).unwrap_or(-1)
}

fn ready(port: u16) -> (u16, Value) {
    http_get(&format!("http://127.0.0.1:{port}/readyz"), "")
}

/// `run` over `flows` flows with its state directory on a 16 MiB tmpfs, the reserve
/// and batch size given, once their events are stored: the archiver, its disk, the
/// process and its API port.
fn running_on_a_small_state_disk(
    min_free_bytes: u64,
    batch_size: usize,
    flows: usize,
) -> (Env, SmallDisk, Running, u16) {
    let port = free_port();
    let env = Env::new(&format!(
        r#"
[state]
journal_file_bytes = 1048576
min_free_bytes = {min_free_bytes}
[input]
batch_size = {batch_size}
[retention]
completed = "3650d"
[api]
listen = "127.0.0.1:{port}"
"#
    ));
    let disk = SmallDisk::mount(&env.path().join("data/state"), 16 << 20);
    env.write("events.jsonl", events(0, flows).as_bytes());
    let run = env.spawn(&["run", "--source", "file:events.jsonl"]);
    let stored = 3 * flows as i64;
    eventually(
        Duration::from_secs(60),
        &format!("the first {stored} events stored"),
        || (metric(port, "flow_archiver_events_ingested_total") == stored).then_some(()),
    );
    (env, disk, run, port)
}

#[test]
fn a_full_state_disk_pauses_ingest_until_space_returns_and_loses_nothing() {
    let (env, _disk, run, port) = running_on_a_small_state_disk(1 << 20, 200, 1000);
    let state = env.path().join("data/state");
    let ingested = "flow_archiver_events_ingested_total";
    assert_eq!(ready(port).0, 200);

    // Something else takes the disk; more events arrive.
    let filler = state.join("filler");
    fill_disk(&filler, 512 << 10);
    let mut input = std::fs::OpenOptions::new()
        .append(true)
        .open(env.path().join("events.jsonl"))
        .unwrap();
    input.write_all(events(1000, 1000).as_bytes()).unwrap();
    eventually(
        Duration::from_secs(30),
        "ingest paused on the full disk",
        || (metric(port, "flow_archiver_state_disk_full") == 1).then_some(()),
    );
    let (code, body) = ready(port);
    assert_eq!(code, 503, "{body}");
    assert!(
        body["state_disk"].as_str().unwrap().starts_with("full"),
        "{body}"
    );
    assert_eq!(
        metric(port, ingested),
        3000,
        "nothing stored past the reserve"
    );

    std::fs::remove_file(&filler).unwrap();
    eventually(
        Duration::from_secs(60),
        "ingest resumed and caught up",
        || {
            (metric(port, ingested) == 6000 && metric(port, "flow_archiver_state_disk_full") == 0)
                .then_some(())
        },
    );
    assert_eq!(ready(port).0, 200);

    // Full again, and stopped while paused: it exits cleanly without storing or
    // acknowledging the waiting batch, which the restart stores.
    fill_disk(&filler, 512 << 10);
    input.write_all(events(2000, 1000).as_bytes()).unwrap();
    eventually(Duration::from_secs(30), "ingest paused again", || {
        (metric(port, "flow_archiver_state_disk_full") == 1).then_some(())
    });
    let stderr = run.stop();
    assert!(
        stderr.contains("disk is full") && stderr.contains("Space is back"),
        "{stderr}"
    );
    std::fs::remove_file(&filler).unwrap();
    let run = env.spawn(&["run", "--source", "file:events.jsonl"]);
    eventually(
        Duration::from_secs(60),
        "the rest stored after the restart",
        || (metric(port, ingested) == 3000).then_some(()),
    );
    run.stop();
    let status: Value = serde_json::from_str(&env.ok(&["state", "status", "--json"])).unwrap();
    assert_eq!(status["live_flows"], 3000, "{status}");
    assert_eq!(
        status["stored_events"], 9000,
        "no event lost or stored twice: {status}"
    );
    assert!(env.dead_letters().is_empty());
}

#[test]
fn a_full_spool_disk_mid_archive_is_retried_until_every_flow_is_archived_once() {
    let port = free_port();
    let env = Env::new(&format!(
        r#"
[archive]
spool_dir = "./spool"
segment_max_flows = 100
[retention]
completed = "1s"
[scheduler]
interval = "200ms"
[api]
listen = "127.0.0.1:{port}"
"#
    ));
    env.write("events.jsonl", events(0, 600).as_bytes());
    env.ok(&["ingest", "events.jsonl"]);
    let spool = env.path().join("spool");
    let _disk = SmallDisk::mount(&spool, 4 << 20);
    // No room at all for a segment's spool file.
    let filler = spool.join("filler");
    fill_disk(&filler, 0);

    let run = env.spawn(&["run"]);
    eventually(
        Duration::from_secs(30),
        "an archive attempt failing on the spool",
        || {
            (metric_of(port, "flow_archiver_failures_total{stage=\"storage\"}").unwrap_or(0)
                + metric_of(port, "flow_archiver_failures_total{stage=\"state\"}").unwrap_or(0)
                > 0)
            .then_some(())
        },
    );
    assert_eq!(metric(port, "flow_archiver_flow_parts_archived_total"), 0);
    std::fs::remove_file(&filler).unwrap();
    eventually(Duration::from_secs(90), "every flow archived", || {
        (metric(port, "flow_archiver_flow_parts_archived_total") == 600).then_some(())
    });
    let stderr = run.stop();
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let mut parts = std::collections::BTreeMap::new();
    for r in env.archived() {
        *parts
            .entry(r["partitionkey"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(parts.len(), 600);
    assert!(parts.values().all(|&n| n == 1), "each part published once");
    let verify: Value = serde_json::from_str(&env.ok(&["verify", "--json"])).unwrap();
    assert_eq!(verify["flow_parts"], 600, "{verify}");
}

/// Something else took the whole disk, reserve included (`min_free_bytes = 0` stands
/// for it), so a database commit itself meets ENOSPC: redb refuses every later write
/// until the file is reopened. The store reopens it in place, ingest pauses as for any
/// full disk, and resumes by itself; nothing is lost, doubled or damaged.
#[test]
fn a_database_commit_on_a_full_disk_reopens_the_store_and_ingest_resumes() {
    let (env, _disk, run, port) = running_on_a_small_state_disk(0, 20, 100);
    let state = env.path().join("data/state");
    let ingested = "flow_archiver_events_ingested_total";
    let filler = state.join("filler");
    fill_disk(&filler, 0);
    let mut input = std::fs::OpenOptions::new()
        .append(true)
        .open(env.path().join("events.jsonl"))
        .unwrap();
    input.write_all(events(100, 400).as_bytes()).unwrap();
    // Space comes back a page at a time, so that some batch fits in the journal and
    // its database commit does not.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !run.stderr().contains("The state database was reopened") {
        assert!(
            std::time::Instant::now() < deadline,
            "a commit failed and redb reopened:\n{}",
            run.stderr()
        );
        let len = std::fs::metadata(&filler).unwrap().len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .unwrap();
        file.set_len(len.saturating_sub(4096)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while metric(port, ingested) != 1500 || metric(port, "flow_archiver_state_disk_full") != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "ingest caught up ({} of 1500 events):\n{}",
            metric(port, ingested),
            run.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let stderr = run.stop();
    assert!(stderr.contains("disk is full"), "{stderr}");
    let status: Value = serde_json::from_str(&env.ok(&["state", "status", "--json"])).unwrap();
    assert_eq!(status["live_flows"], 500, "{status}");
    assert_eq!(
        status["stored_events"], 1500,
        "no event lost or stored twice: {status}"
    );
    env.ok(&["state", "check"]);
    assert!(env.dead_letters().is_empty());
}
