//! `flow-archive/v2` beside `flow-archive/v1`: a store that holds objects of both
//! versions is read, verified, indexed (from the records and from the manifests),
//! replayed and erased; stock `zstd -dc` prints a v2 object whole.

use std::path::Path;

use serde_json::Value;

use crate::support::*;

const CONFIG: &str = "[retention]\ncompleted = \"1h\"\narchive_for = \"10y\"\n\
                      [archive]\nframe_target_bytes = 3000\n";

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn objects(env: &Env) -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            match entry.file_type().unwrap().is_dir() {
                true => walk(&entry.path(), out),
                false => out.push(entry.path()),
            }
        }
    }
    let mut out = Vec::new();
    walk(&env.path().join("data/archive"), &mut out);
    out.sort();
    out
}

/// Ingests `flows` flows of tenant `acme` named `{prefix}-{n}`, each of `events` events
/// (the last one completes it), and archives them.
fn archive_flows(env: &Env, prefix: &str, flows: usize, events: u64) {
    let lines: Vec<String> = (0..flows)
        .flat_map(|f| {
            (1..=events).map(move |seq| {
                let kind = if seq == events { "completed" } else { "step" };
                ce(
                    "acme",
                    &format!("{prefix}-{f}"),
                    &format!("{prefix}-{f}-{seq}"),
                    seq,
                    kind,
                    &format!("2026-01-01T00:00:0{seq}Z"),
                )
            })
        })
        .collect();
    env.write("events.jsonl", (lines.join("\n") + "\n").as_bytes());
    env.ok(&["ingest", "events.jsonl"]);
    env.ok(&["sweep", "--now", "2026-06-01T00:00:00Z"]);
}

fn event_ids(flow: &Value) -> Vec<String> {
    flow["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events: {flow}"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_store_of_v1_and_v2_objects_reads_verifies_indexes_replays_and_erases_both() {
    let env = Env::new(CONFIG);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    std::fs::create_dir_all(env.path().join("data/archive")).unwrap();
    copy_tree(&fixture.join("archive"), &env.path().join("data/archive"));
    std::fs::create_dir_all(env.path().join("data/events")).unwrap();
    std::fs::copy(
        fixture.join("archived.jsonl"),
        env.path().join("data/events/archived.jsonl"),
    )
    .unwrap();

    // New flows archived by this build: a v2 object beside the v1 one.
    archive_flows(&env, "new", 3, 4);
    let objects_before = objects(&env);
    assert_eq!(objects_before.len(), 2, "{objects_before:?}");
    let v2 = objects_before
        .iter()
        .find(|p| !p.to_string_lossy().contains("92988b3d"))
        .unwrap();
    let whole = String::from_utf8(pipe(&["zstd", "-dc"], &std::fs::read(v2).unwrap())).unwrap();
    let records: Vec<Value> = whole
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3 * (1 + 4 + 1) + 1, "every line, stock zstd");
    assert_eq!(records[0]["record"], "header");
    let manifest = records.last().unwrap();
    assert_eq!(manifest["record"], "manifest");
    assert_eq!(manifest["format"], "flow-archive/v2");
    let parts = manifest["parts"].as_array().unwrap();
    assert!(
        parts.windows(2).any(|w| w[0]["offset"] == w[1]["offset"]),
        "small parts share frames: {manifest}"
    );

    // Everything checks, both versions.
    let report: Value = serde_json::from_str(&env.ok(&["verify", "--json"])).unwrap();
    assert_eq!(report["flow_parts"], 6, "{report}");
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );

    // The index from the records (v1 ones without a range), then from the manifests.
    env.ok(&["index"]);
    let listed = env.ok(&["list", "--json", "--limit", "100"]);
    let page: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 6, "{page}");
    env.ok(&["index", "rebuild", "--from-archive"]);
    assert_eq!(env.ok(&["list", "--json", "--limit", "100"]), listed);
    for f in ["old-1", "new-1"] {
        let flow: Value = serde_json::from_str(&env.ok(&["get", &format!("acme/{f}")])).unwrap();
        let want: Vec<String> = (1..=4).map(|s| format!("{f}-{s}")).collect();
        assert_eq!(event_ids(&flow), want, "{f}");
    }
    for f in ["old-2", "new-2"] {
        let out = env.ok(&["replay", &format!("acme/{f}"), "--to", "stdout"]);
        let ids: Vec<String> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(ids, (1..=4).map(|s| format!("{f}-{s}")).collect::<Vec<_>>());
    }

    // Erasing a flow of each version rewrites both objects; the rest reads back.
    for f in ["old-1", "new-1"] {
        env.ok(&["erase", &format!("acme/{f}"), "--reason", "request 7"]);
        assert_ne!(
            env.run(&["get", &format!("acme/{f}")]).status.code(),
            Some(0)
        );
    }
    let report: Value = serde_json::from_str(&env.ok(&["verify", "--json"])).unwrap();
    assert_eq!(report["flow_parts"], 4, "{report}");
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );
    for f in ["old-0", "old-2", "new-0", "new-2"] {
        let flow: Value = serde_json::from_str(&env.ok(&["get", &format!("acme/{f}")])).unwrap();
        assert_eq!(event_ids(&flow).len(), 4, "{f}");
    }
    for object in objects(&env) {
        let text = pipe(&["zstd", "-dc"], &std::fs::read(&object).unwrap());
        let text = String::from_utf8_lossy(&text);
        assert!(
            !text.contains("old-1-") && !text.contains("new-1-"),
            "{object:?}"
        );
    }
}

/// The schema evolution of `flow.archived`, read by fastavro: records of both schemas,
/// as this build encodes them (v2) and as the previous one did (v1), each read by a
/// consumer on either schema.
#[test]
fn flow_archived_records_of_either_schema_read_with_either_schema() {
    use flow_archiver::publish::encoding::{DataEncoder, FLOW_ARCHIVED_V1_AVSC};
    use flow_archiver::publish::{EventData, FlowArchived};
    let line = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1/archived.jsonl"),
    )
    .unwrap();
    let first: Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    let v1_record: FlowArchived = serde_json::from_value(first["data"].clone()).unwrap();
    assert_eq!(v1_record.plain_offset, None);
    let mut v2_record = v1_record.clone();
    (v2_record.plain_offset, v2_record.plain_length) = (Some(1726), Some(1726));

    let encoder = DataEncoder::new(flow_archiver::config::DataEncoding::Avro).unwrap();
    let v2_bytes = encoder.encode(&EventData::Archived(v2_record)).unwrap();
    // A v1 record as the previous build wrote it: the v1 schema and its fingerprint.
    let v1_schema = apache_avro::Schema::parse_str(FLOW_ARCHIVED_V1_AVSC).unwrap();
    let value = apache_avro::to_value(&v1_record)
        .unwrap()
        .resolve(&v1_schema)
        .unwrap();
    let mut v1_bytes = vec![0xC3, 0x01];
    v1_bytes
        .extend(flow_archiver::publish::encoding::spec_fingerprint(FLOW_ARCHIVED_V1_AVSC).unwrap());
    v1_bytes.extend(apache_avro::to_avro_datum(&v1_schema, value).unwrap());

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");
    let read: Vec<Value> = serde_json::from_str(&python(
        "avro_compat.py",
        &[
            &format!("{dir}/flow_archived.v1.avsc"),
            &format!("{dir}/flow_archived.avsc"),
            &hex::encode(&v2_bytes),
            &hex::encode(&v1_bytes),
        ],
    ))
    .unwrap();
    let seen: Vec<(&str, &str, Value)> = read
        .iter()
        .map(|r| {
            (
                r["writer"].as_str().unwrap(),
                r["reader"].as_str().unwrap(),
                r["plain_offset"].clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("v2", "v1", Value::Null),
            ("v2", "v2", Value::from(1726)),
            ("v1", "v1", Value::Null),
            ("v1", "v2", Value::Null),
        ]
    );
    assert!(read
        .iter()
        .all(|r| r["flow_id"] == v1_record.flow_id.as_str()));
}

/// A v2 object whose manifest is rewritten with `edit` (the frames untouched): the
/// manifest frame is re-compressed with stock `zstd` and the footer kept.
fn rewrite_manifest(original: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let footer = &original[original.len() - 24..];
    let at = u64::from_le_bytes(footer[16..24].try_into().unwrap()) as usize;
    let plain = pipe(&["zstd", "-dc"], &original[at..original.len() - 24]);
    let mut manifest: Value = serde_json::from_slice(&plain).unwrap();
    edit(&mut manifest);
    let mut line = serde_json::to_vec(&manifest).unwrap();
    line.push(b'\n');
    let mut out = original[..at].to_vec();
    out.extend_from_slice(&pipe(&["zstd", "-3", "-c"], &line));
    out.extend_from_slice(footer);
    out
}

/// Hostile manifests of v2 objects: part ranges outside their frame or pointing at a
/// neighbour's lines, half a range, a frame inside the manifest, ids that climb out of
/// the store or carry invisible characters. `verify` names the part and the problem,
/// an index rebuilt from such a manifest serves an error for the part, never another
/// part's events, and nothing panics.
#[test]
fn hostile_v2_manifests_are_errors_naming_the_part_never_wrong_events() {
    const ADMIN: &str = "admin-token-0123456789abcdef";
    let env = Env::new(&format!("{CONFIG}[api]\nadmin_token = \"{ADMIN}\"\n"));
    archive_flows(&env, "h", 4, 3);
    let object = objects(&env).pop().unwrap();
    let original = std::fs::read(&object).unwrap();
    let manifest: Value = {
        let at = u64::from_le_bytes(original[original.len() - 8..].try_into().unwrap()) as usize;
        serde_json::from_slice(&pipe(&["zstd", "-dc"], &original[at..original.len() - 24])).unwrap()
    };
    let parts = manifest["parts"].as_array().unwrap().clone();
    assert_eq!(
        parts[0]["offset"], parts[1]["offset"],
        "h-0 and h-1 share a frame"
    );
    let manifest_at = u64::from_le_bytes(original[original.len() - 8..].try_into().unwrap());
    let records = env.path().join("data/events/archived.jsonl");
    let kept = env.path().join("archived.jsonl.kept");
    assert!(records.exists());

    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "range past the frame",
            Box::new(|m| m["parts"][0]["plain_offset"] = 1_000_000_000_000u64.into()),
            "outside its frame",
        ),
        (
            "length of 2^64 - 1",
            Box::new(|m| m["parts"][0]["plain_length"] = u64::MAX.into()),
            "outside its frame",
        ),
        (
            "the neighbour's lines",
            Box::new(move |m| {
                let next = m["parts"][1]["plain_offset"].clone();
                m["parts"][0]["plain_offset"] = next;
            }),
            "events_sha256",
        ),
        (
            "half a range",
            Box::new(|m| {
                m["parts"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("plain_length");
            }),
            "go together",
        ),
        (
            "a frame inside the manifest",
            Box::new(move |m| {
                m["parts"][0]["offset"] = manifest_at.into();
                m["parts"][0]["length"] = 8.into();
            }),
            "h-0",
        ),
    ];
    for (name, edit, says) in cases {
        std::fs::write(&object, rewrite_manifest(&original, |m| edit(m))).unwrap();
        let out = env.run(&["verify"]);
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{name}: {report}");
        assert!(
            report.contains("h-0") && report.contains(says),
            "{name}: verify names the part and says {says:?}: {report}"
        );
        // With the records gone, an index rebuilt from this manifest serves an error
        // for the part, never another part's events; the other parts still read.
        std::fs::rename(&records, &kept).unwrap();
        env.ok(&["index", "rebuild", "--from-archive"]);
        {
            let (_api, base) = serve_api(&env);
            let (status, body) = http_get(&format!("{base}/flows/acme/h-0"), ADMIN);
            assert!(status >= 500, "{name}: {status} {body}");
            assert!(!body.to_string().contains("h-1-1"), "{name}: {body}");
            let (status, body) = http_get(&format!("{base}/flows/acme/h-2"), ADMIN);
            assert_eq!(status, 200, "{name}: {body}");
            assert_eq!(event_ids(&body), vec!["h-2-1", "h-2-2", "h-2-3"]);
        }
        std::fs::rename(&kept, &records).unwrap();
    }

    // Ids that climb out of the store or hide characters: the rebuild refuses the
    // entry by name and indexes the rest.
    for hostile in ["../../etc/passwd", "h-0\u{202e}", "a/b"] {
        let hostile = hostile.to_string();
        std::fs::write(
            &object,
            rewrite_manifest(&original, |m| {
                m["parts"][0]["flow_id"] = hostile.clone().into()
            }),
        )
        .unwrap();
        let out = env.run(&["index", "rebuild", "--from-archive"]);
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.code() != Some(101), "no panic: {report}");
        let verify = env.run(&["verify"]);
        let said = String::from_utf8_lossy(&verify.stdout).into_owned()
            + &String::from_utf8_lossy(&verify.stderr);
        assert_eq!(verify.status.code(), Some(1), "{said}");
        assert!(
            said.contains("invalid id"),
            "verify names the entry: {said}"
        );
        let listed = env.ok(&["list", "--json", "--limit", "100"]);
        assert!(
            !listed.contains("passwd") && !listed.contains('\u{202e}'),
            "{listed}"
        );
        assert!(
            listed.contains("h-3"),
            "the other parts are indexed: {listed}"
        );
        assert!(!env.path().join("etc").exists());
    }
    std::fs::write(&object, &original).unwrap();
    env.ok(&["verify"]);
}
