//! Erasure (right to be forgotten): removes every byte of one flow's history from
//! the live state and from the archive, keeping every other flow readable.
//!
//! ```text
//! held? ─► refuse
//! archive intents holding the flow ─► finish them (their object is then erased too)
//! live state ─► delete the flow's events, dedupe keys and timer (one transaction)
//! every object of the tenant whose manifest names the flow, one at a time:
//!   record erase intent ─► rewrite the object without the flow (new segment id, same
//!   purge date) ─► upload + read back ─► publish relocation flow.archived for the
//!   parts that moved ─► delete the old object ─► publish flow.purged (reason
//!   erasure) for the flow's parts ─► forget intent ─► audit line
//! ```
//!
//! A crash anywhere is finished by the next `erase` (any flow): while the old object
//! exists the rewrite is repeated (same key, verified again); once it is gone the new
//! one is known good. Published ids are checked before publishing again, and every
//! id is deterministic, so consumers see each fact once. Until the relocation events
//! are published the index points at the old object, which still exists; afterwards at
//! the new one. No part is ever without a readable, indexed location.
//!
//! Finding the objects costs one listing of the tenant's keys and one manifest read
//! per object: erasure is rare and must not depend on an index that may lag.

use serde::Serialize;

use super::{blocking, Pipeline, PipelineError};
use crate::archive::{read_manifest, rewrite_segment};
use crate::audit::AuditRecord;
use crate::failpoint;
use crate::publish::{FlowPurged, PublishedEvent};
use crate::state::{EraseIntent, Rewrite};
use crate::time::rfc3339_ms;

/// One object an erasure touched (or, in a dry run, would touch).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErasedObject {
    pub object_uri: String,
    /// The rewritten object; `None` when the object held nothing else and is deleted.
    pub rewritten_uri: Option<String>,
    /// Parts of the erased flow that were in it.
    pub erased_parts: Vec<u32>,
    /// `tenant/flow_id/part` of every other part, moved to the rewritten object.
    pub relocated: Vec<String>,
}

/// The outcome of an erasure (or dry run).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct EraseReport {
    pub dry_run: bool,
    pub tenant: String,
    pub flow_id: String,
    /// Interrupted erasures (of any flow) finished first.
    pub recovered: u64,
    /// Archive intents holding the flow, finished before erasing it.
    pub archived_first: u64,
    /// The flow had an open (live) part.
    pub live: bool,
    pub live_events: u64,
    pub objects_scanned: u64,
    pub objects_rewritten: u64,
    pub objects_deleted: u64,
    pub parts_erased: u64,
    pub parts_relocated: u64,
    pub objects: Vec<ErasedObject>,
}

impl std::fmt::Display for EraseReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (erase, rewrite, delete) = if self.dry_run {
            ("would erase", "would rewrite", "would delete")
        } else {
            ("erased", "rewrote", "deleted")
        };
        if self.recovered > 0 {
            writeln!(f, "finished {} interrupted erasures", self.recovered)?;
        }
        if !self.live && self.objects.is_empty() {
            return writeln!(
                f,
                "found nothing of {}/{} (live or archived): nothing to erase",
                self.tenant, self.flow_id
            );
        }
        writeln!(
            f,
            "{erase} {}/{}: {} live events, {} archived parts",
            self.tenant, self.flow_id, self.live_events, self.parts_erased
        )?;
        writeln!(
            f,
            "  {rewrite} {} objects ({} other parts moved), {delete} {} objects, scanned {}",
            self.objects_rewritten,
            self.parts_relocated,
            self.objects_deleted,
            self.objects_scanned
        )?;
        for o in &self.objects {
            match &o.rewritten_uri {
                Some(new) => writeln!(f, "  {} -> {}", o.object_uri, new)?,
                None => writeln!(f, "  {} (deleted)", o.object_uri)?,
            }
        }
        Ok(())
    }
}

impl Pipeline {
    /// Erases one flow (see the module doc). A held flow is refused, and so is one in
    /// an object that S3 Object Lock retains, unless the retention is governance and
    /// the operator asked to bypass it (`docs/compliance.md`).
    pub async fn erase(
        &self,
        tenant: &str,
        flow_id: &str,
        reason: &str,
        actor: &str,
        dry_run: bool,
        bypass_governance: bool,
    ) -> Result<EraseReport, PipelineError> {
        let now_ms = self.clock.now_ms();
        let mut report = EraseReport {
            dry_run,
            tenant: tenant.to_string(),
            flow_id: flow_id.to_string(),
            ..Default::default()
        };
        // For the whole erasure: a hold placed meanwhile waits, and then finds nothing.
        let _removal = self.removal.lock().await;
        let store = self.store.clone();
        let held = blocking(move || store.holds())
            .await?
            .into_iter()
            .find(|h| h.tenant == tenant && h.flow_id == flow_id);
        if let Some(h) = held {
            return Err(PipelineError::Refused(format!(
                "{tenant}/{flow_id} is under legal hold since {} ({}); release it before erasing",
                rfc3339_ms(h.at_ms),
                h.reason
            )));
        }
        self.objects.preflight().await?;
        self.refuse_locked(tenant, flow_id, bypass_governance)
            .await?;
        if !dry_run {
            let store = self.store.clone();
            for intent in blocking(move || store.erase_intents()).await? {
                self.finish_erase(&intent, bypass_governance).await?;
                report.recovered += 1;
            }
        }

        // Sealed but not yet archived: finish the archival so that its object exists
        // and is erased below, rather than racing it.
        let store = self.store.clone();
        let pending: Vec<_> = blocking(move || store.intents())
            .await?
            .into_iter()
            .filter(|i| {
                i.parts
                    .iter()
                    .any(|p| p.meta.tenant == tenant && p.meta.flow_id == flow_id)
            })
            .collect();
        report.archived_first = pending.len() as u64;
        if !dry_run {
            let cancel = tokio_util::sync::CancellationToken::new();
            for intent in pending {
                self.archiver()
                    .process_with_retry(intent, true, Some(3), &cancel)
                    .await?;
            }
            let store = self.store.clone();
            let (t, f) = (tenant.to_string(), flow_id.to_string());
            let live = blocking(move || store.erase_live(&t, &f)).await?;
            report.live = live.open_part;
            report.live_events = live.events;
        } else {
            let store = self.store.clone();
            let (t, f) = (tenant.to_string(), flow_id.to_string());
            if let Some(meta) = blocking(move || store.live_flow(&t, &f)).await? {
                report.live = true;
                report.live_events = meta.event_count;
            }
        }

        let under = super::scheduler::tenant_prefix(self.objects.prefix(), tenant);
        for key in self.objects.list_keys(Some(&under)).await? {
            report.objects_scanned += 1;
            let manifest = read_manifest(&self.objects, &key).await?;
            let (erased, kept): (Vec<_>, Vec<_>) = manifest
                .parts
                .iter()
                .partition(|p| p.tenant == tenant && p.flow_id == flow_id);
            if erased.is_empty() {
                continue;
            }
            let rewrite = (!kept.is_empty()).then(|| {
                let segment_id = self.ids.next(now_ms);
                let dir = key.rsplit_once('/').map_or("", |(d, _)| d);
                let ext = crate::archive::compression_of(&key).extension();
                Rewrite {
                    object_key: format!("{dir}/{segment_id}.{ext}"),
                    segment_id,
                }
            });
            let intent = EraseIntent {
                tenant: tenant.to_string(),
                flow_id: flow_id.to_string(),
                old_key: key.clone(),
                old_uri: self.objects.uri(&key),
                old_segment_id: manifest.segment_id.clone(),
                rewrite,
                erased_parts: erased.iter().map(|p| p.part).collect(),
                reason: reason.to_string(),
                actor: actor.to_string(),
                at_ms: now_ms,
            };
            report.parts_erased += erased.len() as u64;
            report.parts_relocated += kept.len() as u64;
            match intent.rewrite {
                Some(_) => report.objects_rewritten += 1,
                None => report.objects_deleted += 1,
            }
            report.objects.push(ErasedObject {
                object_uri: intent.old_uri.clone(),
                rewritten_uri: intent
                    .rewrite
                    .as_ref()
                    .map(|r| self.objects.uri(&r.object_key)),
                erased_parts: intent.erased_parts.clone(),
                relocated: kept
                    .iter()
                    .map(|p| format!("{}/{}/{}", p.tenant, p.flow_id, p.part))
                    .collect(),
            });
            if !dry_run {
                let (store, recorded) = (self.store.clone(), intent.clone());
                blocking(move || store.begin_erase(&recorded)).await?;
                failpoint::hit("after-erase-intent");
                self.finish_erase(&intent, bypass_governance).await?;
            }
        }

        if !dry_run {
            let mut record = AuditRecord::new("erase", actor, now_ms)
                .flow(tenant, flow_id)
                .count("live_events", report.live_events)
                .count("objects_rewritten", report.objects_rewritten)
                .count("objects_deleted", report.objects_deleted)
                .count("flow_parts", report.parts_erased)
                .count("parts_relocated", report.parts_relocated)
                .count("governance_bypassed", u64::from(bypass_governance));
            record.reason = Some(reason.to_string());
            self.audit(record).await?;
        }
        Ok(report)
    }

    /// Every object of `tenant` whose manifest names the flow, with that manifest: one
    /// listing of the tenant's keys and a manifest read each, so that holds and
    /// erasures never depend on an index that may lag.
    pub(super) async fn objects_naming(
        &self,
        tenant: &str,
        flow_id: &str,
    ) -> Result<Vec<(String, crate::archive::Manifest)>, PipelineError> {
        let under = super::scheduler::tenant_prefix(self.objects.prefix(), tenant);
        let mut found = Vec::new();
        for key in self.objects.list_keys(Some(&under)).await? {
            let manifest = read_manifest(&self.objects, &key).await?;
            if manifest
                .parts
                .iter()
                .any(|p| p.tenant == tenant && p.flow_id == flow_id)
            {
                found.push((key, manifest));
            }
        }
        Ok(found)
    }

    /// With Object Lock on: refuses, before anything changes, an erasure that S3
    /// would stop half-way because an object holding the flow is still retained.
    async fn refuse_locked(
        &self,
        tenant: &str,
        flow_id: &str,
        bypass_governance: bool,
    ) -> Result<(), PipelineError> {
        let Some(s3) = self.objects.object_lock_client() else {
            return Ok(());
        };
        for (key, _) in self.objects_naming(tenant, flow_id).await? {
            let r = s3.retention(&key).await?;
            if !r.locked_now() {
                continue;
            }
            let uri = self.objects.uri(&key);
            let until = r.retain_until_ms.map(rfc3339_ms).unwrap_or_default();
            if r.legal_hold {
                return Err(PipelineError::Refused(format!(
                    "{tenant}/{flow_id} is in {uri}, which carries an S3 legal hold for another flow in it: S3 refuses to change it until that flow is released"
                )));
            }
            match r.mode.as_deref() {
                Some("COMPLIANCE") => {
                    return Err(PipelineError::Refused(format!(
                        "{tenant}/{flow_id} is in {uri}, which S3 Object Lock retains in COMPLIANCE mode until {until}. Nobody, the bucket owner's root account included, can delete or overwrite it before then. Compliance retention records a legal obligation to keep these records, and erasure rights generally yield to such obligations (GDPR Art. 17(3)(b)); have your data-protection officer confirm. Nothing was changed: erase again after {until}"
                    )));
                }
                Some(_) if !bypass_governance => {
                    return Err(PipelineError::Refused(format!(
                        "{tenant}/{flow_id} is in {uri}, which S3 Object Lock retains in GOVERNANCE mode until {until}. Erasing it means lifting that retention: run erase again with --bypass-governance (the credentials need s3:BypassGovernanceRetention); the bypass and its --reason go to the audit trail. Nothing was changed"
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Carries one erase intent to its end (see the module doc for each step's
    /// recovery).
    async fn finish_erase(
        &self,
        intent: &EraseIntent,
        bypass_governance: bool,
    ) -> Result<(), PipelineError> {
        if let Some(rewrite) = &intent.rewrite {
            // The new object's SHA-256: known when it is written here, read back from
            // the store when a resumed erasure finds the old object already gone.
            let mut sha256 = None;
            if self.objects.exists(&intent.old_key).await? {
                let spool = self
                    .config
                    .archive
                    .spool_dir
                    .join(format!("{}.segment", rewrite.segment_id));
                let stored = async {
                    let old = read_manifest(&self.objects, &intent.old_key).await?;
                    let uploaded = rewrite_segment(
                        &self.objects,
                        &intent.old_key,
                        &old,
                        |p| !(p.tenant == intent.tenant && p.flow_id == intent.flow_id),
                        rewrite,
                        crate::archive::Framing {
                            zstd_level: self.config.archive.zstd_level,
                            frame_target: self.config.archive.frame_target_bytes,
                        },
                        &spool,
                    )
                    .await?;
                    // The kept parts' purge dates, so Object Lock keeps what it kept.
                    let retain_until = old
                        .parts
                        .iter()
                        .filter(|p| !(p.tenant == intent.tenant && p.flow_id == intent.flow_id))
                        .filter_map(|p| chrono::DateTime::parse_from_rfc3339(&p.purge_at).ok())
                        .map(|t| t.timestamp_millis())
                        .max();
                    // The old object's class, whatever chose it.
                    let class = match self.objects.compliance() {
                        Some(s3) => Some(s3.tier(&intent.old_key).await?.storage_class),
                        None => None,
                    };
                    self.objects
                        .upload(
                            &rewrite.object_key,
                            &spool,
                            &uploaded.object_sha256,
                            retain_until.unwrap_or_default(),
                            class.as_deref(),
                        )
                        .await?;
                    self.objects
                        .verify(
                            &rewrite.object_key,
                            &uploaded.object_sha256,
                            uploaded.object_size,
                        )
                        .await?;
                    Ok::<_, crate::archive::ArchiveError>(uploaded.object_sha256)
                }
                .await;
                let _ = tokio::fs::remove_file(&spool).await;
                sha256 = Some(stored?);
                failpoint::hit("after-erase-upload");
            }
            // From the object itself, so a resumed erasure publishes the same records.
            let manifest = read_manifest(&self.objects, &rewrite.object_key).await?;
            let sha256 = match sha256 {
                Some(known) => known,
                None => self.objects.object_sha256(&rewrite.object_key).await?.0,
            };
            let uri = self.objects.uri(&rewrite.object_key);
            let moved: Vec<PublishedEvent> = manifest
                .parts
                .iter()
                .map(|p| {
                    PublishedEvent::relocated(&manifest, p, &uri, &rewrite.object_key, &sha256)
                })
                .collect();
            self.publish_once(moved).await?;
            failpoint::hit("after-erase-relocate");
        }
        self.objects
            .delete(&intent.old_key, bypass_governance)
            .await?;
        failpoint::hit("after-erase-delete");
        let purged: Vec<PublishedEvent> = intent
            .erased_parts
            .iter()
            .map(|part| {
                PublishedEvent::purged(FlowPurged {
                    tenant: intent.tenant.clone(),
                    flow_id: intent.flow_id.clone(),
                    part: *part as i32,
                    reason: "erasure".into(),
                    object_uri: intent.old_uri.clone(),
                    segment_id: intent.old_segment_id.clone(),
                    purged_at: intent.at_ms * 1000,
                    actor: Some(intent.actor.clone()),
                })
            })
            .collect();
        self.publish_once(purged).await?;
        let store = self.store.clone();
        let key = intent.old_key.clone();
        blocking(move || store.finish_erase(&key)).await?;
        crate::telemetry::metrics()
            .flow_parts_purged
            .inc_by(intent.erased_parts.len() as u64);
        Ok(())
    }

    /// Publishes the events not already durably published (a resumed step).
    async fn publish_once(&self, events: Vec<PublishedEvent>) -> Result<(), PipelineError> {
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        let done = self.publisher.already_published(&ids).await?;
        let todo: Vec<PublishedEvent> = events
            .into_iter()
            .filter(|e| !done.contains(&e.id))
            .collect();
        if !todo.is_empty() {
            self.publisher.publish(&todo).await?;
        }
        Ok(())
    }
}
