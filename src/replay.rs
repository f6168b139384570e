//! `replay`: re-publishes an archived flow's events, in order and exactly as they were
//! received (structured CloudEvents keep every original attribute), to a Kafka topic,
//! a NATS subject or stdout. Each part is read and verified whole before any of it is
//! sent, so a damaged part sends nothing.

use std::sync::Arc;

use serde::Serialize;

use crate::archive::{ArchiveError, ArchiveStore};
use crate::config::Config;
use crate::pipeline::{Pipeline, PipelineError};
use crate::publish::PublishError;
use crate::read::archived_parts;
use crate::state::{StateError, StateStore};
use crate::units::human_bytes;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Nothing of the flow is archived (it may still be live).
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("a replay task failed: {0}")]
    Task(tokio::task::JoinError),
}

/// Where `replay` sends events.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayTarget {
    Kafka(String),
    Nats(String),
    /// JSON Lines on stdout.
    Stdout,
}

impl ReplayTarget {
    pub fn parse(text: &str) -> Result<ReplayTarget, String> {
        match text {
            "-" | "stdout" => Ok(ReplayTarget::Stdout),
            t if t.starts_with("nats:") => {
                let subject = &t["nats:".len()..];
                if crate::nats::valid_subject(subject, false) {
                    Ok(ReplayTarget::Nats(subject.to_string()))
                } else {
                    Err(format!(
                        "{subject:?} is not a NATS subject without wildcards"
                    ))
                }
            }
            t => match t.strip_prefix("kafka:") {
                Some(topic) if crate::kafka::valid_topic_name(topic) => {
                    Ok(ReplayTarget::Kafka(topic.to_string()))
                }
                Some(topic) => Err(format!("{topic:?} is not a valid Kafka topic name")),
                None => Err(format!(
                    "unknown replay target {t:?}: use kafka:TOPIC, nats:SUBJECT or stdout"
                )),
            },
        }
    }
}

/// What `replay` sent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    pub tenant: String,
    pub flow_id: String,
    pub target: String,
    pub parts: Vec<String>,
    pub events: u64,
    pub bytes: u64,
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "replayed {}/{}: {} events ({}) from {} parts to {}",
            self.tenant,
            self.flow_id,
            self.events,
            human_bytes(self.bytes),
            self.parts.len(),
            self.target
        )
    }
}

/// Re-publishes an archived flow's events (see [`replay_parts`]) and records it in the
/// audit trail as done by `actor`.
pub async fn replay(
    pipeline: &Pipeline,
    tenant: &str,
    flow_id: &str,
    target: &ReplayTarget,
    actor: &str,
) -> Result<ReplayReport, ReplayError> {
    let report = replay_parts(
        pipeline.objects(),
        pipeline.store(),
        pipeline.config(),
        tenant,
        flow_id,
        target,
    )
    .await?;
    let record = crate::audit::AuditRecord::new("replay", actor, pipeline.now_ms())
        .flow(tenant, flow_id)
        .count("events", report.events)
        .count("flow_parts", report.parts.len() as u64);
    pipeline.audit(record).await?;
    Ok(report)
}

/// Re-publishes an archived flow's events, in order, as they were received.
pub async fn replay_parts(
    objects: &ArchiveStore,
    store: &Arc<dyn StateStore>,
    config: &Config,
    tenant: &str,
    flow_id: &str,
    target: &ReplayTarget,
) -> Result<ReplayReport, ReplayError> {
    let parts = archived_parts(objects, tenant, flow_id).await?;
    if parts.is_empty() {
        let store = store.clone();
        let (t, f) = (tenant.to_string(), flow_id.to_string());
        let live = tokio::task::spawn_blocking(move || store.live_flow(&t, &f))
            .await
            .map_err(ReplayError::Task)??;
        return Err(ReplayError::NotFound(match live {
            Some(_) => format!("{tenant}/{flow_id} is not archived yet (it is still live)"),
            None => format!("no archived flow {tenant}/{flow_id}"),
        }));
    }
    enum Writer {
        Kafka(crate::publish::KafkaEventWriter),
        Nats(Box<crate::publish::NatsEventWriter>),
        Stdout,
    }
    let writer = match target {
        ReplayTarget::Kafka(topic) => {
            let (k, topic) = (config.kafka.clone(), topic.clone());
            Writer::Kafka(
                tokio::task::spawn_blocking(move || {
                    crate::publish::KafkaEventWriter::open(&k, &topic)
                })
                .await
                .map_err(ReplayError::Task)??,
            )
        }
        ReplayTarget::Nats(subject) => Writer::Nats(Box::new(
            crate::publish::NatsEventWriter::open(&config.nats, subject).await?,
        )),
        ReplayTarget::Stdout => Writer::Stdout,
    };
    let mut report = ReplayReport {
        tenant: tenant.to_string(),
        flow_id: flow_id.to_string(),
        target: match target {
            ReplayTarget::Kafka(t) => format!("kafka:{t}"),
            ReplayTarget::Nats(s) => format!("nats:{s}"),
            ReplayTarget::Stdout => "stdout".into(),
        },
        ..Default::default()
    };
    for (key, part) in parts {
        // Each part is read and verified whole before any of it is sent.
        let contents = crate::archive::read_part(objects, &key, &part).await?;
        report.events += contents.events.len() as u64;
        report.bytes += contents.events.iter().map(|e| e.len() as u64).sum::<u64>();
        match &writer {
            Writer::Kafka(w) => w.send(flow_id, &contents.events).await?,
            Writer::Nats(w) => w.send(&contents.events).await?,
            Writer::Stdout => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                for event in &contents.events {
                    let written = out.write_all(event).and_then(|_| out.write_all(b"\n"));
                    written.map_err(|source| crate::publish::PublishError::Io {
                        path: "stdout".into(),
                        source,
                    })?;
                }
            }
        }
        report
            .parts
            .push(format!("{} part {} ({key})", part.flow_id, part.part));
    }
    Ok(report)
}
