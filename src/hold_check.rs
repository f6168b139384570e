//! `verify --holds`: compares the S3 legal hold of every archive object with the holds
//! flow-archiver records, and with `--repair` sets the ones that differ
//! (`docs/compliance.md`, "Legal holds"). Holds and objects drift apart when a bucket
//! is restored from a copy, when someone changes a hold with other tools, or when a
//! `hold` failed half-way through its objects.
//!
//! An object should carry a legal hold exactly when one of the flows in its manifest
//! is on hold.

use std::collections::HashSet;

use serde::Serialize;

use crate::archive::{read_manifest, ArchiveError, ArchiveStore};

/// One object whose legal hold differs from the recorded holds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HoldDrift {
    pub object_uri: String,
    /// What the recorded holds call for.
    pub expected: bool,
    /// What S3 reports.
    pub actual: bool,
    /// The held flows in the object (`tenant/flow_id`).
    pub held_flows: Vec<String>,
    /// Set to `expected` by `--repair`.
    pub repaired: bool,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct HoldCheck {
    /// Where the holds came from: `state store` or `index` (when an archiver holds
    /// the state store, the index's replay of `flow.hold` records).
    pub holds_from: String,
    pub holds: u64,
    pub objects: u64,
    pub drift: Vec<HoldDrift>,
}

impl HoldCheck {
    /// Clean, or every difference repaired.
    pub fn ok(&self) -> bool {
        self.drift.iter().all(|d| d.repaired)
    }
}

impl std::fmt::Display for HoldCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "checked the legal hold of {} objects against {} holds (from the {}): {} differ",
            self.objects,
            self.holds,
            self.holds_from,
            self.drift.len()
        )?;
        let on = |b: bool| if b { "ON" } else { "OFF" };
        for d in &self.drift {
            write!(
                f,
                "  {}: S3 says {}, the holds call for {}",
                d.object_uri,
                on(d.actual),
                on(d.expected)
            )?;
            if !d.held_flows.is_empty() {
                write!(f, " ({})", d.held_flows.join(", "))?;
            }
            writeln!(f, "{}", if d.repaired { " -> repaired" } else { "" })?;
        }
        if !self.ok() {
            writeln!(f, "run `verify --holds --repair` to set them")?;
        }
        Ok(())
    }
}

/// Checks every object under the archive prefix (and repairs, with `repair`).
pub async fn check(
    objects: &ArchiveStore,
    holds: &HashSet<(String, String)>,
    repair: bool,
    on_object: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<HoldCheck, ArchiveError> {
    let Some(s3) = objects.object_lock_client() else {
        return Err(ArchiveError::Config(
            "verify --holds needs legal holds on the objects: set archive.object_lock to \"governance\" or \"compliance\" (docs/compliance.md)".into(),
        ));
    };
    let mut report = HoldCheck {
        holds: holds.len() as u64,
        ..Default::default()
    };
    let keys = objects.list_keys(Some(objects.prefix())).await?;
    let total = keys.len() as u64;
    for key in keys {
        let manifest = read_manifest(objects, &key).await?;
        let mut held_flows: Vec<String> = manifest
            .parts
            .iter()
            .filter(|p| holds.contains(&(p.tenant.to_string(), p.flow_id.to_string())))
            .map(|p| format!("{}/{}", p.tenant, p.flow_id))
            .collect();
        held_flows.dedup();
        let expected = !held_flows.is_empty();
        let actual = s3.retention(&key).await?.legal_hold;
        report.objects += 1;
        on_object(report.objects, total);
        if expected == actual {
            continue;
        }
        if repair {
            s3.set_legal_hold(&key, expected).await?;
        }
        report.drift.push(HoldDrift {
            object_uri: objects.uri(&key),
            expected,
            actual,
            held_flows,
            repaired: repair,
        });
    }
    Ok(report)
}
