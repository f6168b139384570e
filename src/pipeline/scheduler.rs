//! Planning archival: due flows → archive intents (segments).
//!
//! Flows are grouped by tenant and purge date, because a segment's key carries both
//! (`{prefix}/{tenant}/purge={YYYY-MM-DD}/{segment_id}.jsonl.zst`) and purge deletes
//! whole objects, and by the storage class a retention override gives them, because
//! an object has one; a group is cut into segments at `segment_max_flows` parts or
//! `segment_max_bytes` of raw history. The same function plans a dry run and a live
//! run, so a dry run reports exactly what a live run would do.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use object_store::path::{Path as ObjectPath, PathPart};

use crate::config::{ArchiveConfig, Layout};
use crate::policy::RetentionPolicy;
use crate::state::{ArchiveIntent, FlowMeta, IntentStage, SealedPart};

/// Allocates intent ids: `{UTC time}-{instance}-{counter}`, unique per process and
/// sortable by creation.
#[derive(Debug)]
pub struct IntentIds {
    instance: String,
    counter: AtomicU64,
}

impl Default for IntentIds {
    fn default() -> Self {
        IntentIds {
            instance: format!("{:08x}", rand::random::<u32>()),
            counter: AtomicU64::new(0),
        }
    }
}

impl IntentIds {
    pub fn next(&self, at_ms: i64) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let t = chrono::DateTime::from_timestamp_millis(at_ms)
            .map(|t| t.format("%Y%m%dT%H%M%S%3fZ").to_string())
            .unwrap_or_else(|| at_ms.to_string());
        format!("{t}-{}-{n:06}", self.instance)
    }
}

/// Builds an object key from components, encoding anything a store would mangle.
fn object_key(prefix: &str, parts: &[&str]) -> String {
    let all = prefix
        .split('/')
        .filter(|p| !p.is_empty())
        .chain(parts.iter().copied())
        .map(PathPart::from);
    ObjectPath::from_iter(all).to_string()
}

/// The key prefix under which every object of `tenant` lives (both layouts).
pub fn tenant_prefix(prefix: &str, tenant: &str) -> String {
    object_key(prefix, &[tenant])
}

/// Groups due flows into intents. `now_ms` becomes each intent's `archived_at`.
pub fn plan(
    due: Vec<FlowMeta>,
    policy: &RetentionPolicy,
    cfg: &ArchiveConfig,
    now_ms: i64,
    ids: &IntentIds,
) -> Vec<ArchiveIntent> {
    // A segment holds one tenant, one purge date and one storage class.
    let mut groups: BTreeMap<(String, String, Option<String>), Vec<SealedPart>> = BTreeMap::new();
    for meta in due {
        let decision = policy.decide(&meta.tenant, meta.status, &meta.labels, meta.last_event_ms);
        let class = policy
            .storage_class(&meta.tenant, meta.status, &meta.labels)
            .map(str::to_string);
        let purge_at_ms = now_ms.saturating_add(decision.archive_for.as_millis() as i64);
        let date = chrono::DateTime::from_timestamp_millis(purge_at_ms)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_else(|| "9999-12-31".into());
        groups
            .entry((meta.tenant.to_string(), date, class))
            .or_default()
            .push(SealedPart {
                archive_status: decision.archive_status,
                purge_at_ms,
                meta,
            });
    }
    let ext = cfg.compression.extension();
    let mut intents = Vec::new();
    let new_intent = |tenant: &str, key: String, id: String, parts| ArchiveIntent {
        id,
        tenant: tenant.to_string(),
        object_key: key,
        archived_at_ms: now_ms,
        compression: cfg.compression,
        zstd_level: cfg.zstd_level,
        parts,
        stage: IntentStage::Pending,
    };
    for ((tenant, date, _), parts) in groups {
        match cfg.layout {
            Layout::PerFlow => {
                for part in parts {
                    let id = ids.next(now_ms);
                    let file = format!("{}.{ext}", part.meta.part);
                    let key =
                        object_key(&cfg.prefix, &[&tenant, "flows", &part.meta.flow_id, &file]);
                    intents.push(new_intent(&tenant, key, id, vec![part]));
                }
            }
            Layout::Segment => {
                let mut current: Vec<SealedPart> = Vec::new();
                let mut bytes = 0u64;
                let flush = |current: &mut Vec<SealedPart>, intents: &mut Vec<ArchiveIntent>| {
                    if current.is_empty() {
                        return;
                    }
                    let id = ids.next(now_ms);
                    let file = format!("{id}.{ext}");
                    let key = object_key(&cfg.prefix, &[&tenant, &format!("purge={date}"), &file]);
                    intents.push(new_intent(&tenant, key, id, std::mem::take(current)));
                };
                for part in parts {
                    let size = part.meta.raw_bytes;
                    if !current.is_empty()
                        && (current.len() >= cfg.segment_max_flows
                            || bytes + size > cfg.segment_max_bytes)
                    {
                        flush(&mut current, &mut intents);
                        bytes = 0;
                    }
                    bytes += size;
                    current.push(part);
                }
                flush(&mut current, &mut intents);
            }
        }
    }
    intents
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, RetentionOverride, Selector};
    use crate::flow::FlowStatus;

    fn meta(flow: &str, team: &str) -> FlowMeta {
        let mut event = crate::state::test_support::event(flow, "1", "{}".into());
        event.status = FlowStatus::Completed;
        event.labels = [("team", team)].into_iter().collect();
        let mut meta = crate::state::meta::new_meta(&event, 1, 0);
        crate::state::meta::apply_event(&mut meta, &event, 0);
        meta
    }

    /// Flows of one tenant and purge date whose overrides give different storage
    /// classes go to different segments; the rest share one.
    #[test]
    fn a_segment_holds_one_storage_class() {
        let mut retention = Config::default().retention;
        retention.overrides = vec![RetentionOverride {
            selector: Selector {
                labels: [("team".to_string(), "audit".to_string())].into(),
                ..Default::default()
            },
            retention: None,
            archive_for: None,
            storage_class: Some("GLACIER_IR".into()),
        }];
        let policy = RetentionPolicy::new(retention);
        let due = vec![meta("a", "ops"), meta("b", "audit"), meta("c", "ops")];
        let intents = plan(
            due,
            &policy,
            &Config::default().archive,
            0,
            &IntentIds::default(),
        );
        let mut flows: Vec<Vec<&str>> = intents
            .iter()
            .map(|i| i.parts.iter().map(|p| p.meta.flow_id.as_str()).collect())
            .collect();
        flows.sort();
        assert_eq!(flows, [vec!["a", "c"], vec!["b"]]);
    }
}
