//! Archive objects in the `flow-archive/v1` format, and the object store they live in.
//!
//! The full byte-level specification is `schemas/ARCHIVE_FORMAT.md`; the essentials,
//! which must never change for `v1`:
//!
//! ```text
//! object  = frame(part 1) frame(part 2) … frame(part n) frame(manifest) footer
//! frame   = one complete zstd frame (or gzip member) of JSON Lines:
//!             {"record":"header",…}\n  event\n … event\n  {"record":"trailer",…}\n
//! manifest frame = one JSON line {"record":"manifest", "parts":[{offset,length,…}]}
//! footer  = zstd: skippable frame, magic 0x184D2A5F, 16-byte payload
//!           gzip: an empty gzip member whose FEXTRA subfield "FA" holds the payload
//!           payload = b"FLOWARCH" ‖ u64 LE offset of the manifest frame
//! ```
//!
//! Checksums (SHA-256, lowercase hex):
//! - `events_sha256`: the part's event lines as stored, each with its `\n`;
//! - `frame_sha256`: the compressed bytes `[offset, offset + length)` of the part's frame;
//! - object SHA-256: every byte of the object, sent with the upload and checked again by
//!   reading the object back before any state is deleted.
//!
//! `zstd -dc`/`gzip -dc` print the whole object as JSON Lines (the footer decodes to
//! nothing); a ranged GET of `[offset, offset+length)` decodes to exactly one flow part.

mod compliance;
mod frame;
mod reader;
mod rewrite;
mod segment;
mod store;

pub use compliance::{ComplianceError, ObjectRetention, ObjectTier, Restore, S3Compliance};
pub(crate) use reader::compression_of;
pub use reader::{
    entry_problem, read_manifest, read_object_bytes, read_part, verify_object, Manifest,
    ManifestPart, PartContents, VerifyProblem,
};
pub use rewrite::{rewrite_segment, Framing};
pub use segment::{build_segment, SegmentWriter, FOOTER_MAGIC};
pub use store::ArchiveStore;

/// The format identifier written in headers and manifests.
pub const FORMAT: &str = "flow-archive/v2";
/// The first format: one frame per part. Read, verified and rewritten forever.
pub const FORMAT_V1: &str = "flow-archive/v1";

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive I/O on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("object store {store}: {action} {key}: {source}")]
    Store {
        store: String,
        action: &'static str,
        key: String,
        source: Box<object_store::Error>,
    },
    #[error("cannot open object store: {0}")]
    Config(String),
    #[error(transparent)]
    Compliance(#[from] ComplianceError),
    #[error("object {key} is in the {} archive tier and must be restored before it can be read: {}", .tier.storage_class, match .tier.restore {
        Some(Restore::InProgress) => "its restore is in progress; try again once it finishes",
        _ => "run `flow-archiver restore TENANT/FLOW_ID` (docs/compliance.md, \"Storage classes\")",
    })]
    RestoreRequired { key: String, tier: ObjectTier },
    #[error("object {key} is corrupted: {what} expected {expected}, found {actual}")]
    Corrupted {
        key: String,
        what: String,
        expected: String,
        actual: String,
    },
    #[error("object {key} is not a {FORMAT_V1} or {FORMAT} object: {detail}")]
    Format { key: String, detail: String },
    #[error("flow {tenant}/{flow_id} part {part}: the store holds {found} events, its metadata says {expected}")]
    Inconsistent {
        tenant: String,
        flow_id: String,
        part: u32,
        expected: u64,
        found: u64,
    },
}

pub(crate) fn hex_sha256(digest: impl AsRef<[u8]>) -> String {
    hex::encode(digest.as_ref())
}
