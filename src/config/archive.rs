//! `[archive]`: where archive objects go and how they are built.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::settings::{invalid, ConfigError};

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

/// S3 Object Lock on every uploaded object (`docs/compliance.md`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ObjectLock {
    /// No retention on the objects: flow-archiver's own code alone keeps them.
    #[default]
    Off,
    /// Retention that an account with `s3:BypassGovernanceRetention` can lift.
    Governance,
    /// Retention that nobody, the root account included, can lift or shorten.
    Compliance,
}

impl ObjectLock {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectLock::Off => "off",
            ObjectLock::Governance => "governance",
            ObjectLock::Compliance => "compliance",
        }
    }
}

/// S3 classes whose objects need a `RestoreObject` before any read.
pub const ARCHIVE_TIERS: &[&str] = &["GLACIER", "DEEP_ARCHIVE"];

/// The S3 storage classes an object can be uploaded to.
pub const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
    "REDUCED_REDUNDANCY",
];

/// A storage class objects can be uploaded to: an S3 class whose objects can be read
/// back at once (every upload is verified by reading it).
pub(crate) fn check_upload_class(key: &'static str, class: &str) -> Result<(), ConfigError> {
    if !STORAGE_CLASSES.contains(&class) {
        return Err(invalid(
            key,
            format!("{class:?} is not an S3 storage class"),
            format!("use one of {}", STORAGE_CLASSES.join(", ")),
        ));
    }
    if ARCHIVE_TIERS.contains(&class) {
        return Err(invalid(
            key,
            format!("{class} objects cannot be read back until restored, and every upload is read back and verified before the live state goes"),
            "upload to STANDARD_IA or GLACIER_IR and let a lifecycle rule move verified objects to GLACIER or DEEP_ARCHIVE (docs/compliance.md, \"Storage classes\")",
        ));
    }
    Ok(())
}

/// A bucket lifecycle transition (`flow-archiver lifecycle`): objects move to
/// `storage_class` once they are `after` old.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    #[serde(with = "crate::settings::duration_text")]
    pub after: std::time::Duration,
    pub storage_class: String,
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
    /// Consecutive small flow parts share a zstd frame until it holds this many raw
    /// bytes (`flow-archive/v2`): one frame per part costs far more bytes than the
    /// compression allows. A single-flow read decompresses one frame. Default 128 KiB.
    pub frame_target_bytes: u64,
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
    /// S3 Object Lock: `off` (default), `governance` or `compliance`. Every object
    /// is then retained until the latest purge date of the flows it holds, and legal
    /// holds are placed on the objects themselves. Needs a bucket with Object Lock
    /// enabled: checked at start.
    pub object_lock: ObjectLock,
    /// S3 storage class of uploaded objects (`STANDARD_IA`, `GLACIER_IR`, …); unset
    /// leaves the bucket's default (`STANDARD`).
    pub storage_class: Option<String>,
    /// `[[archive.transition]]`: the bucket lifecycle transitions that
    /// `flow-archiver lifecycle plan|apply` derives a lifecycle configuration from,
    /// in increasing age (e.g. STANDARD_IA after 30d, GLACIER after 180d).
    #[serde(rename = "transition", skip_serializing_if = "Vec::is_empty")]
    pub transitions: Vec<Transition>,
    /// S3: how long one request may take before it fails and is retried. A hung
    /// server then shows as failures in the metrics and logs instead of a stall.
    /// Default `30s`.
    #[serde(with = "crate::settings::duration_text")]
    pub request_timeout: std::time::Duration,
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
            frame_target_bytes: 128 << 10,
            layout: Layout::Segment,
            segment_max_bytes: 64 << 20,
            segment_max_flows: 1000,
            concurrency: 4,
            batch_size: 10_000,
            multipart_threshold_bytes: 16 << 20,
            spool_dir: PathBuf::from("./data/spool"),
            object_lock: ObjectLock::Off,
            storage_class: None,
            transitions: Vec::new(),
            request_timeout: std::time::Duration::from_secs(30),
        }
    }
}

impl ArchiveConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let a = self;
        if a.request_timeout < std::time::Duration::from_secs(1) {
            return Err(invalid(
                "archive.request_timeout",
                format!("{:?} is too short for one S3 request", a.request_timeout),
                "use at least 1s (30s is the default)",
            ));
        }
        // A frame is built in memory and a single-flow read decompresses all of it.
        if a.frame_target_bytes > 16 << 20 {
            return Err(invalid(
                "archive.frame_target_bytes",
                format!("{} bytes is too large", a.frame_target_bytes),
                "use at most 16777216 (16 MiB); 131072 (128 KiB) is the default",
            ));
        }
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
        if a.object_lock != ObjectLock::Off && a.bucket.is_none() {
            return Err(invalid(
                "archive.object_lock",
                format!("{:?} needs an S3 bucket", a.object_lock.as_str()),
                "set archive.bucket to a bucket with Object Lock enabled, or object_lock = \"off\" for a local directory",
            ));
        }
        if let Some(class) = &a.storage_class {
            check_upload_class("archive.storage_class", class)?;
            if a.bucket.is_none() {
                return Err(invalid(
                    "archive.storage_class",
                    "a local directory has no storage classes",
                    "set archive.bucket, or remove storage_class",
                ));
            }
        }
        let mut previous_days = 0;
        for t in &a.transitions {
            let key = "archive.transition";
            let days = t.after.as_secs() / 86_400;
            if a.bucket.is_none() {
                return Err(invalid(
                    key,
                    "a local directory has no lifecycle",
                    "set archive.bucket, or remove the transitions",
                ));
            }
            if t.after.as_secs() % 86_400 != 0 || days == 0 {
                return Err(invalid(
                    key,
                    format!(
                        "after = {:?} is not a whole number of days",
                        crate::settings::format_duration(t.after)
                    ),
                    "S3 lifecycle rules count whole days: use e.g. \"30d\"",
                ));
            }
            if days <= previous_days {
                return Err(invalid(
                    key,
                    "transitions must be in increasing age",
                    "list them youngest first, e.g. 30d then 180d",
                ));
            }
            previous_days = days;
            let class = t.storage_class.as_str();
            if class == "STANDARD"
                || !(STORAGE_CLASSES.contains(&class) || ARCHIVE_TIERS.contains(&class))
            {
                return Err(invalid(
                    key,
                    format!("{class:?} is not a class objects can move to"),
                    "use STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, GLACIER_IR, GLACIER or DEEP_ARCHIVE",
                ));
            }
            if matches!(class, "STANDARD_IA" | "ONEZONE_IA") && days < 30 {
                return Err(invalid(
                    key,
                    format!("S3 moves objects to {class} after 30 days at the earliest"),
                    "use after = \"30d\" or more",
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
        Ok(())
    }
}
