//! Reading and verifying archive objects: footer → manifest → frames.
//!
//! Readers fetch only what they need: the footer and manifest with two ranged reads,
//! then one ranged read per flow part. Every frame is checked against `frame_sha256`
//! before it is decompressed, and its events against `events_sha256` afterwards, so a
//! reader returns the archived bytes or an error, never wrong data.

use std::io::Read;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::segment::{GZIP_FOOTER_LEN, ZSTD_FOOTER_LEN, ZSTD_SKIPPABLE_MAGIC};
use super::{hex_sha256, ArchiveError, ArchiveStore, FOOTER_MAGIC, FORMAT, FORMAT_V1};
use crate::config::Compression;
use crate::flow::Labels;
use compact_str::CompactString;

/// One entry of a segment's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestPart {
    pub tenant: CompactString,
    pub flow_id: CompactString,
    pub part: u32,
    pub status: String,
    #[serde(default)]
    pub labels: Labels,
    pub offset: u64,
    pub length: u64,
    pub frame_sha256: String,
    pub events_sha256: String,
    pub event_count: u64,
    pub raw_bytes: u64,
    pub first_event_time: String,
    pub last_event_time: String,
    pub purge_at: String,
    #[serde(default)]
    pub traceparent: Option<String>,
    /// v2: where the part's lines lie in the decompressed frame, in bytes, when its
    /// frame holds several parts. Absent: the part is the whole frame (always in v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_length: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub segment_id: String,
    pub tenant: String,
    pub compression: String,
    pub archived_at: String,
    pub parts: Vec<ManifestPart>,
    /// Offset of the manifest frame (not part of the JSON).
    #[serde(skip)]
    pub manifest_offset: u64,
    #[serde(skip)]
    pub object_size: u64,
}

/// A decoded, verified flow part.
#[derive(Debug, Clone)]
pub struct PartContents {
    pub header: Value,
    /// Event lines as stored, without their newlines.
    pub events: Vec<Vec<u8>>,
    pub trailer: Value,
}

/// One thing wrong with an object, naming the flow part when there is one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyProblem {
    pub key: String,
    pub flow: Option<String>,
    pub problem: String,
}

pub(crate) fn compression_of(key: &str) -> Compression {
    if key.ends_with(".gz") {
        Compression::Gzip
    } else {
        Compression::Zstd
    }
}

fn format_err(key: &str, detail: impl Into<String>) -> ArchiveError {
    ArchiveError::Format {
        key: key.to_string(),
        detail: detail.into(),
    }
}

pub(crate) fn decompress(
    key: &str,
    compression: Compression,
    bytes: &[u8],
) -> Result<Vec<u8>, ArchiveError> {
    let mut out = Vec::new();
    let result = match compression {
        Compression::Zstd => {
            zstd::stream::read::Decoder::new(bytes).and_then(|mut d| d.read_to_end(&mut out))
        }
        Compression::Gzip => flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out),
    };
    result.map_err(|e| format_err(key, format!("cannot decompress: {e}")))?;
    Ok(out)
}

/// Parses the footer (the last bytes of the object) into the manifest offset.
pub(crate) fn parse_footer(
    key: &str,
    compression: Compression,
    tail: &[u8],
) -> Result<u64, ArchiveError> {
    let payload = match compression {
        Compression::Zstd => {
            if tail.len() != ZSTD_FOOTER_LEN
                || tail[0..4] != ZSTD_SKIPPABLE_MAGIC.to_le_bytes()
                || tail[4..8] != 16u32.to_le_bytes()
            {
                return Err(format_err(key, "no flow-archive footer (skippable frame)"));
            }
            &tail[8..24]
        }
        Compression::Gzip => {
            if tail.len() != GZIP_FOOTER_LEN
                || tail[0..4] != [0x1f, 0x8b, 8, 0x04]
                || &tail[12..14] != b"FA"
            {
                return Err(format_err(
                    key,
                    "no flow-archive footer (gzip FEXTRA member)",
                ));
            }
            &tail[16..32]
        }
    };
    if &payload[..8] != FOOTER_MAGIC {
        return Err(format_err(key, "footer magic is not FLOWARCH"));
    }
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&payload[8..16]);
    let offset = u64::from_le_bytes(offset);
    // Every writer has produced exactly these bytes for this offset; a footer that
    // differs anywhere (a gzip member's unused fields, its empty body) is damage.
    if tail != super::segment::footer_bytes(compression, offset) {
        return Err(format_err(key, "footer is damaged"));
    }
    Ok(offset)
}

fn footer_len(compression: Compression) -> u64 {
    match compression {
        Compression::Zstd => ZSTD_FOOTER_LEN as u64,
        Compression::Gzip => GZIP_FOOTER_LEN as u64,
    }
}

/// Where the manifest frame starts and ends in an object of `size` bytes whose last
/// bytes are `tail` (the footer).
fn manifest_range(key: &str, size: u64, tail: &[u8]) -> Result<Range<u64>, ArchiveError> {
    let tail_at = size - footer_len(compression_of(key));
    let manifest_offset = parse_footer(key, compression_of(key), tail)?;
    if manifest_offset >= tail_at {
        return Err(format_err(key, "manifest offset points past the object"));
    }
    Ok(manifest_offset..tail_at)
}

/// The manifest in its (compressed) frame, of a known format.
fn parse_manifest(
    key: &str,
    frame: &[u8],
    manifest_offset: u64,
    size: u64,
) -> Result<Manifest, ArchiveError> {
    let text = decompress(key, compression_of(key), frame)?;
    let mut manifest: Manifest = serde_json::from_slice(text.trim_ascii_end())
        .map_err(|e| format_err(key, format!("manifest is not valid: {e}")))?;
    if manifest.format != FORMAT && manifest.format != FORMAT_V1 {
        return Err(format_err(key, format!("format {:?}", manifest.format)));
    }
    manifest.manifest_offset = manifest_offset;
    manifest.object_size = size;
    Ok(manifest)
}

/// Reads and parses an object's manifest with two ranged reads.
pub async fn read_manifest(store: &ArchiveStore, key: &str) -> Result<Manifest, ArchiveError> {
    let size = store.size(key).await?;
    let footer_len = footer_len(compression_of(key));
    if size < footer_len {
        return Err(format_err(key, format!("{size} bytes is too short")));
    }
    let tail = store.get_range(key, size - footer_len..size).await?;
    let range = manifest_range(key, size, &tail)?;
    let frame = store.get_range(key, range.clone()).await?;
    parse_manifest(key, &frame, range.start, size)
}

/// Reads an object held in memory the way a reader reads it from a store: the
/// footer, the manifest, then each part from its own frame with both checksums.
/// Any damage is an error, never a panic (property-tested and fuzzed).
pub fn read_object_bytes(
    key: &str,
    bytes: &[u8],
) -> Result<(Manifest, Vec<PartContents>), ArchiveError> {
    let size = bytes.len() as u64;
    let footer_len = footer_len(compression_of(key));
    if size < footer_len {
        return Err(format_err(key, format!("{size} bytes is too short")));
    }
    let range = manifest_range(key, size, &bytes[(size - footer_len) as usize..])?;
    let frame = &bytes[range.start as usize..range.end as usize];
    let manifest = parse_manifest(key, frame, range.start, size)?;
    let mut parts = Vec::with_capacity(manifest.parts.len());
    for part in &manifest.parts {
        let frame = part
            .offset
            .checked_add(part.length)
            .and_then(|end| {
                bytes.get(usize::try_from(part.offset).ok()?..usize::try_from(end).ok()?)
            })
            .ok_or_else(|| {
                format_err(key, format!("{}: frame outside the object", part.flow_id))
            })?;
        parts.push(decode_part(key, part, frame)?);
    }
    Ok((manifest, parts))
}

/// Reads one flow part with a ranged GET and verifies both of its checksums.
pub async fn read_part(
    store: &ArchiveStore,
    key: &str,
    part: &ManifestPart,
) -> Result<PartContents, ArchiveError> {
    let frame = store
        .get_range(key, part.offset..part.offset + part.length)
        .await?;
    decode_part(key, part, &frame)
}

pub(crate) fn decode_part(
    key: &str,
    part: &ManifestPart,
    frame: &[u8],
) -> Result<PartContents, ArchiveError> {
    let flow = format!("{}/{} part {}", part.tenant, part.flow_id, part.part);
    let actual = hex_sha256(Sha256::digest(frame));
    if actual != part.frame_sha256 {
        return Err(ArchiveError::Corrupted {
            key: key.to_string(),
            what: format!("frame_sha256 of {flow}"),
            expected: part.frame_sha256.clone(),
            actual,
        });
    }
    let whole = decompress(key, compression_of(key), frame)?;
    let text = match (part.plain_offset, part.plain_length) {
        (None, None) => &whole[..],
        (Some(start), Some(length)) => usize::try_from(start)
            .ok()
            .zip(usize::try_from(length).ok())
            .and_then(|(start, length)| whole.get(start..start.checked_add(length)?))
            .ok_or_else(|| {
                format_err(
                    key,
                    format!(
                        "{flow}: plain range {start}+{length} is outside its frame of {} bytes",
                        whole.len()
                    ),
                )
            })?,
        _ => {
            return Err(format_err(
                key,
                format!("{flow}: plain_offset and plain_length go together"),
            ))
        }
    };
    let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    if lines.len() < 2 {
        return Err(format_err(
            key,
            format!("{flow}: frame has no header and trailer"),
        ));
    }
    let parse = |line: &[u8], what: &str| -> Result<Value, ArchiveError> {
        serde_json::from_slice(line).map_err(|e| format_err(key, format!("{flow}: {what}: {e}")))
    };
    let header = parse(lines[0], "header")?;
    let trailer = parse(lines[lines.len() - 1], "trailer")?;
    if header["record"] != "header" || trailer["record"] != "trailer" {
        return Err(format_err(
            key,
            format!("{flow}: header/trailer records missing"),
        ));
    }
    let events: Vec<Vec<u8>> = lines[1..lines.len() - 1]
        .iter()
        .map(|l| l.to_vec())
        .collect();
    let mut hash = Sha256::new();
    for e in &events {
        hash.update(e);
        hash.update(b"\n");
    }
    let actual = hex_sha256(hash.finalize());
    if actual != part.events_sha256 {
        return Err(ArchiveError::Corrupted {
            key: key.to_string(),
            what: format!("events_sha256 of {flow}"),
            expected: part.events_sha256.clone(),
            actual,
        });
    }
    if events.len() as u64 != part.event_count {
        return Err(ArchiveError::Corrupted {
            key: key.to_string(),
            what: format!("event count of {flow}"),
            expected: part.event_count.to_string(),
            actual: events.len().to_string(),
        });
    }
    Ok(PartContents {
        header,
        events,
        trailer,
    })
}

/// Why a manifest entry cannot name a flow part, if it cannot: an identifier that
/// input validation would have refused (traversal, invisible characters, …), or a
/// tenant other than the object's. Such an entry is never indexed.
pub fn entry_problem(manifest: &Manifest, part: &ManifestPart) -> Option<String> {
    let checks = crate::flow::validate_identifier("tenant", &part.tenant)
        .and_then(|()| crate::flow::validate_identifier("flow_id", &part.flow_id));
    match checks {
        Err(e) => Some(format!("manifest entry with an invalid id: {e}")),
        Ok(()) if part.tenant != manifest.tenant => Some(format!(
            "manifest entry of tenant {:?} in an object of tenant {:?}",
            part.tenant, manifest.tenant
        )),
        Ok(()) => None,
    }
}

/// Checks everything checkable about one object: footer, manifest, that frames tile
/// the object, every frame and events checksum, event counts, and the object SHA-256
/// when the store kept it (S3 metadata) or the caller knows it. Returns the problems
/// found (empty when the object is sound) and the number of parts checked.
pub async fn verify_object(
    store: &ArchiveStore,
    key: &str,
    expected_sha256: Option<&str>,
) -> Result<(usize, Vec<VerifyProblem>), ArchiveError> {
    let mut problems = Vec::new();
    let problem = |flow: Option<String>, what: String| VerifyProblem {
        key: key.to_string(),
        flow,
        problem: what,
    };
    let manifest = match read_manifest(store, key).await {
        Ok(m) => m,
        Err(e) => return Ok((0, vec![problem(None, e.to_string())])),
    };
    let mut expected_offset = 0;
    // The frame last fetched: the parts packed into one frame (v2) follow each other
    // and share it.
    let mut frame: Option<((u64, u64), bytes::Bytes)> = None;
    for part in &manifest.parts {
        let flow = format!("{}/{} part {}", part.tenant, part.flow_id, part.part);
        if let Some(why) = entry_problem(&manifest, part) {
            problems.push(problem(Some(flow.escape_default().to_string()), why));
        }
        let place = (part.offset, part.length);
        let shared = frame.as_ref().is_some_and(|(at, _)| *at == place);
        if !shared && part.offset != expected_offset {
            problems.push(problem(
                Some(flow.clone()),
                format!(
                    "frame starts at {} but the previous one ends at {expected_offset}",
                    part.offset
                ),
            ));
        }
        expected_offset = part.offset + part.length;
        let bytes = match &frame {
            Some((at, bytes)) if *at == place => bytes.clone(),
            _ => match store
                .get_range(key, part.offset..part.offset + part.length)
                .await
            {
                Ok(bytes) => {
                    frame = Some((place, bytes.clone()));
                    bytes
                }
                Err(e) => {
                    problems.push(problem(Some(flow), e.to_string()));
                    continue;
                }
            },
        };
        if let Err(e) = decode_part(key, part, &bytes) {
            problems.push(problem(Some(flow), e.to_string()));
        }
    }
    if expected_offset != manifest.manifest_offset {
        problems.push(problem(
            None,
            "frames do not end where the manifest starts".into(),
        ));
    }
    let stored = store.object_sha256(key).await?;
    let (actual, metadata) = stored;
    for (source, expected) in [
        ("object metadata", metadata.as_deref()),
        ("flow.archived record", expected_sha256),
    ] {
        if let Some(expected) = expected {
            if expected != actual {
                problems.push(problem(
                    None,
                    format!("object SHA-256 {actual} does not match the {source} ({expected})"),
                ));
            }
        }
    }
    Ok((manifest.parts.len(), problems))
}
