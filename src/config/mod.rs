//! Configuration: a TOML file plus environment overrides, parsed into plain serde
//! structs and validated once at load.
//!
//! Precedence, lowest first: built-in defaults < the TOML file (`--config`, or
//! `./flow-archiver.toml` when present) < `FLOW_ARCHIVER__SECTION__KEY` variables <
//! the operator names `FLOW_RETENTION_DAYS`, `ARCHIVE_BUCKET`, `ARCHIVE_PREFIX`,
//! `ARCHIVE_CONCURRENCY`, `ARCHIVE_BATCH_SIZE`. `AWS_*` and `OTEL_*` belong to the
//! libraries that read them. Every key is listed in `docs/configuration.md`.
//!
//! One file per section, each with its own `validate`; the Kafka and NATS sections
//! live beside their connectors ([`crate::kafka::KafkaConfig`],
//! [`crate::nats::NatsConfig`]). [`Config::validate`] runs them all plus the checks
//! that span sections. Every error names the key and how to fix it; the runtime only
//! ever sees a [`Config`] that passed it.

mod api;
mod archive;
mod audit;
mod index;
mod input;
mod publish;
mod retention;
mod scheduler;
mod state;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::kafka::{DataEncoding, KafkaConfig};
pub use crate::nats::NatsConfig;
pub use crate::settings::{format_duration, parse_duration, ConfigError};
pub use api::{check_listen, ApiConfig};
pub use archive::{
    ArchiveConfig, Compression, Layout, ObjectLock, Transition, ARCHIVE_TIERS, STORAGE_CLASSES,
};
pub use audit::AuditConfig;
pub use index::IndexConfig;
pub use input::{FieldMapping, InputConfig, InputFormat, MappingOverrides};
pub use publish::{DeadLetterConfig, Destination, PublishConfig};
pub use retention::{parse_retention, Retention, RetentionConfig, RetentionOverride, Selector};
pub use scheduler::SchedulerConfig;
pub use state::{StateBackend, StateConfig};

use crate::settings::invalid;

/// Default file read when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_FILE: &str = "flow-archiver.toml";

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

    /// [`Config::load`] with the process environment (variables that are not UTF-8
    /// are not ours, and are skipped rather than fatal).
    pub fn load_from_env(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Config::load(path, &env)
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
        if cfg.state.url.is_none() {
            cfg.state.url = lookup("DATABASE_URL").filter(|u| !u.is_empty());
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cross-field and range checks; every error names the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.state.validate()?;
        self.archive.validate()?;
        if self.archive.bucket.is_none()
            && self
                .retention
                .overrides
                .iter()
                .any(|o| o.storage_class.is_some())
        {
            return Err(invalid(
                "retention.override.storage_class",
                "a local directory has no storage classes",
                "set archive.bucket, or remove storage_class from the override",
            ));
        }
        self.kafka.validate()?;
        self.nats.validate()?;
        self.audit.validate(&self.nats)?;
        if self.nats.max_ack_pending < self.input.batch_size as i64 * 3 {
            return Err(invalid(
                "nats.max_ack_pending",
                format!(
                    "{} is less than three input batches ({})",
                    self.nats.max_ack_pending,
                    self.input.batch_size * 3
                ),
                "raise it (default 20000) or lower input.batch_size: batches in flight wait for their acks",
            ));
        }
        self.api.validate()?;
        self.input.validate()?;
        self.scheduler.validate()?;
        self.retention.validate()
    }

    /// The defaults with every data path (state, archive, spool, records, dead letters,
    /// audit trail) under `dir` — for benchmarks, tests and scratch runs.
    pub fn rooted_at(dir: &Path) -> Config {
        let mut c = Config::default();
        c.state.path = dir.join("state");
        c.archive.dir = dir.join("archive");
        c.archive.spool_dir = dir.join("spool");
        c.publish.archived_path = dir.join("archived.jsonl");
        c.dead_letter.path = dir.join("dead-letter.jsonl");
        c.index.path = dir.join("index.sqlite");
        c.audit.path = dir.join("audit.jsonl");
        c
    }

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
        if shown.state.url.is_some() {
            shown.state.url = Some(shown.state.redacted_url());
        }
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
