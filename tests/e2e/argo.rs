//! The `argo` input preset, with Argo Workflows `Workflow` objects as a resource watch
//! forwards them (`tests/fixtures/argo/`, one per phase: Running, Succeeded, Failed,
//! Error): uid → flow id, namespace → tenant, phase → status, resourceVersion → order
//! and dedupe, finishedAt → time, labels, the traceparent annotation.
//! Out-of-order and repeated versions, and hostile or broken objects, are covered too.

use std::collections::BTreeMap;

use crate::support::*;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/argo/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn line(v: &Value) -> String {
    serde_json::to_string(v).unwrap()
}

#[test]
fn argo_workflow_objects_of_every_phase_are_archived_with_their_status() {
    let env = Env::new(
        "[input]\nformat = \"argo\"\n\
         [retention]\ncompleted = \"1h\"\nfailed = \"1h\"\nerror = \"1h\"\n",
    );
    let running = fixture("hello-running");
    let succeeded = fixture("hello-succeeded");
    let mut hostile = fixture("steps-failed");
    hostile["metadata"]["namespace"] = "../etc".into();
    let mut no_uid = fixture("dag-error");
    no_uid["metadata"].as_object_mut().unwrap().remove("uid");
    let mut wrong_type = fixture("long-running");
    wrong_type["metadata"]["uid"] = 42.into();
    let lines = [
        // The final version first, then the earlier one, then the final one again:
        // resourceVersion orders them and the repeat is a duplicate.
        line(&succeeded),
        line(&running),
        line(&succeeded),
        line(&fixture("steps-failed")),
        line(&fixture("dag-error")),
        line(&fixture("long-running")),
        line(&hostile),
        line(&no_uid),
        line(&wrong_type),
        "{\"kind\":\"Workflow\",\"metadata\":".to_string(),
    ];
    let input = env.write("workflows.jsonl", (lines.join("\n") + "\n").as_bytes());
    let out = env.ok(&["ingest", input.to_str().unwrap(), "--json"]);
    let totals: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(totals["stored"], 5, "{totals}");
    assert_eq!(totals["duplicates"], 1, "{totals}");

    let reasons: Vec<String> = env
        .dead_letters()
        .iter()
        .map(|d| d["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        reasons,
        [
            "invalid_identifier",
            "missing_field",
            "wrong_type",
            "malformed_json"
        ]
    );

    env.ok(&["sweep", "--now", "2026-03-03T00:00:00Z"]);
    let archived: BTreeMap<String, Value> = env
        .archived()
        .into_iter()
        .map(|r| {
            let d = r["data"].clone();
            (
                format!(
                    "{}/{}",
                    d["tenant"].as_str().unwrap(),
                    d["flow_id"].as_str().unwrap()
                ),
                d,
            )
        })
        .collect();
    assert_eq!(archived.len(), 3, "{archived:#?}");
    let hello = &archived["ml-team/0b6a4d3e-6f0c-4b8e-9d57-1b2f6c1e9a01"];
    assert_eq!(hello["status"], "completed");
    assert_eq!(hello["event_count"], 2, "both versions, once each");
    assert_eq!(hello["labels"]["team"], "ml");
    assert_eq!(
        hello["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    // finishedAt of the final version is the flow's last event time.
    assert_eq!(
        hello["last_event_time"],
        chrono::DateTime::parse_from_rfc3339("2026-03-02T10:00:21Z")
            .unwrap()
            .timestamp_micros()
    );
    assert_eq!(
        archived["ml-team/7d1e2f40-2a8b-4c61-a0f4-5e9b3c7d8e12"]["status"],
        "failed"
    );
    assert_eq!(
        archived["data-eng/c3f5a9b2-91d4-4e07-8b6a-2d4e6f8a0b33"]["status"],
        "error"
    );

    // The archived frame holds the Workflow objects in resourceVersion order.
    let hello_flow: Value =
        serde_json::from_str(&env.ok(&["get", "ml-team/0b6a4d3e-6f0c-4b8e-9d57-1b2f6c1e9a01"]))
            .unwrap();
    let versions: Vec<&str> = hello_flow["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["metadata"]["resourceVersion"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1201", "1287"]);

    // The running workflow stays live.
    let live: Value =
        serde_json::from_str(&env.ok(&["get", "data-eng/e81b7c22-5d3f-4a9e-b1c8-7f0d2e4a6c55"]))
            .unwrap();
    assert_eq!(live["archived"], false);
    assert_eq!(live["status"], "running");
}

/// An Argo Events sensor builds its message from `payload` entries (`dest` keys), so the
/// Workflow arrives wrapped: `input.mapping.root` points the preset at it.
#[test]
fn wrapped_workflows_are_read_through_the_mapping_root() {
    let env = Env::new(
        "[input]\nformat = \"argo\"\n[input.mapping]\nroot = \"/workflow\"\n\
         [retention]\ncompleted = \"1h\"\nfailed = \"1h\"\n",
    );
    let wrap = |name: &str| serde_json::json!({ "workflow": fixture(name) }).to_string();
    let lines = [
        wrap("hello-running"),
        wrap("hello-succeeded"),
        wrap("steps-failed"),
        // Not wrapped: nothing at the root pointer.
        line(&fixture("dag-error")),
    ];
    let input = env.write("wrapped.jsonl", (lines.join("\n") + "\n").as_bytes());
    let totals: Value =
        serde_json::from_str(&env.ok(&["ingest", input.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(totals["stored"], 3, "{totals}");
    let letters = env.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["reason"], "missing_field");
    env.ok(&["sweep", "--now", "2026-03-03T00:00:00Z"]);
    let statuses: BTreeMap<String, String> = env
        .archived()
        .iter()
        .map(|r| {
            (
                r["data"]["flow_id"].as_str().unwrap().to_string(),
                r["data"]["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        BTreeMap::from([
            (
                "0b6a4d3e-6f0c-4b8e-9d57-1b2f6c1e9a01".to_string(),
                "completed".to_string()
            ),
            (
                "7d1e2f40-2a8b-4c61-a0f4-5e9b3c7d8e12".to_string(),
                "failed".to_string()
            ),
        ])
    );
}
