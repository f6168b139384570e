//! Kafka end to end, against a real Kafka-protocol broker (`tansu`) and an independent
//! client (Python `confluent-kafka` + `fastavro`):
//! - a mixed workload (structured and binary CloudEvents, three partitions,
//!   redelivered duplicates, shuffled sequences, hostile records) goes in;
//! - every terminal flow comes out on the archived topic exactly once, keyed
//!   `{tenant}/{flow_id}/{part}`, its Avro data decoded by fastavro and pointing at a
//!   frame whose bytes match the checksums;
//! - refused records land on the DLQ topic with their original key, value, headers
//!   and a reason header;
//! - SIGKILL during ingest and at each archive step loses nothing, archives nothing
//!   under two keys, and resumes at the committed offsets;
//! - so does a broker (SQLite storage) killed mid-ingest, long enough to cost the
//!   group membership, and mid-publish;
//! - `replay` re-publishes a flow's events in order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use crate::support::config::{broker_config, Broker};
use crate::support::*;
use base64::Engine;
use serde_json::{json, Value};

const EVENTS: &str = "flows.events";
const ARCHIVED: &str = "flow.archived";
const DLQ: &str = "flow.events.dlq";

struct Cluster {
    broker: KafkaBroker,
    env: Env,
}

/// A broker with the three topics and an archiver configured for it. `kafka_extra`
/// goes into `[kafka]`, `properties` into `[kafka.properties]`. (Static membership is
/// not exercised here: the test broker keeps rebalancing static members.)
fn cluster(kafka_extra: &str, properties: &str) -> Cluster {
    cluster_on(KafkaBroker::start(), kafka_extra, properties)
}

fn cluster_on(broker: KafkaBroker, kafka_extra: &str, properties: &str) -> Cluster {
    broker.create_topic(EVENTS, 3);
    broker.create_topic(ARCHIVED, 1);
    broker.create_topic(DLQ, 1);
    broker.create_topic("flow.audit", 1);
    let section = format!(
        r#"topics = ["{EVENTS}"]
group_id = "archiver"
archived_topic = "{ARCHIVED}"
dead_letter_topic = "{DLQ}"
{kafka_extra}

[kafka.properties]
# A member killed by a test is noticed within seconds, not the default 45.
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
{properties}
"#
    );
    let config = broker_config(Broker::Kafka {
        brokers: &broker.address(),
        section: &section,
    });
    Cluster {
        env: Env::new(&config),
        broker,
    }
}

/// One record as the independent producer sends it.
fn record(key: Option<&str>, value: &[u8], headers: &[(&str, &[u8])]) -> Value {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    json!({
        "key": key,
        "value_b64": b64(value),
        "headers": headers.iter().map(|(k, v)| json!([k, {"b64": b64(v)}])).collect::<Vec<_>>(),
    })
}

struct Workload {
    records: Vec<Value>,
    /// (tenant, flow) → (status, distinct event ids in sequence order) of terminal flows.
    terminal: BTreeMap<(String, String), (String, Vec<String>)>,
    running: Vec<(String, String)>,
    /// Expected DLQ reasons, in production order.
    bad: Vec<&'static str>,
}

fn workload(flows: usize) -> Workload {
    let time = (chrono::Utc::now() - chrono::Duration::seconds(30))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut records = Vec::new();
    let mut terminal = BTreeMap::new();
    let mut running = Vec::new();
    for f in 0..flows {
        let tenant = format!("tenant-{}", f % 2);
        let flow = format!("flow-{f:03}");
        let n = 3 + f % 4;
        let finished = f % 7 != 3;
        let status = if f % 5 == 0 { "failed" } else { "completed" };
        let mut ids = Vec::new();
        let mut flow_records = Vec::new();
        for seq in 1..=n {
            let kind = match (seq == n, finished) {
                (true, true) => status,
                (false, _) if seq == 1 => "started",
                _ => "step",
            };
            let id = format!("{flow}-e{seq}");
            ids.push(id.clone());
            let data = json!({"step": seq, "labels": {"team": format!("t{}", f % 3)}});
            let binary = (f + seq) % 2 == 0;
            let rec = if binary {
                let seq_text = format!("{seq:04}");
                let ty = format!("io.test.flow.{kind}");
                let headers: Vec<(&str, &[u8])> = vec![
                    ("ce_specversion", b"1.0"),
                    ("ce_id", id.as_bytes()),
                    ("ce_source", b"/engine"),
                    ("ce_type", ty.as_bytes()),
                    ("ce_subject", flow.as_bytes()),
                    ("ce_tenant", tenant.as_bytes()),
                    ("ce_sequence", seq_text.as_bytes()),
                    ("ce_time", time.as_bytes()),
                    ("content-type", b"application/json"),
                ];
                record(Some(&flow), data.to_string().as_bytes(), &headers)
            } else {
                let event = ce(&tenant, &flow, &id, seq as u64, kind, &time);
                record(
                    Some(&flow),
                    event.as_bytes(),
                    &[(
                        "content-type",
                        b"application/cloudevents+json; charset=utf-8",
                    )],
                )
            };
            flow_records.push(rec);
        }
        // Shuffled sequences and a redelivered duplicate.
        if f % 2 == 1 {
            flow_records.reverse();
        } else {
            flow_records.rotate_left(1);
        }
        flow_records.push(flow_records[f % flow_records.len()].clone());
        records.extend(flow_records);
        if finished {
            terminal.insert((tenant, flow), (status.to_string(), ids));
        } else {
            running.push((tenant, flow));
        }
    }
    // Hostile and malformed records, spread between the good ones.
    let good = |id: &str, subject: &str| {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"/engine","type":"io.test.flow.step","subject":"{subject}","time":"{time}"}}"#
        )
    };
    let structured: &[(&str, &[u8])] = &[("content-type", b"application/cloudevents+json")];
    let oversize = format!(
        r#"{{"specversion":"1.0","id":"big","source":"/e","type":"io.test.flow.step","subject":"big","data":"{}"}}"#,
        "x".repeat(5000)
    );
    let bad_cases: Vec<(Value, &'static str)> = vec![
        (
            record(Some("k1"), b"{\"specversion\":\"1.0\",", structured),
            "malformed_json",
        ),
        (
            record(
                Some("k2"),
                good("b2", "../../etc/passwd").as_bytes(),
                structured,
            ),
            "invalid_identifier",
        ),
        (
            record(Some("k3"), good("b3", "a\\u0000b").as_bytes(), structured),
            "invalid_identifier",
        ),
        (
            record(None, &[0x7b, 0xff, 0xfe, 0x7d], structured),
            "invalid_utf8",
        ),
        (
            record(Some("k5"), oversize.as_bytes(), structured),
            "oversize",
        ),
        (
            record(
                Some("k6"),
                br#"{"specversion":"1.0","id":"b6","source":"/e","type":"io.test.flow.step"}"#,
                structured,
            ),
            "missing_field",
        ),
        (
            record(
                Some("k7"),
                b"{}",
                &[("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_id", b"2")],
            ),
            "invalid_header",
        ),
        (
            record(
                Some("k8"),
                b"{}",
                &[("ce_specversion", b"1.0"), ("ce_Sub\u{202e}ject", b"x")],
            ),
            "invalid_header",
        ),
        (
            record(
                Some("k9"),
                b"not json",
                &[
                    ("ce_specversion", b"1.0"),
                    ("content-type", b"application/json"),
                ],
            ),
            "malformed_json",
        ),
        (record(Some("k10"), b"", &[]), "empty"),
        (record(Some("k11"), b"[1,2,3]", structured), "not_an_object"),
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
        running,
        bad,
    }
}

fn produce(c: &Cluster, records: &[Value]) {
    produce_with(c, records, &[]);
}

/// [`produce`], one record per batch: for rebalances on the test broker (see its note).
fn produce_one_per_batch(c: &Cluster, records: &[Value]) {
    produce_with(c, records, &["--one-per-batch"]);
}

fn produce_with(c: &Cluster, records: &[Value], options: &[&str]) {
    let spec = c.env.write(
        "produce.json",
        serde_json::to_string(records).unwrap().as_bytes(),
    );
    let address = c.broker.address();
    let mut args = vec!["produce", &address, EVENTS, spec.to_str().unwrap()];
    args.extend_from_slice(options);
    kafka_client(&args);
}

/// Records produced but not yet acknowledged by the archiver's group.
fn lag(c: &Cluster, produced: usize) -> i64 {
    let committed: i64 = kafka_client(&["committed", &c.broker.address(), "archiver", EVENTS])
        .trim()
        .parse()
        .expect("committed offsets");
    produced as i64 - committed
}

/// Runs the archiver with long retention until the group has committed everything.
fn ingest_all(c: &Cluster, produced: usize) -> String {
    let run = c.env.spawn(&["run", "--source", "kafka"]);
    eventually(
        Duration::from_secs(90),
        "the group to commit every record",
        || (lag(c, produced) == 0).then_some(()),
    );
    run.stop()
}

/// Runs with 1 s retention until `parts` archived records are on the topic.
fn archive_all(c: &Cluster, parts: usize) -> (Vec<Value>, String) {
    let run = c
        .env
        .spawn_env(&short_retention(), &["run", "--source", "kafka"]);
    let archived = consume_topic(&c.broker, ARCHIVED, parts, true);
    (archived, run.stop())
}

fn short_retention() -> Vec<(String, String)> {
    vec![
        ("FLOW_ARCHIVER__RETENTION__COMPLETED".into(), "1s".into()),
        ("FLOW_ARCHIVER__RETENTION__FAILED".into(), "1s".into()),
    ]
}

/// Checks every archived record against the workload and the archive itself.
fn check_archived(c: &Cluster, w: &Workload, archived: &[Value]) {
    let mut by_key: HashMap<String, Vec<&Value>> = HashMap::new();
    for r in archived {
        by_key
            .entry(r["key"].as_str().unwrap().to_string())
            .or_default()
            .push(r);
    }
    let expected_keys: BTreeSet<String> = w
        .terminal
        .keys()
        .map(|(t, f)| format!("{t}/{f}/1"))
        .collect();
    let keys: BTreeSet<String> = by_key.keys().cloned().collect();
    assert_eq!(
        keys, expected_keys,
        "each terminal flow is archived, under one key"
    );
    for (key, copies) in &by_key {
        // A re-publish after a crash repeats the same record; never a different one.
        for copy in copies {
            assert_eq!(copy["data"], copies[0]["data"], "{key}: copies differ");
        }
        let r = copies[0];
        let h = &r["headers"];
        assert_eq!(h["ce_specversion"], "1.0");
        assert_eq!(h["ce_type"], "io.flowarchiver.flow.archived");
        assert_eq!(h["ce_id"], format!("{key}/archived"));
        assert_eq!(h["content-type"], "application/avro");
        let d = &r["data"];
        let (tenant, flow) = (
            d["tenant"].as_str().unwrap(),
            d["flow_id"].as_str().unwrap(),
        );
        assert_eq!(h["ce_subject"], flow);
        let (status, ids) = &w.terminal[&(tenant.to_string(), flow.to_string())];
        assert_eq!(d["status"], status.as_str(), "{key}");
        assert_eq!(
            d["event_count"],
            ids.len(),
            "{key}: every distinct event, once"
        );
        assert_eq!(d["part"], 1);
        // The frame the record names is in the archive, with the checksums it states.
        let object = std::fs::read(
            c.env
                .path()
                .join("data/archive")
                .join(d["object_key"].as_str().unwrap()),
        )
        .expect("object exists");
        assert_eq!(sha256_hex(&object), d["object_sha256"]);
        let frame = frame_of(&object, d);
        assert_eq!(sha256_hex(frame), d["frame_sha256"]);
        let text = part_text(&["zstd", "-dc"], &object, d);
        let events: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v.get("specversion").is_some())
            .collect();
        let got: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(
            got,
            ids.iter().map(String::as_str).collect::<Vec<_>>(),
            "{key}: order"
        );
    }
}

/// The index built from the archived topic lists every flow part; rebuilt from the
/// topic's start and from the manifests alone, it is the same.
fn check_index(env: &Env, parts: usize) {
    let original = env.ok(&["list", "--json", "--limit", "1000"]);
    let page: Value = serde_json::from_str(&original).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), parts, "{original}");
    env.ok(&["index", "rebuild"]);
    assert_eq!(
        env.ok(&["list", "--json", "--limit", "1000"]),
        original,
        "rebuilt from the topic"
    );
    env.ok(&["index", "rebuild", "--from-archive"]);
    assert_eq!(
        env.ok(&["list", "--json", "--limit", "1000"]),
        original,
        "rebuilt from the manifests"
    );
    // An archived flow reads back through the index.
    let first = &page["items"][0];
    let flow: Value = serde_json::from_str(&env.ok(&[
        "get",
        &format!(
            "{}/{}",
            first["tenant"].as_str().unwrap(),
            first["flow_id"].as_str().unwrap()
        ),
    ]))
    .unwrap();
    assert_eq!(flow["archived"], true);
    assert_eq!(flow["event_count"], first["event_count"]);
    // And through the HTTP API, with an independent client.
    let (_api, base) = serve_api(env);
    let (status, body) = http_get(
        &format!(
            "{base}/flows/{}/{}",
            first["tenant"].as_str().unwrap(),
            first["flow_id"].as_str().unwrap()
        ),
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, flow, "the API and get answer the same");
}

#[test]
fn kafka_end_to_end_mixed_workload() {
    let c = cluster("", "");
    let w = workload(40);
    produce(&c, &w.records);
    let stopped = ingest_all(&c, w.records.len());
    assert!(
        stopped.contains(&format!("read {} records", w.records.len())),
        "every record read once: {stopped}"
    );

    // Dead letters: original key, value and headers, plus the reason.
    let letters = consume_topic(&c.broker, DLQ, w.bad.len(), false);
    assert_eq!(letters.len(), w.bad.len(), "{letters:#?}");
    let reasons: Vec<&str> = letters
        .iter()
        .map(|l| l["headers"]["flow-archiver-reason"].as_str().unwrap())
        .collect();
    let mut sorted_reasons = reasons.clone();
    sorted_reasons.sort();
    let mut expected = w.bad.clone();
    expected.sort();
    assert_eq!(sorted_reasons, expected);
    let originals: HashMap<Option<String>, &Value> = w
        .records
        .iter()
        .map(|r| (r["key"].as_str().map(String::from), r))
        .collect();
    for letter in &letters {
        let key = letter["key"].as_str().map(String::from);
        let original = originals[&key];
        assert_eq!(
            letter["value_b64"], original["value_b64"],
            "value kept for {key:?}"
        );
        for h in original["headers"].as_array().unwrap() {
            let name = h[0].as_str().unwrap();
            assert!(letter["headers"].get(name).is_some(), "header {name} kept");
        }
        assert!(letter["headers"]["flow-archiver-position"]
            .as_str()
            .unwrap()
            .starts_with("flows.events/"));
    }

    let (archived, _) = archive_all(&c, w.terminal.len());
    check_archived(&c, &w, &archived);
    check_index(&c.env, w.terminal.len());

    // Running flows stay live and readable.
    for (tenant, flow) in &w.running {
        let out = c.env.ok(&["get", &format!("{tenant}/{flow}")]);
        assert!(out.contains("\"archived\": false"), "{out}");
    }

    // Replay: the flow's events, in sequence order, with their original attributes.
    c.broker.create_topic("flows.replay", 1);
    let ((tenant, flow), (_, ids)) = w.terminal.iter().next().unwrap();
    c.env.ok(&[
        "replay",
        &format!("{tenant}/{flow}"),
        "--to",
        "kafka:flows.replay",
    ]);
    let replayed = consume_topic(&c.broker, "flows.replay", ids.len(), false);
    let got: Vec<String> = replayed
        .iter()
        .map(|r| {
            assert_eq!(r["key"], flow.as_str());
            assert_eq!(r["headers"]["content-type"], "application/cloudevents+json");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(r["value_b64"].as_str().unwrap())
                .unwrap();
            let event: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(event["subject"], flow.as_str());
            assert_eq!(event["source"], "/engine");
            event["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(&got, ids);

    check_hold_erase_purge(&c, &w);
}

/// Hold, erase and purge publish `flow.hold`/`flow.archived`/`flow.purged` to the
/// archived topic (Avro by fingerprint, record key per part), the index follows the
/// topic, and every audited operation is on the audit topic as in the local file.
fn check_hold_erase_purge(c: &Cluster, w: &Workload) {
    let mut flows = w.terminal.keys();
    let (ht, hf) = flows.next().unwrap();
    let (et, ef) = flows.next().unwrap();
    c.env
        .ok(&["hold", &format!("{ht}/{hf}"), "--reason", "case 3"]);
    let erased: Value = serde_json::from_str(&c.env.ok(&[
        "erase",
        &format!("{et}/{ef}"),
        "--reason",
        "request 7",
        "--json",
    ]))
    .unwrap();
    assert_eq!(erased["parts_erased"], 1, "{erased}");
    let relocated = erased["parts_relocated"].as_u64().unwrap() as usize;
    let purge: Value =
        serde_json::from_str(
            &c.env
                .ok(&["purge", "--now", "2100-01-01T00:00:00Z", "--json"]),
        )
        .unwrap();
    assert!(purge["held_objects"].as_u64().unwrap() >= 1, "{purge}");
    let purged = purged_parts(&purge);
    let total = w.terminal.len() + 1 + relocated + 1 + purged.len();
    let records = consume_topic(&c.broker, ARCHIVED, total, true);
    assert_eq!(records.len(), total, "each fact once");
    let mut latest: BTreeMap<String, &Value> = BTreeMap::new();
    for r in &records {
        latest.insert(r["key"].as_str().unwrap().to_string(), r);
    }
    let mut kept = 0;
    for (key, r) in &latest {
        let kind = r["headers"]["ce_type"].as_str().unwrap();
        let d = &r["data"];
        if *key == format!("{ht}/{hf}/hold") {
            assert_eq!(kind, "io.flowarchiver.flow.hold");
            assert_eq!(d["held"], true);
        } else if check_latest_part_record(kind, d, key, &format!("{et}/{ef}/1"), &purged) {
            kept += 1;
        }
    }
    assert_index_keeps(&c.env, kept, hf);

    let file = audit_records_with(&c.env, &["archive", "replay", "hold", "erase", "purge"]);
    let on_topic: Vec<Value> = consume_topic(&c.broker, "flow.audit", file.len(), false)
        .iter()
        .map(|r| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(r["value_b64"].as_str().unwrap())
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        })
        .collect();
    assert_same_records(&on_topic, &file, "the topic carries the file's lines");
}

#[test]
fn sigkill_during_ingest_resumes_at_the_committed_offsets() {
    let c = cluster("", "");
    let w = workload(60);
    let (first, second) = w.records.split_at(w.records.len() / 2);
    // The first half is ingested and committed by a clean run...
    produce(&c, first);
    ingest_all(&c, first.len());
    // ...the second is cut short by SIGKILL right after a durable batch.
    produce(&c, second);
    c.env.run_killed_at(
        &[("FLOW_ARCHIVER__INPUT__BATCH_SIZE".into(), "16".into())],
        &["run", "--source", "kafka"],
        "after-ingest:3",
    );
    let uncommitted = lag(&c, w.records.len());
    assert!(
        uncommitted > 0 && uncommitted <= second.len() as i64,
        "the kill left {uncommitted} records uncommitted, at most the second half ({})",
        second.len()
    );
    // The restart reads exactly what was not committed: no more (it resumes), no
    // less (nothing acknowledged before it was durable is skipped).
    let stopped = ingest_all(&c, w.records.len());
    assert!(
        stopped.contains(&format!("read {uncommitted} records")),
        "the restart reads from the committed offsets ({uncommitted} records): {stopped}"
    );
    let (archived, _) = archive_all(&c, w.terminal.len());
    check_archived(&c, &w, &archived);
}

/// How often each archive step is reached when `run` archives `workload(30)` with no
/// kill (once per segment), from the failpoint log.
fn archive_step_counts() -> &'static BTreeMap<String, usize> {
    static COUNTS: std::sync::OnceLock<BTreeMap<String, usize>> = std::sync::OnceLock::new();
    COUNTS.get_or_init(|| {
        let c = cluster("", "");
        let w = workload(30);
        produce(&c, &w.records);
        ingest_all(&c, w.records.len());
        let log = c.env.path().join("steps.log");
        let mut vars = short_retention();
        vars.push((
            "FLOW_ARCHIVER_FAILPOINT_LOG".into(),
            log.display().to_string(),
        ));
        let run = c.env.spawn_env(&vars, &["run", "--source", "kafka"]);
        let archived = consume_topic(&c.broker, ARCHIVED, w.terminal.len(), true);
        run.stop();
        check_archived(&c, &w, &archived);
        steps_reached(&log)
    })
}

/// SIGKILL at `failpoint`'s first, middle and last hit, each on a fresh cluster: the
/// restart archives every flow under one key and every object verifies.
fn sigkill_while_archiving(failpoint: &str) {
    for at in first_middle_last(archive_step_counts(), failpoint) {
        let c = cluster("", "");
        let w = workload(30);
        produce(&c, &w.records);
        ingest_all(&c, w.records.len());
        c.env.run_killed_at(
            &short_retention(),
            &["run", "--source", "kafka"],
            &format!("{failpoint}:{at}"),
        );
        let (archived, _) = archive_all(&c, w.terminal.len());
        check_archived(&c, &w, &archived);
        c.env.ok(&["verify"]);
    }
}

#[test]
fn sigkill_after_intent_with_kafka() {
    sigkill_while_archiving("after-intent");
}

#[test]
fn sigkill_after_upload_with_kafka() {
    sigkill_while_archiving("after-upload");
}

#[test]
fn sigkill_after_verify_with_kafka() {
    sigkill_while_archiving("after-verify");
}

#[test]
fn sigkill_mid_publish_with_kafka() {
    sigkill_while_archiving("mid-publish");
}

#[test]
fn sigkill_after_publish_before_delete_with_kafka() {
    sigkill_while_archiving("after-publish");
}

/// The archiver stopped at `point` (`NAME:N`), the broker is killed under it, and the
/// archiver runs on against no broker for `down` before the broker comes back on the
/// same port and storage.
fn broker_killed_at(
    c: &mut Cluster,
    run: &Running,
    log: &std::path::Path,
    point: &str,
    down: Duration,
) {
    run.wait_paused_at(log, point);
    c.broker.kill();
    run.resume();
    // The outage's length, not a wait for something to happen.
    std::thread::sleep(down);
    c.broker.start_again();
}

/// tansu on SQLite storage is killed and started again while the archiver is part-way
/// through the stream, and while it has half a segment's `flow.archived` records
/// acknowledged. The first outage outlasts the session timeout (6 s), so the archiver
/// loses its group membership and must rejoin with its partitions. Nothing is lost,
/// no flow is archived under two keys, and the index lists each part once.
#[test]
fn broker_killed_mid_ingest_and_mid_publish_loses_nothing() {
    let port = free_port();
    let api = format!("\n[api]\nlisten = \"127.0.0.1:{port}\"\n");
    let mut c = cluster_on(KafkaBroker::start_durable(), "", &api);
    let w = workload(60);
    produce(&c, &w.records);
    let log = c.env.path().join("pause.log");
    let pause = |point: &str| {
        vec![
            (
                "FLOW_ARCHIVER_FAILPOINT".to_string(),
                format!("{point}:pause"),
            ),
            (
                "FLOW_ARCHIVER_FAILPOINT_LOG".to_string(),
                log.display().to_string(),
            ),
        ]
    };

    // Mid-ingest: after the third durable batch of 16, with most of the stream unread.
    let mut vars = pause("after-ingest:3");
    vars.push(("FLOW_ARCHIVER__INPUT__BATCH_SIZE".into(), "16".into()));
    vars.push(("RUST_LOG".into(), "warn,flow_archiver=info".into()));
    let run = c.env.spawn_env(&vars, &["run", "--source", "kafka"]);
    run.wait_paused_at(&log, "after-ingest:3");
    let unread = lag(&c, w.records.len());
    assert!(
        unread > w.records.len() as i64 / 2,
        "paused mid-ingest ({unread} of {} records not committed)",
        w.records.len()
    );
    broker_killed_at(&mut c, &run, &log, "after-ingest:3", Duration::from_secs(8));
    let back = std::time::Instant::now();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while lag(&c, w.records.len()) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the group committed every record after the broker came back:\n{}\n{}",
            run.stderr(),
            c.broker.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "broker restart mid-ingest: all committed {:.1} s after it came back",
        back.elapsed().as_secs_f64()
    );
    let stopped = run.stop();
    assert!(
        stopped.contains("Kafka group membership lost")
            && stopped.contains("Kafka group rejoined with the partitions"),
        "the outage cost the membership, and the archiver rejoined: {stopped}"
    );

    // Mid-publish: two of the second segment's five records acknowledged.
    let mut vars = short_retention();
    vars.extend(pause("mid-publish:2"));
    let run = c.env.spawn_env(&vars, &["run", "--source", "kafka"]);
    broker_killed_at(&mut c, &run, &log, "mid-publish:2", Duration::from_secs(3));
    let back = std::time::Instant::now();
    let parts = w.terminal.len() as i64;
    eventually(
        Duration::from_secs(180),
        "every terminal flow archived after the broker came back",
        || {
            let archived = metric_of(port, "flow_archiver_flow_parts_archived_total")?;
            (archived == parts).then_some(())
        },
    );
    eprintln!(
        "broker restart mid-publish: all archived {:.1} s after it came back",
        back.elapsed().as_secs_f64()
    );
    run.stop();
    let archived = consume_topic(&c.broker, ARCHIVED, w.terminal.len(), true);
    check_archived(&c, &w, &archived);
    check_index(&c.env, w.terminal.len());
    c.env.ok(&["verify"]);
}

#[test]
fn missing_topics_are_named_at_start() {
    let broker = KafkaBroker::start();
    broker.create_topic(EVENTS, 1);
    let env = Env::new(&format!(
        "[kafka]\nbrokers = \"{}\"\ntopics = [\"{EVENTS}\"]\n[publish]\ndestination = \"kafka\"\n",
        broker.address()
    ));
    let out = env.run(&["run", "--source", "kafka:no.such.topic"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("\"no.such.topic\" does not exist"),
        "{stderr}"
    );
    // The input topic exists; the archived topic does not.
    let out = env.run(&["run", "--source", "kafka"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("\"flow.archived\" does not exist"),
        "{stderr}"
    );
    let out = env.run(&["run", "--source", "kafka:bad/topic"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad topic name is a usage error"
    );
}

/// The `read N records` figure from a stopped `run`.
fn records_read(stopped: &str) -> i64 {
    let after = stopped
        .split("stopped: read ")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary in: {stopped}"));
    after
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a count")
}

/// Two instances in one group on the shared (postgres) state: a rebalance hands each
/// revoked partition over at its durable position. (On the embedded store the same
/// rebalance is refused: `scale::embedded_instances_in_one_group_…`.)
#[test]
fn a_rebalance_hands_partitions_over_at_the_durable_position() {
    let mut c = cluster("", "");
    let pg = PgServer::start();
    let shared = vec![
        (
            "FLOW_ARCHIVER__STATE__BACKEND".to_string(),
            "postgres".to_string(),
        ),
        (
            "FLOW_ARCHIVER__STATE__URL".to_string(),
            pg.create_database("archiver"),
        ),
    ];
    c.env.vars.extend(shared.clone());
    let w = workload(80);
    // A second instance in the same group.
    let mut other =
        Env::new(&std::fs::read_to_string(c.env.path().join("flow-archiver.toml")).unwrap());
    other.vars = shared;
    let (first, second) = w.records.split_at(w.records.len() / 3);
    produce_one_per_batch(&c, first);
    let a = c.env.spawn(&["run", "--source", "kafka"]);
    eventually(
        Duration::from_secs(60),
        "the first instance to commit",
        || (lag(&c, first.len()) == 0).then_some(()),
    );
    // The second instance joins while the first is busy with new records, so some of
    // its partitions are revoked mid-stream.
    let info = vec![("RUST_LOG".to_string(), "flow_archiver=info".to_string())];
    let b = other.spawn_env(&info, &["run", "--source", "kafka"]);
    produce_one_per_batch(&c, second);
    eventually(
        Duration::from_secs(60),
        "the second instance to get partitions",
        || {
            b.stderr()
                .contains("Kafka partitions assigned")
                .then_some(())
        },
    );
    eventually(
        Duration::from_secs(90),
        "the group to commit every record",
        || (lag(&c, w.records.len()) == 0).then_some(()),
    );
    let (stopped_a, stopped_b) = (a.stop(), b.stop());
    let (read_a, read_b) = (records_read(&stopped_a), records_read(&stopped_b));
    eprintln!(
        "first instance read {read_a}, second {read_b}, of {}",
        w.records.len()
    );
    // Every record was read by exactly one of them: the first gave each revoked
    // partition up at its durable, committed position, and dropped what it had queued.
    assert_eq!(
        read_a + read_b,
        w.records.len() as i64,
        "first read {read_a}, second read {read_b}"
    );
    assert!(read_b > 0, "the second instance took over partitions");
}

#[test]
fn consumer_lag_is_served_while_behind_and_zero_once_caught_up() {
    let port = free_port();
    let c = cluster(
        "",
        &format!("\"statistics.interval.ms\" = \"300\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let w = workload(300);
    produce(&c, &w.records);
    // Tiny batches (one fsync each) keep the archiver behind for a while.
    let run = c.env.spawn_env(
        &[("FLOW_ARCHIVER__INPUT__BATCH_SIZE".into(), "2".into())],
        &["run", "--source", "kafka"],
    );
    let behind = eventually(Duration::from_secs(60), "a lag above zero", || {
        lag_of(port).filter(|&lag| lag > 0)
    });
    assert!(behind <= w.records.len() as i64, "lag {behind}");
    eventually(
        Duration::from_secs(120),
        "the group to commit every record",
        || (lag(&c, w.records.len()) == 0).then_some(()),
    );
    eventually(Duration::from_secs(20), "a lag of zero", || {
        (lag_of(port) == Some(0)).then_some(())
    });
    run.stop();
}
