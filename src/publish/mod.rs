//! Publishing `flow.archived` events (`docs/design.md`, "Published records") and
//! dead-letter records ("Input events").
//!
//! [`Publisher`] and [`DeadLetterSink`] are the seams; the file implementations write
//! JSON Lines with fsync; the Kafka ones write to topics.
//!
//! Published events are CloudEvents in structured mode whose `data` follows
//! `schemas/flow_archived.avsc` field for field. The event `id` is deterministic
//! (`{tenant}/{flow_id}/{part}/archived`), so it doubles as a dedupe key for consumers
//! and for recovery (see [`Publisher::already_published`]).

pub mod encoding;
mod file;
mod kafka;
mod nats;

use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use file::{FileDeadLetters, FilePublisher, JsonLinesFile};
pub use kafka::{KafkaDeadLetters, KafkaEventWriter, KafkaPublisher};
pub use nats::{NatsDeadLetters, NatsEventWriter, NatsPublisher};

use crate::event::RejectReason;
use crate::state::{ArchiveIntent, UploadedSegment};
use crate::time::rfc3339_ms;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot encode record: {0}")]
    Encode(String),
    #[error("{0}")]
    Broker(String),
}

/// Awaits every delivery of one `flow.archived` batch, failing on the first error.
///
/// Test hook: with the `mid-publish` failpoint armed, the first half is awaited (the
/// broker holds it) before the failpoint, so a crash there leaves a batch half
/// published, as a crash between two broker acks would.
async fn acknowledged<E>(
    mut deliveries: Vec<impl std::future::Future<Output = Result<(), E>>>,
) -> Result<(), E> {
    if crate::failpoint::armed("mid-publish") && deliveries.len() > 1 {
        let rest = deliveries.split_off(deliveries.len() / 2);
        for delivery in futures::future::join_all(deliveries).await {
            delivery?;
        }
        crate::failpoint::hit("mid-publish");
        deliveries = rest;
    }
    for delivery in futures::future::join_all(deliveries).await {
        delivery?;
    }
    Ok(())
}

/// CloudEvents `type` of the archived event.
pub const ARCHIVED_TYPE: &str = "io.flowarchiver.flow.archived";
/// CloudEvents `type` of a flow part removed from the archive.
pub const PURGED_TYPE: &str = "io.flowarchiver.flow.purged";
/// CloudEvents `type` of a legal hold placed or released.
pub const HOLD_TYPE: &str = "io.flowarchiver.flow.hold";
pub const PURGED_SCHEMA: &str = "urn:flow-archiver:schema:flow_purged:1";
pub const HOLD_SCHEMA: &str = "urn:flow-archiver:schema:flow_hold:1";
/// CloudEvents `source` of everything this service publishes.
pub const EVENT_SOURCE: &str = "flow-archiver";
pub const ARCHIVED_SCHEMA: &str = "urn:flow-archiver:schema:flow_archived:1";

/// The `data` of a `flow.archived` event; mirrors `schemas/flow_archived.avsc`.
/// Times are microseconds since the epoch (Avro `timestamp-micros`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowArchived {
    pub format: String,
    pub tenant: String,
    pub flow_id: String,
    pub part: i32,
    pub status: String,
    pub labels: BTreeMap<String, String>,
    pub event_count: i64,
    pub raw_bytes: i64,
    pub stored_bytes: i64,
    pub first_event_time: i64,
    pub last_event_time: i64,
    pub archived_at: i64,
    pub purge_at: i64,
    pub object_uri: String,
    pub object_key: String,
    pub segment_id: String,
    pub compression: String,
    pub offset: i64,
    pub length: i64,
    pub frame_sha256: String,
    pub events_sha256: String,
    pub object_sha256: String,
    pub traceparent: Option<String>,
    /// `flow-archive/v2`: the part's place in its decompressed frame, when the frame
    /// holds several parts; absent in records written before v2.
    #[serde(default)]
    pub plain_offset: Option<i64>,
    #[serde(default)]
    pub plain_length: Option<i64>,
}

impl FlowArchived {
    /// The record of one part as its object's manifest describes it (the manifest keeps
    /// every field but the object's own location and SHA-256).
    pub fn from_manifest(
        manifest: &crate::archive::Manifest,
        part: &crate::archive::ManifestPart,
        object_uri: &str,
        object_key: &str,
        object_sha256: &str,
    ) -> FlowArchived {
        // Manifest times are RFC 3339 with milliseconds.
        let micros = |text: &str| {
            chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| t.timestamp_millis() * 1000)
                .unwrap_or(0)
        };
        FlowArchived {
            format: manifest.format.clone(),
            tenant: part.tenant.to_string(),
            flow_id: part.flow_id.to_string(),
            part: part.part as i32,
            status: part.status.clone(),
            labels: part.labels.to_map(),
            event_count: part.event_count as i64,
            raw_bytes: part.raw_bytes as i64,
            stored_bytes: part.length as i64,
            first_event_time: micros(&part.first_event_time),
            last_event_time: micros(&part.last_event_time),
            archived_at: micros(&manifest.archived_at),
            purge_at: micros(&part.purge_at),
            object_uri: object_uri.to_string(),
            object_key: object_key.to_string(),
            segment_id: manifest.segment_id.clone(),
            compression: manifest.compression.clone(),
            offset: part.offset as i64,
            length: part.length as i64,
            frame_sha256: part.frame_sha256.clone(),
            events_sha256: part.events_sha256.clone(),
            object_sha256: object_sha256.to_string(),
            traceparent: part.traceparent.clone(),
            plain_offset: part.plain_offset.map(|o| o as i64),
            plain_length: part.plain_length.map(|l| l as i64),
        }
    }
}

/// The `data` of a `flow.purged` event; mirrors `schemas/flow_purged.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowPurged {
    pub tenant: String,
    pub flow_id: String,
    pub part: i32,
    /// `retention` or `erasure`.
    pub reason: String,
    pub object_uri: String,
    pub segment_id: String,
    pub purged_at: i64,
    pub actor: Option<String>,
}

/// The `data` of a `flow.hold` event (a hold placed or released); mirrors
/// `schemas/flow_hold.avsc`. Record key `{tenant}/{flow_id}/hold`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowHold {
    pub tenant: String,
    pub flow_id: String,
    pub held: bool,
    pub reason: String,
    pub actor: String,
    pub at: i64,
}

/// The `data` of a published event. Serialized as the inner record (the CloudEvents
/// `type` says which); read back by trying each shape, whose required fields differ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
// Short-lived, built per publish batch; boxing would only add an allocation per event.
#[allow(clippy::large_enum_variant)]
pub enum EventData {
    Archived(FlowArchived),
    Purged(FlowPurged),
    Hold(FlowHold),
}

impl EventData {
    pub fn tenant(&self) -> &str {
        match self {
            EventData::Archived(d) => &d.tenant,
            EventData::Purged(d) => &d.tenant,
            EventData::Hold(d) => &d.tenant,
        }
    }

    pub fn flow_id(&self) -> &str {
        match self {
            EventData::Archived(d) => &d.flow_id,
            EventData::Purged(d) => &d.flow_id,
            EventData::Hold(d) => &d.flow_id,
        }
    }

    /// The flow part, for per-part events.
    pub fn part(&self) -> Option<u32> {
        match self {
            EventData::Archived(d) => Some(d.part as u32),
            EventData::Purged(d) => Some(d.part as u32),
            EventData::Hold(_) => None,
        }
    }
}

/// One CloudEvent to publish, in structured mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub subject: String,
    pub time: String,
    pub datacontenttype: String,
    pub dataschema: String,
    pub tenant: String,
    /// `{tenant}/{flow_id}/{part}`: the record key on brokers.
    pub partitionkey: String,
    /// CloudEvents distributed-tracing extension: the context of the span that archived
    /// this part, so consumers continue its trace (the flow's own trace is
    /// `data.traceparent`). Absent when traces are off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub data: EventData,
}

impl PublishedEvent {
    /// The `flow.archived` events for a verified intent, one per part, in part order.
    pub fn archived(
        intent: &ArchiveIntent,
        upload: &UploadedSegment,
        object_uri: &str,
    ) -> Vec<Self> {
        intent
            .parts
            .iter()
            .zip(&upload.locations)
            .map(|(part, loc)| {
                let m = &part.meta;
                let key = format!("{}/{}/{}", m.tenant, m.flow_id, m.part);
                PublishedEvent {
                    specversion: "1.0".into(),
                    id: format!("{key}/archived"),
                    source: EVENT_SOURCE.into(),
                    event_type: ARCHIVED_TYPE.into(),
                    subject: m.flow_id.to_string(),
                    time: rfc3339_ms(intent.archived_at_ms),
                    datacontenttype: "application/json".into(),
                    dataschema: ARCHIVED_SCHEMA.into(),
                    tenant: m.tenant.to_string(),
                    partitionkey: key,
                    traceparent: None,
                    data: EventData::Archived(FlowArchived {
                        format: crate::archive::FORMAT.into(),
                        tenant: m.tenant.to_string(),
                        flow_id: m.flow_id.to_string(),
                        part: m.part as i32,
                        status: part.archive_status.as_str().into(),
                        labels: m.labels.to_map(),
                        event_count: loc.event_count as i64,
                        raw_bytes: loc.raw_bytes as i64,
                        stored_bytes: loc.length as i64,
                        first_event_time: m.first_event_ms * 1000,
                        last_event_time: m.last_event_ms * 1000,
                        archived_at: intent.archived_at_ms * 1000,
                        purge_at: part.purge_at_ms * 1000,
                        object_uri: object_uri.to_string(),
                        object_key: intent.object_key.clone(),
                        segment_id: intent.id.clone(),
                        compression: intent.compression.as_str().into(),
                        offset: loc.offset as i64,
                        length: loc.length as i64,
                        frame_sha256: loc.frame_sha256.clone(),
                        events_sha256: loc.events_sha256.clone(),
                        object_sha256: upload.object_sha256.clone(),
                        traceparent: m.traceparent.clone(),
                        plain_offset: loc.plain_offset.map(|o| o as i64),
                        plain_length: loc.plain_length.map(|l| l as i64),
                    }),
                }
            })
            .collect()
    }

    /// The `flow.archived` event of a part moved to another object (an erasure rewrote
    /// the one it was in), built from the new object's manifest. Same record key as
    /// the original (a compacted log keeps the latest location); its id names the new
    /// segment, so it is not mistaken for a duplicate of the original.
    pub fn relocated(
        manifest: &crate::archive::Manifest,
        part: &crate::archive::ManifestPart,
        object_uri: &str,
        object_key: &str,
        object_sha256: &str,
    ) -> Self {
        let key = format!("{}/{}/{}", part.tenant, part.flow_id, part.part);
        PublishedEvent {
            specversion: "1.0".into(),
            id: format!("{key}/archived/{}", manifest.segment_id),
            source: EVENT_SOURCE.into(),
            event_type: ARCHIVED_TYPE.into(),
            subject: part.flow_id.to_string(),
            time: manifest.archived_at.clone(),
            datacontenttype: "application/json".into(),
            dataschema: ARCHIVED_SCHEMA.into(),
            tenant: part.tenant.to_string(),
            partitionkey: key,
            traceparent: None,
            data: EventData::Archived(FlowArchived::from_manifest(
                manifest,
                part,
                object_uri,
                object_key,
                object_sha256,
            )),
        }
    }

    /// The `flow.purged` event of one flow part.
    pub fn purged(data: FlowPurged) -> Self {
        let key = format!("{}/{}/{}", data.tenant, data.flow_id, data.part);
        PublishedEvent {
            specversion: "1.0".into(),
            id: format!("{key}/purged"),
            source: EVENT_SOURCE.into(),
            event_type: PURGED_TYPE.into(),
            subject: data.flow_id.clone(),
            time: rfc3339_ms(data.purged_at / 1000),
            datacontenttype: "application/json".into(),
            dataschema: PURGED_SCHEMA.into(),
            tenant: data.tenant.clone(),
            partitionkey: key,
            traceparent: None,
            data: EventData::Purged(data),
        }
    }

    /// The `flow.hold` event of a hold placed or released. Its id names the change
    /// (time included), its key the flow's hold, so a compacted log keeps the latest.
    pub fn hold(data: FlowHold) -> Self {
        let key = format!("{}/{}/hold", data.tenant, data.flow_id);
        PublishedEvent {
            specversion: "1.0".into(),
            id: format!("{key}/{}", data.at),
            source: EVENT_SOURCE.into(),
            event_type: HOLD_TYPE.into(),
            subject: data.flow_id.clone(),
            time: rfc3339_ms(data.at / 1000),
            datacontenttype: "application/json".into(),
            dataschema: HOLD_SCHEMA.into(),
            tenant: data.tenant.clone(),
            partitionkey: key,
            traceparent: None,
            data: EventData::Hold(data),
        }
    }
}

/// Where `flow.archived` events go.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes the events and returns once every one is durable (fsynced, or
    /// acknowledged by the broker). On error, some may have been published: the caller
    /// retries, and recovery consults [`Publisher::already_published`].
    async fn publish(&self, events: &[PublishedEvent]) -> Result<(), PublishError>;

    /// Of `ids`, those already durably published. Consulted only when resuming an
    /// intent whose publish step may have run. A publisher that cannot tell returns
    /// the empty set; consumers then dedupe by event id (the broker record key).
    async fn already_published(&self, ids: &[String]) -> Result<HashSet<String>, PublishError>;

    /// Where events go, for spans: `messaging.system` and the destination name.
    fn destination(&self) -> (&'static str, String);
}

/// A refused input record, with everything needed to replay or inspect it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// `{source}@{position}`: stable across re-reads of the same input.
    pub id: String,
    pub reason: RejectReason,
    pub detail: String,
    /// Input name, e.g. `file:/path` or `stdin`.
    pub source: String,
    /// Position in the input (byte offset of the record for files).
    pub position: String,
    pub received_at: String,
    /// Original bytes, base64; cut at `input.max_event_bytes` when `truncated`.
    pub payload_base64: String,
    /// The original bytes as text, when they are valid UTF-8.
    pub payload_text: Option<String>,
    pub payload_bytes: u64,
    pub truncated: bool,
    pub headers: BTreeMap<String, String>,
    /// The broker record key, base64, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    /// The record as received (exact key, value and headers), for destinations that
    /// forward it.
    #[serde(skip)]
    pub original: crate::source::RawRecord,
}

/// Where refused input goes.
#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    /// Writes the records durably before returning: the source may acknowledge the
    /// originals afterwards.
    async fn send(&self, letters: &[DeadLetter]) -> Result<(), PublishError>;
}
