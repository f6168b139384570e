//! Configuration: a TOML file plus environment overrides, parsed into plain serde
//! structs and validated once at load (STYLE.md §3).
//!
//! Precedence, lowest first: built-in defaults < the TOML file (`--config`, or
//! `./flow-archiver.toml` when present) < `FLOW_ARCHIVER__SECTION__KEY` variables <
//! the operator names `FLOW_RETENTION_DAYS`, `ARCHIVE_BUCKET`, `ARCHIVE_PREFIX`,
//! `ARCHIVE_CONCURRENCY`, `ARCHIVE_BATCH_SIZE`. `AWS_*` and `OTEL_*` belong to the
//! libraries that read them.
//!
//! Every error names the key and how to fix it; the runtime only ever sees a
//! [`Config`] that passed [`Config::validate`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Default file read when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_FILE: &str = "flow-archiver.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid configuration key `{key}`: {problem}. Fix: {fix}")]
    Invalid {
        key: &'static str,
        problem: String,
        fix: String,
    },
}

fn invalid(key: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// The whole configuration; each section maps to one pipeline stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub state: StateConfig,
    pub input: InputConfig,
    pub retention: RetentionConfig,
    pub archive: ArchiveConfig,
    pub publish: PublishConfig,
    pub dead_letter: DeadLetterConfig,
    pub scheduler: SchedulerConfig,
    pub kafka: KafkaConfig,
    pub nats: NatsConfig,
    pub index: IndexConfig,
    pub api: ApiConfig,
    pub audit: AuditConfig,
}

/// The audit trail: one JSON line per archive, purge, hold, release, erase and replay,
/// in a local file and, when `publish.destination` is a broker, on that broker too.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Default `./data/audit.jsonl`.
    pub path: PathBuf,
    /// Kafka topic of audit records (`publish.destination = "kafka"`); "" = file only.
    /// Default `flow.audit`.
    pub topic: String,
    /// NATS subject of audit records (`publish.destination = "nats"`), captured by
    /// `stream` (created when missing); "" = file only. Default `flow.audit`.
    pub subject: String,
    /// Default `FLOW_AUDIT`.
    pub stream: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: PathBuf::from("./data/audit.jsonl"),
            topic: "flow.audit".into(),
            subject: "flow.audit".into(),
            stream: "FLOW_AUDIT".into(),
        }
    }
}

/// The embedded state store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Directory holding the store (`state.redb` and the event journal `journal/`).
    /// Default `./data/state`.
    pub path: PathBuf,
    /// Page cache of the store, in bytes. Default 16 MiB; memory use does not grow
    /// with the number of tracked flows beyond this.
    pub cache_bytes: u64,
    /// Size after which the event journal starts a new file. A file is deleted once
    /// every event in it is archived, so smaller files free disk sooner. Default 64 MiB.
    pub journal_file_bytes: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            path: PathBuf::from("./data/state"),
            cache_bytes: 16 << 20,
            journal_file_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// CloudEvents 1.0, structured mode JSON.
    Cloudevents,
    /// `{"flow_id","tenant","seq","type","status","time","labels","data"}`.
    Plain,
    /// Argo Workflows `Workflow` objects, as a resource watch (e.g. Argo Events)
    /// forwards them: uid → flow id, namespace → tenant, phase → status,
    /// resourceVersion → order and dedupe, finishedAt → time, labels.
    Argo,
}

/// Decoding of input events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// `cloudevents` (default), `plain` or `argo`; selects the default field mapping.
    pub format: InputFormat,
    /// Larger records are dead-lettered (reason `oversize`). Default 1 MiB.
    pub max_event_bytes: usize,
    /// Events whose `time` is further ahead of ingest time are dead-lettered. Default `5m`.
    #[serde(with = "duration_text")]
    pub max_future_skew: Duration,
    /// Events written to the state store per transaction. Default 4096.
    pub batch_size: usize,
    /// JSON pointers overriding the format's default mapping.
    pub mapping: MappingOverrides,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            format: InputFormat::Cloudevents,
            max_event_bytes: 1 << 20,
            max_future_skew: Duration::from_secs(300),
            batch_size: 4096,
            mapping: MappingOverrides::default(),
        }
    }
}

/// JSON pointers (RFC 6901) into the event; unset fields keep the format's default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MappingOverrides {
    /// The event is the object at this pointer, e.g. `/workflow` when an Argo Events
    /// sensor wraps the Workflow as `{"workflow": …}`: the format's default pointers
    /// are taken relative to it (explicit overrides below stay absolute).
    pub root: Option<String>,
    pub flow_id: Option<String>,
    pub tenant: Option<String>,
    /// Tenant used when the event has none. Default `default`.
    pub default_tenant: Option<String>,
    pub sequence: Option<String>,
    pub event_type: Option<String>,
    /// A field holding a status word; when unset the status comes from the type suffix.
    pub status: Option<String>,
    pub time: Option<String>,
    pub labels: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// Two pointers forming the dedupe key; `[]` turns deduplication off.
    pub dedupe: Option<Vec<String>>,
}

/// The mapping the decoder applies, after presets and overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldMapping {
    pub flow_id: String,
    pub tenant: String,
    pub default_tenant: String,
    pub sequence: String,
    pub event_type: String,
    pub status: Option<String>,
    pub time: String,
    /// Tried in order when `time` is absent or null (before falling back to ingest time).
    pub time_fallbacks: Vec<String>,
    pub labels: String,
    pub traceparent: String,
    pub tracestate: String,
    pub dedupe: Option<(String, String)>,
}

impl InputConfig {
    pub fn effective_mapping(&self) -> FieldMapping {
        let s = |v: &str| v.to_string();
        let mut m = match self.format {
            InputFormat::Cloudevents => FieldMapping {
                flow_id: s("/subject"),
                tenant: s("/tenant"),
                default_tenant: s("default"),
                sequence: s("/sequence"),
                event_type: s("/type"),
                status: None,
                time: s("/time"),
                time_fallbacks: Vec::new(),
                labels: s("/data/labels"),
                traceparent: s("/traceparent"),
                tracestate: s("/tracestate"),
                dedupe: Some((s("/source"), s("/id"))),
            },
            InputFormat::Plain => FieldMapping {
                flow_id: s("/flow_id"),
                tenant: s("/tenant"),
                default_tenant: s("default"),
                sequence: s("/seq"),
                event_type: s("/type"),
                status: Some(s("/status")),
                time: s("/time"),
                time_fallbacks: Vec::new(),
                labels: s("/labels"),
                traceparent: s("/traceparent"),
                tracestate: s("/tracestate"),
                dedupe: Some((s("/type"), s("/seq"))),
            },
            InputFormat::Argo => FieldMapping {
                flow_id: s("/metadata/uid"),
                tenant: s("/metadata/namespace"),
                default_tenant: s("default"),
                // Kubernetes bumps it on every change; digit strings compare numerically.
                sequence: s("/metadata/resourceVersion"),
                event_type: s("/kind"),
                status: Some(s("/status/phase")),
                // Absent until the workflow finishes: until then, when it started.
                time: s("/status/finishedAt"),
                time_fallbacks: vec![s("/status/startedAt"), s("/metadata/creationTimestamp")],
                labels: s("/metadata/labels"),
                traceparent: s("/metadata/annotations/traceparent"),
                tracestate: s("/metadata/annotations/tracestate"),
                // A watch may deliver the same object version twice.
                dedupe: Some((s("/metadata/uid"), s("/metadata/resourceVersion"))),
            },
        };
        let o = &self.mapping;
        if let Some(root) = o.root.as_deref().filter(|r| !r.is_empty()) {
            let root = root.trim_end_matches('/');
            for p in [
                &mut m.flow_id,
                &mut m.tenant,
                &mut m.sequence,
                &mut m.event_type,
                &mut m.time,
                &mut m.labels,
                &mut m.traceparent,
                &mut m.tracestate,
            ]
            .into_iter()
            .chain(m.status.as_mut())
            .chain(m.time_fallbacks.iter_mut())
            .chain(m.dedupe.iter_mut().flat_map(|(a, b)| [a, b]))
            {
                *p = format!("{root}{p}");
            }
        }
        let set = |target: &mut String, v: &Option<String>| {
            if let Some(v) = v {
                *target = v.clone();
            }
        };
        set(&mut m.flow_id, &o.flow_id);
        set(&mut m.tenant, &o.tenant);
        set(&mut m.default_tenant, &o.default_tenant);
        set(&mut m.sequence, &o.sequence);
        set(&mut m.event_type, &o.event_type);
        if o.time.is_some() {
            m.time_fallbacks.clear();
        }
        set(&mut m.time, &o.time);
        set(&mut m.labels, &o.labels);
        set(&mut m.traceparent, &o.traceparent);
        set(&mut m.tracestate, &o.tracestate);
        if o.status.is_some() {
            m.status = o.status.clone();
        }
        if let Some(d) = &o.dedupe {
            m.dedupe = match d.as_slice() {
                [a, b] => Some((a.clone(), b.clone())),
                _ => None,
            };
        }
        m
    }
}

/// An idle time that may be `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    Off,
    After(Duration),
}

impl Retention {
    pub fn duration(self) -> Option<Duration> {
        match self {
            Retention::Off => None,
            Retention::After(d) => Some(d),
        }
    }
}

impl Serialize for Retention {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Retention::Off => s.serialize_str("off"),
            Retention::After(d) => s.serialize_str(&format_duration(*d)),
        }
    }
}

impl<'de> Deserialize<'de> for Retention {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_retention(&text).map_err(serde::de::Error::custom)
    }
}

pub fn parse_retention(text: &str) -> Result<Retention, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(Retention::Off);
    }
    parse_duration(text).map(Retention::After)
}

/// Parses `30d`, `12h`, `90s`, `5y` (a year is 365.25 days), `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like \"30d\", \"12h\" or \"0s\" ({e})"))
}

/// Formats in the largest unit that represents `d` exactly (`90d`, `12h`, `1500ms`),
/// so `config check` prints what an operator would write and it parses back.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

mod duration_text {
    use super::*;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Retention per terminal status, label/tenant overrides, and archive lifetime.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub completed: Retention,
    pub failed: Retention,
    pub error: Retention,
    pub cancelled: Retention,
    pub timed_out: Retention,
    /// Non-terminal flows idle this long are archived with status `abandoned`.
    pub abandoned: Retention,
    /// How long the archive keeps a flow part before purge: `purge_at = archived_at + archive_for`.
    #[serde(with = "duration_text")]
    pub archive_for: Duration,
    /// First match wins.
    #[serde(rename = "override")]
    pub overrides: Vec<RetentionOverride>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let days = |d: u64| Retention::After(Duration::from_secs(d * 86_400));
        RetentionConfig {
            completed: days(30),
            failed: days(90),
            error: days(90),
            cancelled: days(30),
            timed_out: days(90),
            abandoned: Retention::Off,
            archive_for: Duration::from_secs(365 * 86_400),
            overrides: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionOverride {
    #[serde(rename = "match")]
    pub selector: Selector,
    /// Idle time for matching terminal flows; unset keeps the per-status value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// Archive lifetime for matching flows; unset keeps `retention.archive_for`.
    #[serde(
        default,
        with = "opt_duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub archive_for: Option<Duration>,
}

/// All given conditions must hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Selector {
    pub tenant: Option<String>,
    pub status: Option<crate::flow::FlowStatus>,
    pub labels: std::collections::BTreeMap<String, String>,
}

mod opt_duration_text {
    use super::*;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    Zstd,
    Gzip,
}

impl Compression {
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Zstd => "jsonl.zst",
            Compression::Gzip => "jsonl.gz",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// `{prefix}/{tenant}/purge={YYYY-MM-DD}/{segment_id}.jsonl.zst`, many flows per object.
    Segment,
    /// `{prefix}/{tenant}/flows/{flow_id}/{part}.jsonl.gz`, one flow part per object.
    PerFlow,
}

/// Where and how archive objects are written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Directory used as the object store when `bucket` is unset. Default `./data/archive`.
    pub dir: PathBuf,
    /// S3 bucket (env `ARCHIVE_BUCKET`); when set, objects go to S3 instead of `dir`.
    pub bucket: Option<String>,
    /// Key prefix inside the store (env `ARCHIVE_PREFIX`). Default `flows`.
    pub prefix: String,
    /// S3 endpoint for S3-compatible stores, e.g. `http://127.0.0.1:9000`; unset uses
    /// `AWS_ENDPOINT`/`AWS_ENDPOINT_URL_S3` or AWS itself. Path-style requests unless
    /// `virtual_hosted_style` is true.
    pub endpoint: Option<String>,
    /// S3 region; unset uses `AWS_DEFAULT_REGION`/`AWS_REGION`, else `us-east-1`.
    pub region: Option<String>,
    pub virtual_hosted_style: bool,
    /// `zstd` (default) or `gzip`.
    pub compression: Compression,
    /// zstd level, 1–19. Default 3.
    pub zstd_level: i32,
    /// `segment` (default) or `per-flow`.
    pub layout: Layout,
    /// A segment closes once the raw history it holds reaches this many bytes. Default 64 MiB.
    pub segment_max_bytes: u64,
    /// A segment closes at this many flow parts. Default 1000.
    pub segment_max_flows: usize,
    /// Segment uploads in flight (env `ARCHIVE_CONCURRENCY`). Default 4.
    pub concurrency: usize,
    /// Due flows taken per scheduler pass (env `ARCHIVE_BATCH_SIZE`). Default 10000.
    pub batch_size: usize,
    /// Objects larger than this are sent as multipart uploads. Default 16 MiB.
    pub multipart_threshold_bytes: u64,
    /// Local directory where segments are built before upload. Default `./data/spool`.
    pub spool_dir: PathBuf,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            dir: PathBuf::from("./data/archive"),
            bucket: None,
            prefix: "flows".into(),
            endpoint: None,
            region: None,
            virtual_hosted_style: false,
            compression: Compression::Zstd,
            zstd_level: 3,
            layout: Layout::Segment,
            segment_max_bytes: 64 << 20,
            segment_max_flows: 1000,
            concurrency: 4,
            batch_size: 10_000,
            multipart_threshold_bytes: 16 << 20,
            spool_dir: PathBuf::from("./data/spool"),
        }
    }
}

/// Where `flow.archived` records go.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Where `flow.archived` goes: `file` (default) or `kafka` (`kafka.archived_topic`).
    pub destination: Destination,
    /// JSON Lines file of `flow.archived` CloudEvents. Default `./data/events/archived.jsonl`.
    pub archived_path: PathBuf,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            destination: Destination::File,
            archived_path: PathBuf::from("./data/events/archived.jsonl"),
        }
    }
}

/// A destination for published events or dead letters.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    File,
    Kafka,
    Nats,
}

/// How the `data` of published events is encoded.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DataEncoding {
    /// Avro single-object encoding (`C3 01`, schema fingerprint, body) per `schemas/*.avsc`.
    Avro,
    Json,
}

impl DataEncoding {
    pub fn content_type(self) -> &'static str {
        match self {
            DataEncoding::Avro => "application/avro",
            DataEncoding::Json => "application/json",
        }
    }
}

/// Kafka: input topics, the consumer group and the topics flow-archiver writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`. Default `127.0.0.1:9092`.
    pub brokers: String,
    /// Topics of workflow events, keyed by flow id (a list, or one comma-separated string).
    #[serde(deserialize_with = "list_text")]
    pub topics: Vec<String>,
    /// Consumer group. Default `flow-archiver`.
    pub group_id: String,
    /// Static membership (`group.instance.id`): a stable name per instance keeps its
    /// partitions, and so its flows' state, across restarts.
    pub group_instance_id: Option<String>,
    /// Topic of `flow.archived` events (`publish.destination = "kafka"`). Use
    /// `cleanup.policy=compact`: the key is `{tenant}/{flow_id}/{part}`.
    pub archived_topic: String,
    /// Topic of refused records (`dead_letter.destination = "kafka"`).
    pub dead_letter_topic: String,
    /// Encoding of published `data`: `avro` (default) or `json`.
    pub data_encoding: DataEncoding,
    /// How long a consumed batch waits to fill before it is written. Default `50ms`.
    #[serde(with = "duration_text")]
    pub batch_wait: Duration,
    /// librdkafka properties passed through as they are (SASL, TLS, tuning), e.g.
    /// `"security.protocol" = "SASL_SSL"`. Properties the delivery guarantees rest on
    /// cannot be overridden.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topics: Vec::new(),
            group_id: "flow-archiver".into(),
            group_instance_id: None,
            archived_topic: "flow.archived".into(),
            dead_letter_topic: "flow.events.dlq".into(),
            data_encoding: DataEncoding::Avro,
            batch_wait: Duration::from_millis(50),
            properties: Default::default(),
        }
    }
}

/// NATS JetStream: the input stream and durable consumer, and what flow-archiver writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URLs, comma-separated. Default `nats://127.0.0.1:4222`.
    pub servers: String,
    /// Stream holding workflow events. Default `FLOW_EVENTS`.
    pub stream: String,
    /// Subjects of that stream, used when flow-archiver creates it. Default `flows.events.>`.
    #[serde(deserialize_with = "list_text")]
    pub subjects: Vec<String>,
    /// Create the input stream when it does not exist (else bind to an existing one only).
    pub create_stream: bool,
    /// Durable pull consumer. Give each instance its own (see README, "Scaling out").
    pub consumer: String,
    /// Only these subjects (static partitioning, e.g. `flows.events.p0.>`); default all.
    pub filter_subject: Option<String>,
    /// Redelivery after this long without an ack. Default `60s`.
    #[serde(with = "duration_text")]
    pub ack_wait: Duration,
    /// Unacknowledged messages the server lets this consumer have. Default 20000.
    pub max_ack_pending: i64,
    /// After this many deliveries a message is dead-lettered and terminated. Default 5.
    pub max_deliver: i64,
    /// How long a consumed batch waits to fill before it is written. Default `50ms`.
    #[serde(with = "duration_text")]
    pub batch_wait: Duration,
    /// Stream of `flow.archived` events: one message per subject, a compacted log.
    pub archived_stream: String,
    /// Subject prefix: `{prefix}.{tenant}.{flow_id}.{part}`. Default `flow.archived`.
    pub archived_prefix: String,
    /// Subject of refused records; captured by `dead_letter_stream`.
    pub dead_letter_subject: String,
    pub dead_letter_stream: String,
    /// Credentials: a `.creds` file, an nkey seed file, user/password or a token.
    pub creds_file: Option<PathBuf>,
    pub nkey_seed_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// TLS: require it, trust this CA, present this client certificate.
    pub tls_required: bool,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            servers: "nats://127.0.0.1:4222".into(),
            stream: "FLOW_EVENTS".into(),
            subjects: vec!["flows.events.>".into()],
            create_stream: true,
            consumer: "flow-archiver".into(),
            filter_subject: None,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 20_000,
            max_deliver: 5,
            batch_wait: Duration::from_millis(50),
            archived_stream: "FLOW_ARCHIVED".into(),
            archived_prefix: "flow.archived".into(),
            dead_letter_subject: "flow.events.dlq".into(),
            dead_letter_stream: "FLOW_DEAD_LETTERS".into(),
            creds_file: None,
            nkey_seed_file: None,
            user: None,
            password: None,
            token: None,
            tls_required: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// The archive index (SQLite).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// Default `./data/index.sqlite`.
    pub path: PathBuf,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            path: PathBuf::from("./data/index.sqlite"),
        }
    }
}

/// The HTTP API.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Where `run` serves the API (off when unset); `serve` defaults to 127.0.0.1:8080.
    pub listen: Option<String>,
    /// Bearer token that may read every tenant.
    pub admin_token: Option<String>,
    /// tenant → bearer token that reads only that tenant.
    pub tenant_tokens: std::collections::BTreeMap<String, String>,
}

impl ApiConfig {
    pub fn has_tokens(&self) -> bool {
        self.admin_token.is_some() || !self.tenant_tokens.is_empty()
    }
}

/// Checks an API listen address: without tokens, only loopback is allowed.
pub fn check_listen(api: &ApiConfig, listen: &str) -> Result<std::net::SocketAddr, ConfigError> {
    let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
        invalid(
            "api.listen",
            format!("{listen:?} is not an address"),
            "use host:port, e.g. \"127.0.0.1:8080\"",
        )
    })?;
    if !api.has_tokens() && !addr.ip().is_loopback() {
        return Err(invalid(
            "api.listen",
            format!("{addr} is reachable from other hosts and no tokens are configured"),
            "set api.admin_token and/or api.tenant_tokens, or listen on 127.0.0.1",
        ));
    }
    Ok(addr)
}

/// A NATS subject without wildcards: dot-separated tokens of visible characters.
pub fn valid_subject(s: &str, wildcards: bool) -> bool {
    !s.is_empty()
        && s.split('.').all(|t| {
            !t.is_empty()
                && !t.chars().any(|c| c.is_whitespace() || c.is_control())
                && (wildcards || (t != "*" && t != ">"))
        })
}

/// librdkafka properties whose values the delivery guarantees depend on.
pub const KAFKA_PINNED_PROPERTIES: &[(&str, &str)] = &[
    ("enable.auto.offset.store", "false"),
    ("enable.idempotence", "true"),
    ("partition.assignment.strategy", "cooperative-sticky"),
    ("bootstrap.servers", "kafka.brokers"),
    ("group.id", "kafka.group_id"),
    ("group.instance.id", "kafka.group_instance_id"),
];

/// A list given as a TOML array or as one comma-separated string (environment).
fn list_text<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Text::deserialize(d)? {
        Text::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect(),
        Text::Many(v) => v,
    })
}

/// Kafka's own rule for topic names.
pub fn valid_topic_name(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    /// Where refused input goes: `file` (default) or `kafka` (`kafka.dead_letter_topic`,
    /// with the original key, value and headers).
    pub destination: Destination,
    /// JSON Lines file of refused input. Default `./data/dead-letter.jsonl`.
    pub path: PathBuf,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            destination: Destination::File,
            path: PathBuf::from("./data/dead-letter.jsonl"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// How often `run` looks for due flows. Default `1s`.
    #[serde(with = "duration_text")]
    pub interval: Duration,
    /// How often `run` purges segments past their purge date. Default `1h`.
    #[serde(with = "duration_text")]
    pub purge_interval: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            interval: Duration::from_secs(1),
            purge_interval: Duration::from_secs(3600),
        }
    }
}

/// The operator-facing environment names and the key each one sets.
const OPERATOR_ENV: &[(&str, &str)] = &[
    ("ARCHIVE_BUCKET", "archive.bucket"),
    ("ARCHIVE_PREFIX", "archive.prefix"),
    ("ARCHIVE_CONCURRENCY", "archive.concurrency"),
    ("ARCHIVE_BATCH_SIZE", "archive.batch_size"),
];

impl Config {
    /// Loads defaults < file < environment, then validates.
    ///
    /// `path` is the `--config` argument; without it `./flow-archiver.toml` is read when
    /// present. `env` is the process environment (a parameter so tests stay hermetic).
    pub fn load(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let file_text = match path {
            Some(p) => Some(
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?,
            ),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                let p = Path::new(DEFAULT_CONFIG_FILE);
                Some(
                    std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                        path: p.to_path_buf(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        Self::from_sources(file_text.as_deref(), env)
    }

    /// Builds the configuration from TOML text and environment pairs.
    pub fn from_sources(
        toml_text: Option<&str>,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(text) = toml_text {
            builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
        }
        let prefixed: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("FLOW_ARCHIVER__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("FLOW_ARCHIVER")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(prefixed)),
        );
        let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        for (name, key) in OPERATOR_ENV {
            if let Some(value) = lookup(name) {
                builder = builder
                    .set_override(*key, value)
                    .map_err(|e| ConfigError::Parse(e.to_string()))?;
            }
        }
        let retention_days = match lookup("FLOW_RETENTION_DAYS") {
            Some(v) => Some(v.trim().parse::<u64>().map_err(|_| {
                invalid(
                    "retention (FLOW_RETENTION_DAYS)",
                    format!("{v:?} is not a whole number of days"),
                    "set FLOW_RETENTION_DAYS to an integer such as 30, or unset it",
                )
            })?),
            None => None,
        };
        let built = builder
            .build()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut cfg: Config = built
            .try_deserialize()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        if let Some(days) = retention_days {
            // The operator knob means "how long finished flows stay live", so it sets every
            // terminal status; label overrides still take precedence.
            let r = Retention::After(Duration::from_secs(days * 86_400));
            let ret = &mut cfg.retention;
            ret.completed = r;
            ret.failed = r;
            ret.error = r;
            ret.cancelled = r;
            ret.timed_out = r;
        }
        // `"sasl.password" = "env:KAFKA_SASL_PASSWORD"`: librdkafka property names have
        // dots, which the environment overrides cannot express, so secrets for them are
        // read from a named variable (a Kubernetes Secret reference, say).
        for (property, value) in cfg.kafka.properties.iter_mut() {
            if let Some(name) = value.strip_prefix("env:") {
                *value = lookup(name).ok_or_else(|| {
                    invalid(
                        "kafka.properties",
                        format!(
                            "{property:?} names the environment variable {name}, which is not set"
                        ),
                        "set it (e.g. from a Secret) or write the value itself",
                    )
                })?;
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cross-field and range checks; every error names the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.state.journal_file_bytes < 4096 {
            return Err(invalid(
                "state.journal_file_bytes",
                format!("{} bytes is too small", self.state.journal_file_bytes),
                "use at least 4096, e.g. 67108864 (64 MiB)",
            ));
        }
        let a = &self.archive;
        if a.concurrency == 0 || a.concurrency > 256 {
            return Err(invalid(
                "archive.concurrency",
                format!("{} is out of range", a.concurrency),
                "use 1..=256 (env ARCHIVE_CONCURRENCY)",
            ));
        }
        if a.batch_size == 0 {
            return Err(invalid(
                "archive.batch_size",
                "0 would never archive anything",
                "use a positive number (env ARCHIVE_BATCH_SIZE), e.g. 10000",
            ));
        }
        if a.segment_max_flows == 0 {
            return Err(invalid(
                "archive.segment_max_flows",
                "must be at least 1",
                "use e.g. 1000",
            ));
        }
        if a.segment_max_bytes < 1024 {
            return Err(invalid(
                "archive.segment_max_bytes",
                format!("{} bytes is too small", a.segment_max_bytes),
                "use at least 1024, e.g. 67108864 (64 MiB)",
            ));
        }
        if a.multipart_threshold_bytes < 5 << 20 {
            return Err(invalid(
                "archive.multipart_threshold_bytes",
                "S3 multipart parts must be at least 5 MiB",
                "use at least 5242880",
            ));
        }
        if !(1..=19).contains(&a.zstd_level) {
            return Err(invalid(
                "archive.zstd_level",
                format!("{} is out of range", a.zstd_level),
                "use 1..=19 (3 is the default)",
            ));
        }
        if a.prefix.starts_with('/') || a.prefix.split('/').any(|p| p == ".." || p == ".") {
            return Err(invalid(
                "archive.prefix",
                format!("{:?} is not a relative key prefix", a.prefix),
                "use a prefix like \"flows\" or \"archive/flows\" (env ARCHIVE_PREFIX)",
            ));
        }
        if let Some(bucket) = &a.bucket {
            let ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !ok {
                return Err(invalid(
                    "archive.bucket",
                    format!("{bucket:?} is not a valid S3 bucket name"),
                    "use 3-63 lowercase letters, digits, '-' or '.' (env ARCHIVE_BUCKET)",
                ));
            }
        }
        if let Some(endpoint) = &a.endpoint {
            if url::Url::parse(endpoint).is_err() {
                return Err(invalid(
                    "archive.endpoint",
                    format!("{endpoint:?} is not a URL"),
                    "use e.g. \"http://127.0.0.1:9000\"",
                ));
            }
        }
        self.validate_kafka()?;
        self.validate_nats()?;
        if let Some(listen) = &self.api.listen {
            check_listen(&self.api, listen)?;
        }
        for (tenant, token) in &self.api.tenant_tokens {
            crate::flow::validate_identifier("tenant", tenant)
                .map_err(|e| invalid("api.tenant_tokens", e, "key the map by tenant id"))?;
            if token.len() < 16 {
                return Err(invalid(
                    "api.tenant_tokens",
                    format!("the token of {tenant} is shorter than 16 characters"),
                    "use a long random token, e.g. `openssl rand -hex 32`",
                ));
            }
        }
        if self.api.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(invalid(
                "api.admin_token",
                "shorter than 16 characters",
                "use a long random token, e.g. `openssl rand -hex 32`",
            ));
        }
        if self.input.batch_size == 0 {
            return Err(invalid(
                "input.batch_size",
                "must be at least 1",
                "use e.g. 4096",
            ));
        }
        if self.input.max_event_bytes < 256 {
            return Err(invalid(
                "input.max_event_bytes",
                format!("{} is too small for any event", self.input.max_event_bytes),
                "use at least 256, e.g. 1048576",
            ));
        }
        let m = &self.input.mapping;
        let pointers = [
            ("input.mapping.root", &m.root),
            ("input.mapping.flow_id", &m.flow_id),
            ("input.mapping.tenant", &m.tenant),
            ("input.mapping.sequence", &m.sequence),
            ("input.mapping.event_type", &m.event_type),
            ("input.mapping.status", &m.status),
            ("input.mapping.time", &m.time),
            ("input.mapping.labels", &m.labels),
            ("input.mapping.traceparent", &m.traceparent),
            ("input.mapping.tracestate", &m.tracestate),
        ];
        for (key, value) in pointers {
            if let Some(p) = value {
                if !p.is_empty() && !p.starts_with('/') {
                    return Err(invalid(
                        key,
                        format!("{p:?} is not a JSON pointer"),
                        "write a pointer such as \"/subject\" or \"/data/flow\"",
                    ));
                }
            }
        }
        if let Some(d) = &m.dedupe {
            if !(d.is_empty() || d.len() == 2) {
                return Err(invalid(
                    "input.mapping.dedupe",
                    format!("{} pointers given", d.len()),
                    "give two pointers, e.g. [\"/source\", \"/id\"], or [] to turn dedupe off",
                ));
            }
        }
        if let Some(t) = &m.default_tenant {
            crate::flow::validate_identifier("tenant", t).map_err(|e| {
                invalid(
                    "input.mapping.default_tenant",
                    e,
                    "use a plain name like \"default\"",
                )
            })?;
        }
        if self.scheduler.interval.is_zero() {
            return Err(invalid(
                "scheduler.interval",
                "0s would spin",
                "use e.g. \"1s\"",
            ));
        }
        if self.scheduler.purge_interval.is_zero() {
            return Err(invalid(
                "scheduler.purge_interval",
                "0s would spin",
                "use e.g. \"1h\"",
            ));
        }
        for (i, o) in self.retention.overrides.iter().enumerate() {
            if o.retention.is_none() && o.archive_for.is_none() {
                return Err(invalid(
                    "retention.override",
                    format!("override #{} sets neither retention nor archive_for", i + 1),
                    "add `retention = \"0s\"` and/or `archive_for = \"5y\"`, or remove it",
                ));
            }
        }
        Ok(())
    }

    /// The defaults with every data path (state, archive, spool, records, dead letters)
    /// under `dir` — for benchmarks, tests and scratch runs.
    pub fn rooted_at(dir: &Path) -> Config {
        let mut c = Config::default();
        c.state.path = dir.join("state");
        c.archive.dir = dir.join("archive");
        c.archive.spool_dir = dir.join("spool");
        c.publish.archived_path = dir.join("archived.jsonl");
        c.dead_letter.path = dir.join("dead-letter.jsonl");
        c.index.path = dir.join("index.sqlite");
        c
    }

    fn validate_kafka(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            return Err(invalid(
                "kafka.brokers",
                "is empty",
                "list bootstrap brokers, e.g. \"kafka-1:9092,kafka-2:9092\"",
            ));
        }
        let topics = k.topics.iter().map(|t| ("kafka.topics", t)).chain([
            ("kafka.archived_topic", &k.archived_topic),
            ("kafka.dead_letter_topic", &k.dead_letter_topic),
        ]);
        for (key, topic) in topics {
            if !valid_topic_name(topic) {
                return Err(invalid(
                    key,
                    format!("{topic:?} is not a valid Kafka topic name"),
                    "use 1-249 letters, digits, '.', '_' or '-'",
                ));
            }
        }
        if k.group_id.trim().is_empty() {
            return Err(invalid(
                "kafka.group_id",
                "is empty",
                "name the consumer group, e.g. \"flow-archiver\"",
            ));
        }
        if k.group_instance_id
            .as_deref()
            .is_some_and(|g| g.trim().is_empty())
        {
            return Err(invalid(
                "kafka.group_instance_id",
                "is empty",
                "give each instance a stable name (e.g. its pod name), or remove the key",
            ));
        }
        for (property, pinned) in KAFKA_PINNED_PROPERTIES {
            if let Some(value) = k.properties.get(*property) {
                let fix = if pinned.starts_with("kafka.") {
                    format!("remove it and set `{pinned}` instead")
                } else {
                    format!("remove it: flow-archiver sets {property}={pinned} because its delivery guarantees depend on it")
                };
                if value != pinned {
                    return Err(ConfigError::Invalid {
                        key: "kafka.properties",
                        problem: format!("{property:?} = {value:?} cannot be overridden"),
                        fix,
                    });
                }
            }
        }
        Ok(())
    }

    fn validate_nats(&self) -> Result<(), ConfigError> {
        let n = &self.nats;
        if n.servers.trim().is_empty() {
            return Err(invalid(
                "nats.servers",
                "is empty",
                "e.g. \"nats://nats-1:4222,nats://nats-2:4222\"",
            ));
        }
        let names = [
            ("nats.stream", &n.stream),
            ("nats.consumer", &n.consumer),
            ("nats.archived_stream", &n.archived_stream),
            ("nats.dead_letter_stream", &n.dead_letter_stream),
            ("audit.stream", &self.audit.stream),
        ];
        for (key, name) in names {
            let ok = !name.is_empty()
                && name.len() <= 255
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(invalid(
                    key,
                    format!("{name:?} is not a valid stream or consumer name"),
                    "use letters, digits, '_' or '-'",
                ));
            }
        }
        let subjects = n
            .subjects
            .iter()
            .map(|s| ("nats.subjects", s.as_str(), true))
            .chain(
                n.filter_subject
                    .as_deref()
                    .map(|s| ("nats.filter_subject", s, true)),
            )
            .chain([
                ("nats.archived_prefix", n.archived_prefix.as_str(), false),
                (
                    "nats.dead_letter_subject",
                    n.dead_letter_subject.as_str(),
                    false,
                ),
            ])
            .chain((!self.audit.subject.is_empty()).then_some((
                "audit.subject",
                self.audit.subject.as_str(),
                false,
            )));
        for (key, subject, wildcards) in subjects {
            if !valid_subject(subject, wildcards) {
                return Err(invalid(
                    key,
                    format!("{subject:?} is not a valid NATS subject"),
                    "use dot-separated tokens without spaces, e.g. \"flows.events.>\"",
                ));
            }
        }
        let audit = &self.audit.subject;
        if !audit.is_empty() && audit.starts_with(&format!("{}.", n.archived_prefix)) {
            return Err(invalid(
                "audit.subject",
                format!(
                    "{audit:?} is inside nats.archived_prefix {:?} (its stream would capture it)",
                    n.archived_prefix
                ),
                "use a subject of its own, e.g. \"flow.audit\"",
            ));
        }
        if n.max_deliver < 1 {
            return Err(invalid(
                "nats.max_deliver",
                "must be at least 1",
                "use e.g. 5",
            ));
        }
        if n.max_ack_pending < self.input.batch_size as i64 * 3 {
            return Err(invalid(
                "nats.max_ack_pending",
                format!("{} is less than three input batches ({})", n.max_ack_pending, self.input.batch_size * 3),
                "raise it (default 20000) or lower input.batch_size: batches in flight wait for their acks",
            ));
        }
        if n.ack_wait < Duration::from_secs(5) {
            return Err(invalid(
                "nats.ack_wait",
                "is shorter than 5s",
                "use e.g. \"60s\": a batch is acknowledged only after its durable write",
            ));
        }
        if n.tls_cert_file.is_some() != n.tls_key_file.is_some() {
            return Err(invalid(
                "nats.tls_cert_file",
                "a client certificate needs its key (and the key its certificate)",
                "set both tls_cert_file and tls_key_file, or neither",
            ));
        }
        if n.user.is_some() != n.password.is_some() {
            return Err(invalid(
                "nats.user",
                "user and password go together",
                "set both nats.user and nats.password, or neither",
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML, for `config check`.
    /// The effective configuration as TOML, secrets replaced by `<redacted>`: it is
    /// printed by `config check` and ends up in terminals and CI logs.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        let redact = |v: &mut Option<String>| {
            if v.is_some() {
                *v = Some(REDACTED.into());
            }
        };
        redact(&mut shown.nats.password);
        redact(&mut shown.nats.token);
        redact(&mut shown.api.admin_token);
        for token in shown.api.tenant_tokens.values_mut() {
            *token = REDACTED.into();
        }
        for (key, value) in shown.kafka.properties.iter_mut() {
            let key = key.to_ascii_lowercase();
            if ["password", "secret", "token", "key"]
                .iter()
                .any(|s| key.contains(s))
            {
                *value = REDACTED.into();
            }
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

const REDACTED: &str = "<redacted>";

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_documented_paths() {
        let c = Config::from_sources(None, &[]).unwrap();
        assert_eq!(c.state.path, PathBuf::from("./data/state"));
        assert_eq!(c.archive.dir, PathBuf::from("./data/archive"));
        assert_eq!(
            c.publish.archived_path,
            PathBuf::from("./data/events/archived.jsonl")
        );
        assert_eq!(
            c.dead_letter.path,
            PathBuf::from("./data/dead-letter.jsonl")
        );
    }

    #[test]
    fn file_then_env_then_operator_names() {
        let toml = r#"
            [archive]
            concurrency = 2
            prefix = "from-file"
            [retention]
            completed = "1h"
            abandoned = "7d"
            [[retention.override]]
            match = { labels = { category = "security" } }
            retention = "0s"
            archive_for = "5y"
        "#;
        let c = Config::from_sources(
            Some(toml),
            &env(&[
                ("FLOW_ARCHIVER__ARCHIVE__CONCURRENCY", "3"),
                ("ARCHIVE_PREFIX", "ops"),
                ("ARCHIVE_BATCH_SIZE", "50"),
                ("FLOW_RETENTION_DAYS", "2"),
                ("ARCHIVE_BUCKET", "my-bucket"),
            ]),
        )
        .unwrap();
        assert_eq!(c.archive.concurrency, 3);
        assert_eq!(c.archive.prefix, "ops");
        assert_eq!(c.archive.batch_size, 50);
        assert_eq!(c.archive.bucket.as_deref(), Some("my-bucket"));
        assert_eq!(
            c.retention.completed,
            Retention::After(Duration::from_secs(2 * 86_400))
        );
        assert_eq!(
            c.retention.abandoned,
            Retention::After(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(c.retention.overrides.len(), 1);
        assert_eq!(
            c.retention.overrides[0].retention,
            Some(Retention::After(Duration::ZERO))
        );
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        let err = Config::from_sources(None, &env(&[("ARCHIVE_CONCURRENCY", "0")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("archive.concurrency") && err.contains("Fix:"),
            "{err}"
        );

        let err = Config::from_sources(Some("[archive]\nconcurency = 2\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("concurency"), "{err}");

        let err = Config::from_sources(Some("[retention]\ncompleted = \"soon\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("soon"), "{err}");

        let err = Config::from_sources(None, &env(&[("FLOW_RETENTION_DAYS", "ten")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("FLOW_RETENTION_DAYS"), "{err}");

        let err = Config::from_sources(None, &env(&[("ARCHIVE_BUCKET", "Bad_Bucket")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("archive.bucket"), "{err}");
    }

    #[test]
    fn durations_print_in_their_largest_exact_unit() {
        let f = |s: u64| format_duration(Duration::from_secs(s));
        assert_eq!(f(90 * 86_400), "90d");
        assert_eq!(f(7200), "2h");
        assert_eq!(f(90), "90s");
        assert_eq!(f(0), "0s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        let five_years = parse_duration("5y").unwrap();
        assert_eq!(
            parse_duration(&format_duration(five_years)).unwrap(),
            five_years
        );
    }

    #[test]
    fn effective_config_round_trips_through_toml() {
        let c = Config::from_sources(None, &[]).unwrap();
        let again = Config::from_sources(Some(&c.to_toml()), &[]).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn kafka_section_from_file_and_environment() {
        let toml = r#"
[kafka]
brokers = "k1:9092,k2:9092"
topics = ["flows.events", "argo.workflows"]
[kafka.properties]
"security.protocol" = "SASL_SSL"
[publish]
destination = "kafka"
"#;
        let c = Config::from_sources(
            Some(toml),
            &env(&[
                ("FLOW_ARCHIVER__KAFKA__TOPICS", "a.events, b.events"),
                ("FLOW_ARCHIVER__KAFKA__DATA_ENCODING", "json"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.topics, ["a.events", "b.events"]);
        assert_eq!(c.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(c.kafka.data_encoding, DataEncoding::Json);
        assert_eq!(c.publish.destination, Destination::Kafka);
        assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
    }

    #[test]
    fn kafka_guarantees_cannot_be_overridden() {
        let err = |toml: &str| {
            Config::from_sources(Some(toml), &[])
                .unwrap_err()
                .to_string()
        };
        let e = err("[kafka.properties]\n\"enable.auto.offset.store\" = \"true\"");
        assert!(
            e.contains("kafka.properties") && e.contains("delivery guarantees"),
            "{e}"
        );
        let e = err("[kafka.properties]\n\"group.id\" = \"x\"");
        assert!(e.contains("kafka.group_id"), "{e}");
        // Setting a pinned property to its pinned value is harmless.
        Config::from_sources(
            Some("[kafka.properties]\n\"enable.idempotence\" = \"true\""),
            &[],
        )
        .unwrap();
        let e = err("[kafka]\ntopics = [\"../etc\"]");
        assert!(e.contains("kafka.topics"), "{e}");
        let e = err("[kafka]\narchived_topic = \"flow archived\"");
        assert!(e.contains("kafka.archived_topic"), "{e}");
    }

    #[test]
    fn kafka_properties_can_name_an_environment_variable() {
        let toml = "[kafka.properties]\n\"sasl.password\" = \"env:KAFKA_SASL_PASSWORD\"\n";
        let c = Config::from_sources(Some(toml), &env(&[("KAFKA_SASL_PASSWORD", "from-secret")]))
            .unwrap();
        assert_eq!(c.kafka.properties["sasl.password"], "from-secret");
        let e = Config::from_sources(Some(toml), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("KAFKA_SASL_PASSWORD") && e.contains("sasl.password"),
            "{e}"
        );
    }

    #[test]
    fn printed_config_hides_secrets() {
        let c = Config::from_sources(
            Some(
                "[api]\nadmin_token = \"admin-secret-0123456789\"\n\
                 [api.tenant_tokens]\nacme = \"tenant-secret-0123456789\"\n\
                 [nats]\nuser = \"u\"\npassword = \"nats-secret\"\n\
                 [kafka.properties]\n\"sasl.password\" = \"kafka-secret\"\n\"linger.ms\" = \"7\"\n",
            ),
            &[],
        )
        .unwrap();
        let text = c.to_toml();
        for secret in [
            "admin-secret",
            "tenant-secret",
            "nats-secret",
            "kafka-secret",
        ] {
            assert!(!text.contains(secret), "{secret} printed:\n{text}");
        }
        assert!(text.contains("<redacted>"));
        assert!(text.contains("\"7\""), "other properties are shown");
    }

    #[test]
    fn nats_section_is_validated() {
        let err = |toml: &str| {
            Config::from_sources(Some(toml), &[])
                .unwrap_err()
                .to_string()
        };
        let e = err("[nats]\nfilter_subject = \"flows events\"");
        assert!(e.contains("nats.filter_subject"), "{e}");
        let e = err("[nats]\narchived_prefix = \"flow.*\"");
        assert!(e.contains("nats.archived_prefix"), "{e}");
        let e = err("[audit]\nsubject = \"flow.archived.audit\"");
        assert!(e.contains("audit.subject"), "{e}");
        let e = err("[nats]\nconsumer = \"a.b\"");
        assert!(e.contains("nats.consumer"), "{e}");
        let e = err("[nats]\nmax_ack_pending = 100");
        assert!(e.contains("nats.max_ack_pending"), "{e}");
        let e = err("[nats]\nuser = \"u\"");
        assert!(e.contains("nats.user"), "{e}");
        let e = err("[nats]\ntls_cert_file = \"c.pem\"");
        assert!(e.contains("nats.tls_cert_file"), "{e}");
        let c = Config::from_sources(
            Some("[nats]\nsubjects = \"a.>, b.*\"\n[publish]\ndestination = \"nats\""),
            &[],
        )
        .unwrap();
        assert_eq!(c.nats.subjects, ["a.>", "b.*"]);
        assert_eq!(c.publish.destination, Destination::Nats);
    }
}
