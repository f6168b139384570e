//! The object store holding archive objects: a local directory or S3, both through
//! `object_store`.
//!
//! Uploads send the object's SHA-256 (`x-amz-checksum-sha256` on S3, which rejects a
//! body that does not match) and keep it as `x-amz-meta-sha256`. A successful PUT is
//! not taken as proof: [`ArchiveStore::verify`] reads the object back and re-hashes it.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, AttributeValue, Attributes, ClientConfigKey, GetResultPayload, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::compliance::{Connection, S3Compliance};
use super::{hex_sha256, ArchiveError};
use crate::config::{ArchiveConfig, ObjectLock};

const SHA256_METADATA: &str = "sha256";

/// Feeds `range` of `file` to `hash`, 256 KiB at a time.
fn hash_file_range(
    mut hash: Sha256,
    mut file: std::fs::File,
    range: Range<u64>,
) -> std::io::Result<Sha256> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(range.start))?;
    let mut limited = file.take(range.end.saturating_sub(range.start));
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        match limited.read(&mut buffer) {
            Ok(0) => return Ok(hash),
            Ok(n) => hash.update(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// An object store plus the facts about it the archive needs.
#[derive(Debug, Clone)]
pub struct ArchiveStore {
    inner: Arc<dyn ObjectStore>,
    /// `s3://bucket` or `file:///abs/dir`, the base of object URIs.
    base_uri: String,
    prefix: String,
    /// Local stores cannot keep user metadata.
    keeps_metadata: bool,
    multipart_threshold: u64,
    /// S3 only: the SDK client for what `object_store` cannot do.
    compliance: Option<S3Compliance>,
    storage_class: Option<String>,
}

impl ArchiveStore {
    pub fn from_config(cfg: &ArchiveConfig) -> Result<ArchiveStore, ArchiveError> {
        let mut compliance = None;
        let (inner, base_uri, keeps_metadata): (Arc<dyn ObjectStore>, String, bool) = match &cfg
            .bucket
        {
            Some(bucket) => {
                crate::tls::install_crypto_provider();
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
                    .with_virtual_hosted_style_request(cfg.virtual_hosted_style)
                    .with_config(
                        AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                        format!("{}ms", cfg.request_timeout.as_millis()),
                    )
                    // A few quick retries inside a request, then the error: the
                    // archiver retries the segment from its durable stage with its own
                    // backoff and counts and logs each failure, so an outage shows in
                    // the metrics and logs instead of inside minutes of one request.
                    .with_retry(RetryConfig {
                        max_retries: 3,
                        retry_timeout: Duration::from_secs(15),
                        ..RetryConfig::default()
                    });
                if let Some(endpoint) = &cfg.endpoint {
                    b = b
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(region) = &cfg.region {
                    b = b.with_region(region);
                } else if b.get_config_value(&AmazonS3ConfigKey::Region).is_none() {
                    b = b.with_region("us-east-1");
                }
                let endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
                let region = b
                    .get_config_value(&AmazonS3ConfigKey::Region)
                    .unwrap_or_else(|| "us-east-1".into());
                let s3 = b.build().map_err(|e| ArchiveError::Config(e.to_string()))?;
                let connection = Connection {
                    bucket: bucket.clone(),
                    endpoint,
                    region,
                    virtual_hosted_style: cfg.virtual_hosted_style,
                    request_timeout: cfg.request_timeout,
                    credentials: s3.credentials().clone(),
                };
                compliance = Some(S3Compliance::new(connection, cfg.object_lock));
                (Arc::new(s3), format!("s3://{bucket}"), true)
            }
            None => {
                std::fs::create_dir_all(&cfg.dir).map_err(|source| ArchiveError::Io {
                    path: cfg.dir.display().to_string(),
                    source,
                })?;
                // A put must be as durable as an S3 200 before the live state goes:
                // without fsync the file and its directory entry sit in the page cache,
                // and a power loss after the state deletion would lose the history.
                let local = LocalFileSystem::new_with_prefix(&cfg.dir)
                    .map_err(|e| ArchiveError::Config(e.to_string()))?
                    .with_fsync(true);
                let abs = std::fs::canonicalize(&cfg.dir).map_err(|source| ArchiveError::Io {
                    path: cfg.dir.display().to_string(),
                    source,
                })?;
                (Arc::new(local), format!("file://{}", abs.display()), false)
            }
        };
        Ok(ArchiveStore {
            inner,
            base_uri,
            prefix: cfg.prefix.trim_matches('/').to_string(),
            keeps_metadata,
            multipart_threshold: cfg.multipart_threshold_bytes,
            compliance,
            storage_class: cfg.storage_class.clone(),
        })
    }

    /// The S3 SDK client, when the store is S3 (whatever the lock mode).
    pub fn compliance(&self) -> Option<&S3Compliance> {
        self.compliance.as_ref()
    }

    /// The S3 compliance client, when objects are uploaded under Object Lock: what
    /// retention, legal holds and versioned deletes go through.
    pub fn object_lock_client(&self) -> Option<&S3Compliance> {
        self.compliance
            .as_ref()
            .filter(|c| c.lock() != ObjectLock::Off)
    }

    /// The S3 bucket, when the store is S3 (spans name it).
    pub fn bucket(&self) -> Option<&str> {
        self.base_uri.strip_prefix("s3://")
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The URI of an object key, as published in `flow.archived`.
    pub fn uri(&self, key: &str) -> String {
        format!("{}/{}", self.base_uri, key)
    }

    /// The key inside this store of a URI (or of a bare key).
    pub fn key_of<'a>(&self, uri: &'a str) -> &'a str {
        uri.strip_prefix(&self.base_uri)
            .map(|k| k.trim_start_matches('/'))
            .unwrap_or(uri)
    }

    fn err(&self, action: &'static str, key: &str, e: object_store::Error) -> ArchiveError {
        let text = e.to_string();
        if [
            "403 Forbidden",
            "SignatureDoesNotMatch",
            "InvalidAccessKeyId",
            "AccessDenied",
        ]
        .iter()
        .any(|s| text.contains(s))
        {
            return ArchiveError::Config(format!(
                "{} refused the credentials for {action} {key} (check AWS_ACCESS_KEY_ID, \
                 AWS_SECRET_ACCESS_KEY and the bucket policy): {text}",
                self.base_uri
            ));
        }
        ArchiveError::Store {
            store: self.base_uri.clone(),
            action,
            key: key.to_string(),
            source: Box::new(e),
        }
    }

    /// A cheap authenticated call, so bad credentials or a missing bucket fail before
    /// any flow is sealed.
    pub async fn preflight(&self) -> Result<(), ArchiveError> {
        let prefix = ObjectPath::from(self.prefix.as_str());
        self.inner
            .list_with_delimiter(Some(&prefix))
            .await
            .map(drop)
            .map_err(|e| self.err("list", &self.prefix, e))?;
        if let Some(c) = &self.compliance {
            c.check_bucket().await?;
        }
        Ok(())
    }

    /// Uploads a local file under `key`, sending its SHA-256; multipart above the
    /// configured threshold so memory stays bounded. With `archive.object_lock` on,
    /// the object is then retained until `retain_until_ms` (the latest purge date of
    /// what it holds) before this returns: it is never verified, recorded or
    /// published while it can still be deleted.
    ///
    /// `storage_class` (a retention override's) replaces `archive.storage_class`.
    pub async fn upload(
        &self,
        key: &str,
        file: &Path,
        sha256: &str,
        retain_until_ms: i64,
        storage_class: Option<&str>,
    ) -> Result<(), ArchiveError> {
        let class = storage_class.or(self.storage_class.as_deref());
        self.put_file(key, file, sha256, class).await?;
        if let Some(c) = &self.compliance {
            c.retain(key, retain_until_ms).await?;
        }
        Ok(())
    }

    async fn put_file(
        &self,
        key: &str,
        file: &Path,
        sha256: &str,
        storage_class: Option<&str>,
    ) -> Result<(), ArchiveError> {
        let location = ObjectPath::from(key);
        let io_err = |source| ArchiveError::Io {
            path: file.display().to_string(),
            source,
        };
        let mut attributes = Attributes::new();
        if self.keeps_metadata {
            attributes.insert(
                Attribute::Metadata(SHA256_METADATA.into()),
                AttributeValue::from(sha256.to_string()),
            );
            attributes.insert(
                Attribute::ContentType,
                AttributeValue::from(if key.ends_with(".gz") {
                    "application/gzip"
                } else {
                    "application/zstd"
                }),
            );
        }
        if let Some(class) = storage_class.filter(|_| self.keeps_metadata) {
            attributes.insert(
                Attribute::StorageClass,
                AttributeValue::from(class.to_string()),
            );
        }
        let size = tokio::fs::metadata(file).await.map_err(io_err)?.len();
        if size <= self.multipart_threshold {
            let body = tokio::fs::read(file).await.map_err(io_err)?;
            // Overwrite: a re-run of the same intent writes the same bytes under the same
            // key, which is the idempotent path (a create-only put can fail spuriously on
            // a retried request that had in fact succeeded).
            let opts = PutOptions {
                attributes,
                ..Default::default()
            };
            self.inner
                .put_opts(&location, PutPayload::from(body), opts)
                .await
                .map_err(|e| self.err("put", key, e))?;
            return Ok(());
        }
        let opts = PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let mut upload = self
            .inner
            .put_multipart_opts(&location, opts)
            .await
            .map_err(|e| self.err("start multipart upload", key, e))?;
        let mut f = tokio::fs::File::open(file).await.map_err(io_err)?;
        let chunk = self.multipart_threshold as usize;
        loop {
            let mut buf = Vec::with_capacity(chunk);
            let n = (&mut f)
                .take(chunk as u64)
                .read_to_end(&mut buf)
                .await
                .map_err(io_err)?;
            if n == 0 {
                break;
            }
            if let Err(e) = upload.put_part(PutPayload::from(buf)).await {
                let _ = upload.abort().await;
                return Err(self.err("upload part", key, e));
            }
        }
        upload
            .complete()
            .await
            .map_err(|e| self.err("complete multipart upload", key, e))?;
        Ok(())
    }

    /// Reads the object back and checks its size and SHA-256.
    pub async fn verify(&self, key: &str, sha256: &str, size: u64) -> Result<(), ArchiveError> {
        let (actual, metadata) = self.object_sha256(key).await?;
        let corrupted = |what: &str, expected: String, actual: String| ArchiveError::Corrupted {
            key: key.to_string(),
            what: what.to_string(),
            expected,
            actual,
        };
        if actual != sha256 {
            return Err(corrupted(
                "object sha256 on read-back",
                sha256.into(),
                actual,
            ));
        }
        if let Some(meta) = metadata {
            if meta != sha256 {
                return Err(corrupted("x-amz-meta-sha256", sha256.into(), meta));
            }
        }
        let stored = self.size(key).await?;
        if stored != size {
            return Err(corrupted(
                "object size",
                size.to_string(),
                stored.to_string(),
            ));
        }
        Ok(())
    }

    /// Streams the whole object: its actual SHA-256, and the one kept in its metadata.
    pub async fn object_sha256(&self, key: &str) -> Result<(String, Option<String>), ArchiveError> {
        let location = ObjectPath::from(key);
        let result = self
            .inner
            .get(&location)
            .await
            .map_err(|e| self.err("get", key, e))?;
        let metadata = result
            .attributes
            .get(&Attribute::Metadata(SHA256_METADATA.into()))
            .map(|v| v.to_string());
        let mut hash = Sha256::new();
        match result.payload {
            // object_store streams a local file in 8 KiB chunks, each a trip through
            // the blocking pool; one trip with a larger buffer reads it many times
            // faster, with the same bounded memory.
            GetResultPayload::File(file, path) => {
                let range = result.range;
                hash = tokio::task::spawn_blocking(move || hash_file_range(hash, file, range))
                    .await
                    .map_err(|e| ArchiveError::Io {
                        path: path.display().to_string(),
                        source: std::io::Error::other(e),
                    })?
                    .map_err(|source| ArchiveError::Io {
                        path: path.display().to_string(),
                        source,
                    })?;
            }
            GetResultPayload::Stream(mut stream) => {
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| self.err("read", key, e))?;
                    hash.update(&chunk);
                }
            }
        }
        Ok((hex_sha256(hash.finalize()), metadata))
    }

    pub async fn size(&self, key: &str) -> Result<u64, ArchiveError> {
        let meta = self
            .inner
            .head(&ObjectPath::from(key))
            .await
            .map_err(|e| self.err("head", key, e))?;
        Ok(meta.size)
    }

    /// Whether an object exists under `key`.
    pub async fn exists(&self, key: &str) -> Result<bool, ArchiveError> {
        match self.inner.head(&ObjectPath::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err("head", key, e)),
        }
    }

    /// A byte range of an object. An object in an archive tier (`GLACIER`,
    /// `DEEP_ARCHIVE`) and not restored is [`ArchiveError::RestoreRequired`].
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ArchiveError> {
        match self.inner.get_range(&ObjectPath::from(key), range).await {
            Ok(bytes) => Ok(bytes),
            Err(e) => {
                if let Some(s3) = self
                    .compliance
                    .as_ref()
                    .filter(|_| e.to_string().contains("InvalidObjectState"))
                {
                    let tier = s3.tier(key).await?;
                    if tier.needs_restore() {
                        return Err(ArchiveError::RestoreRequired {
                            key: key.to_string(),
                            tier,
                        });
                    }
                }
                Err(self.err("get range", key, e))
            }
        }
    }

    /// Every object key under the configured prefix (or a narrower one).
    pub async fn list_keys(&self, under: Option<&str>) -> Result<Vec<String>, ArchiveError> {
        let prefix = match under {
            Some(p) => ObjectPath::from(p),
            None => ObjectPath::from(self.prefix.as_str()),
        };
        let mut keys = Vec::new();
        let mut listing = self.inner.list(Some(&prefix));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.err("list", prefix.as_ref(), e))?;
            let key = meta.location.to_string();
            if key.ends_with(".jsonl.zst") || key.ends_with(".jsonl.gz") {
                keys.push(key);
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// The "directories" directly under `under` (common prefixes of a delimited
    /// listing), as full key prefixes, sorted.
    pub async fn list_dirs(&self, under: &str) -> Result<Vec<String>, ArchiveError> {
        let prefix = ObjectPath::from(under);
        let listing = self
            .inner
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| self.err("list", under, e))?;
        let mut dirs: Vec<String> = listing
            .common_prefixes
            .iter()
            .map(|p| p.to_string())
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    /// Deletes an object; a missing one is not an error (purges are repeated after a
    /// crash).
    ///
    /// With Object Lock on, every version of the key goes (a plain delete on a
    /// versioned bucket only hides the data). S3 refuses while a retention date or
    /// legal hold stands, unless `bypass_governance` (an operator's explicit request)
    /// lifts governance retention.
    pub async fn delete(&self, key: &str, bypass_governance: bool) -> Result<(), ArchiveError> {
        if let Some(c) = self.object_lock_client() {
            c.delete_all_versions(key, bypass_governance).await?;
            return Ok(());
        }
        match self.inner.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_range_hashes_like_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object");
        // Larger than the read buffer, and not a multiple of it.
        let bytes: Vec<u8> = (0..700_001u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        for range in [0..bytes.len() as u64, 3..600_000, 10..10, 699_999..700_001] {
            let file = std::fs::File::open(&path).unwrap();
            let hashed = hash_file_range(Sha256::new(), file, range.clone()).unwrap();
            let slice = &bytes[range.start as usize..range.end as usize];
            assert_eq!(
                hex_sha256(hashed.finalize()),
                hex_sha256(Sha256::digest(slice)),
                "{range:?}"
            );
        }
    }

    /// The archiver's read-back check over a directory store: the right checksum and
    /// size pass; a changed byte or a wrong size is named.
    #[tokio::test]
    async fn verify_reads_a_local_object_back_and_names_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ArchiveConfig {
            dir: dir.path().join("archive"),
            ..crate::config::Config::default().archive
        };
        let store = ArchiveStore::from_config(&cfg).unwrap();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 13) as u8).collect();
        let key = "t/purge=2026-01-01/s.jsonl.zst";
        store
            .inner
            .put(&ObjectPath::from(key), PutPayload::from(body.clone()))
            .await
            .unwrap();
        let sha = hex_sha256(Sha256::digest(&body));
        store.verify(key, &sha, body.len() as u64).await.unwrap();

        let err = store.verify(key, &"0".repeat(64), body.len() as u64).await;
        assert!(
            matches!(err, Err(ArchiveError::Corrupted { .. })),
            "{err:?}"
        );
        let err = store.verify(key, &sha, body.len() as u64 + 1).await;
        assert!(
            err.as_ref()
                .is_err_and(|e| e.to_string().contains("object size")),
            "{err:?}"
        );
    }
}
