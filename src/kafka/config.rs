//! `[kafka]`: the input topics, the consumer group and the topics flow-archiver writes.
//! Beside the Kafka client code that reads it; part of [`crate::config::Config`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{duration_text, invalid, list_text, ConfigError};

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
    /// Partitions this instance reads, assigned rather than balanced by the group
    /// (the same numbers of every topic). Empty (default): the group shares them out.
    /// Several instances on the embedded state store each need their own fixed set;
    /// on the postgres store any instance may read any partition.
    pub partitions: Vec<i32>,
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
            partitions: Vec::new(),
            archived_topic: "flow.archived".into(),
            dead_letter_topic: "flow.events.dlq".into(),
            data_encoding: DataEncoding::Avro,
            batch_wait: Duration::from_millis(50),
            properties: Default::default(),
        }
    }
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

/// Kafka's own rule for topic names.
pub fn valid_topic_name(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl KafkaConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = self;
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
        if let Some(bad) = k.partitions.iter().find(|p| **p < 0) {
            return Err(invalid(
                "kafka.partitions",
                format!("{bad} is not a partition number"),
                "list partition numbers from 0, e.g. [0, 1]",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = k.partitions.iter().find(|p| !seen.insert(**p)) {
            return Err(invalid(
                "kafka.partitions",
                format!("partition {twice} is listed twice"),
                "list each partition once",
            ));
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
}
