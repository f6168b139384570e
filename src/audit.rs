//! The audit trail: one JSON line per operation that changes what the archive holds or
//! who may remove it — archive (per segment), purge, hold, release, erase, replay — with
//! actor, time, reason and counts. Lines are appended and fsynced before the operation
//! reports success; `flow-archiver audit` reads them back.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::archive::rfc3339_ms;
use crate::publish::{JsonLinesFile, PublishError};

/// One audited operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339, milliseconds, UTC.
    pub time: String,
    /// `archive`, `purge`, `hold`, `release`, `erase` or `replay`.
    pub action: String,
    /// Who asked: `--actor`, the API token's role, or `flow-archiver` for the service.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The object (segment) the operation touched, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_uri: Option<String>,
    /// E.g. `parts`, `events`, `bytes`.
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
}

impl AuditRecord {
    pub fn new(action: &str, actor: &str, now_ms: i64) -> AuditRecord {
        AuditRecord {
            time: rfc3339_ms(now_ms),
            action: action.to_string(),
            actor: actor.to_string(),
            tenant: None,
            flow_id: None,
            reason: None,
            object_uri: None,
            counts: BTreeMap::new(),
        }
    }

    pub fn flow(mut self, tenant: &str, flow_id: &str) -> AuditRecord {
        self.tenant = Some(tenant.to_string());
        self.flow_id = Some(flow_id.to_string());
        self
    }

    pub fn count(mut self, name: &str, n: u64) -> AuditRecord {
        self.counts.insert(name.to_string(), n);
        self
    }
}

/// The audit file (JSON Lines, fsynced per append).
pub struct AuditLog {
    file: JsonLinesFile,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<AuditLog, PublishError> {
        Ok(AuditLog {
            file: JsonLinesFile::open(path)?,
        })
    }

    /// Appends durably (blocking; records are small and rare).
    pub fn record(&self, records: &[AuditRecord]) -> Result<(), PublishError> {
        self.file.append(records)
    }

    /// [`AuditLog::record`] off the async workers.
    pub async fn append(self: &Arc<Self>, record: AuditRecord) -> Result<(), PublishError> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.record(&[record]))
            .await
            .map_err(|e| PublishError::Io {
                path: self.file.path().display().to_string(),
                source: std::io::Error::other(e),
            })?
    }
}

/// Records at or after `since_ms` (all when `None`), in file order. A damaged line is
/// reported as an error naming its line number: an audit trail is not skimmed.
pub fn read(path: &Path, since_ms: Option<i64>) -> Result<Vec<AuditRecord>, PublishError> {
    let io = |source| PublishError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let since = since_ms.map(rfc3339_ms);
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let record: AuditRecord = serde_json::from_str(&line)
            .map_err(|e| PublishError::Encode(format!("{} line {}: {e}", path.display(), n + 1)))?;
        // Same format and zone throughout, so text order is time order.
        if since.as_deref().is_none_or(|s| record.time.as_str() >= s) {
            out.push(record);
        }
    }
    Ok(out)
}
