//! The audit trail: one JSON line per operation that changes what the archive holds or
//! who may remove it — archive (per segment), purge, hold, release, erase, replay — with
//! actor, time, reason and counts. Lines are appended and fsynced before the operation
//! reports success; `flow-archiver audit` reads them back. When events are published
//! to a broker, each line is also sent to its audit topic (Kafka, keyed by tenant) or
//! subject (NATS JetStream, in a stream of its own), after the file: the file is the
//! record, the broker copy is for central collection.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Destination};
use crate::publish::{JsonLinesFile, KafkaEventWriter, NatsEventWriter, PublishError};
use crate::time::rfc3339_ms;

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

/// One line of `audit`: time, action, actor, the flow or tenant, reason, object, counts.
impl std::fmt::Display for AuditRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flow = match (&self.tenant, &self.flow_id) {
            (Some(t), Some(fl)) => format!(" {t}/{fl}"),
            (Some(t), None) => format!(" {t}"),
            _ => String::new(),
        };
        write!(f, "{}  {:<8} {}{flow}", self.time, self.action, self.actor)?;
        if let Some(reason) = &self.reason {
            write!(f, " reason={reason:?}")?;
        }
        if let Some(uri) = &self.object_uri {
            write!(f, " {uri}")?;
        }
        for (k, v) in &self.counts {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// Where audit lines are copied besides the file.
enum BrokerCopy {
    Kafka(KafkaEventWriter),
    Nats(Box<NatsEventWriter>),
}

/// The audit file (JSON Lines, fsynced per append), and its broker copy.
pub struct AuditLog {
    file: JsonLinesFile,
    broker: Option<BrokerCopy>,
}

impl AuditLog {
    /// The file only.
    pub fn open(path: &Path) -> Result<AuditLog, PublishError> {
        Ok(AuditLog {
            file: JsonLinesFile::open(path)?,
            broker: None,
        })
    }

    /// The file, and the broker copy `config` asks for.
    pub async fn open_for(config: &Config) -> Result<AuditLog, PublishError> {
        let mut log = AuditLog::open(&config.audit.path)?;
        let audit = &config.audit;
        log.broker = match config.publish.destination {
            Destination::Kafka if !audit.topic.is_empty() => Some(BrokerCopy::Kafka(
                KafkaEventWriter::open(&config.kafka, &audit.topic)?,
            )),
            Destination::Nats if !audit.subject.is_empty() => {
                let client = crate::nats::connect(&config.nats)
                    .await
                    .map_err(PublishError::Broker)?;
                let js = async_nats::jetstream::new(client);
                crate::nats::ensure_stream(&js, audit_stream_config(audit))
                    .await
                    .map_err(PublishError::Broker)?;
                Some(BrokerCopy::Nats(Box::new(
                    NatsEventWriter::open(&config.nats, &audit.subject).await?,
                )))
            }
            _ => None,
        };
        Ok(log)
    }

    /// Appends durably (blocking; records are small and rare).
    pub fn record(&self, records: &[AuditRecord]) -> Result<(), PublishError> {
        self.file.append(records)
    }

    /// [`AuditLog::record`] off the async workers, then the broker copy.
    pub async fn append(self: &Arc<Self>, record: AuditRecord) -> Result<(), PublishError> {
        let line = serde_json::to_vec(&record).map_err(|e| PublishError::Encode(e.to_string()))?;
        let key = record.tenant.clone().unwrap_or_else(|| "-".into());
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.record(&[record]))
            .await
            .map_err(|e| PublishError::Io {
                path: self.file.path().display().to_string(),
                source: std::io::Error::other(e),
            })??;
        match &self.broker {
            Some(BrokerCopy::Kafka(w)) => w.send(&key, &[line]).await,
            Some(BrokerCopy::Nats(w)) => w.send(&[line]).await,
            None => Ok(()),
        }
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

/// The stream of audit records: every one kept (limits are the operator's).
fn audit_stream_config(a: &crate::config::AuditConfig) -> async_nats::jetstream::stream::Config {
    async_nats::jetstream::stream::Config {
        name: a.stream.clone(),
        subjects: vec![a.subject.clone()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    }
}
