//! The archive on a real S3 server (`s3s-fs`, started per test on a free port):
//! round trip with SigV4 and `x-amz-checksum-sha256`, verification through ranged
//! GETs, a multipart upload of a flow larger than the in-memory frame limit, and
//! wrong credentials → a clear error and nothing deleted.

use crate::support::*;
use base64::Engine;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const BUCKET: &str = "flow-archive";
const NOW: &str = "2026-06-01T00:00:00Z";

fn env_for(s3: &S3Server, extra: &str, secret: &str) -> Env {
    let config = format!(
        "[archive]\nbucket = \"{BUCKET}\"\nendpoint = \"{}\"\nprefix = \"prod/flows\"\nsegment_max_flows = 5\n{extra}",
        s3.endpoint
    );
    let mut env = Env::new(&config);
    env.vars = vec![
        ("AWS_ACCESS_KEY_ID".into(), s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY".into(), secret.into()),
        ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
    ];
    env
}

fn small_workload() -> String {
    let mut lines = Vec::new();
    for f in 0..12 {
        for seq in 1..=4u64 {
            let kind = if seq == 4 { "completed" } else { "step" };
            lines.push(ce(
                &format!("tenant-{}", f % 2),
                &format!("flow-{f}"),
                &format!("{f}-{seq}"),
                seq,
                kind,
                "2026-01-01T00:00:00Z",
            ));
        }
    }
    lines.join("\n") + "\n"
}

#[test]
fn round_trip_through_a_real_s3_server() {
    let s3 = S3Server::start(BUCKET);
    let env = env_for(&s3, "", &s3.secret_key);
    env.write("events.jsonl", small_workload().as_bytes());
    env.ok(&["ingest", "events.jsonl"]);
    env.ok(&["sweep", "--now", NOW]);

    let records = env.archived();
    assert_eq!(records.len(), 12);
    for r in &records {
        let d = &r["data"];
        let uri = d["object_uri"].as_str().unwrap();
        assert!(
            uri.starts_with(&format!("s3://{BUCKET}/prod/flows/tenant-")),
            "{uri}"
        );
        // The bytes the server stored are the bytes we hashed.
        let on_server = std::fs::read(
            s3.root
                .path()
                .join(BUCKET)
                .join(d["object_key"].as_str().unwrap()),
        )
        .unwrap();
        assert_eq!(sha256_hex(&on_server), d["object_sha256"]);
        let frame = frame_of(&on_server, d);
        assert_eq!(sha256_hex(frame), d["frame_sha256"]);
        let text = part_text(&["zstd", "-dc"], &on_server, d);
        assert_eq!(text.lines().count(), 4 + 2, "header, 4 events, trailer");
    }
    // The SDK client (restores, Object Lock) signs with the credentials object_store
    // resolved: s3s-fs checks the signature of its HeadObject.
    let restore: Value =
        serde_json::from_str(&env.ok(&["restore", "tenant-0/flow-0", "--json"])).unwrap();
    assert_eq!(restore["objects"][0]["state"], "not_needed", "{restore}");
    assert_eq!(
        restore["objects"][0]["storage_class"], "STANDARD",
        "{restore}"
    );
    // verify reads everything back through the S3 API (HEAD, ranged GETs, full GET).
    let report: Value = serde_json::from_str(&env.ok(&["verify", "--json"])).unwrap();
    assert_eq!(report["flow_parts"], 12);
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );

    // Damage one object on the server: verify fails and names the flow.
    let victim = &records[0]["data"];
    let path = s3
        .root
        .path()
        .join(BUCKET)
        .join(victim["object_key"].as_str().unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[victim["offset"].as_u64().unwrap() as usize + 20] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let out = env.run(&["verify", victim["object_uri"].as_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe(&["verify"], env.path(), &out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(victim["flow_id"].as_str().unwrap()),
        "{stdout}"
    );
}

/// The SDK client signs with object_store's credentials: wrong ones are refused by
/// the server for its calls too, with the error S3 gave.
#[test]
fn the_sdk_client_uses_the_same_credentials() {
    let s3 = S3Server::start(BUCKET);
    let good = env_for(&s3, "", &s3.secret_key);
    good.write("events.jsonl", small_workload().as_bytes());
    good.ok(&["ingest", "events.jsonl"]);
    good.ok(&["sweep", "--now", NOW]);
    let mut bad = env_for(&s3, "", "not-the-secret");
    std::fs::remove_dir_all(bad.path().join("data")).ok();
    copy_dir(&good.path().join("data"), &bad.path().join("data"));
    bad.vars.push(("RUST_LOG".into(), "warn".into()));
    let out = bad.run(&["restore", "tenant-0/flow-0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HeadObject"), "{err}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_flow_larger_than_the_frame_buffer_streams_and_uploads_in_parts() {
    let s3 = S3Server::start(BUCKET);
    let env = env_for(&s3, "multipart_threshold_bytes = 5242880\n", &s3.secret_key);
    // 12 events of ~700 KiB of random base64: ~8 MiB raw, above the 4 MiB in-memory
    // frame limit, and over 5 MiB compressed, so the upload is multipart.
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut lines = Vec::new();
    for seq in 1..=12u64 {
        let mut blob = vec![0u8; 520 * 1024];
        rng.fill(blob.as_mut_slice());
        let data = base64::engine::general_purpose::STANDARD.encode(&blob);
        let kind = if seq == 12 { "completed" } else { "chunk" };
        lines.push(format!(
            r#"{{"specversion":"1.0","id":"big-{seq}","source":"/s","type":"io.test.flow.{kind}","subject":"big","tenant":"t","sequence":"{seq}","time":"2026-01-01T00:00:00Z","data":{{"blob":"{data}"}}}}"#
        ));
    }
    env.write("events.jsonl", (lines.join("\n") + "\n").as_bytes());
    env.ok(&["ingest", "events.jsonl"]);
    env.ok(&["sweep", "--now", NOW]);
    let rec = &env.archived()[0]["data"];
    assert!(rec["stored_bytes"].as_u64().unwrap() > 5 << 20, "{rec}");
    let on_server = std::fs::read(
        s3.root
            .path()
            .join(BUCKET)
            .join(rec["object_key"].as_str().unwrap()),
    )
    .unwrap();
    assert_eq!(sha256_hex(&on_server), rec["object_sha256"]);
    let text = pipe(&["zstd", "-dc"], &on_server);
    let events: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(
            events[i + 1],
            line.as_bytes(),
            "event {i} comes back byte for byte"
        );
    }
    env.ok(&["verify"]);
}

#[test]
fn wrong_credentials_fail_clearly_and_delete_nothing() {
    let s3 = S3Server::start(BUCKET);
    let bad = env_for(&s3, "", "not-the-secret");
    bad.write("events.jsonl", small_workload().as_bytes());
    bad.ok(&["ingest", "events.jsonl"]);
    let out = bad.run(&["sweep", "--now", NOW]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe(&["sweep"], bad.path(), &out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("s3://{BUCKET}")) && stderr.contains("prod/flows"),
        "the error names the store and key: {stderr}"
    );
    assert!(bad.archived().is_empty());
    // Every flow is still live and still due.
    bad.ok(&["get", "tenant-0/flow-0"]);
    let dry: Value =
        serde_json::from_str(&bad.ok(&["sweep", "--dry-run", "--now", NOW, "--json"])).unwrap();
    assert_eq!(dry["flow_parts"], 12);
    // With the right secret the same state archives completely.
    let mut good = bad;
    good.vars[1].1 = s3.secret_key.clone();
    good.ok(&["sweep", "--now", NOW]);
    assert_eq!(good.archived().len(), 12);
    good.ok(&["verify"]);
}
