//! Bad input never stops the pipeline and is never silently dropped: every malformed
//! or hostile record becomes a dead-letter record with its original bytes and a
//! machine-readable reason; good records around it are stored; counts add up.

use crate::support::*;
use base64::Engine;
use serde_json::Value;

const GOOD_TIME: &str = "2026-01-01T00:00:00Z";

fn good(flow: &str, id: &str, seq: u64, kind: &str) -> Vec<u8> {
    ce("acme", flow, id, seq, kind, GOOD_TIME).into_bytes()
}

/// (bytes, expected reason)
fn corpus() -> Vec<(Vec<u8>, &'static str)> {
    let base = String::from_utf8(good("f-bad", "x", 1, "step")).unwrap();
    let with = |from: &str, to: &str| base.replace(from, to).into_bytes();
    vec![
        (br#"{"specversion":"1.0","id":"1","source":"s","type":"t","subject":"f""#.to_vec(), "malformed_json"),
        (b"not json at all".to_vec(), "malformed_json"),
        (b"{\"a\":1}}".to_vec(), "malformed_json"),
        (b"[1,2,3]".to_vec(), "not_an_object"),
        (b"\"just a string\"".to_vec(), "not_an_object"),
        (vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'], "invalid_utf8"),
        (with("\"subject\":\"f-bad\",", ""), "missing_field"),
        (with("\"id\":\"x\",", ""), "missing_field"),
        (with("\"specversion\":\"1.0\",", ""), "missing_field"),
        (with("\"1.0\"", "\"0.3\""), "unsupported_specversion"),
        (with("\"subject\":\"f-bad\"", "\"subject\":\"../../etc/passwd\""), "invalid_identifier"),
        (with("\"subject\":\"f-bad\"", "\"subject\":\"a/b\""), "invalid_identifier"),
        (with("\"subject\":\"f-bad\"", "\"subject\":\".hidden\""), "invalid_identifier"),
        (with("\"subject\":\"f-bad\"", "\"subject\":\"evil\\u0000null\""), "invalid_identifier"),
        (with("\"subject\":\"f-bad\"", "\"subject\":\"bell\\u0007\""), "invalid_identifier"),
        (with("\"subject\":\"f-bad\"", "\"subject\":\"rtl\u{202E}gnp.exe\""), "invalid_identifier"),
        (with("\"subject\":\"f-bad\"", "\"subject\":\"zero\u{200B}width\""), "invalid_identifier"),
        (with("\"tenant\":\"acme\"", "\"tenant\":\"..\""), "invalid_identifier"),
        (with("\"subject\":\"f-bad\"", &format!("\"subject\":\"{}\"", "x".repeat(300))), "invalid_identifier"),
        (with("\"subject\":\"f-bad\"", "\"subject\":42"), "wrong_type"),
        (with("\"id\":\"x\"", "\"id\":{\"nested\":true}"), "wrong_type"),
        (with("\"sequence\":\"0001\"", "\"sequence\":-5"), "invalid_sequence"),
        (with("\"sequence\":\"0001\"", "\"sequence\":1.5"), "invalid_sequence"),
        (with(GOOD_TIME, "last tuesday"), "invalid_time"),
        (with(GOOD_TIME, "2999-01-01T00:00:00Z"), "time_in_future"),
        (with("\"labels\":{\"team\":\"t1\"}", "\"labels\":\"not-an-object\""), "invalid_labels"),
        (format!("{{\"specversion\":\"1.0\",\"id\":\"big\",\"source\":\"s\",\"type\":\"t\",\"subject\":\"f\",\"data\":\"{}\"}}", "A".repeat(5000)).into_bytes(), "oversize"),
    ]
}

#[test]
fn malformed_and_hostile_lines_are_dead_lettered_and_the_rest_is_stored() {
    let env = Env::new("[input]\nmax_event_bytes = 4096\n");
    let corpus = corpus();
    assert!(corpus.len() >= 20);
    let mut input = Vec::new();
    let mut good_lines = 0;
    for (i, (bytes, _)) in corpus.iter().enumerate() {
        // Good events between the bad ones, including a duplicate.
        input.extend_from_slice(&good("f-ok", &format!("ok-{i}"), i as u64, "step"));
        input.push(b'\n');
        good_lines += 1;
        input.extend_from_slice(bytes);
        input.push(b'\n');
    }
    input.extend_from_slice(&good("f-ok", "ok-0", 0, "step"));
    input.extend_from_slice(b"\n\n   \n");
    input.extend_from_slice(&good("f-ok", "ok-last", 99, "completed"));
    input.push(b'\n');
    good_lines += 1;
    env.write("events.jsonl", &input);

    let out: Value = serde_json::from_str(&env.ok(&["ingest", "events.jsonl", "--json"])).unwrap();
    assert_eq!(
        out["dead_lettered"].as_u64().unwrap() as usize,
        corpus.len(),
        "{out}"
    );
    assert_eq!(out["stored"].as_u64().unwrap(), good_lines);
    assert_eq!(out["duplicates"], 1);
    assert_eq!(
        out["records"].as_u64().unwrap() as usize,
        corpus.len() + good_lines as usize + 1
    );

    let letters = env.dead_letters();
    assert_eq!(letters.len(), corpus.len());
    for ((bytes, reason), letter) in corpus.iter().zip(&letters) {
        assert_eq!(
            letter["reason"],
            *reason,
            "{} -> {letter}",
            String::from_utf8_lossy(bytes)
        );
        assert!(!letter["detail"].as_str().unwrap().is_empty());
        assert!(letter["position"].as_str().unwrap().starts_with("offset "));
        assert!(letter["id"].as_str().unwrap().contains("@offset "));
        let original = base64::engine::general_purpose::STANDARD
            .decode(letter["payload_base64"].as_str().unwrap())
            .unwrap();
        if *reason == "oversize" {
            assert_eq!(letter["truncated"], true);
            assert_eq!(
                letter["payload_bytes"].as_u64().unwrap() as usize,
                bytes.len()
            );
            assert!(bytes.starts_with(&original));
        } else {
            assert_eq!(&original, bytes, "original bytes are kept");
        }
    }
    let flow: Value = serde_json::from_str(&env.ok(&["get", "acme/f-ok"])).unwrap();
    assert_eq!(flow["event_count"].as_u64().unwrap(), good_lines);
    // Nothing hostile reached a key or a path.
    assert!(!env.path().join("etc").exists());
    let out = env.run(&["get", "acme/../../etc"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a hostile id on the command line is a usage error"
    );
}

#[test]
fn a_huge_line_does_not_exhaust_memory_and_is_dead_lettered() {
    let env = Env::new("[input]\nmax_event_bytes = 65536\n");
    let mut input = good("f", "1", 1, "step");
    input.push(b'\n');
    input.extend(std::iter::repeat_n(b'x', 64 << 20));
    input.push(b'\n');
    input.extend_from_slice(&good("f", "2", 2, "completed"));
    input.push(b'\n');
    env.write("events.jsonl", &input);
    let out: Value = serde_json::from_str(&env.ok(&["ingest", "events.jsonl", "--json"])).unwrap();
    assert_eq!(out["stored"], 2);
    assert_eq!(out["dead_lettered"], 1);
    let letter = &env.dead_letters()[0];
    assert_eq!(letter["reason"], "oversize");
    assert_eq!(letter["payload_bytes"].as_u64(), Some(64 << 20));
}
