//! What the archiver wrote, read independently: published records, audit lines,
//! archive frames (through the stock `zstd`/`gzip` tools), and test events.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::env::{read_jsonl, Env};

/// `tenant/flow_id/part` of a published record's data.
pub fn part_key(d: &Value) -> String {
    format!(
        "{}/{}/{}",
        d["tenant"].as_str().unwrap(),
        d["flow_id"].as_str().unwrap(),
        d["part"]
    )
}

/// `tenant/flow_id/part` of every part a `purge --json` report removed.
pub fn purged_parts(report: &Value) -> std::collections::BTreeSet<String> {
    report["purged"]
        .as_array()
        .expect("purged objects")
        .iter()
        .flat_map(|o| {
            let tenant = o["tenant"].as_str().unwrap().to_string();
            o["flow_parts"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |p| format!("{tenant}/{}", p.as_str().unwrap()))
        })
        .collect()
}

/// After hold, erase and purge: checks a part's latest published record — the erased
/// part purged for erasure, purged parts for retention, every other part still
/// archived — and returns whether the part is still archived.
pub fn check_latest_part_record(
    kind: &str,
    data: &Value,
    key: &str,
    erased_key: &str,
    purged: &std::collections::BTreeSet<String>,
) -> bool {
    if key == erased_key {
        assert_eq!(kind, "io.flowarchiver.flow.purged");
        assert_eq!(data["reason"], "erasure");
        false
    } else if purged.contains(key) {
        assert_eq!(kind, "io.flowarchiver.flow.purged", "{key}");
        assert_eq!(data["reason"], "retention");
        false
    } else {
        assert_eq!(kind, "io.flowarchiver.flow.archived", "{key}");
        true
    }
}

/// The index lists exactly `kept` parts, the held flow's among them and marked held.
pub fn assert_index_keeps(env: &Env, kept: usize, held_flow: &str) {
    assert!(kept >= 1, "the held flow's object is kept");
    let listed: Value =
        serde_json::from_str(&env.ok(&["list", "--json", "--limit", "1000"])).unwrap();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), kept, "{listed}");
    assert!(items
        .iter()
        .any(|i| i["flow_id"] == held_flow && i["held"] == true));
}

/// The audit file's records, after checking that each of `actions` is among them.
pub fn audit_records_with(env: &Env, actions: &[&str]) -> Vec<Value> {
    let file = read_jsonl(&env.path().join("data/audit.jsonl"));
    let seen: std::collections::BTreeSet<&str> =
        file.iter().map(|r| r["action"].as_str().unwrap()).collect();
    for action in actions {
        assert!(seen.contains(action), "{action} audited: {seen:?}");
    }
    file
}

/// A broker's copy of the audit trail holds exactly the file's records.
pub fn assert_same_records(copy: &[Value], file: &[Value], what: &str) {
    let as_set = |v: &[Value]| {
        v.iter()
            .map(|r| r.to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(copy.len(), file.len(), "{what}");
    assert_eq!(as_set(copy), as_set(file), "{what}");
}

/// A CloudEvent line for tests.
pub fn ce(tenant: &str, flow: &str, id: &str, seq: u64, kind: &str, time: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/engine","type":"io.test.flow.{kind}","subject":"{flow}","tenant":"{tenant}","sequence":"{seq:04}","time":"{time}","data":{{"step":{seq},"labels":{{"team":"t{}"}}}}}}"#,
        seq % 3
    )
}

/// The bytes of the frame a `flow.archived` record names: `[offset, offset + length)`.
pub fn frame_of<'a>(object: &'a [u8], data: &Value) -> &'a [u8] {
    let offset = data["offset"].as_u64().expect("offset") as usize;
    let length = data["length"].as_u64().expect("length") as usize;
    &object[offset..offset + length]
}

/// The part's lines as a stock tool decodes them: the frame through `decompress`
/// (`zstd -dc`, `gzip -dc`), then, for a part packed with others into one frame
/// (`flow-archive/v2`), the bytes the record's `plain_offset`/`plain_length` name.
pub fn part_text(decompress: &[&str], object: &[u8], data: &Value) -> String {
    let plain = pipe(decompress, frame_of(object, data));
    let lines = match (data["plain_offset"].as_u64(), data["plain_length"].as_u64()) {
        (Some(start), Some(length)) => plain[start as usize..(start + length) as usize].to_vec(),
        _ => plain,
    };
    String::from_utf8(lines).expect("the part's lines are UTF-8")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Pipes `input` through a command-line tool (`zstd -dc`, `gzip -dc`).
pub fn pipe(cmd: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} is required for this test: {e}", cmd[0]));
    let mut stdin = child.stdin.take().expect("stdin");
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer").expect("write stdin");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
