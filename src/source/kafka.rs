//! Kafka consumer-group source (rdkafka, bundled librdkafka).
//!
//! A dedicated thread polls a `BaseConsumer` (no per-message async hop) and hands
//! batches to the ingest stage through a small bounded channel, so a slow state store
//! slows consumption instead of growing memory.
//!
//! Guarantees:
//! - offsets are *stored* (`enable.auto.offset.store=false`) only for batches the
//!   ingest stage reported durable ([`Source::commit`]), in batch order; librdkafka's
//!   auto-commit sends stored offsets to the group every few seconds;
//! - when partitions are revoked (cooperative-sticky rebalance, or shutdown), the
//!   rebalance callback waits until every batch already handed out is durable, stores
//!   its offsets and commits synchronously before the partitions are given up; records
//!   of revoked partitions still queued here are dropped, never acknowledged — the
//!   next owner reads them again from the committed offset;
//! - a crash loses nothing: what was not durable was not committed (at-least-once;
//!   redelivered events are deduplicated by the state store);
//! - on an instance-local (embedded) state store, a rebalance that takes away a
//!   partition this instance has read from stops the source with an error naming the
//!   two fixes: the partition's open flows would otherwise continue in another
//!   instance's store, split in two (`docs/design.md`, "Scale"). `kafka.partitions`
//!   assigns fixed partitions instead, with no group rebalancing;
//! - a membership lost involuntarily (the broker unreachable, or this process stalled,
//!   past `session.timeout.ms`) is not such a rebalance: the instance rejoins, and
//!   carries on if the partitions it read from come back to it with no committed
//!   progress beyond its own. Otherwise the source stops with the same error.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{Batch, Position, RawRecord, Source, SourceError};
use crate::config::KafkaConfig;

/// How long `next_batch` waits before returning an empty batch, so that writes in
/// flight are finished and acknowledged while the topics are quiet.
const IDLE: Duration = Duration::from_millis(200);
/// The longest a revocation waits for handed-out batches to become durable.
const REVOKE_PATIENCE: Duration = Duration::from_secs(30);

pub struct KafkaSource {
    name: String,
    messaging: super::Messaging,
    consumer: Option<Arc<BaseConsumer<GroupContext>>>,
    polled: tokio::sync::mpsc::Receiver<Result<Polled, SourceError>>,
    shared: Arc<Shared>,
    /// Offsets to store per handed-out batch, oldest first, until committed.
    pending: VecDeque<(u64, TopicPartitionList)>,
    seq: u64,
    poller: Option<std::thread::JoinHandle<()>>,
}

/// Progress shared with the rebalance callback.
#[derive(Default)]
struct Shared {
    progress: Mutex<Progress>,
    changed: Condvar,
    /// Bumped on every revocation; each record remembers the epoch it was polled in.
    epoch: AtomicU64,
    stop: AtomicBool,
}

#[derive(Default)]
struct Progress {
    handed_out: u64,
    durable: u64,
    /// (epoch, topic, partition) of revocations that queued records may predate.
    revoked: Vec<(u64, String, i32)>,
    /// Partitions records were handed out from, when rebalances must not split flows.
    read: Option<std::collections::HashSet<(String, i32)>>,
    /// Why the source must stop: a rebalance took a partition with local flows.
    split: Option<String>,
    /// Partitions with local flows whose assignment was lost involuntarily; each must
    /// come back unchanged with the next assignment.
    lost: Vec<(String, i32)>,
    /// Per partition, the next offset after the last durable record.
    durable_next: std::collections::HashMap<(String, i32), i64>,
}

/// The error that stops a source whose partition went to another instance.
fn split_error(topic: &str, partition: i32) -> String {
    format!(
        "a consumer group rebalance took partition {topic}/{partition} away from this instance, \
         whose embedded state store holds flows read from it: their next events would \
         continue in another instance's store, splitting their histories. Fix: share the \
         state with state.backend = \"postgres\" (any instance may then read any \
         partition), or give each instance its own partitions with kafka.partitions = [...]"
    )
}

/// A polled batch before it is handed out.
#[derive(Default)]
struct Polled {
    records: Vec<RawRecord>,
    /// Per record: index into `partitions`, offset, epoch.
    meta: Vec<(usize, i64, u64)>,
    partitions: Vec<(String, i32)>,
}

struct GroupContext {
    shared: Arc<Shared>,
    logs: crate::kafka::QuietLogs,
}

impl ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.logs.log(level, fac, message)
    }

    /// librdkafka's statistics (every `statistics.interval.ms`): the consumer lag of
    /// the assigned partitions, for `flow_archiver_consumer_lag_messages`.
    fn stats(&self, statistics: rdkafka::Statistics) {
        // Lag counts records not yet durable here: from the offset stored after the
        // last durable batch (else the committed one, else the partition start) to the
        // high watermark. librdkafka's own consumer_lag waits for a commit round trip.
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.hi_offset >= 0 && p.fetch_state == "active")
            .map(|p| {
                let base = [p.stored_offset, p.committed_offset, p.lo_offset]
                    .into_iter()
                    .find(|o| *o >= 0)
                    .unwrap_or(0);
                (p.hi_offset - base).max(0)
            })
            .sum();
        crate::telemetry::metrics().consumer_lag.set(lag);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logs.error(&error, reason)
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(partitions) = rebalance else {
            return;
        };
        // Lost involuntarily: the group has moved on, and a commit cannot succeed.
        let lost = consumer.assignment_lost();
        let epoch = self.shared.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        let mut progress = lock(&self.shared.progress);
        for p in partitions.elements() {
            progress
                .revoked
                .push((epoch, p.topic().to_string(), p.partition()));
        }
        if !self.shared.stop.load(Ordering::Acquire) && progress.split.is_none() {
            let key = |p: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>| {
                (p.topic().to_string(), p.partition())
            };
            let taken: Vec<(String, i32)> = match progress.read.as_ref() {
                Some(read) => partitions
                    .elements()
                    .iter()
                    .map(key)
                    .filter(|k| read.contains(k))
                    .collect(),
                None => Vec::new(),
            };
            if !taken.is_empty() && lost {
                tracing::warn!(
                    partitions = %list(partitions),
                    "Kafka group membership lost: the broker was unreachable, or this process \
                     stalled, for longer than session.timeout.ms. Rejoining; the partitions must \
                     come back to this instance."
                );
                progress.lost.extend(taken);
            } else if let Some((topic, partition)) = taken.first() {
                progress.split = Some(split_error(topic, *partition));
            }
        }
        if !self.shared.stop.load(Ordering::Acquire) {
            let (guard, waited) = self
                .shared
                .changed
                .wait_timeout_while(progress, REVOKE_PATIENCE, |p| p.durable < p.handed_out)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            progress = guard;
            if waited.timed_out() {
                tracing::warn!(
                    "Partitions revoked before the last batch was durable; its records will be read again by the next owner."
                );
            }
        }
        drop(progress);
        if !lost {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => {}
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "Commit on revocation failed; the next owner may re-read some records.")
                }
            }
        }
        tracing::info!(partitions = %list(partitions), "Kafka partitions revoked.");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = %list(partitions), "Kafka partitions assigned.");
                self.check_lost_came_back(consumer, partitions);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "Kafka rebalance failed."),
            Rebalance::Revoke(_) => {}
        }
    }
}

impl GroupContext {
    /// After a lost membership, the first assignment must give back every partition
    /// this instance holds flows of, and no one may have committed past this
    /// instance's durable position in them meanwhile (only another consumer could).
    fn check_lost_came_back(&self, consumer: &BaseConsumer<Self>, assigned: &TopicPartitionList) {
        let mut progress = lock(&self.shared.progress);
        if progress.lost.is_empty() || progress.split.is_some() {
            return;
        }
        let lost = std::mem::take(&mut progress.lost);
        let mut back = TopicPartitionList::new();
        for (topic, partition) in &lost {
            let found = assigned
                .elements()
                .iter()
                .any(|e| e.topic() == topic && e.partition() == *partition);
            if !found {
                progress.split = Some(split_error(topic, *partition));
                return;
            }
            back.add_partition(topic, *partition);
        }
        let durable_next = progress.durable_next.clone();
        // No lock across a broker round trip: commits may wait on it.
        drop(progress);
        let split = match consumer.committed_offsets(back, Duration::from_secs(30)) {
            Ok(committed) => committed.elements().iter().find_map(|e| {
                let ours = durable_next.get(&(e.topic().to_string(), e.partition()));
                match (e.offset(), ours) {
                    (Offset::Offset(theirs), Some(ours)) if theirs > *ours => {
                        Some(split_error(e.topic(), e.partition()))
                    }
                    _ => None,
                }
            }),
            Err(e) => Some(format!(
                "after a lost group membership, the committed offsets of the partitions \
                 this instance read from could not be checked ({}); restart to resume safely",
                crate::kafka::describe(&e)
            )),
        };
        match split {
            Some(split) => lock(&self.shared.progress).split = Some(split),
            None => tracing::info!(
                partitions = %list(assigned),
                "Kafka group rejoined with the partitions this instance holds flows of; continuing."
            ),
        }
    }
}

fn list(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl KafkaSource {
    /// Subscribes to `kafka.topics` (or assigns `kafka.partitions` of them) after
    /// checking they exist; blocking. `local_state`: the state store is this
    /// instance's own, so a rebalance that moves a partition it has read from is an
    /// error (see the module doc).
    pub fn open(
        k: &KafkaConfig,
        max_batch: usize,
        local_state: bool,
    ) -> Result<KafkaSource, SourceError> {
        if k.topics.is_empty() {
            return Err(SourceError::Kafka(
                "no input topics: set `kafka.topics` (or FLOW_ARCHIVER__KAFKA__TOPICS)".into(),
            ));
        }
        let shared = Arc::new(Shared::default());
        if local_state && k.partitions.is_empty() {
            lock(&shared.progress).read = Some(Default::default());
        }
        let mut c = crate::kafka::client_config(k);
        c.set("group.id", &k.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.partition.eof", "false");
        if !k.properties.contains_key("statistics.interval.ms") {
            // Feeds the consumer lag gauge.
            c.set("statistics.interval.ms", "5000");
        }
        if !k.properties.contains_key("auto.offset.reset") {
            // A new group reads the topics from the start: history must not be skipped.
            c.set("auto.offset.reset", "earliest");
        }
        if let Some(instance) = &k.group_instance_id {
            c.set("group.instance.id", instance);
            if !k.properties.contains_key("session.timeout.ms") {
                // Static members get time to restart without a rebalance.
                c.set("session.timeout.ms", "60000");
            }
        }
        let consumer: BaseConsumer<GroupContext> = c
            .create_with_context(GroupContext {
                shared: shared.clone(),
                logs: Default::default(),
            })
            .map_err(|e| SourceError::Kafka(crate::kafka::describe(&e)))?;
        let topics: Vec<&str> = k.topics.iter().map(String::as_str).collect();
        crate::kafka::require_topics(consumer.client(), &k.brokers, &topics)
            .map_err(SourceError::Kafka)?;
        if k.partitions.is_empty() {
            consumer
                .subscribe(&topics)
                .map_err(|e| SourceError::Kafka(crate::kafka::describe(&e)))?;
        } else {
            assign(&consumer, &topics, &k.partitions)?;
        }
        let consumer = Arc::new(consumer);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let poller = {
            let consumer = consumer.clone();
            let shared = shared.clone();
            let wait = k.batch_wait;
            std::thread::Builder::new()
                .name("kafka-poll".into())
                .spawn(move || poll_loop(consumer, shared, tx, max_batch, wait))
                .map_err(|e| SourceError::Kafka(format!("cannot start the poll thread: {e}")))?
        };
        Ok(KafkaSource {
            name: format!("kafka:{}", k.topics.join(",")),
            messaging: super::Messaging {
                system: "kafka",
                destination: k.topics.join(","),
                consumer_group: Some(k.group_id.clone()),
            },
            consumer: Some(consumer),
            polled: rx,
            shared,
            pending: VecDeque::new(),
            seq: 0,
            poller: Some(poller),
        })
    }
}

/// Reads exactly `partitions` of every topic, from the group's committed offsets
/// (else `auto.offset.reset`), without joining the group's rebalancing.
fn assign(
    consumer: &BaseConsumer<GroupContext>,
    topics: &[&str],
    partitions: &[i32],
) -> Result<(), SourceError> {
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| SourceError::Kafka(crate::kafka::describe(&e)))?;
        let count = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len()) as i32;
        if let Some(p) = partitions.iter().find(|p| **p >= count) {
            return Err(SourceError::Kafka(format!(
                "kafka.partitions names partition {p} of {topic}, which has {count} partition(s) (0..{count})"
            )));
        }
        for p in partitions {
            tpl.add_partition_offset(topic, *p, Offset::Stored)
                .map_err(|e| SourceError::Kafka(crate::kafka::describe(&e)))?;
        }
    }
    tracing::info!(partitions = %list(&tpl), "Kafka partitions assigned (kafka.partitions).");
    consumer
        .assign(&tpl)
        .map_err(|e| SourceError::Kafka(crate::kafka::describe(&e)))
}

fn poll_loop(
    consumer: Arc<BaseConsumer<GroupContext>>,
    shared: Arc<Shared>,
    tx: tokio::sync::mpsc::Sender<Result<Polled, SourceError>>,
    max: usize,
    wait: Duration,
) {
    while !shared.stop.load(Ordering::Acquire) {
        if let Some(split) = lock(&shared.progress).split.clone() {
            let _ = tx.blocking_send(Err(SourceError::Kafka(split)));
            return;
        }
        let mut batch = Polled::default();
        let mut started: Option<Instant> = None;
        while batch.records.len() < max && !shared.stop.load(Ordering::Acquire) {
            let timeout = match started {
                None => Duration::from_millis(100),
                Some(t) => match wait.checked_sub(t.elapsed()) {
                    Some(left) => left,
                    None => break,
                },
            };
            match consumer.poll(timeout) {
                None if started.is_some() => break,
                None => {}
                Some(Ok(m)) => {
                    started.get_or_insert_with(Instant::now);
                    let epoch = shared.epoch.load(Ordering::Acquire);
                    let part = match batch
                        .partitions
                        .iter()
                        .position(|(t, p)| t == m.topic() && *p == m.partition())
                    {
                        Some(i) => i,
                        None => {
                            batch
                                .partitions
                                .push((m.topic().to_string(), m.partition()));
                            batch.partitions.len() - 1
                        }
                    };
                    let payload = m.payload().unwrap_or_default().to_vec();
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default();
                    batch.records.push(RawRecord {
                        key: m.key().map(<[u8]>::to_vec),
                        original_len: payload.len() as u64,
                        payload,
                        headers,
                        position: Position::Named(format!(
                            "{}/{}@{}",
                            m.topic(),
                            m.partition(),
                            m.offset()
                        )),
                        truncated: false,
                        given_up: None,
                    });
                    batch.meta.push((part, m.offset(), epoch));
                }
                Some(Err(e)) if is_fatal(&e) => {
                    let _ = tx.blocking_send(Err(SourceError::Kafka(crate::kafka::describe(&e))));
                    return;
                }
                // Transient (broker restarts, leader moves): librdkafka retries.
                Some(Err(e)) => consumer
                    .context()
                    .logs
                    .error(&e, "consumer error; retrying"),
            }
        }
        if let Some(read) = lock(&shared.progress).read.as_mut() {
            read.extend(batch.partitions.iter().cloned());
        }
        if !batch.records.is_empty() && tx.blocking_send(Ok(batch)).is_err() {
            return;
        }
    }
}

fn is_fatal(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
        )
    )
}

#[async_trait]
impl Source for KafkaSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn messaging(&self) -> super::Messaging {
        self.messaging.clone()
    }

    async fn next_batch(&mut self, _max: usize) -> Result<Option<Batch>, SourceError> {
        let polled = match tokio::time::timeout(IDLE, self.polled.recv()).await {
            Err(_idle) => Polled::default(),
            Ok(None) => return Ok(None),
            Ok(Some(result)) => result?,
        };
        self.seq += 1;
        let mut offsets = TopicPartitionList::new();
        let mut records = Vec::with_capacity(polled.records.len());
        {
            let mut progress = lock(&self.shared.progress);
            let mut next: Vec<Option<i64>> = vec![None; polled.partitions.len()];
            for (record, (part, offset, epoch)) in polled.records.into_iter().zip(polled.meta) {
                let (topic, partition) = &polled.partitions[part];
                let revoked = progress
                    .revoked
                    .iter()
                    .any(|(e, t, p)| *e > epoch && t == topic && p == partition);
                if revoked {
                    continue;
                }
                next[part] = Some(offset + 1);
                records.push(record);
            }
            for ((topic, partition), next) in polled.partitions.iter().zip(next) {
                if let Some(next) = next {
                    let _ = offsets.add_partition_offset(topic, *partition, Offset::Offset(next));
                }
            }
            progress.handed_out = self.seq;
            // Every record polled before the latest revocation has now been handed out.
            if self.polled.is_empty() {
                let current = self.shared.epoch.load(Ordering::Acquire);
                progress.revoked.retain(|(e, _, _)| *e > current);
            }
        }
        if offsets.count() > 0 {
            self.pending.push_back((self.seq, offsets));
        }
        Ok(Some(Batch {
            seq: self.seq,
            records,
            checkpoint: None,
        }))
    }

    async fn commit(&mut self, through: u64) -> Result<(), SourceError> {
        let mut offsets = TopicPartitionList::new();
        while self.pending.front().is_some_and(|(seq, _)| *seq <= through) {
            if let Some((_, batch)) = self.pending.pop_front() {
                for e in batch.elements() {
                    // Later batches override earlier ones for the same partition.
                    let _ = offsets
                        .set_partition_offset(e.topic(), e.partition(), e.offset())
                        .or_else(|_| {
                            offsets.add_partition_offset(e.topic(), e.partition(), e.offset())
                        });
                }
            }
        }
        if offsets.count() > 0 {
            if let Some(consumer) = &self.consumer {
                if let Err(e) = consumer.store_offsets(&offsets) {
                    // Partitions revoked meanwhile: their next owner re-reads.
                    tracing::debug!(error = %e, "Some offsets were not stored.");
                }
            }
        }
        let mut progress = lock(&self.shared.progress);
        progress.durable = progress.durable.max(through);
        for e in offsets.elements() {
            if let Offset::Offset(next) = e.offset() {
                progress
                    .durable_next
                    .insert((e.topic().to_string(), e.partition()), next);
            }
        }
        drop(progress);
        self.shared.changed.notify_all();
        Ok(())
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.changed.notify_all();
        self.polled.close();
        let consumer = self.consumer.take();
        let Some(poller) = self.poller.take() else {
            return Ok(());
        };
        // Leaving the group (revocation, final commit) happens where the consumer is
        // dropped: on a blocking thread, with the poll thread joined first.
        let closed = tokio::task::spawn_blocking(move || {
            let _ = poller.join();
            if let Some(consumer) = consumer {
                if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                    if e.rdkafka_error_code() != Some(RDKafkaErrorCode::NoOffset) {
                        tracing::warn!(error = %e, "Final offset commit failed; some records will be read again.");
                    }
                }
                drop(consumer);
            }
        });
        if tokio::time::timeout(REVOKE_PATIENCE, closed).await.is_err() {
            tracing::warn!("Kafka consumer did not close in time.");
        }
        Ok(())
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Without close(): stop polling; the consumer leaves the group when the poll
        // thread exits and drops the last reference.
        self.shared.stop.store(true, Ordering::Release);
        self.shared.changed.notify_all();
    }
}
