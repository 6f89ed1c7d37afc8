//! TLS for every listener: the certificate, key and client CA read from PEM
//! files, checked (the key matches the certificate, which is valid now), and
//! published as one rustls config per port. A reload builds new configs and
//! swaps them in; connections already open keep the config they started with.

use super::groups::Port;
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the PEM files are.
#[derive(Debug, Clone)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate issued by this CA.
    pub client_ca: Option<PathBuf>,
}

impl Files {
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()].into_iter().flatten().map(PathBuf::as_path)
    }
}

/// How the metrics port treats client certificates when a client CA is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuth {
    /// Every client must present a certificate from the CA.
    Required,
    /// A certificate is verified when presented; clients without one connect.
    Optional,
}

/// One generation of what was read from the files.
struct Loaded {
    /// The files' bytes, to tell a change from a re-read.
    bytes: Vec<Vec<u8>>,
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    metrics: Arc<ServerConfig>,
    /// When the server certificate expires (seconds since the epoch).
    expires: i64,
}

/// The TLS material every listener serves, swapped whole on a reload.
pub struct Tls {
    files: Files,
    metrics_client_auth: ClientAuth,
    current: ArcSwap<Loaded>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// The files are as they were.
    Unchanged,
    /// New material serves new connections; its expiry.
    Replaced { expires: i64 },
}

impl Tls {
    /// Reads and checks the files; an error names the file and the fault.
    pub fn load(files: Files, metrics_client_auth: ClientAuth) -> Result<Tls, String> {
        let loaded = parse(&files, read_all(&files)?, metrics_client_auth)?;
        Ok(Tls { files, metrics_client_auth, current: ArcSwap::from_pointee(loaded) })
    }

    pub fn files(&self) -> &Files {
        &self.files
    }

    /// Reads the files again; on any error the current material stays.
    pub fn reload(&self) -> Result<Reloaded, String> {
        let bytes = read_all(&self.files)?;
        if bytes == self.current.load().bytes {
            return Ok(Reloaded::Unchanged);
        }
        let loaded = parse(&self.files, bytes, self.metrics_client_auth)?;
        let expires = loaded.expires;
        self.current.store(Arc::new(loaded));
        Ok(Reloaded::Replaced { expires })
    }

    /// The config a new connection on `port` is served with.
    pub fn config(&self, port: Port) -> Arc<ServerConfig> {
        let current = self.current.load();
        match port {
            Port::Grpc => current.grpc.clone(),
            Port::Http => current.http.clone(),
            Port::Metrics => current.metrics.clone(),
        }
    }

    pub fn expires(&self) -> i64 {
        self.current.load().expires
    }
}

/// The bytes of each file, in `Files::paths` order.
fn read_all(files: &Files) -> Result<Vec<Vec<u8>>, String> {
    files.paths().map(|path| std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))).collect()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the configs from the files' bytes (read once, so what is checked
/// is what is remembered even if a file changes meanwhile).
fn parse(files: &Files, bytes: Vec<Vec<u8>>, metrics_client_auth: ClientAuth) -> Result<Loaded, String> {
    let (cert_pem, key_pem) = (&bytes[0], &bytes[1]);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE block", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("{}: no private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}", files.key.display()))?;
    let expires = valid_now(&certs[0]).map_err(|e| format!("{}: {e}", files.cert.display()))?;
    let roots = match (&files.client_ca, bytes.get(2)) {
        (Some(path), Some(pem)) => Some(Arc::new(roots(path, pem)?)),
        _ => None,
    };
    let build = |alpn: &[&[u8]], client_auth: ClientAuth| -> Result<Arc<ServerConfig>, String> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS versions: {e}"))?;
        let builder = match &roots {
            Some(roots) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
                let verifier = match client_auth {
                    ClientAuth::Required => verifier,
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                };
                let verifier = verifier.build().map_err(|e| format!("the client CA: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| format!("{} and {} do not make a pair: {e}", files.cert.display(), files.key.display()))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Stateless resumption: a reconnecting client skips the full handshake.
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("session tickets: {e}"))?;
        Ok(Arc::new(config))
    };
    Ok(Loaded {
        bytes,
        grpc: build(&[b"h2"], ClientAuth::Required)?,
        http: build(&[b"h2", b"http/1.1"], ClientAuth::Required)?,
        metrics: build(&[b"h2", b"http/1.1"], metrics_client_auth)?,
        expires,
    })
}

fn roots(path: &Path, pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
        roots.add(cert).map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CERTIFICATE block", path.display()));
    }
    Ok(roots)
}

/// The certificate's notAfter, if it is valid now.
fn valid_now(cert: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let validity = parsed.validity();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let (from, until) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    if now < from {
        return Err(format!("the certificate is not valid before {} (now {now}, seconds since the epoch)", from));
    }
    if now > until {
        return Err(format!("the certificate expired at {until} (now {now}, seconds since the epoch)"));
    }
    Ok(until)
}

/// The subject of a client certificate, as `CN=…,O=…`.
pub fn subject(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(parsed.subject().to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    /// One certificate maker for these tests and the integration tests.
    mod pki {
        include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/pki.rs"));
    }
    pub use pki::Pki;

    fn files(dir: &Path, cert: &str, key: &str, ca: Option<&str>) -> Files {
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
        if let Some(ca) = ca {
            std::fs::write(dir.join("ca.crt"), ca).unwrap();
        }
        Files { cert: dir.join("tls.crt"), key: dir.join("tls.key"), client_ca: ca.map(|_| dir.join("ca.crt")) }
    }

    #[test]
    fn a_good_pair_loads_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let (cert, key) = pki.leaf("server", -1, 30);
        let tls = Tls::load(files(dir.path(), &cert, &key, Some(&pki.ca_pem)), ClientAuth::Optional).unwrap();
        assert_eq!(tls.config(Port::Grpc).alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(tls.config(Port::Http).alpn_protocols.len(), 2);
        let in_30_days = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 + 30 * 86_400;
        assert!((tls.expires() - in_30_days).abs() < 120, "{}", tls.expires());

        let (_, other_key) = pki.leaf("other", -1, 30);
        let error = Tls::load(files(dir.path(), &cert, &other_key, None), ClientAuth::Required).err().unwrap();
        assert!(error.contains("do not make a pair"), "{error}");
        let (expired, expired_key) = pki.leaf("old", -30, -1);
        let error = Tls::load(files(dir.path(), &expired, &expired_key, None), ClientAuth::Required).err().unwrap();
        assert!(error.contains("expired"), "{error}");
        let error = Tls::load(files(dir.path(), "junk", &key, None), ClientAuth::Required).err().unwrap();
        assert!(error.contains("no CERTIFICATE"), "{error}");
        let error = Tls::load(files(dir.path(), &cert, "junk", None), ClientAuth::Required).err().unwrap();
        assert!(error.contains("no private key"), "{error}");
    }

    #[test]
    fn a_reload_keeps_the_old_pair_on_any_error() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let (cert, key) = pki.leaf("first", -1, 10);
        let tls = Tls::load(files(dir.path(), &cert, &key, None), ClientAuth::Required).unwrap();
        let first = tls.config(Port::Http);
        assert_eq!(tls.reload(), Ok(Reloaded::Unchanged));
        assert!(Arc::ptr_eq(&first, &tls.config(Port::Http)));

        // A new certificate with the old key: refused, the old pair serves.
        let (second, second_key) = pki.leaf("second", -1, 20);
        std::fs::write(dir.path().join("tls.crt"), &second).unwrap();
        assert!(tls.reload().unwrap_err().contains("do not make a pair"));
        assert!(Arc::ptr_eq(&first, &tls.config(Port::Http)));

        std::fs::write(dir.path().join("tls.key"), &second_key).unwrap();
        assert!(matches!(tls.reload(), Ok(Reloaded::Replaced { .. })));
        assert!(!Arc::ptr_eq(&first, &tls.config(Port::Http)));
        assert!(tls.expires() > SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 + 15 * 86_400);
    }
}
