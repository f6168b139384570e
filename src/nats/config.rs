//! `[nats]`: the input stream and durable consumer, and the streams flow-archiver
//! writes. Beside the NATS client code that reads it; part of
//! [`crate::config::Config`].

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{duration_text, invalid, list_text, ConfigError};

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
    /// Durable pull consumer. Give each instance its own (see `docs/nats.md`, "Scaling out").
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

/// A NATS subject without wildcards: dot-separated tokens of visible characters.
pub fn valid_subject(s: &str, wildcards: bool) -> bool {
    !s.is_empty()
        && s.split('.').all(|t| {
            !t.is_empty()
                && !t.chars().any(|c| c.is_whitespace() || c.is_control())
                && (wildcards || (t != "*" && t != ">"))
        })
}

/// JetStream's rule for stream and consumer names.
pub fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl NatsConfig {
    /// The section's own checks; those that involve `[audit]` or `[input]` are made by
    /// [`crate::config::Config::validate`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self;
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
        ];
        for (key, name) in names {
            if !valid_stream_name(name) {
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
            ]);
        for (key, subject, wildcards) in subjects {
            if !valid_subject(subject, wildcards) {
                return Err(invalid(
                    key,
                    format!("{subject:?} is not a valid NATS subject"),
                    "use dot-separated tokens without spaces, e.g. \"flows.events.>\"",
                ));
            }
        }
        if n.max_deliver < 1 {
            return Err(invalid(
                "nats.max_deliver",
                "must be at least 1",
                "use e.g. 5",
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
}
