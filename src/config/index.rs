//! `[index]`: the archive index.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
