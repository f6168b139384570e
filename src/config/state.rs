//! `[state]`: the embedded state store.

use std::path::PathBuf;

use crate::settings::{invalid, ConfigError};
use serde::{Deserialize, Serialize};

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

impl StateConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.journal_file_bytes < 4096 {
            return Err(invalid(
                "state.journal_file_bytes",
                format!("{} bytes is too small", self.journal_file_bytes),
                "use at least 4096, e.g. 67108864 (64 MiB)",
            ));
        }
        Ok(())
    }
}
