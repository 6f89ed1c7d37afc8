//! Model repositories on object storage: `--model-repository s3://bucket/prefix`
//! (or `gs://`, `az://`). The bucket is mirrored into a local cache folder
//! (mirror.rs), version by version, each checked against its listing before
//! it is moved into place; the rest of the server serves that folder as it
//! serves a repository on disk, so hot swap, poll mode and canaries work
//! unchanged. Credentials come from each cloud's standard environment
//! (object_store's builders), nothing of ours.

mod download;
pub mod mirror;

pub use mirror::{Mirror, SyncReport};

use anyhow::{Context, bail};
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where `--model-repository` points.
pub enum Location {
    /// A folder on this machine.
    Local(PathBuf),
    /// A prefix in a bucket.
    Remote(Remote),
}

/// A bucket (or container) and the prefix the repository sits under.
pub struct Remote {
    /// As the user wrote it, for logs and the cache folder's name.
    pub url: String,
    pub store: Arc<dyn ObjectStore>,
    pub prefix: ObjectPath,
}

impl Location {
    /// Reads a `--model-repository` value: a URL with a scheme this server
    /// reads objects from, or else a path.
    pub fn parse(value: &Path) -> anyhow::Result<Location> {
        let Some(text) = value.to_str() else { return Ok(Location::Local(value.to_path_buf())) };
        let Some((scheme, rest)) = text.split_once("://") else { return Ok(Location::Local(value.to_path_buf())) };
        if scheme == "file" {
            return Ok(Location::Local(PathBuf::from(rest)));
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("--model-repository {text}: the URL names no bucket");
        }
        // The stores' HTTPS client (reqwest's rustls) uses the process's
        // provider: ring, as the server's own TLS. Already set is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store: Arc<dyn ObjectStore> = match scheme {
            "s3" | "s3a" => Arc::new(s3(text)?),
            "gs" => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(text)
                    .with_retry(retry())
                    .build()
                    .with_context(|| format!("--model-repository {text}"))?,
            ),
            "az" | "azure" | "abfs" | "abfss" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(text)
                    .with_retry(retry())
                    .build()
                    .with_context(|| format!("--model-repository {text}"))?,
            ),
            other => bail!("--model-repository {text}: unknown scheme {other:?} (s3://, gs://, az:// or a path)"),
        };
        let prefix = ObjectPath::parse(prefix.trim_matches('/'))
            .with_context(|| format!("--model-repository {text}: the prefix {prefix:?}"))?;
        Ok(Location::Remote(Remote { url: text.to_string(), store, prefix }))
    }
}

/// A few quick retries per request, within seconds: a sync that fails is
/// tried again at the next poll anyway, and serving never waits on it.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(15),
        ..Default::default()
    }
}

/// An S3 store from the standard AWS environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_REGION`, web identity, instance metadata, …). `AWS_ENDPOINT_URL`
/// points at an S3-compatible store; an `http://` endpoint is taken as the
/// user's choice of plaintext.
fn s3(url: &str) -> anyhow::Result<object_store::aws::AmazonS3> {
    let mut builder = object_store::aws::AmazonS3Builder::from_env().with_url(url).with_retry(retry());
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3").or_else(|_| std::env::var("AWS_ENDPOINT_URL"));
    if let Ok(endpoint) = endpoint
        && endpoint.starts_with("http://")
    {
        builder = builder.with_allow_http(true);
    }
    if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        builder = builder.with_region("us-east-1");
    }
    builder.build().with_context(|| format!("--model-repository {url}"))
}

/// The cache folder of one location: its own subfolder of
/// `--repository-cache-dir`, named from the URL, so two buckets never share
/// files.
pub fn cache_folder(cache_dir: &Path, url: &str) -> PathBuf {
    let name: String =
        url.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    cache_dir.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_local_and_urls_name_a_bucket_and_prefix() {
        assert!(
            matches!(Location::parse(Path::new("models")).unwrap(), Location::Local(p) if p == Path::new("models"))
        );
        assert!(
            matches!(Location::parse(Path::new("file:///srv/models")).unwrap(), Location::Local(p) if p == Path::new("/srv/models"))
        );
        match Location::parse(Path::new("s3://bucket/team/models/")).unwrap() {
            Location::Remote(remote) => assert_eq!(remote.prefix.as_ref(), "team/models"),
            Location::Local(_) => panic!("an s3 URL is remote"),
        }
        let err = Location::parse(Path::new("ftp://host/models")).err().unwrap().to_string();
        assert!(err.contains("unknown scheme \"ftp\""), "{err}");
        assert!(Location::parse(Path::new("s3:///models")).is_err());
    }

    #[test]
    fn each_url_has_its_own_cache_folder() {
        let a = cache_folder(Path::new("/c"), "s3://a/models");
        let b = cache_folder(Path::new("/c"), "s3://b/models");
        assert_ne!(a, b);
        assert_eq!(a, Path::new("/c/s3___a_models"));
    }
}
