//! Legal holds: placed and released here (CLI and the API of `run`), recorded in the
//! state store, published as `flow.hold` so the index marks the parts, and audited.
//!
//! A hold changes under the same lock that purges and erasures take per object, so
//! once [`Pipeline::hold`] returns, no removal that has not yet read the holds can
//! remove the flow.

use super::{blocking, Pipeline, PipelineError};
use crate::state::Hold;

impl Pipeline {
    /// Places a legal hold on a flow (all its parts, live and archived): recorded in
    /// the state store, published as `flow.hold` (the index marks the parts), audited.
    pub async fn hold(
        &self,
        tenant: &str,
        flow_id: &str,
        reason: &str,
        actor: &str,
    ) -> Result<(), PipelineError> {
        self.change_hold(tenant, flow_id, true, reason, actor).await
    }

    /// Releases a flow's legal hold; an error when there is none.
    pub async fn release(
        &self,
        tenant: &str,
        flow_id: &str,
        reason: &str,
        actor: &str,
    ) -> Result<(), PipelineError> {
        self.change_hold(tenant, flow_id, false, reason, actor)
            .await
    }

    async fn change_hold(
        &self,
        tenant: &str,
        flow_id: &str,
        held: bool,
        reason: &str,
        actor: &str,
    ) -> Result<(), PipelineError> {
        let now_ms = self.clock.now_ms();
        let hold = Hold {
            tenant: tenant.to_string(),
            flow_id: flow_id.to_string(),
            reason: reason.to_string(),
            actor: actor.to_string(),
            at_ms: now_ms,
        };
        let store = self.store.clone();
        let (t, f, h) = (tenant.to_string(), flow_id.to_string(), hold.clone());
        let previous = {
            let _removal = self.removal.lock().await;
            blocking(move || store.set_hold(&t, &f, held.then_some(&h))).await?
        };
        if !held && previous.is_none() {
            return Err(PipelineError::NotFound(format!(
                "{tenant}/{flow_id} is not on hold"
            )));
        }
        self.set_object_holds(tenant, flow_id, held).await?;
        self.publisher
            .publish(&[crate::publish::PublishedEvent::hold(
                crate::publish::FlowHold {
                    tenant: tenant.to_string(),
                    flow_id: flow_id.to_string(),
                    held,
                    reason: reason.to_string(),
                    actor: actor.to_string(),
                    at: now_ms * 1000,
                },
            )])
            .await?;
        let mut record =
            crate::audit::AuditRecord::new(if held { "hold" } else { "release" }, actor, now_ms)
                .flow(tenant, flow_id);
        record.reason = Some(reason.to_string());
        self.audit(record).await
    }

    /// With Object Lock on, mirrors the flow's hold on every object holding a part of
    /// it: ON for a hold; OFF for a release, except on objects that also hold another
    /// flow still on hold. Runs after the hold is recorded, so an archival in flight
    /// either sees the hold itself or has uploaded its object before this listing.
    /// Objects are found as erasure finds them (`objects_naming`).
    async fn set_object_holds(
        &self,
        tenant: &str,
        flow_id: &str,
        held: bool,
    ) -> Result<(), PipelineError> {
        let Some(s3) = self.objects.object_lock_client() else {
            return Ok(());
        };
        let store = self.store.clone();
        let holds: std::collections::HashSet<(String, String)> = blocking(move || store.holds())
            .await?
            .into_iter()
            .map(|h| (h.tenant, h.flow_id))
            .collect();
        for (key, manifest) in self.objects_naming(tenant, flow_id).await? {
            // A flow in `holds` other than this one keeps the object's hold on.
            let on = held
                || manifest.parts.iter().any(|p| {
                    !(p.tenant == tenant && p.flow_id == flow_id)
                        && holds.contains(&(p.tenant.to_string(), p.flow_id.to_string()))
                });
            s3.set_legal_hold(&key, on).await?;
        }
        Ok(())
    }

    /// Every hold, ordered by tenant and flow id.
    pub async fn holds(&self) -> Result<Vec<Hold>, PipelineError> {
        let store = self.store.clone();
        blocking(move || store.holds()).await
    }
}

/// Prints `holds` as the CLI shows them.
pub struct HoldList<'a>(pub &'a [Hold]);

impl std::fmt::Display for HoldList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return writeln!(f, "no holds");
        }
        for h in self.0 {
            writeln!(
                f,
                "{}/{}  since {}  by {}: {}",
                h.tenant,
                h.flow_id,
                crate::time::rfc3339_ms(h.at_ms),
                h.actor,
                h.reason
            )?;
        }
        Ok(())
    }
}
