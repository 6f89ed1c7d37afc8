//! Who may reach the server, and over what: TLS on every listener (tls.rs),
//! API keys and Triton's header restrictions (keys.rs) checked by the one
//! auth layer every route and RPC passes (auth.rs, with the group table in
//! groups.rs), reloads without a restart (reload.rs) and the audit log of
//! admin actions (audit.rs). api/ wraps its services in `auth::Guard` and
//! serves TLS through `TlsPort`; it never decides who may call what.

pub mod audit;
pub mod auth;
pub mod groups;
pub mod keys;
pub mod reload;
pub mod tls;

use crate::config::Config;
use crate::telemetry;
use auth::{Auth, Restriction};
use groups::{Groups, Port};
use keys::Keys;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tls::{Reloaded, Tls};

/// The connection a request came in on, put in every request's extensions
/// by the accept loop: for the audit log.
#[derive(Debug, Clone)]
pub struct Peer {
    pub address: SocketAddr,
    /// The subject of the client's certificate (mTLS), as `CN=…,O=…`.
    pub subject: Option<Arc<str>>,
}

/// What the server was configured with, and what reloads replace.
pub struct Security {
    pub auth: Arc<Auth>,
    tls: Option<Arc<Tls>>,
    metrics_plaintext: bool,
    keys_file: Option<KeysFile>,
}

/// The key file and the bytes last loaded from it.
struct KeysFile {
    path: PathBuf,
    loaded: Mutex<Vec<u8>>,
}

/// The TLS config one listener serves; read per connection.
#[derive(Clone)]
pub struct TlsPort {
    tls: Arc<Tls>,
    port: Port,
}

impl TlsPort {
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.tls.config(self.port)
    }
}

impl Security {
    /// Everything open, nothing encrypted: no flag set.
    pub fn open() -> Security {
        Security { auth: Arc::new(Auth::open()), tls: None, metrics_plaintext: false, keys_file: None }
    }

    /// Reads the files the flags name; an error stops the start-up.
    pub fn from_config(config: &Config) -> anyhow::Result<Security> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let files =
                    tls::Files { cert: cert.clone(), key: key.clone(), client_ca: config.tls_client_ca.clone() };
                let tls = Tls::load(files, config.metrics_tls_client_auth).map_err(anyhow::Error::msg)?;
                metrics::gauge!(telemetry::TLS_CERT_EXPIRY).set(tls.expires() as f64);
                Some(Arc::new(tls))
            }
            (None, None) if config.tls_client_ca.is_some() => {
                anyhow::bail!(
                    "--tls-client-ca needs --tls-cert and --tls-key: client certificates are asked for over TLS"
                )
            }
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        let keys_file = match &config.auth_keys {
            Some(path) => {
                let bytes =
                    std::fs::read(path).map_err(|e| anyhow::anyhow!("reading --auth-keys {}: {e}", path.display()))?;
                Some((path.clone(), bytes))
            }
            None => None,
        };
        let keys = match &keys_file {
            Some((path, bytes)) => Some(parse_keys(path, bytes).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let grpc = Restriction::parse_all(&config.grpc_restricted_protocol)
            .map_err(|e| anyhow::anyhow!("--grpc-restricted-protocol {e}"))?;
        let http = Restriction::parse_all(&config.http_restricted_api)
            .map_err(|e| anyhow::anyhow!("--http-restricted-api {e}"))?;
        let open = match &config.auth_open_groups {
            Some(list) if list.trim() == "*" => {
                anyhow::bail!("--auth-open-groups *: that opens every group; leave --auth-keys unset instead")
            }
            Some(list) => Groups::parse(list).map_err(|e| anyhow::anyhow!("--auth-open-groups: {e}"))?,
            None => Groups::default(),
        };
        if config.auth_open_groups.is_some() && keys.is_none() {
            anyhow::bail!("--auth-open-groups needs --auth-keys: without keys every group is open");
        }
        if let Some(keys) = &keys {
            tracing::info!(keys = keys.len(), open = ?config.auth_open_groups, "API keys required for every API group but health and the open ones");
        }
        Ok(Security {
            auth: Arc::new(Auth::new(keys, open, grpc, http)),
            tls,
            metrics_plaintext: config.metrics_plaintext,
            keys_file: keys_file.map(|(path, bytes)| KeysFile { path, loaded: Mutex::new(bytes) }),
        })
    }

    /// The TLS config of a listener, or None where it is plaintext.
    pub fn tls(&self, port: Port) -> Option<TlsPort> {
        if port == Port::Metrics && self.metrics_plaintext {
            return None;
        }
        self.tls.as_ref().map(|tls| TlsPort { tls: tls.clone(), port })
    }

    /// The files a reload reads.
    pub fn files(&self) -> Vec<&Path> {
        let tls = self.tls.iter().flat_map(|tls| tls.files().paths());
        tls.chain(self.keys_file.iter().map(|k| k.path.as_path())).collect()
    }

    /// Reads every file again and swaps in what changed and checks out; on
    /// any error the old material keeps serving. Returns whether all went
    /// well.
    pub fn reload(&self, why: &str) -> bool {
        let mut ok = true;
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(Reloaded::Unchanged) => {}
                Ok(Reloaded::Replaced { expires }) => {
                    metrics::counter!(telemetry::TLS_RELOADS_TOTAL, "outcome" => "success").increment(1);
                    metrics::gauge!(telemetry::TLS_CERT_EXPIRY).set(expires as f64);
                    tracing::info!(why, expires, "TLS certificate reloaded");
                }
                Err(error) => {
                    ok = false;
                    metrics::counter!(telemetry::TLS_RELOADS_TOTAL, "outcome" => "failure").increment(1);
                    tracing::error!(why, %error, "TLS reload failed: the previous certificate keeps serving");
                }
            }
        }
        if let Some(file) = &self.keys_file {
            ok &= self.reload_keys(file, why);
        }
        ok
    }

    fn reload_keys(&self, file: &KeysFile, why: &str) -> bool {
        let outcome =
            std::fs::read(&file.path).map_err(|e| format!("reading {}: {e}", file.path.display())).and_then(|bytes| {
                if *file.loaded.lock() == bytes {
                    return Ok(None);
                }
                let keys = parse_keys(&file.path, &bytes)?;
                Ok(Some((keys, bytes)))
            });
        match outcome {
            Ok(None) => true,
            Ok(Some((keys, bytes))) => {
                tracing::info!(why, keys = keys.len(), "API keys reloaded");
                self.auth.replace_keys(keys);
                *file.loaded.lock() = bytes;
                metrics::counter!(telemetry::AUTH_KEYS_RELOADS_TOTAL, "outcome" => "success").increment(1);
                true
            }
            Err(error) => {
                metrics::counter!(telemetry::AUTH_KEYS_RELOADS_TOTAL, "outcome" => "failure").increment(1);
                tracing::error!(why, %error, "API key reload failed: the previous keys stay in force");
                false
            }
        }
    }
}

fn parse_keys(path: &Path, bytes: &[u8]) -> Result<Keys, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
    Keys::parse(text).map_err(|e| format!("{}: {e}", path.display()))
}
