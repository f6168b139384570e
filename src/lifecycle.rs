//! `flow-archiver lifecycle plan|apply`: the S3 bucket lifecycle configuration that
//! the archive's policy calls for (`docs/compliance.md`, "Lifecycle").
//!
//! Rules, all under the archive prefix and named `flow-archiver: …`:
//! - the `[[archive.transition]]`s (e.g. STANDARD_IA after 30 days, GLACIER after 180);
//! - multipart uploads abandoned by a crash are aborted after 7 days;
//! - with Object Lock (a versioned bucket), versions that a re-upload of the same
//!   key left behind expire after 7 days; S3 keeps any that are still retained.
//!
//! Nothing expires current objects: purge does, after its checks. `apply` keeps the
//! bucket's other rules, and the plan warns when the policy would purge objects
//! before, or soon after, they move to a tier that charges a minimum duration.

use serde::Serialize;

use crate::archive::{ArchiveError, ArchiveStore};
use crate::config::Config;

/// What S3 charges at least, in days, once an object is in a class.
fn minimum_days(class: &str) -> u64 {
    match class {
        "STANDARD_IA" | "ONEZONE_IA" => 30,
        "GLACIER_IR" | "GLACIER" => 90,
        "DEEP_ARCHIVE" => 180,
        _ => 0,
    }
}

/// Prefix of the IDs of the rules flow-archiver owns.
pub const RULE_PREFIX: &str = "flow-archiver: ";

/// One rule, in the shape of S3's API (and `aws s3api put-bucket-lifecycle-configuration`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Rule {
    #[serde(rename = "ID")]
    pub id: String,
    pub status: &'static str,
    pub filter: Filter,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub transitions: Vec<RuleTransition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_incomplete_multipart_upload: Option<AbortAfter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noncurrent_version_expiration: Option<NoncurrentAfter>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Filter {
    pub prefix: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RuleTransition {
    pub days: i32,
    pub storage_class: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct AbortAfter {
    pub days_after_initiation: i32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct NoncurrentAfter {
    pub noncurrent_days: i32,
}

/// The plan: the rules, and what the policy makes of them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LifecyclePlan {
    pub bucket: String,
    pub rules: Vec<Rule>,
    pub warnings: Vec<String>,
    /// After `apply`: the bucket's own rules that were kept.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept_rules: Vec<String>,
    pub applied: bool,
}

impl std::fmt::Display for LifecyclePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.applied { "applied" } else { "plan" };
        writeln!(f, "lifecycle of bucket {} ({verb}):", self.bucket)?;
        let rules = serde_json::json!({ "Rules": self.rules });
        writeln!(
            f,
            "{}",
            serde_json::to_string_pretty(&rules).map_err(|_| std::fmt::Error)?
        )?;
        for kept in &self.kept_rules {
            writeln!(f, "kept the bucket's own rule {kept:?}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        if !self.applied {
            writeln!(f, "apply with `flow-archiver lifecycle apply`")?;
        }
        Ok(())
    }
}

/// Derives the rules from the configuration.
pub fn plan(config: &Config) -> Result<LifecyclePlan, ArchiveError> {
    let Some(bucket) = config.archive.bucket.clone() else {
        return Err(ArchiveError::Config(
            "lifecycle rules are for S3: set archive.bucket".into(),
        ));
    };
    let prefix = format!("{}/", config.archive.prefix.trim_matches('/'));
    let filter = Filter {
        prefix: prefix.clone(),
    };
    let rule = |name: &str| Rule {
        id: format!("{RULE_PREFIX}{name}"),
        status: "Enabled",
        filter: filter.clone(),
        transitions: Vec::new(),
        abort_incomplete_multipart_upload: None,
        noncurrent_version_expiration: None,
    };
    let mut rules = Vec::new();
    let days = |t: &crate::config::Transition| (t.after.as_secs() / 86_400) as i32;
    if !config.archive.transitions.is_empty() {
        rules.push(Rule {
            transitions: config
                .archive
                .transitions
                .iter()
                .map(|t| RuleTransition {
                    days: days(t),
                    storage_class: t.storage_class.clone(),
                })
                .collect(),
            ..rule("transitions")
        });
    }
    rules.push(Rule {
        abort_incomplete_multipart_upload: Some(AbortAfter {
            days_after_initiation: 7,
        }),
        ..rule("abandoned uploads")
    });
    if config.archive.object_lock != crate::config::ObjectLock::Off {
        rules.push(Rule {
            noncurrent_version_expiration: Some(NoncurrentAfter { noncurrent_days: 7 }),
            ..rule("replaced versions")
        });
    }

    // Archive lifetimes the policy gives: the default and each override's.
    let retention = &config.retention;
    let mut lifetimes = vec![("retention.archive_for".to_string(), retention.archive_for)];
    for (i, o) in retention.overrides.iter().enumerate() {
        if let Some(d) = o.archive_for {
            lifetimes.push((format!("retention.override #{}", i + 1), d));
        }
    }
    let mut warnings = Vec::new();
    for t in &config.archive.transitions {
        let moved = days(t) as u64;
        let charged = moved + minimum_days(&t.storage_class);
        for (what, lifetime) in &lifetimes {
            let kept = lifetime.as_secs() / 86_400;
            if kept <= moved {
                warnings.push(format!(
                    "{what} keeps objects {kept} days: they are purged before they move to {} at {moved} days (the transition never applies to them)",
                    t.storage_class
                ));
            } else if kept < charged {
                warnings.push(format!(
                    "{what} keeps objects {kept} days: purged after {} days in {}, they are charged its {}-day minimum",
                    kept - moved,
                    t.storage_class,
                    minimum_days(&t.storage_class)
                ));
            }
        }
    }
    Ok(LifecyclePlan {
        bucket,
        rules,
        warnings,
        ..Default::default()
    })
}

/// Puts the plan's rules on the bucket, keeping the bucket's other rules.
pub async fn apply(config: &Config, objects: &ArchiveStore) -> Result<LifecyclePlan, ArchiveError> {
    let mut plan = plan(config)?;
    let Some(s3) = objects.compliance() else {
        return Err(ArchiveError::Config(
            "lifecycle rules are for S3: set archive.bucket".into(),
        ));
    };
    let rules = plan
        .rules
        .iter()
        .map(sdk_rule)
        .collect::<Result<Vec<_>, _>>()?;
    plan.kept_rules = s3.put_lifecycle(rules, RULE_PREFIX).await?;
    plan.applied = true;
    Ok(plan)
}

fn sdk_rule(rule: &Rule) -> Result<aws_sdk_s3::types::LifecycleRule, ArchiveError> {
    use aws_sdk_s3::types::{
        AbortIncompleteMultipartUpload, ExpirationStatus, LifecycleRule, LifecycleRuleFilter,
        NoncurrentVersionExpiration, Transition, TransitionStorageClass,
    };
    let invalid = |e: aws_sdk_s3::error::BuildError| ArchiveError::Config(e.to_string());
    LifecycleRule::builder()
        .id(&rule.id)
        .status(ExpirationStatus::Enabled)
        .filter(
            LifecycleRuleFilter::builder()
                .prefix(&rule.filter.prefix)
                .build(),
        )
        .set_transitions((!rule.transitions.is_empty()).then(|| {
            rule.transitions
                .iter()
                .map(|t| {
                    Transition::builder()
                        .days(t.days)
                        .storage_class(TransitionStorageClass::from(t.storage_class.as_str()))
                        .build()
                })
                .collect()
        }))
        .set_abort_incomplete_multipart_upload(rule.abort_incomplete_multipart_upload.as_ref().map(
            |a| {
                AbortIncompleteMultipartUpload::builder()
                    .days_after_initiation(a.days_after_initiation)
                    .build()
            },
        ))
        .set_noncurrent_version_expiration(rule.noncurrent_version_expiration.as_ref().map(|n| {
            NoncurrentVersionExpiration::builder()
                .noncurrent_days(n.noncurrent_days)
                .build()
        }))
        .build()
        .map_err(invalid)
}
