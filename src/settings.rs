//! What every configuration section is made of: [`ConfigError`], which names the key,
//! the problem and the fix, and the value types written in TOML and environment
//! variables (durations, lists).
//!
//! On the ground floor, apart from [`crate::config`]: the sections kept beside their
//! connectors (`kafka::KafkaConfig`, `nats::NatsConfig`) and the aggregate
//! [`crate::config::Config`] both build on it, and it imports nothing from the crate.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// A configuration that cannot run; the message says which key and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid configuration key `{key}`: {problem}. Fix: {fix}")]
    Invalid {
        key: &'static str,
        problem: String,
        fix: String,
    },
}

pub fn invalid(
    key: &'static str,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Parses `30d`, `12h`, `90s`, `5y` (a year is 365.25 days), `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like \"30d\", \"12h\" or \"0s\" ({e})"))
}

/// Formats in the largest unit that represents `d` exactly (`90d`, `12h`, `1500ms`),
/// so `config check` prints what an operator would write and it parses back.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Serde for a [`Duration`] written as text (`"50ms"`, `"30d"`).
pub mod duration_text {
    use super::*;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde for an optional [`Duration`] written as text.
pub mod opt_duration_text {
    use super::*;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// A list given as a TOML array or as one comma-separated string (environment).
pub fn list_text<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Text::deserialize(d)? {
        Text::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect(),
        Text::Many(v) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_in_their_largest_exact_unit() {
        let f = |s: u64| format_duration(Duration::from_secs(s));
        assert_eq!(f(90 * 86_400), "90d");
        assert_eq!(f(7200), "2h");
        assert_eq!(f(90), "90s");
        assert_eq!(f(0), "0s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        let five_years = parse_duration("5y").unwrap();
        assert_eq!(
            parse_duration(&format_duration(five_years)).unwrap(),
            five_years
        );
    }
}
