//! Writing segments: flow parts packed into compressed frames (a frame holds whole
//! parts; a large part has its own), then the manifest frame and the footer (layout in
//! the parent module and `schemas/ARCHIVE_FORMAT.md`). Each frame's plaintext is
//! written by [`super::frame`].
//!
//! The writer streams: events go from the state store through the compressor to the
//! output one at a time, so a flow larger than memory is fine. Output bytes are a pure
//! function of the intent and the stored events, so re-running an intent after a
//! crash rewrites the same object under the same key.

use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::frame::{write_frame_content, write_line, FrameTally, HeaderRecord, ManifestRecord};
use super::ManifestPart;
use super::{hex_sha256, ArchiveError, FORMAT};
use crate::config::Compression;

use crate::state::{
    ArchiveIntent, FlowMeta, PartLocation, SealedPart, StateStore, UploadedSegment,
};
use crate::time::rfc3339_ms;

/// First 8 bytes of the footer payload.
pub const FOOTER_MAGIC: &[u8; 8] = b"FLOWARCH";
/// zstd skippable frame magic used for the footer (range 0x184D2A50..=0x184D2A5F).
pub(crate) const ZSTD_SKIPPABLE_MAGIC: u32 = 0x184D_2A5F;
pub(crate) const ZSTD_FOOTER_LEN: usize = 24;
pub(crate) const GZIP_FOOTER_LEN: usize = 42;

/// Counts, and hashes everything written (object hash) and the current frame.
struct Hashing<W> {
    inner: W,
    position: u64,
    object: Sha256,
    frame: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.object.update(&buf[..n]);
        self.frame.update(&buf[..n]);
        self.position += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum FrameEncoder<'a, W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, &'a mut Hashing<W>>),
    Gzip(flate2::write::GzEncoder<&'a mut Hashing<W>>),
}

impl<'a, W: Write> FrameEncoder<'a, W> {
    fn new(out: &'a mut Hashing<W>, compression: Compression, level: i32) -> io::Result<Self> {
        Ok(match compression {
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, level)?;
                // The frame checksum lets `zstd -dc` and our reader detect damage even
                // without the manifest.
                e.include_checksum(true)?;
                FrameEncoder::Zstd(e)
            }
            // GzEncoder writes mtime 0 and OS 255, so output is deterministic.
            Compression::Gzip => FrameEncoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::new(6),
            )),
        })
    }

    fn finish(self) -> io::Result<()> {
        match self {
            FrameEncoder::Zstd(e) => e.finish().map(drop),
            FrameEncoder::Gzip(e) => e.finish().map(drop),
        }
    }
}

impl<W: Write> Write for FrameEncoder<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            FrameEncoder::Zstd(e) => e.write(buf),
            FrameEncoder::Gzip(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            FrameEncoder::Zstd(e) => e.flush(),
            FrameEncoder::Gzip(e) => e.flush(),
        }
    }
}

/// Builds one archive object, part by part.
pub struct SegmentWriter<W: Write> {
    out: Hashing<W>,
    compression: Compression,
    level: i32,
    segment_id: String,
    tenant: String,
    archived_at_ms: i64,
    manifest: Vec<ManifestPart>,
    locations: Vec<PartLocation>,
    /// Reused across small zstd frames: a fresh context per frame costs more than
    /// compressing a typical flow.
    compressor: Option<zstd::bulk::Compressor<'static>>,
    plain: Vec<u8>,
    /// The compressed frame, reused like `plain`.
    frame: Vec<u8>,
    /// Raw bytes after which a frame of packed parts is closed; 0 frames every part
    /// on its own.
    frame_target: u64,
    /// Parts whose lines are in `plain`, waiting for their frame to be written.
    waiting: Vec<(ManifestPart, PartLocation)>,
}

/// Parts up to this much raw history are framed in memory with a reused compressor
/// and a known content size; larger parts stream through a streaming encoder.
pub(crate) const IN_MEMORY_PART_BYTES: u64 = 4 << 20;

impl<W: Write> SegmentWriter<W> {
    /// A writer that packs consecutive parts into frames of about `frame_target` raw
    /// bytes (0: a frame per part).
    pub fn new(out: W, intent: &ArchiveIntent, frame_target: u64) -> Self {
        SegmentWriter {
            out: Hashing {
                inner: out,
                position: 0,
                object: Sha256::new(),
                frame: Sha256::new(),
            },
            compression: intent.compression,
            level: intent.zstd_level,
            segment_id: intent.id.clone(),
            tenant: intent.tenant.clone(),
            archived_at_ms: intent.archived_at_ms,
            manifest: Vec::new(),
            locations: Vec::new(),
            compressor: None,
            plain: Vec::new(),
            frame: Vec::new(),
            frame_target,
            waiting: Vec::new(),
        }
    }

    /// Compresses `self.plain` as one zstd frame with the reused context.
    fn write_small_zstd_frame(&mut self) -> io::Result<()> {
        let compressor = match &mut self.compressor {
            Some(c) => c,
            None => {
                let mut c = zstd::bulk::Compressor::new(self.level)?;
                c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
                self.compressor.insert(c)
            }
        };
        self.frame.clear();
        self.frame
            .reserve(zstd::zstd_safe::compress_bound(self.plain.len()));
        compressor.compress_to_buffer(&self.plain, &mut self.frame)?;
        self.out.write_all(&self.frame)
    }

    /// Writes one part. `events` streams the part's events (without newlines) into
    /// the sink it is given, in order. A small zstd part joins the frame being packed;
    /// a large one, or any gzip part, gets a frame of its own.
    pub fn write_part(
        &mut self,
        part: &SealedPart,
        events: impl FnOnce(&mut dyn FnMut(&[u8]) -> io::Result<()>) -> Result<(), ArchiveError>,
    ) -> Result<(), ArchiveError> {
        let m = &part.meta;
        let segment_id = self.segment_id.clone();
        let io_err = |source| ArchiveError::Io {
            path: format!("segment {segment_id}"),
            source,
        };
        let header = HeaderRecord {
            record: "header",
            tenant: &m.tenant,
            flow_id: &m.flow_id,
            part: m.part,
        };
        let packed = self.compression == crate::config::Compression::Zstd
            && m.raw_bytes <= IN_MEMORY_PART_BYTES;
        if packed {
            let start = self.plain.len() as u64;
            let mut plain = std::mem::take(&mut self.plain);
            let tally = write_frame_content(&mut plain, &header, part, events, &io_err);
            self.plain = plain;
            let tally = tally?;
            let length = self.plain.len() as u64 - start;
            self.wait_for_frame(part, tally, Some((start, length)))?;
            if self.plain.len() as u64 >= self.frame_target {
                self.write_packed_frame().map_err(io_err)?;
            }
        } else {
            self.write_packed_frame().map_err(io_err)?;
            let offset = self.out.position;
            self.out.frame = Sha256::new();
            let mut enc =
                FrameEncoder::new(&mut self.out, self.compression, self.level).map_err(io_err)?;
            let tally = write_frame_content(&mut enc, &header, part, events, &io_err)?;
            enc.finish().map_err(io_err)?;
            self.wait_for_frame(part, tally, None)?;
            self.place_waiting(offset);
        }
        Ok(())
    }

    /// Appends `frame`, a whole frame of another object holding exactly `parts` (its
    /// manifest entries there), byte for byte: erasure keeps the frames it does not
    /// touch. The frame must hash to the entries' `frame_sha256`.
    pub fn copy_frame(&mut self, frame: &[u8], parts: &[ManifestPart]) -> Result<(), ArchiveError> {
        let segment_id = self.segment_id.clone();
        let io_err = |source| ArchiveError::Io {
            path: format!("segment {segment_id}"),
            source,
        };
        self.write_packed_frame().map_err(io_err)?;
        let offset = self.out.position;
        self.out.frame = Sha256::new();
        self.out.write_all(frame).map_err(io_err)?;
        for part in parts {
            let location = PartLocation {
                offset: 0,
                length: 0,
                frame_sha256: String::new(),
                events_sha256: part.events_sha256.clone(),
                event_count: part.event_count,
                raw_bytes: part.raw_bytes,
                plain_offset: part.plain_offset,
                plain_length: part.plain_length,
            };
            self.waiting.push((part.clone(), location));
        }
        let expected = parts.first().map(|p| p.frame_sha256.clone());
        self.place_waiting(offset);
        match (expected, self.manifest.last()) {
            (Some(expected), Some(placed)) if placed.frame_sha256 != expected => {
                Err(ArchiveError::Corrupted {
                    key: format!("segment {}", self.segment_id),
                    what: format!("copied frame of {}/{}", placed.tenant, placed.flow_id),
                    expected,
                    actual: placed.frame_sha256.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Records a written part until its frame's place and checksum are known.
    fn wait_for_frame(
        &mut self,
        part: &SealedPart,
        tally: FrameTally,
        plain: Option<(u64, u64)>,
    ) -> Result<(), ArchiveError> {
        let m = &part.meta;
        let FrameTally {
            count,
            raw_bytes,
            events_sha256,
        } = tally;
        if count != m.event_count {
            return Err(ArchiveError::Inconsistent {
                tenant: m.tenant.to_string(),
                flow_id: m.flow_id.to_string(),
                part: m.part,
                expected: m.event_count,
                found: count,
            });
        }
        let location = PartLocation {
            offset: 0,
            length: 0,
            frame_sha256: String::new(),
            events_sha256,
            event_count: count,
            raw_bytes,
            plain_offset: plain.map(|p| p.0),
            plain_length: plain.map(|p| p.1),
        };
        let entry = ManifestPart {
            tenant: m.tenant.clone(),
            flow_id: m.flow_id.clone(),
            part: m.part,
            status: part.archive_status.as_str().to_string(),
            labels: m.labels.clone(),
            offset: 0,
            length: 0,
            frame_sha256: String::new(),
            events_sha256: location.events_sha256.clone(),
            event_count: location.event_count,
            raw_bytes: location.raw_bytes,
            first_event_time: rfc3339_ms(m.first_event_ms),
            last_event_time: rfc3339_ms(m.last_event_ms),
            purge_at: rfc3339_ms(part.purge_at_ms),
            traceparent: m.traceparent.clone(),
            plain_offset: location.plain_offset,
            plain_length: location.plain_length,
        };
        self.waiting.push((entry, location));
        Ok(())
    }

    /// Compresses the packed parts' lines as one frame, if there are any.
    fn write_packed_frame(&mut self) -> io::Result<()> {
        if self.waiting.is_empty() {
            return Ok(());
        }
        let offset = self.out.position;
        self.out.frame = Sha256::new();
        self.write_small_zstd_frame()?;
        self.plain.clear();
        self.place_waiting(offset);
        Ok(())
    }

    /// Gives the waiting parts the frame just written from `offset`.
    fn place_waiting(&mut self, offset: u64) {
        let length = self.out.position - offset;
        let frame_sha256 = hex_sha256(self.out.frame.clone().finalize());
        for (mut entry, mut location) in self.waiting.drain(..) {
            (entry.offset, entry.length) = (offset, length);
            (location.offset, location.length) = (offset, length);
            entry.frame_sha256.clone_from(&frame_sha256);
            location.frame_sha256.clone_from(&frame_sha256);
            self.manifest.push(entry);
            self.locations.push(location);
        }
    }

    /// Writes the manifest frame and the footer; returns the sink and the checksums.
    pub fn finish(mut self) -> Result<(W, UploadedSegment), ArchiveError> {
        let segment_id = self.segment_id.clone();
        let io_err = |source| ArchiveError::Io {
            path: format!("segment {segment_id}"),
            source,
        };
        self.write_packed_frame().map_err(io_err)?;
        let manifest_offset = self.out.position;
        let manifest = ManifestRecord {
            record: "manifest",
            format: FORMAT,
            segment_id: &self.segment_id,
            tenant: &self.tenant,
            compression: self.compression.as_str(),
            archived_at: rfc3339_ms(self.archived_at_ms),
            parts: &self.manifest,
        };
        // Serialized first: many small writes through a streaming encoder are slow.
        let mut plain = Vec::with_capacity(256 * self.locations.len() + 256);
        write_line(&mut plain, &manifest).map_err(io_err)?;
        if self.compression == crate::config::Compression::Zstd {
            self.plain = plain;
            self.write_small_zstd_frame().map_err(io_err)?;
        } else {
            let mut enc =
                FrameEncoder::new(&mut self.out, self.compression, self.level).map_err(io_err)?;
            enc.write_all(&plain).map_err(io_err)?;
            enc.finish().map_err(io_err)?;
        }
        let footer = footer_bytes(self.compression, manifest_offset);
        self.out.write_all(&footer).map_err(io_err)?;
        self.out.flush().map_err(io_err)?;
        let size = self.out.position;
        let object_sha256 = hex_sha256(self.out.object.finalize());
        Ok((
            self.out.inner,
            UploadedSegment {
                object_sha256,
                object_size: size,
                locations: self.locations,
            },
        ))
    }
}

/// The footer pointing at the manifest frame (see the parent module).
pub(crate) fn footer_bytes(compression: Compression, manifest_offset: u64) -> Vec<u8> {
    let mut payload = Vec::with_capacity(16);
    payload.extend_from_slice(FOOTER_MAGIC);
    payload.extend_from_slice(&manifest_offset.to_le_bytes());
    match compression {
        Compression::Zstd => {
            let mut f = Vec::with_capacity(ZSTD_FOOTER_LEN);
            f.extend_from_slice(&ZSTD_SKIPPABLE_MAGIC.to_le_bytes());
            f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            f.extend_from_slice(&payload);
            f
        }
        Compression::Gzip => {
            // An empty gzip member (RFC 1952) carrying the payload in an FEXTRA subfield.
            let mut f = Vec::with_capacity(GZIP_FOOTER_LEN);
            f.extend_from_slice(&[0x1f, 0x8b, 8, 0x04, 0, 0, 0, 0, 0, 0xff]);
            f.extend_from_slice(&((4 + payload.len()) as u16).to_le_bytes());
            f.extend_from_slice(b"FA");
            f.extend_from_slice(&(payload.len() as u16).to_le_bytes());
            f.extend_from_slice(&payload);
            // A final fixed-Huffman block holding only end-of-block, then CRC32 and
            // ISIZE of the empty content.
            f.extend_from_slice(&[0x03, 0x00]);
            f.extend_from_slice(&[0; 8]);
            f
        }
    }
}

/// Raw bytes a read-ahead may hold: large enough that a shared store's round trip
/// is paid once per few hundred small parts, small next to the process's memory.
const READ_AHEAD_BYTES: u64 = 4 << 20;

/// Consecutive runs of parts whose events are read together: each run's `raw_bytes`
/// stays within [`READ_AHEAD_BYTES`], and a larger part is a run of its own.
fn read_ahead_runs(parts: &[SealedPart]) -> Vec<&[SealedPart]> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, part) in parts.iter().enumerate() {
        if i > start && bytes + part.meta.raw_bytes > READ_AHEAD_BYTES {
            runs.push(&parts[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += part.meta.raw_bytes;
    }
    if start < parts.len() {
        runs.push(&parts[start..]);
    }
    runs
}

/// Builds the intent's object into `path` from the events in `store`.
pub fn build_segment(
    store: &dyn StateStore,
    intent: &ArchiveIntent,
    frame_target: u64,
    path: &Path,
) -> Result<UploadedSegment, ArchiveError> {
    let io_err = |source| ArchiveError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let file = std::fs::File::create(path).map_err(io_err)?;
    let mut writer = SegmentWriter::new(
        io::BufWriter::with_capacity(1 << 20, file),
        intent,
        frame_target,
    );
    let reader = store.event_reader()?;
    for run in read_ahead_runs(&intent.parts) {
        let metas: Vec<&FlowMeta> = run.iter().map(|p| &p.meta).collect();
        if metas.len() > 1 {
            reader.read_ahead(&metas)?;
        }
        for part in run {
            let m = &part.meta;
            writer.write_part(part, |sink| {
                reader
                    .for_each_event(&m.tenant, &m.flow_id, m.part, sink)
                    .map_err(ArchiveError::from)
            })?;
        }
    }
    let (buffered, uploaded) = writer.finish()?;
    // No fsync: the spool file is only read back by this process for the upload, and
    // an intent interrupted before its object is verified rebuilds the file from the
    // state store. The durable copy is the uploaded one.
    buffered.into_inner().map_err(|e| io_err(e.into_error()))?;
    Ok(uploaded)
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::archive::reader::{decode_part, parse_footer};
    use crate::flow::FlowStatus;
    use crate::state::{FlowMeta, IntentStage};

    /// Writes `intent`'s parts, with these events each, into an object in memory.
    pub(crate) fn write_object<E: AsRef<str>>(
        intent: &ArchiveIntent,
        events: &[&[E]],
        frame_target: u64,
    ) -> (Vec<u8>, UploadedSegment) {
        let mut writer = SegmentWriter::new(Vec::new(), intent, frame_target);
        for (part, events) in intent.parts.iter().zip(events) {
            writer
                .write_part(part, |sink| {
                    for e in events.iter() {
                        sink(e.as_ref().as_bytes()).map_err(|source| ArchiveError::Io {
                            path: String::new(),
                            source,
                        })?;
                    }
                    Ok(())
                })
                .unwrap();
        }
        writer.finish().unwrap()
    }

    fn sealed(flow: usize, events: &[String]) -> SealedPart {
        SealedPart {
            meta: FlowMeta {
                tenant: "t".into(),
                flow_id: compact_str::format_compact!("flow-{flow}"),
                part: 1 + flow as u32 % 3,
                status: FlowStatus::Completed,
                event_type: "x.completed".into(),
                status_order: Vec::new(),
                labels: [("k".to_string(), format!("v{flow}"))]
                    .into_iter()
                    .collect(),
                first_event_ms: 0,
                last_event_ms: 1_000,
                first_ingest_ms: 0,
                last_ingest_ms: 1_000,
                event_count: events.len() as u64,
                raw_bytes: events.iter().map(|e| e.len() as u64).sum(),
                next_arrival: events.len() as u64,
                deadline_ms: Some(0),
                traceparent: None,
                tracestate: None,
            },
            archive_status: FlowStatus::Completed,
            purge_at_ms: 86_400_000,
        }
    }

    /// An intent for `parts` (one list of events each) in `compression`.
    fn intent_of(parts: &[Vec<String>], compression: Compression) -> ArchiveIntent {
        ArchiveIntent {
            id: "seg".into(),
            tenant: "t".into(),
            object_key: "k".into(),
            archived_at_ms: 5,
            compression,
            zstd_level: 3,
            parts: parts
                .iter()
                .enumerate()
                .map(|(i, e)| sealed(i, e))
                .collect(),
            stage: IntentStage::Pending,
        }
    }

    fn decompress_all(compression: Compression, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match compression {
            Compression::Zstd => {
                io::Read::read_to_end(
                    &mut zstd::stream::read::Decoder::new(bytes).unwrap(),
                    &mut out,
                )
                .unwrap();
            }
            Compression::Gzip => {
                io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(bytes), &mut out)
                    .unwrap();
            }
        }
        out
    }

    /// A manifest whose ranges are damaged or hostile is an error naming the part,
    /// never another part's events or a panic.
    #[test]
    fn packed_parts_with_bad_ranges_are_errors() {
        let parts: Vec<Vec<String>> = vec![vec!["{\"a\":1}".into()], vec!["{\"b\":2}".into()]];
        let intent = ArchiveIntent {
            id: "seg".into(),
            tenant: "t".into(),
            object_key: "k".into(),
            archived_at_ms: 5,
            compression: Compression::Zstd,
            zstd_level: 3,
            parts: parts
                .iter()
                .enumerate()
                .map(|(i, e)| sealed(i, e))
                .collect(),
            stage: IntentStage::Pending,
        };
        let events: Vec<&[String]> = parts.iter().map(Vec::as_slice).collect();
        let (bytes, _) = write_object(&intent, &events, 1 << 20);
        let at = parse_footer(
            "k",
            Compression::Zstd,
            &bytes[bytes.len() - ZSTD_FOOTER_LEN..],
        )
        .unwrap();
        let text = decompress_all(
            Compression::Zstd,
            &bytes[at as usize..bytes.len() - ZSTD_FOOTER_LEN],
        );
        let manifest: crate::archive::Manifest =
            serde_json::from_slice(text.trim_ascii_end()).unwrap();
        let good = &manifest.parts[1];
        assert_eq!(good.offset, manifest.parts[0].offset, "one frame");
        let frame = &bytes[good.offset as usize..(good.offset + good.length) as usize];
        assert!(decode_part("k.zst", good, frame).is_ok());
        let other = &manifest.parts[0];
        for (offset, length, says) in [
            (Some(u64::MAX), Some(1), "outside its frame"),
            (Some(0), Some(u64::MAX), "outside its frame"),
            (Some(10_000), Some(10), "outside its frame"),
            (Some(0), None, "go together"),
            (None, Some(5), "go together"),
            // The neighbour's lines under this part's name: its checksum says no.
            (other.plain_offset, other.plain_length, "events_sha256"),
        ] {
            let mut bad = good.clone();
            (bad.plain_offset, bad.plain_length) = (offset, length);
            let error = decode_part("k.zst", &bad, frame).unwrap_err().to_string();
            assert!(error.contains(says), "{offset:?}+{length:?}: {error}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn any_parts_round_trip_through_frames_manifest_and_footer(
            parts in prop::collection::vec(prop::collection::vec("\\PC{0,120}", 0..12), 1..6),
            gzip in any::<bool>(),
            frame_target in prop_oneof![Just(0u64), 1u64..2000, Just(1u64 << 20)],
        ) {
            let compression = if gzip { Compression::Gzip } else { Compression::Zstd };
            let intent = intent_of(&parts, compression);
            let mut writer = SegmentWriter::new(Vec::new(), &intent, frame_target);
            for (part, events) in intent.parts.iter().zip(&parts) {
                writer.write_part(part, |sink| {
                    for e in events {
                        sink(e.as_bytes()).map_err(|source| ArchiveError::Io { path: String::new(), source })?;
                    }
                    Ok(())
                }).unwrap();
            }
            let (bytes, uploaded) = writer.finish().unwrap();
            prop_assert_eq!(hex_sha256(Sha256::digest(&bytes)), uploaded.object_sha256.clone());
            prop_assert_eq!(bytes.len() as u64, uploaded.object_size);

            // The footer points at the manifest, which lists exactly our parts.
            let footer_len = if gzip { GZIP_FOOTER_LEN } else { ZSTD_FOOTER_LEN };
            let manifest_at = parse_footer("k", compression, &bytes[bytes.len() - footer_len..]).unwrap();
            let manifest_text = decompress_all(compression, &bytes[manifest_at as usize..bytes.len() - footer_len]);
            let manifest: crate::archive::Manifest = serde_json::from_slice(manifest_text.trim_ascii_end()).unwrap();
            prop_assert_eq!(manifest.parts.len(), parts.len());

            let mut end = 0;
            let mut frames = 0;
            for ((m, loc), events) in manifest.parts.iter().zip(&uploaded.locations).zip(&parts) {
                if m.offset != end {
                    // A part packed into the previous part's frame.
                    prop_assert_eq!(m.offset + m.length, end, "a part shares the previous frame");
                    prop_assert!(m.plain_offset.is_some_and(|o| o > 0));
                } else {
                    frames += 1;
                }
                prop_assert_eq!((m.offset, m.length), (loc.offset, loc.length));
                prop_assert_eq!((m.plain_offset, m.plain_length), (loc.plain_offset, loc.plain_length));
                end = m.offset + m.length;
                let frame = &bytes[m.offset as usize..end as usize];
                let decoded = decode_part(if gzip { "k.gz" } else { "k.zst" }, m, frame).unwrap();
                let want: Vec<Vec<u8>> = events.iter().map(|e| e.as_bytes().to_vec()).collect();
                prop_assert_eq!(decoded.events, want);
                // Each fact once: the header names the part, the trailer counts it, and
                // its digest is the manifest's alone.
                prop_assert_eq!(&decoded.header["flow_id"], &serde_json::json!(m.flow_id));
                prop_assert_eq!(&decoded.trailer["event_count"], &serde_json::json!(m.event_count));
                prop_assert!(decoded.trailer.get("events_sha256").is_none());
            }
            prop_assert_eq!(end, manifest_at);
            match (gzip, frame_target) {
                // gzip, and a target every part reaches: a frame per part.
                (true, _) | (false, 0) => prop_assert_eq!(frames, parts.len()),
                // A target no part reaches: one frame for all of them.
                (false, t) if t >= 1 << 20 => prop_assert_eq!(frames, 1),
                _ => prop_assert!(frames >= 1 && frames <= parts.len()),
            }

            // The whole object decodes as one stream: parts' lines, then the manifest.
            let all = decompress_all(compression, &bytes);
            let lines = all.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
            let non_empty_events: usize = parts.iter().flatten().filter(|e| !e.is_empty()).count();
            prop_assert_eq!(lines, non_empty_events + 2 * parts.len() + 1);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any one byte of an object changed: reading the whole object fails or
        /// gives the original manifest and events, and each part's single-frame read
        /// fails when its frame holds the byte and gives the original events
        /// otherwise. Never a panic, never altered history.
        #[test]
        fn a_changed_byte_is_an_error_never_altered_history(
            parts in prop::collection::vec(prop::collection::vec("[a-z0-9 {}\":,]{0,60}", 1..6), 1..5),
            gzip in any::<bool>(),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let compression = if gzip { Compression::Gzip } else { Compression::Zstd };
            let key = if gzip { "k.gz" } else { "k.zst" };
            let intent = intent_of(&parts, compression);
            let events: Vec<&[String]> = parts.iter().map(|p| p.as_slice()).collect();
            let (bytes, _) = write_object(&intent, &events, 200);
            let (manifest, _) = crate::archive::read_object_bytes(key, &bytes).unwrap();
            let mut damaged = bytes.clone();
            let at = at.index(damaged.len());
            damaged[at] ^= flip;

            // A change the checksums cannot see (a gzip member's MTIME, a zstd
            // window size) alters no history; the object's SHA-256, which `verify`
            // checks, still catches it.
            if let Ok((read, contents)) = crate::archive::read_object_bytes(key, &damaged) {
                prop_assert_eq!(
                    serde_json::to_value(&read.parts).unwrap(),
                    serde_json::to_value(&manifest.parts).unwrap(),
                    "byte {} altered the manifest unnoticed", at
                );
                for (got, want) in contents.iter().zip(&parts) {
                    let want: Vec<Vec<u8>> = want.iter().map(|e| e.as_bytes().to_vec()).collect();
                    prop_assert_eq!(&got.events, &want, "byte {} altered events unnoticed", at);
                }
            }
            prop_assert_ne!(hex_sha256(Sha256::digest(&damaged)), hex_sha256(Sha256::digest(&bytes)));
            for (part, want) in manifest.parts.iter().zip(&parts) {
                let range = part.offset as usize..(part.offset + part.length) as usize;
                let read = decode_part(key, part, &damaged[range.clone()]);
                if range.contains(&at) {
                    prop_assert!(read.is_err(), "byte {} in {}'s frame went unnoticed", at, part.flow_id);
                } else {
                    let read = read.unwrap();
                    let want: Vec<Vec<u8>> = want.iter().map(|e| e.as_bytes().to_vec()).collect();
                    prop_assert_eq!(read.events, want);
                }
            }
        }
    }
}
