//! Reading one field's raw JSON as the type the mapping expects (text, labels, a
//! sequence); each refusal is a [`Rejection`] with its reason.
//!
//! These run for every field of every event, called from the decoder in another
//! module, which the compiler puts in another codegen unit: they are `#[inline]` so
//! that living in their own file costs no call on the ingest path.

use std::borrow::Cow;

use compact_str::CompactString;
use serde_json::value::RawValue;
use serde_json::Value;

use super::pointers::{Key, Members, Pointer};
use super::{RejectReason, Rejection};
use crate::flow::{Labels, Sequence};

pub(super) fn parse_value(raw: &RawValue) -> Result<Value, Rejection> {
    serde_json::from_str(raw.get())
        .map_err(|e| Rejection::new(RejectReason::MalformedJson, e.to_string()))
}

/// A JSON string (or null) as text; anything else is a wrong type.
#[inline]
pub(super) fn as_string(raw: &RawValue, what: &str) -> Result<Option<CompactString>, Rejection> {
    as_str(raw, what).map(|s| s.map(CompactString::from))
}

/// As [`as_string`], borrowing the text when it has no escapes (the usual case: the
/// parser has already checked the string, so its bytes between the quotes are it).
#[inline]
pub(super) fn as_str<'a>(raw: &'a RawValue, what: &str) -> Result<Option<Cow<'a, str>>, Rejection> {
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

#[inline]
pub(super) fn required_string(
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

#[inline]
pub(super) fn optional_string(
    value: &Members,
    pointer: &Pointer,
    what: &str,
) -> Result<Option<CompactString>, Rejection> {
    optional_str(value, pointer, what).map(|s| s.map(CompactString::from))
}

#[inline]
pub(super) fn optional_str<'a>(
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

#[inline]
pub(super) fn optional_scalar(
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
#[inline]
pub(super) fn parse_labels(raw: &RawValue, pointer_text: &str) -> Result<Labels, Rejection> {
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
#[inline]
pub(super) fn label_value(key: &Key, v: &RawValue) -> Result<CompactString, Rejection> {
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

#[inline]
pub(super) fn parse_sequence(raw: &RawValue) -> Result<Sequence, Rejection> {
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

#[inline]
pub(super) fn sequence_from_text(text: Cow<str>) -> Result<Sequence, Rejection> {
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
