//! How a flow part's [`FlowMeta`] follows its events: one definition for every
//! backend, so the embedded store and PostgreSQL agree on status, labels, order and
//! counts of the same history.

use sha2::{Digest as _, Sha256};

use super::FlowMeta;
use crate::flow::{FlowEvent, Labels, Sequence};

/// The order of an event within its part: its encoded [`Sequence`], or `0x02` when it
/// has none, then the arrival counter. Byte order is flow order: events with a
/// sequence sort by it; arrival breaks ties and orders events without one.
pub fn order_key(sequence: Option<&Sequence>, arrival: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    match sequence {
        Some(s) => s.encode(&mut k),
        None => k.push(2),
    }
    k.extend_from_slice(&arrival.to_be_bytes());
    k
}

/// The meta of a flow part opened by `event`.
pub fn new_meta(event: &FlowEvent, part: u32, now_ms: i64) -> FlowMeta {
    FlowMeta {
        tenant: event.tenant.clone(),
        flow_id: event.flow_id.clone(),
        part,
        status: event.status,
        event_type: event.event_type.clone(),
        status_order: Vec::new(),
        labels: Labels::default(),
        first_event_ms: event.time_ms,
        last_event_ms: event.time_ms,
        first_ingest_ms: now_ms,
        last_ingest_ms: now_ms,
        event_count: 0,
        raw_bytes: 0,
        next_arrival: 0,
        deadline_ms: None,
        traceparent: None,
        tracestate: None,
    }
}

/// Folds `event` into its flow's meta and returns the event's order within its part
/// . The status is that
/// of the latest event in flow order; labels merge; the first trace context is kept.
pub fn apply_event(meta: &mut FlowMeta, event: &FlowEvent, now_ms: i64) -> Vec<u8> {
    let order = order_key(event.sequence.as_ref(), meta.next_arrival);
    meta.next_arrival += 1;
    // The type and label checks below reuse what the meta already holds: most events
    // repeat their flow's type and labels, and this runs once per stored event.
    if order >= meta.status_order {
        meta.status = event.status;
        if meta.event_type != event.event_type {
            meta.event_type.clone_from(&event.event_type);
        }
        meta.status_order.clone_from(&order);
    }
    meta.labels.merge(&event.labels);
    meta.first_event_ms = meta.first_event_ms.min(event.time_ms);
    meta.last_event_ms = meta.last_event_ms.max(event.time_ms);
    meta.last_ingest_ms = now_ms;
    meta.event_count += 1;
    meta.raw_bytes += event.raw.len() as u64;
    if meta.traceparent.is_none() && event.traceparent.is_some() {
        meta.traceparent = event.traceparent.clone();
        meta.tracestate = event.tracestate.clone();
    }
    order
}

/// The 16-byte digest of a pair of strings (a dedupe key's source and id, or a flow's
/// tenant and id): SHA-256 of both, length-prefixed so that ("ab", "c") and ("a", "bc")
/// differ. 128 bits make a collision among billions of keys negligible.
pub fn digest(a: &str, b: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update((a.len() as u64).to_be_bytes());
    h.update(a.as_bytes());
    h.update((b.len() as u64).to_be_bytes());
    h.update(b.as_bytes());
    let full = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}
