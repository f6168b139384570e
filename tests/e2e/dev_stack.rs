//! `scripts/dev-stack.sh`: brings up nats-server, tansu, s3s-fs and two archivers from
//! local binaries on free loopback ports, takes a workload through Kafka and through
//! NATS into the S3 server, serves it through each archiver's API, and comes down
//! leaving no process and no listening port behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::*;
use base64::Engine;
use serde_json::{json, Value};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dev-stack.sh");
const NAMES: [&str; 5] = ["nats", "kafka", "s3", "archiver-kafka", "archiver-nats"];

struct Stack {
    dir: tempfile::TempDir,
    ports: Vec<(&'static str, u16)>,
}

impl Stack {
    fn new() -> Stack {
        Stack {
            dir: tempfile::tempdir().unwrap(),
            ports: vec![
                ("DEV_NATS_PORT", free_port()),
                ("DEV_KAFKA_PORT", free_port()),
                ("DEV_S3_PORT", free_port()),
                ("DEV_API_KAFKA_PORT", free_port()),
                ("DEV_API_NATS_PORT", free_port()),
            ],
        }
    }

    fn port(&self, name: &str) -> u16 {
        self.ports.iter().find(|(n, _)| *n == name).unwrap().1
    }

    fn script(&self, command: &str) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(SCRIPT)
            .arg(command)
            .env("DEV_STACK_DIR", self.dir.path())
            .env("FLOW_ARCHIVER_BIN", BIN)
            .env("RUST_LOG", "warn");
        for (k, _) in std::env::vars() {
            if k.starts_with("FLOW_ARCHIVER") || k.starts_with("AWS_") || k.starts_with("OTEL_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("FLOW_ARCHIVER_BIN", BIN);
        for (k, v) in &self.ports {
            cmd.env(k, v.to_string());
        }
        cmd.output().unwrap()
    }

    fn pids(&self) -> Vec<(String, i32)> {
        NAMES
            .iter()
            .filter_map(|n| {
                let text =
                    std::fs::read_to_string(self.dir.path().join(format!("{n}.pid"))).ok()?;
                Some((n.to_string(), text.trim().parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Whatever the test asserted, nothing stays behind.
        let _ = self.script("down");
        for (_, pid) in self.pids() {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn event(tenant: &str, flow: &str, seq: u64, kind: &str, time: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{flow}-{seq}","source":"/engine","type":"io.test.flow.{kind}","subject":"{flow}","tenant":"{tenant}","sequence":"{seq}","time":"{time}","data":{{"step":{seq}}}}}"#
    )
}

fn flows(prefix: &str, n: usize, time: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in 0..n {
        let flow = format!("{prefix}-{f:02}");
        for seq in 1..=3 {
            let kind = if seq == 3 { "completed" } else { "step" };
            out.push((flow.clone(), event("dev", &flow, seq, kind, time)));
        }
    }
    out
}

fn archived_items(base: &str) -> Vec<Value> {
    let (status, page) = http_get(&format!("{base}/archive/flows?limit=1000"), "");
    if status != 200 {
        return Vec::new();
    }
    page["items"].as_array().cloned().unwrap_or_default()
}

fn objects_under(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".jsonl.zst"))
        .collect()
}

#[test]
fn dev_stack_takes_kafka_and_nats_workloads_to_s3_and_comes_down_cleanly() {
    let stack = Stack::new();
    let up = stack.script("up");
    assert!(
        up.status.success(),
        "{}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    let status = stack.script("status");
    assert!(status.status.success());
    let text = String::from_utf8_lossy(&status.stdout);
    for name in NAMES {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) && l.contains("running")),
            "{name}: {text}"
        );
    }

    let time = (chrono::Utc::now() - chrono::Duration::seconds(60))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let structured = json!([["content-type", {"b64": b64("application/cloudevents+json")}]]);
    let kafka_records: Vec<Value> = flows("k", 6, &time)
        .into_iter()
        .map(|(flow, e)| json!({"key": flow, "value_b64": b64(&e), "headers": structured}))
        .collect();
    let spec = stack.dir.path().join("kafka.json");
    std::fs::write(&spec, serde_json::to_string(&kafka_records).unwrap()).unwrap();
    let kafka = format!("127.0.0.1:{}", stack.port("DEV_KAFKA_PORT"));
    kafka_client(&["produce", &kafka, "flows.events", spec.to_str().unwrap()]);

    let nats_records: Vec<Value> = flows("n", 4, &time)
        .into_iter()
        .map(|(_, e)| {
            json!({"subject": "flows.events.dev", "value_b64": b64(&e),
                   "headers": [["Content-Type", "application/cloudevents+json"]]})
        })
        .collect();
    let spec = stack.dir.path().join("nats.json");
    std::fs::write(&spec, serde_json::to_string(&nats_records).unwrap()).unwrap();
    let nats = format!("nats://127.0.0.1:{}", stack.port("DEV_NATS_PORT"));
    nats_client(&["produce", &nats, spec.to_str().unwrap()]);

    // Archived (retention 10 s in the dev stack), in the S3 server, and served.
    for (api, prefix, n) in [
        ("DEV_API_KAFKA_PORT", "kafka", 6),
        ("DEV_API_NATS_PORT", "nats", 4),
    ] {
        let base = format!("http://127.0.0.1:{}", stack.port(api));
        let items = eventually(
            Duration::from_secs(90),
            &format!("{n} flows archived through {prefix}"),
            || {
                let items = archived_items(&base);
                (items.len() == n).then_some(items)
            },
        );
        let objects = objects_under(&stack.dir.path().join("s3/flow-archive").join(prefix));
        assert!(
            !objects.is_empty(),
            "objects under {prefix}/ in the S3 server"
        );
        let first = &items[0];
        assert!(first["object_uri"]
            .as_str()
            .unwrap()
            .starts_with(&format!("s3://flow-archive/{prefix}/")));
        let (status, flow) = http_get(
            &format!("{base}/flows/dev/{}", first["flow_id"].as_str().unwrap()),
            "",
        );
        assert_eq!(status, 200, "{flow}");
        assert_eq!(flow["archived"], true);
        assert_eq!(flow["events"].as_array().unwrap().len(), 3);
    }

    let pids = stack.pids();
    assert_eq!(pids.len(), NAMES.len());
    let down = stack.script("down");
    assert!(down.status.success());
    for (name, pid) in &pids {
        assert!(!alive(*pid), "{name} (pid {pid}) is still running");
    }
    for (name, port) in &stack.ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", *port)).is_err(),
            "{name} {port} still listening"
        );
    }
    assert!(
        !stack.script("status").status.success(),
        "status says stopped"
    );
}
