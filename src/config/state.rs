//! `[state]`: where flows live until they are archived — the embedded store on local
//! disk (one instance), or PostgreSQL shared by any number of instances.

use std::path::PathBuf;
use std::time::Duration;

use crate::settings::{duration_text, invalid, ConfigError};
use serde::{Deserialize, Serialize};

/// Which [`crate::state::StateStore`] holds the live flows.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// redb and an event journal in `state.path`: the fast single-node default.
    #[default]
    Embedded,
    /// PostgreSQL at `state.url`: instances are interchangeable (`docs/scaling.md`).
    Postgres,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// `embedded` (default) or `postgres`.
    pub backend: StateBackend,
    /// Directory holding the embedded store (`state.redb` and the event journal
    /// `journal/`). Default `./data/state`.
    pub path: PathBuf,
    /// Page cache of the embedded store, in bytes. Default 16 MiB; memory use does not
    /// grow with the number of tracked flows beyond this.
    pub cache_bytes: u64,
    /// Size after which the event journal starts a new file. A file is deleted once
    /// every event in it is archived, so smaller files free disk sooner. Default 64 MiB.
    pub journal_file_bytes: u64,
    /// Verify `state.redb` (redb's integrity check: every page's checksum) each time
    /// the embedded store opens, so that a damaged file stops the start with an error
    /// naming it instead of failing later. Costs ~0.3 s per 200 MB of `state.redb`
    /// when cached, ~1.2 s from disk. Default true.
    pub verify_on_open: bool,
    /// Free bytes the embedded store leaves on its filesystem: below this, ingest
    /// pauses (nothing more is acknowledged) until archiving or the operator frees
    /// space, so the database never meets a full disk. Default 64 MiB.
    pub min_free_bytes: u64,
    /// `postgres://user:password@host:port/database?sslmode=…` for the postgres
    /// backend; `DATABASE_URL` when unset. `sslmode` is `disable`, `prefer`,
    /// `require` (encrypted, certificate not checked, as libpq), `verify-ca` or
    /// `verify-full`.
    pub url: Option<String>,
    /// Connections per instance. Default 8.
    pub pool_size: usize,
    /// PEM file of the CA that signed the server's certificate (`verify-ca`,
    /// `verify-full`); the system's roots when unset.
    pub tls_ca_file: Option<PathBuf>,
    /// How long an instance's claim on due flows and intents lasts without renewal.
    /// An instance that dies is taken over this long after. Default 30s.
    #[serde(with = "duration_text")]
    pub lease: Duration,
    /// How long an operation keeps retrying while the database is unreachable before
    /// it fails. Default 2m.
    #[serde(with = "duration_text")]
    pub retry_for: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: StateBackend::Embedded,
            path: PathBuf::from("./data/state"),
            cache_bytes: 16 << 20,
            journal_file_bytes: 64 << 20,
            verify_on_open: true,
            min_free_bytes: 64 << 20,
            url: None,
            pool_size: 8,
            tls_ca_file: None,
            lease: Duration::from_secs(30),
            retry_for: Duration::from_secs(120),
        }
    }
}

/// The `sslmode` values of libpq that the postgres backend honours (`allow` is taken
/// as `prefer`).
const SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

impl StateConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.journal_file_bytes < 4096 {
            return Err(invalid(
                "state.journal_file_bytes",
                format!("{} bytes is too small", self.journal_file_bytes),
                "use at least 4096, e.g. 67108864 (64 MiB)",
            ));
        }
        if self.backend == StateBackend::Postgres {
            match self.url.as_deref() {
                None | Some("") => {
                    return Err(invalid(
                        "state.url",
                        "the postgres backend needs a database",
                        "set state.url (or DATABASE_URL) to postgres://user:password@host:5432/db",
                    ))
                }
                Some(url)
                    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) =>
                {
                    return Err(invalid(
                        "state.url",
                        "not a postgres:// URL",
                        "write it as postgres://user:password@host:5432/db",
                    ))
                }
                Some(url) => {
                    let parsed = url::Url::parse(url).map_err(|e| {
                        invalid(
                            "state.url",
                            format!("cannot be parsed: {e}"),
                            "write it as postgres://user:password@host:5432/db (percent-encode special characters in the password)",
                        )
                    })?;
                    if let Some((_, mode)) = parsed.query_pairs().find(|(k, _)| k == "sslmode") {
                        if !SSL_MODES.contains(&mode.as_ref()) {
                            return Err(invalid(
                                "state.url",
                                format!("sslmode={mode} is not a mode"),
                                format!("use one of {}", SSL_MODES.join(", ")),
                            ));
                        }
                    }
                }
            }
            if self.pool_size < 2 {
                return Err(invalid(
                    "state.pool_size",
                    format!("{} connection is too few", self.pool_size),
                    "use at least 2 (ingest and archival run side by side), e.g. 8",
                ));
            }
            if self.lease < Duration::from_secs(3) {
                return Err(invalid(
                    "state.lease",
                    format!(
                        "{} is too short to renew",
                        crate::settings::format_duration(self.lease)
                    ),
                    "use at least 3s, e.g. \"30s\"",
                ));
            }
        }
        Ok(())
    }

    /// The URL with its password replaced, for logs and `state status`.
    pub fn redacted_url(&self) -> String {
        let Some(url) = &self.url else {
            return String::new();
        };
        match url::Url::parse(url) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            Ok(u) => u.to_string(),
            Err(_) => "(unparsable URL)".into(),
        }
    }
}
