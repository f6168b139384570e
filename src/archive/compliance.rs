//! S3 compliance controls that `object_store` does not expose, through the official
//! `aws-sdk-s3` (`docs/compliance.md`): Object Lock retention on each object, legal
//! holds on the objects themselves, and deletes that remove every version of a key.
//!
//! Plain puts, gets and listings stay on `object_store`; this client shares its
//! endpoint, region, addressing style and credential chain, so an S3 setup that
//! archives also locks.
//!
//! Guarantees: with `archive.object_lock` on, an object's retain-until date is set
//! before it is verified and recorded, so no flow's state is deleted while its object
//! can still be removed; a delete never asks S3 to bypass governance retention unless
//! an operator asked for it by name.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{error::CredentialsError, future, ProvideCredentials};
use aws_credential_types::Credentials;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::primitives::DateTime;
use aws_sdk_s3::types::{
    ObjectLockEnabled, ObjectLockLegalHold, ObjectLockLegalHoldStatus, ObjectLockMode,
    ObjectLockRetention, ObjectLockRetentionMode,
};
use object_store::aws::AwsCredentialProvider;

use crate::config::{ObjectLock, ARCHIVE_TIERS};

#[derive(Debug, thiserror::Error)]
pub enum ComplianceError {
    #[error("S3 {action} on {target}: {detail}")]
    Request {
        action: &'static str,
        target: String,
        detail: String,
    },
    #[error("bucket {bucket} does not have S3 Object Lock enabled, which archive.object_lock = \"{mode}\" needs. Enable it: `aws s3api put-bucket-versioning --bucket {bucket} --versioning-configuration Status=Enabled`, then `aws s3api put-object-lock-configuration --bucket {bucket} --object-lock-configuration ObjectLockEnabled=Enabled`; or set archive.object_lock = \"off\"")]
    LockDisabled { bucket: String, mode: &'static str },
}

fn request_error<E: std::error::Error + 'static>(
    action: &'static str,
    target: &str,
    e: aws_sdk_s3::error::SdkError<E>,
) -> ComplianceError {
    use std::fmt::Write;
    // The SDK's Display is only "service error"; the source chain says which one.
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let _ = write!(detail, ": {s}");
        source = s.source();
    }
    ComplianceError::Request {
        action,
        target: target.to_string(),
        detail,
    }
}

/// An object's Object Lock state, as S3 reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRetention {
    /// `GOVERNANCE` or `COMPLIANCE`; `None` when the object has no retention.
    pub mode: Option<String>,
    /// Milliseconds since the epoch.
    pub retain_until_ms: Option<i64>,
    pub legal_hold: bool,
}

/// S3's clock, not the pipeline's: retention expires in real time, whatever `--now`
/// a sweep or purge was given.
fn wall_clock_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl ObjectRetention {
    /// Whether S3 refuses to delete the object now (without a bypass).
    pub fn locked_now(&self) -> bool {
        let now = wall_clock_ms();
        self.legal_hold || self.retain_until_ms.is_some_and(|until| until > now)
    }
}

/// Where an object stands for reads: its storage class and, for an archive tier,
/// its restore.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObjectTier {
    pub storage_class: String,
    /// `None`: no restore requested (or none needed).
    pub restore: Option<Restore>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Restore {
    InProgress,
    /// Readable until `expiry` (S3's HTTP date), then back in the archive tier.
    Done {
        expiry: Option<String>,
    },
}

impl ObjectTier {
    /// Whether a GET fails until a restore finishes.
    pub fn needs_restore(&self) -> bool {
        ARCHIVE_TIERS.contains(&self.storage_class.as_str())
            && !matches!(self.restore, Some(Restore::Done { .. }))
    }
}

/// The SDK client for one bucket, and the configured lock mode.
#[derive(Debug, Clone)]
pub struct S3Compliance {
    client: aws_sdk_s3::Client,
    bucket: String,
    lock: ObjectLock,
}

/// Hands `object_store`'s credentials (environment, web identity, instance metadata,
/// whichever it resolved) to the SDK, so both clients sign as the same principal.
#[derive(Debug)]
struct SharedCredentials(AwsCredentialProvider);

impl ProvideCredentials for SharedCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let c = self
                .0
                .get_credential()
                .await
                .map_err(CredentialsError::provider_error)?;
            // Short enough that the SDK asks again well before any temporary
            // credential object_store refreshes could expire.
            let expiry = SystemTime::now() + Duration::from_secs(300);
            Ok(Credentials::new(
                c.key_id.clone(),
                c.secret_key.clone(),
                c.token.clone(),
                Some(expiry),
                "object_store",
            ))
        })
    }
}

/// How to reach the bucket: what `object_store` resolved from the configuration and
/// the environment.
pub struct Connection {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub virtual_hosted_style: bool,
    pub request_timeout: Duration,
    pub credentials: AwsCredentialProvider,
}

impl S3Compliance {
    pub fn new(c: Connection, lock: ObjectLock) -> S3Compliance {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(c.request_timeout)
            .build();
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(c.region))
            .force_path_style(!c.virtual_hosted_style)
            .credentials_provider(SharedCredentials(c.credentials))
            .timeout_config(timeouts)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(4))
            .http_client(http);
        if let Some(endpoint) = c.endpoint {
            config = config.endpoint_url(endpoint);
        }
        S3Compliance {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            bucket: c.bucket,
            lock,
        }
    }

    pub fn lock(&self) -> ObjectLock {
        self.lock
    }

    /// Fails with the fix when Object Lock is configured but the bucket lacks it.
    pub async fn check_bucket(&self) -> Result<(), ComplianceError> {
        if self.lock == ObjectLock::Off {
            return Ok(());
        }
        let disabled = || ComplianceError::LockDisabled {
            bucket: self.bucket.clone(),
            mode: self.lock.as_str(),
        };
        let reply = self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await;
        match reply {
            Ok(r) => {
                let enabled = r
                    .object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled())
                    == Some(&ObjectLockEnabled::Enabled);
                if enabled {
                    Ok(())
                } else {
                    Err(disabled())
                }
            }
            Err(e)
                if e.as_service_error().and_then(|s| s.meta().code())
                    == Some("ObjectLockConfigurationNotFoundError") =>
            {
                Err(disabled())
            }
            Err(e) => Err(request_error("GetObjectLockConfiguration", &self.bucket, e)),
        }
    }

    fn retention_mode(&self) -> Option<ObjectLockRetentionMode> {
        match self.lock {
            ObjectLock::Off => None,
            ObjectLock::Governance => Some(ObjectLockRetentionMode::Governance),
            ObjectLock::Compliance => Some(ObjectLockRetentionMode::Compliance),
        }
    }

    /// Retains the current version of `key` until `until_ms` in the configured mode
    /// (nothing when the lock is off). Repeating it with the same date is harmless,
    /// which is what a resumed archival does.
    pub async fn retain(&self, key: &str, until_ms: i64) -> Result<(), ComplianceError> {
        let Some(mode) = self.retention_mode() else {
            return Ok(());
        };
        if until_ms <= wall_clock_ms() {
            // Already purgeable (a sweep of long-past history): S3 refuses a
            // retain-until date in the past, and there is nothing left to retain.
            return Ok(());
        }
        let retention = ObjectLockRetention::builder()
            .mode(mode)
            .retain_until_date(DateTime::from_millis(until_ms))
            .build();
        self.client
            .put_object_retention()
            .bucket(&self.bucket)
            .key(key)
            .retention(retention)
            .send()
            .await
            .map_err(|e| request_error("PutObjectRetention", key, e))?;
        Ok(())
    }

    async fn head(
        &self,
        key: &str,
    ) -> Result<aws_sdk_s3::operation::head_object::HeadObjectOutput, ComplianceError> {
        self.client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| request_error("HeadObject", key, e))
    }

    /// The retention and legal hold of the current version of `key`.
    pub async fn retention(&self, key: &str) -> Result<ObjectRetention, ComplianceError> {
        let head = self.head(key).await?;
        Ok(ObjectRetention {
            mode: head.object_lock_mode().map(|m| match m {
                ObjectLockMode::Compliance => "COMPLIANCE".to_string(),
                ObjectLockMode::Governance => "GOVERNANCE".to_string(),
                other => other.as_str().to_string(),
            }),
            retain_until_ms: head
                .object_lock_retain_until_date()
                .and_then(|d| d.to_millis().ok()),
            legal_hold: head.object_lock_legal_hold_status()
                == Some(&ObjectLockLegalHoldStatus::On),
        })
    }

    /// The storage class of `key` and its restore, from `HeadObject`.
    pub async fn tier(&self, key: &str) -> Result<ObjectTier, ComplianceError> {
        let head = self.head(key).await?;
        // `x-amz-restore: ongoing-request="true"`, or `"false", expiry-date="…"`.
        let restore = head.restore().map(|r| {
            if r.contains("ongoing-request=\"true\"") {
                Restore::InProgress
            } else {
                let expiry = r
                    .split_once("expiry-date=\"")
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(date, _)| date.to_string());
                Restore::Done { expiry }
            }
        });
        Ok(ObjectTier {
            storage_class: head
                .storage_class()
                .map_or("STANDARD", |c| c.as_str())
                .to_string(),
            restore,
        })
    }

    /// Asks S3 to restore `key` from its archive tier for `days` days, at `tier`
    /// (`Standard`, `Bulk` or `Expedited`). Asking again while one runs is harmless.
    pub async fn restore(&self, key: &str, days: i32, tier: &str) -> Result<(), ComplianceError> {
        use aws_sdk_s3::types::{GlacierJobParameters, RestoreRequest, Tier};
        let request = RestoreRequest::builder()
            .days(days)
            .glacier_job_parameters(
                GlacierJobParameters::builder()
                    .tier(Tier::from(tier))
                    .build()
                    .map_err(|e| ComplianceError::Request {
                        action: "RestoreObject",
                        target: key.to_string(),
                        detail: e.to_string(),
                    })?,
            )
            .build();
        match self
            .client
            .restore_object()
            .bucket(&self.bucket)
            .key(key)
            .restore_request(request)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().and_then(|s| s.meta().code())
                    == Some("RestoreAlreadyInProgress") =>
            {
                Ok(())
            }
            Err(e) => Err(request_error("RestoreObject", key, e)),
        }
    }

    /// Replaces the bucket's rules whose ID starts with `owned` by `rules`, keeping
    /// every other rule; returns the IDs of the rules kept.
    pub async fn put_lifecycle(
        &self,
        rules: Vec<aws_sdk_s3::types::LifecycleRule>,
        owned: &str,
    ) -> Result<Vec<String>, ComplianceError> {
        let current = match self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(r) => r.rules().to_vec(),
            Err(e)
                if e.as_service_error().and_then(|s| s.meta().code())
                    == Some("NoSuchLifecycleConfiguration") =>
            {
                Vec::new()
            }
            Err(e) => {
                return Err(request_error(
                    "GetBucketLifecycleConfiguration",
                    &self.bucket,
                    e,
                ))
            }
        };
        let kept: Vec<_> = current
            .into_iter()
            .filter(|r| !r.id().is_some_and(|id| id.starts_with(owned)))
            .collect();
        let kept_ids = kept
            .iter()
            .map(|r| r.id().unwrap_or("(unnamed)").to_string())
            .collect();
        let all: Vec<_> = kept.into_iter().chain(rules).collect();
        let configuration = aws_sdk_s3::types::BucketLifecycleConfiguration::builder()
            .set_rules(Some(all))
            .build()
            .map_err(|e| ComplianceError::Request {
                action: "PutBucketLifecycleConfiguration",
                target: self.bucket.clone(),
                detail: e.to_string(),
            })?;
        self.client
            .put_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .lifecycle_configuration(configuration)
            .send()
            .await
            .map_err(|e| request_error("PutBucketLifecycleConfiguration", &self.bucket, e))?;
        Ok(kept_ids)
    }

    /// Turns the legal hold of the current version of `key` on or off.
    pub async fn set_legal_hold(&self, key: &str, on: bool) -> Result<(), ComplianceError> {
        let status = if on {
            ObjectLockLegalHoldStatus::On
        } else {
            ObjectLockLegalHoldStatus::Off
        };
        self.client
            .put_object_legal_hold()
            .bucket(&self.bucket)
            .key(key)
            .legal_hold(ObjectLockLegalHold::builder().status(status).build())
            .send()
            .await
            .map_err(|e| request_error("PutObjectLegalHold", key, e))?;
        Ok(())
    }

    /// Deletes every version of `key` and its delete markers. On a versioned bucket
    /// (every Object Lock bucket is one) a plain delete only hides the data behind a
    /// marker. `bypass_governance` is only ever set by an operator's explicit request.
    pub async fn delete_all_versions(
        &self,
        key: &str,
        bypass_governance: bool,
    ) -> Result<u64, ComplianceError> {
        let mut deleted = 0;
        // Versions come back in pages marked by (key, version id).
        let mut versions = Vec::new();
        let mut marker: Option<(String, Option<String>)> = None;
        loop {
            let mut request = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(key);
            if let Some((k, v)) = &marker {
                request = request.key_marker(k).set_version_id_marker(v.clone());
            }
            let page = request
                .send()
                .await
                .map_err(|e| request_error("ListObjectVersions", key, e))?;
            for v in page.versions() {
                if v.key() == Some(key) {
                    versions.push(v.version_id().map(str::to_string));
                }
            }
            for m in page.delete_markers() {
                if m.key() == Some(key) {
                    versions.push(m.version_id().map(str::to_string));
                }
            }
            match (page.is_truncated(), page.next_key_marker()) {
                (Some(true), Some(next)) => {
                    marker = Some((
                        next.to_string(),
                        page.next_version_id_marker().map(str::to_string),
                    ))
                }
                _ => break,
            }
        }
        for version in versions {
            let mut delete = self.client.delete_object().bucket(&self.bucket).key(key);
            if let Some(v) = version {
                delete = delete.version_id(v);
            }
            if bypass_governance {
                delete = delete.bypass_governance_retention(true);
            }
            delete
                .send()
                .await
                .map_err(|e| request_error("DeleteObject", key, e))?;
            deleted += 1;
        }
        Ok(deleted)
    }
}
