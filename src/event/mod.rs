//! Decoding and validation of workflow events (`docs/design.md`, "Input events").
//!
//! Turns the raw bytes of one input record into a [`FlowEvent`], or into a
//! [`Rejection`] carrying a machine-readable [`RejectReason`] for the dead-letter
//! destination. Nothing here touches storage: the decoder is pure, so every input
//! rule is unit-tested in isolation.
//!
//! Guarantees:
//! - identifiers (`tenant`, `flow_id`) that reach a state key or an object key have
//!   passed [`validate_identifier`];
//! - the bytes kept for the archive are the received JSON with only CR/LF removed
//!   (JSON forbids raw newlines inside strings, so no value changes), which keeps
//!   one event per line in an archive frame.

pub mod binding;

use std::borrow::Cow;

use compact_str::CompactString;
use serde::de::DeserializeSeed;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::config::{InputConfig, InputFormat};
use crate::flow::{validate_identifier, FlowEvent, FlowStatus, Labels, Sequence};

/// Why an input record was refused; serialized in dead-letter records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    Empty,
    Oversize,
    InvalidUtf8,
    MalformedJson,
    NotAnObject,
    MissingField,
    WrongType,
    UnsupportedSpecversion,
    InvalidIdentifier,
    InvalidSequence,
    InvalidTime,
    TimeInFuture,
    InvalidLabels,
    /// A broker header that cannot be a CloudEvents attribute (binary mode).
    InvalidHeader,
    /// The broker delivered the record its maximum number of times.
    TooManyDeliveries,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Empty => "empty",
            RejectReason::Oversize => "oversize",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::UnsupportedSpecversion => "unsupported_specversion",
            RejectReason::InvalidIdentifier => "invalid_identifier",
            RejectReason::InvalidSequence => "invalid_sequence",
            RejectReason::InvalidTime => "invalid_time",
            RejectReason::TimeInFuture => "time_in_future",
            RejectReason::InvalidLabels => "invalid_labels",
            RejectReason::InvalidHeader => "invalid_header",
            RejectReason::TooManyDeliveries => "too_many_deliveries",
        }
    }
}

/// A refused record: the reason plus a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// Decodes input records according to the configured format and field mapping.
#[derive(Debug, Clone)]
pub struct Decoder {
    format: InputFormat,
    max_event_bytes: usize,
    max_future_skew_ms: i64,
    mapping: crate::config::FieldMapping,
    p: Pointers,
    paths: Paths,
}

/// The mapping's JSON pointers, split into reference tokens once.
#[derive(Debug, Clone)]
struct Pointers {
    flow_id: Pointer,
    tenant: Pointer,
    sequence: Pointer,
    event_type: Pointer,
    status: Option<Pointer>,
    time: Pointer,
    time_fallbacks: Vec<Pointer>,
    labels: Pointer,
    traceparent: Pointer,
    tracestate: Pointer,
    dedupe: Option<(Pointer, Pointer)>,
}

impl Pointers {
    /// Every pointer, for [`Paths`].
    fn all(&self) -> impl Iterator<Item = &Pointer> {
        let dedupe = self.dedupe.iter().flat_map(|(a, b)| [a, b]);
        [
            &self.flow_id,
            &self.tenant,
            &self.sequence,
            &self.event_type,
            &self.time,
            &self.labels,
            &self.traceparent,
            &self.tracestate,
        ]
        .into_iter()
        .chain(self.status.as_ref())
        .chain(&self.time_fallbacks)
        .chain(dedupe)
    }
}

#[derive(Debug, Clone)]
struct Pointer {
    text: String,
    tokens: Vec<String>,
}

impl Pointer {
    fn new(text: &str) -> Pointer {
        let tokens = if text.is_empty() {
            Vec::new()
        } else {
            text.split('/')
                .skip(1)
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect()
        };
        Pointer {
            text: text.to_string(),
            tokens,
        }
    }
}

/// An object key that borrows from the input unless it contains escapes.
struct Key<'a>(std::borrow::Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Follows the rest of a pointer through a value left unparsed.
fn follow_raw<'a>(mut current: &'a RawValue, tokens: &[String]) -> Option<&'a RawValue> {
    for token in tokens {
        let text = current.get();
        current = if text.starts_with('{') {
            Members::parse_into(text, &Paths::default())
                .ok()?
                .get(token)?
        } else if text.starts_with('[') {
            let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
            *items.get(token.parse::<usize>().ok()?)?
        } else {
            return None;
        };
    }
    Some(current)
}

/// The object members the mapping's pointers go into, as a tree. Decoding an event
/// parses exactly these as nested objects and leaves every other value unparsed, in
/// one pass: `data` is most of a typical event, and looking up `/data/labels` in a
/// `data` captured whole read it a second time.
#[derive(Debug, Clone, Default)]
struct Paths {
    into: Vec<(String, Paths)>,
}

impl Paths {
    /// A member is gone into when a pointer continues below it and none ends at it
    /// (one that ends there needs the member's text, so it stays unparsed).
    fn of<'p>(pointers: impl IntoIterator<Item = &'p [String]>) -> Paths {
        #[derive(Default)]
        struct Node {
            ends: bool,
            children: Vec<(String, Node)>,
        }
        fn convert(node: Node) -> Paths {
            Paths {
                into: node
                    .children
                    .into_iter()
                    .filter(|(_, n)| !n.ends && !n.children.is_empty())
                    .map(|(k, n)| (k, convert(n)))
                    .collect(),
            }
        }
        let mut root = Node::default();
        for tokens in pointers {
            let mut node = &mut root;
            for token in tokens {
                let at = match node.children.iter().position(|(k, _)| k == token) {
                    Some(i) => i,
                    None => {
                        node.children.push((token.clone(), Node::default()));
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[at].1;
            }
            node.ends = true;
        }
        convert(root)
    }

    fn child(&self, key: &str) -> Option<&Paths> {
        self.into.iter().find(|(k, _)| k == key).map(|(_, p)| p)
    }
}

/// A member of a [`Members`] object.
enum Member<'a> {
    /// Left unparsed: no pointer goes into it.
    Raw(&'a RawValue),
    /// An object a pointer goes into.
    Object(Members<'a>),
    /// An array where a pointer expected an object: its items, for index tokens.
    Array(Vec<&'a RawValue>),
    /// A scalar where a pointer expected an object: nothing below it.
    Scalar,
}

/// One JSON object level, parsed as far as [`Paths`] says. Later duplicate keys win,
/// as with `serde_json::Value`.
struct Members<'a>(Vec<(Key<'a>, Member<'a>)>);

impl<'a> Members<'a> {
    /// Parses `text`, going into the members `paths` names. Going into a member
    /// parses its scalars, which refuses numbers beyond `f64` that skipping accepts:
    /// on any error the text is parsed again going into nothing, so what is accepted
    /// and the error reported do not depend on the mapping.
    fn parse(text: &'a str, paths: &Paths) -> Result<Members<'a>, serde_json::Error> {
        Self::parse_into(text, paths).or_else(|_| Self::parse_into(text, &Paths::default()))
    }

    fn parse_into(text: &'a str, paths: &Paths) -> Result<Members<'a>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let members = ObjectSeed(paths).deserialize(&mut de)?;
        de.end()?;
        Ok(members)
    }

    fn member(&self, key: &str) -> Option<&Member<'a>> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.0 == key)
            .map(|(_, v)| v)
    }

    /// A top-level member that a pointer ends at.
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        match self.member(key)? {
            Member::Raw(raw) => Some(*raw),
            _ => None,
        }
    }

    /// Follows a pointer; `None` when any step is missing or not a container.
    fn lookup(&self, pointer: &Pointer) -> Option<&'a RawValue> {
        self.follow(&pointer.tokens)
    }

    fn follow(&self, tokens: &[String]) -> Option<&'a RawValue> {
        let (first, rest) = tokens.split_first()?;
        match self.member(first)? {
            Member::Raw(raw) => follow_raw(raw, rest),
            Member::Object(inner) => inner.follow(rest),
            Member::Array(items) => {
                let (index, rest) = rest.split_first()?;
                follow_raw(items.get(index.parse::<usize>().ok()?)?, rest)
            }
            Member::Scalar => None,
        }
    }
}

/// Parses an object, going into the members `Paths` names.
struct ObjectSeed<'p>(&'p Paths);

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Members<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Members<'de>, D::Error> {
        struct V<'p>(&'p Paths);
        impl<'de> serde::de::Visitor<'de> for V<'_> {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Members<'de>, A::Error> {
                members(self.0, map)
            }
        }
        d.deserialize_map(V(self.0))
    }
}

fn members<'de, A: serde::de::MapAccess<'de>>(
    paths: &Paths,
    mut map: A,
) -> Result<Members<'de>, A::Error> {
    let mut entries = Vec::with_capacity(16);
    while let Some(key) = map.next_key::<Key<'de>>()? {
        let member = match paths.child(&key.0) {
            Some(paths) => map.next_value_seed(MemberSeed(paths))?,
            None => Member::Raw(map.next_value::<&'de RawValue>()?),
        };
        entries.push((key, member));
    }
    Ok(Members(entries))
}

/// Parses a member a pointer goes into, whatever it turns out to be.
struct MemberSeed<'p>(&'p Paths);

impl<'de> DeserializeSeed<'de> for MemberSeed<'_> {
    type Value = Member<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Member<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for MemberSeed<'_> {
    type Value = Member<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Member<'de>, A::Error> {
        members(self.0, map).map(Member::Object)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Member<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            items.push(item);
        }
        Ok(Member::Array(items))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Member<'de>, E> {
        Ok(Member::Scalar)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Member<'de>, E> {
        Ok(Member::Scalar)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Member<'de>, E> {
        Ok(Member::Scalar)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Member<'de>, E> {
        Ok(Member::Scalar)
    }
    fn visit_str<E>(self, _: &str) -> Result<Member<'de>, E> {
        Ok(Member::Scalar)
    }
    fn visit_unit<E>(self) -> Result<Member<'de>, E> {
        Ok(Member::Scalar)
    }
}
impl Decoder {
    pub fn new(input: &InputConfig) -> Self {
        let mapping = input.effective_mapping();
        let p = Pointers {
            flow_id: Pointer::new(&mapping.flow_id),
            tenant: Pointer::new(&mapping.tenant),
            sequence: Pointer::new(&mapping.sequence),
            event_type: Pointer::new(&mapping.event_type),
            status: mapping.status.as_deref().map(Pointer::new),
            time: Pointer::new(&mapping.time),
            time_fallbacks: mapping
                .time_fallbacks
                .iter()
                .map(|t| Pointer::new(t))
                .collect(),
            labels: Pointer::new(&mapping.labels),
            traceparent: Pointer::new(&mapping.traceparent),
            tracestate: Pointer::new(&mapping.tracestate),
            dedupe: mapping
                .dedupe
                .as_ref()
                .map(|(a, b)| (Pointer::new(a), Pointer::new(b))),
        };
        let required: Vec<Vec<String>> = ["specversion", "id", "source", "type"]
            .iter()
            .map(|k| vec![k.to_string()])
            .collect();
        let paths = Paths::of(
            p.all()
                .map(|ptr| ptr.tokens.as_slice())
                .chain(required.iter().map(Vec::as_slice)),
        );
        Decoder {
            format: input.format,
            max_event_bytes: input.max_event_bytes,
            max_future_skew_ms: input.max_future_skew.as_millis() as i64,
            mapping,
            p,
            paths,
        }
    }

    pub fn max_event_bytes(&self) -> usize {
        self.max_event_bytes
    }

    /// Decodes one broker record, honouring the CloudEvents binding its headers
    /// announce (see [`binding`]). The event's bytes take over the payload's buffer
    /// (no copy per event); on a rejection `payload` is left as it came, for the dead
    /// letter.
    pub fn decode_record(
        &self,
        payload: &mut Vec<u8>,
        headers: &[(String, Vec<u8>)],
        now_ms: i64,
    ) -> Result<FlowEvent, Rejection> {
        let (mut event, raw) = match binding::mode(headers) {
            binding::Mode::Binary => {
                self.check_size(payload.len())?;
                let structured = binding::structured_from_binary(headers, payload)?;
                (self.decode_fields(&structured, now_ms)?, structured)
            }
            binding::Mode::Structured | binding::Mode::Unmarked => (
                self.decode_fields(payload, now_ms)?,
                std::mem::take(payload),
            ),
        };
        event.raw = one_line(raw);
        Ok(event)
    }

    fn check_size(&self, len: usize) -> Result<(), Rejection> {
        if len > self.max_event_bytes {
            return Err(Rejection::new(
                RejectReason::Oversize,
                format!(
                    "{len} bytes exceeds input.max_event_bytes = {}",
                    self.max_event_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Decodes one record. `now_ms` is the ingest time: the event time when the event
    /// has none, and the reference for the future-skew check.
    pub fn decode(&self, bytes: &[u8], now_ms: i64) -> Result<FlowEvent, Rejection> {
        let mut event = self.decode_fields(bytes, now_ms)?;
        event.raw = one_line(bytes.to_vec());
        Ok(event)
    }

    /// Everything [`Decoder::decode`] checks and extracts, but `raw`, left empty.
    fn decode_fields(&self, bytes: &[u8], now_ms: i64) -> Result<FlowEvent, Rejection> {
        self.check_size(bytes.len())?;
        let text = std::str::from_utf8(bytes).map_err(|e| {
            Rejection::new(RejectReason::InvalidUtf8, format!("invalid UTF-8: {e}"))
        })?;
        if text.trim().is_empty() {
            return Err(Rejection::new(RejectReason::Empty, "empty record"));
        }
        let value = match Members::parse(text, &self.paths) {
            Ok(v) => v,
            Err(e) => {
                // Tell "valid JSON, but not an object" from "not JSON".
                return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                    Ok(_) => {
                        Rejection::new(RejectReason::NotAnObject, "the event is not a JSON object")
                    }
                    Err(_) => Rejection::new(RejectReason::MalformedJson, e.to_string()),
                });
            }
        };

        if self.format == InputFormat::Cloudevents {
            let specversion = value.get("specversion");
            match specversion
                .filter(|r| r.get() != "\"1.0\"")
                .map(|r| serde_json::from_str::<Value>(r.get()))
            {
                None if specversion.is_some() => {}
                Some(Ok(Value::String(v))) if v == "1.0" => {}
                Some(Ok(Value::String(v))) => {
                    return Err(Rejection::new(
                        RejectReason::UnsupportedSpecversion,
                        format!("specversion {v:?} is not \"1.0\""),
                    ))
                }
                Some(_) => {
                    return Err(Rejection::new(
                        RejectReason::WrongType,
                        "specversion is not a string",
                    ))
                }
                None => {
                    return Err(Rejection::new(
                        RejectReason::MissingField,
                        "specversion is missing",
                    ))
                }
            }
            for required in ["id", "source", "type"] {
                match value.get(required).map(|r| as_str(r, required)) {
                    Some(Ok(Some(s))) if !s.is_empty() => {}
                    Some(Ok(_)) | None => {
                        return Err(Rejection::new(
                            RejectReason::MissingField,
                            format!("{required} is missing or empty"),
                        ))
                    }
                    Some(Err(e)) => return Err(e),
                }
            }
        }

        let m = &self.mapping;
        let p = &self.p;
        let flow_id = required_string(&value, &p.flow_id, "flow id")?;
        validate_identifier("flow id", &flow_id)
            .map_err(|e| Rejection::new(RejectReason::InvalidIdentifier, e))?;
        let tenant = optional_string(&value, &p.tenant, "tenant")?
            .unwrap_or_else(|| m.default_tenant.as_str().into());
        validate_identifier("tenant", &tenant)
            .map_err(|e| Rejection::new(RejectReason::InvalidIdentifier, e))?;

        let dedupe_key = match &p.dedupe {
            Some((a, b)) => {
                let first = optional_scalar(&value, a, "dedupe key")?;
                let second = optional_scalar(&value, b, "dedupe key")?;
                first.zip(second)
            }
            None => None,
        };

        let sequence = match value.lookup(&p.sequence) {
            None => None,
            Some(raw) if raw.get() == "null" => None,
            Some(raw) => Some(parse_sequence(raw)?),
        };

        let event_type = optional_string(&value, &p.event_type, "type")?.unwrap_or_default();
        let status_text = match &p.status {
            Some(ptr) => optional_str(&value, ptr, "status")?,
            None => None,
        };
        let status = FlowStatus::from_type(status_text.as_deref().unwrap_or(&event_type));

        let mut time = optional_str(&value, &p.time, "time")?;
        for fallback in &p.time_fallbacks {
            if time.is_some() {
                break;
            }
            time = optional_str(&value, fallback, "time")?;
        }
        let time_ms = match time {
            None => now_ms,
            Some(t) => {
                let parsed = chrono::DateTime::parse_from_rfc3339(&t).map_err(|e| {
                    Rejection::new(RejectReason::InvalidTime, format!("time {t:?}: {e}"))
                })?;
                let ms = parsed.timestamp_millis();
                if ms > now_ms + self.max_future_skew_ms {
                    return Err(Rejection::new(
                        RejectReason::TimeInFuture,
                        format!("time {t} is more than input.max_future_skew ahead of ingest time"),
                    ));
                }
                ms
            }
        };

        let labels = match value.lookup(&p.labels) {
            None => Labels::default(),
            Some(raw) if raw.get() == "null" => Labels::default(),
            Some(raw) => parse_labels(raw, &m.labels)?,
        };

        // A malformed trace context is dropped, not refused: it is optional metadata,
        // and the event's bytes are archived as they came either way.
        let traceparent = optional_str(&value, &p.traceparent, "traceparent")?
            .filter(|t| crate::traces::valid_traceparent(t))
            .map(Cow::into_owned);
        let tracestate = optional_str(&value, &p.tracestate, "tracestate")?
            .filter(|_| traceparent.is_some())
            .map(Cow::into_owned);

        Ok(FlowEvent {
            tenant,
            flow_id,
            dedupe_key,
            sequence,
            status,
            event_type,
            time_ms,
            labels,
            traceparent,
            tracestate,
            raw: Vec::new(),
        })
    }
}

/// The event's bytes as one JSON Lines line: a pretty-printed event loses its line
/// breaks (JSON allows them only as whitespace, so the JSON is unchanged).
fn one_line(mut raw: Vec<u8>) -> Vec<u8> {
    // Runs on every event: memchr2 looks at 32 bytes at a time, a plain scan at one.
    if memchr::memchr2(b'\n', b'\r', &raw).is_some() {
        raw.retain(|&b| b != b'\n' && b != b'\r');
    }
    raw
}

fn parse_value(raw: &RawValue) -> Result<Value, Rejection> {
    serde_json::from_str(raw.get())
        .map_err(|e| Rejection::new(RejectReason::MalformedJson, e.to_string()))
}

/// A JSON string (or null) as text; anything else is a wrong type.
fn as_string(raw: &RawValue, what: &str) -> Result<Option<CompactString>, Rejection> {
    as_str(raw, what).map(|s| s.map(CompactString::from))
}

/// As [`as_string`], borrowing the text when it has no escapes (the usual case: the
/// parser has already checked the string, so its bytes between the quotes are it).
fn as_str<'a>(raw: &'a RawValue, what: &str) -> Result<Option<Cow<'a, str>>, Rejection> {
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    if !text.starts_with('"') {
        return Err(Rejection::new(
            RejectReason::WrongType,
            format!("{what} is not a string"),
        ));
    }
    if let Some(inner) = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|t| !t.contains('\\'))
    {
        return Ok(Some(Cow::Borrowed(inner)));
    }
    serde_json::from_str::<String>(text)
        .map(|s| Some(Cow::Owned(s)))
        .map_err(|e| Rejection::new(RejectReason::MalformedJson, e.to_string()))
}

fn required_string(
    value: &Members,
    pointer: &Pointer,
    what: &str,
) -> Result<CompactString, Rejection> {
    optional_string(value, pointer, what)?.ok_or_else(|| {
        Rejection::new(
            RejectReason::MissingField,
            format!("{what} ({}) is missing", pointer.text),
        )
    })
}

fn optional_string(
    value: &Members,
    pointer: &Pointer,
    what: &str,
) -> Result<Option<CompactString>, Rejection> {
    optional_str(value, pointer, what).map(|s| s.map(CompactString::from))
}

fn optional_str<'a>(
    value: &Members<'a>,
    pointer: &Pointer,
    what: &str,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    match value.lookup(pointer) {
        None => Ok(None),
        // The name is formatted only on error: this runs several times per event.
        Some(raw) => as_str(raw, what).map_err(|mut r| {
            if r.reason == RejectReason::WrongType {
                r.detail = format!("{what} ({}) is not a string", pointer.text);
            }
            r
        }),
    }
}

fn optional_scalar(
    value: &Members,
    pointer: &Pointer,
    what: &str,
) -> Result<Option<CompactString>, Rejection> {
    match value.lookup(pointer) {
        None => Ok(None),
        Some(raw) if raw.get().starts_with('"') => as_string(raw, what),
        Some(raw) => match parse_value(raw)? {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.into())),
            Value::Number(n) => Ok(Some(n.to_string().into())),
            _ => Err(Rejection::new(
                RejectReason::WrongType,
                format!("{what} ({}) is not a string or number", pointer.text),
            )),
        },
    }
}

/// The labels object: string values as they are, numbers and booleans as their JSON
/// text; anything else is refused.
fn parse_labels(raw: &RawValue, pointer_text: &str) -> Result<Labels, Rejection> {
    if !raw.get().starts_with('{') {
        return Err(Rejection::new(
            RejectReason::InvalidLabels,
            format!("{pointer_text} is not an object"),
        ));
    }
    // Straight into the pairs that become `Labels`, without collecting the object's
    // members first: one allocation fewer per event.
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Result<Labels, Rejection>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::new();
            let mut refused = None;
            while let Some((k, v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                if refused.is_none() {
                    match label_value(&k, v) {
                        Ok(value) => pairs.push((k.0.into(), value)),
                        Err(r) => refused = Some(r),
                    }
                }
            }
            // Later duplicate keys win, as everywhere in the decoder.
            Ok(refused.map_or_else(|| Ok(Labels::from_pairs(pairs)), Err))
        }
    }
    let malformed =
        |e: serde_json::Error| Rejection::new(RejectReason::MalformedJson, e.to_string());
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let labels = serde::Deserializer::deserialize_map(&mut de, V).map_err(malformed)?;
    de.end().map_err(malformed)?;
    labels
}

/// A label's value: a string as it is, a number or boolean as its JSON text.
fn label_value(key: &Key, v: &RawValue) -> Result<CompactString, Rejection> {
    if v.get().starts_with('"') {
        return Ok(as_str(v, "label")?
            .map(CompactString::from)
            .unwrap_or_default());
    }
    match parse_value(v)? {
        Value::Number(n) => Ok(n.to_string().into()),
        Value::Bool(b) => Ok(b.to_string().into()),
        _ => Err(Rejection::new(
            RejectReason::InvalidLabels,
            format!("label {:?} is not a string, number or boolean", key.0),
        )),
    }
}

fn parse_sequence(raw: &RawValue) -> Result<Sequence, Rejection> {
    let invalid = |detail: String| Rejection::new(RejectReason::InvalidSequence, detail);
    if raw.get().starts_with('"') {
        let text = as_str(raw, "sequence")?.unwrap_or_default();
        return sequence_from_text(text);
    }
    let value = parse_value(raw)?;
    let text = match value {
        Value::Number(n) if n.is_u64() => n.to_string(),
        Value::Number(n) => {
            return Err(invalid(format!(
                "sequence {n} is not a non-negative integer"
            )))
        }
        _ => {
            return Err(Rejection::new(
                RejectReason::WrongType,
                "sequence is not a string or integer",
            ))
        }
    };
    sequence_from_text(Cow::Owned(text))
}

fn sequence_from_text(text: Cow<str>) -> Result<Sequence, Rejection> {
    let invalid = |detail: String| Rejection::new(RejectReason::InvalidSequence, detail);
    if text.is_empty() {
        return Err(invalid("sequence is empty".into()));
    }
    if text.len() > 255 {
        return Err(invalid("sequence is longer than 255 bytes".into()));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let trimmed = text.trim_start_matches('0');
        let digits = if trimmed.is_empty() { "0" } else { trimmed };
        return Ok(Sequence::Number(digits.into()));
    }
    if text.contains('\0') {
        return Err(invalid("sequence contains NUL".into()));
    }
    Ok(Sequence::Text(text.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
}
