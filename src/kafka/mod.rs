//! Kafka client settings shared by the Kafka source and the Kafka publishers.
//!
//! Operator properties (`kafka.properties`) pass through to librdkafka; the few that
//! the delivery guarantees rest on are set here after them, and config validation
//! refuses conflicting values, so what runs is what `docs/kafka.md` promises.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::{Client, ClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;

mod config;

pub use config::{valid_topic_name, DataEncoding, KafkaConfig, KAFKA_PINNED_PROPERTIES};

/// How long start-up checks wait for the brokers.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// The common client configuration: passthrough properties, then ours.
pub fn client_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("client.id", "flow-archiver");
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    c.set("bootstrap.servers", &k.brokers);
    c
}

/// Checks that every topic exists (brokers are often set not to auto-create them);
/// blocking, for start-up.
pub fn require_topics<C: ClientContext>(
    client: &Client<C>,
    brokers: &str,
    topics: &[&str],
) -> Result<(), String> {
    for topic in topics {
        let metadata = client
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(|e| format!("cannot reach Kafka at {brokers}: {}", describe(&e)))?;
        let found = metadata.topics().iter().find(|t| t.name() == *topic);
        let missing = match found {
            None => true,
            Some(t) => {
                t.partitions().is_empty()
                    || t.error().is_some_and(|e| {
                        RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition
                    })
            }
        };
        if missing {
            return Err(format!(
                "topic {topic:?} does not exist on {brokers}; create it (docs/kafka.md lists the topics) or fix the configured name"
            ));
        }
    }
    Ok(())
}

/// A Kafka error in words, with a hint for the common ones.
pub fn describe(e: &KafkaError) -> String {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::BrokerTransportFailure)
        | Some(RDKafkaErrorCode::AllBrokersDown)
        | Some(RDKafkaErrorCode::OperationTimedOut) => {
            format!("{e} (are the brokers up and `kafka.brokers` right?)")
        }
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
            format!("{e} (raise the topic's max.message.bytes or the producer's message.max.bytes)")
        }
        _ => e.to_string(),
    }
}

/// librdkafka's logs and errors, through `tracing`, each kind at most once per
/// [`QUIET_FOR`]: a broker outage is one line every few seconds, not a flood.
#[derive(Default)]
pub struct QuietLogs {
    last: Mutex<HashMap<String, Instant>>,
}

pub const QUIET_FOR: Duration = Duration::from_secs(10);

impl QuietLogs {
    fn allow(&self, kind: &str) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match last.get(kind) {
            Some(t) if now.duration_since(*t) < QUIET_FOR => false,
            _ => {
                last.insert(kind.to_string(), now);
                true
            }
        }
    }

    pub fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning
                // Shared `kafka.properties` meant for the other client role.
                if facility != "CONFWARN" =>
            {
                if self.allow(facility) {
                    tracing::warn!(target: "librdkafka", facility, "{message}");
                }
            }
            _ => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    pub fn error(&self, error: &KafkaError, reason: &str) {
        let kind = format!("{:?}", error.rdkafka_error_code());
        if self.allow(&kind) {
            tracing::warn!(target: "librdkafka", %error, "Kafka: {reason}");
        }
    }
}

/// A consumer with no rebalance hooks (the index builder's) logs quietly too.
impl rdkafka::consumer::ConsumerContext for QuietLogs {}

impl ClientContext for QuietLogs {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        QuietLogs::log(self, level, fac, log_message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        QuietLogs::error(self, &error, reason)
    }
}
