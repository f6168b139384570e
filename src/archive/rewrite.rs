//! Rewriting an object without some of its parts (erasure).
//!
//! A frame that holds no removed part is copied byte for byte once its `frame_sha256`
//! is checked: a frame's bytes depend only on the parts in it, so the copy is what the
//! archiver would write for them. (Frames of writers that named the segment in each
//! header, `v1` and the first `v2`, are framed again instead, so no header names the
//! old object.) In a frame that holds a removed part, each kept part is read back with
//! its checksums verified and framed again exactly as the archiver would have written
//! it — same header, events, trailer and `purge_at` — so readers cannot tell a
//! rewritten object from an original one. A removed part's events are never copied.

use std::io::BufWriter;
use std::path::Path;

use serde_json::Value;

use super::reader::{compression_of, decode_part};
use super::{ArchiveError, ArchiveStore, Manifest, ManifestPart, PartContents, SegmentWriter};
use crate::flow::FlowStatus;
use crate::state::{ArchiveIntent, FlowMeta, IntentStage, Rewrite, SealedPart, UploadedSegment};

/// How a rewritten object is compressed: `archive.zstd_level` and
/// `archive.frame_target_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct Framing {
    pub zstd_level: i32,
    pub frame_target: u64,
}

/// Writes into `path` the segment `to` holding the parts of `manifest` (the object at
/// `old_key`) that `keep` accepts, in their order.
pub async fn rewrite_segment(
    objects: &ArchiveStore,
    old_key: &str,
    manifest: &Manifest,
    keep: impl Fn(&ManifestPart) -> bool,
    to: &Rewrite,
    framing: Framing,
    path: &Path,
) -> Result<UploadedSegment, ArchiveError> {
    let Framing {
        zstd_level,
        frame_target,
    } = framing;
    let io_err = |source| ArchiveError::Io {
        path: path.display().to_string(),
        source,
    };
    let intent = ArchiveIntent {
        id: to.segment_id.clone(),
        tenant: manifest.tenant.clone(),
        object_key: to.object_key.clone(),
        archived_at_ms: parse_ms(old_key, "archived_at", &manifest.archived_at)?,
        compression: compression_of(old_key),
        zstd_level,
        parts: Vec::new(),
        stage: IntentStage::Pending,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let file = std::fs::File::create(path).map_err(io_err)?;
    let mut writer = SegmentWriter::new(
        BufWriter::with_capacity(1 << 20, file),
        &intent,
        frame_target,
    );
    // One frame in memory at a time (the largest frame bounds memory), fetched once
    // for the parts it holds. Consecutive entries with the same place share a frame.
    let mut at = 0;
    while at < manifest.parts.len() {
        let place = (manifest.parts[at].offset, manifest.parts[at].length);
        let end = at
            + manifest.parts[at..]
                .iter()
                .take_while(|p| (p.offset, p.length) == place)
                .count();
        let group = &manifest.parts[at..end];
        at = end;
        if !group.iter().any(&keep) {
            continue;
        }
        let bytes = objects
            .get_range(old_key, place.0..place.0 + place.1)
            .await?;
        let first = decode_part(old_key, &group[0], &bytes)?;
        if group.iter().all(&keep) && first.header.get("segment_id").is_none() {
            writer.copy_frame(&bytes, group)?;
            continue;
        }
        let mut first = Some(first);
        for part in group.iter().filter(|p| keep(p)) {
            // The first part was decoded already to look at its header.
            let contents = match first.take() {
                Some(contents) if std::ptr::eq(part, &group[0]) => contents,
                _ => decode_part(old_key, part, &bytes)?,
            };
            let sealed = sealed_part(old_key, part, &contents)?;
            writer.write_part(&sealed, |sink| {
                for event in &contents.events {
                    sink(event).map_err(io_err)?;
                }
                Ok(())
            })?;
        }
    }
    let (buffered, uploaded) = writer.finish()?;
    let file = buffered.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    Ok(uploaded)
}

fn parse_ms(key: &str, what: &str, text: &str) -> Result<i64, ArchiveError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| ArchiveError::Format {
            key: key.to_string(),
            detail: format!("{what} {text:?}: {e}"),
        })
}

/// The sealed part an archived part was written from, recovered from its manifest
/// entry and trailer snapshot (everything the frame records).
fn sealed_part(
    key: &str,
    part: &ManifestPart,
    contents: &PartContents,
) -> Result<SealedPart, ArchiveError> {
    let snapshot = &contents.trailer["snapshot"];
    let format_err = |detail: String| ArchiveError::Format {
        key: key.to_string(),
        detail: format!(
            "{}/{} part {}: {detail}",
            part.tenant, part.flow_id, part.part
        ),
    };
    let status = |field: &str| -> Result<FlowStatus, ArchiveError> {
        serde_json::from_value(snapshot[field].clone())
            .map_err(|e| format_err(format!("snapshot.{field}: {e}")))
    };
    let text = |field: &str| -> Result<String, ArchiveError> {
        snapshot[field]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format_err(format!("snapshot.{field} is missing")))
    };
    let time = |field: &str| -> Result<i64, ArchiveError> { parse_ms(key, field, &text(field)?) };
    let optional = |field: &str| snapshot[field].as_str().map(str::to_string);
    let labels = match &snapshot["labels"] {
        Value::Null => part.labels.clone(),
        v => serde_json::from_value(v.clone())
            .map_err(|e| format_err(format!("snapshot.labels: {e}")))?,
    };
    Ok(SealedPart {
        meta: FlowMeta {
            tenant: part.tenant.clone(),
            flow_id: part.flow_id.clone(),
            part: part.part,
            status: status("last_status")?,
            event_type: text("last_event_type")?.into(),
            status_order: Vec::new(),
            labels,
            first_event_ms: time("first_event_time")?,
            last_event_ms: time("last_event_time")?,
            first_ingest_ms: time("first_ingest_time")?,
            last_ingest_ms: time("last_ingest_time")?,
            event_count: part.event_count,
            raw_bytes: part.raw_bytes,
            next_arrival: part.event_count,
            deadline_ms: None,
            traceparent: optional("traceparent"),
            tracestate: optional("tracestate"),
        },
        archive_status: status("status")?,
        purge_at_ms: parse_ms(key, "purge_at", &part.purge_at)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::read_part;
    use crate::config::{ArchiveConfig, Compression};

    fn part(flow: &str, events: &[&str]) -> SealedPart {
        SealedPart {
            meta: FlowMeta {
                tenant: "t".into(),
                flow_id: flow.into(),
                part: 2,
                status: FlowStatus::Failed,
                event_type: "x.failed".into(),
                status_order: Vec::new(),
                labels: [("team", "ü✓")].into_iter().collect(),
                first_event_ms: 1_000,
                last_event_ms: 2_000,
                first_ingest_ms: 3_000,
                last_ingest_ms: 4_000,
                event_count: events.len() as u64,
                raw_bytes: events.iter().map(|e| e.len() as u64).sum(),
                next_arrival: 0,
                deadline_ms: None,
                traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
                tracestate: None,
            },
            archive_status: FlowStatus::Failed,
            purge_at_ms: 86_400_000,
        }
    }

    /// The rewritten object equals, byte for byte, the object the archiver writes for
    /// the kept parts under the new id: a rewrite loses nothing a frame records.
    #[tokio::test]
    async fn rewrite_equals_a_fresh_write_of_the_kept_parts() {
        for compression in [Compression::Zstd, Compression::Gzip] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = ArchiveConfig {
                dir: dir.path().join("archive"),
                ..ArchiveConfig::default()
            };
            let objects = ArchiveStore::from_config(&cfg).unwrap();
            let ext = compression.extension();
            let parts = [
                (
                    part("a", &["{\"n\":1}", "{\"n\":2}"]),
                    vec!["{\"n\":1}", "{\"n\":2}"],
                ),
                (
                    part("gone", &["{\"secret\":true}"]),
                    vec!["{\"secret\":true}"],
                ),
                (part("c", &[]), vec![]),
            ];
            let write = |id: &str, key: &str, keep: &[usize]| {
                let intent = ArchiveIntent {
                    id: id.into(),
                    tenant: "t".into(),
                    object_key: key.into(),
                    archived_at_ms: 5_000,
                    compression,
                    zstd_level: 3,
                    parts: keep.iter().map(|i| parts[*i].0.clone()).collect(),
                    stage: IntentStage::Pending,
                };
                // Every part in one frame (zstd): the rewrite repacks what stays.
                let events: Vec<&[&str]> = keep.iter().map(|i| parts[*i].1.as_slice()).collect();
                crate::archive::segment::tests::write_object(&intent, &events, 1 << 20).0
            };
            let old_key = format!("t/purge=1970-01-02/old.{ext}");
            let new_key = format!("t/purge=1970-01-02/new.{ext}");
            let old = write("old", &old_key, &[0, 1, 2]);
            let path = dir.path().join("archive").join(&old_key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &old).unwrap();

            let manifest = crate::archive::read_manifest(&objects, &old_key)
                .await
                .unwrap();
            let out = dir.path().join("new");
            let uploaded = rewrite_segment(
                &objects,
                &old_key,
                &manifest,
                |p| p.flow_id != "gone",
                &Rewrite {
                    segment_id: "new".into(),
                    object_key: new_key.clone(),
                },
                Framing {
                    zstd_level: 3,
                    frame_target: 1 << 20,
                },
                &out,
            )
            .await
            .unwrap();
            let rewritten = std::fs::read(&out).unwrap();
            assert_eq!(
                rewritten,
                write("new", &new_key, &[0, 2]),
                "{compression:?}"
            );
            assert_eq!(uploaded.locations.len(), 2);
            assert!(!String::from_utf8_lossy(&rewritten).contains("secret"));

            // And it reads back through the normal path.
            std::fs::write(dir.path().join("archive").join(&new_key), &rewritten).unwrap();
            let m = crate::archive::read_manifest(&objects, &new_key)
                .await
                .unwrap();
            assert_eq!(m.segment_id, "new");
            let back = read_part(&objects, &new_key, &m.parts[0]).await.unwrap();
            assert_eq!(
                back.events,
                vec![b"{\"n\":1}".to_vec(), b"{\"n\":2}".to_vec()]
            );
        }
    }

    /// Frames without the erased part are copied byte for byte; the one holding it is
    /// framed again without it, and the result reads back part by part.
    #[tokio::test]
    async fn frames_without_the_erased_part_are_copied_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ArchiveConfig {
            dir: dir.path().join("archive"),
            ..ArchiveConfig::default()
        };
        let objects = ArchiveStore::from_config(&cfg).unwrap();
        let flows = ["a", "b", "gone", "c", "d", "e"];
        let events: Vec<Vec<String>> = flows
            .iter()
            .map(|f| {
                (0..20)
                    .map(|i| {
                        format!(
                            "{{\"flow\":\"{f}\",\"i\":{i},\"pad\":\"{}\"}}",
                            "x".repeat(40)
                        )
                    })
                    .collect()
            })
            .collect();
        let intent = ArchiveIntent {
            id: "old".into(),
            tenant: "t".into(),
            object_key: "t/old.jsonl.zst".into(),
            archived_at_ms: 5_000,
            compression: Compression::Zstd,
            zstd_level: 3,
            parts: flows
                .iter()
                .zip(&events)
                .map(|(f, e)| {
                    let refs: Vec<&str> = e.iter().map(String::as_str).collect();
                    part(f, &refs)
                })
                .collect(),
            stage: IntentStage::Pending,
        };
        // ~1.4 KB per part: frames of two parts each, [a b] [gone c] [d e].
        let refs: Vec<&[String]> = events.iter().map(Vec::as_slice).collect();
        let (old, _) = crate::archive::segment::tests::write_object(&intent, &refs, 2000);
        let old_key = "t/old.jsonl.zst";
        std::fs::create_dir_all(dir.path().join("archive/t")).unwrap();
        std::fs::write(dir.path().join("archive").join(old_key), &old).unwrap();
        let manifest = crate::archive::read_manifest(&objects, old_key)
            .await
            .unwrap();
        let frames: Vec<(u64, u64)> = manifest
            .parts
            .iter()
            .map(|p| (p.offset, p.length))
            .collect();
        assert_eq!(
            (frames[0], frames[2], frames[4]),
            (frames[1], frames[3], frames[5])
        );

        let out = dir.path().join("new");
        rewrite_segment(
            &objects,
            old_key,
            &manifest,
            |p| p.flow_id != "gone",
            &Rewrite {
                segment_id: "new".into(),
                object_key: "t/new.jsonl.zst".into(),
            },
            Framing {
                zstd_level: 3,
                frame_target: 2000,
            },
            &out,
        )
        .await
        .unwrap();
        let new = std::fs::read(&out).unwrap();
        let frame =
            |(offset, length): (u64, u64)| &old[offset as usize..(offset + length) as usize];
        let contains = |needle: &[u8]| new.windows(needle.len()).any(|w| w == needle);
        assert!(contains(frame(frames[0])), "[a b] copied");
        assert!(contains(frame(frames[4])), "[d e] copied");
        assert!(!contains(frame(frames[2])), "[gone c] framed again");
        std::fs::write(dir.path().join("archive/t/new.jsonl.zst"), &new).unwrap();
        let m = crate::archive::read_manifest(&objects, "t/new.jsonl.zst")
            .await
            .unwrap();
        let kept: Vec<&str> = m.parts.iter().map(|p| p.flow_id.as_str()).collect();
        assert_eq!(kept, vec!["a", "b", "c", "d", "e"]);
        for (p, flow) in m.parts.iter().zip(["a", "b", "c", "d", "e"]) {
            let back = read_part(&objects, "t/new.jsonl.zst", p).await.unwrap();
            let i = flows.iter().position(|f| *f == flow).unwrap();
            let want: Vec<Vec<u8>> = events[i].iter().map(|e| e.as_bytes().to_vec()).collect();
            assert_eq!(back.events, want, "{flow}");
        }
        let whole = String::from_utf8(zstd::decode_all(&new[..]).unwrap()).unwrap();
        assert!(!whole.contains("\"gone\""));
    }
}
