//! `[audit]`: where the audit trail goes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::nats::{valid_stream_name, valid_subject, NatsConfig};
use crate::settings::{invalid, ConfigError};

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

impl AuditConfig {
    /// Checks the stream and subject; `nats` because the subject must stay outside
    /// the archived stream's subjects.
    pub fn validate(&self, nats: &NatsConfig) -> Result<(), ConfigError> {
        if !valid_stream_name(&self.stream) {
            return Err(invalid(
                "audit.stream",
                format!("{:?} is not a valid stream or consumer name", self.stream),
                "use letters, digits, '_' or '-'",
            ));
        }
        let subject = &self.subject;
        if subject.is_empty() {
            return Ok(());
        }
        if !valid_subject(subject, false) {
            return Err(invalid(
                "audit.subject",
                format!("{subject:?} is not a valid NATS subject"),
                "use dot-separated tokens without spaces, e.g. \"flows.events.>\"",
            ));
        }
        if subject.starts_with(&format!("{}.", nats.archived_prefix)) {
            return Err(invalid(
                "audit.subject",
                format!(
                    "{subject:?} is inside nats.archived_prefix {:?} (its stream would capture it)",
                    nats.archived_prefix
                ),
                "use a subject of its own, e.g. \"flow.audit\"",
            ));
        }
        Ok(())
    }
}
