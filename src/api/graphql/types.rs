//! The GraphQL object types: plain data, built from what the read side returns.
//! Field names follow GraphQL's camelCase; the REST API's snake_case names map
//! one-to-one (`flow_id` is `flowId`).

use async_graphql::{ComplexObject, Enum, InputObject, Json, SimpleObject};
use serde_json::Value;

use crate::index::{IndexedPart, StatsRow};
use crate::read::LiveItem;

#[derive(SimpleObject, Clone, Debug)]
pub struct Label {
    pub key: String,
    pub value: String,
}

#[derive(InputObject, Clone, Debug)]
pub struct LabelInput {
    pub key: String,
    pub value: String,
}

pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a String, &'a String)>) -> Vec<Label> {
    pairs
        .into_iter()
        .map(|(k, v)| Label {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

/// What a search looks for; every field is optional. The time range is on the
/// archival time of archived parts and on the last event of live flows.
#[derive(InputObject, Clone, Debug, Default)]
pub struct FlowFilter {
    /// A tenant token searches its own tenant whatever is given here.
    pub tenant: Option<String>,
    pub flow_id_prefix: Option<String>,
    pub status: Option<String>,
    /// Labels every match has.
    pub labels: Option<Vec<LabelInput>>,
    /// RFC 3339, inclusive.
    pub from: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
}

/// Who the token belongs to, and what it may do.
#[derive(SimpleObject, Clone, Debug)]
pub struct Viewer {
    /// `admin`, `tenant`, or `open` (no tokens configured: loopback only).
    pub role: String,
    /// The token's tenant, for a tenant token.
    pub tenant: Option<String>,
    /// Whether holds and replays are open to this token here: the admin token, on a
    /// server that owns the state store.
    pub can_act: bool,
    /// Whether live flows are visible (this server holds the state store).
    pub sees_live_flows: bool,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct Hold {
    pub tenant: String,
    pub flow_id: String,
    /// Unknown where holds are read from the index (a `serve` beside `run`).
    pub reason: Option<String>,
    pub actor: Option<String>,
    /// RFC 3339.
    pub since: Option<String>,
}

impl From<crate::state::Hold> for Hold {
    fn from(h: crate::state::Hold) -> Hold {
        Hold {
            since: Some(crate::time::rfc3339_ms(h.at_ms)),
            tenant: h.tenant,
            flow_id: h.flow_id,
            reason: Some(h.reason),
            actor: Some(h.actor),
        }
    }
}

/// Where a flow part is.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum PartState {
    /// Open in the state store: events may still arrive.
    Live,
    /// Sealed into an archival in progress.
    Archiving,
    /// In the archive, indexed.
    Archived,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct FlowPart {
    pub part: u32,
    pub state: PartState,
    pub status: String,
    pub labels: Vec<Label>,
    pub event_count: u64,
    pub first_event_time: String,
    pub last_event_time: String,
    pub raw_bytes: Option<u64>,
    pub stored_bytes: Option<u64>,
    pub archived_at: Option<String>,
    /// When the part is purged, unless held.
    pub purge_at: Option<String>,
    pub held: bool,
    pub object_uri: Option<String>,
    /// When a live part becomes due for archival.
    pub due_at: Option<String>,
}

impl From<&IndexedPart> for FlowPart {
    fn from(p: &IndexedPart) -> FlowPart {
        FlowPart {
            part: p.part,
            state: PartState::Archived,
            status: p.status.clone(),
            labels: labels(&p.labels),
            event_count: p.event_count,
            first_event_time: p.first_event_time.clone(),
            last_event_time: p.last_event_time.clone(),
            raw_bytes: Some(p.raw_bytes),
            stored_bytes: Some(p.stored_bytes),
            archived_at: Some(p.archived_at.clone()),
            purge_at: Some(p.purge_at.clone()),
            held: p.held,
            object_uri: Some(p.object_uri.clone()),
            due_at: None,
        }
    }
}

/// One event of a flow's timeline.
#[derive(SimpleObject, Clone, Debug)]
pub struct FlowEvent {
    /// 1-based place in the flow's order (archived parts first, then the live one).
    pub position: u32,
    pub part: u32,
    /// CloudEvents `id` (or `event_id`), when the event has one.
    pub id: Option<String>,
    #[graphql(name = "type")]
    pub event_type: Option<String>,
    pub time: Option<String>,
    /// The event exactly as received.
    pub json: Json<Value>,
}

impl FlowEvent {
    pub fn new(position: u32, part: u32, event: Value) -> FlowEvent {
        let text = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| event.get(*k).and_then(Value::as_str))
                .map(str::to_string)
        };
        FlowEvent {
            position,
            part,
            id: text(&["id", "event_id"]),
            event_type: text(&["type", "event_type"]),
            time: text(&["time", "timestamp"]),
            json: Json(event),
        }
    }
}

/// A flow, live and archived parts together.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(complex)]
pub struct Flow {
    pub tenant: String,
    pub flow_id: String,
    /// The latest part's status.
    pub status: String,
    /// The latest part's labels.
    pub labels: Vec<Label>,
    pub live: bool,
    pub archived: bool,
    pub event_count: u64,
    pub first_event_time: String,
    pub last_event_time: String,
    pub hold: Option<Hold>,
    pub parts: Vec<FlowPart>,
    #[graphql(skip)]
    pub events: Vec<FlowEvent>,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct EventPage {
    pub items: Vec<FlowEvent>,
    /// Pass as `after` for the next page; null on the last.
    pub next_cursor: Option<String>,
    pub total: u64,
}

#[ComplexObject]
impl Flow {
    /// The events in flow order, paged: `first` (default 100, at most 1000) after the
    /// cursor of the previous page. Only read when asked for.
    #[graphql(complexity = "first.unwrap_or(100).clamp(1, 1000) as usize * child_complexity")]
    async fn events(
        &self,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<EventPage> {
        let first = first.unwrap_or(100).clamp(1, 1000) as usize;
        let start = match after {
            None => 0,
            Some(c) => c
                .parse::<usize>()
                .ok()
                .filter(|&n| n <= self.events.len())
                .ok_or_else(|| {
                    super::bad_request(format!("after {c:?} is not a cursor of this flow's events"))
                })?,
        };
        let end = (start + first).min(self.events.len());
        Ok(EventPage {
            items: self.events[start..end].to_vec(),
            next_cursor: (end < self.events.len()).then(|| end.to_string()),
            total: self.events.len() as u64,
        })
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct ArchivedPart {
    pub tenant: String,
    pub flow_id: String,
    pub part: u32,
    pub status: String,
    pub labels: Vec<Label>,
    pub archived_at: String,
    pub purge_at: String,
    pub first_event_time: String,
    pub last_event_time: String,
    pub event_count: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub object_uri: String,
    pub held: bool,
}

impl From<IndexedPart> for ArchivedPart {
    fn from(p: IndexedPart) -> ArchivedPart {
        ArchivedPart {
            labels: labels(&p.labels),
            tenant: p.tenant,
            flow_id: p.flow_id,
            part: p.part,
            status: p.status,
            archived_at: p.archived_at,
            purge_at: p.purge_at,
            first_event_time: p.first_event_time,
            last_event_time: p.last_event_time,
            event_count: p.event_count,
            raw_bytes: p.raw_bytes,
            stored_bytes: p.stored_bytes,
            object_uri: p.object_uri,
            held: p.held,
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct LiveFlow {
    pub tenant: String,
    pub flow_id: String,
    pub part: u32,
    pub status: String,
    pub labels: Vec<Label>,
    pub event_count: u64,
    pub first_event_time: String,
    pub last_event_time: String,
    pub due_at: Option<String>,
}

impl From<LiveItem> for LiveFlow {
    fn from(i: LiveItem) -> LiveFlow {
        LiveFlow {
            labels: labels(&i.labels),
            tenant: i.tenant,
            flow_id: i.flow_id,
            part: i.part,
            status: i.status,
            event_count: i.event_count,
            first_event_time: i.first_event_time,
            last_event_time: i.last_event_time,
            due_at: i.due_at,
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct StatsGroup {
    pub tenant: String,
    pub status: String,
    /// YYYY-MM-DD (UTC) of archival.
    pub day: String,
    pub flow_parts: u64,
    pub events: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}

impl From<StatsRow> for StatsGroup {
    fn from(r: StatsRow) -> StatsGroup {
        StatsGroup {
            tenant: r.tenant,
            status: r.status,
            day: r.day,
            flow_parts: r.flow_parts,
            events: r.events,
            raw_bytes: r.raw_bytes,
            stored_bytes: r.stored_bytes,
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct Stats {
    pub flow_parts: u64,
    pub events: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// stored / raw (0 when nothing is archived).
    pub compression_ratio: f64,
    pub groups: Vec<StatsGroup>,
    /// Live flows in the state store (all tenants for the admin token); null when
    /// this server does not hold the store.
    pub live_flows: Option<u64>,
    /// Flows on hold.
    pub holds: u64,
}

/// One audit record: an archive, purge, hold, release, erase or replay.
#[derive(SimpleObject, Clone, Debug)]
pub struct Activity {
    pub time: String,
    pub action: String,
    pub actor: String,
    pub tenant: Option<String>,
    pub flow_id: Option<String>,
    pub reason: Option<String>,
    pub object_uri: Option<String>,
    pub counts: Vec<Count>,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct Count {
    pub name: String,
    pub value: u64,
}

impl From<crate::audit::AuditRecord> for Activity {
    fn from(r: crate::audit::AuditRecord) -> Activity {
        Activity {
            time: r.time,
            action: r.action,
            actor: r.actor,
            tenant: r.tenant,
            flow_id: r.flow_id,
            reason: r.reason,
            object_uri: r.object_uri,
            counts: r
                .counts
                .into_iter()
                .map(|(name, value)| Count { name, value })
                .collect(),
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct VerifyResult {
    pub objects: u64,
    /// This flow's parts whose frames were checked.
    pub flow_parts: u64,
    pub ok: bool,
    /// Problems with this flow's parts or with the objects holding them.
    pub problems: Vec<String>,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct ReplayResult {
    pub target: String,
    pub parts: Vec<String>,
    pub events: u64,
    pub bytes: u64,
}
