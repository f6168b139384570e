use serde_json::value::RawValue;

use super::fields::*;
use super::pointers::*;
use super::*;
use crate::config::Config;
use crate::flow::Sequence;

fn decoder() -> Decoder {
    Decoder::new(&Config::default().input)
}

const NOW: i64 = 1_780_000_000_000;

fn ce(extra: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"e1","source":"/engine","type":"io.flow.step.done","subject":"f-1","time":"2026-05-01T00:00:00Z"{extra}}}"#
    )
}

#[test]
fn decodes_a_cloudevent_with_extensions() {
    let line = ce(
        r#","tenant":"acme","sequence":"007","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","data":{"labels":{"team":"ml","prio":3}}"#,
    );
    let event = decoder().decode(line.as_bytes(), NOW).unwrap();
    assert_eq!(event.tenant, "acme");
    assert_eq!(event.flow_id, "f-1");
    assert_eq!(event.sequence, Some(Sequence::Number("7".into())));
    assert_eq!(event.status, FlowStatus::Running);
    assert_eq!(event.dedupe_key, Some(("/engine".into(), "e1".into())));
    assert_eq!(event.labels.get("prio"), Some("3"));
    assert!(event.traceparent.is_some());
    assert_eq!(event.raw, line.as_bytes());
}

#[test]
fn sequences_parse_from_digit_strings_integers_and_text() {
    let raw = |text: &str| RawValue::from_string(text.to_string()).unwrap();
    let s = parse_sequence(&raw("42")).unwrap();
    assert_eq!(s, Sequence::Number("42".into()));
    assert_eq!(
        parse_sequence(&raw(r#""000""#)).unwrap(),
        Sequence::Number("0".into())
    );
    assert_eq!(
        parse_sequence(&raw(r#""step\u00e9""#)).unwrap(),
        Sequence::Text("step\u{e9}".into()),
        "escapes are decoded"
    );
    assert_eq!(
        parse_sequence(&raw("-1")).unwrap_err().reason,
        RejectReason::InvalidSequence
    );
    assert_eq!(
        parse_sequence(&raw("true")).unwrap_err().reason,
        RejectReason::WrongType
    );
}

#[test]
fn newlines_between_tokens_are_removed_from_the_stored_bytes() {
    let pretty = "{\n  \"specversion\": \"1.0\",\r\n \"id\": \"1\", \"source\": \"s\", \"type\": \"t\", \"subject\": \"f\"\n}";
    let event = decoder().decode(pretty.as_bytes(), NOW).unwrap();
    assert!(!event.raw.contains(&b'\n'));
    let reparsed: Value = serde_json::from_slice(&event.raw).unwrap();
    assert_eq!(reparsed["subject"], "f");
}

#[test]
fn a_record_gives_its_buffer_to_the_event_or_keeps_it_when_rejected() {
    let d = decoder();
    let line = "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\",\r\n\"subject\":\"f\"}";
    let mut payload = line.as_bytes().to_vec();
    let event = d.decode_record(&mut payload, &[], NOW).unwrap();
    assert!(payload.is_empty(), "the buffer moved into the event");
    assert_eq!(event.raw, line.replace("\r\n", "").as_bytes());
    assert_eq!(event, d.decode(line.as_bytes(), NOW).unwrap());

    let bad = b"{\"id\":\"1\",\"source\":\"s\",\"type\":\"t\"}".to_vec();
    let mut payload = bad.clone();
    let rejection = d.decode_record(&mut payload, &[], NOW).unwrap_err();
    assert_eq!(rejection.reason, RejectReason::MissingField);
    assert_eq!(payload, bad, "a dead letter carries the bytes as they came");
}

#[test]
fn rejections_name_their_reason() {
    let d = decoder();
    let cases: Vec<(Vec<u8>, RejectReason)> = vec![
        (b"".to_vec(), RejectReason::Empty),
        (
            b"{\"specversion\":\"1.0\"".to_vec(),
            RejectReason::MalformedJson,
        ),
        (b"[1,2]".to_vec(), RejectReason::NotAnObject),
        (vec![b'{', 0xff, b'}'], RejectReason::InvalidUtf8),
        (
            ce("").replace("\"subject\":\"f-1\",", "").into_bytes(),
            RejectReason::MissingField,
        ),
        (
            ce("").replace("\"f-1\"", "\"../x\"").into_bytes(),
            RejectReason::InvalidIdentifier,
        ),
        (
            ce("").replace("\"1.0\"", "\"0.3\"").into_bytes(),
            RejectReason::UnsupportedSpecversion,
        ),
        (
            ce("").replace("\"e1\"", "7").into_bytes(),
            RejectReason::WrongType,
        ),
        (
            ce(",\"sequence\":-3").into_bytes(),
            RejectReason::InvalidSequence,
        ),
        (
            ce("")
                .replace("2026-05-01T00:00:00Z", "yesterday")
                .into_bytes(),
            RejectReason::InvalidTime,
        ),
        (
            ce("").replace("2026-05-01", "2099-05-01").into_bytes(),
            RejectReason::TimeInFuture,
        ),
        (
            ce(",\"data\":{\"labels\":[1]}").into_bytes(),
            RejectReason::InvalidLabels,
        ),
        (
            ce(",\"data\":{\"labels\":{\"a\":\"1\",\"b\":{\"c\":2},\"d\":[]}}").into_bytes(),
            RejectReason::InvalidLabels,
        ),
        (
            ce(",\"tenant\":\"a/b\"").into_bytes(),
            RejectReason::InvalidIdentifier,
        ),
    ];
    for (bytes, reason) in cases {
        let got = d
            .decode(&bytes, NOW)
            .expect_err(&String::from_utf8_lossy(&bytes));
        assert_eq!(
            got.reason,
            reason,
            "{}: {}",
            String::from_utf8_lossy(&bytes),
            got.detail
        );
    }
    let big = ce(&format!(
        ",\"data\":{{\"pad\":\"{}\"}}",
        "x".repeat(2 << 20)
    ));
    assert_eq!(
        d.decode(big.as_bytes(), NOW).unwrap_err().reason,
        RejectReason::Oversize
    );
}

#[test]
fn plain_shape_uses_its_own_fields() {
    let mut input = Config::default().input;
    input.format = InputFormat::Plain;
    let d = Decoder::new(&input);
    let line = r#"{"flow_id":"f9","tenant":"t1","seq":3,"type":"flow.step","status":"failed","time":"2026-05-01T00:00:00Z","labels":{"a":"b"},"data":{}}"#;
    let e = d.decode(line.as_bytes(), NOW).unwrap();
    assert_eq!((e.tenant.as_str(), e.flow_id.as_str()), ("t1", "f9"));
    assert_eq!(e.status, FlowStatus::Failed);
    assert_eq!(e.sequence, Some(Sequence::Number("3".into())));
    assert_eq!(e.labels.get("a"), Some("b"));
}

/// A pointer's value found the way the decoder did before [`Paths`]: the top level
/// parsed with every member left unparsed, each further step parsed again.
fn lookup_unparsed<'a>(text: &'a str, tokens: &[String]) -> Option<&'a RawValue> {
    let top = Members::parse_into(text, &Paths::default()).ok()?;
    let (first, rest) = tokens.split_first()?;
    follow_raw(top.get(first)?, rest)
}

fn tokens(pointer: &str) -> Vec<String> {
    Pointer::new(pointer).tokens
}

#[test]
fn only_members_that_pointers_pass_through_are_gone_into() {
    let pointers: Vec<Vec<String>> = [
        "/data/labels",
        "/subject",
        "/metadata/uid",
        "/metadata/namespace",
        "/status",
        "/status/phase",
        "",
    ]
    .iter()
    .map(|p| tokens(p))
    .collect();
    let paths = Paths::of(pointers.iter().map(Vec::as_slice));
    let names: Vec<&str> = paths.into.iter().map(|(k, _)| k.as_str()).collect();
    // `status` is also read whole, so it stays unparsed; leaves are never gone into.
    assert_eq!(names, ["data", "metadata"]);
    assert!(paths.child("data").unwrap().into.is_empty());
}

#[test]
fn labels_come_out_sorted_with_later_duplicates_winning() {
    let line = ce(r#","data":{"labels":{"b":"1","a":2,"b":"3","ok":true,"é\u00e9":"x"}}"#);
    let labels = decoder().decode(line.as_bytes(), NOW).unwrap().labels;
    let pairs: Vec<(&str, &str)> = labels.iter().collect();
    assert_eq!(pairs, [("a", "2"), ("b", "3"), ("ok", "true"), ("éé", "x")]);
    assert_eq!(labels.get("b"), Some("3"));
    assert_eq!(labels.get("c"), None);
}

#[test]
fn a_member_gone_into_that_is_not_an_object_reads_as_before() {
    let d = decoder();
    for data in [
        r#""text""#,
        "[1,2]",
        "null",
        "7",
        "1e400",
        "true",
        r#"{"labels":null}"#,
    ] {
        let line = ce(&format!(r#","data":{data}"#));
        let event = d
            .decode(line.as_bytes(), NOW)
            .unwrap_or_else(|r| panic!("{data}: {r:?}"));
        assert!(event.labels.is_empty(), "{data}");
    }
    // The later of two `data` members wins, whichever of them is an object.
    let line = ce(r#","data":{"labels":{"a":"1"}},"data":{"labels":{"a":"2"}}"#);
    assert_eq!(
        d.decode(line.as_bytes(), NOW).unwrap().labels.get("a"),
        Some("2")
    );
    let line = ce(r#","data":{"labels":{"a":"1"}},"data":"gone""#);
    assert!(d.decode(line.as_bytes(), NOW).unwrap().labels.is_empty());
    // Still malformed, with the same message, wherever the damage is.
    let line = ce(r#","data":{"labels":{"a":"1"},"x":[1,}"#);
    assert_eq!(
        d.decode(line.as_bytes(), NOW).unwrap_err().reason,
        RejectReason::MalformedJson
    );
}

/// JSON objects whose keys collide with the pointers' tokens and repeat.
fn json_object() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let key = proptest::sample::select(vec!["data", "labels", "a", "0", "b/c", "x", "b\\/c"]);
    let scalar = proptest::sample::select(vec![
        "1",
        "\"s\"",
        "null",
        "true",
        "1e400",
        "-0.5",
        "\"\\u00e9\"",
        "18446744073709551616",
    ])
    .prop_map(str::to_string);
    let inner_key = key.clone();
    let value = scalar.prop_recursive(4, 40, 5, move |inner| {
        let key = inner_key.clone();
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| format!("[{}]", items.join(","))),
            proptest::collection::vec((key, inner), 0..5)
                .prop_map(|members| render_object(&members, ":", ",")),
        ]
    });
    proptest::collection::vec((key, value), 0..6)
        .prop_map(|members| render_object(&members, ": ", ", "))
}

/// `{"k":v,...}` from already rendered values, keys repeated as given.
fn render_object(members: &[(&str, String)], colon: &str, comma: &str) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("\"{k}\"{colon}{v}"))
        .collect();
    format!("{{{}}}", members.join(comma))
}

/// An event of many labels in descending order is decoded in one sort, not one
/// shift of the whole list per label.
#[test]
fn many_labels_in_descending_order_decode_in_order() {
    let members: Vec<String> = (0..50_000)
        .rev()
        .map(|i| format!(r#""k{i:05}":"v""#))
        .collect();
    let line = ce(&format!(
        r#","data":{{"labels":{{{}}}}}"#,
        members.join(",")
    ));
    let labels = decoder().decode(line.as_bytes(), NOW).unwrap().labels;
    let keys: Vec<&str> = labels.iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 50_000);
    assert_eq!(keys[0], "k00000");
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
    /// One pass that goes into the members pointers pass through finds what
    /// parsing every step again found, on objects with duplicate keys, arrays,
    /// escapes and numbers beyond `f64` where a pointer expects an object.
    #[test]
    fn going_into_members_finds_what_parsing_each_step_found(text in json_object()) {
        let pointers: Vec<Vec<String>> = [
            "/data/labels", "/data/labels/a", "/data/0", "/data/0/a", "/a", "/a/b~1c",
            "/labels/0/a", "/data/a/labels", "/x", "/x/data",
        ]
        .iter()
        .map(|p| tokens(p))
        .collect();
        let paths = Paths::of(pointers.iter().map(Vec::as_slice));
        let top = Members::parse_into(&text, &Paths::default());
        let members = Members::parse(&text, &paths);
        proptest::prop_assert_eq!(top.is_ok(), members.is_ok(), "{}", text);
        if let Ok(members) = members {
            for pointer in &pointers {
                let before = lookup_unparsed(&text, pointer).map(RawValue::get);
                let now = members.follow(pointer).map(RawValue::get);
                proptest::prop_assert_eq!(before, now, "{} at {:?}", text, pointer);
            }
        }
    }

    /// Hostile input never panics, and anything accepted has safe identifiers.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
        if let Ok(e) = decoder().decode(&bytes, NOW) {
            proptest::prop_assert!(validate_identifier("flow id", &e.flow_id).is_ok());
        }
    }

    #[test]
    fn mutated_cloudevents_never_panic_and_keep_ids_safe(
        subject in "\\PC{0,40}",
        tenant in proptest::option::of("\\PC{0,20}"),
        sequence in proptest::option::of("[0-9a-z]{0,30}"),
        ty in "[a-z._]{0,30}",
    ) {
        let mut v = serde_json::json!({
            "specversion": "1.0", "id": "1", "source": "s", "type": ty, "subject": subject,
        });
        if let Some(t) = tenant { v["tenant"] = serde_json::json!(t); }
        if let Some(q) = sequence { v["sequence"] = serde_json::json!(q); }
        let line = serde_json::to_vec(&v).unwrap();
        if let Ok(e) = decoder().decode(&line, NOW) {
            proptest::prop_assert!(validate_identifier("flow id", &e.flow_id).is_ok());
            proptest::prop_assert!(validate_identifier("tenant", &e.tenant).is_ok());
            proptest::prop_assert!(!e.raw.contains(&b'\n'));
        }
    }
}
