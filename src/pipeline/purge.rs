//! The purge stage (`docs/design.md`, "Purge"): removes segment objects whose every flow
//! part is past its `purge_at`, unless one of them is under legal hold.
//!
//! ```text
//! list {prefix}/{tenant}/purge={date}/ for dates ≤ today ─► read manifest
//!   ─► all parts due and none held? ─► record purge intent ─► delete object
//!   ─► publish flow.purged per part (durable) ─► forget intent ─► audit line
//! ```
//!
//! A crash after the intent is recorded is finished at the next purge: deleting a
//! missing object is a no-op and `flow.purged` ids are deterministic, so a repeat is
//! absorbed by consumers. A dry run walks the same objects and changes nothing.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::{blocking, Pipeline, PipelineError};
use crate::archive::read_manifest;
use crate::audit::AuditRecord;
use crate::failpoint;
use crate::publish::{FlowPurged, PublishedEvent};
use crate::state::PurgeIntent;
use crate::time::rfc3339_ms;
use crate::units::human_bytes;

/// Counts for one tenant.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TenantPurge {
    pub objects: u64,
    pub flow_parts: u64,
    pub bytes: u64,
}

/// One object a purge removes (or, in a dry run, would remove).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PurgedObject {
    pub tenant: String,
    pub object_uri: String,
    pub bytes: u64,
    /// `flow_id/part` of every part in it.
    pub flow_parts: Vec<String>,
}

/// The outcome of a purge (or dry run).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PurgeReport {
    pub dry_run: bool,
    pub now: String,
    /// Interrupted purges finished first.
    pub recovered: u64,
    pub objects: u64,
    pub flow_parts: u64,
    pub bytes: u64,
    /// Objects kept because a part is under legal hold.
    pub held_objects: u64,
    /// Objects in a due date prefix with a part whose `purge_at` is still ahead.
    pub not_yet_due: u64,
    /// Due objects left in place because S3 Object Lock still retains them (a
    /// retain-until date ahead, or a legal hold on the object).
    pub locked_objects: u64,
    pub by_tenant: BTreeMap<String, TenantPurge>,
    pub purged: Vec<PurgedObject>,
}

impl std::fmt::Display for PurgeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run {
            "would purge"
        } else {
            "purged"
        };
        writeln!(
            f,
            "{verb} {} objects, {} flow parts, {} (at {})",
            self.objects,
            self.flow_parts,
            human_bytes(self.bytes),
            self.now
        )?;
        for (tenant, t) in &self.by_tenant {
            writeln!(
                f,
                "  {tenant}: {} objects, {} flow parts, {}",
                t.objects,
                t.flow_parts,
                human_bytes(t.bytes)
            )?;
        }
        if self.dry_run {
            for o in &self.purged {
                writeln!(
                    f,
                    "  {} ({}): {}",
                    o.object_uri,
                    human_bytes(o.bytes),
                    o.flow_parts.join(" ")
                )?;
            }
        }
        if self.held_objects > 0 {
            writeln!(
                f,
                "kept {} objects holding flows under legal hold",
                self.held_objects
            )?;
        }
        if self.locked_objects > 0 {
            writeln!(
                f,
                "kept {} objects that S3 Object Lock still retains (retain-until date ahead, or a legal hold on the object)",
                self.locked_objects
            )?;
        }
        if self.recovered > 0 {
            writeln!(f, "finished {} interrupted purges", self.recovered)?;
        }
        Ok(())
    }
}

impl Pipeline {
    /// Purges every object due at `now_ms` (see the module doc). `actor` is recorded
    /// in the audit trail.
    pub async fn purge(
        &self,
        now_ms: i64,
        dry_run: bool,
        actor: &str,
    ) -> Result<PurgeReport, PipelineError> {
        let mut report = PurgeReport {
            dry_run,
            now: rfc3339_ms(now_ms),
            ..Default::default()
        };
        if !dry_run {
            let store = self.store.clone();
            for intent in blocking(move || store.purge_intents()).await? {
                self.finish_purge(&intent).await?;
                report.recovered += 1;
            }
        }
        let today = chrono::DateTime::from_timestamp_millis(now_ms)
            .unwrap_or_default()
            .format("%Y-%m-%d")
            .to_string();
        for tenant_dir in self.objects.list_dirs(self.objects.prefix()).await? {
            for date_dir in self.objects.list_dirs(&tenant_dir).await? {
                let name = date_dir.rsplit('/').next().unwrap_or_default();
                if name == "flows" {
                    // The per-flow layout has no date in its keys: every object is
                    // read (its manifest decides), so each pass costs O(objects).
                    for key in self.objects.list_keys(Some(&date_dir)).await? {
                        self.purge_object(&key, now_ms, dry_run, actor, &mut report)
                            .await?;
                    }
                    continue;
                }
                let Some(date) = name.strip_prefix("purge=") else {
                    continue;
                };
                // ISO dates compare as text.
                if date > today.as_str() {
                    continue;
                }
                for key in self.objects.list_keys(Some(&date_dir)).await? {
                    self.purge_object(&key, now_ms, dry_run, actor, &mut report)
                        .await?;
                }
            }
        }
        Ok(report)
    }

    async fn purge_object(
        &self,
        key: &str,
        now_ms: i64,
        dry_run: bool,
        actor: &str,
        report: &mut PurgeReport,
    ) -> Result<(), PipelineError> {
        let manifest = read_manifest(&self.objects, key).await?;
        let due = manifest.parts.iter().all(|p| {
            chrono::DateTime::parse_from_rfc3339(&p.purge_at)
                .is_ok_and(|t| t.timestamp_millis() <= now_ms)
        });
        if !due {
            report.not_yet_due += 1;
            return Ok(());
        }
        // Holds are read under the removal lock: a hold placed before this point
        // keeps the object; one placed after waits until the object is gone.
        let _removal = self.removal.lock().await;
        let store = self.store.clone();
        let held: HashSet<(String, String)> = blocking(move || store.holds())
            .await?
            .into_iter()
            .map(|h| (h.tenant, h.flow_id))
            .collect();
        if manifest
            .parts
            .iter()
            .any(|p| held.contains(&(p.tenant.to_string(), p.flow_id.to_string())))
        {
            report.held_objects += 1;
            return Ok(());
        }
        // S3 would refuse the delete: never try it, and say why it stays.
        if let Some(s3) = self.objects.object_lock_client() {
            let retention = s3.retention(key).await?;
            if retention.locked_now() {
                tracing::info!(
                    key,
                    retain_until = retention.retain_until_ms.map(rfc3339_ms),
                    legal_hold = retention.legal_hold,
                    "Due for purge but still retained by S3 Object Lock: left in place."
                );
                report.locked_objects += 1;
                return Ok(());
            }
        }
        let object = PurgedObject {
            tenant: manifest.tenant.clone(),
            object_uri: self.objects.uri(key),
            bytes: manifest.object_size,
            flow_parts: manifest
                .parts
                .iter()
                .map(|p| format!("{}/{}", p.flow_id, p.part))
                .collect(),
        };
        if !dry_run {
            let intent = PurgeIntent {
                object_key: key.to_string(),
                object_uri: object.object_uri.clone(),
                segment_id: manifest.segment_id.clone(),
                reason: "retention".into(),
                actor: None,
                at_ms: now_ms,
                parts: manifest
                    .parts
                    .iter()
                    .map(|p| (p.tenant.to_string(), p.flow_id.to_string(), p.part))
                    .collect(),
            };
            let (store, recorded) = (self.store.clone(), intent.clone());
            blocking(move || store.begin_purge(&recorded)).await?;
            self.finish_purge(&intent).await?;
            let mut record = AuditRecord::new("purge", actor, now_ms)
                .count("flow_parts", object.flow_parts.len() as u64)
                .count("bytes", object.bytes);
            record.tenant = Some(object.tenant.clone());
            record.reason = Some("retention".into());
            record.object_uri = Some(object.object_uri.clone());
            self.audit(record).await?;
        }
        let t = report.by_tenant.entry(object.tenant.clone()).or_default();
        t.objects += 1;
        t.flow_parts += object.flow_parts.len() as u64;
        t.bytes += object.bytes;
        report.objects += 1;
        report.flow_parts += object.flow_parts.len() as u64;
        report.bytes += object.bytes;
        report.purged.push(object);
        Ok(())
    }

    /// Deletes the intent's object, publishes its `flow.purged` events, forgets it.
    async fn finish_purge(&self, intent: &PurgeIntent) -> Result<(), PipelineError> {
        self.objects.delete(&intent.object_key, false).await?;
        failpoint::hit("after-purge-delete");
        let events: Vec<PublishedEvent> = intent
            .parts
            .iter()
            .map(|(tenant, flow_id, part)| {
                PublishedEvent::purged(FlowPurged {
                    tenant: tenant.clone(),
                    flow_id: flow_id.clone(),
                    part: *part as i32,
                    reason: intent.reason.clone(),
                    object_uri: intent.object_uri.clone(),
                    segment_id: intent.segment_id.clone(),
                    purged_at: intent.at_ms * 1000,
                    actor: intent.actor.clone(),
                })
            })
            .collect();
        self.publisher.publish(&events).await?;
        let store = self.store.clone();
        let key = intent.object_key.clone();
        blocking(move || store.finish_purge(&key)).await?;
        crate::telemetry::metrics()
            .flow_parts_purged
            .inc_by(events.len() as u64);
        Ok(())
    }
}
