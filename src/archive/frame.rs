//! A frame's plaintext: for each part, a header record, the part's events one per
//! line, and a trailer record; and the manifest record. Field order and meaning are
//! in `schemas/ARCHIVE_FORMAT.md`.

use std::io::{self, Write};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{hex_sha256, ArchiveError, ManifestPart};
use crate::flow::{FlowStatus, Labels};
use crate::state::SealedPart;
use crate::time::rfc3339_ms;

/// What a frame's events added up to.
pub(super) struct FrameTally {
    pub(super) count: u64,
    pub(super) raw_bytes: u64,
    pub(super) events_sha256: String,
}

/// Writes a frame's plaintext — header, the streamed events, trailer — to `out`,
/// hashing and counting the events on the way.
pub(super) fn write_frame_content(
    out: &mut dyn Write,
    header: &HeaderRecord<'_>,
    part: &SealedPart,
    events: impl FnOnce(&mut dyn FnMut(&[u8]) -> io::Result<()>) -> Result<(), ArchiveError>,
    io_err: &dyn Fn(io::Error) -> ArchiveError,
) -> Result<FrameTally, ArchiveError> {
    let mut hash = Sha256::new();
    let (mut count, mut raw_bytes) = (0u64, 0u64);
    // The records are built in a buffer and written once: serializing straight into
    // `out` made a dynamic call per key and string piece.
    let mut line = Vec::with_capacity(1024);
    write_line(&mut line, header).map_err(io_err)?;
    out.write_all(&line).map_err(io_err)?;
    events(&mut |event: &[u8]| {
        out.write_all(event)?;
        out.write_all(b"\n")?;
        hash.update(event);
        hash.update(b"\n");
        count += 1;
        raw_bytes += event.len() as u64;
        Ok(())
    })?;
    let events_sha256 = hex_sha256(hash.finalize());
    line.clear();
    write_line(&mut line, &trailer_record(part, count, raw_bytes)).map_err(io_err)?;
    out.write_all(&line).map_err(io_err)?;
    Ok(FrameTally {
        count,
        raw_bytes,
        events_sha256,
    })
}

fn trailer_record(part: &SealedPart, count: u64, raw_bytes: u64) -> TrailerRecord<'_> {
    let m = &part.meta;
    TrailerRecord {
        record: "trailer",
        event_count: count,
        raw_bytes,
        snapshot: SnapshotRecord {
            status: part.archive_status,
            last_status: m.status,
            last_event_type: &m.event_type,
            labels: &m.labels,
            first_event_time: rfc3339_ms(m.first_event_ms),
            last_event_time: rfc3339_ms(m.last_event_ms),
            first_ingest_time: rfc3339_ms(m.first_ingest_ms),
            last_ingest_time: rfc3339_ms(m.last_ingest_ms),
            traceparent: m.traceparent.as_deref(),
            tracestate: m.tracestate.as_deref(),
        },
    }
}

// The records of a frame, field order as in schemas/ARCHIVE_FORMAT.md. Each fact is
// written once per part: the header names the part, the trailer holds what was read
// (count, size, snapshot), the manifest holds the checksums and where things are.
// At 3 events per flow, the digest and the fields v1 repeated here cost about as much
// as the events themselves (docs/performance.md, "Where the stored bytes went").
#[derive(Serialize)]
pub(super) struct HeaderRecord<'a> {
    pub(super) record: &'static str,
    pub(super) tenant: &'a str,
    pub(super) flow_id: &'a str,
    pub(super) part: u32,
}

#[derive(Serialize)]
struct TrailerRecord<'a> {
    record: &'static str,
    event_count: u64,
    raw_bytes: u64,
    snapshot: SnapshotRecord<'a>,
}

#[derive(Serialize)]
struct SnapshotRecord<'a> {
    status: FlowStatus,
    last_status: FlowStatus,
    last_event_type: &'a str,
    labels: &'a Labels,
    first_event_time: String,
    last_event_time: String,
    first_ingest_time: String,
    last_ingest_time: String,
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

#[derive(Serialize)]
pub(super) struct ManifestRecord<'a> {
    pub(super) record: &'static str,
    pub(super) format: &'static str,
    pub(super) segment_id: &'a str,
    pub(super) tenant: &'a str,
    pub(super) compression: &'static str,
    pub(super) archived_at: String,
    pub(super) parts: &'a [ManifestPart],
}

pub(super) fn write_line(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}
