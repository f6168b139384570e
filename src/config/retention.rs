//! `[retention]`: when a flow is due for the archive, and how long the archive keeps it.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::settings::{
    duration_text, format_duration, invalid, opt_duration_text, parse_duration, ConfigError,
};

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
    /// S3 storage class of the objects holding matching flows; unset keeps
    /// `archive.storage_class`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

/// All given conditions must hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Selector {
    pub tenant: Option<String>,
    pub status: Option<crate::flow::FlowStatus>,
    pub labels: std::collections::BTreeMap<String, String>,
}

impl RetentionConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, o) in self.overrides.iter().enumerate() {
            if o.retention.is_none() && o.archive_for.is_none() && o.storage_class.is_none() {
                return Err(invalid(
                    "retention.override",
                    format!(
                        "override #{} sets none of retention, archive_for and storage_class",
                        i + 1
                    ),
                    "add `retention = \"0s\"`, `archive_for = \"5y\"` and/or `storage_class = \"GLACIER_IR\"`, or remove it",
                ));
            }
            if let Some(class) = &o.storage_class {
                crate::config::archive::check_upload_class(
                    "retention.override.storage_class",
                    class,
                )?;
            }
        }
        Ok(())
    }
}
