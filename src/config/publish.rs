//! `[publish]` and `[dead_letter]`: where `flow.archived` records and refused input go.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
