//! Search over live flows: the state store's open parts, filtered like archive
//! listings (status, label, time range) and paginated with an opaque cursor the same
//! way, so a console can show live and archived matches side by side.
//!
//! Guarantees: a page never repeats a flow of an earlier page of the same search, and
//! each call does bounded work (see `StateStore::live_flows`); a page may hold fewer
//! than `limit` flows while `next_cursor` is set, and the search is over when it is
//! `None`.

use base64::Engine;
use serde::Serialize;

use super::{ReadError, Reader};
use crate::index::ListQuery;
use crate::state::{FlowMeta, LiveQuery, LIVE_SCAN};
use crate::time::rfc3339_ms;

/// How many store calls one page may take before it returns what it found.
const CALLS_PER_PAGE: usize = 4;

/// A live flow as a search lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveItem {
    pub tenant: String,
    pub flow_id: String,
    pub part: u32,
    pub status: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub event_count: u64,
    pub first_event_time: String,
    pub last_event_time: String,
    /// When it becomes due for archival, if it has a timer.
    pub due_at: Option<String>,
    /// The item's own cursor: a search resumed from it starts after the item.
    #[serde(skip)]
    pub cursor: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LivePage {
    pub items: Vec<LiveItem>,
    pub next_cursor: Option<String>,
}

/// A cursor that does not decode: the caller's mistake, not the store's.
#[derive(Debug, thiserror::Error)]
#[error("cursor {0:?} is not one this search returned")]
pub struct BadCursor(pub String);

fn encode_cursor(tenant: &str, flow_id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&(tenant, flow_id)).unwrap_or_default())
}

fn decode_cursor(cursor: &str) -> Result<(String, String), BadCursor> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| BadCursor(cursor.to_string()))
}

/// Whether a live flow passes the filters a store search does not apply. The time
/// range is on the flow's last event (a live flow has no archival time).
fn matches(q: &ListQuery, m: &FlowMeta) -> bool {
    let micros = m.last_event_ms.saturating_mul(1000);
    q.status.as_deref().is_none_or(|s| m.status.as_str() == s)
        && q.labels
            .iter()
            .all(|(k, v)| m.labels.iter().any(|(key, value)| key == k && value == v))
        && q.archived_after.is_none_or(|a| micros >= a)
        && q.archived_before.is_none_or(|b| micros < b)
}

fn item(m: FlowMeta) -> LiveItem {
    LiveItem {
        cursor: encode_cursor(&m.tenant, &m.flow_id),
        tenant: m.tenant.to_string(),
        flow_id: m.flow_id.to_string(),
        part: m.part,
        status: m.status.as_str().to_string(),
        labels: m
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        event_count: m.event_count,
        first_event_time: rfc3339_ms(m.first_event_ms),
        last_event_time: rfc3339_ms(m.last_event_ms),
        due_at: m.deadline_ms.map(rfc3339_ms),
    }
}

impl Reader {
    /// How many flows are live: every tenant's (`None`) from the store's counts, one
    /// tenant's by a search (up to 100 000). `None` when this process does not hold
    /// the state store.
    pub async fn live_flow_count(&self, tenant: Option<&str>) -> Result<Option<u64>, ReadError> {
        let Some(store) = self.store.clone() else {
            return Ok(None);
        };
        let tenant = tenant.map(str::to_string);
        let count = tokio::task::spawn_blocking(move || {
            let Some(tenant) = tenant else {
                return store.stats().map(|s| s.live_flows);
            };
            let mut query = LiveQuery {
                tenant: Some(tenant),
                limit: LIVE_SCAN,
                ..LiveQuery::default()
            };
            let mut count = 0;
            for _ in 0..20 {
                let found = store.live_flows(&query)?;
                count += found.flows.len() as u64;
                match found.resume_after {
                    Some(after) => query.after = Some(after),
                    None => break,
                }
            }
            Ok(count)
        })
        .await
        .map_err(ReadError::Task)??;
        Ok(Some(count))
    }

    /// Live flows matching `q` (its `limit` and `cursor` paginate); empty when this
    /// process does not hold the state store.
    pub async fn search_live(&self, q: &ListQuery) -> Result<LivePage, ReadError> {
        let Some(store) = self.store.clone() else {
            return Ok(LivePage::default());
        };
        let after = match &q.cursor {
            Some(c) => Some(decode_cursor(c).map_err(|e| ReadError::Cursor(e.to_string()))?),
            None => None,
        };
        let q = q.clone();
        tokio::task::spawn_blocking(move || {
            let limit = q.limit.clamp(1, 1000);
            let mut page = LivePage::default();
            let mut query = LiveQuery {
                tenant: q.tenant.clone(),
                flow_id_prefix: q.flow_id_prefix.clone().unwrap_or_default(),
                after,
                limit,
            };
            for _ in 0..CALLS_PER_PAGE {
                let found = store.live_flows(&query)?;
                let looked_at = found.flows.len();
                for (n, meta) in found.flows.into_iter().enumerate() {
                    if !matches(&q, &meta) {
                        continue;
                    }
                    page.items.push(item(meta));
                    if page.items.len() == limit {
                        // Resume after this flow, unless it was the store's last.
                        let more = n + 1 < looked_at || found.resume_after.is_some();
                        page.next_cursor =
                            page.items.last().filter(|_| more).map(|i| i.cursor.clone());
                        return Ok(page);
                    }
                }
                match found.resume_after {
                    Some((t, f)) => {
                        page.next_cursor = Some(encode_cursor(&t, &f));
                        query.after = Some((t, f));
                    }
                    None => {
                        page.next_cursor = None;
                        return Ok(page);
                    }
                }
            }
            Ok(page)
        })
        .await
        .map_err(ReadError::Task)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_they_did_not_make() {
        let c = encode_cursor("acme", "f/ü ../x");
        assert_eq!(
            decode_cursor(&c).unwrap(),
            ("acme".to_string(), "f/ü ../x".to_string())
        );
        for bad in ["", "!!", "bm90IGpzb24", &encode_cursor("a", "b")[1..]] {
            assert!(decode_cursor(bad).is_err(), "{bad:?}");
        }
    }
}
