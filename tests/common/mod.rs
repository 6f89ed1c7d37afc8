//! Test support: starts the real ferroserve binary on free loopback ports
//! and stops it when the handle drops.

#![allow(dead_code)]

pub mod pki;

use ferroserve::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type GrpcClient = GrpcInferenceServiceClient<tonic::transport::Channel>;

/// A running server; killed on drop.
pub struct Server {
    child: Child,
    pub grpc: String,
    pub http: String,
    pub metrics: String,
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped example repository.
pub fn shipped_models() -> PathBuf {
    repo_root().join("models")
}

/// The test-only models.
pub fn test_models() -> PathBuf {
    repo_root().join("tests/models")
}

/// Copies model directories into a fresh temporary repository.
pub fn temp_repository(models: &[(&Path, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("creating a temporary repository");
    for (source, name) in models {
        copy_dir(&source.join(name), &dir.path().join(name));
    }
    dir
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

impl Server {
    /// Starts ferroserve on `repository` with extra flags, and waits until it
    /// reports ready (or fails the test after 60 s).
    pub fn start(repository: &Path, extra: &[&str]) -> Server {
        let server = Self::spawn(repository, extra);
        server.wait_ready();
        server
    }

    /// Starts ferroserve with extra flags and environment variables, and
    /// waits until it reports ready.
    pub fn start_with_env(repository: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let server = Self::spawn_with_env(repository, extra, env);
        server.wait_ready();
        server
    }

    /// Starts ferroserve and returns once its ports are known (not ready yet).
    pub fn spawn(repository: &Path, extra: &[&str]) -> Server {
        Self::spawn_with_env(repository, extra, &[])
    }

    fn spawn_with_env(repository: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::spawn_inner(repository, extra, env, None)
    }

    /// Starts ferroserve with its log lines (stderr) collected; `env` sets
    /// RUST_LOG among others. Returns once the ports are known.
    pub fn spawn_logged(repository: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Server, Logs) {
        let logs = Logs::default();
        (Self::spawn_inner(repository, extra, env, Some(logs.clone())), logs)
    }

    fn spawn_inner(repository: &Path, extra: &[&str], env: &[(&str, &str)], logs: Option<Logs>) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferroserve"))
            .arg("--model-repository")
            .arg(repository)
            .args(["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"])
            .args(["--grpc-address", "127.0.0.1", "--http-address", "127.0.0.1", "--metrics-address", "127.0.0.1"])
            .args(extra)
            .current_dir(repo_root())
            .env("RUST_LOG", "warn")
            // Tracing stays off unless a test turns it on.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("FERROSERVE_OTLP_ENDPOINT")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(if logs.is_some() { Stdio::piped() } else { Stdio::inherit() })
            .spawn()
            .expect("starting the ferroserve binary");
        if let Some(logs) = logs {
            let stderr = child.stderr.take().expect("piped stderr");
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    logs.0.lock().unwrap().push(line);
                }
            });
        }
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("reading the listening line");
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_string))
                .unwrap_or_else(|| panic!("no {key}= in start-up line {line:?}"))
        };
        Server { grpc: field("grpc"), http: field("http"), metrics: field("metrics"), child }
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = self.http_url("/v2/health/ready");
        while Instant::now() < deadline {
            if let Ok(200) = http_probe::status(&url) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ferroserve did not become ready within 60 s");
    }

    pub async fn grpc_client(&self) -> GrpcClient {
        GrpcInferenceServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connecting to the gRPC port")
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc_kill(pid, 15) };
        self.child.wait().expect("waiting for ferroserve")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. 1 for SIGHUP) without waiting.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc_kill(self.child.id() as i32, signal) };
    }
}

/// The log lines a server wrote so far.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// The first line containing every one of `needles`, waiting up to
    /// `timeout` for it to be written.
    pub fn wait_for(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.lines().into_iter().find(|line| needles.iter().all(|n| line.contains(n)));
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny synchronous GET for readiness polling, without a runtime.
mod http_probe {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    pub fn status(url: &str) -> std::io::Result<u16> {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
        let mut stream = TcpStream::connect(host)?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other("no status line"))
    }
}
