//! OpenTelemetry traces end to end: the real binary exports OTLP (HTTP/protobuf and
//! gRPC) to a receiver in the test harness that decodes the protobuf, and the archive
//! goes to a real S3 server. Proves:
//! - every archived flow part is an `archive flow` span in an `archive segment` trace,
//!   linked to the flow's own trace from its events' `traceparent`; the published
//!   `flow.archived` carries that span as its `traceparent`;
//! - the segment's steps are child spans named per the conventions (`S3.PutObject`
//!   with bucket and key, `send {destination}` as a producer span);
//! - ingest batches are `process {destination}` consumer spans linked to the
//!   messages' traces; invalid trace contexts are ignored, never fatal;
//! - JSON log lines carry the trace id of the segment they describe;
//! - a failed archive attempt is a span with error status, and the retry succeeds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::otlp::{OtlpReceiver, ReceivedSpan};
use crate::support::*;
use serde_json::Value;

const BUCKET: &str = "traced-archive";

fn trace_of(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {traceparent}");
    (parts[1].to_string(), parts[2].to_string())
}

/// Six flows of three events; flows 0–3 carry a trace context of their own, flow 4 an
/// invalid one, flow 5 none; one more flow never finishes.
fn workload() -> (String, BTreeMap<String, Option<String>>) {
    let mut lines = Vec::new();
    let mut traces = BTreeMap::new();
    for f in 0..7u64 {
        let flow = format!("flow-{f}");
        let traceparent = match f {
            0..=3 => Some(format!(
                "00-{:032x}-{:016x}-01",
                0xfeed_0000 + f,
                0xbeef + f
            )),
            4 => Some("00-../../etc/passwd-ünïcode-01".to_string()),
            _ => None,
        };
        if f < 6 {
            traces.insert(flow.clone(), traceparent.clone().filter(|_| f < 4));
        }
        for seq in 1..=3u64 {
            let kind = match (seq, f) {
                (3, 6) => "step",
                (3, _) => "completed",
                _ => "step",
            };
            let mut v: Value = serde_json::from_str(&ce(
                "acme",
                &flow,
                &format!("{flow}-{seq}"),
                seq,
                kind,
                "2026-01-01T00:00:00Z",
            ))
            .expect("ce");
            if let Some(t) = &traceparent {
                v["traceparent"] = Value::String(t.clone());
            }
            lines.push(v.to_string());
        }
    }
    (lines.join("\n") + "\n", traces)
}

fn env_for(s3: &S3Server, extra: &str) -> Env {
    let config = format!(
        "[input]\nbatch_size = 8\n[retention]\ncompleted = \"1s\"\nfailed = \"1s\"\n\
         [archive]\nbucket = \"{BUCKET}\"\nendpoint = \"{}\"\nsegment_max_flows = 4\n\
         [scheduler]\ninterval = \"200ms\"\n{extra}",
        s3.endpoint
    );
    let mut env = Env::new(&config);
    env.vars = vec![
        ("AWS_ACCESS_KEY_ID".into(), s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY".into(), s3.secret_key.clone()),
        ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
    ];
    env
}

fn otel_vars(endpoint: &str, protocol: &str) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.into()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), protocol.into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ("RUST_LOG".into(), "warn,flow_archiver=info".into()),
    ]
}

fn by_id(spans: &[ReceivedSpan]) -> BTreeMap<String, ReceivedSpan> {
    spans
        .iter()
        .map(|s| (s.span_id.clone(), s.clone()))
        .collect()
}

/// JSON log lines of stderr (each one must parse).
fn json_logs(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn every_archival_is_a_trace_linked_to_the_flow_trace() {
    let s3 = S3Server::start(BUCKET);
    let receiver = OtlpReceiver::start();
    let env = env_for(&s3, "");
    let (input, flow_traces) = workload();
    let path = env.write("events.jsonl", input.as_bytes());
    let source = format!("file:{}", path.display());
    let run = env.spawn_env(
        &otel_vars(&receiver.http_endpoint, "http/protobuf"),
        &["--log-format", "json", "run", "--source", &source],
    );
    eventually(Duration::from_secs(60), "six flows archived", || {
        (env.archived().len() == 6).then_some(())
    });
    let stderr = run.stop();
    let archived = env.archived();
    receiver.wait_for(
        Duration::from_secs(20),
        "an archive flow span per part",
        |spans| spans.iter().filter(|s| s.name == "archive flow").count() == 6,
    );
    let spans = receiver.spans();
    let ids = by_id(&spans);
    assert!(spans.iter().all(|s| s.transport == "http"));
    assert!(
        spans.iter().all(|s| s.service_name == "flow-archiver"),
        "service.name defaults to flow-archiver"
    );

    // Ingest: consumer spans per batch, linked to the messages' own traces.
    let process: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name == format!("process {source}"))
        .collect();
    assert!(!process.is_empty(), "no ingest spans in {spans:#?}");
    let mut linked = BTreeSet::new();
    for s in &process {
        assert_eq!(s.kind, 5, "consumer span");
        assert_eq!(s.parent_span_id, "", "a batch span is a root");
        assert_eq!(s.attr("messaging.system"), Some("file"));
        assert_eq!(s.attr("messaging.operation.type"), Some("process"));
        assert!(s.attr("messaging.batch.message_count").is_some());
        linked.extend(s.links.iter().map(|l| l.0.clone()));
    }
    let producer_traces: BTreeSet<String> = flow_traces
        .values()
        .flatten()
        .map(|t| trace_of(t).0)
        .collect();
    assert_eq!(
        linked, producer_traces,
        "links are exactly the valid traces"
    );

    // Archive: one trace per segment, one span per part, linked to the flow's trace.
    let mut segments = BTreeSet::new();
    for record in &archived {
        let data = &record["data"];
        let flow = data["flow_id"].as_str().expect("flow_id");
        let tp = record["traceparent"]
            .as_str()
            .unwrap_or_else(|| panic!("flow.archived of {flow} carries no traceparent"));
        let (trace, span_id) = trace_of(tp);
        let part = &ids[&span_id];
        assert_eq!(part.name, "archive flow");
        assert_eq!(part.trace_id, trace);
        assert_eq!(part.attr("flow_archiver.flow_id"), Some(flow));
        assert_eq!(part.attr("flow_archiver.tenant"), Some("acme"));
        assert_eq!(part.attr("flow_archiver.status"), Some("completed"));
        assert_eq!(part.attr("flow_archiver.event_count"), Some("3"));
        let own: Vec<String> = flow_traces[flow].iter().map(|t| trace_of(t).0).collect();
        let links: Vec<String> = part.links.iter().map(|l| l.0.clone()).collect();
        assert_eq!(links, own, "links of {flow}");
        // The flow's own trace stays in data.traceparent.
        assert_eq!(data["traceparent"].as_str(), flow_traces[flow].as_deref());

        let segment = &ids[&part.parent_span_id];
        assert_eq!(segment.name, "archive segment");
        assert_eq!(segment.parent_span_id, "", "each archival is its own trace");
        assert_eq!(segment.trace_id, trace);
        assert_eq!(
            segment.attr("flow_archiver.segment.id"),
            data["segment_id"].as_str()
        );
        assert_eq!(segment.status_code, 0);
        segments.insert((
            segment.span_id.clone(),
            data["object_key"].as_str().expect("object_key").to_string(),
        ));
    }
    assert_eq!(segments.len(), 2, "six parts in segments of four");

    for (segment_id, key) in &segments {
        let children: BTreeMap<&str, &ReceivedSpan> = spans
            .iter()
            .filter(|s| &s.parent_span_id == segment_id && s.name != "archive flow")
            .map(|s| (s.name.as_str(), s))
            .collect();
        let names: BTreeSet<&str> = children.keys().copied().collect();
        let send = format!(
            "send {}",
            env.path().join("data/events/archived.jsonl").display()
        );
        let expected: BTreeSet<&str> = [
            "build segment",
            "S3.PutObject",
            "verify segment",
            "record verified",
            send.as_str(),
            "delete state",
        ]
        .into();
        assert_eq!(names, expected);
        let put = children["S3.PutObject"];
        assert_eq!(put.kind, 3, "client span");
        assert_eq!(put.attr("aws.s3.bucket"), Some(BUCKET));
        assert_eq!(put.attr("aws.s3.key"), Some(key.as_str()));
        assert_eq!(put.attr("rpc.method"), Some("PutObject"));
        let send = children[send.as_str()];
        assert_eq!(send.kind, 4, "producer span");
        assert_eq!(send.attr("messaging.system"), Some("file"));
        assert_eq!(send.attr("messaging.operation.type"), Some("send"));
    }

    // Logs: JSON, one line per segment, carrying the segment's trace id.
    let logs = json_logs(&stderr);
    let lines: Vec<&Value> = logs
        .iter()
        .filter(|l| l["fields"]["message"] == "Archived segment.")
        .collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    let segment_traces: BTreeSet<String> = segments
        .iter()
        .map(|(id, _)| ids[id].trace_id.clone())
        .collect();
    let logged: BTreeSet<String> = lines
        .iter()
        .map(|l| {
            l["fields"]["trace_id"]
                .as_str()
                .expect("trace_id")
                .to_string()
        })
        .collect();
    assert_eq!(logged, segment_traces);
}

#[test]
fn grpc_export_records_a_failed_attempt_and_its_retry() {
    let receiver = OtlpReceiver::start();
    // The archive in a local directory, where a file squatting on the tenant's path
    // makes every upload fail until the test removes it.
    let env = Env::new(
        "[retention]\ncompleted = \"1s\"\nfailed = \"1s\"\n[scheduler]\ninterval = \"200ms\"\n",
    );
    let lines: Vec<String> = (1..=2u64)
        .map(|seq| {
            let kind = if seq == 2 { "failed" } else { "step" };
            ce(
                "blocked",
                "flow-b",
                &format!("b-{seq}"),
                seq,
                kind,
                "2026-01-01T00:00:00Z",
            )
        })
        .collect();
    let path = env.write("events.jsonl", (lines.join("\n") + "\n").as_bytes());
    let squatter = env.path().join("data/archive/flows/blocked");
    std::fs::create_dir_all(squatter.parent().expect("parent")).expect("archive dir");
    std::fs::write(&squatter, b"not a directory").expect("squat");
    let source = format!("file:{}", path.display());
    let run = env.spawn_env(
        &otel_vars(&receiver.grpc_endpoint, "grpc"),
        &["--log-format", "json", "run", "--source", &source],
    );
    receiver.wait_for(Duration::from_secs(30), "a failed archive span", |spans| {
        spans
            .iter()
            .any(|s| s.name == "archive segment" && s.status_code == 2)
    });
    std::fs::remove_file(&squatter).expect("remove squatter");
    eventually(Duration::from_secs(60), "the flow archived", || {
        (env.archived().len() == 1).then_some(())
    });
    let stderr = run.stop();
    receiver.wait_for(Duration::from_secs(20), "the successful attempt", |spans| {
        spans
            .iter()
            .any(|s| s.name == "archive segment" && s.status_code == 0)
    });
    let spans = receiver.spans();
    assert!(spans.iter().all(|s| s.transport == "grpc"));
    let segment_id = env.archived()[0]["data"]["segment_id"]
        .as_str()
        .expect("segment_id")
        .to_string();
    let attempts: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name == "archive segment")
        .collect();
    assert!(attempts
        .iter()
        .all(|s| s.attr("flow_archiver.segment.id") == Some(segment_id.as_str())));
    let failed: Vec<&&ReceivedSpan> = attempts.iter().filter(|s| s.status_code == 2).collect();
    assert!(!failed.is_empty());
    for f in &failed {
        assert!(
            f.status_message.contains("blocked"),
            "the error names the path: {}",
            f.status_message
        );
        assert!(f.event_names.iter().any(|e| e == "exception"));
    }
    let ok: Vec<&&ReceivedSpan> = attempts.iter().filter(|s| s.status_code == 0).collect();
    assert_eq!(ok.len(), 1, "one successful attempt");
    assert_eq!(ok[0].attr("flow_archiver.resumed"), Some("true"));
    // The failure is logged as JSON with the failed attempt's trace id.
    let logs = json_logs(&stderr);
    let failures: BTreeSet<String> = logs
        .iter()
        .filter(|l| l["fields"]["message"] == "Archive attempt failed.")
        .map(|l| {
            l["fields"]["trace_id"]
                .as_str()
                .expect("trace_id")
                .to_string()
        })
        .collect();
    let failed_traces: BTreeSet<String> = failed.iter().map(|s| s.trace_id.clone()).collect();
    assert!(
        !failures.is_empty() && failures.is_subset(&failed_traces),
        "{stderr}"
    );
}

#[test]
fn unsupported_otlp_protocol_is_a_usage_error() {
    let env = Env::new("");
    let out = env
        .command(&["config", "check"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        describe(&["config", "check"], env.path(), &out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/json") && stderr.contains("grpc"),
        "{stderr}"
    );
}
