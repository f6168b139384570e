//! `[scheduler]`: how often `run` looks for due flows and purges.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{duration_text, invalid, ConfigError};

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

impl SchedulerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() {
            return Err(invalid(
                "scheduler.interval",
                "0s would spin",
                "use e.g. \"1s\"",
            ));
        }
        if self.purge_interval.is_zero() {
            return Err(invalid(
                "scheduler.purge_interval",
                "0s would spin",
                "use e.g. \"1h\"",
            ));
        }
        Ok(())
    }
}
