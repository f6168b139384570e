//! Kafka destinations: `flow.archived` events and dead letters.
//!
//! Published events are CloudEvents in binary mode (Kafka binding 1.0.2): attributes
//! in `ce_*` headers, `content-type` naming the data encoding, the record value is the
//! data (Avro single-object encoding or JSON), the record key `{tenant}/{flow_id}/{part}`
//! — so a compacted topic keeps one record per flow part. The producer is idempotent
//! (`acks=all`); `publish` returns only when the broker acknowledged every record.
//!
//! Dead letters keep the original key, value and headers, plus `flow-archiver-*`
//! headers with the reason, the detail and where the record came from.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::encoding::DataEncoder;
use super::{DeadLetter, DeadLetterSink, PublishError, PublishedEvent, Publisher};
use crate::config::KafkaConfig;
use crate::kafka::QuietLogs;

/// How long a record may wait in the producer queue (retries included).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// Dead-letter values above this are cut (and flagged), so that a record refused as
/// oversize still fits the broker's default message size limit.
const MAX_DEAD_LETTER_VALUE: usize = 900 * 1024;

fn broker_error(topic: &str, e: &rdkafka::error::KafkaError) -> PublishError {
    PublishError::Broker(format!(
        "kafka topic {topic}: {}",
        crate::kafka::describe(e)
    ))
}

/// An idempotent producer writing to `topic`, after checking that the topic exists.
fn producer(k: &KafkaConfig, topic: &str) -> Result<FutureProducer<QuietLogs>, PublishError> {
    let mut c = crate::kafka::client_config(k);
    c.set("enable.idempotence", "true").set(
        "message.timeout.ms",
        DELIVERY_TIMEOUT.as_millis().to_string(),
    );
    if !k.properties.contains_key("linger.ms") {
        c.set("linger.ms", "5");
    }
    let producer: FutureProducer<QuietLogs> = c
        .create_with_context(QuietLogs::default())
        .map_err(|e| broker_error(topic, &e))?;
    crate::kafka::require_topics(producer.client(), &k.brokers, &[topic])
        .map_err(PublishError::Broker)?;
    Ok(producer)
}

/// `flow.archived` to a Kafka topic.
pub struct KafkaPublisher {
    producer: FutureProducer<QuietLogs>,
    topic: String,
    data: DataEncoder,
}

impl KafkaPublisher {
    /// Connects and checks the topic; blocking.
    pub fn open(k: &KafkaConfig) -> Result<KafkaPublisher, PublishError> {
        Ok(KafkaPublisher {
            producer: producer(k, &k.archived_topic)?,
            topic: k.archived_topic.clone(),
            data: DataEncoder::new(k.data_encoding)?,
        })
    }
}

fn ce_headers(e: &PublishedEvent, content_type: &str) -> OwnedHeaders {
    let attributes = [
        ("ce_specversion", e.specversion.as_str()),
        ("ce_id", &e.id),
        ("ce_source", &e.source),
        ("ce_type", &e.event_type),
        ("ce_subject", &e.subject),
        ("ce_time", &e.time),
        ("ce_dataschema", &e.dataschema),
        ("ce_tenant", &e.tenant),
        ("ce_partitionkey", &e.partitionkey),
        ("content-type", content_type),
    ];
    // The archive span's context twice: as the CloudEvents extension attribute and as
    // the W3C header that Kafka instrumentations read.
    let trace = e
        .traceparent
        .as_deref()
        .map(|t| [("ce_traceparent", t), ("traceparent", t)]);
    attributes
        .into_iter()
        .chain(trace.into_iter().flatten())
        .fold(
            OwnedHeaders::new_with_capacity(attributes.len() + 2),
            |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: Some(value),
                })
            },
        )
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, events: &[PublishedEvent]) -> Result<(), PublishError> {
        let values = events
            .iter()
            .map(|e| self.data.encode(&e.data))
            .collect::<Result<Vec<_>, _>>()?;
        let mut deliveries = Vec::with_capacity(events.len());
        for (e, value) in events.iter().zip(&values) {
            let record = FutureRecord::to(&self.topic)
                .key(&e.partitionkey)
                .payload(value)
                .headers(ce_headers(e, self.data.content_type()));
            let delivery = self.producer.send(record, DELIVERY_TIMEOUT);
            deliveries.push(async {
                delivery
                    .await
                    .map(drop)
                    .map_err(|(e, _)| broker_error(&self.topic, &e))
            });
        }
        super::acknowledged(deliveries).await
    }

    async fn already_published(&self, _ids: &[String]) -> Result<HashSet<String>, PublishError> {
        // A topic cannot be asked cheaply; a resumed intent publishes again with the
        // same key and identical bytes, which a compacted topic and the index absorb.
        Ok(HashSet::new())
    }

    fn destination(&self) -> (&'static str, String) {
        ("kafka", self.topic.clone())
    }
}

/// Stored events to a topic, in order (replay). Events go out as they were archived —
/// structured-mode CloudEvents keep every original attribute.
pub struct KafkaEventWriter {
    producer: FutureProducer<QuietLogs>,
    topic: String,
}

impl KafkaEventWriter {
    /// Connects and checks the topic; blocking.
    pub fn open(k: &KafkaConfig, topic: &str) -> Result<KafkaEventWriter, PublishError> {
        Ok(KafkaEventWriter {
            producer: producer(k, topic)?,
            topic: topic.to_string(),
        })
    }

    /// Sends `events` under one key (one partition, so their order holds; the
    /// idempotent producer keeps it through retries) and waits for every ack.
    pub async fn send(&self, key: &str, events: &[Vec<u8>]) -> Result<(), PublishError> {
        let mut deliveries = Vec::with_capacity(events.len());
        for event in events {
            let structured =
                event.starts_with(b"{") && event.windows(13).any(|w| w == b"\"specversion\"");
            let content_type = if structured {
                "application/cloudevents+json"
            } else {
                "application/json"
            };
            let record = FutureRecord::to(&self.topic)
                .key(key)
                .payload(event.as_slice())
                .headers(OwnedHeaders::new().insert(Header {
                    key: "content-type",
                    value: Some(content_type),
                }));
            deliveries.push(self.producer.send(record, DELIVERY_TIMEOUT));
        }
        for delivery in futures::future::join_all(deliveries).await {
            delivery.map_err(|(e, _)| broker_error(&self.topic, &e))?;
        }
        Ok(())
    }
}

/// Refused input to a Kafka topic, original record preserved.
pub struct KafkaDeadLetters {
    producer: FutureProducer<QuietLogs>,
    topic: String,
}

impl KafkaDeadLetters {
    pub fn open(k: &KafkaConfig) -> Result<KafkaDeadLetters, PublishError> {
        Ok(KafkaDeadLetters {
            producer: producer(k, &k.dead_letter_topic)?,
            topic: k.dead_letter_topic.clone(),
        })
    }
}

#[async_trait]
impl DeadLetterSink for KafkaDeadLetters {
    async fn send(&self, letters: &[DeadLetter]) -> Result<(), PublishError> {
        let mut deliveries = Vec::with_capacity(letters.len());
        for letter in letters {
            let original = &letter.original;
            let mut headers = OwnedHeaders::new_with_capacity(original.headers.len() + 5);
            for (key, value) in &original.headers {
                headers = headers.insert(Header {
                    key: key.as_str(),
                    value: Some(value.as_slice()),
                });
            }
            let value = &original.payload[..original.payload.len().min(MAX_DEAD_LETTER_VALUE)];
            let mut ours = vec![
                ("flow-archiver-reason", letter.reason.as_str().to_string()),
                ("flow-archiver-detail", letter.detail.clone()),
                ("flow-archiver-source", letter.source.clone()),
                ("flow-archiver-position", letter.position.clone()),
            ];
            if value.len() < original.payload.len() || original.truncated {
                ours.push((
                    "flow-archiver-original-bytes",
                    letter.payload_bytes.to_string(),
                ));
            }
            for (key, value) in &ours {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_str()),
                });
            }
            let mut record = FutureRecord::to(&self.topic)
                .payload(value)
                .headers(headers);
            if let Some(key) = &original.key {
                record = record.key(key.as_slice());
            }
            deliveries.push(self.producer.send(record, DELIVERY_TIMEOUT));
        }
        for delivery in futures::future::join_all(deliveries).await {
            delivery.map_err(|(e, _)| broker_error(&self.topic, &e))?;
        }
        Ok(())
    }
}
