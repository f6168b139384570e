//! NATS JetStream end to end, against a real `nats-server -js` and an independent
//! client (Python `nats-py`):
//! - a mixed workload (structured JSON and `ce-` header events, duplicates, shuffled
//!   sequences, hostile records) goes in through a durable pull consumer;
//! - every terminal flow comes out once on `flow.archived.{tenant}.{flow}.{part}` in
//!   the compacted archived stream, pointing at a frame whose bytes match;
//! - refused records land on the dead-letter subject with their reason in a header;
//! - SIGKILL mid-ingest and mid-archive, and a NATS server restart while running,
//!   lose nothing and archive nothing twice;
//! - a message that keeps coming back is dead-lettered and terminated;
//! - two instances split the work by subject (static partitioning);
//! - the consumer acks cumulatively (`all`) or per message (`explicit`), and one that
//!   never acks (`none`) is refused;
//! - held acks: two processes on one consumer say why; messages the stream's limits
//!   or a deletion by hand drop while held do not stop acks for good;
//! - `bench --nats` measures and reports every figure against the real server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use crate::support::config::{broker_config, Broker};
use crate::support::*;
use base64::Engine;
use serde_json::{json, Value};

fn config(server: &NatsServer, extra: &str) -> String {
    let section = format!("ack_wait = \"5s\"\nmax_ack_pending = 1000\n{extra}");
    broker_config(Broker::Nats {
        url: &server.url(),
        section: &section,
    })
}

/// The `[api]` section that serves `/metrics` on `port`, appended to [`config`].
fn api_on(port: u16) -> String {
    format!("[api]\nlisten = \"127.0.0.1:{port}\"\n")
}

fn record(subject: &str, value: &[u8], headers: &[(&str, &str)]) -> Value {
    json!({
        "subject": subject,
        "value_b64": base64::engine::general_purpose::STANDARD.encode(value),
        "headers": headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
    })
}

struct Workload {
    records: Vec<Value>,
    terminal: BTreeMap<(String, String), Vec<String>>,
    bad: Vec<&'static str>,
}

/// `partitions` > 1 spreads flows over `flows.events.p{n}.…` subjects.
fn workload(flows: usize, partitions: usize) -> Workload {
    let time = (chrono::Utc::now() - chrono::Duration::seconds(30))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut records = Vec::new();
    let mut terminal = BTreeMap::new();
    for f in 0..flows {
        let tenant = format!("tenant-{}", f % 2);
        let flow = format!("flow.{f:03}");
        let subject = if partitions > 1 {
            format!("flows.events.p{}.{tenant}.f{f}", f % partitions)
        } else {
            format!("flows.events.{tenant}.f{f}")
        };
        let n = 3 + f % 3;
        let finished = f % 6 != 5;
        let mut ids = Vec::new();
        let mut recs = Vec::new();
        for seq in 1..=n {
            let kind = match (seq == n, finished, seq) {
                (true, true, _) => "completed",
                (_, _, 1) => "started",
                _ => "step",
            };
            let id = format!("{flow}-e{seq}");
            ids.push(id.clone());
            if (f + seq) % 2 == 0 {
                // Attributes in headers (the NATS binding draft), values %-encoded.
                let data = json!({"step": seq});
                let ty = format!("io.test.flow.{kind}");
                let seq_text = format!("{seq:04}");
                recs.push(record(
                    &subject,
                    data.to_string().as_bytes(),
                    &[
                        ("ce-specversion", "1.0"),
                        ("ce-id", &id),
                        ("ce-source", "%2Fengine"),
                        ("ce-type", &ty),
                        ("ce-subject", &flow),
                        ("ce-tenant", &tenant),
                        ("ce-sequence", &seq_text),
                        ("ce-time", &time),
                        ("Content-Type", "application/json"),
                    ],
                ));
            } else {
                let event = ce(&tenant, &flow, &id, seq as u64, kind, &time);
                recs.push(record(&subject, event.as_bytes(), &[]));
            }
        }
        if f % 2 == 1 {
            recs.reverse();
        } else {
            recs.rotate_left(1);
        }
        recs.push(recs[0].clone());
        records.extend(recs);
        if finished {
            terminal.insert((tenant, flow), ids);
        }
    }
    let subject = "flows.events.bad";
    let bad_cases: Vec<(Value, &'static str)> = vec![
        (record(subject, b"{\"specversion\":", &[]), "malformed_json"),
        (
            record(
                subject,
                br#"{"specversion":"1.0","id":"x","source":"/e","type":"t.step","subject":"../../x"}"#,
                &[],
            ),
            "invalid_identifier",
        ),
        (record(subject, &[0xff, 0xfe], &[]), "invalid_utf8"),
        (record(subject, "x".repeat(5000).as_bytes(), &[]), "oversize"),
        (
            record(subject, b"{}", &[("ce-specversion", "1.0"), ("ce-id", "%ZZ")]),
            "invalid_header",
        ),
        (record(subject, b"[]", &[]), "not_an_object"),
    ];
    let mut bad = Vec::new();
    let step = records.len() / bad_cases.len();
    for (i, (rec, reason)) in bad_cases.into_iter().enumerate() {
        records.insert((i + 1) * step + i, rec);
        bad.push(reason);
    }
    Workload {
        records,
        terminal,
        bad,
    }
}

fn produce(server: &NatsServer, env: &Env, records: &[Value]) {
    let spec = env.write(
        "produce.json",
        serde_json::to_string(records).unwrap().as_bytes(),
    );
    nats_client(&["produce", &server.url(), spec.to_str().unwrap()]);
}

/// (num_pending, num_ack_pending) of a consumer.
fn pending(server: &NatsServer, consumer: &str) -> (i64, i64) {
    let out = nats_client(&["pending", &server.url(), "FLOW_EVENTS", consumer]);
    let mut it = out.split_whitespace().map(|n| n.parse::<i64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn drained(server: &NatsServer, consumer: &str) -> bool {
    pending(server, consumer) == (0, 0)
}

fn read_stream(server: &NatsServer, stream: &str, n: usize) -> Vec<Value> {
    nats_client(&[
        "read",
        &server.url(),
        stream,
        &n.to_string(),
        "--timeout",
        "60",
    ])
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect()
}

/// Starts the archiver once so it creates its streams and consumer, then stops it.
fn prepare(server: &NatsServer, env: &Env, consumer: &str) {
    let run = env.spawn(&["run", "--source", "nats"]);
    // Generous: eight tests start servers, archivers and clients at once on two cores.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while pending(server, consumer).0 < 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the consumer to exist; the archiver said:\n{}",
            run.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    run.stop();
}

fn short_retention() -> Vec<(String, String)> {
    vec![
        ("FLOW_ARCHIVER__RETENTION__COMPLETED".into(), "1s".into()),
        ("FLOW_ARCHIVER__RETENTION__FAILED".into(), "1s".into()),
    ]
}

fn records_read(stopped: &str) -> i64 {
    stopped
        .split("stopped: read ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary in: {stopped}"))
}

/// Runs until the consumer has nothing pending or unacknowledged.
fn ingest_all(server: &NatsServer, env: &Env) -> String {
    let run = env.spawn(&["run", "--source", "nats"]);
    eventually(Duration::from_secs(90), "the consumer to drain", || {
        drained(server, "flow-archiver").then_some(())
    });
    run.stop()
}

fn archive_all(server: &NatsServer, envs: &[&Env], flows: usize) -> Vec<Value> {
    let runs: Vec<Running> = envs
        .iter()
        .map(|e| e.spawn_env(&short_retention(), &["run", "--source", "nats"]))
        .collect();
    let archived = read_stream(server, "FLOW_ARCHIVED", flows);
    for run in runs {
        run.stop();
    }
    archived
}

/// Every terminal flow once, on its subject, with its events and checksums.
fn check_archived(roots: &[std::path::PathBuf], w: &Workload, archived: &[Value]) {
    let subjects: Vec<&str> = archived
        .iter()
        .map(|r| r["subject"].as_str().unwrap())
        .collect();
    let distinct: BTreeSet<&str> = subjects.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        subjects.len(),
        "no subject twice: {subjects:?}"
    );
    let expected: BTreeSet<String> = w
        .terminal
        .keys()
        .map(|(t, f)| format!("flow.archived.{t}.{}.1", f.replace('.', "%2E")))
        .collect();
    let got: BTreeSet<String> = distinct.iter().map(|s| s.to_string()).collect();
    assert_eq!(got, expected);
    for r in archived {
        let event = &r["json"];
        assert_eq!(event["type"], "io.flowarchiver.flow.archived");
        assert_eq!(r["headers"]["Nats-Msg-Id"], event["id"]);
        let d = &event["data"];
        let key = (
            d["tenant"].as_str().unwrap().to_string(),
            d["flow_id"].as_str().unwrap().to_string(),
        );
        let ids = &w.terminal[&key];
        assert_eq!(d["event_count"], ids.len(), "{key:?}");
        let object = roots
            .iter()
            .find_map(|root| std::fs::read(root.join(d["object_key"].as_str().unwrap())).ok())
            .expect("object exists");
        assert_eq!(sha256_hex(frame_of(&object, d)), d["frame_sha256"]);
        let text = part_text(&["zstd", "-dc"], &object, d);
        let got: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v.get("specversion").is_some())
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(&got, ids, "{key:?}: events in sequence order");
    }
}

#[test]
fn nats_end_to_end_mixed_workload() {
    let server = NatsServer::start();
    // The archive is a real S3 server here: brokers, S3, index and API end to end.
    let s3 = S3Server::start("flow-archive");
    let mut env = Env::new(&config(&server, ""));
    env.vars = vec![
        ("ARCHIVE_BUCKET".into(), "flow-archive".into()),
        (
            "FLOW_ARCHIVER__ARCHIVE__ENDPOINT".into(),
            s3.endpoint.clone(),
        ),
        ("AWS_ACCESS_KEY_ID".into(), s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY".into(), s3.secret_key.clone()),
        ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
    ];
    let w = workload(30, 1);
    // The stream is created by the archiver on first start.
    prepare(&server, &env, "flow-archiver");
    produce(&server, &env, &w.records);
    let stopped = ingest_all(&server, &env);
    assert_eq!(records_read(&stopped), w.records.len() as i64, "{stopped}");

    let letters = read_stream(&server, "FLOW_DEAD_LETTERS", w.bad.len());
    let mut reasons: Vec<String> = letters
        .iter()
        .map(|l| {
            l["headers"]["Flow-Archiver-Reason"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    reasons.sort();
    let mut expected: Vec<String> = w.bad.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(reasons, expected);
    for l in &letters {
        assert_eq!(l["headers"]["Flow-Archiver-Subject"], "flows.events.bad");
    }

    let archived = archive_all(&server, &[&env], w.terminal.len());
    check_archived(&[s3.root.path().join("flow-archive")], &w, &archived);
    assert!(archived[0]["json"]["data"]["object_uri"]
        .as_str()
        .unwrap()
        .starts_with("s3://flow-archive/"));

    // The index follows the compacted stream; rebuilt from it and from the manifests
    // alone it is the same.
    let original = env.ok(&["list", "--json", "--limit", "1000"]);
    let page: Value = serde_json::from_str(&original).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), w.terminal.len());
    env.ok(&["index", "rebuild"]);
    assert_eq!(
        env.ok(&["list", "--json", "--limit", "1000"]),
        original,
        "rebuilt from the stream"
    );
    env.ok(&["index", "rebuild", "--from-archive"]);
    assert_eq!(
        env.ok(&["list", "--json", "--limit", "1000"]),
        original,
        "rebuilt from the manifests"
    );
    // An archived flow through the HTTP API, with an independent client.
    {
        let (_api, base) = serve_api(&env);
        let first = &page["items"][0];
        let url = format!(
            "{base}/flows/{}/{}",
            first["tenant"].as_str().unwrap(),
            first["flow_id"].as_str().unwrap()
        );
        let (status, body) = http_get(&url, "");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["archived"], true);
        assert_eq!(body["event_count"], first["event_count"]);
    }

    // Replay into a subject of the events stream; read it back in order.
    let ((tenant, flow), ids) = w.terminal.iter().next().unwrap();
    env.ok(&[
        "replay",
        &format!("{tenant}/{flow}"),
        "--to",
        "nats:flows.events.replayed",
    ]);
    let all = read_stream(&server, "FLOW_EVENTS", w.records.len() + ids.len());
    let replayed: Vec<String> = all
        .iter()
        .filter(|m| m["subject"] == "flows.events.replayed")
        .map(|m| m["json"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(&replayed, ids);

    check_hold_erase_purge(&server, &env, &w, &s3.root.path().join("flow-archive"));
}

/// Hold, erase (a segment rewritten on S3) and purge over NATS: the compacted stream
/// ends with one message per part subject — `flow.purged` where the part is gone,
/// `flow.archived` where it is kept — plus the hold; the index follows; every audited
/// operation is in the audit stream as in the local file.
fn check_hold_erase_purge(server: &NatsServer, env: &Env, w: &Workload, bucket: &Path) {
    let mut flows = w.terminal.keys();
    let (ht, hf) = flows.next().unwrap();
    let (et, ef) = flows.next().unwrap();
    env.ok(&["hold", &format!("{ht}/{hf}"), "--reason", "case 3"]);
    let erased: Value = serde_json::from_str(&env.ok(&[
        "erase",
        &format!("{et}/{ef}"),
        "--reason",
        "request 7",
        "--json",
    ]))
    .unwrap();
    assert_eq!(erased["parts_erased"], 1, "{erased}");
    // Not one byte of the erased flow is left in the bucket.
    for p in files_under(bucket) {
        if p.to_string_lossy().ends_with(".zst") {
            let plain = pipe(&["zstd", "-dc"], &std::fs::read(&p).unwrap());
            let text = String::from_utf8_lossy(&plain);
            assert!(
                !text.contains(&format!("\"{ef}\"")),
                "{ef} in {}",
                p.display()
            );
        }
    }
    let purge: Value =
        serde_json::from_str(&env.ok(&["purge", "--now", "2100-01-01T00:00:00Z", "--json"]))
            .unwrap();
    let purged = purged_parts(&purge);
    let messages = read_stream(server, "FLOW_ARCHIVED", w.terminal.len() + 1);
    assert_eq!(messages.len(), w.terminal.len() + 1, "one per subject");
    let mut kept = 0;
    for m in &messages {
        let e = &m["json"];
        let d = &e["data"];
        let kind = e["type"].as_str().unwrap();
        if kind == "io.flowarchiver.flow.hold" {
            assert_eq!(d["flow_id"], hf.as_str());
            assert_eq!(d["held"], true);
            continue;
        }
        let key = format!(
            "{}/{}/{}",
            d["tenant"].as_str().unwrap(),
            d["flow_id"].as_str().unwrap(),
            d["part"]
        );
        if check_latest_part_record(kind, d, &key, &format!("{et}/{ef}/1"), &purged) {
            kept += 1;
        }
    }
    assert_index_keeps(env, kept, hf);
    env.ok(&["verify"]);

    let file = audit_records_with(env, &["archive", "replay", "hold", "erase", "purge"]);
    let audit: Vec<Value> = read_stream(server, "FLOW_AUDIT", file.len())
        .into_iter()
        .map(|m| m["json"].clone())
        .collect();
    assert_same_records(&audit, &file, "the audit stream carries the file's lines");
}

#[test]
fn sigkill_mid_ingest_and_mid_archive_and_a_server_restart_lose_nothing() {
    let mut server = NatsServer::start();
    let env = Env::new(&config(&server, ""));
    let w = workload(40, 1);
    prepare(&server, &env, "flow-archiver");
    let (first, second) = w.records.split_at(w.records.len() / 2);
    produce(&server, &env, first);
    // Killed right after a durable batch, before its acks: they come back after ack_wait.
    env.run_killed_at(
        &[("FLOW_ARCHIVER__INPUT__BATCH_SIZE".into(), "16".into())],
        &["run", "--source", "nats"],
        "before-ack:2",
    );
    // The server restarts (down for 1 s) once the archiver is connected to it.
    let run = env.spawn(&["run", "--source", "nats"]);
    eventually(Duration::from_secs(30), "the archiver connected", || {
        (server.connections() >= 1).then_some(())
    });
    server.restart(Duration::from_secs(1));
    produce(&server, &env, second);
    eventually(Duration::from_secs(120), "the consumer to drain", || {
        drained(&server, "flow-archiver").then_some(())
    });
    run.stop();
    // Killed after publishing, before deleting state: re-published under the same id.
    env.run_killed_at(
        &short_retention(),
        &["run", "--source", "nats"],
        "after-publish:1",
    );
    let archived = archive_all(&server, &[&env], w.terminal.len());
    check_archived(&[env.path().join("data/archive")], &w, &archived);
    env.ok(&["verify"]);
}

/// A server, an archiver configured for it, and `workload(30, 1)` ingested.
fn ingested() -> (NatsServer, Env, Workload) {
    let server = NatsServer::start();
    let env = Env::new(&config(&server, ""));
    let w = workload(30, 1);
    prepare(&server, &env, "flow-archiver");
    produce(&server, &env, &w.records);
    ingest_all(&server, &env);
    (server, env, w)
}

/// How often each archive step is reached when `run` archives [`ingested`]'s flows
/// with no kill (once per segment), from the failpoint log.
fn archive_step_counts() -> &'static BTreeMap<String, usize> {
    static COUNTS: std::sync::OnceLock<BTreeMap<String, usize>> = std::sync::OnceLock::new();
    COUNTS.get_or_init(|| {
        let (server, env, w) = ingested();
        let log = env.path().join("steps.log");
        let mut vars = short_retention();
        vars.push((
            "FLOW_ARCHIVER_FAILPOINT_LOG".into(),
            log.display().to_string(),
        ));
        let run = env.spawn_env(&vars, &["run", "--source", "nats"]);
        let archived = read_stream(&server, "FLOW_ARCHIVED", w.terminal.len());
        run.stop();
        check_archived(&[env.path().join("data/archive")], &w, &archived);
        steps_reached(&log)
    })
}

/// SIGKILL at each archive step's first, middle and last hit, each on a fresh server:
/// the restart archives every flow once and every object verifies.
#[test]
fn sigkill_at_every_archive_step_first_middle_and_last_hit() {
    let counts = archive_step_counts();
    let steps = [
        "after-intent",
        "after-upload",
        "after-verify",
        "mid-publish",
        "after-publish",
    ];
    for step in steps {
        for at in first_middle_last(counts, step) {
            let (server, env, w) = ingested();
            env.run_killed_at(
                &short_retention(),
                &["run", "--source", "nats"],
                &format!("{step}:{at}"),
            );
            let archived = archive_all(&server, &[&env], w.terminal.len());
            check_archived(&[env.path().join("data/archive")], &w, &archived);
            env.ok(&["verify"]);
        }
    }
}

#[test]
fn a_message_delivered_too_often_is_dead_lettered_and_terminated() {
    let server = NatsServer::start();
    let env = Env::new(&config(&server, "max_deliver = 2"));
    prepare(&server, &env, "flow-archiver");
    let w = workload(4, 1);
    produce(&server, &env, &w.records);
    env.run_killed_at(&[], &["run", "--source", "nats"], "before-ack:1");
    // Second delivery = nats.max_deliver: set aside, not processed again.
    ingest_all(&server, &env);
    let letters = read_stream(&server, "FLOW_DEAD_LETTERS", 1);
    assert!(
        letters
            .iter()
            .any(|l| l["headers"]["Flow-Archiver-Reason"] == "too_many_deliveries"),
        "{letters:?}"
    );
    assert!(
        drained(&server, "flow-archiver"),
        "terminated, not redelivered"
    );
}

#[test]
fn two_instances_split_the_stream_by_subject() {
    let server = NatsServer::start();
    let a = Env::new(&config(
        &server,
        "consumer = \"archiver-p0\"\nfilter_subject = \"flows.events.p0.>\"",
    ));
    let b = Env::new(&config(
        &server,
        "consumer = \"archiver-p1\"\nfilter_subject = \"flows.events.p1.>\"",
    ));
    let w = workload(30, 2);
    let good: Vec<Value> = w
        .records
        .iter()
        .filter(|r| r["subject"] != "flows.events.bad")
        .cloned()
        .collect();
    prepare(&server, &a, "archiver-p0");
    prepare(&server, &b, "archiver-p1");
    produce(&server, &a, &good);
    let runs = [
        a.spawn(&["run", "--source", "nats"]),
        b.spawn(&["run", "--source", "nats"]),
    ];
    eventually(Duration::from_secs(90), "both consumers to drain", || {
        (pending(&server, "archiver-p0") == (0, 0) && pending(&server, "archiver-p1") == (0, 0))
            .then_some(())
    });
    let reads: Vec<i64> = runs.into_iter().map(|r| records_read(&r.stop())).collect();
    assert_eq!(reads.iter().sum::<i64>(), good.len() as i64, "{reads:?}");
    assert!(reads.iter().all(|&n| n > 0), "{reads:?}");
    let archived = archive_all(&server, &[&a, &b], w.terminal.len());
    check_archived(
        &[a.path().join("data/archive"), b.path().join("data/archive")],
        &w,
        &archived,
    );

    // The same consumer name with another filter is refused, naming the fix.
    let wrong = Env::new(&config(
        &server,
        "consumer = \"archiver-p0\"\nfilter_subject = \"flows.events.p1.>\"",
    ));
    let out = wrong.run(&["run", "--source", "nats"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("already exists with filter"), "{stderr}");
}

#[test]
fn consumer_ack_policies_are_checked_and_a_shared_consumer_never_acks_cumulatively() {
    let server = NatsServer::start();
    let env = Env::new(&config(&server, ""));
    prepare(&server, &env, "flow-archiver");
    let policy = |consumer: &str| {
        nats_client(&["ack-policy", &server.url(), "FLOW_EVENTS", consumer])
            .trim()
            .to_string()
    };
    assert_eq!(
        policy("flow-archiver"),
        "all",
        "the consumer flow-archiver creates"
    );
    // `none` forgets a message once delivered: refused, and left as it was.
    nats_client(&["consumer", &server.url(), "FLOW_EVENTS", "ack-none", "none"]);
    let other = Env::new(&config(&server, "consumer = \"ack-none\""));
    let out = other.run(&["run", "--source", "nats"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ack-none has ack policy"), "{stderr}");
    assert!(stderr.contains("delete the consumer"), "{stderr}");
    assert_eq!(policy("ack-none"), "none", "left as it was");
    // An existing consumer that acks per message is used as it is, and drains.
    nats_client(&[
        "consumer",
        &server.url(),
        "FLOW_EVENTS",
        "ack-explicit",
        "explicit",
    ]);
    let explicit = Env::new(&config(&server, "consumer = \"ack-explicit\""));
    produce(&server, &explicit, &workload(20, 1).records);
    let run = explicit.spawn(&["run", "--source", "nats"]);
    eventually(
        Duration::from_secs(60),
        "the explicit consumer to drain",
        || drained(&server, "ack-explicit").then_some(()),
    );
    run.stop();
    assert_eq!(policy("ack-explicit"), "explicit");
    // The cumulative one drains the same messages too.
    let run = env.spawn(&["run", "--source", "nats"]);
    eventually(
        Duration::from_secs(60),
        "the cumulative consumer to drain",
        || drained(&server, "flow-archiver").then_some(()),
    );
    run.stop();

    // Instances sharing their state share the consumer: a cumulative one is refused
    // (one instance's ack would cover another's messages), and left as it was.
    let mut shared = Env::new(&config(&server, ""));
    let url = database_for(shared.path());
    shared.vars.extend([
        (
            "FLOW_ARCHIVER__STATE__BACKEND".to_string(),
            "postgres".to_string(),
        ),
        ("DATABASE_URL".to_string(), url),
    ]);
    let out = shared.run(&["run", "--source", "nats"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("acks cumulatively"), "{stderr}");
    assert!(stderr.contains("Delete the consumer"), "{stderr}");
    assert_eq!(policy("flow-archiver"), "all", "left as it was");
}

#[test]
fn two_processes_on_one_consumer_hold_their_acks_and_say_why() {
    // A misconfiguration (docs/nats.md, "Scaling out"): each process sees only some
    // deliveries, so neither can tell its batch ack would not cover the other's
    // unstored messages. Neither acks, and both say why once twice ack_wait (5 s)
    // has passed.
    let server = NatsServer::start();
    let port = free_port();
    let first = Env::new(&config(&server, &api_on(port)));
    prepare(&server, &first, "flow-archiver");
    let second = Env::new(&config(&server, ""));
    let a = first.spawn(&["run", "--source", "nats"]);
    let b = second.spawn(&["run", "--source", "nats"]);
    produce(&server, &first, &workload(200, 1).records);
    let warned = |r: &Running| r.stderr().contains("holds its acks");
    eventually(Duration::from_secs(60), "both to warn", || {
        (warned(&a) && warned(&b)).then_some(())
    });
    // And its gauge says for how long, for the alert in deploy/.
    eventually(Duration::from_secs(10), "the held-acks gauge", || {
        metric_of(port, "flow_archiver_acks_held_seconds")
            .filter(|&s| s >= 10)
            .map(|_| ())
    });
    let stderr = a.stop();
    assert!(
        stderr.contains("another process reading the same consumer"),
        "{stderr}"
    );
    b.stop();
}

/// A predecessor crashed with 1..=5 pending, so this process holds its acks
/// (cumulative acks would cover them) while it stores 6..=15. Then `drop` makes the
/// stream lose 1..=10 before 1..=5 are redelivered (ack_wait is 120 s): the server
/// forgets them as pending and moves its ack floor to 10; this process must forget
/// its held 6..=10 too, or the counts never agree and it never acks again.
fn held_messages_leave_the_stream(drop: impl FnOnce(&NatsServer)) {
    let server = NatsServer::start();
    let port = free_port();
    let slow_redelivery =
        config(&server, &api_on(port)).replace("ack_wait = \"5s\"", "ack_wait = \"120s\"");
    let env = Env::new(&slow_redelivery);
    prepare(&server, &env, "flow-archiver");
    let time = (chrono::Utc::now() - chrono::Duration::seconds(30))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let events = |seqs: std::ops::RangeInclusive<u64>| -> Vec<Value> {
        seqs.map(|seq| {
            let id = format!("e{seq}");
            let event = ce("tenant-0", "flow.dropped", &id, seq, "step", &time);
            record("flows.events.tenant-0.dropped", event.as_bytes(), &[])
        })
        .collect()
    };
    produce(&server, &env, &events(1..=5));
    let taken = nats_client(&["take", &server.url(), "FLOW_EVENTS", "flow-archiver", "5"]);
    assert_eq!(taken.trim(), "5");
    let run = env.spawn(&["run", "--source", "nats"]);
    produce(&server, &env, &events(6..=15));
    eventually(Duration::from_secs(60), "6..=15 delivered and held", || {
        (pending(&server, "flow-archiver") == (0, 15)).then_some(())
    });
    drop(&server);
    // Well within ack_wait: nothing was redelivered to make the counts agree.
    eventually(Duration::from_secs(30), "the consumer to drain", || {
        drained(&server, "flow-archiver").then_some(())
    });
    eventually(
        Duration::from_secs(10),
        "the held-acks gauge back at 0",
        || (metric_of(port, "flow_archiver_acks_held_seconds") == Some(0)).then_some(()),
    );
    let stderr = run.stop();
    assert!(stderr.contains("Held messages left the stream"), "{stderr}");
    // Everything this process received is stored: 6..=15 (1..=5 went with the
    // predecessor and the stream).
    let flow: Value = serde_json::from_str(&env.ok(&["get", "tenant-0/flow.dropped"])).unwrap();
    assert_eq!(flow["event_count"].as_u64(), Some(10), "{flow}");
}

#[test]
fn held_messages_the_stream_limits_drop_do_not_hold_acks_forever() {
    held_messages_leave_the_stream(|server| {
        let first = nats_client(&["limit", &server.url(), "FLOW_EVENTS", "5"]);
        assert_eq!(first.trim(), "11", "the stream keeps 11..=15");
    });
}

#[test]
fn a_pending_message_deleted_by_hand_does_not_hold_acks_forever() {
    // nats-server takes the deletion of pending message 10 of an `AckPolicy::All`
    // consumer as an ack of 1..=10.
    held_messages_leave_the_stream(|server| {
        nats_client(&["delete", &server.url(), "FLOW_EVENTS", "10"]);
    });
}

#[test]
fn consumer_lag_is_served_while_behind_and_zero_once_caught_up() {
    let server = NatsServer::start();
    let port = free_port();
    let env = Env::new(&config(&server, &api_on(port)));
    prepare(&server, &env, "flow-archiver");
    let w = workload(400, 1);
    produce(&server, &env, &w.records);
    // Tiny batches (one fsync each) keep the archiver behind for a while.
    let run = env.spawn_env(
        &[("FLOW_ARCHIVER__INPUT__BATCH_SIZE".into(), "2".into())],
        &["run", "--source", "nats"],
    );
    let behind = eventually(Duration::from_secs(30), "a lag above zero", || {
        lag_of(port).filter(|&lag| lag > 0)
    });
    assert!(behind <= w.records.len() as i64, "lag {behind}");
    eventually(Duration::from_secs(120), "the consumer to drain", || {
        drained(&server, "flow-archiver").then_some(())
    });
    eventually(Duration::from_secs(20), "a lag of zero", || {
        (lag_of(port) == Some(0)).then_some(())
    });
    // One process on its own consumer: its batch acks were never held for long.
    assert_eq!(metric_of(port, "flow_archiver_acks_held_seconds"), Some(0));
    run.stop();
}

#[test]
fn nats_bench_reports_every_figure_against_a_real_server() {
    let server = NatsServer::start();
    let env = Env::new("");
    let out: Value = serde_json::from_str(&env.ok(&[
        "bench",
        "--nats",
        &server.url(),
        "--flows",
        "300",
        "--events",
        "4",
        "--json",
    ]))
    .unwrap();
    assert_eq!(out["events"], 1200, "{out}");
    for figure in [
        "plain_consumer_events_per_sec",
        "default_consumer_events_per_sec",
        "acking_consumer_events_per_sec",
        "ingest_events_per_sec",
        "expiry_to_archived_p99_ms",
        "peak_rss_bytes",
    ] {
        assert!(out[figure].as_f64().unwrap() > 0.0, "{figure}: {out}");
    }
    let rate = |k: &str| out[k].as_f64().unwrap();
    let ratio = rate("ingest_events_per_sec") / rate("plain_consumer_events_per_sec");
    assert!(
        (out["ratio"].as_f64().unwrap() - ratio).abs() < 1e-9,
        "{out}"
    );
    let to_default = rate("ingest_events_per_sec") / rate("default_consumer_events_per_sec");
    assert!(
        (out["ratio_to_default"].as_f64().unwrap() - to_default).abs() < 1e-9,
        "{out}"
    );
    // Every flow of the latency run was archived (the minimum is 200 flows).
    assert_eq!(out["latency_flows"], 200, "{out}");
    // CPU per million events: this process and the rest of the machine, per reader.
    for reader in ["plain", "default", "acking", "ingest"] {
        let cpu = &out[format!("{reader}_cpu_per_million")];
        assert!(cpu[0].as_f64().unwrap() > 0.0, "{reader}: {out}");
        assert!(cpu[1].as_f64().unwrap() >= 0.0, "{reader}: {out}");
    }
}
