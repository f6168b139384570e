//! CloudEvents protocol bindings for broker records (Kafka binding 1.0.2, and the NATS
//! binding's header form).
//!
//! A record is in *structured* mode when its `content-type` header starts with
//! `application/cloudevents` (the value is the whole event), in *binary* mode when it
//! carries a `ce_specversion` header (attributes in `ce_*` headers, the value is
//! `data`). Binary events are rewritten as the equivalent structured JSON, so the
//! decoder, the archive and replay see one shape whatever the producer chose.
//! Records with neither marker are taken as they are (structured JSON or the plain
//! shape), as they would be from a file.

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{RejectReason, Rejection};

/// How a broker record carries its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Structured,
    Binary,
    /// No CloudEvents markers: the value is decoded as it is.
    Unmarked,
}

/// Prefix of attribute headers in binary mode: `ce_` (Kafka), `ce-` (the NATS draft,
/// whose values are percent-encoded).
const PREFIXES: [&str; 2] = ["ce_", "ce-"];

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

fn attribute_name(header: &str) -> Option<&str> {
    PREFIXES.iter().find_map(|p| {
        header
            .get(..p.len())
            .filter(|h| h.eq_ignore_ascii_case(p))
            .map(|_| &header[p.len()..])
    })
}

pub fn mode(headers: &[(String, Vec<u8>)]) -> Mode {
    if let Some(ct) = header(headers, "content-type") {
        if ct.len() >= 23 && ct[..23].eq_ignore_ascii_case(b"application/cloudevents") {
            return Mode::Structured;
        }
    }
    let binary = headers
        .iter()
        .any(|(k, _)| attribute_name(k).is_some_and(|a| a.eq_ignore_ascii_case("specversion")));
    if binary {
        Mode::Binary
    } else {
        Mode::Unmarked
    }
}

fn is_json_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// The structured JSON equivalent of a binary-mode record.
pub fn structured_from_binary(
    headers: &[(String, Vec<u8>)],
    data: &[u8],
) -> Result<Vec<u8>, Rejection> {
    let bad = |detail: String| Rejection::new(RejectReason::InvalidHeader, detail);
    let mut event = Map::new();
    let mut content_type = None;
    for (name, value) in headers {
        let (attribute, is_content_type) = match attribute_name(name) {
            Some(a) => (a, false),
            None if name.eq_ignore_ascii_case("content-type") => ("datacontenttype", true),
            None => continue,
        };
        // CloudEvents attribute names are lower-case letters and digits.
        if attribute.is_empty()
            || !attribute
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(bad(format!(
                "header {:?} does not name a CloudEvents attribute",
                name.escape_debug().to_string()
            )));
        }
        if attribute == "data" || attribute == "data_base64" {
            return Err(bad(format!(
                "header {name:?}: data travels in the record value"
            )));
        }
        let decoded;
        let value = if name.starts_with("ce-") || name.starts_with("CE-") {
            decoded = percent_decode(value)
                .ok_or_else(|| bad(format!("header {name:?} has an invalid %-escape")))?;
            decoded.as_slice()
        } else {
            value.as_slice()
        };
        let text = std::str::from_utf8(value)
            .map_err(|_| bad(format!("header {name:?} is not valid UTF-8")))?;
        if event.contains_key(attribute) {
            return Err(bad(format!("attribute {attribute:?} is given twice")));
        }
        if is_content_type {
            content_type = Some(text.to_string());
        }
        event.insert(attribute.to_string(), Value::String(text.to_string()));
    }
    let mut out = serde_json::to_vec(&event)
        .map_err(|e| Rejection::new(RejectReason::MalformedJson, e.to_string()))?;
    if data.is_empty() {
        return Ok(out);
    }
    // Splice the data in after the attributes: JSON data is kept byte for byte.
    out.pop(); // the closing brace
    if !event.is_empty() {
        out.push(b',');
    }
    let text = std::str::from_utf8(data).ok();
    let json = text.and_then(|t| serde_json::from_str::<&RawValue>(t).ok());
    match (content_type.as_deref(), json) {
        (Some(ct), None) if is_json_type(ct) => {
            return Err(Rejection::new(
                RejectReason::MalformedJson,
                format!("content-type {ct} but the record value is not JSON"),
            ))
        }
        (Some(ct), Some(raw)) if is_json_type(ct) => push_data(&mut out, raw.get()),
        (None, Some(raw)) => push_data(&mut out, raw.get()),
        _ => match text {
            Some(t) => push_data(&mut out, &Value::String(t.to_string()).to_string()),
            None => {
                use base64::Engine;
                let encoded = base64::engine::general_purpose::STANDARD.encode(data);
                out.extend_from_slice(b"\"data_base64\":");
                out.extend_from_slice(Value::String(encoded).to_string().as_bytes());
            }
        },
    }
    out.push(b'}');
    Ok(out)
}

/// `%XX` escapes to bytes; `None` for a broken escape.
fn percent_decode(value: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(value[i]);
            i += 1;
        }
    }
    Some(out)
}

fn push_data(out: &mut Vec<u8>, json: &str) {
    out.extend_from_slice(b"\"data\":");
    out.extend_from_slice(json.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn modes() {
        let structured = h(&[(
            "content-type",
            "Application/CloudEvents+json; charset=utf-8",
        )]);
        assert_eq!(mode(&structured), Mode::Structured);
        assert_eq!(mode(&h(&[("ce_specversion", "1.0")])), Mode::Binary);
        assert_eq!(
            mode(&h(&[("content-type", "application/json")])),
            Mode::Unmarked
        );
        assert_eq!(mode(&[]), Mode::Unmarked);
    }

    #[test]
    fn binary_json_data_is_kept_verbatim() {
        let headers = h(&[
            ("ce_specversion", "1.0"),
            ("ce_id", "e1"),
            ("ce_source", "wf"),
            ("ce_type", "flow.completed"),
            ("ce_subject", "f1"),
            ("ce_sequence", "7"),
            ("content-type", "application/json"),
            ("traceparent-unrelated", "x"),
        ]);
        let out =
            structured_from_binary(&headers, br#"{"labels": {"team":"a"}, "n": 1.50}"#).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            r#"{"specversion":"1.0","id":"e1","source":"wf","type":"flow.completed","subject":"f1","sequence":"7","datacontenttype":"application/json","data":{"labels": {"team":"a"}, "n": 1.50}}"#
        );
    }

    #[test]
    fn binary_text_binary_and_empty_data() {
        let base = [("ce_specversion", "1.0"), ("ce_id", "1")];
        let text = structured_from_binary(&h(&base), b"plain \"words\"").unwrap();
        let v: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(v["data"], "plain \"words\"");
        let bytes = structured_from_binary(&h(&base), &[0xff, 0x00]).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["data_base64"], "/wA=");
        let none = structured_from_binary(&h(&base), b"").unwrap();
        let v: Value = serde_json::from_slice(&none).unwrap();
        assert!(v.get("data").is_none());
    }

    #[test]
    fn nats_headers_are_percent_decoded() {
        let headers = h(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "a%20b"),
            ("ce-subject", "caf%C3%A9"),
        ]);
        assert_eq!(mode(&headers), Mode::Binary);
        let v: Value =
            serde_json::from_slice(&structured_from_binary(&headers, b"{}").unwrap()).unwrap();
        assert_eq!(v["id"], "a b");
        assert_eq!(v["subject"], "café");
        let broken = h(&[("ce-specversion", "1.0"), ("ce-id", "%G1")]);
        let err = structured_from_binary(&broken, b"{}").unwrap_err();
        assert_eq!(err.reason, RejectReason::InvalidHeader);
    }

    #[test]
    fn hostile_headers_are_refused() {
        let cases: Vec<Vec<(String, Vec<u8>)>> = vec![
            h(&[("ce_specversion", "1.0"), ("ce_id", "1"), ("ce_id", "2")]),
            h(&[("ce_specversion", "1.0"), ("ce_Sub\u{202e}ject", "x")]),
            h(&[("ce_specversion", "1.0"), ("ce_", "x")]),
            h(&[("ce_specversion", "1.0"), ("ce_data", "{}")]),
            vec![
                ("ce_specversion".into(), b"1.0".to_vec()),
                ("ce_subject".into(), vec![0xc3, 0x28]),
            ],
        ];
        for headers in cases {
            let err = structured_from_binary(&headers, b"{}").unwrap_err();
            assert_eq!(err.reason, RejectReason::InvalidHeader, "{headers:?}");
        }
        let json_lie = h(&[
            ("ce_specversion", "1.0"),
            ("content-type", "application/json"),
        ]);
        let err = structured_from_binary(&json_lie, b"{not json").unwrap_err();
        assert_eq!(err.reason, RejectReason::MalformedJson);
    }
}
