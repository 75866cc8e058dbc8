//! Object stores by URL (`object_store`): local paths and `file://` URLs on the local
//! filesystem, `s3://bucket/key` on S3 or any S3-compatible server (MinIO, ...). S3 settings
//! come from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT` for a non-AWS server, `AWS_ALLOW_HTTP=true` for plain HTTP, and any other
//! `AWS_*` key object_store knows, e.g. `AWS_SESSION_TOKEN`), never from files that get logged.
//! TLS is on by default (https endpoints, the system's root certificates); object_store's
//! errors and its store's `Debug` never print the secret key.

use object_store::{
    aws::AmazonS3Builder, local::LocalFileSystem, path::Path as ObjectPath, ObjectStore, ObjectStoreExt,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A location: a store and the object path inside it.
pub struct ObjectLocation {
    pub store: Arc<dyn ObjectStore>,
    pub path: ObjectPath,
}

/// True for `scheme://...` locations, false for plain paths.
pub fn is_url(location: &str) -> bool {
    location.contains("://")
}

/// Resolves `s3://bucket/key`, `file:///abs/path` or a plain path.
pub fn locate(location: &str) -> anyhow::Result<ObjectLocation> {
    if let Some(rest) = location.strip_prefix("s3://") {
        let (bucket, key) =
            rest.split_once('/').ok_or_else(|| anyhow::anyhow!("{location}: expected s3://bucket/key"))?;
        let store = s3_builder(bucket).build()?;
        return Ok(ObjectLocation { store: Arc::new(store), path: ObjectPath::parse(key)? });
    }
    let path = match location.strip_prefix("file://") {
        Some(p) => PathBuf::from(p),
        None if is_url(location) => anyhow::bail!("{location}: unsupported URL scheme (use a path, file:// or s3://)"),
        None => PathBuf::from(location),
    };
    let absolute = if path.is_absolute() { path } else { std::env::current_dir()?.join(path) };
    let store = LocalFileSystem::new();
    Ok(ObjectLocation { store: Arc::new(store), path: ObjectPath::from_absolute_path(&absolute)? })
}

/// An S3 store of `bucket` configured from the `AWS_*` environment variables.
///
/// Requests are retried for up to 4 minutes (backoff from 100 ms to 5 s) rather than
/// object_store's default 10 quick attempts, which give up within seconds when the server
/// refuses connections: a processor rides out an S3 restart instead of exiting (the chaos
/// test stops S3 for a while; `distillery chaos` for 20 s).
fn s3_builder(bucket: &str) -> AmazonS3Builder {
    let mut retry = object_store::RetryConfig::default();
    retry.backoff.init_backoff = std::time::Duration::from_millis(100);
    retry.backoff.max_backoff = std::time::Duration::from_secs(5);
    retry.max_retries = 60;
    retry.retry_timeout = std::time::Duration::from_secs(240);
    AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry)
}

/// Makes a location readable as a local file: plain paths as they are; URLs are downloaded
/// (streamed) into `scratch` first, so large datasets never sit in memory.
pub async fn local_copy(location: &str, scratch: &Path) -> anyhow::Result<PathBuf> {
    if !is_url(location) {
        return Ok(PathBuf::from(location));
    }
    if let Some(path) = location.strip_prefix("file://") {
        return Ok(PathBuf::from(path));
    }
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let ObjectLocation { store, path } = locate(location)?;
    let name = path.filename().unwrap_or("object");
    std::fs::create_dir_all(scratch)?;
    let target = scratch.join(format!("{}-{name}", distillery_schemas::stable_id(&[location])));
    let mut file = tokio::fs::File::create(&target).await?;
    let mut stream = store.get(&path).await?.into_stream();
    while let Some(chunk) = stream.next().await {
        file.write_all(&chunk?).await?;
    }
    file.flush().await?;
    Ok(target)
}

/// Writes `bytes` to a location (a whole object; no partial object is ever visible).
pub async fn put_bytes(location: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
    let ObjectLocation { store, path } = locate(location)?;
    store.put(&path, bytes.into()).await?;
    Ok(())
}

/// Reads a whole object.
pub async fn get_bytes(location: &str) -> anyhow::Result<Vec<u8>> {
    let ObjectLocation { store, path } = locate(location)?;
    Ok(store.get(&path).await?.bytes().await?.to_vec())
}

/// Whether [`put_new`] wrote the object or found it already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutNew {
    Created,
    AlreadyExisted,
}

/// Writes `bytes` only if nothing is at the location yet (a conditional put: S3's
/// If-None-Match, an exclusive create on a filesystem), so a restarted writer never
/// overwrites an object a reader may already use.
pub async fn put_new(location: &str, bytes: Vec<u8>) -> anyhow::Result<PutNew> {
    let ObjectLocation { store, path } = locate(location)?;
    match store.put_opts(&path, bytes.into(), object_store::PutMode::Create.into()).await {
        Ok(_) => Ok(PutNew::Created),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(PutNew::AlreadyExisted),
        Err(e) => Err(e.into()),
    }
}

/// Uploads a large object in parts of `part_bytes` (S3 multipart upload; parts of at least
/// 5 MiB except the last). The object appears only when every part is in.
pub async fn put_multipart(location: &str, bytes: Vec<u8>, part_bytes: usize) -> anyhow::Result<()> {
    let ObjectLocation { store, path } = locate(location)?;
    let mut upload = store.put_multipart(&path).await?;
    for part in bytes.chunks(part_bytes.max(1)) {
        if let Err(e) = upload.put_part(part.to_vec().into()).await {
            let _ = upload.abort().await;
            return Err(e.into());
        }
    }
    upload.complete().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::aws::AmazonS3ConfigKey;
    use object_store::ClientConfigKey;

    #[test]
    fn s3_endpoint_tls_and_credentials_come_from_the_environment_and_are_never_printed() {
        let secret = "planted-S3-SECRET-456";
        for (key, value) in [
            ("AWS_ACCESS_KEY_ID", "distillery-key-id"),
            ("AWS_SECRET_ACCESS_KEY", secret),
            ("AWS_SESSION_TOKEN", "planted-S3-TOKEN-789"),
            ("AWS_ENDPOINT", "https://minio.internal:9000"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ALLOW_HTTP", "false"),
            ("AWS_ALLOW_INVALID_CERTIFICATES", "false"),
        ] {
            std::env::set_var(key, value);
        }
        let builder = s3_builder("shards");
        let value = |key| builder.get_config_value(&key);
        assert_eq!(value(AmazonS3ConfigKey::Bucket).as_deref(), Some("shards"));
        assert_eq!(value(AmazonS3ConfigKey::AccessKeyId).as_deref(), Some("distillery-key-id"));
        assert_eq!(value(AmazonS3ConfigKey::SecretAccessKey).as_deref(), Some(secret));
        assert_eq!(value(AmazonS3ConfigKey::Token).as_deref(), Some("planted-S3-TOKEN-789"));
        assert_eq!(value(AmazonS3ConfigKey::Endpoint).as_deref(), Some("https://minio.internal:9000"));
        assert_eq!(value(AmazonS3ConfigKey::Region).as_deref(), Some("eu-west-1"));
        assert_eq!(value(AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp)).as_deref(), Some("false"));
        assert_eq!(
            value(AmazonS3ConfigKey::Client(ClientConfigKey::AllowInvalidCertificates)).as_deref(),
            Some("false")
        );
        let location = locate("s3://shards/run/shard-0.safetensors").unwrap();
        assert_eq!(location.path.as_ref(), "run/shard-0.safetensors");
        let shown = format!("{} {:?}", location.store, location.store);
        assert!(!shown.contains("SECRET") && !shown.contains("TOKEN"), "{shown}");
        // Plain HTTP to an endpoint is refused unless allowed, and the error names no secret.
        std::env::set_var("AWS_ENDPOINT", "http://127.0.0.1:1");
        let err = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(get_bytes("s3://shards/run/missing"))
            .unwrap_err();
        let err = format!("{err:#} {err:?}");
        assert!(!err.contains("SECRET") && !err.contains("TOKEN"), "{err}");
    }
}
