//! A flow as the schema shows it: its archived parts from the index and its open part
//! from the state store, with one timeline of events across them.

use serde_json::Value;

use super::types::{labels, Flow, FlowEvent, FlowPart, PartState};
use crate::read::{ReadError, Reader};

/// The flow, or `None` when neither the index nor the state store knows it. Archived
/// events are read (and verified) only `with_events`.
pub async fn read(
    reader: &Reader,
    tenant: &str,
    flow_id: &str,
    with_events: bool,
) -> Result<Option<Flow>, ReadError> {
    let live = reader.live_flow(tenant, flow_id).await?;
    let index = reader.index().clone();
    let (t, f) = (tenant.to_string(), flow_id.to_string());
    let indexed = tokio::task::spawn_blocking(move || index.parts_of(&t, &f))
        .await
        .map_err(ReadError::Task)??;
    if live.is_none() && indexed.is_empty() {
        return Ok(None);
    }
    let mut parts: Vec<FlowPart> = indexed.iter().map(FlowPart::from).collect();
    let mut events = Vec::new();
    if with_events && !indexed.is_empty() {
        if let Some(archived) = reader.archived_flow(tenant, flow_id).await? {
            // The events come in part order; the index says how many each part has.
            let mut part_of = indexed
                .iter()
                .flat_map(|p| std::iter::repeat_n(p.part, p.event_count as usize));
            for event in as_array(&archived["events"]) {
                let part = part_of.next().unwrap_or(0);
                events.push(FlowEvent::new(events.len() as u32 + 1, part, event));
            }
        }
    }
    if let Some(open) = &live {
        let part = open["part"].as_u64().unwrap_or(0) as u32;
        // An archival finishing now may have indexed the part already: list it once.
        if !parts.iter().any(|p| p.part == part) {
            parts.push(open_part(part, open));
            if with_events {
                for event in as_array(&open["events"]) {
                    events.push(FlowEvent::new(events.len() as u32 + 1, part, event));
                }
            }
        }
    }
    let (Some(first), Some(latest)) = (parts.first(), parts.last()) else {
        return Ok(None);
    };
    Ok(Some(Flow {
        tenant: tenant.to_string(),
        flow_id: flow_id.to_string(),
        status: latest.status.clone(),
        labels: latest.labels.clone(),
        live: live.is_some(),
        archived: !indexed.is_empty(),
        event_count: parts.iter().map(|p| p.event_count).sum(),
        first_event_time: first.first_event_time.clone(),
        last_event_time: latest.last_event_time.clone(),
        hold: None,
        parts,
        events,
    }))
}

fn as_array(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// The open (or sealing) part, from the live flow's JSON (`crate::read::live_flow`).
fn open_part(part: u32, open: &Value) -> FlowPart {
    let label_pairs: Vec<(String, String)> = open["labels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), text(v))).collect())
        .unwrap_or_default();
    FlowPart {
        part,
        state: if open["archiving"].is_null() {
            PartState::Live
        } else {
            PartState::Archiving
        },
        status: text(&open["status"]),
        labels: labels(label_pairs.iter().map(|(k, v)| (k, v))),
        event_count: open["event_count"].as_u64().unwrap_or(0),
        first_event_time: text(&open["first_event_time"]),
        last_event_time: text(&open["last_event_time"]),
        raw_bytes: None,
        stored_bytes: None,
        archived_at: None,
        purge_at: None,
        held: false,
        object_uri: None,
        due_at: open["due_at"].as_str().map(str::to_string),
    }
}
