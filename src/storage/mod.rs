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
/// `AWS_REGION`, web identity, instance metadata, …), and for what the
/// environment leaves unset, the profile (`AWS_PROFILE`, else `default`)
/// of the shared files `~/.aws/credentials` and `~/.aws/config`.
/// `AWS_ENDPOINT_URL` points at an S3-compatible store; an `http://`
/// endpoint is taken as the user's choice of plaintext.
fn s3(url: &str) -> anyhow::Result<object_store::aws::AmazonS3> {
    use object_store::aws::AmazonS3ConfigKey as Key;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut builder = object_store::aws::AmazonS3Builder::from_env().with_url(url).with_retry(retry());
    let shared = shared_profile(&env);
    let from_file = |key: &str| shared.get(key).cloned();
    let settings = [
        (Key::AccessKeyId, env("AWS_ACCESS_KEY_ID"), "aws_access_key_id"),
        (Key::SecretAccessKey, env("AWS_SECRET_ACCESS_KEY"), "aws_secret_access_key"),
        (Key::Token, env("AWS_SESSION_TOKEN"), "aws_session_token"),
        (Key::Region, env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")), "region"),
        (Key::Endpoint, env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL")), "endpoint_url"),
    ];
    let mut endpoint = None;
    for (key, from_env, name) in settings {
        let value = from_env.clone().or_else(|| from_file(name));
        if from_env.is_none()
            && let Some(value) = &value
        {
            builder = builder.with_config(key, value);
        }
        if name == "endpoint_url" {
            endpoint = value;
        } else if name == "region" && value.is_none() {
            builder = builder.with_region("us-east-1");
        }
    }
    if endpoint.is_some_and(|e| e.starts_with("http://")) {
        builder = builder.with_allow_http(true);
    }
    builder.build().with_context(|| format!("--model-repository {url}"))
}

/// The settings of the AWS profile in force (`AWS_PROFILE`, else
/// `default`) from the shared files: `AWS_SHARED_CREDENTIALS_FILE` (else
/// `~/.aws/credentials`, section `[name]`) over `AWS_CONFIG_FILE` (else
/// `~/.aws/config`, section `[profile name]`, or `[default]`). Missing files
/// are no settings.
fn shared_profile(env: &dyn Fn(&str) -> Option<String>) -> std::collections::BTreeMap<String, String> {
    let home = env("HOME").map(PathBuf::from);
    let file = |variable: &str, default: &str| {
        env(variable).map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(default)))
    };
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let config_section = if profile == "default" { profile.clone() } else { format!("profile {profile}") };
    let mut settings = std::collections::BTreeMap::new();
    let sources = [
        (file("AWS_CONFIG_FILE", ".aws/config"), config_section),
        (file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"), profile),
    ];
    for (path, section) in sources {
        if let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) {
            settings.extend(ini_section(&text, &section));
        }
    }
    settings
}

/// The `key = value` lines of one `[section]` of an INI text.
fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut found = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
        } else if inside && let Some((key, value)) = line.split_once('=') {
            found.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    found
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
    fn the_shared_aws_files_give_the_profile_s_settings() {
        let folder = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(folder.path().join(".aws")).unwrap();
        std::fs::write(
            folder.path().join(".aws/credentials"),
            "[default]\naws_access_key_id = AKDEFAULT\n\n[ci]\n# a comment\naws_access_key_id=AKCI\naws_secret_access_key = s3cret\n",
        )
        .unwrap();
        std::fs::write(
            folder.path().join(".aws/config"),
            "[default]\nregion = eu-west-1\n[profile ci]\nregion = us-west-2\nendpoint_url = http://127.0.0.1:9000\n",
        )
        .unwrap();
        let home = folder.path().to_str().unwrap().to_string();
        let vars = |profile: Option<&'static str>| {
            let home = home.clone();
            move |name: &str| match name {
                "HOME" => Some(home.clone()),
                "AWS_PROFILE" => profile.map(str::to_string),
                _ => None,
            }
        };
        let default = shared_profile(&vars(None));
        assert_eq!(default.get("aws_access_key_id").map(String::as_str), Some("AKDEFAULT"));
        assert_eq!(default.get("region").map(String::as_str), Some("eu-west-1"));
        let ci = shared_profile(&vars(Some("ci")));
        assert_eq!(ci.get("aws_access_key_id").map(String::as_str), Some("AKCI"));
        assert_eq!(ci.get("aws_secret_access_key").map(String::as_str), Some("s3cret"));
        assert_eq!(ci.get("region").map(String::as_str), Some("us-west-2"));
        assert_eq!(ci.get("endpoint_url").map(String::as_str), Some("http://127.0.0.1:9000"));
        assert!(shared_profile(&|_: &str| None).is_empty(), "no home, no files: no settings");
    }

    #[test]
    fn each_url_has_its_own_cache_folder() {
        let a = cache_folder(Path::new("/c"), "s3://a/models");
        let b = cache_folder(Path::new("/c"), "s3://b/models");
        assert_ne!(a, b);
        assert_eq!(a, Path::new("/c/s3___a_models"));
    }
}
