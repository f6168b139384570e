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
mod fields;
mod pointers;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use self::fields::*;
use self::pointers::{Members, Paths, Pointer, Pointers};
use crate::config::{InputConfig, InputFormat};
use crate::flow::{validate_identifier, FlowEvent, FlowStatus, Labels};

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
