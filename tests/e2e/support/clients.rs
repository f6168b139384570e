//! The independent clients in `tests/py/`: they check what flow-archiver wrote
//! without sharing its code (confluent-kafka and fastavro, nats-py, the standard
//! library's HTTP client, jsonschema, prometheus-client).

use std::process::Command;

use serde_json::Value;

use super::servers::KafkaBroker;

/// Runs `tests/py/NAME` with `args` and returns its stdout, failing the test (with the
/// script's stderr) when it fails. The scripts are the independent clients.
pub fn python(name: &str, args: &[&str]) -> String {
    let script = format!("{}/tests/py/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .expect("python3 is required for the end-to-end tests");
    assert!(
        out.status.success(),
        "{name} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `tests/py/kafka_client.py` (confluent-kafka, fastavro): an independent client.
pub fn kafka_client(args: &[&str]) -> String {
    python("kafka_client.py", args)
}

/// Records read back by the independent client, one JSON object each.
pub fn consume_topic(broker: &KafkaBroker, topic: &str, n: usize, avro: bool) -> Vec<Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");
    let schema = format!("{dir}/flow_archived.avsc,{dir}/flow_purged.avsc,{dir}/flow_hold.avsc");
    let address = broker.address();
    let n = n.to_string();
    let mut args = vec!["consume", &address, topic, &n, "--timeout", "60"];
    if avro {
        args.extend(["--avro", &schema]);
    }
    kafka_client(&args)
        .lines()
        .map(|l| serde_json::from_str(l).expect("consumer JSON"))
        .collect()
}

/// Runs `tests/py/nats_client.py` (nats-py): an independent client.
pub fn nats_client(args: &[&str]) -> String {
    python("nats_client.py", args)
}
