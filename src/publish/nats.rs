//! NATS JetStream destinations: `flow.archived` events, dead letters, replay.
//!
//! `flow.archived` goes to `{archived_prefix}.{tenant}.{flow_id}.{part}` in a stream
//! that keeps one message per subject (`max_messages_per_subject = 1`): a compacted
//! log of flow parts that replays into the index. Events are structured-mode
//! CloudEvents (JSON), with `Nats-Msg-Id` = the event id
//! (`{tenant}/{flow_id}/{part}/archived`) so the server drops a re-publish within its
//! duplicate window; `publish` returns after every publish ack.

use std::collections::HashSet;

use std::future::IntoFuture;

use async_nats::jetstream;
use async_nats::HeaderMap;
use async_trait::async_trait;

use super::{DeadLetter, DeadLetterSink, PublishError, PublishedEvent, Publisher};
use crate::config::NatsConfig;
use crate::nats::archived_subject;

fn broker_error(what: &str, e: impl std::fmt::Display) -> PublishError {
    PublishError::Broker(format!("nats {what}: {e}"))
}

/// Publishes every message; returns their acks, still to be awaited.
async fn send_all<'a>(
    js: &jetstream::Context,
    what: &'a str,
    messages: Vec<(String, HeaderMap, Vec<u8>)>,
) -> Result<Vec<impl std::future::Future<Output = Result<(), PublishError>> + 'a>, PublishError> {
    let mut acks = Vec::with_capacity(messages.len());
    for (subject, headers, payload) in messages {
        let ack = js
            .publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(|e| broker_error(what, e))?;
        acks.push(async move {
            ack.into_future()
                .await
                .map(drop)
                .map_err(|e| broker_error(what, e))
        });
    }
    Ok(acks)
}

/// Publishes and waits for every ack.
async fn publish_all(
    js: &jetstream::Context,
    what: &str,
    messages: Vec<(String, HeaderMap, Vec<u8>)>,
) -> Result<(), PublishError> {
    for ack in futures::future::join_all(send_all(js, what, messages).await?).await {
        ack?;
    }
    Ok(())
}

/// `flow.archived` to the compacted archived stream.
pub struct NatsPublisher {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    prefix: String,
}

impl NatsPublisher {
    /// Connects and creates the archived stream when it is missing.
    pub async fn open(n: &NatsConfig) -> Result<NatsPublisher, PublishError> {
        let client = crate::nats::connect(n)
            .await
            .map_err(PublishError::Broker)?;
        let js = jetstream::new(client);
        let stream = crate::nats::ensure_stream(&js, crate::nats::archived_stream_config(n))
            .await
            .map_err(PublishError::Broker)?;
        Ok(NatsPublisher {
            js,
            stream,
            prefix: n.archived_prefix.clone(),
        })
    }

    fn subject(&self, e: &PublishedEvent) -> String {
        match e.data.part() {
            // flow.purged replaces the part's flow.archived on the same subject.
            Some(part) => archived_subject(&self.prefix, e.data.tenant(), e.data.flow_id(), part),
            None => crate::nats::hold_subject(&self.prefix, e.data.tenant(), e.data.flow_id()),
        }
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&self, events: &[PublishedEvent]) -> Result<(), PublishError> {
        let mut messages = Vec::with_capacity(events.len());
        for e in events {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", e.id.as_str());
            headers.insert("Content-Type", "application/cloudevents+json");
            if let Some(t) = &e.traceparent {
                headers.insert("traceparent", t.as_str());
            }
            let payload = serde_json::to_vec(e).map_err(|e| PublishError::Encode(e.to_string()))?;
            messages.push((self.subject(e), headers, payload));
        }
        super::acknowledged(send_all(&self.js, "publish flow.archived", messages).await?).await
    }

    async fn already_published(&self, ids: &[String]) -> Result<HashSet<String>, PublishError> {
        // The stream keeps the latest message per flow part: look each one up.
        let mut found = HashSet::new();
        for id in ids {
            let mut fields = id.rsplitn(3, '/');
            let (_kind, part, rest) = (fields.next(), fields.next(), fields.next());
            let (Some(part), Some(rest)) = (part.and_then(|p| p.parse::<u32>().ok()), rest) else {
                continue;
            };
            let Some((tenant, flow)) = rest.split_once('/') else {
                continue;
            };
            let subject = archived_subject(&self.prefix, tenant, flow, part);
            match self.stream.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => {
                    let same = message
                        .headers
                        .get("Nats-Msg-Id")
                        .is_some_and(|v| v.as_str() == id);
                    if same {
                        found.insert(id.clone());
                    }
                }
                Err(e)
                    if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(broker_error("look up flow.archived", e)),
            }
        }
        Ok(found)
    }

    fn destination(&self) -> (&'static str, String) {
        ("nats", format!("{}.>", self.prefix))
    }
}

/// Refused records to the dead-letter subject (captured by a stream), original
/// payload and headers kept, the reason in headers.
pub struct NatsDeadLetters {
    js: jetstream::Context,
    subject: String,
}

impl NatsDeadLetters {
    pub async fn open(n: &NatsConfig) -> Result<NatsDeadLetters, PublishError> {
        let client = crate::nats::connect(n)
            .await
            .map_err(PublishError::Broker)?;
        let js = jetstream::new(client);
        crate::nats::ensure_stream(&js, crate::nats::dead_letter_stream_config(n))
            .await
            .map_err(PublishError::Broker)?;
        Ok(NatsDeadLetters {
            js,
            subject: n.dead_letter_subject.clone(),
        })
    }
}

/// A header value NATS accepts: no CR or LF.
fn header_text(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

#[async_trait]
impl DeadLetterSink for NatsDeadLetters {
    async fn send(&self, letters: &[DeadLetter]) -> Result<(), PublishError> {
        let mut messages = Vec::with_capacity(letters.len());
        for letter in letters {
            let original = &letter.original;
            let mut headers = HeaderMap::new();
            for (name, value) in &original.headers {
                if let Ok(text) = std::str::from_utf8(value) {
                    headers.append(name.as_str(), header_text(text).as_str());
                }
            }
            headers.insert("Flow-Archiver-Reason", letter.reason.as_str());
            headers.insert("Flow-Archiver-Detail", header_text(&letter.detail).as_str());
            headers.insert("Flow-Archiver-Source", header_text(&letter.source).as_str());
            headers.insert(
                "Flow-Archiver-Position",
                header_text(&letter.position).as_str(),
            );
            if let Some(subject) = original
                .key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok())
            {
                headers.insert("Flow-Archiver-Subject", subject);
            }
            // The id makes a re-sent dead letter (after a crash) a duplicate.
            headers.insert("Nats-Msg-Id", header_text(&letter.id).as_str());
            messages.push((self.subject.clone(), headers, original.payload.clone()));
        }
        publish_all(&self.js, "dead letter", messages).await
    }
}

/// Stored events to a subject, in order (replay).
pub struct NatsEventWriter {
    js: jetstream::Context,
    subject: String,
}

impl NatsEventWriter {
    pub async fn open(n: &NatsConfig, subject: &str) -> Result<NatsEventWriter, PublishError> {
        let client = crate::nats::connect(n)
            .await
            .map_err(PublishError::Broker)?;
        Ok(NatsEventWriter {
            js: jetstream::new(client),
            subject: subject.to_string(),
        })
    }

    /// Publishes one at a time, each acknowledged before the next: order holds. The
    /// subject must belong to a stream (an error says so otherwise).
    pub async fn send(&self, events: &[Vec<u8>]) -> Result<(), PublishError> {
        for event in events {
            let mut headers = HeaderMap::new();
            headers.insert("Content-Type", "application/cloudevents+json");
            publish_all(
                &self.js,
                &format!("replay to {}", self.subject),
                vec![(self.subject.clone(), headers, event.clone())],
            )
            .await?;
        }
        Ok(())
    }
}
