//! Prometheus metrics (`prometheus-client`, the official client): one process-wide
//! registry, rendered at `/metrics` by `run` and `serve`.
//!
//! Names follow Prometheus conventions: the `flow_archiver_` prefix, base units in the
//! name (`_seconds`, `_bytes`), counters ending in `_total`, histograms for latencies.
//! Labels never carry flow ids or tenants — only small fixed sets (reason, stage).
//! Every series is created at start (zero), so alerts see it before the first event.

use std::sync::OnceLock;

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Stage {
    pub stage: String,
}

/// Stages whose failures are counted (`flow_archiver_failures_total{stage}`).
pub const STAGES: &[&str] = &["source", "state", "storage", "publish", "index"];

pub struct Metrics {
    registry: Registry,
    pub events_ingested: Counter,
    pub events_duplicate: Counter,
    pub records_read: Counter,
    pub records_dead_lettered: Family<Reason, Counter>,
    pub flows_tracked: Gauge,
    pub timers_due: Gauge,
    pub flow_parts_archived: Counter,
    pub flow_parts_purged: Counter,
    pub archived_raw_bytes: Counter,
    pub archived_stored_bytes: Counter,
    pub segments_archived: Counter,
    pub segment_upload_seconds: Histogram,
    pub expiry_to_archived_seconds: Histogram,
    pub failures: Family<Stage, Counter>,
    pub last_archive_success: Gauge,
    /// Records in the source not yet ingested (Kafka: high watermark minus committed
    /// offset over assigned partitions; NATS: pending plus unacknowledged).
    pub consumer_lag: Gauge,
    /// Seconds NATS batch acks have been held back, waiting for the server's pending
    /// set to be this process's own; 0 while they flow.
    pub acks_held: Gauge,
    /// 1 while ingest waits for space on the state store's disk.
    pub state_disk_full: Gauge,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("flow_archiver");
        let m = Metrics {
            events_ingested: Counter::default(),
            events_duplicate: Counter::default(),
            records_read: Counter::default(),
            records_dead_lettered: Family::default(),
            flows_tracked: Gauge::default(),
            timers_due: Gauge::default(),
            flow_parts_archived: Counter::default(),
            flow_parts_purged: Counter::default(),
            archived_raw_bytes: Counter::default(),
            archived_stored_bytes: Counter::default(),
            segments_archived: Counter::default(),
            segment_upload_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            expiry_to_archived_seconds: Histogram::new(exponential_buckets(0.1, 2.0, 16)),
            failures: Family::default(),
            last_archive_success: Gauge::default(),
            consumer_lag: Gauge::default(),
            acks_held: Gauge::default(),
            state_disk_full: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "records_read",
            "Input records read from the source",
            m.records_read.clone(),
        );
        registry.register(
            "events_ingested",
            "Events stored durably in the state store",
            m.events_ingested.clone(),
        );
        registry.register(
            "events_duplicate",
            "Events skipped as duplicates of stored ones",
            m.events_duplicate.clone(),
        );
        registry.register(
            "records_dead_lettered",
            "Input records refused and sent to the dead-letter destination, by reason",
            m.records_dead_lettered.clone(),
        );
        registry.register(
            "flows_tracked",
            "Live flows in the state store",
            m.flows_tracked.clone(),
        );
        registry.register(
            "timers_due",
            "Flows due for archiving at the last scheduler tick",
            m.timers_due.clone(),
        );
        registry.register(
            "flow_parts_archived",
            "Flow parts archived and published",
            m.flow_parts_archived.clone(),
        );
        registry.register(
            "flow_parts_purged",
            "Flow parts purged from the archive",
            m.flow_parts_purged.clone(),
        );
        registry.register_with_unit(
            "archived_raw",
            "Raw event bytes archived",
            prometheus_client::registry::Unit::Bytes,
            m.archived_raw_bytes.clone(),
        );
        registry.register_with_unit(
            "archived_stored",
            "Compressed bytes stored for archived flow parts",
            prometheus_client::registry::Unit::Bytes,
            m.archived_stored_bytes.clone(),
        );
        registry.register(
            "segments_archived",
            "Segment objects written, verified and published",
            m.segments_archived.clone(),
        );
        registry.register_with_unit(
            "segment_upload",
            "Time to upload one segment object",
            prometheus_client::registry::Unit::Seconds,
            m.segment_upload_seconds.clone(),
        );
        registry.register_with_unit(
            "expiry_to_archived",
            "Time from a flow part's retention expiry to its flow.archived publication",
            prometheus_client::registry::Unit::Seconds,
            m.expiry_to_archived_seconds.clone(),
        );
        registry.register(
            "failures",
            "Failed attempts, by pipeline stage",
            m.failures.clone(),
        );
        registry.register_with_unit(
            "last_archive_success_timestamp",
            "Unix time of the last segment archived successfully",
            prometheus_client::registry::Unit::Seconds,
            m.last_archive_success.clone(),
        );
        registry.register(
            "consumer_lag_messages",
            "Source records not yet ingested (Kafka consumer lag, NATS pending + unacknowledged)",
            m.consumer_lag.clone(),
        );
        registry.register_with_unit(
            "acks_held",
            "How long NATS batch acks have been held back (after a restart up to ack_wait; longer means another process on the consumer)",
            prometheus_client::registry::Unit::Seconds,
            m.acks_held.clone(),
        );
        registry.register(
            "state_disk_full",
            "1 while ingest is paused because the state store's disk is under state.min_free_bytes (or full)",
            m.state_disk_full.clone(),
        );
        for stage in STAGES {
            let _ = m.failures.get_or_create(&Stage {
                stage: stage.to_string(),
            });
        }
        for reason in ["malformed_json", "oversize", "invalid_identifier"] {
            let _ = m.records_dead_lettered.get_or_create(&Reason {
                reason: reason.to_string(),
            });
        }
        Metrics { registry, ..m }
    }

    pub fn dead_lettered(&self, reason: &str, n: u64) {
        self.records_dead_lettered
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc_by(n);
    }

    pub fn failed(&self, stage: &str) {
        self.failures
            .get_or_create(&Stage {
                stage: stage.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition (OpenMetrics text, which Prometheus scrapes).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
