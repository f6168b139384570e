//! The domain of flow-archiver: what a flow is, independent of how events arrive or
//! where they are kept. Every other module builds on these types; this one imports
//! nothing from the crate (see `docs/design.md`, "Layers").
//!
//! - [`FlowStatus`]: a flow's lifecycle status and how event types map to it;
//! - [`Labels`]: a flow's labels, sorted, with the serialized shape of a map;
//! - [`FlowEvent`] and [`Sequence`]: one decoded event and its producer order;
//! - [`validate_identifier`] and [`FlowRef`]: tenant and flow ids, checked before they
//!   reach a state key, an object key or a path.
//!
//! The few functions every ingested event goes through are `#[inline]`: their callers
//! live in other modules, so without it each would be a call.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// Lifecycle status of a flow, derived from its latest event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum FlowStatus {
    Running,
    Completed,
    Failed,
    Error,
    Cancelled,
    TimedOut,
    /// Not an input status: a non-terminal flow archived after the `abandoned` idle time.
    Abandoned,
}

impl FlowStatus {
    pub const ALL: [FlowStatus; 7] = [
        FlowStatus::Running,
        FlowStatus::Completed,
        FlowStatus::Failed,
        FlowStatus::Error,
        FlowStatus::Cancelled,
        FlowStatus::TimedOut,
        FlowStatus::Abandoned,
    ];

    pub fn is_terminal(self) -> bool {
        !matches!(self, FlowStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FlowStatus::Running => "running",
            FlowStatus::Completed => "completed",
            FlowStatus::Failed => "failed",
            FlowStatus::Error => "error",
            FlowStatus::Cancelled => "cancelled",
            FlowStatus::TimedOut => "timed_out",
            FlowStatus::Abandoned => "abandoned",
        }
    }

    /// Maps an event type (`io.example.flow.completed`) or a bare status word
    /// (`Succeeded`, `failed`) to a status: the text after the last `.`, case-insensitive.
    /// Anything unrecognised means the flow is still running.
    #[inline]
    pub fn from_type(text: &str) -> FlowStatus {
        const WORDS: [(&str, FlowStatus); 12] = [
            ("completed", FlowStatus::Completed),
            ("succeeded", FlowStatus::Completed),
            ("success", FlowStatus::Completed),
            ("failed", FlowStatus::Failed),
            ("failure", FlowStatus::Failed),
            ("errored", FlowStatus::Error),
            ("error", FlowStatus::Error),
            ("cancelled", FlowStatus::Cancelled),
            ("canceled", FlowStatus::Cancelled),
            ("timed_out", FlowStatus::TimedOut),
            ("timedout", FlowStatus::TimedOut),
            ("timeout", FlowStatus::TimedOut),
        ];
        // Compared without a lowercased copy: this runs once per event.
        let word = text.rsplit('.').next().unwrap_or(text);
        WORDS
            .iter()
            .find(|(w, _)| w.eq_ignore_ascii_case(word))
            .map_or(FlowStatus::Running, |(_, status)| *status)
    }
}

impl std::fmt::Display for FlowStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event's labels, sorted by key. A `Vec` of inline strings rather than a map: a
/// `BTreeMap` allocated a ~500-byte node per event, freed in bulk with its batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(Vec<(CompactString, CompactString)>);

impl Labels {
    /// From pairs in any order, a later duplicate winning. Sorted once, not inserted one
    /// by one: an object of many labels in descending order would otherwise shift the
    /// vector once per label (quadratic in a hostile event's label count).
    #[inline]
    pub fn from_pairs(mut pairs: Vec<(CompactString, CompactString)>) -> Labels {
        if !pairs.windows(2).all(|w| w[0].0 < w[1].0) {
            // Reversed, the stable sort puts the last of equal keys first; dedup keeps it.
            pairs.reverse();
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            pairs.dedup_by(|later, kept| later.0 == kept.0);
        }
        Labels(pairs)
    }

    /// Sets every label of `newer`, its values winning: one linear merge, and no work
    /// at all when `newer` repeats what is here (most events repeat their flow's labels).
    #[inline]
    pub fn merge(&mut self, newer: &Labels) {
        if newer.iter().all(|(k, v)| self.get(k) == Some(v)) {
            return;
        }
        let mut merged = Vec::with_capacity(self.0.len() + newer.0.len());
        let mut older = std::mem::take(&mut self.0).into_iter().peekable();
        for (k, v) in &newer.0 {
            while let Some(kept) = older.next_if(|(o, _)| o < k) {
                merged.push(kept);
            }
            older.next_if(|(o, _)| o == k);
            merged.push((k.clone(), v.clone()));
        }
        merged.extend(older);
        self.0 = merged;
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).ok().map(|i| self.0[i].1.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// As the map the published records carry.
    pub fn to_map(&self) -> std::collections::BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }
}

/// Serialized as a map in key order: the same bytes a `BTreeMap<String, String>`
/// gives, so stored records and archived headers read either way.
impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Labels, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Labels;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of label names to string values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Labels, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(pair) = map.next_entry::<CompactString, CompactString>()? {
                    pairs.push(pair);
                }
                Ok(Labels::from_pairs(pairs))
            }
        }
        deserializer.deserialize_map(V)
    }
}

impl<K: Into<CompactString>, V: Into<CompactString>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Labels {
        Labels::from_pairs(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// One decoded, validated workflow event. Its short text (ids, types: nearly every
/// field) is `CompactString`, inline up to 24 bytes: a batch's events are freed in
/// bulk, and glibc's `free` of their many small strings was several percent of ingest.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowEvent {
    pub tenant: CompactString,
    pub flow_id: CompactString,
    /// Dedupe key: CloudEvents (`source`, `id`) or the configured pointers.
    pub dedupe_key: Option<(CompactString, CompactString)>,
    /// Producer order, when the event carries one.
    pub sequence: Option<Sequence>,
    pub status: FlowStatus,
    pub event_type: CompactString,
    /// Event time in milliseconds since the Unix epoch (ingest time when absent).
    pub time_ms: i64,
    pub labels: Labels,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// The event as received, one line (see the module doc).
    pub raw: Vec<u8>,
}

/// A producer-assigned order. Digit strings (and integers) compare numerically;
/// other strings compare byte-wise and sort after every number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sequence {
    /// Decimal digits with leading zeros stripped (`"0"` for zero).
    Number(CompactString),
    Text(CompactString),
}

impl Sequence {
    /// An order-preserving byte encoding, suitable as part of a store key.
    /// Numbers: `0x00`, digit count, digits. Text: `0x01`, bytes, `0x00` (text never
    /// contains NUL: the decoder rejects it).
    #[inline]
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Sequence::Number(digits) => {
                out.push(0);
                // Digit count first so that 10 > 9; at most 255 digits are accepted.
                out.push(digits.len() as u8);
                out.extend_from_slice(digits.as_bytes());
            }
            Sequence::Text(text) => {
                out.push(1);
                out.extend_from_slice(text.as_bytes());
                out.push(0);
            }
        }
    }
}

/// Longest accepted identifier, in characters.
pub const MAX_IDENTIFIER_CHARS: usize = 256;

/// Checks that an identifier is safe to use in a state key and an object key:
/// 1–256 characters, no control or invisible formatting characters, no `/` or `\`,
/// no `..`, no leading `.`.
#[inline]
pub fn validate_identifier(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    // Nearly every id is printable ASCII: one pass over its bytes accepts it (twice per
    // event). Anything else takes the full checks, which name the problem.
    if is_plain_identifier(value) {
        return Ok(());
    }
    identifier_problem(what, value)
}

/// Printable ASCII without `/`, `\`, `..` or a leading `.`, 1–256 bytes: an identifier
/// [`identifier_problem`] accepts, decided in one pass over the bytes.
#[inline]
fn is_plain_identifier(value: &str) -> bool {
    let plain = |b: &u8| matches!(b, b' '..=b'~') && *b != b'/' && *b != b'\\';
    !value.is_empty()
        && value.len() <= MAX_IDENTIFIER_CHARS
        && !value.starts_with('.')
        && value.as_bytes().iter().all(plain)
        && !value.contains("..")
}

/// Every check of [`validate_identifier`] but emptiness, character by character.
fn identifier_problem(what: &str, value: &str) -> Result<(), String> {
    if value.chars().count() > MAX_IDENTIFIER_CHARS {
        return Err(format!(
            "{what} is longer than {MAX_IDENTIFIER_CHARS} characters"
        ));
    }
    if value.starts_with('.') {
        return Err(format!("{what} {value:?} starts with '.'"));
    }
    if value.contains("..") {
        return Err(format!("{what} {value:?} contains '..'"));
    }
    if let Some(c) = value.chars().find(|c| matches!(c, '/' | '\\')) {
        return Err(format!("{what} {value:?} contains {c:?}"));
    }
    if let Some(c) = value
        .chars()
        .find(|&c| c.is_control() || is_invisible_format(c))
    {
        return Err(format!(
            "{what} {:?} contains the control or formatting character U+{:04X}",
            value.escape_default().to_string(),
            c as u32
        ));
    }
    Ok(())
}

/// Zero-width and bidirectional formatting characters: legal Unicode, but they make
/// two different ids look identical, so they never belong in an identifier.
fn is_invisible_format(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x061C | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064
        | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB)
}

/// A flow as an operator names it: `TENANT/FLOW_ID`, both parts validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowRef {
    pub tenant: String,
    pub flow_id: String,
}

impl FlowRef {
    /// Validates both identifiers (see [`validate_identifier`]).
    pub fn new(tenant: &str, flow_id: &str) -> Result<FlowRef, String> {
        validate_identifier("tenant", tenant)?;
        validate_identifier("flow id", flow_id)?;
        Ok(FlowRef {
            tenant: tenant.to_string(),
            flow_id: flow_id.to_string(),
        })
    }

    /// Parses `TENANT/FLOW_ID` as given on the command line.
    pub fn parse(text: &str) -> Result<FlowRef, String> {
        let (tenant, flow_id) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not TENANT/FLOW_ID"))?;
        FlowRef::new(tenant, flow_id)
    }
}

impl std::fmt::Display for FlowRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant, self.flow_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_comes_from_the_type_suffix() {
        for (ty, status) in [
            ("io.x.flow.completed", FlowStatus::Completed),
            ("io.x.flow.succeeded", FlowStatus::Completed),
            ("io.x.flow.failed", FlowStatus::Failed),
            ("io.x.flow.errored", FlowStatus::Error),
            ("io.x.flow.error", FlowStatus::Error),
            ("io.x.flow.cancelled", FlowStatus::Cancelled),
            ("io.x.flow.canceled", FlowStatus::Cancelled),
            ("io.x.flow.timed_out", FlowStatus::TimedOut),
            ("io.x.flow.started", FlowStatus::Running),
            ("Succeeded", FlowStatus::Completed),
        ] {
            assert_eq!(FlowStatus::from_type(ty), status, "{ty}");
        }
    }

    #[test]
    fn numeric_sequences_order_numerically_and_before_text() {
        let enc = |s: Sequence| {
            let mut v = Vec::new();
            s.encode(&mut v);
            v
        };
        let n = |d: &str| enc(Sequence::Number(d.into()));
        assert!(n("9") < n("10"));
        assert!(n("10") < n("100"));
        assert!(n("100") < enc(Sequence::Text("a".into())));
        assert!(enc(Sequence::Text("ab".into())) < enc(Sequence::Text("abc".into())));
    }

    #[test]
    fn identifiers_reject_traversal_and_invisible_characters() {
        for bad in [
            "",
            "..",
            "../etc",
            "a/b",
            "a\\b",
            ".hidden",
            "a\u{0}b",
            "a\nb",
            "a\u{202E}b",
            "a\u{200B}b",
            "\u{FEFF}x",
        ] {
            assert!(validate_identifier("id", bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(257);
        assert!(validate_identifier("id", &long).is_err());
        for good in ["f-1", "ワークフロー", "a.b", "tenant_1", &"x".repeat(256)] {
            assert!(validate_identifier("id", good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn flow_refs_are_tenant_slash_flow_id_and_validated() {
        let r = FlowRef::parse("acme/wf-1").unwrap();
        assert_eq!((r.tenant.as_str(), r.flow_id.as_str()), ("acme", "wf-1"));
        assert_eq!(r.to_string(), "acme/wf-1");
        // The flow id may not contain '/', so the first one splits.
        assert!(FlowRef::parse("acme/a/b").is_err());
        assert!(FlowRef::parse("acme").is_err());
        assert!(FlowRef::parse("../x").is_err());
        assert!(FlowRef::parse("acme/").is_err());
    }

    #[test]
    fn labels_store_as_the_map_they_replaced() {
        use std::collections::BTreeMap;
        let map: BTreeMap<String, String> = [("zeta", "1"), ("a", "ü✓"), ("m", "")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let labels: Labels = map.iter().collect();
        // Stored flow records and intents were written from the map: same bytes.
        assert_eq!(
            postcard::to_stdvec(&labels).unwrap(),
            postcard::to_stdvec(&map).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&labels).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
        let back: Labels = postcard::from_bytes(&postcard::to_stdvec(&map).unwrap()).unwrap();
        assert_eq!(back, labels);
        assert_eq!(back.to_map(), map);
        // Input not in key order is sorted, a later duplicate winning.
        let json: Labels = serde_json::from_str(r#"{"b":"1","a":"2","b":"3"}"#).unwrap();
        assert_eq!(json.iter().collect::<Vec<_>>(), [("a", "2"), ("b", "3")]);
        assert!(serde_json::from_str::<Labels>(r#"{"a":1}"#).is_err());
        assert!(serde_json::from_str::<Labels>(r#"["a"]"#).is_err());
    }

    proptest::proptest! {
        /// Labels built from pairs in any order, and merged, hold what a map would:
        /// sorted keys, the later value of a repeated key.
        #[test]
        fn labels_hold_what_a_map_holds(
            first in proptest::collection::vec(("[a-e]{0,2}", "[xy]{0,1}"), 0..40),
            later in proptest::collection::vec(("[a-e]{0,2}", "[xy]{0,1}"), 0..40),
        ) {
            use std::collections::BTreeMap;
            let mut model: BTreeMap<String, String> = first.iter().cloned().collect();
            let mut labels: Labels = first.iter().cloned().collect();
            proptest::prop_assert_eq!(labels.to_map(), model.clone());
            let newer: Labels = later.iter().cloned().collect();
            model.extend(later.iter().cloned());
            labels.merge(&newer);
            proptest::prop_assert_eq!(labels.to_map(), model.clone());
            let keys: Vec<&str> = labels.iter().map(|(k, _)| k).collect();
            proptest::prop_assert!(keys.windows(2).all(|w| w[0] < w[1]));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// The one-pass check for plain ASCII ids decides as the full checks do.
        #[test]
        fn the_ascii_fast_path_accepts_only_what_the_full_checks_accept(
            value in "[ -~./\\\\\u{0}\u{7f}\u{200B}\u{FEFF}é]{1,300}"
        ) {
            proptest::prop_assert_eq!(
                validate_identifier("id", &value).is_ok(),
                identifier_problem("id", &value).is_ok()
            );
            if is_plain_identifier(&value) {
                proptest::prop_assert!(identifier_problem("id", &value).is_ok());
            }
        }

        /// The same, on ids that mostly look like real ones.
        #[test]
        fn the_ascii_fast_path_agrees_on_likely_ids(value in "[a-zA-Z0-9 ._:-]{1,260}") {
            proptest::prop_assert_eq!(
                is_plain_identifier(&value),
                identifier_problem("id", &value).is_ok()
            );
        }
    }
}
