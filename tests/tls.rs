//! TLS on every listener, against the real binary with a rustls client:
//! gRPC and HTTP (HTTP/1.1 and HTTP/2 by ALPN) and metrics over TLS, a
//! plaintext client refused; mTLS with the client's subject in the audit
//! log; and rotation: a Kubernetes-style `..data` symlink swap served
//! within seconds under gRPC load with no failed call, a broken pair
//! refused while the old one serves, and SIGHUP.

mod common;
mod grpc_support;

use bytes::Bytes;
use common::pki::Pki;
use common::{Logs, Server, shipped_models};
use ferroserve::pb;
use grpc_support::{check_mlp_response, mlp_request, raw};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use prost::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A client's TLS settings: the CA it trusts, its own certificate (mTLS),
/// the ALPN protocols it offers and the TLS versions it speaks.
#[derive(Clone)]
struct ClientTls {
    ca: String,
    identity: Option<(String, String)>,
    alpn: Vec<Vec<u8>>,
    tls12_only: bool,
}

impl ClientTls {
    fn trusting(ca: &str) -> ClientTls {
        ClientTls { ca: ca.to_string(), identity: None, alpn: vec![b"h2".to_vec()], tls12_only: false }
    }

    fn with_identity(mut self, (cert, key): (String, String)) -> ClientTls {
        self.identity = Some((cert, key));
        self
    }

    fn offering(mut self, alpn: &[&[u8]]) -> ClientTls {
        self.alpn = alpn.iter().map(|p| p.to_vec()).collect();
        self
    }

    fn connector(&self) -> TlsConnector {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] =
            if self.tls12_only { &[&rustls::version::TLS12] } else { rustls::ALL_VERSIONS };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).map(Result::unwrap).collect();
                builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.clone();
        TlsConnector::from(Arc::new(config))
    }

    async fn connect(&self, address: &str) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(address).await?;
        self.connector().connect(ServerName::try_from("localhost").unwrap(), tcp).await
    }
}

/// The DER of the first certificate in a PEM chain.
fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

/// The certificate the server presented on a connection.
fn served(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().expect("a server certificate")[0].to_vec()
}

/// One HTTP/1.1 GET over `stream`: (status, body), or an error when the
/// server refused the connection.
async fn get(stream: TlsStream<TcpStream>, path: &str) -> Result<(u16, String), hyper::Error> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get(path).header("host", "localhost").body(Empty::<Bytes>::new()).unwrap();
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An HTTP/2 connection's sender (gRPC, or HTTP/2 on the HTTP port).
async fn h2_over(stream: TlsStream<TcpStream>) -> Result<raw::Client, h2::Error> {
    raw::over(stream).await
}

/// One mlp ModelInfer over an HTTP/2 connection; Err names what failed.
async fn infer(client: &mut raw::Client) -> Result<(), String> {
    let answer = raw::try_call(client, raw::head(raw::MODEL_INFER, &[]), &[raw::framed(&mlp_request(1))]).await?;
    let messages = answer.messages();
    if answer.status != "0" || messages.len() != 1 {
        return Err(format!("grpc-status {} {:?}, {} messages", answer.status, answer.message, messages.len()));
    }
    let response = pb::ModelInferResponse::decode(messages[0].1).map_err(|e| format!("decoding: {e}"))?;
    check_mlp_response(&response, 1);
    Ok(())
}

/// Writes a certificate and key into `dir` as tls.crt and tls.key.
fn write_pair(dir: &Path, (cert, key): &(String, String)) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
}

/// Waits until the HTTP port answers ready over TLS.
async fn wait_ready(server: &Server, client: &ClientTls) {
    let http1 = ClientTls { alpn: vec![b"http/1.1".to_vec()], ..client.clone() };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(stream) = http1.connect(&server.http).await
            && let Ok((200, _)) = get(stream, "/v2/health/ready").await
        {
            return;
        }
        assert!(Instant::now() < deadline, "not ready over TLS within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn flags<'a>(dir: &'a Path, extra: &[&'a str]) -> Vec<String> {
    let mut flags = vec![
        "--tls-cert".to_string(),
        dir.join("tls.crt").display().to_string(),
        "--tls-key".to_string(),
        dir.join("tls.key").display().to_string(),
    ];
    flags.extend(extra.iter().map(|s| s.to_string()));
    flags
}

fn start(flags: &[String], env: &[(&str, &str)]) -> (Server, Logs) {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::spawn_logged(&shipped_models(), &flags, env)
}

#[tokio::test]
async fn every_port_speaks_tls_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let pair = pki.leaf("ferroserve", -1, 30);
    write_pair(dir.path(), &pair);
    let (server, _logs) = start(&flags(dir.path(), &[]), &[]);
    let client = ClientTls::trusting(&pki.ca_pem);
    wait_ready(&server, &client).await;

    // gRPC: h2 by ALPN, the server's certificate, a real inference.
    let stream = client.connect(&server.grpc).await.expect("a TLS handshake on the gRPC port");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(stream.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(served(&stream), der(&pair.0));
    infer(&mut h2_over(stream).await.unwrap()).await.expect("ModelInfer over TLS");

    // TLS 1.2 is spoken too.
    let tls12 = ClientTls { tls12_only: true, ..client.clone() };
    let stream = tls12.connect(&server.grpc).await.expect("a TLS 1.2 handshake");
    assert_eq!(stream.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    infer(&mut h2_over(stream).await.unwrap()).await.expect("ModelInfer over TLS 1.2");

    // HTTP: HTTP/1.1 and HTTP/2, each by ALPN.
    let http1 = client.clone().offering(&[b"http/1.1"]);
    let stream = http1.connect(&server.http).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, body) = get(stream, "/v2/models/mlp").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"name\":\"mlp\""), "{body}");
    let stream = client.clone().offering(&[b"h2", b"http/1.1"]).connect(&server.http).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h2 = h2_over(stream).await.unwrap();
    let (response, _) =
        h2.send_request(http::Request::get("https://localhost/v2/health/live").body(()).unwrap(), true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);

    // Metrics over TLS, with the certificate's expiry.
    let stream = http1.connect(&server.metrics).await.unwrap();
    let (status, body) = get(stream, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let expiry = body
        .lines()
        .find_map(|l| l.strip_prefix("ferroserve_tls_cert_expiry_timestamp_seconds "))
        .expect("the expiry gauge");
    let in_30_days =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64 + 30.0 * 86_400.0;
    assert!((expiry.parse::<f64>().unwrap() - in_30_days).abs() < 300.0, "expiry {expiry}");

    // Plaintext to a TLS port gets nothing served, and breaks nothing.
    for address in [&server.http, &server.metrics] {
        let tcp = TcpStream::connect(address).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(connection);
        let request = http::Request::get("/v2/health/ready").header("host", "x").body(Empty::<Bytes>::new()).unwrap();
        let answer =
            tokio::time::timeout(Duration::from_secs(10), sender.send_request(request)).await.expect("refused in time");
        assert!(answer.is_err(), "plaintext HTTP was answered on a TLS port: {answer:?}");
    }
    let tcp = TcpStream::connect(&server.grpc).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        let Ok((sender, connection)) = h2::client::handshake(tcp).await else { return true };
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let Ok(mut sender) = sender.ready().await else { return true };
        let request = http::Request::post("http://x/inference.GRPCInferenceService/ServerLive").body(()).unwrap();
        let Ok((response, _)) = sender.send_request(request, true) else { return true };
        response.await.is_err()
    });
    assert!(refused.await.expect("refused in time"), "plaintext gRPC was answered on a TLS port");
    let stream = client.connect(&server.grpc).await.unwrap();
    infer(&mut h2_over(stream).await.unwrap()).await.expect("still serving after plaintext attempts");
    // A client that does not trust the CA does not get through either.
    let stranger = ClientTls::trusting(&Pki::named("another CA").ca_pem);
    assert!(
        stranger.connect(&server.grpc).await.is_err(),
        "a client accepted a certificate from a CA it does not trust"
    );
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_ca_and_audits_its_subject() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    write_pair(dir.path(), &pki.leaf("ferroserve", -1, 30));
    let clients = Pki::named("client CA");
    std::fs::write(dir.path().join("clients.crt"), &clients.ca_pem).unwrap();
    let client_ca = dir.path().join("clients.crt").display().to_string();
    let repository = common::temp_repository(&[(&shipped_models(), "mlp")]);
    let mut flags = flags(dir.path(), &["--tls-client-ca", &client_ca, "--metrics-tls-client-auth", "optional"]);
    flags.extend(["--model-control-mode", "explicit", "--load-model", "mlp"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (server, logs) =
        Server::spawn_logged(repository.path(), &flags, &[("RUST_LOG", "warn,ferroserve::audit=info")]);
    let member = ClientTls::trusting(&pki.ca_pem).with_identity(clients.leaf("audited-client", -1, 30));
    wait_ready(&server, &member).await;

    let stream = member.connect(&server.grpc).await.expect("a handshake with a client certificate");
    infer(&mut h2_over(stream).await.unwrap()).await.expect("ModelInfer over mTLS");

    // No certificate, or one from another CA: the server ends the handshake
    // (under TLS 1.3 the client learns it on its first read).
    let anonymous = ClientTls::trusting(&pki.ca_pem);
    let outsider = ClientTls::trusting(&pki.ca_pem).with_identity(Pki::named("rogue CA").leaf("rogue", -1, 30));
    for (who, client) in [("no certificate", &anonymous), ("a certificate from another CA", &outsider)] {
        let refused = match client.connect(&server.grpc).await {
            Err(_) => true,
            Ok(stream) => match h2_over(stream).await {
                Err(_) => true,
                Ok(mut h2) => infer(&mut h2).await.is_err(),
            },
        };
        assert!(refused, "gRPC with {who} was served");
        let http1 = client.clone().offering(&[b"http/1.1"]);
        let refused = match http1.connect(&server.http).await {
            Err(_) => true,
            Ok(stream) => get(stream, "/v2/health/ready").await.is_err(),
        };
        assert!(refused, "HTTP with {who} was served");
    }
    // The metrics port in optional mode: a scraper without a certificate gets
    // in, one with a certificate from another CA does not.
    let scraper = anonymous.clone().offering(&[b"http/1.1"]);
    let (status, _) = get(scraper.connect(&server.metrics).await.unwrap(), "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let refused = match outsider.clone().offering(&[b"http/1.1"]).connect(&server.metrics).await {
        Err(_) => true,
        Ok(stream) => get(stream, "/metrics").await.is_err(),
    };
    assert!(refused, "the metrics port took a certificate from another CA");

    // An admin action over mTLS names the certificate's subject.
    let http1 = member.clone().offering(&[b"http/1.1"]);
    let stream = http1.connect(&server.http).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("/v2/repository/models/mlp/load")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    logs.wait_for(
        &["ferroserve::audit", "action=\"load\"", "CN=audited-client", "client=\"127.0.0.1:"],
        Duration::from_secs(5),
    )
    .expect("an audit line with the client's subject");
}

/// A Secret volume as the kubelet writes it: the files are symlinks through
/// `..data`, itself a symlink to a timestamped folder; an update writes a
/// new folder and renames a new `..data` link over the old one.
struct SecretVolume {
    root: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn new(root: &Path, pair: &(String, String)) -> SecretVolume {
        let mut volume = SecretVolume { root: root.to_path_buf(), generation: 0 };
        volume.update(pair);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), root.join(name)).unwrap();
        }
        volume
    }

    fn update(&mut self, pair: &(String, String)) {
        self.generation += 1;
        let folder = format!("..2026_12_03_{:02}", self.generation);
        write_pair(&self.root.join(&folder), pair);
        let staged = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&folder, &staged).unwrap();
        std::fs::rename(&staged, self.root.join("..data")).unwrap();
    }
}

/// gRPC load over TLS from long-lived connections plus a fresh connection
/// every 50 ms, which reports the certificate it was served.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failures: Arc<parking_lot::Mutex<Vec<String>>>,
    latest: Arc<parking_lot::Mutex<Vec<u8>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `connections` steady connections sending one call every `every`.
    async fn start(server: &Server, client: &ClientTls, connections: usize, every: Duration) -> Load {
        let mut load = Load {
            stop: Arc::default(),
            answered: Arc::default(),
            failures: Arc::default(),
            latest: Arc::default(),
            tasks: Vec::new(),
        };
        for _ in 0..connections {
            let stream = client.connect(&server.grpc).await.unwrap();
            let mut h2 = h2_over(stream).await.unwrap();
            let (stop, answered, failures) = (load.stop.clone(), load.answered.clone(), load.failures.clone());
            load.tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    match infer(&mut h2).await {
                        Ok(()) => answered.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failures.lock().push(format!("steady: {e}"));
                            return;
                        }
                    };
                }
            }));
        }
        let connector = client.connector();
        let (stop, answered, failures, latest) =
            (load.stop.clone(), load.answered.clone(), load.failures.clone(), load.latest.clone());
        let address = server.grpc.clone();
        load.tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let fresh = async {
                    let tcp = TcpStream::connect(&address).await.map_err(|e| format!("connect: {e}"))?;
                    let name = ServerName::try_from("localhost").unwrap();
                    let stream = connector.connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))?;
                    let certificate = served(&stream);
                    infer(&mut h2_over(stream).await.map_err(|e| format!("h2: {e}"))?).await?;
                    Ok::<_, String>(certificate)
                };
                match fresh.await {
                    Ok(certificate) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                        *latest.lock() = certificate;
                    }
                    Err(e) => failures.lock().push(format!("fresh connection: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
        load
    }

    /// Waits until fresh connections are served `certificate`; how long
    /// that took.
    async fn until_served(&self, certificate: &[u8], within: Duration) -> Duration {
        let start = Instant::now();
        while *self.latest.lock() != certificate {
            assert!(start.elapsed() < within, "the new certificate was not served within {within:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        start.elapsed()
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        (self.answered.load(Ordering::Relaxed), self.failures.lock().clone())
    }
}

async fn plaintext_metrics(server: &Server) -> String {
    reqwest::get(format!("http://{}/metrics", server.metrics)).await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_volume_swap_is_served_under_load_and_a_broken_pair_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let first = pki.leaf("first", -1, 30);
    let mut volume = SecretVolume::new(dir.path(), &first);
    // A period far away: only the folder watch can do the reload.
    let (server, _logs) = start(&flags(dir.path(), &["--metrics-plaintext", "--security-reload-secs", "3600"]), &[]);
    let client = ClientTls::trusting(&pki.ca_pem);
    wait_ready(&server, &client).await;

    // 8 connections × one call per 16 ms ≈ 500 calls/s.
    let load = Load::start(&server, &client, 8, Duration::from_millis(16)).await;
    load.until_served(&der(&first.0), Duration::from_secs(10)).await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let second = pki.leaf("second", -1, 60);
    volume.update(&second);
    let took = load.until_served(&der(&second.0), Duration::from_secs(5)).await;
    eprintln!("rotation: the new certificate was served {} ms after the swap", took.as_millis());

    // A new certificate whose key is not its own: refused, counted, and the
    // second pair goes on serving.
    let (third_cert, _) = pki.leaf("third", -1, 90);
    volume.update(&(third_cert, second.1.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !plaintext_metrics(&server).await.contains(r#"ferroserve_tls_reloads_total{outcome="failure"}"#) {
        assert!(Instant::now() < deadline, "the broken pair was not counted as a failed reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A second of load on the second pair, through the retried reload.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(*load.latest.lock(), der(&second.0), "a broken pair replaced a good one");

    let (answered, failures) = load.finish().await;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "rotation: {answered} calls answered in {seconds:.1} s ({:.0}/s), {} failed",
        answered as f64 / seconds,
        failures.len()
    );
    assert!(failures.is_empty(), "calls failed across the rotation: {failures:?}");
    assert!(answered > 100, "only {answered} calls answered");
    let metrics = plaintext_metrics(&server).await;
    assert!(metrics.contains(r#"ferroserve_tls_reloads_total{outcome="success"} 1"#), "one good reload counted");
}

#[tokio::test]
async fn sighup_reloads_a_certificate_the_folder_watch_cannot_see() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let first = pki.leaf("first", -1, 30);
    // The flags name links in `served/` to files in `store/`: a change in
    // `store/` makes no event in the folder that is watched.
    let (served_dir, store) = (dir.path().join("served"), dir.path().join("store"));
    write_pair(&store, &first);
    std::fs::create_dir(&served_dir).unwrap();
    for name in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(store.join(name), served_dir.join(name)).unwrap();
    }
    let (server, logs) = start(
        &flags(&served_dir, &["--security-reload-secs", "3600"]),
        &[("RUST_LOG", "warn,ferroserve::security=info")],
    );
    let client = ClientTls::trusting(&pki.ca_pem);
    wait_ready(&server, &client).await;
    assert_eq!(served(&client.connect(&server.grpc).await.unwrap()), der(&first.0));

    let second = pki.leaf("second", -1, 30);
    write_pair(&store, &second);
    server.signal(1);
    logs.wait_for(&["TLS certificate reloaded", "SIGHUP"], Duration::from_secs(10)).expect("a reload on SIGHUP");
    let stream = client.connect(&server.grpc).await.unwrap();
    assert_eq!(served(&stream), der(&second.0));
    infer(&mut h2_over(stream).await.unwrap()).await.expect("serving after SIGHUP");
}
