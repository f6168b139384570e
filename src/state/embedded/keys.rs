//! The key layout of the embedded store (documented in [`super`]): flow keys
//! are prefix-free, integers big-endian, so byte order is the order the pipeline needs.

use serde::Serialize;

use super::{FlowMeta, StateError};
#[cfg(test)]
pub(super) use crate::state::meta::order_key;
pub(super) use crate::state::meta::{apply_event, new_meta};

pub(super) const META: u8 = 0;
pub(super) const DEDUPE: u8 = 1;
pub(super) const EVENT: u8 = 2;

pub(super) fn corrupt(what: impl Into<String>, detail: impl std::fmt::Display) -> StateError {
    StateError::Corrupt {
        what: what.into(),
        detail: detail.to_string(),
    }
}

pub(super) fn put_component(out: &mut Vec<u8>, s: &[u8]) {
    // Components are ≤ 1 KiB after validation; longer dedupe values are cut, which only
    // weakens deduplication for absurd ids and never merges two flows.
    let s = &s[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

pub(super) fn flow_key(tenant: &str, flow_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + tenant.len() + flow_id.len());
    push_flow_key(&mut k, tenant, flow_id);
    k
}

/// Appends the flow key to `out`.
pub(super) fn push_flow_key(out: &mut Vec<u8>, tenant: &str, flow_id: &str) {
    put_component(out, tenant.as_bytes());
    put_component(out, flow_id.as_bytes());
}

pub(super) fn meta_key(flow_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(flow_key.len() + 1);
    k.extend_from_slice(flow_key);
    k.push(META);
    k
}

pub(super) fn part_prefix(flow_key: &[u8], part: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(flow_key.len() + 5);
    k.extend_from_slice(flow_key);
    k.push(EVENT);
    k.extend_from_slice(&part.to_be_bytes());
    k
}

/// Length of the flow key at the start of a `flows` key.
pub(super) fn flow_key_len(key: &[u8]) -> Option<usize> {
    let t = u16::from_be_bytes([*key.first()?, *key.get(1)?]) as usize;
    let f_at = 2 + t;
    let f = u16::from_be_bytes([*key.get(f_at)?, *key.get(f_at + 1)?]) as usize;
    let len = f_at + 2 + f;
    (key.len() > len).then_some(len)
}

/// (tenant, flow id) of a flow key; `None` when it is not one.
pub(super) fn split_flow_key(fkey: &[u8]) -> Option<(String, String)> {
    let component = |at: usize| -> Option<(String, usize)> {
        let len = u16::from_be_bytes([*fkey.get(at)?, *fkey.get(at + 1)?]) as usize;
        let bytes = fkey.get(at + 2..at + 2 + len)?;
        Some((String::from_utf8(bytes.to_vec()).ok()?, at + 2 + len))
    };
    let (tenant, at) = component(0)?;
    let (flow_id, _) = component(at)?;
    Some((tenant, flow_id))
}

/// The smallest key greater than every key starting with `prefix`.
pub(super) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub(super) fn deadline_key(deadline_ms: i64, flow_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + flow_key.len());
    k.extend_from_slice(&((deadline_ms as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(flow_key);
    k
}

/// The meta at the start of a meta record, ignoring its inline index (see `inline`).
pub(super) fn decode_meta(bytes: &[u8]) -> Result<FlowMeta, StateError> {
    postcard::take_from_bytes(bytes)
        .map(|(meta, _)| meta)
        .map_err(|e| corrupt("flow meta", e))
}

pub(super) fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, StateError> {
    postcard::to_allocvec(value).map_err(|e| corrupt(what, e))
}

/// The dedupe key of an event within its flow.
pub(super) fn dedupe_key(flow_key: &[u8], a: &str, b: &str) -> Vec<u8> {
    let mut k = flow_key.to_vec();
    k.push(DEDUPE);
    put_component(&mut k, a.as_bytes());
    put_component(&mut k, b.as_bytes());
    k
}

/// After a part prefix: the part's inline events once sealed (see `inline`).
pub(super) const RUN_TAG: u8 = 0xFF;
/// After a part prefix: a chunk of the events past its inline ones (see `inline`).
/// An individual event's order starts with 0, 1 or 2, so neither tag is ever one.
pub(super) const CHUNK_TAG: u8 = 0xFE;

/// Key of a sealed part's inline events (see `inline`).
pub(super) fn run_key(flow_key: &[u8], part: u32) -> Vec<u8> {
    let mut k = part_prefix(flow_key, part);
    k.push(RUN_TAG);
    k
}

/// Key of chunk `chunk` of a part's events past its inline ones (see `inline`).
pub(super) fn chunk_key(flow_key: &[u8], part: u32, chunk: u32) -> Vec<u8> {
    let mut k = part_prefix(flow_key, part);
    k.push(CHUNK_TAG);
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

/// Whether `key`, under a part prefix of `prefix_len` bytes, holds a [`Run`] of
/// pointers (a sealed part's inline events or a chunk) rather than one event.
///
/// [`Run`]: super::inline::Run
pub(super) fn holds_run(prefix_len: usize, key: &[u8]) -> bool {
    match key.get(prefix_len) {
        Some(&RUN_TAG) => key.len() == prefix_len + 1,
        Some(&CHUNK_TAG) => key.len() == prefix_len + 5,
        _ => false,
    }
}

/// Key of an archived flow's inline dedupe digests (see `inline`).
pub(super) fn digests_key(flow_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(flow_key.len() + 2);
    k.extend_from_slice(flow_key);
    k.extend_from_slice(&[DEDUPE, 0xFF]);
    k
}
