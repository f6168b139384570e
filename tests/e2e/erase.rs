//! Erasure, through the real binary on the embedded defaults:
//! - a flow archived in two segments (parts 1 and 2) and live again (part 3) is erased
//!   everywhere: no byte of it remains in any decompressed object, nor in the live
//!   state, while every other flow still verifies, reads back and stays indexed once
//!   (relocation `flow.archived` events);
//! - a held flow is refused, and a held neighbour keeps its hold through the rewrite;
//! - a dry run reports what the live run then does and changes nothing;
//! - SIGKILL at each step of the erasure: the next `erase` finishes it, with every
//!   fact published once and nothing lost.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::*;
use serde_json::Value;

const VICTIM: &str = "vïctim-✓";
const SECRET: &str = "SSN-078-05-1120";

fn env() -> Env {
    Env::new(
        "[retention]\ncompleted = \"1s\"\narchive_for = \"30d\"\n\
         [archive]\nsegment_max_flows = 3\n",
    )
}

fn victim_event(id: &str, seq: u64, kind: &str, time: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/engine","type":"io.test.flow.{kind}","subject":"{VICTIM}","tenant":"acme","sequence":"{seq:04}","time":"{time}","data":{{"patient":"{SECRET}","step":{seq}}}}}"#
    )
}

fn completed_flow(tenant: &str, flow: &str, time: &str) -> Vec<String> {
    (1..=3)
        .map(|seq| {
            let kind = if seq == 3 { "completed" } else { "step" };
            ce(tenant, flow, &format!("{flow}-{seq}"), seq, kind, time)
        })
        .collect()
}

fn ingest(env: &Env, name: &str, lines: &[String]) {
    let path = env.write(name, (lines.join("\n") + "\n").as_bytes());
    env.ok(&["ingest", path.to_str().unwrap()]);
}

/// The victim's part 1 shares a segment with two acme flows, its part 2 with two
/// others; a globex segment is never touched; the victim then opens part 3 (live).
fn archived_env() -> Env {
    let env = env();
    let t1 = "2026-01-01T00:00:00Z";
    let mut first: Vec<String> = ["a-1", "a-2"]
        .iter()
        .flat_map(|f| completed_flow("acme", f, t1))
        .collect();
    first.extend(completed_flow("globex", "g-1", t1));
    for (seq, kind) in [(1, "step"), (2, "step"), (3, "completed")] {
        first.push(victim_event(&format!("v-{seq}"), seq, kind, t1));
    }
    ingest(&env, "first.jsonl", &first);
    env.ok(&["sweep", "--now", "2026-01-01T01:00:00Z"]);

    let t2 = "2026-01-02T00:00:00Z";
    let mut second: Vec<String> = ["b-1", "b-2"]
        .iter()
        .flat_map(|f| completed_flow("acme", f, t2))
        .collect();
    second.push(victim_event("v-4", 4, "completed", t2));
    ingest(&env, "second.jsonl", &second);
    env.ok(&["sweep", "--now", "2026-01-02T01:00:00Z"]);

    ingest(
        &env,
        "third.jsonl",
        &[victim_event("v-5", 5, "step", "2026-01-03T00:00:00Z")],
    );
    let parts: BTreeSet<String> = env
        .records_of("archived")
        .iter()
        .map(|r| part_key(&r["data"]))
        .collect();
    assert_eq!(parts.len(), 7, "{parts:?}");
    assert!(parts.contains(&format!("acme/{VICTIM}/2")));
    env
}

fn objects(env: &Env) -> BTreeMap<String, Vec<u8>> {
    let root = env.path().join("data/archive");
    files_under(&root)
        .iter()
        .map(|p| {
            let key = p.strip_prefix(&root).unwrap().display().to_string();
            (key, std::fs::read(p).unwrap())
        })
        .collect()
}

/// Decompresses every object with the standard tool and looks for any trace of the
/// victim: its data, its id, its event ids.
fn assert_no_byte_of_victim(env: &Env) {
    let all = objects(env);
    assert!(!all.is_empty());
    for (key, bytes) in &all {
        let plain = pipe(&["zstd", "-dc"], bytes);
        for haystack in [&plain, bytes] {
            let text = String::from_utf8_lossy(haystack);
            for needle in [SECRET, VICTIM, "\"v-1\"", "\"v-4\""] {
                assert!(!text.contains(needle), "{needle} remains in {key}");
            }
        }
    }
    let got = env.run(&["get", &format!("acme/{VICTIM}")]);
    assert_eq!(
        got.status.code(),
        Some(1),
        "{}",
        describe(&["get"], env.path(), &got)
    );
    let got = String::from_utf8_lossy(&got.stdout).into_owned();
    assert!(!got.contains(SECRET), "{got}");
}

/// Everything a consumer sees after the erasure: every other part indexed once at an
/// object that exists and verifies, the victim nowhere, each fact published once.
fn assert_consistent(env: &Env) {
    assert_no_byte_of_victim(env);
    env.ok(&["verify"]);

    let ids: Vec<String> = env
        .archived()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an event was published twice");

    let purged: BTreeSet<String> = env
        .records_of("purged")
        .iter()
        .map(|r| {
            assert_eq!(r["data"]["reason"], "erasure");
            part_key(&r["data"])
        })
        .collect();
    assert_eq!(
        purged,
        BTreeSet::from([format!("acme/{VICTIM}/1"), format!("acme/{VICTIM}/2")])
    );

    // The latest flow.archived of each part names an object that exists.
    let existing = objects(env);
    let mut latest: BTreeMap<String, String> = BTreeMap::new();
    for r in env.records_of("archived") {
        latest.insert(
            part_key(&r["data"]),
            r["data"]["object_key"].as_str().unwrap().to_string(),
        );
    }
    for (part, key) in &latest {
        if part.contains(VICTIM) {
            continue;
        }
        assert!(
            existing.keys().any(|k| key.ends_with(k.as_str())),
            "{part} points at {key}, which is gone"
        );
    }

    env.ok(&["index"]);
    let listed: Value =
        serde_json::from_str(&env.ok(&["list", "--json", "--limit", "100"])).unwrap();
    let items = listed["items"].as_array().unwrap();
    let indexed: Vec<String> = items.iter().map(part_key).collect();
    assert_eq!(indexed.len(), 5, "{listed}");
    assert!(indexed.iter().all(|p| !p.contains(VICTIM)));
    for flow in ["acme/a-1", "acme/a-2", "acme/b-1", "acme/b-2", "globex/g-1"] {
        let got = env.ok(&["get", flow]);
        let id = flow.split('/').nth(1).unwrap();
        assert!(got.contains(&format!("{id}-3")), "{flow}: {got}");
    }
}

fn erase(env: &Env, dry_run: bool) -> Value {
    let flow = format!("acme/{VICTIM}");
    let mut args = vec![
        "erase",
        flow.as_str(),
        "--reason",
        "GDPR request 42",
        "--actor",
        "dpo@example.com",
        "--json",
    ];
    if dry_run {
        args.push("--dry-run");
    }
    serde_json::from_str(&env.ok(&args)).unwrap()
}

#[test]
fn erasure_leaves_no_byte_of_the_flow_and_every_other_flow_intact() {
    let env = archived_env();
    env.ok(&["hold", "acme/a-1", "--reason", "case 9", "--actor", "legal"]);

    // Held: refused, nothing changes.
    let before = objects(&env);
    let out = env.run(&["erase", "acme/a-1", "--reason", "request"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("legal hold"),
        "{}",
        describe(&["erase"], env.path(), &out)
    );
    // Hostile ids and an empty reason are usage errors.
    for args in [
        ["erase", "acme/../etc", "--reason", "x"],
        ["erase", "acme/a-2", "--reason", " "],
    ] {
        assert_eq!(env.run(&args).status.code(), Some(2), "{args:?}");
    }

    let dry = erase(&env, true);
    assert_eq!(objects(&env), before, "a dry run changes nothing");
    assert_eq!(dry["live"], true, "{dry}");
    assert_eq!(dry["live_events"], 1);
    assert_eq!(dry["parts_erased"], 2);
    assert_eq!(dry["objects_rewritten"], 2);
    assert_eq!(dry["parts_relocated"], 4);

    let live = erase(&env, false);
    for field in [
        "live",
        "live_events",
        "parts_erased",
        "objects_rewritten",
        "objects_deleted",
        "parts_relocated",
    ] {
        assert_eq!(live[field], dry[field], "{field}: {live} vs {dry}");
    }
    let after = objects(&env);
    assert_eq!(after.len(), before.len());
    assert_eq!(
        after.keys().filter(|k| before.contains_key(*k)).count(),
        1,
        "only the globex object is unchanged"
    );
    assert_consistent(&env);

    // The held neighbour moved and is still held; it reads back.
    let listed: Value = serde_json::from_str(&env.ok(&["list", "--json"])).unwrap();
    for item in listed["items"].as_array().unwrap() {
        assert_eq!(item["held"], item["flow_id"] == "a-1", "{item}");
    }
    let relocated: Vec<Value> = env
        .records_of("archived")
        .into_iter()
        .filter(|r| r["id"].as_str().unwrap().matches('/').count() == 4)
        .collect();
    assert_eq!(relocated.len(), 4, "one relocation per moved part");

    // Audited, with who and why.
    let audit: Vec<Value> = serde_json::from_str(&env.ok(&["audit", "--json"])).unwrap();
    let record = audit.iter().find(|r| r["action"] == "erase").unwrap();
    assert_eq!(record["actor"], "dpo@example.com");
    assert_eq!(record["reason"], "GDPR request 42");
    assert_eq!(record["counts"]["flow_parts"], 2);

    // Erasing again finds nothing and changes nothing.
    let again = erase(&env, false);
    assert_eq!(again["parts_erased"], 0, "{again}");
    assert_eq!(again["live"], false);
    assert_eq!(objects(&env), after);
}

#[test]
fn sigkill_at_each_erasure_step_is_finished_by_the_next_erase() {
    for failpoint in [
        "after-erase-intent",
        "after-erase-upload",
        "after-erase-relocate",
        "after-erase-delete",
        "after-erase-delete:2",
    ] {
        let env = archived_env();
        let flow = format!("acme/{VICTIM}");
        let out = env
            .command(&["erase", &flow, "--reason", "r"])
            .env("FLOW_ARCHIVER_FAILPOINT", failpoint)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{failpoint}: {}",
            describe(&["erase"], env.path(), &out)
        );
        let report = erase(&env, false);
        assert_eq!(report["recovered"], 1, "{failpoint}: {report}");
        assert_consistent(&env);
    }
}
