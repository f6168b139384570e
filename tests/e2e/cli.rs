//! The command line as operators use it: `config check`, `archive`, `demo`, `bench`,
//! and the long-running `run` (following a file, archiving on its timer, stopping
//! cleanly on SIGTERM and resuming where it stopped).

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;

#[test]
fn config_check_prints_the_effective_config_or_names_the_bad_key() {
    let env = Env::new("[archive]\nconcurrency = 2\n");
    let mut cmd = env.command(&["config", "check"]);
    cmd.env("ARCHIVE_PREFIX", "ops/flows")
        .env("FLOW_RETENTION_DAYS", "7");
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        describe(&["config", "check"], env.path(), &out)
    );
    let effective: toml::Table = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(effective["archive"]["prefix"].as_str(), Some("ops/flows"));
    assert_eq!(effective["archive"]["concurrency"].as_integer(), Some(2));
    assert_eq!(effective["retention"]["failed"].as_str(), Some("7d"));

    for (toml_text, key) in [
        ("[archive]\nconcurrency = 0\n", "archive.concurrency"),
        ("[archive]\nzstd_level = 40\n", "archive.zstd_level"),
        ("[archive]\nprefix = \"../escape\"\n", "archive.prefix"),
        ("[retention]\ncompleted = \"soon\"\n", "soon"),
        ("[archive]\nunknown_key = 1\n", "unknown_key"),
        (
            "[input.mapping]\nflow_id = \"subject\"\n",
            "input.mapping.flow_id",
        ),
    ] {
        let bad = Env::new(toml_text);
        let out = bad.run(&["config", "check"]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{toml_text}: {}",
            describe(&["config", "check"], bad.path(), &out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(key),
            "error for {toml_text:?} must name {key}: {stderr}"
        );
    }
    let out = env.run(&["--config", "missing.toml", "config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let out = env.run(&["sweep", "--now", "yesterday"]);
    assert_eq!(out.status.code(), Some(2), "bad usage exits 2");
}

#[test]
fn archive_one_flow_now_ignoring_its_timer() {
    let env = Env::new("");
    let lines = [
        ce("t", "urgent", "1", 1, "started", "2026-01-01T00:00:00Z"),
        ce("t", "other", "2", 1, "completed", "2026-01-01T00:00:00Z"),
    ];
    env.write("in.jsonl", (lines.join("\n") + "\n").as_bytes());
    env.ok(&["ingest", "in.jsonl"]);
    let report: Value = serde_json::from_str(&env.ok(&["archive", "t/urgent", "--json"])).unwrap();
    assert_eq!(report["flow_parts"], 1);
    let records = env.archived();
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0]["data"]["status"], "abandoned",
        "a running flow archived by hand is recorded as abandoned"
    );
    assert_eq!(
        env.run(&["archive", "t/urgent"]).status.code(),
        Some(1),
        "no longer live"
    );
    env.ok(&["get", "t/other"]);
}

#[test]
fn demo_runs_the_real_pipeline_and_its_objects_verify() {
    let env = Env::new("");
    let out: Value = serde_json::from_str(&env.ok(&["demo", "--flows", "400", "--json"])).unwrap();
    let sweep = &out["sweep"];
    assert!(sweep["flow_parts"].as_u64().unwrap() > 100, "{out}");
    assert!(
        out["live_flows"].as_u64().unwrap() > 0,
        "running and recent flows stay live"
    );
    assert!(sweep["stored_bytes"].as_u64().unwrap() < sweep["raw_bytes"].as_u64().unwrap());
    assert_eq!(
        env.archived().len() as u64,
        sweep["flow_parts"].as_u64().unwrap()
    );
    assert!(env.ok(&["verify"]).contains("all checksums match"));
    let text = env.ok(&["demo", "--flows", "50"]);
    assert!(
        text.contains("archived") && text.contains("verify"),
        "{text}"
    );
}

#[test]
fn bench_measures_the_real_pipeline_and_reports_every_figure() {
    let env = Env::new("");
    let dir = env.path().join("bench");
    let out: Value = serde_json::from_str(&env.ok(&[
        "bench",
        "--flows",
        "300",
        "--events",
        "4",
        "--dir",
        dir.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(out["events"], 1200, "{out}");
    assert_eq!(out["tracked_flows"], 300, "{out}");
    let parts = out["archived_parts"].as_u64().unwrap();
    assert!(
        parts > 250 && parts < 300,
        "terminal flows archived, running ones kept: {out}"
    );
    for figure in [
        "ingest_events_per_sec",
        "ingest_cpu_seconds_per_million",
        "archive_mb_per_sec",
        "archive_cpu_seconds_per_gb",
        "part_frames_mb_per_sec",
        "reference_mb_per_sec",
        "peak_rss_bytes",
    ] {
        assert!(out[figure].as_f64().unwrap() > 0.0, "{figure}: {out}");
    }
    let ratio = out["stored_ratio"].as_f64().unwrap();
    assert!(ratio > 0.0 && ratio < 1.0, "{out}");
    // The objects it measured are real: they verify like any archive.
    let verify = Env::new(&format!(
        "[archive]\ndir = {:?}\n",
        dir.join("archive").to_str().unwrap()
    ));
    assert!(verify.ok(&["verify"]).contains("all checksums match"));
}

fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn run_follows_a_file_archives_on_its_timer_and_stops_cleanly() {
    let env = Env::new("[retention]\ncompleted = \"0s\"\n[scheduler]\ninterval = \"200ms\"\n");
    let input = env.path().join("live.jsonl");
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let batch = |from: usize, to: usize| {
        (from..to)
            .map(|f| ce("t", &format!("f{f}"), &format!("{f}"), 1, "completed", &now) + "\n")
            .collect::<String>()
    };
    std::fs::write(&input, batch(0, 10)).unwrap();

    let mut child = env
        .command(&["run", "--source", "file:live.jsonl"])
        .spawn()
        .unwrap();
    wait_for("the first 10 flows", Duration::from_secs(30), || {
        env.archived().len() >= 10
    });
    // Lines appended while running are picked up (including one written in two halves).
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap();
    f.write_all(batch(10, 15).as_bytes()).unwrap();
    let last = ce("t", "f15", "15", 1, "completed", &now);
    f.write_all(&last.as_bytes()[..20]).unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    f.write_all(&last.as_bytes()[20..]).unwrap();
    f.write_all(b"\n").unwrap();
    wait_for("the appended flows", Duration::from_secs(30), || {
        env.archived().len() >= 16
    });

    // SIGTERM: drain and exit 0.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "run exits 0 after SIGTERM: {status:?}");

    // A restart resumes after the last line it stored: nothing is re-archived.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap()
        .write_all(batch(16, 18).as_bytes())
        .unwrap();
    let mut child = env
        .command(&["run", "--source", "file:live.jsonl"])
        .spawn()
        .unwrap();
    wait_for(
        "flows written while stopped",
        Duration::from_secs(30),
        || env.archived().len() >= 18,
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
    let records = env.archived();
    let mut keys: Vec<&str> = records
        .iter()
        .map(|r| r["partitionkey"].as_str().unwrap())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 18, "each flow archived exactly once");
    assert_eq!(records.len(), 18);
}

#[test]
fn a_second_process_on_the_same_state_is_refused_with_a_clear_error() {
    let admin = "admin-token-0123456789abcdef";
    let env = Env::new(&format!("[api]\nadmin_token = \"{admin}\"\n"));
    let mut first = env.command(&["run"]).spawn().unwrap();
    wait_for(
        "the first process to open its store",
        Duration::from_secs(20),
        || env.path().join("data/state/state.redb").exists(),
    );
    // Give it a moment to take the lock after creating the file.
    std::thread::sleep(Duration::from_millis(300));
    env.write("events.jsonl", b"");
    let out = env.run(&["ingest", "events.jsonl"]);
    // Readers do not need the store: they answer from the index beside the archiver.
    let read = env.run(&["get", "t/f"]);
    // `serve` beside it answers archived flows but is not ready (no live flows).
    let (api, base) = serve_api(&env);
    let (status, body) = http_get(&format!("{base}/readyz"), "");
    assert_eq!(status, 503, "{body}");
    assert!(body["state_store"]
        .as_str()
        .unwrap()
        .contains("held by another process"));
    assert_eq!(http_get(&format!("{base}/healthz"), "").0, 200);
    // Holds need the store's owner: the running archiver's API or the CLI.
    let (status, body) = http_request(
        "PUT",
        &format!("{base}/flows/t/f/hold"),
        admin,
        Some(r#"{"reason":"r"}"#),
    );
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("run"), "{body}");
    drop(api);
    unsafe {
        libc::kill(first.id() as i32, libc::SIGTERM);
    }
    assert!(first.wait().unwrap().success());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert_eq!(read.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&read.stderr);
    assert!(stderr.contains("held by the running archiver"), "{stderr}");
}

/// Cron-style operation: `run --until-idle` reads what the source has, stops by itself
/// once nothing new arrives for the idle period (exit 0, input committed), and the
/// `sweep` and `purge` that follow archive and purge as `run` would have.
#[test]
fn run_until_idle_drains_the_source_and_exits_for_sweep_and_purge() {
    let env = Env::new("[retention]\ncompleted = \"1s\"\n");
    let lines: Vec<String> = (1..=3)
        .map(|seq| {
            let kind = if seq == 3 { "completed" } else { "step" };
            ce(
                "acme",
                "cron-1",
                &format!("c-{seq}"),
                seq,
                kind,
                "2026-01-01T00:00:00Z",
            )
        })
        .collect();
    env.write("events.jsonl", (lines.join("\n") + "\n").as_bytes());
    assert_eq!(
        env.run(&["run", "--until-idle", "1s"]).status.code(),
        Some(2),
        "nothing to wait on"
    );
    let started = Instant::now();
    let (status, stderr) = env
        .spawn(&["run", "--source", "file:events.jsonl", "--until-idle", "1s"])
        .wait(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "{stderr}");
    assert!(stderr.contains("read 3 records"), "{stderr}");
    // A second pass reads nothing new (the position was committed) and stops again.
    let (status, stderr) = env
        .spawn(&["run", "--source", "file:events.jsonl", "--until-idle", "1s"])
        .wait(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("read 0 records"), "{stderr}");
    env.ok(&["sweep"]);
    env.ok(&["purge", "--now", "2100-01-01T00:00:00Z"]);
    let kinds: Vec<String> = env
        .archived()
        .iter()
        .map(|r| r["type"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.contains(&"io.flowarchiver.flow.archived".to_string()),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"io.flowarchiver.flow.purged".to_string()),
        "{kinds:?}"
    );
}
