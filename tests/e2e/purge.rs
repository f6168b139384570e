//! Purge, legal hold and the audit trail, clock-driven through `--now`:
//! - nothing is purged one second before `purge_at`; at `purge_at` every object whose
//!   parts are all due is deleted and each of its parts gets one `flow.purged`;
//! - a held flow's object survives until the hold is released; the index shows holds
//!   and drops purged parts;
//! - a dry run reports exactly what the live run then does;
//! - SIGKILL right after an object's deletion: the next purge publishes its
//!   `flow.purged` events, so no purge is lost;
//! - every archive, hold, release and purge is in the audit trail.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::*;
use serde_json::Value;

const ARCHIVED_AT: &str = "2026-01-01T01:00:00Z";
const PURGE_AT: &str = "2026-01-02T01:00:00Z";
const BEFORE: &str = "2026-01-02T00:59:59Z";
const ADMIN: &str = "admin-token-0123456789";
const TENANT: &str = "acme-token-0123456789";

fn env() -> Env {
    Env::new(
        "[retention]\ncompleted = \"1s\"\nfailed = \"1s\"\narchive_for = \"1d\"\n\
         [archive]\nsegment_max_flows = 2\n",
    )
}

/// Seven finished flows over two tenants (one with an odd but valid unicode id), and
/// one still running; archived at ARCHIVED_AT into segments of two.
fn archived_env() -> Env {
    let env = env();
    archive_all(&env);
    env
}

fn archive_all(env: &Env) {
    let mut lines = Vec::new();
    let flows = [
        ("acme", "flow-1"),
        ("acme", "flow-2"),
        ("acme", "flow-3"),
        ("acme", "flüß-✓"),
        ("globex", "g-1"),
        ("globex", "g-2"),
        ("globex", "g-3"),
    ];
    for (tenant, flow) in flows {
        for seq in 1..=3u64 {
            let kind = if seq == 3 { "completed" } else { "step" };
            lines.push(ce(
                tenant,
                flow,
                &format!("{flow}-{seq}"),
                seq,
                kind,
                "2026-01-01T00:00:00Z",
            ));
        }
    }
    lines.push(ce(
        "acme",
        "running",
        "r-1",
        1,
        "step",
        "2026-01-01T00:00:00Z",
    ));
    let path = env.write("events.jsonl", (lines.join("\n") + "\n").as_bytes());
    env.ok(&["ingest", path.to_str().unwrap()]);
    env.ok(&["sweep", "--now", ARCHIVED_AT]);
    assert_eq!(env.records_of("archived").len(), 7);
}

fn objects(env: &Env) -> BTreeSet<String> {
    let root = env.path().join("data/archive");
    files_under(&root)
        .iter()
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect()
}

/// flow part → object key, from the flow.archived records.
fn object_of_part(env: &Env) -> BTreeMap<String, String> {
    env.records_of("archived")
        .iter()
        .map(|r| {
            let d = &r["data"];
            (part_key(d), d["object_key"].as_str().unwrap().to_string())
        })
        .collect()
}

fn purge(env: &Env, now: &str, dry_run: bool) -> Value {
    let mut args = vec![
        "purge",
        "--now",
        now,
        "--json",
        "--actor",
        "ops@example.com",
    ];
    if dry_run {
        args.push("--dry-run");
    }
    serde_json::from_str(&env.ok(&args)).unwrap()
}

fn comparable(report: &Value) -> Value {
    let mut r = report.clone();
    r["dry_run"] = Value::Null;
    r
}

#[test]
fn purge_respects_purge_at_and_holds_and_matches_its_dry_run() {
    let env = archived_env();
    let before = objects(&env);
    assert_eq!(before.len(), 4, "{before:?}");
    let parts = object_of_part(&env);
    let held_object = parts["acme/flow-1/1"].clone();

    let out = env.ok(&[
        "hold",
        "acme/flow-1",
        "--reason",
        "case 7",
        "--actor",
        "legal",
    ]);
    assert!(out.contains("on hold"), "{out}");
    // A hold without a reason, or on a hostile id, is refused.
    assert_eq!(
        env.run(&["hold", "acme/flow-2", "--reason", " "])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        env.run(&["hold", "acme/../etc", "--reason", "x"])
            .status
            .code(),
        Some(2)
    );

    // One second early: nothing, dry or live.
    for dry in [true, false] {
        let r = purge(&env, BEFORE, dry);
        assert_eq!(r["objects"], 0, "{r}");
        assert_eq!(r["not_yet_due"], 4, "{r}");
    }
    assert_eq!(objects(&env), before);

    // At purge_at: the dry run names exactly what the live run deletes.
    let dry = purge(&env, PURGE_AT, true);
    assert_eq!(dry["objects"], 3, "{dry}");
    assert_eq!(dry["held_objects"], 1);
    assert_eq!(objects(&env), before, "a dry run changes nothing");
    assert!(env.records_of("purged").is_empty());
    let live = purge(&env, PURGE_AT, false);
    assert_eq!(comparable(&dry), comparable(&live));
    let left = objects(&env);
    assert_eq!(left.len(), 1);
    assert!(held_object.ends_with(left.iter().next().unwrap().as_str()));

    // One flow.purged per part of the deleted objects, none for the held object's.
    let purged: Vec<String> = env
        .records_of("purged")
        .iter()
        .map(|r| {
            let d = &r["data"];
            assert_eq!(d["reason"], "retention");
            part_key(d)
        })
        .collect();
    let expected: BTreeSet<String> = parts
        .iter()
        .filter(|(_, key)| **key != held_object)
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(purged.len(), expected.len(), "each part once");
    assert_eq!(purged.iter().cloned().collect::<BTreeSet<_>>(), expected);

    // The index: purged parts gone, the held flow marked.
    env.ok(&["index"]);
    let listed: Value =
        serde_json::from_str(&env.ok(&["list", "--json", "--limit", "100"])).unwrap();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{listed}");
    for item in items {
        let held = item["flow_id"] == "flow-1";
        assert_eq!(item["held"], held, "{item}");
    }
    // The held flow still reads back.
    let got = env.ok(&["get", "acme/flow-1"]);
    assert!(got.contains("flow-1-3"), "{got}");

    // Released: the next purge removes it.
    assert_eq!(
        env.run(&["release", "acme/flow-2"]).status.code(),
        Some(1),
        "not held"
    );
    env.ok(&["release", "acme/flow-1", "--actor", "legal"]);
    let r = purge(&env, PURGE_AT, false);
    assert_eq!(r["objects"], 1);
    assert!(objects(&env).is_empty());
    env.ok(&["index"]);
    let listed: Value = serde_json::from_str(&env.ok(&["list", "--json"])).unwrap();
    assert!(listed["items"].as_array().unwrap().is_empty());
    // The live flow was never touched.
    assert!(env.ok(&["get", "acme/running"]).contains("r-1"));

    // The audit trail: archives, the hold, both purges, the release.
    let audit: Vec<Value> = serde_json::from_str(&env.ok(&["audit", "--json"])).unwrap();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|r| (r["action"].as_str().unwrap(), r["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(actions.iter().filter(|a| a.0 == "archive").count(), 4);
    assert!(actions.contains(&("hold", "legal")));
    assert!(actions.contains(&("release", "legal")));
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == &("purge", "ops@example.com"))
            .count(),
        4
    );
    let hold = audit.iter().find(|r| r["action"] == "hold").unwrap();
    assert_eq!(hold["reason"], "case 7");
    assert_eq!(hold["flow_id"], "flow-1");
    // --since filters by time; the text form prints one line per record.
    let later: Vec<Value> =
        serde_json::from_str(&env.ok(&["audit", "--json", "--since", "2100-01-01T00:00:00Z"]))
            .unwrap();
    assert!(later.is_empty());
    assert_eq!(env.ok(&["audit"]).lines().count(), audit.len());
    assert_eq!(
        env.run(&["audit", "--since", "yesterday"]).status.code(),
        Some(2)
    );
}

#[test]
fn sigkill_after_deleting_an_object_loses_no_flow_purged() {
    let env = archived_env();
    let parts = object_of_part(&env);
    let out = env
        .command(&["purge", "--now", PURGE_AT])
        .env("FLOW_ARCHIVER_FAILPOINT", "after-purge-delete")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the failpoint kills the purge");
    assert_eq!(objects(&env).len(), 3, "one object deleted before the kill");
    assert!(env.records_of("purged").is_empty());
    let r = purge(&env, PURGE_AT, false);
    assert_eq!(r["recovered"], 1, "{r}");
    assert!(objects(&env).is_empty());
    let purged: BTreeMap<String, usize> =
        env.records_of("purged")
            .iter()
            .fold(BTreeMap::new(), |mut m, r| {
                let d = &r["data"];
                *m.entry(part_key(d)).or_default() += 1;
                m
            });
    assert_eq!(
        purged.keys().cloned().collect::<BTreeSet<_>>(),
        parts.keys().cloned().collect::<BTreeSet<_>>()
    );
    assert!(purged.values().all(|n| *n == 1), "{purged:?}");
    env.ok(&["index"]);
    let listed: Value = serde_json::from_str(&env.ok(&["list", "--json"])).unwrap();
    assert!(listed["items"].as_array().unwrap().is_empty());
}

/// Holds through the API that `run` serves: admin token only, validated, durable, and
/// honoured by the purge pass running in the same process.
#[test]
fn holds_through_the_api_of_run_are_honoured_by_its_purge() {
    let env = env();
    let port = free_port();
    let config = std::fs::read_to_string(env.path().join("flow-archiver.toml")).unwrap();
    env.write(
        "flow-archiver.toml",
        format!(
            "{config}[api]\nlisten = \"127.0.0.1:{port}\"\nadmin_token = \"{ADMIN}\"\n\
             [api.tenant_tokens]\nacme = \"{TENANT}\"\n"
        )
        .as_bytes(),
    );
    // The hold is placed before anything is archived (a purge pass runs at start).
    let run = env.spawn(&["run"]);
    let base = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(20), "the API to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    // `run` serves the console and GraphQL too, with holds open to the admin token.
    assert_eq!(http_get(&format!("{base}/ui"), "").0, 200);
    let (status, me) = graphql(&base, ADMIN, "{ viewer { role canAct } }", Value::Null);
    assert_eq!(
        (status, &me["data"]["viewer"]),
        (200, &serde_json::json!({"role": "admin", "canAct": true}))
    );
    let hold_url = format!("{base}/flows/acme/flow-1/hold");
    let body = r#"{"reason":"case 11","actor":"legal"}"#;
    assert_eq!(http_request("PUT", &hold_url, "", Some(body)).0, 401);
    assert_eq!(
        http_request("PUT", &hold_url, TENANT, Some(body)).0,
        403,
        "a tenant token cannot hold"
    );
    assert_eq!(
        http_request(
            "PUT",
            &format!("{base}/flows/acme/..%2Fetc/hold"),
            ADMIN,
            Some(body)
        )
        .0,
        400
    );
    assert_eq!(
        http_request("PUT", &hold_url, ADMIN, Some(r#"{"reason":" "}"#)).0,
        400
    );
    // Malformed, mistyped and oversized bodies are refused before anything changes.
    assert_eq!(
        http_request("PUT", &hold_url, ADMIN, Some(r#"{"reason":"#)).0,
        400
    );
    assert_eq!(
        http_request("PUT", &hold_url, ADMIN, Some(r#"{"reason":7}"#)).0,
        422
    );
    let huge = env.write(
        "huge.json",
        format!(r#"{{"reason":"{}"}}"#, "x".repeat(3 << 20)).as_bytes(),
    );
    let huge = format!("@{}", huge.display());
    assert_eq!(http_request("PUT", &hold_url, ADMIN, Some(&huge)).0, 413);
    assert_eq!(
        http_request(
            "DELETE",
            &format!("{base}/flows/acme/flow-2/hold"),
            ADMIN,
            None
        )
        .0,
        404,
        "not held"
    );
    let (status, placed) = http_request("PUT", &hold_url, ADMIN, Some(body));
    assert_eq!(status, 200, "{placed}");
    assert_eq!(placed["actor"], "api:legal");
    let (status, holds) = http_get(&format!("{base}/holds"), ADMIN);
    assert_eq!(status, 200);
    assert_eq!(holds[0]["flow_id"], "flow-1", "{holds}");
    assert_eq!(holds[0]["reason"], "case 11");
    // Every answer is the one schemas/openapi.yaml documents.
    let hold = "/flows/{tenant}/{flow_id}/hold";
    let case = |method: &str, url: &str, token: &str, body: Value| {
        serde_json::json!({"path": if url == "/holds" { "/holds" } else { hold },
            "url": url, "token": token, "method": method, "body": body})
    };
    check_openapi_cases(
        &env,
        &base,
        &[
            case("GET", "/holds", ADMIN, Value::Null),
            case("GET", "/holds", TENANT, Value::Null),
            case(
                "PUT",
                "/flows/acme/flow-3/hold",
                ADMIN,
                serde_json::json!({"reason": "case 12"}),
            ),
            case(
                "PUT",
                "/flows/acme/flow-3/hold",
                "",
                serde_json::json!({"reason": "x"}),
            ),
            case(
                "PUT",
                "/flows/acme/..%2Fx/hold",
                ADMIN,
                serde_json::json!({"reason": "x"}),
            ),
            case(
                "DELETE",
                "/flows/acme/flow-3/hold?reason=done",
                ADMIN,
                Value::Null,
            ),
            case("DELETE", "/flows/acme/flow-3/hold", ADMIN, Value::Null),
        ],
    );
    run.stop();
    archive_all(&env);
    let parts = object_of_part(&env);

    // A purge pass every second now: everything but the held flow's object goes.
    let run = env.spawn_env(
        &[(
            "FLOW_ARCHIVER__SCHEDULER__PURGE_INTERVAL".into(),
            "1s".into(),
        )],
        &["run"],
    );
    eventually(Duration::from_secs(30), "unheld objects purged", || {
        (objects(&env).len() == 1).then_some(())
    });
    let held_object = &parts["acme/flow-1/1"];
    assert!(held_object.ends_with(objects(&env).iter().next().unwrap().as_str()));
    let (status, _) = http_request("DELETE", &format!("{hold_url}?reason=closed"), ADMIN, None);
    assert_eq!(status, 200);
    eventually(
        Duration::from_secs(30),
        "the released object purged",
        || objects(&env).is_empty().then_some(()),
    );
    run.stop();
    let audit: Vec<Value> = serde_json::from_str(&env.ok(&["audit", "--json"])).unwrap();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|r| (r["action"].as_str().unwrap(), r["actor"].as_str().unwrap()))
        .collect();
    assert!(actions.contains(&("hold", "api:legal")), "{actions:?}");
    assert!(actions.contains(&("release", "api:admin")), "{actions:?}");
}

#[test]
fn run_purges_on_its_interval() {
    let env = archived_env();
    // The archive_for of 1d has long passed in real time.
    let run = env.spawn_env(
        &[(
            "FLOW_ARCHIVER__SCHEDULER__PURGE_INTERVAL".into(),
            "1s".into(),
        )],
        &["run"],
    );
    eventually(Duration::from_secs(30), "every object purged", || {
        objects(&env).is_empty().then_some(())
    });
    run.stop();
    assert_eq!(env.records_of("purged").len(), 7);
}
