//! `flow-archiver restore TENANT/FLOW_ID`: brings the objects holding a flow's archived
//! parts back from an S3 archive tier (`GLACIER`, `DEEP_ARCHIVE`) so that `get`, the
//! API and `replay` can read them (`docs/compliance.md`, "Storage classes").
//!
//! The objects are the ones the index names for the flow (as reads find them). Each
//! one in an archive
//! tier and not yet readable gets a `RestoreObject`; asking again while one runs is
//! harmless, so the command can be repeated to see progress, or wait with `--wait`.

use serde::Serialize;

use crate::archive::{ArchiveError, ArchiveStore, ObjectTier, Restore};
use crate::config::ARCHIVE_TIERS;

/// How often `--wait` asks S3 again.
pub const POLL: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ObjectRestore {
    pub object_uri: String,
    pub storage_class: String,
    /// `not_needed`, `requested`, `in_progress` or `restored`.
    pub state: &'static str,
    /// Until when a restored copy stays readable (S3's HTTP date).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiry: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RestoreReport {
    pub tenant: String,
    pub flow_id: String,
    pub objects: Vec<ObjectRestore>,
}

impl RestoreReport {
    /// Every object readable now.
    pub fn readable(&self) -> bool {
        self.objects
            .iter()
            .all(|o| matches!(o.state, "not_needed" | "restored"))
    }
}

impl std::fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ready = self
            .objects
            .iter()
            .filter(|o| matches!(o.state, "not_needed" | "restored"))
            .count();
        writeln!(
            f,
            "{}/{}: {ready} of {} objects readable",
            self.tenant,
            self.flow_id,
            self.objects.len()
        )?;
        for o in &self.objects {
            let state = match (o.state, &o.expiry) {
                ("restored", Some(until)) => format!("restored until {until}"),
                (state, _) => state.replace('_', " "),
            };
            writeln!(f, "  {} ({}): {state}", o.object_uri, o.storage_class)?;
        }
        Ok(())
    }
}

fn state_of(tier: &ObjectTier) -> (&'static str, Option<String>) {
    match &tier.restore {
        _ if !ARCHIVE_TIERS.contains(&tier.storage_class.as_str()) => ("not_needed", None),
        Some(Restore::Done { expiry }) => ("restored", expiry.clone()),
        Some(Restore::InProgress) => ("in_progress", None),
        None => ("requested", None),
    }
}

/// Requests the restores of the objects `keys` holding the flow (`request`), or only
/// reports where they stand.
pub async fn restore(
    objects: &ArchiveStore,
    (tenant, flow_id): (&str, &str),
    mut keys: Vec<String>,
    days: i32,
    tier: &str,
    request: bool,
) -> Result<RestoreReport, ArchiveError> {
    let Some(s3) = objects.compliance() else {
        return Err(ArchiveError::Config(
            "restore is for objects in S3 archive tiers; this archive is a local directory".into(),
        ));
    };
    keys.sort();
    keys.dedup();
    let mut report = RestoreReport {
        tenant: tenant.to_string(),
        flow_id: flow_id.to_string(),
        objects: Vec::new(),
    };
    for key in keys {
        let found = s3.tier(&key).await?;
        if request && found.needs_restore() && found.restore.is_none() {
            s3.restore(&key, days, tier).await?;
        }
        let (state, expiry) = state_of(&s3.tier(&key).await?);
        report.objects.push(ObjectRestore {
            object_uri: objects.uri(&key),
            storage_class: found.storage_class,
            state,
            expiry,
        });
    }
    Ok(report)
}
