//! Scale-out: several archiver processes on one PostgreSQL state store, one S3 server
//! (`s3s-fs`) and one broker — a Kafka group on `tansu`, or one NATS durable consumer —
//! all real servers. A flow's events are spread over partitions and instances on
//! purpose. During the run instances are SIGKILLed mid-ingest and mid-archive and
//! restarted, the fleet scales 3 → 2 → 4, and (NATS) PostgreSQL itself restarts.
//! Afterwards an independent decoder (`tests/py/verify_parts.py`: zstandard and
//! hashlib) checks every part's object, frame and events: each terminal flow once,
//! complete, in sequence order, never split.
//!
//! Also the embedded store's side of it: two instances in one Kafka group fail loudly
//! instead of splitting flows, and fixed `kafka.partitions` work.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::config::{broker_config, Broker};
use crate::support::*;
use base64::Engine;
use serde_json::{json, Value};

const EVENTS: &str = "flows.events";
const ARCHIVED: &str = "flow.archived";
const BUCKET: &str = "flow-archive";

/// The shared backends of a fleet.
struct Shared {
    pg: PgServer,
    s3: S3Server,
    url: String,
}

fn shared() -> Shared {
    let pg = PgServer::start();
    let url = pg.create_database("archiver");
    Shared {
        pg,
        s3: S3Server::start(BUCKET),
        url,
    }
}

/// What every instance of a fleet runs with: the shared state and archive, larger
/// batches than the broker suites' default, and a short lease so a dead instance's
/// work is taken over within seconds.
fn fleet_vars(s: &Shared, retention: &str) -> Vec<(String, String)> {
    let v = |k: &str, v: &str| (k.to_string(), v.to_string());
    vec![
        v("FLOW_ARCHIVER__STATE__BACKEND", "postgres"),
        v("FLOW_ARCHIVER__STATE__URL", &s.url),
        v("FLOW_ARCHIVER__STATE__LEASE", "4s"),
        v("FLOW_ARCHIVER__ARCHIVE__BUCKET", BUCKET),
        v("FLOW_ARCHIVER__ARCHIVE__ENDPOINT", &s.s3.endpoint),
        v("FLOW_ARCHIVER__ARCHIVE__SEGMENT_MAX_FLOWS", "40"),
        v("FLOW_ARCHIVER__ARCHIVE__BATCH_SIZE", "200"),
        v("FLOW_ARCHIVER__INPUT__BATCH_SIZE", "500"),
        v("FLOW_ARCHIVER__RETENTION__COMPLETED", retention),
        v("FLOW_ARCHIVER__RETENTION__FAILED", retention),
        v("AWS_ACCESS_KEY_ID", &s.s3.access_key),
        v("AWS_SECRET_ACCESS_KEY", &s.s3.secret_key),
        v("AWS_DEFAULT_REGION", "us-east-1"),
        v("RUST_LOG", "info"),
    ]
}

/// The workload: `flows` flows of ten events, spread so that one flow's events land on
/// different partitions (and so instances), some in reverse or rotated order, some
/// redelivered, plus hostile records. Every 50th flow never finishes.
struct Workload {
    /// (key or subject, CloudEvent bytes).
    events: Vec<(String, Vec<u8>)>,
    /// "tenant/flow" → event ids in sequence order, for terminal flows.
    expected: BTreeMap<String, Vec<String>>,
    running: usize,
    hostile: usize,
    events_per_flow: usize,
}

fn workload(flows: usize, subject_of: impl Fn(usize, usize) -> String) -> Workload {
    const N: usize = 10;
    let time = (chrono::Utc::now() - chrono::Duration::seconds(30))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut per_flow: Vec<Vec<(String, Vec<u8>)>> = Vec::with_capacity(flows);
    let mut expected = BTreeMap::new();
    let mut running = 0;
    for f in 0..flows {
        let tenant = format!("tenant-{}", f % 3);
        let flow = format!("flow-{f:05}");
        let finished = f % 50 != 7;
        let mut ids = Vec::new();
        let mut events = Vec::new();
        for seq in 1..=N {
            let kind = match (seq, finished) {
                (1, _) => "started",
                (N, true) => {
                    if f % 9 == 0 {
                        "failed"
                    } else {
                        "completed"
                    }
                }
                _ => "step",
            };
            let id = format!("{flow}-e{seq:02}");
            ids.push(id.clone());
            let event = ce(&tenant, &flow, &id, seq as u64, kind, &time);
            events.push((subject_of(f, seq), event.into_bytes()));
        }
        match f % 4 {
            1 => events.reverse(),
            2 => events.rotate_left(3),
            _ => {}
        }
        if f % 20 == 0 {
            events.push(events[4].clone());
        }
        per_flow.push(events);
        if finished {
            expected.insert(format!("{tenant}/{flow}"), ids);
        } else {
            running += 1;
        }
    }
    // Round-robin over the flows: every flow is open for most of the ingest.
    let mut events = Vec::new();
    for round in 0..=N {
        for flow in &per_flow {
            if let Some(e) = flow.get(round) {
                events.push(e.clone());
            }
        }
    }
    let hostile: Vec<Vec<u8>> = vec![
        b"{\"specversion\":\"1.0\",".to_vec(),
        br#"{"specversion":"1.0","id":"h1","source":"/e","type":"io.test.flow.step","subject":"../../etc/passwd"}"#.to_vec(),
        "{\"specversion\":\"1.0\",\"id\":\"h2\",\"source\":\"/e\",\"type\":\"io.test.flow.step\",\"subject\":\"a\u{202e}b\u{0}\"}".as_bytes().to_vec(),
        format!(r#"{{"specversion":"1.0","id":"h3","source":"/e","type":"io.test.flow.step","subject":"big","data":"{}"}}"#, "x".repeat(5000)).into_bytes(),
        Vec::new(),
    ];
    let count = hostile.len();
    let step = events.len() / (count + 1);
    for (i, bad) in hostile.into_iter().enumerate() {
        events.insert((i + 1) * step, (subject_of(i, 0), bad));
    }
    Workload {
        events,
        expected,
        running,
        hostile: count,
        events_per_flow: N,
    }
}

/// Runs the independent decoder over `records` ({key, data} each) and the objects in
/// `s3`'s bucket.
fn verify_independently(s3: &S3Server, w: &Workload, records: &[Value], dir: &std::path::Path) {
    let lines: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    let records_file = dir.join("archived.jsonl");
    std::fs::write(&records_file, lines.join("\n")).unwrap();
    let expected_file = dir.join("expected.json");
    std::fs::write(&expected_file, serde_json::to_vec(&w.expected).unwrap()).unwrap();
    let summary = python(
        "verify_parts.py",
        &[
            records_file.to_str().unwrap(),
            expected_file.to_str().unwrap(),
            s3.root.path().join(BUCKET).to_str().unwrap(),
        ],
    );
    eprintln!("independent check: {summary}");
    let summary: Value = serde_json::from_str(summary.trim()).unwrap();
    assert_eq!(summary["parts"], w.expected.len());
    assert_eq!(
        summary["events"],
        w.expected.values().map(Vec::len).sum::<usize>()
    );
}

/// What the shared store still holds: (open parts, intents of any kind).
fn store_left(s: &Shared) -> (i64, i64) {
    let out = s.pg.psql(
        "archiver",
        "SELECT (SELECT count(*) FROM flows WHERE meta IS NOT NULL) || ' ' ||
                ((SELECT count(*) FROM intents) + (SELECT count(*) FROM purge_intents))",
    );
    let mut it = out.split(' ').map(|n| n.parse::<i64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// Waits for the open parts to fall to `at_most` (the fleet is archiving); on a
/// timeout, says what the store and the instances hold.
fn wait_open_parts(s: &Shared, at_most: i64, what: &str, runs: &[&Running]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while store_left(s).0 > at_most {
        if std::time::Instant::now() > deadline {
            let intents = s.pg.psql(
                "archiver",
                "SELECT id || ' ' || owner || ' ' || fence || ' ' || (lease_until > now()) FROM intents",
            );
            let stderr: Vec<String> = runs.iter().map(|r| r.stderr()).collect();
            panic!(
                "timed out waiting for {what}: {:?} left\nintents:\n{intents}\n{}",
                store_left(s),
                stderr.join("\n-----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Rows of an instance's index, and distinct parts among them (an independent
/// SQLite reader).
fn index_rows(env: &Env) -> (i64, i64) {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(*c.execute(\"SELECT count(*), count(DISTINCT tenant||'/'||flow_id||'/'||part) FROM parts\").fetchone())",
        ])
        .arg(env.path().join("data/index.sqlite"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|n| n.parse::<i64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// The archive phase every scenario shares, with a one-second retention: the second
/// instance starts alone and is killed by its failpoint mid-archive (after its third
/// upload), leaving sealed intents that the others take over once its lease lapses;
/// then three instances, 3 → 2 → 4 while flows are still being archived. Returns once
/// the store holds only the running flows' open parts.
fn archive_phase(s: &Shared, envs: &[Env], source: &str, w: &Workload) {
    let vars = fleet_vars(s, "1s");
    let run = |i: usize| envs[i].spawn_env(&vars, &["run", "--source", source]);
    let before = store_left(s).0;
    assert_eq!(before, (w.expected.len() + w.running) as i64);
    let mut dying = vars.clone();
    dying.push(("FLOW_ARCHIVER_FAILPOINT".into(), "after-upload:3".into()));
    let (status, stderr) = envs[1]
        .spawn_env(&dying, &["run", "--source", source])
        .wait(Duration::from_secs(180));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the failpoint killed it mid-archive: {stderr}"
    );
    assert!(store_left(s).1 > 0, "it left intents behind");
    let a = run(0);
    let b = run(1);
    let c = run(2);
    // 3 → 2 → 4 while there is work left.
    wait_open_parts(s, before * 3 / 4, "a quarter archived", &[&a, &b, &c]);
    c.stop();
    wait_open_parts(s, before / 2, "half archived", &[&a, &b]);
    let c = run(2);
    let d = run(3);
    wait_open_parts(
        s,
        w.running as i64,
        "every terminal flow archived",
        &[&a, &b, &c, &d],
    );
    eventually(Duration::from_secs(60), "no intent left", || {
        (store_left(s).1 == 0).then_some(())
    });
    // The first instance's index follows the archived records: one row per part.
    let parts = w.expected.len() as i64;
    eventually(
        Duration::from_secs(120),
        "the index to hold every part",
        || (index_rows(&envs[0]) == (parts, parts)).then_some(()),
    );
    for r in [a, b, c, d] {
        r.stop();
    }
}

/// 10,000 flows; `SCALE_FLOWS` changes it (to try the scenario quickly).
fn flows() -> usize {
    std::env::var("SCALE_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn kafka_record(key: &str, value: &[u8]) -> Value {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    json!({
        "key": key,
        "value_b64": b64(value),
        "headers": [["content-type", {"b64": b64(b"application/cloudevents+json")}]],
    })
}

fn kafka_section(extra: &str) -> String {
    format!(
        r#"topics = ["{EVENTS}"]
group_id = "archiver"
archived_topic = "{ARCHIVED}"
dead_letter_topic = "flow.events.dlq"
{extra}

[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
"#
    )
}

fn kafka_broker(partitions: u32) -> KafkaBroker {
    let broker = KafkaBroker::start();
    broker.create_topic(EVENTS, partitions);
    broker.create_topic(ARCHIVED, 1);
    broker.create_topic("flow.events.dlq", 1);
    broker.create_topic("flow.audit", 1);
    broker
}

fn produce_kafka(broker: &KafkaBroker, env: &Env, records: &[Value]) {
    let spec = env.write(
        "produce.json",
        serde_json::to_string(records).unwrap().as_bytes(),
    );
    // One record per batch: see the harness's note on tansu's in-memory engine.
    kafka_client(&[
        "produce",
        &broker.address(),
        EVENTS,
        spec.to_str().unwrap(),
        "--one-per-batch",
    ]);
}

/// Offsets the group has committed, summed; 0 while the broker is too busy to say
/// (its SQLite storage serialises writes, and the fleet is writing).
fn committed(broker: &KafkaBroker) -> i64 {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/kafka_client.py");
    let out = std::process::Command::new("python3")
        .args([script, "committed", &broker.address(), "archiver", EVENTS])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn three_kafka_instances_on_postgres_lose_nothing_through_kills_and_scaling() {
    let s = shared();
    let broker = kafka_broker(6);
    let config = broker_config(Broker::Kafka {
        brokers: &broker.address(),
        section: &kafka_section(""),
    });
    let envs: Vec<Env> = (0..4).map(|_| Env::new(&config)).collect();
    // Keys per event, not per flow: a flow's events land on several partitions.
    let w = workload(flows(), |f, seq| format!("{f}-{seq}"));
    let records: Vec<Value> = w
        .events
        .iter()
        .map(|(key, value)| kafka_record(key, value))
        .collect();
    produce_kafka(&broker, &envs[0], &records);
    let total = records.len() as i64;

    // Ingest: three instances in one group; the first is killed mid-ingest.
    let vars = fleet_vars(&s, "1d");
    let run = |i: usize| envs[i].spawn_env(&vars, &["run", "--source", "kafka"]);
    let (a, b, c) = (run(0), run(1), run(2));
    eventually(Duration::from_secs(300), "a tenth committed", || {
        (committed(&broker) >= total / 10).then_some(())
    });
    drop(a); // SIGKILL
    let left = total - committed(&broker);
    assert!(left > 0, "the kill landed mid-ingest");
    let a = run(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while committed(&broker) < total {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out: {} of {total} committed\n{}\n-----\n{}\n-----\n{}",
            committed(&broker),
            a.stderr(),
            b.stderr(),
            c.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for r in [a, b, c] {
        r.stop();
    }
    assert_eq!(
        s.pg.psql("archiver", "SELECT coalesce(sum(n), 0) FROM event_runs"),
        (w.events_per_flow * (w.expected.len() + w.running)).to_string(),
        "every distinct event stored once"
    );
    let (open, _) = store_left(&s);
    assert_eq!(
        open,
        (w.expected.len() + w.running) as i64,
        "one open part per flow, whichever instances its events reached"
    );

    archive_phase(&s, &envs, "kafka", &w);

    // Every part once on the topic (a re-publish repeats the same record), checked by
    // the independent clients.
    let archived = consume_topic(&broker, ARCHIVED, w.expected.len(), true);
    let records: Vec<Value> = archived
        .iter()
        .map(|r| json!({"key": r["key"], "data": r["data"]}))
        .collect();
    verify_independently(&s.s3, &w, &records, envs[0].path());
    // Every hostile record dead-lettered. An instance killed mid-ingest re-reads its
    // unfinished batch, so a dead letter of that batch may repeat, naming the same
    // source position (docs/guarantees.md, "Ingest").
    let dead = consume_topic(&broker, "flow.events.dlq", w.hostile, false);
    let positions: std::collections::BTreeSet<&str> = dead
        .iter()
        .map(|d| {
            d["headers"]["flow-archiver-position"]
                .as_str()
                .expect("position")
        })
        .collect();
    assert_eq!(
        positions.len(),
        w.hostile,
        "every hostile record dead-lettered: {positions:?}"
    );
}

fn nats_record(subject: &str, value: &[u8]) -> Value {
    json!({
        "subject": subject,
        "value_b64": base64::engine::general_purpose::STANDARD.encode(value),
        "headers": [],
    })
}

/// (num_pending, num_ack_pending) of the shared durable consumer; (-1, -1) before it
/// exists.
fn nats_pending(server: &NatsServer) -> (i64, i64) {
    let out = nats_client(&["pending", &server.url(), "FLOW_EVENTS", "flow-archiver"]);
    let mut it = out.split_whitespace().map(|n| n.parse::<i64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// Events in the shared store; -1 while PostgreSQL restarts.
fn stored_events(s: &Shared) -> i64 {
    s.pg.try_psql("archiver", "SELECT coalesce(sum(n), 0) FROM event_runs")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

#[test]
fn three_nats_instances_on_one_consumer_lose_nothing_through_kills_scaling_and_a_database_restart()
{
    let mut s = shared();
    let server = NatsServer::start();
    let config = broker_config(Broker::Nats {
        url: &server.url(),
        section: "ack_wait = \"10s\"\nmax_ack_pending = 5000\n",
    });
    let envs: Vec<Env> = (0..4).map(|_| Env::new(&config)).collect();
    let w = workload(flows(), |f, seq| {
        format!("flows.events.tenant-{}.f{f}.e{seq}", f % 3)
    });
    let records: Vec<Value> = w
        .events
        .iter()
        .map(|(subject, value)| nats_record(subject, value))
        .collect();
    let total = (w.events_per_flow * (w.expected.len() + w.running)) as i64;

    // Three instances pull from one durable consumer while the events are published.
    let vars = fleet_vars(&s, "1d");
    let run = |i: usize| envs[i].spawn_env(&vars, &["run", "--source", "nats"]);
    let (a, b, c) = (run(0), run(1), run(2));
    eventually(Duration::from_secs(120), "the shared consumer", || {
        (nats_pending(&server).0 >= 0).then_some(())
    });
    assert_eq!(
        nats_client(&["ack-policy", &server.url(), "FLOW_EVENTS", "flow-archiver"]).trim(),
        "explicit",
        "instances sharing a consumer ack each message"
    );
    let spec = envs[0].write(
        "produce.json",
        serde_json::to_string(&records).unwrap().as_bytes(),
    );
    let producer = std::thread::spawn({
        let url = server.url();
        let spec = spec.to_str().unwrap().to_string();
        move || nats_client(&["produce", &url, &spec])
    });
    // Kill one instance mid-ingest, restart it; then restart PostgreSQL under them.
    eventually(Duration::from_secs(300), "a tenth stored", || {
        (stored_events(&s) >= total / 10).then_some(())
    });
    drop(a);
    let stored = stored_events(&s);
    assert!(stored < total, "the kill landed mid-ingest ({stored})");
    let a = run(0);
    eventually(Duration::from_secs(300), "a third stored", || {
        (stored_events(&s) >= total / 3).then_some(())
    });
    s.pg.restart(Duration::from_secs(2));
    producer.join().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !(nats_pending(&server) == (0, 0) && stored_events(&s) == total) {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out: {} of {total} stored, pending {:?}\n{}\n-----\n{}\n-----\n{}",
            stored_events(&s),
            nats_pending(&server),
            a.stderr(),
            b.stderr(),
            c.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let restarted = [a, b, c].map(|r| r.stop());
    assert!(
        restarted
            .iter()
            .any(|e| e.contains("State database unavailable; retrying")),
        "the restart was seen and retried through"
    );

    archive_phase(&s, &envs, "nats", &w);

    let archived: Vec<Value> = nats_client(&[
        "read",
        &server.url(),
        "FLOW_ARCHIVED",
        &w.expected.len().to_string(),
        "--timeout",
        "120",
    ])
    .lines()
    .map(|l| {
        let r: Value = serde_json::from_str(l).unwrap();
        json!({"key": r["subject"], "data": r["json"]["data"]})
    })
    .collect();
    verify_independently(&s.s3, &w, &archived, envs[0].path());
}

/// What embedded instances run with: their own state, the shared S3 archive.
fn embedded_vars(s3: &S3Server, retention: &str) -> Vec<(String, String)> {
    let v = |k: &str, v: &str| (k.to_string(), v.to_string());
    vec![
        v("FLOW_ARCHIVER__ARCHIVE__BUCKET", BUCKET),
        v("FLOW_ARCHIVER__ARCHIVE__ENDPOINT", &s3.endpoint),
        v("FLOW_ARCHIVER__RETENTION__COMPLETED", retention),
        v("FLOW_ARCHIVER__RETENTION__FAILED", retention),
        v("AWS_ACCESS_KEY_ID", &s3.access_key),
        v("AWS_SECRET_ACCESS_KEY", &s3.secret_key),
        v("AWS_DEFAULT_REGION", "us-east-1"),
    ]
}

/// Two instances with their own embedded stores in one group: the rebalance that hands
/// the second one partitions the first has read from would split those flows, so
/// the first stops with an error naming both fixes, before committing anything more.
#[test]
fn embedded_instances_in_one_group_fail_loudly_instead_of_splitting_flows() {
    let s3 = S3Server::start(BUCKET);
    let broker = kafka_broker(4);
    let config = broker_config(Broker::Kafka {
        brokers: &broker.address(),
        section: &kafka_section(""),
    });
    let (first, second) = (Env::new(&config), Env::new(&config));
    let w = workload(200, |f, _| format!("flow-{f}"));
    let records: Vec<Value> = w.events.iter().map(|(k, v)| kafka_record(k, v)).collect();
    let (early, late) = records.split_at(records.len() / 2);
    produce_kafka(&broker, &first, early);
    let vars = embedded_vars(&s3, "1d");
    let a = first.spawn_env(&vars, &["run", "--source", "kafka"]);
    eventually(Duration::from_secs(120), "the first to commit", || {
        (committed(&broker) == early.len() as i64).then_some(())
    });
    let b = second.spawn_env(&vars, &["run", "--source", "kafka"]);
    produce_kafka(&broker, &first, late);
    let (status, stderr) = a.wait(Duration::from_secs(120));
    assert!(!status.success(), "the first instance stops: {stderr}");
    for fix in ["state.backend = \"postgres\"", "kafka.partitions"] {
        assert!(stderr.contains(fix), "the error names {fix}: {stderr}");
    }
    assert!(stderr.contains("splitting their histories"), "{stderr}");
    // The second one had read nothing before the rebalance: it goes on.
    b.stop();
}

/// Embedded instances sharing a group safely: each is assigned its own partitions
/// (`kafka.partitions`), flows are keyed so that a flow stays in one partition, and
/// every terminal flow is archived once, whole, by the instance that owns it.
#[test]
fn embedded_instances_with_fixed_partitions_archive_every_flow_once() {
    let s3 = S3Server::start(BUCKET);
    let broker = kafka_broker(4);
    let config = |partitions: &str| {
        broker_config(Broker::Kafka {
            brokers: &broker.address(),
            section: &kafka_section(&format!("partitions = {partitions}")),
        })
    };
    let envs = [Env::new(&config("[0, 1]")), Env::new(&config("[2, 3]"))];
    let w = workload(300, |f, _| format!("flow-{f:05}"));
    let records: Vec<Value> = w.events.iter().map(|(k, v)| kafka_record(k, v)).collect();
    produce_kafka(&broker, &envs[0], &records);
    let vars = embedded_vars(&s3, "1d");
    let runs: Vec<Running> = envs
        .iter()
        .map(|e| e.spawn_env(&vars, &["run", "--source", "kafka"]))
        .collect();
    eventually(Duration::from_secs(180), "every record committed", || {
        (committed(&broker) == records.len() as i64).then_some(())
    });
    let reads: Vec<i64> = runs
        .into_iter()
        .map(|r| {
            let stopped = r.stop();
            assert!(!stopped.contains("rebalance"), "{stopped}");
            stopped
                .split("stopped: read ")
                .nth(1)
                .and_then(|t| t.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no summary: {stopped}"))
        })
        .collect();
    assert_eq!(reads.iter().sum::<i64>(), records.len() as i64, "{reads:?}");
    assert!(
        reads.iter().all(|r| *r > 0),
        "both read their partitions: {reads:?}"
    );
    let vars = embedded_vars(&s3, "1s");
    let runs: Vec<Running> = envs
        .iter()
        .map(|e| e.spawn_env(&vars, &["run", "--source", "kafka"]))
        .collect();
    let archived = consume_topic(&broker, ARCHIVED, w.expected.len(), true);
    for r in runs {
        r.stop();
    }
    let records: Vec<Value> = archived
        .iter()
        .map(|r| json!({"key": r["key"], "data": r["data"]}))
        .collect();
    verify_independently(&s3, &w, &records, envs[0].path());
}
