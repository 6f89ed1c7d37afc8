//! The ghz configuration file (JSON), the command-line overrides on top of it, and the loopback-only host rule.

use crate::schedule::{Arrivals, Step};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// ghz's defaults for a config that leaves these out.
const DEFAULT_TOTAL: u64 = 200;
const DEFAULT_CONCURRENCY: usize = 50;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// Seeds Poisson arrivals unless --seed says otherwise.
const DEFAULT_SEED: u64 = 1;
/// gRPC connections: one per this many workers unless "connections" says otherwise.
const WORKERS_PER_CONNECTION: usize = 16;

/// Keys ferroload reads, or ignores because they cannot change what it sends.
const KNOWN_KEYS: &[&str] = &[
    "proto",
    "protoset",
    "import-paths",
    "call",
    "host",
    "insecure",
    "total",
    "concurrency",
    "rps",
    "qps",
    "connections",
    "duration",
    "timeout",
    "data",
    "metadata",
    "cpus",
    "name",
    "tags",
    "format",
    "output",
    "connect-timeout",
    "keepalive",
];

/// How requests travel to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Unary ModelInfer calls.
    Grpc,
    /// ModelStreamInfer: one bidirectional stream per worker (closed loop) or per connection (open loop).
    GrpcStream,
    /// POST /v2/models/{model}/infer with KServe V2 JSON.
    Http,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::GrpcStream => "grpc-stream",
            Protocol::Http => "http",
        }
    }
}

/// A ghz config file, as far as ferroload uses it.
#[derive(Debug)]
pub struct GhzConfig {
    /// The whole file, echoed in the report's "options".
    pub raw: Map<String, Value>,
    pub call: String,
    pub host: Option<String>,
    pub total: Option<u64>,
    pub concurrency: Option<usize>,
    pub rps: Option<f64>,
    pub connections: Option<usize>,
    pub duration: Option<Duration>,
    pub timeout: Option<Duration>,
    pub cpus: Option<usize>,
    pub data: Value,
    pub metadata: Vec<(String, String)>,
    /// Keys ferroload does not understand (ghz features it does not implement).
    pub ignored: Vec<String>,
}

impl GhzConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let raw = match serde_json::from_str(text).context("not valid JSON")? {
            Value::Object(map) => map,
            _ => bail!("a ghz config must be a JSON object"),
        };
        let call = match raw.get("call") {
            Some(Value::String(call)) => call.clone(),
            Some(_) => bail!("\"call\" must be a string"),
            None => bail!("\"call\" is missing (e.g. \"inference.GRPCInferenceService.ModelInfer\")"),
        };
        let data = match raw.get("data") {
            Some(data) => data.clone(),
            None => bail!("\"data\" is missing (ferroload does not read \"data-file\" or \"binary-file\")"),
        };
        let metadata = match raw.get("metadata") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(anyhow!("\"metadata\" values must be strings; '{k}' is {v}")),
                })
                .collect::<Result<_>>()?,
            Some(_) => bail!("\"metadata\" must be an object of strings"),
        };
        let rps = match (float(&raw, "rps")?, float(&raw, "qps")?) {
            (Some(r), _) | (None, Some(r)) => Some(r),
            (None, None) => None,
        };
        let ignored = raw.keys().filter(|k| !KNOWN_KEYS.contains(&k.as_str())).cloned().collect();
        Ok(GhzConfig {
            call,
            host: string(&raw, "host")?,
            total: integer(&raw, "total")?,
            concurrency: integer(&raw, "concurrency")?.map(|c| c as usize),
            rps,
            connections: integer(&raw, "connections")?.map(|c| c as usize),
            duration: duration(&raw, "duration")?,
            timeout: duration(&raw, "timeout")?,
            cpus: integer(&raw, "cpus")?.map(|c| c as usize),
            data,
            metadata,
            ignored,
            raw,
        })
    }
}

fn string(raw: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => bail!("\"{key}\" must be a string, got {other}"),
    }
}

fn integer(raw: &Map<String, Value>, key: &str) -> Result<Option<u64>> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| anyhow!("\"{key}\" must be a non-negative integer, got {v}")),
    }
}

fn float(raw: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f)),
            _ => bail!("\"{key}\" must be a non-negative number, got {v}"),
        },
    }
}

fn duration(raw: &Map<String, Value>, key: &str) -> Result<Option<Duration>> {
    match string(raw, key)? {
        None => Ok(None),
        Some(text) => parse_duration(&text).map(Some).with_context(|| format!("\"{key}\"")),
    }
}

/// Parses a Go duration as ghz writes it: "10s", "1m30s", "250ms", "1.5h", "100us".
pub fn parse_duration(text: &str) -> Result<Duration> {
    let bad = || anyhow!("'{text}' is not a duration (examples: 10s, 1m30s, 250ms)");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut nanos = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let number: f64 = rest[..number_end].parse().map_err(|_| bad())?;
        rest = &rest[number_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        nanos += number * scale;
        rest = &rest[unit_end..];
    }
    if !nanos.is_finite() || nanos > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

/// Resolves `host` ("127.0.0.1:8001", "[::1]:8001", "localhost:8001", optionally "http://…") to an
/// address, refusing anything that is not this machine's loopback interface.
pub fn loopback_address(host: &str) -> Result<SocketAddr> {
    let refuse = || {
        anyhow!(
            "refusing to send load to '{host}': ferroload only targets this machine \
             (127.0.0.0/8, ::1 or localhost, with a port)"
        )
    };
    let trimmed = host.trim();
    let bare = match trimmed.split_once("://") {
        Some(("http", rest)) => rest,
        Some(_) => return Err(refuse()),
        None => trimmed,
    };
    let bare = bare.strip_suffix('/').unwrap_or(bare);
    if let Ok(addr) = bare.parse::<SocketAddr>() {
        let ip = match addr.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        return if ip.is_loopback() { Ok(SocketAddr::new(ip, addr.port())) } else { Err(refuse()) };
    }
    let (name, port) =
        bare.rsplit_once(':').ok_or_else(|| anyhow!("host '{host}' needs a port, e.g. 127.0.0.1:8001"))?;
    let port: u16 = port.parse().map_err(|_| anyhow!("host '{host}' has an invalid port"))?;
    if name.eq_ignore_ascii_case("localhost") {
        Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
    } else {
        Err(refuse())
    }
}

/// Command-line values that replace the config's.
#[derive(Debug, Default)]
pub struct Overrides {
    pub host: Option<String>,
    pub http_host: Option<String>,
    pub protocol: Option<Protocol>,
    pub total: Option<u64>,
    pub duration: Option<Duration>,
    pub concurrency: Option<usize>,
    pub rps: Option<f64>,
    pub connections: Option<usize>,
    pub timeout: Option<Duration>,
    pub cpus: Option<usize>,
    /// Open loop only (no ghz config key): how arrivals are spaced, their seed, and a rate step.
    pub arrivals: Option<Arrivals>,
    pub seed: Option<u64>,
    pub step_at: Option<Duration>,
    pub step_rps: Option<f64>,
}

/// When a run stops sending: after `total` requests, after `duration`, or at whichever comes first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stop {
    pub total: Option<u64>,
    pub duration: Option<Duration>,
}

/// Everything a run needs, config and overrides merged and checked.
#[derive(Debug)]
pub struct Settings {
    pub protocol: Protocol,
    /// Where requests go (the gRPC host, or the HTTP host for `Protocol::Http`).
    pub target: SocketAddr,
    pub stop: Stop,
    pub concurrency: usize,
    /// Requests per second; `None` is a closed loop.
    pub rps: Option<f64>,
    pub connections: usize,
    pub timeout: Duration,
    pub cpus: Option<usize>,
    pub metadata: Vec<(String, String)>,
    pub arrivals: Arrivals,
    pub seed: u64,
    /// Open loop: the rate changes to `step.rps` at `step.at`.
    pub step: Option<Step>,
}

impl Settings {
    pub fn resolve(config: &GhzConfig, over: &Overrides) -> Result<Self> {
        let method = config.call.rsplit(['.', '/']).next().unwrap_or_default();
        let service_ok = config.call.starts_with("inference.GRPCInferenceService");
        let streamed = match method {
            "ModelInfer" if service_ok => false,
            "ModelStreamInfer" if service_ok => true,
            _ => bail!(
                "ferroload drives inference.GRPCInferenceService.ModelInfer or ModelStreamInfer; the config calls '{}'",
                config.call
            ),
        };
        let protocol = over.protocol.unwrap_or(if streamed { Protocol::GrpcStream } else { Protocol::Grpc });
        let target = match protocol {
            Protocol::Http => loopback_address(over.http_host.as_deref().unwrap_or("127.0.0.1:8000"))?,
            Protocol::Grpc | Protocol::GrpcStream => {
                let host =
                    over.host.as_deref().or(config.host.as_deref()).ok_or_else(|| {
                        anyhow!("no gRPC host: set \"host\" in the config or pass --host 127.0.0.1:8001")
                    })?;
                loopback_address(host)?
            }
        };
        // A bound given on the command line replaces both of the config's bounds.
        let stop = if over.total.is_some() || over.duration.is_some() {
            Stop { total: over.total, duration: over.duration }
        } else if config.total.is_some() || config.duration.is_some() {
            Stop { total: config.total, duration: config.duration }
        } else {
            Stop { total: Some(DEFAULT_TOTAL), duration: None }
        };
        if stop.total == Some(0) {
            bail!("total must be at least 1");
        }
        if stop.duration == Some(Duration::ZERO) {
            bail!("duration must be more than zero");
        }
        let concurrency = over.concurrency.or(config.concurrency).unwrap_or(DEFAULT_CONCURRENCY);
        if concurrency == 0 {
            bail!("concurrency must be at least 1");
        }
        let rps = match over.rps.or(config.rps) {
            Some(r) if !r.is_finite() || r < 0.0 => bail!("rps must be a non-negative number"),
            Some(r) if r > 0.0 => Some(r),
            _ => None, // 0 means no rate limit, as in ghz
        };
        let connections = over
            .connections
            .or(config.connections)
            .unwrap_or_else(|| concurrency.div_ceil(WORKERS_PER_CONNECTION))
            .clamp(1, concurrency);
        let timeout = over.timeout.or(config.timeout).filter(|t| !t.is_zero()).unwrap_or(DEFAULT_TIMEOUT);
        let step = match (over.step_at, over.step_rps) {
            (None, None) => None,
            (Some(at), Some(rps)) if rps.is_finite() && rps > 0.0 => Some(Step { at, rps }),
            (Some(_), Some(_)) => bail!("--step-rps must be a positive number"),
            _ => bail!("--step-at and --step-rps go together"),
        };
        let arrivals = over.arrivals.unwrap_or_default();
        if rps.is_none() && (step.is_some() || arrivals != Arrivals::Uniform) {
            bail!("--arrivals poisson and --step-at/--step-rps need an open loop (--rps)");
        }
        Ok(Settings {
            protocol,
            target,
            stop,
            concurrency,
            rps,
            connections,
            timeout,
            cpus: over.cpus.or(config.cpus).filter(|&c| c > 0),
            metadata: config.metadata.clone(),
            arrivals,
            seed: over.seed.unwrap_or(DEFAULT_SEED),
            step,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &[(&str, &str)] = &[
        ("ghz/mlp.json", include_str!("../ghz/mlp.json")),
        ("ghz/cnn.json", include_str!("../ghz/cnn.json")),
        ("ghz/text.json", include_str!("../ghz/text.json")),
        ("ghz/mixed.json", include_str!("../ghz/mixed.json")),
        ("scenarios/mlp-steady.json", include_str!("../scenarios/mlp-steady.json")),
        ("scenarios/mlp-overload.json", include_str!("../scenarios/mlp-overload.json")),
    ];

    #[test]
    fn shipped_configs_parse_and_build_requests() {
        for (name, text) in SHIPPED {
            let config = GhzConfig::parse(text).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(config.ignored.is_empty(), "{name}: unknown keys {:?}", config.ignored);
            let settings = Settings::resolve(&config, &Overrides::default()).unwrap();
            assert_eq!(settings.target, "127.0.0.1:8001".parse().unwrap(), "{name}");
            assert!(settings.stop.total.is_some() || settings.stop.duration.is_some(), "{name}");
            let requests = crate::request::build(&config.data).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            for request in &requests {
                crate::http::encode(request).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            }
        }
    }

    #[test]
    fn scenarios_are_closed_and_open_loop() {
        let steady = GhzConfig::parse(include_str!("../scenarios/mlp-steady.json")).unwrap();
        let steady = Settings::resolve(&steady, &Overrides::default()).unwrap();
        assert_eq!((steady.concurrency, steady.rps), (8, None));
        let overload = GhzConfig::parse(include_str!("../scenarios/mlp-overload.json")).unwrap();
        let overload = Settings::resolve(&overload, &Overrides::default()).unwrap();
        assert!(overload.rps.is_some());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("100us").unwrap(), Duration::from_micros(100));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "10", "s", "10x", "-1s", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_loopback_hosts_are_accepted() {
        assert_eq!(loopback_address("127.0.0.1:8001").unwrap(), "127.0.0.1:8001".parse().unwrap());
        assert_eq!(loopback_address("127.3.2.1:1").unwrap(), "127.3.2.1:1".parse().unwrap());
        assert_eq!(loopback_address("[::1]:8001").unwrap(), "[::1]:8001".parse().unwrap());
        assert_eq!(loopback_address("localhost:8000").unwrap(), "127.0.0.1:8000".parse().unwrap());
        assert_eq!(loopback_address("http://127.0.0.1:8000/").unwrap(), "127.0.0.1:8000".parse().unwrap());
        assert_eq!(loopback_address("[::ffff:127.0.0.1]:80").unwrap(), "127.0.0.1:80".parse().unwrap());
        for remote in
            ["10.0.0.1:8001", "0.0.0.0:8001", "[::]:8001", "example.com:8001", "192.168.1.2:80", "https://127.0.0.1:1"]
        {
            let err = loopback_address(remote).unwrap_err().to_string();
            assert!(err.contains("refusing"), "{remote}: {err}");
        }
        assert!(loopback_address("127.0.0.1").is_err());
        assert!(loopback_address("localhost:http").is_err());
    }

    #[test]
    fn overrides_replace_config_values() {
        let config = GhzConfig::parse(include_str!("../ghz/mlp.json")).unwrap();
        let over = Overrides {
            duration: Some(Duration::from_secs(3)),
            concurrency: Some(64),
            rps: Some(500.0),
            protocol: Some(Protocol::Http),
            ..Overrides::default()
        };
        let s = Settings::resolve(&config, &over).unwrap();
        assert_eq!(s.stop, Stop { total: None, duration: Some(Duration::from_secs(3)) });
        assert_eq!((s.concurrency, s.rps, s.connections), (64, Some(500.0), 4));
        assert_eq!(s.target, "127.0.0.1:8000".parse().unwrap());
        let remote = Overrides { host: Some("10.1.2.3:8001".into()), ..Overrides::default() };
        assert!(Settings::resolve(&config, &remote).is_err());
    }

    #[test]
    fn arrivals_and_steps_need_an_open_loop() {
        let config = GhzConfig::parse(include_str!("../ghz/mlp.json")).unwrap();
        let open = Overrides {
            rps: Some(100.0),
            arrivals: Some(Arrivals::Poisson),
            step_at: Some(Duration::from_secs(4)),
            step_rps: Some(2500.0),
            ..Overrides::default()
        };
        let s = Settings::resolve(&config, &open).unwrap();
        assert_eq!((s.arrivals, s.seed), (Arrivals::Poisson, DEFAULT_SEED));
        assert_eq!(s.step, Some(Step { at: Duration::from_secs(4), rps: 2500.0 }));
        let err = |over: Overrides| Settings::resolve(&config, &over).unwrap_err().to_string();
        assert!(err(Overrides { rps: None, ..open }).contains("open loop"));
        let half = Overrides { step_rps: None, rps: Some(100.0), ..Overrides::default() };
        assert!(err(Overrides { step_at: Some(Duration::from_secs(1)), ..half }).contains("go together"));
        let zero =
            Overrides { rps: Some(1.0), step_at: Some(Duration::ZERO), step_rps: Some(0.0), ..Overrides::default() };
        assert!(err(zero).contains("positive"));
        let plain = Settings::resolve(&config, &Overrides::default()).unwrap();
        assert_eq!((plain.arrivals, plain.step), (Arrivals::Uniform, None));
    }

    #[test]
    fn bad_configs_are_explained() {
        let err = |text: &str| format!("{:#}", GhzConfig::parse(text).unwrap_err());
        assert!(err("[]").contains("JSON object"));
        assert!(err(r#"{"data": {}}"#).contains("\"call\" is missing"));
        assert!(err(r#"{"call": "x"}"#).contains("\"data\" is missing"));
        assert!(err(r#"{"call": "x", "data": {}, "total": -1}"#).contains("non-negative integer"));
        assert!(err(r#"{"call": "x", "data": {}, "duration": "soon"}"#).contains("not a duration"));
        let other = GhzConfig::parse(r#"{"call": "helloworld.Greeter.SayHello", "data": {}}"#).unwrap();
        assert!(Settings::resolve(&other, &Overrides::default()).is_err());
    }
}
