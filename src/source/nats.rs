//! NATS JetStream source: a durable pull consumer.
//!
//! Guarantees:
//! - messages are acknowledged only for batches the ingest stage reported durable
//!   ([`Source::commit`]), and acks are flushed;
//! - the consumer flow-archiver creates acks cumulatively (`AckPolicy::All`): one ack
//!   per durable batch instead of one per message, which roughly halves the server's
//!   CPU per event. One such ack also covers pending messages this process never
//!   received (a crashed predecessor's, or deliveries lost with a connection), so acks
//!   are held back until the server's pending set is known to be all ours (see
//!   `source/cumulative_acks.rs`);
//! - on the shared (postgres) state store, several instances pull from one durable
//!   consumer as a work queue. There the consumer acks each message (`AckPolicy::Explicit`):
//!   one instance's cumulative ack would cover messages delivered to another and not
//!   yet durable there. Binding a shared store to an `AckPolicy::All` consumer is
//!   refused;
//! - an existing consumer with `AckPolicy::Explicit` is acked message by message, as
//!   before; one with `AckPolicy::None` forgets a message once delivered, which would
//!   lose events after a crash, so binding to it is refused;
//! - a crash or a lost ack means redelivery after `nats.ack_wait`; redelivered events
//!   are recognised by their (`source`, `id`) and skipped;
//! - a message on its `nats.max_deliver`-th delivery is dead-lettered (reason
//!   `too_many_deliveries`) and acknowledged (terminated, with explicit acks) instead
//!   of processed, so a record that keeps failing is set aside, never redelivered
//!   forever;
//! - the server's `max_ack_pending` bounds what is in flight, so a slow state store
//!   slows consumption; nothing piles up in memory.
//!
//! A server restart surfaces as errors on the pull stream; the stream is opened again
//! and the client reconnects by itself.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::PullConsumer, AckKind};
use async_trait::async_trait;
use futures::StreamExt;

use super::cumulative_acks::Cumulative;
use super::{Batch, Position, RawRecord, Source, SourceError};
use crate::config::NatsConfig;

/// How long `next_batch` waits before returning an empty batch, so that writes in
/// flight are finished and acknowledged while the stream is quiet.
const IDLE: Duration = Duration::from_millis(200);
/// While cumulative acks wait for the server's pending set to be ours, how often the
/// consumer's info is read.
const CHECK_EVERY: Duration = Duration::from_millis(500);

type Acker = jetstream::message::Acker;

/// Received messages whose acks are not sent yet, by the consumer's ack policy.
enum Unacked {
    /// `AckPolicy::Explicit`: per batch, each message's ack (and whether it is a
    /// terminating one).
    Each(VecDeque<(u64, Vec<(Acker, bool)>)>),
    /// `AckPolicy::All`: one ack per commit.
    Cumulative {
        acks: Cumulative<Acker>,
        last_check: Option<Instant>,
        /// Since when acks have been held back.
        held_since: Option<Instant>,
    },
}

impl Unacked {
    fn count(&self) -> usize {
        match self {
            Unacked::Each(pending) => pending.iter().map(|(_, acks)| acks.len()).sum(),
            Unacked::Cumulative { acks, .. } => acks.held(),
        }
    }
}

pub struct NatsSource {
    name: String,
    messaging: super::Messaging,
    client: async_nats::Client,
    consumer: PullConsumer,
    messages: Option<pull::Stream>,
    /// Acks owed per handed-out batch (`true` = terminate), oldest first.
    unacked: Unacked,
    seq: u64,
    max_batch: usize,
    max_deliver: i64,
    ack_wait: Duration,
    /// Messages the server still holds for this consumer, as of the last delivery.
    undelivered: u64,
    batch_wait: Duration,
    last_warning: Option<Instant>,
    /// Shared by the positions of its messages.
    stream_name: std::sync::Arc<str>,
}

fn nats_err(e: impl std::fmt::Display) -> SourceError {
    SourceError::Nats(e.to_string())
}

impl NatsSource {
    /// Connects, binds (or creates) the stream and the durable consumer. `shared`:
    /// other instances pull from the same consumer (a shared state store), so acks
    /// are per message.
    pub async fn open(
        n: &NatsConfig,
        max_batch: usize,
        shared: bool,
    ) -> Result<NatsSource, SourceError> {
        let client = crate::nats::connect(n).await.map_err(SourceError::Nats)?;
        let js = jetstream::new(client.clone());
        let stream = if n.create_stream {
            crate::nats::ensure_stream(
                &js,
                jetstream::stream::Config {
                    name: n.stream.clone(),
                    subjects: n.subjects.clone(),
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                },
            )
            .await
            .map_err(SourceError::Nats)?
        } else {
            js.get_stream(&n.stream).await.map_err(|e| {
                SourceError::Nats(format!(
                    "stream {} does not exist ({e}); create it or set nats.create_stream = true",
                    n.stream
                ))
            })?
        };
        let filter = n.filter_subject.clone().unwrap_or_default();
        let config = pull::Config {
            durable_name: Some(n.consumer.clone()),
            ack_policy: match shared {
                true => jetstream::consumer::AckPolicy::Explicit,
                false => jetstream::consumer::AckPolicy::All,
            },
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_wait: n.ack_wait,
            max_ack_pending: n.max_ack_pending,
            max_deliver: n.max_deliver,
            filter_subject: filter.clone(),
            ..Default::default()
        };
        let mut consumer: PullConsumer =
            stream
                .get_or_create_consumer(&n.consumer, config)
                .await
                .map_err(|e| nats_err(format!("consumer {}: {e}", n.consumer)))?;
        let info = consumer.info().await.map_err(nats_err)?;
        if info.config.filter_subject != filter {
            return Err(SourceError::Nats(format!(
                "consumer {} already exists with filter {:?}, not {:?}: give this instance its own nats.consumer (docs/nats.md, \"Scaling out\")",
                n.consumer, info.config.filter_subject, filter
            )));
        }
        let unacked = match info.config.ack_policy {
            jetstream::consumer::AckPolicy::All if shared => {
                return Err(SourceError::Nats(format!(
                    "consumer {} acks cumulatively (ack policy all), which several instances sharing it cannot use: one instance's ack would cover another's messages. Delete the consumer (flow-archiver recreates it with explicit acks) or name another nats.consumer",
                    n.consumer
                )))
            }
            jetstream::consumer::AckPolicy::All => Unacked::Cumulative {
                acks: Cumulative::default(),
                last_check: None,
                held_since: None,
            },
            jetstream::consumer::AckPolicy::Explicit => Unacked::Each(VecDeque::new()),
            other => {
                return Err(SourceError::Nats(format!(
                    "consumer {} has ack policy {other:?}: the server forgets a message once delivered, so events would be lost after a crash; delete the consumer (flow-archiver creates it with ack policy all) or name another nats.consumer",
                    n.consumer
                )))
            }
        };
        Ok(NatsSource {
            name: format!("nats:{}/{}", n.stream, n.consumer),
            messaging: super::Messaging {
                system: "nats",
                destination: if filter.is_empty() {
                    n.stream.clone()
                } else {
                    filter.clone()
                },
                consumer_group: Some(n.consumer.clone()),
            },
            client,
            consumer,
            messages: None,
            unacked,
            seq: 0,
            max_batch,
            max_deliver: n.max_deliver,
            ack_wait: n.ack_wait,
            undelivered: 0,
            batch_wait: n.batch_wait,
            last_warning: None,
            stream_name: n.stream.as_str().into(),
        })
    }

    async fn stream(&mut self) -> Result<&mut pull::Stream, SourceError> {
        if self.messages.is_none() {
            let stream = self
                .consumer
                .stream()
                .max_messages_per_batch(self.max_batch.min(10_000))
                .expires(Duration::from_secs(5))
                .heartbeat(Duration::from_secs(2))
                .messages()
                .await
                .map_err(nats_err)?;
            self.messages = Some(stream);
            // Deliveries to the previous stream may never have arrived.
            if let Unacked::Cumulative { acks, .. } = &mut self.unacked {
                acks.lost_track();
            }
        }
        self.messages
            .as_mut()
            .ok_or_else(|| SourceError::Nats("no message stream".into()))
    }

    fn warn(&mut self, what: &str, e: &dyn std::fmt::Display) {
        if self
            .last_warning
            .is_none_or(|t| t.elapsed() > crate::kafka::QUIET_FOR)
        {
            tracing::warn!(error = %e, "NATS {what}; retrying.");
            self.last_warning = Some(Instant::now());
        }
    }
}

impl NatsSource {
    /// Lag = messages not yet delivered + delivered but not yet durable and acked.
    fn report_lag(&self) {
        let unacked = self.unacked.count() as u64;
        crate::telemetry::metrics()
            .consumer_lag
            .set((self.undelivered + unacked).min(i64::MAX as u64) as i64);
    }
}

#[async_trait]
impl Source for NatsSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn messaging(&self) -> super::Messaging {
        self.messaging.clone()
    }

    async fn next_batch(&mut self, max: usize) -> Result<Option<Batch>, SourceError> {
        let mut records = Vec::new();
        let mut acks = Vec::new();
        let batch = self.seq + 1;
        let mut started: Option<Instant> = None;
        while records.len() < max {
            let wait = match started {
                None => IDLE,
                Some(t) => match self.batch_wait.checked_sub(t.elapsed()) {
                    Some(left) => left,
                    None => break,
                },
            };
            let next = match self.stream().await {
                Ok(stream) => tokio::time::timeout(wait, stream.next()).await,
                Err(e) => {
                    self.warn("cannot open the pull stream", &e);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            };
            let message = match next {
                Err(_idle) => break,
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => {
                    // Missed heartbeats, a restarted server: open the stream again.
                    self.warn("pull stream error", &e);
                    self.messages = None;
                    break;
                }
                Ok(None) => {
                    self.messages = None;
                    break;
                }
            };
            started.get_or_insert_with(Instant::now);
            let (delivered, sequences, position) = match message.info() {
                Ok(info) => {
                    self.undelivered = info.pending;
                    if *self.stream_name != *info.stream {
                        self.stream_name = info.stream.into();
                    }
                    (
                        info.delivered,
                        Some((info.stream_sequence, info.consumer_sequence)),
                        Position::Sequence {
                            stream: self.stream_name.clone(),
                            seq: info.stream_sequence,
                        },
                    )
                }
                Err(_) => (1, None, Position::Named("unknown".to_string())),
            };
            let (message, acker) = message.split();
            let headers = message
                .headers
                .as_ref()
                .map(|h| {
                    h.iter()
                        .flat_map(|(name, values)| {
                            values
                                .iter()
                                .map(move |v| (name.to_string(), v.as_str().as_bytes().to_vec()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let poison = delivered >= self.max_deliver;
            let payload = message.payload.to_vec();
            records.push(RawRecord {
                key: Some(message.subject.as_bytes().to_vec()),
                original_len: payload.len() as u64,
                payload,
                headers,
                position,
                truncated: false,
                given_up: poison.then(|| {
                    format!(
                        "delivered {delivered} times (nats.max_deliver = {})",
                        self.max_deliver
                    )
                }),
            });
            match (&mut self.unacked, sequences) {
                (Unacked::Each(_), _) => acks.push((acker, poison)),
                (Unacked::Cumulative { acks, .. }, Some((stream_seq, delivery_seq))) => {
                    acks.received(stream_seq, delivery_seq, batch, acker)
                }
                // Not a JetStream delivery: it cannot be tracked, so no cumulative ack
                // is safe until the server's pending set matches again.
                (Unacked::Cumulative { acks, .. }, None) => acks.lost_track(),
            }
        }
        self.seq = batch;
        if let Unacked::Each(pending) = &mut self.unacked {
            if !acks.is_empty() {
                pending.push_back((batch, acks));
            }
        }
        self.report_lag();
        Ok(Some(Batch {
            seq: self.seq,
            records,
            checkpoint: None,
        }))
    }

    async fn commit(&mut self, through: u64) -> Result<(), SourceError> {
        let mut sent = 0usize;
        let mut failures: Vec<(&str, String)> = Vec::new();
        match &mut self.unacked {
            Unacked::Each(pending) => {
                while pending.front().is_some_and(|(seq, _)| *seq <= through) {
                    let Some((_, acks)) = pending.pop_front() else {
                        break;
                    };
                    for (acker, terminate) in acks {
                        let kind = if terminate {
                            AckKind::Term
                        } else {
                            AckKind::Ack
                        };
                        if let Err(e) = acker.ack_with(kind).await {
                            // Not acknowledged: redelivered after ack_wait and deduplicated.
                            failures.push(("ack failed", e.to_string()));
                        }
                        sent += 1;
                    }
                }
            }
            Unacked::Cumulative {
                acks,
                last_check,
                held_since,
            } => {
                if acks.wants_probe() && last_check.is_none_or(|t| t.elapsed() >= CHECK_EVERY) {
                    *last_check = Some(Instant::now());
                    let since = *held_since.get_or_insert_with(Instant::now);
                    // Deliveries the server made before answering but not yet read
                    // here are waited for by the probe, not counted as missing.
                    match self.consumer.get_info().await {
                        Ok(info) => {
                            let dropped = acks.settled_through(info.ack_floor.stream_sequence);
                            if dropped > 0 {
                                tracing::warn!(
                                    consumer = %info.name,
                                    messages = dropped,
                                    "Held messages left the stream (dropped by its limits or deleted) before their ack: they are stored with their batch and need no ack."
                                );
                            }
                            acks.probe(info.num_ack_pending, info.delivered.consumer_sequence);
                            // Missing messages come back within ack_wait; past twice
                            // that, something else keeps the counts apart.
                            if !acks.is_complete() && since.elapsed() > self.ack_wait * 2 {
                                failures.push((
                                    "holds its acks",
                                    format!(
                                        "for {}s the server has counted {} pending messages on consumer {} and this process holds {}: another process reading the same consumer keeps them apart (give each instance its own nats.consumer)",
                                        since.elapsed().as_secs(),
                                        info.num_ack_pending,
                                        info.name,
                                        acks.held()
                                    ),
                                ));
                            }
                        }
                        Err(e) => failures
                            .push(("cannot read the consumer's pending count", e.to_string())),
                    }
                }
                if let Some((_, acker)) = acks.take_ack(through) {
                    // A lost ack is covered by the next one, or redelivered.
                    if let Err(e) = acker.ack().await {
                        failures.push(("ack failed", e.to_string()));
                    }
                    sent += 1;
                }
                if acks.is_complete() {
                    *held_since = None;
                }
                crate::telemetry::metrics()
                    .acks_held
                    .set(held_since.map_or(0, |t| t.elapsed().as_secs() as i64));
            }
        }
        for (what, e) in failures {
            self.warn(what, &e);
        }
        if sent > 0 {
            if let Err(e) = self.client.flush().await {
                self.warn("flushing acks failed", &e);
            }
        }
        self.report_lag();
        Ok(())
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        self.messages = None;
        let _ = self.client.flush().await;
        Ok(())
    }
}
