//! S3 Object Lock, legal holds on the objects and storage classes, against `moto` in
//! server mode, checked with an independent client (boto3, `tests/py/s3_lock.py`):
//! - compliance mode: every object retained until the latest purge date of its parts,
//!   in the storage class of its retention override, else the archive's; `hold`/`release` flip the object's legal hold
//!   (kept while another flow in it is held); `purge` leaves retained objects in place
//!   and says so; `erase` is refused before anything changes;
//! - governance mode: `erase` needs `--bypass-governance`, which is audited and removes
//!   every version of the old object; once the date passes, `purge` removes every
//!   version too;
//! - a bucket without Object Lock is refused at start with the fix.
//!
//! Retention runs on S3's clock, so these tests work in real time: events an hour
//! old, archived now.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;
use serde_json::Value;

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `retention` goes under `[retention]` (overrides after it), `archive` under `[archive]`.
fn env_for(moto: &MotoServer, bucket: &str, retention: &str, archive: &str) -> Env {
    let config = format!(
        "[retention]\ncompleted = \"1s\"\n{retention}\n\n[archive]\nbucket = \"{bucket}\"\nendpoint = \"{}\"\nprefix = \"flows\"\nsegment_max_flows = 3\n{archive}\n",
        moto.endpoint
    );
    let mut env = Env::new(&config);
    env.vars = vec![
        ("AWS_ACCESS_KEY_ID".into(), "test-access".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test-secret-key".into()),
        ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
    ];
    env
}

/// Six completed flows of two tenants, an hour old.
fn ingest_and_sweep(env: &Env) {
    let hour_ago = rfc3339(chrono::Utc::now() - chrono::Duration::hours(1));
    let mut lines = Vec::new();
    for f in 0..6 {
        for seq in 1..=3u64 {
            let kind = if seq == 3 { "completed" } else { "step" };
            lines.push(ce(
                &format!("tenant-{}", f % 2),
                &format!("flow-{f}"),
                &format!("{f}-{seq}"),
                seq,
                kind,
                &hour_ago,
            ));
        }
    }
    env.write("events.jsonl", (lines.join("\n") + "\n").as_bytes());
    env.ok(&["ingest", "events.jsonl"]);
    let out = env.ok(&["sweep", "--now", &rfc3339(chrono::Utc::now())]);
    assert!(out.contains("archived 6 flow parts"), "{out}");
}

/// Object key → the latest `purge_at` of its parts (seconds precision) and its flows.
fn objects_by_key(env: &Env) -> BTreeMap<String, (String, Vec<String>)> {
    let mut out: BTreeMap<String, (i64, Vec<String>)> = BTreeMap::new();
    for r in env.records_of("archived") {
        let d = &r["data"];
        let entry = out
            .entry(d["object_key"].as_str().unwrap().to_string())
            .or_default();
        entry.0 = entry.0.max(d["purge_at"].as_i64().unwrap() / 1_000_000);
        entry.1.push(format!(
            "{}/{}",
            d["tenant"].as_str().unwrap(),
            d["flow_id"].as_str().unwrap()
        ));
    }
    out.into_iter()
        .map(|(k, (secs, flows))| {
            let t = chrono::DateTime::from_timestamp(secs, 0).unwrap();
            (k, (rfc3339(t), flows))
        })
        .collect()
}

fn by_key(found: Vec<Value>) -> BTreeMap<String, Value> {
    found
        .into_iter()
        .map(|o| (o["key"].as_str().unwrap().to_string(), o))
        .collect()
}

#[test]
fn compliance_mode_locks_every_object_and_legal_holds_follow_the_flows() {
    let moto = MotoServer::start();
    moto.client(&["create-bucket", "locked"]);
    let env = env_for(
        &moto,
        "locked",
        "archive_for = \"30d\"\n[[retention.override]]\nmatch = { tenant = \"tenant-1\" }\narchive_for = \"60d\"\nstorage_class = \"GLACIER_IR\"",
        "object_lock = \"compliance\"\nstorage_class = \"STANDARD_IA\"",
    );
    ingest_and_sweep(&env);

    let expected = objects_by_key(&env);
    let found = by_key(moto.inspect("locked", "flows/"));
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (key, (until, _)) in &expected {
        let o = &found[key];
        assert_eq!(o["mode"], "COMPLIANCE", "{key}: {o}");
        assert_eq!(o["retain_until"], until.as_str(), "{key}: {o}");
        // The override's class for tenant-1, the archive's for the rest.
        let class = if key.contains("tenant-1") {
            "GLACIER_IR"
        } else {
            "STANDARD_IA"
        };
        assert_eq!(o["storage_class"], class, "{key}: {o}");
        assert!(o["legal_hold"].is_null() || o["legal_hold"] == "OFF", "{o}");
    }
    // The override's 60 days reach the tenant-1 objects only.
    let thirty = chrono::Utc::now() + chrono::Duration::days(31);
    for (key, (until, _)) in &expected {
        let long = until.as_str() > rfc3339(thirty).as_str();
        assert_eq!(long, key.contains("tenant-1"), "{key} until {until}");
    }

    // Holds: on the objects of the held flow only, and kept while another flow in
    // the same object is still held.
    let (key, (_, flows)) = expected
        .iter()
        .find(|(_, (_, flows))| flows.len() >= 2)
        .expect("an object with two flows");
    let (first, second) = (&flows[0], &flows[1]);
    env.ok(&["hold", first, "--reason", "case 7"]);
    let found = by_key(moto.inspect("locked", "flows/"));
    for (k, (_, fl)) in &expected {
        let want = if fl.contains(first) { "ON" } else { "OFF" };
        let got = found[k]["legal_hold"].as_str().unwrap_or("OFF");
        assert_eq!(got, want, "{k}");
    }
    env.ok(&["hold", second, "--reason", "case 8"]);
    env.ok(&["release", first, "--reason", "case 7 closed"]);
    let found = by_key(moto.inspect("locked", "flows/"));
    assert_eq!(found[key]["legal_hold"], "ON", "{second} is still held");
    env.ok(&["release", second, "--reason", "case 8 closed"]);
    let found = by_key(moto.inspect("locked", "flows/"));
    assert_eq!(found[key]["legal_hold"], "OFF");

    // Drift, as after a bucket restore: a hold gone from an object whose flow is held,
    // and one on an object whose flows are not. `verify --holds` names both and fails;
    // `--repair` sets them; then it passes.
    env.ok(&["hold", first, "--reason", "case 9"]);
    moto.client(&["set-hold", "locked", key, "OFF"]);
    let stray = expected.keys().find(|k| *k != key).unwrap();
    moto.client(&["set-hold", "locked", stray, "ON"]);
    let out = env.run(&["verify", "--holds"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2 differ") && text.contains(key.as_str()) && text.contains(stray.as_str()),
        "{text}"
    );
    let out = env.ok(&["verify", "--holds", "--repair", "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["holds_from"], "state store");
    assert_eq!(report["drift"].as_array().unwrap().len(), 2, "{report}");
    let found = by_key(moto.inspect("locked", "flows/"));
    assert_eq!(found[key]["legal_hold"], "ON");
    assert_eq!(found[stray]["legal_hold"], "OFF");
    assert!(env.ok(&["verify", "--holds"]).contains("0 differ"));
    env.ok(&["release", first, "--reason", "case 9 closed"]);
    let found = by_key(moto.inspect("locked", "flows/"));

    // Purge a year on: every object is due by its manifest, none by S3's clock.
    let year_on = rfc3339(chrono::Utc::now() + chrono::Duration::days(400));
    let out = env.ok(&["purge", "--now", &year_on]);
    assert!(
        out.contains(&format!(
            "kept {} objects that S3 Object Lock still retains",
            expected.len()
        )),
        "{out}"
    );
    assert!(env.records_of("purged").is_empty());
    assert_eq!(moto.inspect("locked", "flows/").len(), expected.len());

    // Erasure is refused before anything changes, and says why.
    let out = env.run(&["erase", first, "--reason", "request 12"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("COMPLIANCE mode until") && err.contains("Nothing was changed"),
        "{err}"
    );
    let out = env.run(&[
        "erase",
        first,
        "--reason",
        "request 12",
        "--bypass-governance",
    ]);
    assert!(!out.status.success(), "compliance cannot be bypassed");
    assert_eq!(by_key(moto.inspect("locked", "flows/")), found);
    assert!(env.records_of("purged").is_empty());
}

#[test]
fn governance_mode_erases_only_with_an_audited_bypass_and_purge_waits_for_the_date() {
    let moto = MotoServer::start();
    moto.client(&["create-bucket", "governed"]);
    let env = env_for(
        &moto,
        "governed",
        "archive_for = \"8s\"",
        "object_lock = \"governance\"",
    );
    ingest_and_sweep(&env);
    let expected = objects_by_key(&env);
    let found = by_key(moto.inspect("governed", "flows/"));
    for (key, (until, _)) in &expected {
        assert_eq!(found[key]["mode"], "GOVERNANCE", "{key}");
        assert_eq!(found[key]["retain_until"], until.as_str(), "{key}");
    }

    // Erasure without the bypass: refused, nothing changed.
    let (old_key, _) = expected
        .iter()
        .find(|(_, (_, flows))| flows.len() >= 2 && flows.contains(&"tenant-0/flow-0".into()))
        .expect("flow-0 shares an object");
    let out = env.run(&["erase", "tenant-0/flow-0", "--reason", "request 3"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--bypass-governance"), "{err}");
    assert_eq!(by_key(moto.inspect("governed", "flows/")), found);

    // With it: the object is rewritten without the flow, the old one loses every
    // version, the new one keeps the retention, and the audit says so.
    env.ok(&[
        "erase",
        "tenant-0/flow-0",
        "--reason",
        "request 3",
        "--bypass-governance",
    ]);
    let after = by_key(moto.inspect("governed", "flows/"));
    assert!(
        !after.contains_key(old_key),
        "every version of {old_key} went"
    );
    assert_eq!(after.len(), expected.len(), "one object rewritten");
    for o in after.values() {
        assert_eq!(o["mode"], "GOVERNANCE", "{o}");
        assert_eq!(o["versions"], 1, "{o}");
    }
    let audit: Vec<Value> = serde_json::from_str(&env.ok(&["audit", "--json"])).unwrap();
    let erase = audit.iter().find(|r| r["action"] == "erase").unwrap();
    assert_eq!(erase["counts"]["governance_bypassed"], 1, "{erase}");
    assert_eq!(erase["reason"], "request 3");

    // Purge before the date keeps everything; after it, every version goes.
    let later = || rfc3339(chrono::Utc::now() + chrono::Duration::days(2));
    let out = env.ok(&["purge", "--now", &later()]);
    assert!(out.contains("that S3 Object Lock still retains"), "{out}");
    let last_until = expected.values().map(|(u, _)| u.clone()).max().unwrap();
    let until = chrono::DateTime::parse_from_rfc3339(&last_until).unwrap();
    while chrono::Utc::now() <= until + chrono::Duration::seconds(1) {
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = env.ok(&["purge", "--now", &later()]);
    assert!(!out.contains("still retains"), "{out}");
    assert!(moto.inspect("governed", "flows/").is_empty());
}

#[test]
fn object_lock_on_a_bucket_without_it_is_refused_at_start_with_the_fix() {
    let moto = MotoServer::start();
    moto.client(&["create-bucket", "plain", "--no-lock"]);
    let env = env_for(&moto, "plain", "", "object_lock = \"compliance\"");
    let out = env.run(&["sweep"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not have S3 Object Lock enabled")
            && err.contains("put-object-lock-configuration"),
        "{err}"
    );
}

/// The archival of a flow is in flight (sealed, its upload stalled on a hung S3) when
/// a hold is placed through the API of `run`: the new object still carries the hold.
#[test]
fn a_hold_placed_while_its_flow_is_archived_ends_up_on_the_new_object() {
    const ADMIN: &str = "admin-token-for-holds";
    let moto = MotoServer::start();
    moto.client(&["create-bucket", "inflight"]);
    let port = free_port();
    let env = env_for(
        &moto,
        "inflight",
        "archive_for = \"30d\"",
        &format!(
            "object_lock = \"compliance\"\n[api]\nlisten = \"127.0.0.1:{port}\"\nadmin_token = \"{ADMIN}\"\n[scheduler]\ninterval = \"200ms\"\n"
        ),
    );
    // Three flows of one tenant: one segment.
    let hour_ago = rfc3339(chrono::Utc::now() - chrono::Duration::hours(1));
    let lines: String = (0..3)
        .map(|f| {
            ce(
                "acme",
                &format!("flow-{f}"),
                &format!("{f}"),
                1,
                "completed",
                &hour_ago,
            ) + "\n"
        })
        .collect();
    env.write("events.jsonl", lines.as_bytes());
    let log = env.path().join("failpoints.log");
    let vars = vec![
        (
            "FLOW_ARCHIVER_FAILPOINT".into(),
            "after-intent:1:pause".into(),
        ),
        (
            "FLOW_ARCHIVER_FAILPOINT_LOG".into(),
            log.display().to_string(),
        ),
    ];
    let run = env.spawn_env(&vars, &["run", "--source", "file:events.jsonl"]);
    run.wait_paused_at(&log, "after-intent:1");
    // Sealed. S3 stops answering, the archiver goes on into its upload, and the hold
    // is placed meanwhile (its own object listing waits on S3 too).
    moto.hang(true);
    run.resume();
    let url = format!("http://127.0.0.1:{port}/flows/acme/flow-1/hold");
    let hold = std::thread::spawn(move || {
        http_request("PUT", &url, ADMIN, Some(r#"{"reason":"case 21"}"#))
    });
    std::thread::sleep(Duration::from_secs(2));
    moto.hang(false);
    let (status, body) = hold.join().unwrap();
    assert_eq!(status, 200, "{body}");
    eventually(Duration::from_secs(60), "the segment archived", || {
        (env.records_of("archived").len() == 3).then_some(())
    });
    run.stop();
    let found = moto.inspect("inflight", "flows/");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["legal_hold"], "ON", "{found:?}");
    assert_eq!(found[0]["mode"], "COMPLIANCE");
}

/// An object moved to GLACIER (as a lifecycle rule would) cannot be read until it is
/// restored: `get` says so and names the fix, the API answers 409 `restore_required`
/// with the tier, `restore` requests it and reports it, and then reads work.
#[test]
fn a_glacier_object_is_read_after_a_restore_and_not_before() {
    let moto = MotoServer::start();
    moto.client(&["create-bucket", "cold", "--no-lock"]);
    let env = env_for(&moto, "cold", "archive_for = \"30d\"", "");
    ingest_and_sweep(&env);
    let expected = objects_by_key(&env);
    let (key, _) = expected
        .iter()
        .find(|(_, (_, flows))| flows.contains(&"tenant-0/flow-0".into()))
        .unwrap();
    assert!(env.ok(&["get", "tenant-0/flow-0"]).contains("flow-0"));
    moto.client(&["set-class", "cold", key, "GLACIER"]);

    let out = env.run(&["get", "tenant-0/flow-0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("GLACIER archive tier") && err.contains("flow-archiver restore"),
        "{err}"
    );
    // replay reads the same parts, and says the same.
    let out = env.run(&["replay", "tenant-0/flow-0", "--to", "stdout"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("GLACIER archive tier"), "{err}");
    // Hostile or unknown flows get a clear error and request nothing.
    for bad in ["tenant-0/../etc", "tenant-0/fl\u{202e}ow", "no-slash"] {
        let out = env.run(&["restore", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
    }
    let out = env.run(&["restore", "tenant-0/never-archived"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no archived part"),
        "{out:?}"
    );
    let (api, base) = serve_api(&env);
    let (status, body) = http_get(&format!("{base}/flows/tenant-0/flow-0"), "");
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "restore_required");
    assert_eq!(body["tier"], "GLACIER");
    assert_eq!(body["restore"], "not_requested");
    check_openapi(
        &env,
        &base,
        &[(
            "/flows/{tenant}/{flow_id}",
            "/flows/tenant-0/flow-0".to_string(),
            "",
        )],
    );
    // Other flows in other objects still read.
    let other = expected
        .iter()
        .find(|(k, _)| *k != key)
        .map(|(_, (_, flows))| flows[0].clone())
        .unwrap();
    let (tenant, flow) = other.split_once('/').unwrap();
    assert_eq!(
        http_get(&format!("{base}/flows/{tenant}/{flow}"), "").0,
        200
    );
    api.stop();

    let out = env.ok(&["restore", "tenant-0/flow-0", "--days", "2", "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    let objects = report["objects"].as_array().unwrap();
    let cold: Vec<&Value> = objects
        .iter()
        .filter(|o| o["storage_class"] == "GLACIER")
        .collect();
    assert_eq!(cold.len(), 1, "{report}");
    // moto restores at once; S3 takes minutes to hours (`--wait` follows it).
    assert_eq!(cold[0]["state"], "restored", "{report}");
    assert!(cold[0]["expiry"].is_string(), "{report}");
    assert!(env.ok(&["get", "tenant-0/flow-0"]).contains("flow-0"));
}

/// `lifecycle plan` derives the rules from `[[archive.transition]]` and warns where
/// the policy purges objects before a transition applies; `apply` puts them on the
/// bucket beside the bucket's own rule, and applying again changes nothing.
#[test]
fn lifecycle_rules_come_from_the_policy_and_keep_the_buckets_own() {
    let moto = MotoServer::start();
    moto.client(&["create-bucket", "tiers"]);
    moto.client(&["put-rule", "tiers", "team-logs"]);
    let env = env_for(
        &moto,
        "tiers",
        "archive_for = \"365d\"\n[[retention.override]]\nmatch = { tenant = \"short\" }\narchive_for = \"60d\"",
        "object_lock = \"governance\"\n[[archive.transition]]\nafter = \"30d\"\nstorage_class = \"STANDARD_IA\"\n[[archive.transition]]\nafter = \"180d\"\nstorage_class = \"GLACIER\"",
    );
    let plan: Value = serde_json::from_str(&env.ok(&["lifecycle", "plan", "--json"])).unwrap();
    let rules = plan["rules"].as_array().unwrap();
    let ids: Vec<&str> = rules.iter().map(|r| r["ID"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "flow-archiver: transitions",
            "flow-archiver: abandoned uploads",
            "flow-archiver: replaced versions"
        ]
    );
    assert_eq!(rules[0]["Filter"]["Prefix"], "flows/");
    assert_eq!(
        rules[0]["Transitions"],
        serde_json::json!([
            {"Days": 30, "StorageClass": "STANDARD_IA"},
            {"Days": 180, "StorageClass": "GLACIER"}
        ])
    );
    let warnings = plan["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = warnings[0].as_str().unwrap();
    assert!(w.contains("override #1") && w.contains("GLACIER"), "{w}");
    assert_eq!(plan["applied"], false);

    for _ in 0..2 {
        let applied: Value =
            serde_json::from_str(&env.ok(&["lifecycle", "apply", "--json"])).unwrap();
        assert_eq!(applied["applied"], true);
        assert_eq!(applied["kept_rules"], serde_json::json!(["team-logs"]));
        let on_bucket: Value = serde_json::from_str(&moto.client(&["lifecycle", "tiers"])).unwrap();
        let mut ids: Vec<&str> = on_bucket
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["ID"].as_str().unwrap())
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            [
                "flow-archiver: abandoned uploads",
                "flow-archiver: replaced versions",
                "flow-archiver: transitions",
                "team-logs"
            ]
        );
        let transitions = on_bucket
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["ID"] == "flow-archiver: transitions")
            .unwrap();
        assert_eq!(transitions["Transitions"][1]["StorageClass"], "GLACIER");
    }
}
