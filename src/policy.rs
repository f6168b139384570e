//! Retention policy (`docs/configuration.md`, `[retention]`; `docs/design.md`, "Archive")
//! and the [`Clock`] seam.
//!
//! The policy answers two questions for a flow: when does it become due for archival
//! (its *deadline*), and how long does the archive keep it (`archive_for`). A flow is
//! due when `now >= last_event_time + retention(status, labels, tenant)`; terminal
//! flows use their status's retention, non-terminal ones the `abandoned` idle time.
//! Overrides are tried in order and the first whose selector matches wins.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Retention, RetentionConfig, RetentionOverride};
use crate::flow::{FlowStatus, Labels};

/// Milliseconds since the Unix epoch; the only notion of "now" the pipeline uses.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> i64;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock that moves only when told to (tests, `--now`).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        ManualClock(Arc::new(AtomicI64::new(now_ms)))
    }
    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the policy decides for one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// When the flow becomes due (ms), or `None` when it is never archived by timer.
    pub deadline_ms: Option<i64>,
    /// The status the flow is archived with (`abandoned` for idle non-terminal flows).
    pub archive_status: FlowStatus,
    pub archive_for: Duration,
}

/// The validated retention configuration, ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionPolicy {
    config: RetentionConfig,
}

impl RetentionPolicy {
    pub fn new(config: RetentionConfig) -> Self {
        RetentionPolicy { config }
    }

    /// A stable text identifying the policy, so a restart under a changed policy can
    /// recompute stored deadlines.
    pub fn fingerprint(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_default()
    }

    fn matching_override(
        &self,
        tenant: &str,
        status: FlowStatus,
        labels: &Labels,
    ) -> Option<&RetentionOverride> {
        self.config.overrides.iter().find(|o| {
            let s = &o.selector;
            s.tenant.as_deref().is_none_or(|t| t == tenant)
                && s.status.is_none_or(|st| st == status)
                && s.labels
                    .iter()
                    .all(|(k, v)| labels.get(k) == Some(v.as_str()))
        })
    }

    /// The storage class the first matching override gives a flow (`None`: the
    /// archive's own).
    pub fn storage_class(&self, tenant: &str, status: FlowStatus, labels: &Labels) -> Option<&str> {
        self.matching_override(tenant, status, labels)
            .and_then(|o| o.storage_class.as_deref())
    }

    /// Decides a flow's deadline from its status, labels, tenant and last event time.
    pub fn decide(
        &self,
        tenant: &str,
        status: FlowStatus,
        labels: &Labels,
        last_event_ms: i64,
    ) -> Decision {
        let chosen = self.matching_override(tenant, status, labels);
        let archive_for = chosen
            .and_then(|o| o.archive_for)
            .unwrap_or(self.config.archive_for);
        let c = &self.config;
        let (retention, archive_status) = match status {
            FlowStatus::Running => (c.abandoned, FlowStatus::Abandoned),
            terminal => {
                let base = match terminal {
                    FlowStatus::Completed => c.completed,
                    FlowStatus::Failed => c.failed,
                    FlowStatus::Error => c.error,
                    FlowStatus::Cancelled => c.cancelled,
                    FlowStatus::TimedOut => c.timed_out,
                    FlowStatus::Abandoned => c.abandoned,
                    FlowStatus::Running => Retention::Off,
                };
                (chosen.and_then(|o| o.retention).unwrap_or(base), terminal)
            }
        };
        let deadline_ms = retention
            .duration()
            .map(|d| last_event_ms.saturating_add(d.as_millis() as i64));
        Decision {
            deadline_ms,
            archive_status,
            archive_for,
        }
    }

    /// `archived_at + archive_for` for a flow with these attributes.
    pub fn purge_at(
        &self,
        tenant: &str,
        status: FlowStatus,
        labels: &Labels,
        archived_at_ms: i64,
    ) -> i64 {
        let d = self.decide(tenant, status, labels, archived_at_ms);
        archived_at_ms.saturating_add(d.archive_for.as_millis() as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Selector};

    fn labels<T: FromIterator<(String, String)>>(pairs: &[(&str, &str)]) -> T {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn per_status_retention_and_first_matching_override() {
        let mut cfg = Config::default().retention;
        cfg.overrides = vec![
            RetentionOverride {
                selector: Selector {
                    labels: labels(&[("category", "security")]),
                    ..Default::default()
                },
                retention: Some(Retention::After(Duration::ZERO)),
                archive_for: Some(Duration::from_secs(5 * 365 * 86_400)),
                storage_class: Some("GLACIER_IR".into()),
            },
            RetentionOverride {
                selector: Selector {
                    tenant: Some("acme".into()),
                    ..Default::default()
                },
                retention: Some(Retention::After(Duration::from_secs(60))),
                archive_for: None,
                storage_class: None,
            },
        ];
        let p = RetentionPolicy::new(cfg);
        let security = labels(&[("category", "security")]);
        assert_eq!(
            p.storage_class("acme", FlowStatus::Completed, &security),
            Some("GLACIER_IR"),
            "the first matching override gives the class"
        );
        assert_eq!(
            p.storage_class("acme", FlowStatus::Completed, &labels(&[])),
            None
        );
        let day = 86_400_000;
        let d = p.decide("t", FlowStatus::Completed, &labels(&[]), 0);
        assert_eq!(d.deadline_ms, Some(30 * day));
        let d = p.decide("t", FlowStatus::Failed, &labels(&[]), 0);
        assert_eq!(d.deadline_ms, Some(90 * day));
        let d = p.decide(
            "acme",
            FlowStatus::Failed,
            &labels(&[("category", "security")]),
            5,
        );
        assert_eq!(
            d.deadline_ms,
            Some(5),
            "first match wins over the tenant rule"
        );
        assert_eq!(d.archive_for, Duration::from_secs(5 * 365 * 86_400));
        let d = p.decide("acme", FlowStatus::Failed, &labels(&[]), 0);
        assert_eq!(d.deadline_ms, Some(60_000));
        assert_eq!(d.archive_for, Duration::from_secs(365 * 86_400));
    }

    #[test]
    fn running_flows_wait_for_abandoned_which_defaults_to_off() {
        let mut cfg = Config::default().retention;
        let p = RetentionPolicy::new(cfg.clone());
        assert_eq!(
            p.decide("t", FlowStatus::Running, &labels(&[]), 0)
                .deadline_ms,
            None
        );
        cfg.abandoned = Retention::After(Duration::from_secs(10));
        let p = RetentionPolicy::new(cfg);
        let d = p.decide("t", FlowStatus::Running, &labels(&[]), 1_000);
        assert_eq!(d.deadline_ms, Some(11_000));
        assert_eq!(d.archive_status, FlowStatus::Abandoned);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_000);
        c.advance(Duration::from_secs(2));
        assert_eq!(c.now_ms(), 3_000);
        c.set(7);
        assert_eq!(c.now_ms(), 7);
    }
}
