//! Round trip through the real binary: every event of a due flow comes back from its
//! segment byte for byte and in order; the standard `zstd`/`gzip` tools decode the
//! objects; the checksums match `sha256` of the byte ranges the manifest names; the
//! published records match `schemas/flow_archived.avsc`; `verify` catches damage.

use std::collections::{BTreeMap, HashSet};

use crate::support::*;
use serde_json::Value;

const CONFIG: &str = r#"
[archive]
segment_max_flows = 7
"#;

/// A workload with shuffled sequences, duplicates, several tenants, a running flow.
fn workload() -> (String, BTreeMap<(String, String), Vec<String>>) {
    let mut lines = Vec::new();
    let mut expected: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for f in 0..20 {
        let tenant = format!("tenant-{}", f % 3);
        let flow = format!("flow-{f:03}");
        let n = 3 + f % 5;
        let mut events = Vec::new();
        for seq in 1..=n {
            let kind = match (seq == n, f % 4) {
                (true, 0) => "failed",
                (true, _) => "completed",
                _ => "step",
            };
            let line = ce(
                &tenant,
                &flow,
                &format!("{flow}-{seq}"),
                seq as u64,
                kind,
                "2026-01-01T00:00:00Z",
            );
            events.push(line);
        }
        expected.insert((tenant, flow), events.clone());
        // Shuffle deterministically: reverse odd flows, rotate the others.
        if f % 2 == 1 {
            events.reverse();
        } else {
            events.rotate_left(1);
        }
        // A redelivered duplicate.
        events.push(events[0].clone());
        lines.extend(events);
    }
    // A flow that never finishes stays live.
    lines.push(ce(
        "tenant-0",
        "still-running",
        "r-1",
        1,
        "started",
        "2026-01-01T00:00:00Z",
    ));
    // Interleave flows the way an engine emits them.
    lines.sort_by_key(|l| sha256_hex(l.as_bytes()));
    (lines.join("\n") + "\n", expected)
}

fn check_round_trip(config: &str, decompress: &[&str]) {
    let env = Env::new(config);
    let (input, expected) = workload();
    env.write("events.jsonl", input.as_bytes());
    env.ok(&["ingest", "events.jsonl"]);
    env.ok(&["sweep", "--now", "2026-06-01T00:00:00Z"]);

    let records = env.archived();
    assert_eq!(
        records.len(),
        expected.len(),
        "one record per terminal flow"
    );
    let mut seen = HashSet::new();
    for rec in &records {
        let d = &rec["data"];
        let key = (
            d["tenant"].as_str().unwrap().to_string(),
            d["flow_id"].as_str().unwrap().to_string(),
        );
        assert!(seen.insert(key.clone()), "{key:?} archived twice");
        assert_eq!(rec["id"], format!("{}/{}/1/archived", key.0, key.1));
        let object = std::fs::read(
            env.path()
                .join("data/archive")
                .join(d["object_key"].as_str().unwrap()),
        )
        .unwrap();
        assert_eq!(sha256_hex(&object), d["object_sha256"]);
        let frame = frame_of(&object, d);
        assert_eq!(
            sha256_hex(frame),
            d["frame_sha256"],
            "frame checksum of {key:?}"
        );
        // The same with the standard tool, over exactly the bytes the record names.
        let tool = String::from_utf8(pipe(&["sha256sum"], frame)).unwrap();
        assert_eq!(
            tool.split_whitespace().next(),
            d["frame_sha256"].as_str(),
            "sha256sum of {key:?}'s frame"
        );

        // The frame alone decodes with the standard tool; the record says where the
        // part lies in it.
        let text = part_text(decompress, &object, d);
        let lines: Vec<&str> = text.lines().collect();
        let header: Value = serde_json::from_str(lines[0]).unwrap();
        let trailer: Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
        assert_eq!(header["record"], "header");
        assert_eq!(trailer["record"], "trailer");
        let events = &lines[1..lines.len() - 1];
        let want = &expected[&key];
        assert_eq!(
            events,
            want.iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice(),
            "events of {key:?}, in order, deduplicated, byte for byte"
        );
        let mut event_bytes = Vec::new();
        for e in events {
            event_bytes.extend_from_slice(e.as_bytes());
            event_bytes.push(b'\n');
        }
        assert_eq!(sha256_hex(&event_bytes), d["events_sha256"]);
        let tool = String::from_utf8(pipe(&["sha256sum"], &event_bytes)).unwrap();
        assert_eq!(tool.split_whitespace().next(), d["events_sha256"].as_str());
        assert_eq!(
            (&header["tenant"], &header["flow_id"], &header["part"]),
            (&d["tenant"], &d["flow_id"], &d["part"]),
            "the header names the part"
        );
        assert!(
            trailer.get("events_sha256").is_none(),
            "the digest is the manifest's alone"
        );
        assert_eq!(trailer["event_count"], d["event_count"]);
        assert_eq!(d["event_count"].as_u64().unwrap() as usize, want.len());
        let last_kind = if want.last().unwrap().contains("flow.failed") {
            "failed"
        } else {
            "completed"
        };
        assert_eq!(d["status"], last_kind);
    }

    // Whole objects decode with the standard tool: headers, events, trailers, manifest.
    let mut objects: Vec<String> = records
        .iter()
        .map(|r| r["data"]["object_key"].as_str().unwrap().to_string())
        .collect();
    objects.sort();
    objects.dedup();
    assert!(
        objects.len() >= 3,
        "segments are cut at segment_max_flows and per tenant"
    );
    for key in &objects {
        let object = std::fs::read(env.path().join("data/archive").join(key)).unwrap();
        let text = String::from_utf8(pipe(decompress, &object)).unwrap();
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["record"], "manifest");
        let parts = last["parts"].as_array().unwrap();
        assert_eq!(
            parts.len(),
            records
                .iter()
                .filter(|r| r["data"]["object_key"] == *key)
                .count()
        );
    }

    // The running flow is still live and readable.
    let live: Value = serde_json::from_str(&env.ok(&["get", "tenant-0/still-running"])).unwrap();
    assert_eq!(live["status"], "running");
    assert_eq!(live["events"].as_array().unwrap().len(), 1);

    // verify passes, then names the flow whose frame was damaged.
    assert!(env.ok(&["verify"]).contains("all checksums match"));
    let victim = &records[0]["data"];
    let path = env
        .path()
        .join("data/archive")
        .join(victim["object_key"].as_str().unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    let at = victim["offset"].as_u64().unwrap() as usize
        + victim["length"].as_u64().unwrap() as usize / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let out = env.run(&["verify"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe(&["verify"], env.path(), &out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let flow = format!(
        "{}/{} part 1",
        victim["tenant"].as_str().unwrap(),
        victim["flow_id"].as_str().unwrap()
    );
    assert!(stdout.contains(&flow), "verify must name {flow}: {stdout}");
    assert!(stdout.contains("frame_sha256"), "{stdout}");
}

#[test]
fn zstd_round_trip_with_the_standard_tools() {
    check_round_trip(CONFIG, &["zstd", "-dc"]);
}

#[test]
fn gzip_round_trip_with_the_standard_tools() {
    check_round_trip(
        &format!("{CONFIG}compression = \"gzip\"\n"),
        &["gzip", "-dc"],
    );
}

#[test]
fn published_records_match_the_avro_schema() {
    let env = Env::new(CONFIG);
    let (input, _) = workload();
    env.write("events.jsonl", input.as_bytes());
    env.ok(&["ingest", "events.jsonl"]);
    env.ok(&["sweep", "--now", "2026-06-01T00:00:00Z"]);
    let schema_text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/flow_archived.avsc"
    ))
    .unwrap();
    let schema = apache_avro::Schema::parse_str(&schema_text).expect("schema parses");
    for other in ["flow_event.avsc", "flow_purged.avsc"] {
        let text =
            std::fs::read_to_string(format!("{}/schemas/{other}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        apache_avro::Schema::parse_str(&text).unwrap_or_else(|e| panic!("{other}: {e}"));
    }
    let records = env.archived();
    assert!(!records.is_empty());
    for rec in records {
        assert_eq!(rec["specversion"], "1.0");
        assert_eq!(rec["type"], "io.flowarchiver.flow.archived");
        let data: flow_archiver::publish::FlowArchived =
            serde_json::from_value(rec["data"].clone())
                .expect("data has every schema field with the right JSON type");
        let value = apache_avro::to_value(&data)
            .unwrap()
            .resolve(&schema)
            .expect("record resolves against flow_archived.avsc");
        // And it survives an Avro single-object round trip.
        let encoded = apache_avro::to_avro_datum(&schema, value).unwrap();
        assert!(!encoded.is_empty());
    }
}

#[test]
fn dry_run_reports_what_a_live_run_does_and_changes_nothing() {
    let env = Env::new(CONFIG);
    let (input, expected) = workload();
    env.write("events.jsonl", input.as_bytes());
    env.ok(&["ingest", "events.jsonl"]);
    let dry: Value = serde_json::from_str(&env.ok(&[
        "sweep",
        "--dry-run",
        "--now",
        "2026-06-01T00:00:00Z",
        "--json",
    ]))
    .unwrap();
    assert_eq!(dry["flow_parts"].as_u64().unwrap() as usize, expected.len());
    assert!(env.archived().is_empty(), "a dry run publishes nothing");
    let live: Value =
        serde_json::from_str(&env.ok(&["sweep", "--now", "2026-06-01T00:00:00Z", "--json"]))
            .unwrap();
    assert_eq!(live["flow_parts"], dry["flow_parts"]);
    assert_eq!(live["segments"], dry["segments"]);
    assert_eq!(live["events"], dry["events"]);
    assert_eq!(live["raw_bytes"], dry["raw_bytes"]);
}

#[test]
fn per_flow_layout_writes_one_object_per_flow_part() {
    let env = Env::new(
        "[archive]\nlayout = \"per-flow\"\ncompression = \"gzip\"\nprefix = \"archive/v1\"\n",
    );
    let (input, expected) = workload();
    env.write("events.jsonl", input.as_bytes());
    env.ok(&["ingest", "events.jsonl"]);
    env.ok(&["sweep", "--now", "2026-06-01T00:00:00Z"]);
    let records = env.archived();
    assert_eq!(records.len(), expected.len());
    for r in &records {
        let d = &r["data"];
        let key = format!(
            "archive/v1/{}/flows/{}/1.jsonl.gz",
            d["tenant"].as_str().unwrap(),
            d["flow_id"].as_str().unwrap()
        );
        assert_eq!(d["object_key"], key);
        assert_eq!(d["offset"], 0, "the only part starts the object");
        let object = std::fs::read(env.path().join("data/archive").join(&key)).unwrap();
        let text = String::from_utf8(pipe(&["gzip", "-dc"], &object)).unwrap();
        assert!(text
            .lines()
            .last()
            .unwrap()
            .contains("\"record\":\"manifest\""));
    }
    assert!(env
        .ok(&["verify"])
        .contains(&format!("checked {} objects", expected.len())));

    // Erasure deletes a flow's own object; purge finds the rest without a date prefix.
    let d = &records[0]["data"];
    let flow = format!(
        "{}/{}",
        d["tenant"].as_str().unwrap(),
        d["flow_id"].as_str().unwrap()
    );
    let erased: Value =
        serde_json::from_str(&env.ok(&["erase", &flow, "--reason", "test", "--json"])).unwrap();
    assert_eq!(erased["objects_deleted"], 1, "{erased}");
    assert_eq!(erased["objects_rewritten"], 0);
    let early: Value =
        serde_json::from_str(&env.ok(&["purge", "--now", "2027-05-31T00:00:00Z", "--json"]))
            .unwrap();
    assert_eq!(early["objects"], 0, "nothing is due yet: {early}");
    let late: Value =
        serde_json::from_str(&env.ok(&["purge", "--now", "2200-01-01T00:00:00Z", "--json"]))
            .unwrap();
    assert_eq!(late["objects"], expected.len() - 1, "{late}");
    assert!(env.ok(&["verify"]).contains("checked 0 objects"));
}
