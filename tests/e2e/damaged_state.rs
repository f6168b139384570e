//! A damaged embedded store (`docs/operations.md`, "Damaged state"), with the real
//! binary: a missing, short or corrupt journal file and a truncated or overwritten
//! `state.redb`. Opening fails with an error naming the file and the fix, never a
//! silent repair; `state check` lists the damaged flows; `state repair` drops exactly
//! those, says so, and the rest is archived once, verified.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use serde_json::Value;

use crate::support::*;

/// Small journal files, so that a store of a few dozen flows spans several.
const CONFIG: &str = r#"
[state]
journal_file_bytes = 4096
[input]
batch_size = 8
[archive]
segment_max_flows = 5
"#;

const NOW: &str = "2026-06-01T00:00:00Z";

/// 24 terminal flows of 3 events, flow by flow, so that a journal file holds a few
/// flows and some flows straddle two files; one has an id in odd unicode, shown as it
/// is in every report.
fn workload() -> (String, BTreeSet<String>) {
    let ids: Vec<String> = (0..24)
        .map(|f| match f {
            7 => "flüsse-☃-7".to_string(),
            f => format!("flow-{f:02}"),
        })
        .collect();
    let mut lines = Vec::new();
    for id in &ids {
        for seq in 1..=3u64 {
            let kind = if seq == 3 { "completed" } else { "step" };
            let event = format!("{id}-{seq}");
            lines.push(ce("acme", id, &event, seq, kind, "2026-01-01T00:00:00Z"));
        }
    }
    let flows = ids.iter().map(|id| format!("acme/{id}")).collect();
    (lines.join("\n") + "\n", flows)
}

fn ingested() -> (Env, BTreeSet<String>) {
    let env = Env::new(CONFIG);
    let (input, flows) = workload();
    env.write("events.jsonl", input.as_bytes());
    env.ok(&["ingest", "events.jsonl"]);
    (env, flows)
}

/// `path` as the binary names it: relative to its working directory, like the config.
fn shown(env: &Env, path: &std::path::Path) -> String {
    format!("./{}", path.strip_prefix(env.path()).unwrap().display())
}

fn journal_files(env: &Env) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(env.path().join("data/state/journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Runs `args`, expects exit code `code`, returns stderr.
fn fails(env: &Env, args: &[&str], code: i32) -> String {
    let out = env.run(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        describe(args, env.path(), &out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `state check` exits 1 and lists the damaged flows; returns them.
fn check_finds_damage(env: &Env) -> (Value, BTreeSet<String>) {
    let out = env.run(&["state", "check", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe(&["state", "check"], env.path(), &out)
    );
    let report = json(&String::from_utf8_lossy(&out.stdout));
    let flows = flows_in(&report["damaged_parts"]);
    (report, flows)
}

/// `tenant/flow_id` of each item of a report's list.
fn flows_in(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["tenant"].as_str().unwrap(),
                p["flow_id"].as_str().unwrap()
            )
        })
        .collect()
}

/// `state repair` drops exactly `damaged`; the store then checks clean, and a sweep
/// archives every other flow once, all of it verified.
fn repair_then_archive_the_rest(env: &Env, all: &BTreeSet<String>, damaged: &BTreeSet<String>) {
    let repaired = json(&env.ok(&["state", "repair", "--json"]));
    let dropped = flows_in(&repaired["dropped_flows"]);
    assert_eq!(&dropped, damaged, "{repaired}");
    let readable = env.ok(&["state", "repair"]);
    assert!(readable.contains("nothing to repair"), "{readable}");
    let clean = env.ok(&["state", "check"]);
    assert!(clean.contains("result          clean"), "{clean}");

    env.ok(&["sweep", "--now", NOW]);
    let mut archived: BTreeMap<String, u64> = BTreeMap::new();
    for r in env.archived() {
        let key = r["partitionkey"].as_str().unwrap().to_string();
        assert_eq!(r["data"]["event_count"], 3, "{key} archived whole: {r}");
        *archived.entry(key).or_default() += 1;
    }
    let expected: BTreeMap<String, u64> = all
        .difference(damaged)
        .map(|f| (format!("{f}/1"), 1))
        .collect();
    assert_eq!(
        archived, expected,
        "every undamaged flow archived once, no other"
    );
    let verify = json(&env.ok(&["verify", "--json"]));
    assert_eq!(verify["flow_parts"], expected.len(), "{verify}");
}

#[test]
fn a_missing_journal_file_stops_the_start_and_repair_drops_only_its_flows() {
    let (env, flows) = ingested();
    let files = journal_files(&env);
    assert!(
        files.len() >= 3,
        "the workload spans journal files: {files:?}"
    );
    let missing = &files[1];
    std::fs::remove_file(missing).unwrap();

    for args in [&["state", "status"][..], &["sweep", "--now", NOW][..]] {
        let stderr = fails(&env, args, 1);
        assert!(
            stderr.contains(&shown(&env, missing))
                && stderr.contains("is missing")
                && stderr.contains("state check")
                && stderr.contains("state repair"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!missing.exists(), "never recreated silently");

    let (report, damaged) = check_finds_damage(&env);
    assert_eq!(report["journal_files"][0]["path"], shown(&env, missing));
    assert_eq!(report["journal_files"][0]["size"], Value::Null);
    assert!(
        !damaged.is_empty() && damaged.len() < flows.len(),
        "{report}"
    );
    let readable = String::from_utf8_lossy(&env.run(&["state", "check"]).stdout).into_owned();
    for flow in &damaged {
        assert!(
            readable.contains(flow.as_str()),
            "{flow} listed: {readable}"
        );
    }
    repair_then_archive_the_rest(&env, &flows, &damaged);
}

#[test]
fn a_short_journal_file_stops_the_start_and_repair_drops_the_flows_past_its_end() {
    let (env, flows) = ingested();
    let files = journal_files(&env);
    let active = files.last().unwrap();
    let len = std::fs::metadata(active).unwrap().len();
    // The newest file, cut in the middle of its events (a lost write-back cache).
    let cut = len / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(active)
        .unwrap()
        .set_len(cut)
        .unwrap();

    let stderr = fails(&env, &["sweep", "--now", NOW], 1);
    assert!(
        stderr.contains(&shown(&env, active))
            && stderr.contains(&format!("{cut} bytes long"))
            && stderr.contains(&format!("{len} bytes committed")),
        "{stderr}"
    );
    assert_eq!(
        std::fs::metadata(active).unwrap().len(),
        cut,
        "never padded with zeros"
    );
    let (report, damaged) = check_finds_damage(&env);
    assert_eq!(report["journal_files"][0]["size"], cut, "{report}");
    assert!(!damaged.is_empty(), "{report}");
    repair_then_archive_the_rest(&env, &flows, &damaged);
}

#[test]
fn corrupt_event_bytes_are_named_at_the_read_and_repair_drops_that_flow() {
    let (env, flows) = ingested();
    let files = journal_files(&env);
    let file = &files[0];
    // Overwrite a few bytes in the middle of the file's first event.
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.write_all_at(b"\xff\xfe<<>>", 40).unwrap();
    drop(f);

    // The sizes are right, so the store opens; the archiver's read of the flow fails
    // with the file and offset instead of archiving altered history.
    let stderr = fails(&env, &["sweep", "--now", NOW], 1);
    assert!(
        stderr.contains(&format!("{}:", shown(&env, file))) && stderr.contains("CRC-32"),
        "{stderr}"
    );
    let (report, damaged) = check_finds_damage(&env);
    assert_eq!(damaged.len(), 1, "{report}");
    assert_eq!(report["damaged_parts"][0]["damaged_events"], 1, "{report}");
    assert!(report["journal_files"].as_array().unwrap().is_empty());
    // The failed sweep sealed an intent; the damaged part is taken out of it.
    repair_then_archive_the_rest(&env, &flows, &damaged);
}

#[test]
fn a_damaged_part_sealed_into_a_pending_intent_is_taken_out_of_it() {
    let (env, flows) = ingested();
    // SIGKILL right after the first intent is sealed: its parts wait in the store.
    let out = env
        .command(&["sweep", "--now", NOW])
        .env("FLOW_ARCHIVER_FAILPOINT", "after-intent:1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    for file in journal_files(&env) {
        std::fs::remove_file(file).unwrap();
    }
    let (report, damaged) = check_finds_damage(&env);
    assert_eq!(damaged, flows, "every event's bytes are gone");
    let sealed: Vec<&Value> = report["damaged_parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["intent"].is_string())
        .collect();
    assert!(!sealed.is_empty(), "{report}");
    assert!(sealed.iter().all(|p| p["verified"] == false), "{report}");

    let repaired = json(&env.ok(&["state", "repair", "--json"]));
    assert_eq!(
        repaired["intents_changed"].as_array().unwrap().len(),
        1,
        "{repaired}"
    );
    assert_eq!(
        repaired["dropped_flows"].as_array().unwrap().len(),
        flows.len()
    );
    let status = json(&env.ok(&["state", "status", "--json"]));
    assert_eq!(status["live_flows"], 0, "{status}");
    assert_eq!(status["pending_intents"], 0, "{status}");
    let report = json(&env.ok(&["sweep", "--now", NOW, "--json"]));
    assert_eq!(report["flow_parts"], 0, "{report}");
    assert!(env.archived().is_empty());
}

#[test]
fn a_damaged_state_redb_stops_every_command_naming_the_file_and_the_backup() {
    let (env, _) = ingested();
    let db = env.path().join("data/state/state.redb");
    let pristine = std::fs::read(&db).unwrap();
    let len = pristine.len();
    for what in [
        "truncated",
        "not a database",
        "pages overwritten, the header intact",
    ] {
        let mut bytes = pristine.clone();
        match what {
            "truncated" => bytes.truncate(len / 3),
            "not a database" => bytes[..64].copy_from_slice(&[0x5a; 64]),
            _ => {
                let from = len / 4096 / 2 * 4096;
                for (i, b) in bytes[from..].iter_mut().enumerate() {
                    *b = (i * 7 + 13) as u8;
                }
            }
        }
        std::fs::write(&db, bytes).unwrap();
        for args in [
            &["state", "status"][..],
            &["sweep", "--now", NOW][..],
            &["state", "check"][..],
            &["state", "repair"][..],
        ] {
            let stderr = fails(&env, args, 1);
            assert!(
                stderr.contains(&shown(&env, &db))
                    && stderr.contains("is damaged")
                    && stderr.contains("backup"),
                "{what}, {args:?}: {stderr}"
            );
        }
    }
    std::fs::write(&db, &pristine).unwrap();
    assert!(env.ok(&["state", "check"]).contains("clean"));
}

#[test]
fn leftover_journal_files_are_deleted_with_a_warning_and_strangers_are_left_alone() {
    let (env, _) = ingested();
    let dir = env.path().join("data/state/journal");
    // What a batch that never committed leaves: a file numbered past every row.
    let leftover = dir.join("00009999.log");
    std::fs::write(&leftover, b"never committed").unwrap();
    let stranger = dir.join("notes.log.txt");
    std::fs::write(&stranger, b"an operator's note").unwrap();
    let out = env.run(&["state", "status"]);
    assert!(
        out.status.success(),
        "{}",
        describe(&["state", "status"], env.path(), &out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("00009999.log") && stderr.contains("never committed"),
        "{stderr}"
    );
    assert!(!leftover.exists());
    assert!(stranger.exists());
    assert!(env.ok(&["state", "check"]).contains("clean"));
}
