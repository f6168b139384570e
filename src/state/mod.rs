//! The durable state store: per-flow ordered events and metadata, the deadline index,
//! archive intents, tombstones of archived flows, and source checkpoints.
//!
//! [`StateStore`] is the seam. [`EmbeddedStore`] (redb for the indexes, an append-only
//! journal for event bytes, on local disk) is the default backend, for one instance;
//! [`PostgresStore`] is shared by any number of instances (`docs/design.md`, "Scale").
//! [`open`] picks one by `state.backend`. Methods block on I/O: async code calls them
//! through `tokio::task::spawn_blocking`.
//!
//! Guarantees every backend keeps:
//! - [`StateStore::ingest`] applies a batch and its source checkpoint atomically and
//!   durably: after it returns, a crash loses nothing of the batch.
//! - [`StateStore::due_flows`] costs O(due), not O(tracked): it walks an index ordered
//!   by deadline.
//! - [`StateStore::seal`] takes flows out of the live set and into an intent atomically;
//!   an event arriving afterwards opens the next part of its flow, never changing the
//!   sealed one.
//! - [`StateStore::complete`] deletes the sealed events and the intent atomically.
//! - Memory use does not grow with the number of flows or with one flow's size: events
//!   are streamed out through [`StateStore::for_each_event`].
//! - An intent is worked on by one instance at a time: the one that sealed it, or the
//!   one that claimed it ([`StateStore::claim_intents`]) after its owner died. An
//!   instance that lost its claim is fenced: its `record_upload`, `confirm_claim` and
//!   `complete` fail with [`StateError::Fenced`] and change nothing.

mod embedded;
pub(crate) mod meta;
mod postgres;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

pub use embedded::{
    DamagedPart, DroppedFlow, EmbeddedStore, JournalFileProblem, StoreCheck, StoreRepair,
};
pub use postgres::{PostgresStore, SchemaStatus};

use crate::config::Compression;
use crate::flow::{FlowEvent, FlowStatus, Labels};
use crate::policy::RetentionPolicy;

/// A backend's own error (redb's, a database driver's), kept whole for its message.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// A backend error's message followed by its causes': a pool or a driver prints only
/// its own layer ("error performing TLS handshake"), while the cause ("invalid peer
/// certificate: UnknownIssuer") is what the operator acts on.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// What can go wrong in any state backend. Variants name what the operator must look
/// at; a backend's own error travels inside [`StateError::Open`] or
/// [`StateError::Storage`].
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store at {path}: {}", with_causes(.source.as_ref()))]
    Open { path: String, source: BackendError },
    /// The store's filesystem has less free space than `state.min_free_bytes`: writes
    /// wait (ingest pauses) rather than fill it, so redb never meets a full disk.
    #[error("the state store's disk is full: {free} bytes free at {path}, and a batch of {needed} bytes would leave less than state.min_free_bytes = {reserve}")]
    DiskFull {
        path: String,
        free: u64,
        needed: u64,
        reserve: u64,
    },
    /// A file of the store is damaged or missing; `fix` says what the operator can do.
    /// Never repaired silently: `state check` lists what it affects, `state repair`
    /// drops that and says so.
    #[error("state store file {path} is damaged: {problem}. {fix}")]
    Damaged {
        path: String,
        problem: String,
        fix: String,
    },
    #[error("state store at {path} is in use by another process (one flow-archiver per state.path: stop the other one, or give this one its own state.path)")]
    Locked { path: String },
    #[error("state store: {}", with_causes(.0.as_ref()))]
    Storage(BackendError),
    #[error("state store record {what} is corrupt: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("while streaming events of {tenant}/{flow_id} part {part}: {source}")]
    Stream {
        tenant: String,
        flow_id: String,
        part: u32,
        source: std::io::Error,
    },
    /// A file the store keeps beside its database (the embedded store's event journal).
    #[error("state store file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("no archive intent {0}")]
    UnknownIntent(String),
    /// The intent's lease expired and another instance took it over: this one stops
    /// working on it and leaves it to the new owner.
    #[error("intent {0} was taken over by another instance after this one's lease expired; that instance finishes it")]
    Fenced(String),
    /// The schema of a shared store is newer than this binary knows.
    #[error("state store schema is at version {found}, newer than this flow-archiver's {known}: upgrade flow-archiver")]
    SchemaTooNew { found: i32, known: i32 },
    /// Event bytes that read as zeros where a CRC expected history: an erasure zeroed
    /// them after the reader's snapshot was taken (a fresh snapshot no longer points at
    /// them), or, if a fresh snapshot still does, the file is damaged.
    #[error("{what} reads as zeros: erased while it was being read, or damaged")]
    Erased { what: String },
}

impl StateError {
    /// The disk under the store is full (its reserve reached, or a write failed with
    /// ENOSPC or EDQUOT): waiting for space, not a failure of the store.
    pub fn is_disk_full(&self) -> bool {
        let io_full = |e: &std::io::Error| {
            e.kind() == std::io::ErrorKind::StorageFull
                || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        };
        match self {
            StateError::DiskFull { .. } => true,
            StateError::File { source, .. } => io_full(source),
            // A database commit, or its reopening, that met the full disk; or a
            // transaction begun before the store reopened its database after such a
            // commit (redb's PreviousIo, or DatabaseClosed once the old handle is
            // gone): the retry runs on the reopened database.
            StateError::Storage(source) | StateError::Open { source, .. } => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
                while let Some(e) = cause {
                    if matches!(
                        e.downcast_ref::<redb::Error>(),
                        Some(redb::Error::PreviousIo | redb::Error::DatabaseClosed)
                    ) {
                        return true;
                    }
                    let io = e.downcast_ref::<std::io::Error>().or_else(|| {
                        match e.downcast_ref::<redb::Error>() {
                            Some(redb::Error::Io(io)) => Some(io),
                            _ => None,
                        }
                    });
                    if io.is_some_and(io_full) {
                        return true;
                    }
                    cause = e.source();
                }
                false
            }
            _ => false,
        }
    }
}

/// Everything the store knows about the open part of one live flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowMeta {
    pub tenant: CompactString,
    pub flow_id: CompactString,
    /// 1 for a flow's first part; an event after archival opens the next part.
    pub part: u32,
    /// Status of the latest event in flow order.
    pub status: FlowStatus,
    /// Type of the latest event in flow order.
    pub event_type: CompactString,
    /// Order key of the event that set `status` (see `embedded` key layout).
    pub status_order: Vec<u8>,
    /// Labels merged across the part's events (later events win per key).
    pub labels: Labels,
    pub first_event_ms: i64,
    pub last_event_ms: i64,
    pub first_ingest_ms: i64,
    pub last_ingest_ms: i64,
    pub event_count: u64,
    /// Sum of the stored event bytes (without newlines).
    pub raw_bytes: u64,
    /// Arrival counter; breaks sequence ties and orders events without a sequence.
    pub next_arrival: u64,
    /// When the flow becomes due, per the policy at ingest time.
    pub deadline_ms: Option<i64>,
    /// First `traceparent` seen: the flow's own trace.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// One flow part taken out of the live set for archival.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SealedPart {
    pub meta: FlowMeta,
    /// Status recorded in the archive (`abandoned` for idle non-terminal flows).
    pub archive_status: FlowStatus,
    pub purge_at_ms: i64,
}

/// Where one sealed part landed in its uploaded object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartLocation {
    /// The part's frame: `[offset, offset + length)` of the object.
    pub offset: u64,
    pub length: u64,
    pub frame_sha256: String,
    pub events_sha256: String,
    pub event_count: u64,
    pub raw_bytes: u64,
    /// Where the part lies in its decompressed frame when the frame holds several
    /// parts (`flow-archive/v2`); `None` when the part is the whole frame.
    pub plain_offset: Option<u64>,
    pub plain_length: Option<u64>,
}

/// A verified upload: the object's checksum and each part's location, index-aligned
/// with [`ArchiveIntent::parts`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedSegment {
    pub object_sha256: String,
    pub object_size: u64,
    pub locations: Vec<PartLocation>,
}

/// Proof that an intent's object is uploaded and was read back intact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedObject {
    pub object_sha256: String,
    pub object_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IntentStage {
    /// Sealed; the object may or may not exist yet. Recovery rebuilds and re-uploads
    /// (same key, same bytes).
    Pending,
    /// The object is uploaded and verified; recovery resumes at publish, taking part
    /// locations from the object's manifest.
    Verified(VerifiedObject),
}

/// The durable record of one archival in progress (`docs/design.md`, "Commit
/// protocol").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchiveIntent {
    /// Unique, sortable by creation: also the segment id.
    pub id: String,
    pub tenant: String,
    /// Object key (path inside the object store).
    pub object_key: String,
    pub archived_at_ms: i64,
    pub compression: Compression,
    pub zstd_level: i32,
    pub parts: Vec<SealedPart>,
    pub stage: IntentStage,
}

/// A legal hold on a flow (every part, live or archived): no purge, no erasure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub tenant: String,
    pub flow_id: String,
    pub reason: String,
    pub actor: String,
    pub at_ms: i64,
}

/// The durable record of one purge in progress: the object is deleted, then each
/// listed part's `flow.purged` is published, then the record goes. Recovery repeats
/// both steps (deleting a missing object is a no-op; consumers dedupe by event id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeIntent {
    pub object_key: String,
    pub object_uri: String,
    pub segment_id: String,
    /// `retention` or `erasure`.
    pub reason: String,
    pub actor: Option<String>,
    pub at_ms: i64,
    /// (tenant, flow id, part) of every part in the object.
    pub parts: Vec<(String, String, u32)>,
}

/// The durable record of one erasure in one object: the object is rewritten without
/// the erased flow (when anything else remains), the moved parts' relocation
/// `flow.archived` events are published, the old object is deleted, then the erased
/// parts' `flow.purged` (reason `erasure`). Recovery repeats every step whose result
/// is not already there: a rewrite is skipped once the old object is gone (the new one
/// was verified before it was deleted), and published ids are not sent twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EraseIntent {
    pub tenant: String,
    pub flow_id: String,
    pub old_key: String,
    pub old_uri: String,
    pub old_segment_id: String,
    /// The rewritten object, or `None` when every part in it was the erased flow's.
    pub rewrite: Option<Rewrite>,
    /// Parts of the erased flow in the old object.
    pub erased_parts: Vec<u32>,
    pub reason: String,
    pub actor: String,
    pub at_ms: i64,
}

/// Where an erasure rewrites an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrite {
    pub segment_id: String,
    pub object_key: String,
}

/// What was removed from the live state by an erasure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ErasedLive {
    /// The flow had an open part.
    pub open_part: bool,
    /// Events deleted.
    pub events: u64,
}

/// What one ingest batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    pub stored: u64,
    pub duplicates: u64,
    /// Flows whose event reopened them after archival (a new part).
    pub reopened: u64,
}

/// What one journal compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Compaction {
    /// Files whose live events were moved and which were then deleted.
    pub files: u64,
    pub moved_events: u64,
    /// Disk given back: the files' sizes less the bytes moved.
    pub freed_bytes: u64,
}

/// How many flows one [`StateStore::live_flows`] call looks at, at most.
pub const LIVE_SCAN: usize = 5_000;

/// What [`StateStore::live_flows`] looks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveQuery {
    pub tenant: Option<String>,
    pub flow_id_prefix: String,
    /// (tenant, flow id) of the last flow looked at by the previous call.
    pub after: Option<(String, String)>,
    pub limit: usize,
}

/// One call's live flows, and where the next call resumes (`None`: nothing is left).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveFlows {
    pub flows: Vec<FlowMeta>,
    pub resume_after: Option<(String, String)>,
}

/// Counts for summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    pub live_flows: u64,
    pub stored_events: u64,
    pub pending_intents: u64,
    pub timers: u64,
}

/// Streams stored events from one snapshot of the store.
pub trait EventReader: Send {
    /// As [`StateStore::live_flow`], within the reader's snapshot: the meta and the
    /// events [`EventReader::for_each_event`] streams belong together.
    fn live_flow(&self, tenant: &str, flow_id: &str) -> Result<Option<FlowMeta>, StateError>;

    /// As [`StateStore::for_each_event`], within the reader's snapshot.
    fn for_each_event(
        &self,
        tenant: &str,
        flow_id: &str,
        part: u32,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), StateError>;

    /// A hint that these parts are read next, in this order: a backend that pays a
    /// network round trip per read fetches them in one. Callers keep the parts' summed
    /// `raw_bytes` small, since a backend may hold them in memory until read.
    fn read_ahead(&self, _parts: &[&FlowMeta]) -> Result<(), StateError> {
        Ok(())
    }
}

/// The state store seam (`docs/design.md`, "Pipeline"). Each method's contract is in
/// the module doc;
/// a method that returns an error has changed nothing.
pub trait StateStore: Send + Sync + 'static {
    /// Stores a batch of events and, atomically with it, the source's checkpoint.
    /// Duplicates (same flow and dedupe key) are counted and skipped.
    fn ingest(
        &self,
        events: &[FlowEvent],
        policy: &RetentionPolicy,
        now_ms: i64,
        checkpoint: Option<(&str, &[u8])>,
    ) -> Result<IngestOutcome, StateError>;

    /// The last checkpoint stored for `source`.
    fn checkpoint(&self, source: &str) -> Result<Option<Vec<u8>>, StateError>;

    /// Up to `limit` live flows whose deadline is `<= now_ms`, earliest first, to be
    /// sealed. A shared store claims them for a lease: other instances pass over them.
    fn due_flows(&self, now_ms: i64, limit: usize) -> Result<Vec<FlowMeta>, StateError>;

    /// As [`StateStore::due_flows`], without claiming anything (a dry run).
    fn peek_due(&self, now_ms: i64, limit: usize) -> Result<Vec<FlowMeta>, StateError> {
        self.due_flows(now_ms, limit)
    }

    /// The open part of a live flow.
    fn live_flow(&self, tenant: &str, flow_id: &str) -> Result<Option<FlowMeta>, StateError>;

    /// Live flows (open parts) for a search, in the store's flow order, starting after
    /// `query.after`: those of `query.tenant` (every tenant when `None`) whose flow id
    /// starts with `query.flow_id_prefix`. Reads at most `query.limit` matches and
    /// looks at no more than [`LIVE_SCAN`] flows, so a search over a large store pays
    /// bounded work per call and resumes from [`LiveFlows::resume_after`].
    fn live_flows(&self, query: &LiveQuery) -> Result<LiveFlows, StateError>;

    /// Streams a part's events, in flow order, to `sink` (one call per event, bytes
    /// without newline).
    fn for_each_event(
        &self,
        tenant: &str,
        flow_id: &str,
        part: u32,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), StateError>;

    /// A consistent read-only view for streaming the events of many parts (one
    /// segment) without a transaction per part.
    fn event_reader(&self) -> Result<Box<dyn EventReader>, StateError>;

    /// Seals the intent's parts whose live meta still equals the one given (a flow that
    /// changed since it was read is left for the next pass) and stores the intent.
    /// Returns the stored intent (the parts that qualified), or `None` when none did.
    fn seal(&self, intent: ArchiveIntent) -> Result<Option<ArchiveIntent>, StateError>;

    /// Intents not yet completed, oldest first, whoever works on them (for reads).
    fn intents(&self) -> Result<Vec<ArchiveIntent>, StateError>;

    /// Intents no live instance works on, now claimed by this one, oldest first. A
    /// single-node store returns every intent at its first call (its only process is
    /// the one that stopped) and none afterwards; a shared store returns those whose
    /// owner's lease expired. Intents this instance seals are its own from the start.
    fn claim_intents(&self) -> Result<Vec<ArchiveIntent>, StateError>;

    /// Fails with [`StateError::Fenced`] when this instance no longer holds the
    /// intent: checked before a step whose effect others see (publishing).
    fn confirm_claim(&self, intent_id: &str) -> Result<(), StateError> {
        let _ = intent_id;
        Ok(())
    }

    /// Records that the intent's object is uploaded and verified (a small record:
    /// the intent itself is not rewritten).
    fn record_upload(&self, intent_id: &str, verified: &VerifiedObject) -> Result<(), StateError>;

    /// Deletes the intent's sealed events and the intent itself.
    fn complete(&self, intent_id: &str) -> Result<(), StateError>;

    /// Recomputes every live flow's deadline if the policy changed since the last call.
    /// Returns the number of flows updated.
    fn apply_policy(&self, policy: &RetentionPolicy) -> Result<u64, StateError>;

    fn stats(&self) -> Result<StoreStats, StateError>;

    /// [`StateError::DiskFull`] unless `bytes` more still leave the store's disk its
    /// reserve (`state.min_free_bytes`). Ingest asks before each batch, so that the
    /// reserve stays for archiving, which frees space. A shared store manages its own
    /// disk.
    fn room(&self, bytes: u64) -> Result<(), StateError> {
        let _ = bytes;
        Ok(())
    }

    /// Places (`Some`) or releases (`None`) a flow's legal hold; returns the previous one.
    fn set_hold(
        &self,
        tenant: &str,
        flow_id: &str,
        hold: Option<&Hold>,
    ) -> Result<Option<Hold>, StateError>;

    /// Every hold, ordered by tenant and flow id.
    fn holds(&self) -> Result<Vec<Hold>, StateError>;

    /// Records a purge before its object is deleted.
    fn begin_purge(&self, intent: &PurgeIntent) -> Result<(), StateError>;

    /// Purges not yet finished (a crash interrupted them).
    fn purge_intents(&self) -> Result<Vec<PurgeIntent>, StateError>;

    /// Forgets a purge whose `flow.purged` events are all published.
    fn finish_purge(&self, object_key: &str) -> Result<(), StateError>;

    /// Records an erasure before its object is rewritten (keyed by the old object).
    fn begin_erase(&self, intent: &EraseIntent) -> Result<(), StateError>;

    /// Erasures not yet finished (a crash interrupted them).
    fn erase_intents(&self) -> Result<Vec<EraseIntent>, StateError>;

    /// Forgets a finished erasure.
    fn finish_erase(&self, old_key: &str) -> Result<(), StateError>;

    /// Gives back disk held by storage that is mostly archived: the embedded store
    /// moves the live events of journal files that are mostly dead into the active
    /// file and deletes those files, so a few long-running flows cannot pin them.
    /// Cheap when there is nothing to do.
    fn compact(&self) -> Result<Compaction, StateError>;

    /// Deletes everything the store holds of a flow — open part, events, dedupe keys,
    /// timer — atomically. The tombstone (next part number) stays, so a late event
    /// cannot reuse the number of an archived part. The caller finishes any archive
    /// intent holding the flow first: sealed events are deleted too.
    fn erase_live(&self, tenant: &str, flow_id: &str) -> Result<ErasedLive, StateError>;
}

/// Opens the backend `config.backend` names (the postgres one also applies its schema
/// migrations).
pub fn open(
    config: &crate::config::StateConfig,
) -> Result<std::sync::Arc<dyn StateStore>, StateError> {
    Ok(match config.backend {
        crate::config::StateBackend::Embedded => std::sync::Arc::new(EmbeddedStore::open(config)?),
        crate::config::StateBackend::Postgres => std::sync::Arc::new(PostgresStore::open(config)?),
    })
}

/// Helpers for the unit tests of the crate that need a real store on disk.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::config::Config;

    /// A store in `dir` with the default settings but `journal_file_bytes`.
    pub fn open_store(dir: &std::path::Path, journal_file_bytes: u64) -> EmbeddedStore {
        let mut config = Config::default().state;
        config.path = dir.to_path_buf();
        config.journal_file_bytes = journal_file_bytes;
        EmbeddedStore::open(&config).expect("open the store")
    }

    pub fn default_policy() -> RetentionPolicy {
        RetentionPolicy::new(Config::default().retention)
    }

    /// A running event of flow `t/{flow}` with dedupe key `("s", id)` and `raw` as bytes.
    pub fn event(flow: &str, id: &str, raw: String) -> FlowEvent {
        FlowEvent {
            tenant: "t".into(),
            flow_id: flow.into(),
            dedupe_key: Some(("s".into(), id.into())),
            sequence: None,
            status: FlowStatus::Running,
            event_type: "flow.step".into(),
            time_ms: 0,
            labels: Default::default(),
            traceparent: None,
            tracestate: None,
            raw: raw.into_bytes(),
        }
    }

    /// The events of part `part` of `t/{flow}`, in order, as text.
    pub fn events_of(store: &dyn StateStore, flow: &str, part: u32) -> Vec<String> {
        let mut seen = Vec::new();
        store
            .for_each_event("t", flow, part, &mut |b| {
                seen.push(String::from_utf8_lossy(b).into_owned());
                Ok(())
            })
            .expect("read the part's events");
        seen
    }

    /// Seals the open parts of `t/{flows}` under intent `id` and completes it.
    pub fn archive_now(store: &dyn StateStore, id: &str, flows: &[&str]) {
        seal_now(store, id, flows);
        store.complete(id).unwrap();
    }

    /// Seals the open parts of `t/{flows}` under intent `id`.
    pub fn seal_now(store: &dyn StateStore, id: &str, flows: &[&str]) {
        let parts = flows
            .iter()
            .map(|f| SealedPart {
                meta: store.live_flow("t", f).unwrap().expect("a live flow"),
                archive_status: FlowStatus::Completed,
                purge_at_ms: 0,
            })
            .collect();
        let intent = ArchiveIntent {
            id: id.into(),
            tenant: "t".into(),
            object_key: "k".into(),
            archived_at_ms: 0,
            compression: Compression::Zstd,
            zstd_level: 3,
            parts,
            stage: IntentStage::Pending,
        };
        store.seal(intent).unwrap().expect("sealed");
    }
}
