//! `ferroserve plan`: asks a running server what each model sustains
//! within its latency SLO (`GET /v2/models/{m}/capacity`) and prints it as
//! a table, with the replicas a target rate needs. The server does the
//! arithmetic from its live cost model; this only asks and prints.

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::Value;
use std::time::Duration;

/// Capacity planning from a running ferroserve's own measurements.
#[derive(Debug, Parser)]
#[command(name = "ferroserve plan")]
pub struct Plan {
    /// The server's HTTP address.
    #[arg(long, env = "FERROSERVE_URL", default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Models to plan for (repeatable); every model the server lists when
    /// none is named.
    #[arg(long = "model")]
    models: Vec<String>,
    /// The request rate to size for: prints the replicas it needs.
    #[arg(long)]
    target_rps: Option<f64>,
    /// An API key with the statistics group, when the server asks for one.
    #[arg(long, env = "FERROSERVE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A PEM file of the CA that signed an https server's certificate.
    #[arg(long)]
    ca_cert: Option<std::path::PathBuf>,
    /// Print the server's JSON answers instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `ferroserve plan` with `args` (the words after `plan`).
pub fn main(args: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
    let plan = Plan::parse_from(std::iter::once("ferroserve plan".to_string()).chain(args));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(plan.run())
}

impl Plan {
    async fn run(&self) -> anyhow::Result<()> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut client = reqwest_for_object_store::Client::builder().timeout(Duration::from_secs(30));
        if let Some(path) = &self.ca_cert {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            client = client.add_root_certificate(reqwest_for_object_store::Certificate::from_pem(&pem)?);
        }
        let client = client.build()?;
        let base = self.url.trim_end_matches('/');
        let get = |path: String| {
            let mut request = client.get(format!("{base}{path}"));
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            async move {
                let response = request.send().await.with_context(|| format!("asking {base}{path}"))?;
                let status = response.status();
                let bytes = response.bytes().await.with_context(|| format!("reading {base}{path}"))?;
                let body: Value =
                    serde_json::from_slice(&bytes).with_context(|| format!("{path} did not answer JSON ({status})"))?;
                if !status.is_success() {
                    bail!("{path}: {status}: {}", body["error"].as_str().unwrap_or("no error message"));
                }
                Ok::<Value, anyhow::Error>(body)
            }
        };
        let models = if self.models.is_empty() {
            let listed = get("/v2/models".into()).await?;
            listed["models"].as_array().into_iter().flatten().filter_map(|m| m.as_str().map(String::from)).collect()
        } else {
            self.models.clone()
        };
        let query = self.target_rps.map(|t| format!("?target_rps={t}")).unwrap_or_default();
        let mut rows = Vec::new();
        let mut method = None;
        for model in &models {
            let answer = match get(format!("/v2/models/{model}/capacity{query}")).await {
                Ok(answer) => answer,
                Err(e) if self.models.is_empty() => {
                    eprintln!("{model}: {e:#}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            if self.json {
                println!("{answer}");
                continue;
            }
            method.get_or_insert_with(|| {
                format!(
                    "{} cores. Overhead: the server's CPU per request outside the model; marginal: one more \
                     request on an awake worker; busy_mean: the version's mean on the workers; mean: the \
                     server's mean at today's load.\nMethod: {}",
                    answer["cores"],
                    answer["method"].as_str().unwrap_or_default()
                )
            });
            for v in answer["versions"].as_array().into_iter().flatten() {
                rows.push(row(model, v, self.target_rps.is_some()));
            }
        }
        if !self.json {
            print_table(&rows, self.target_rps);
            if let Some(method) = method {
                println!("\n{method}");
            }
        }
        Ok(())
    }
}

fn row(model: &str, v: &Value, target: bool) -> Vec<String> {
    let number = |key: &str, digits: usize| v[key].as_f64().map_or("-".into(), |x| format!("{x:.digits$}"));
    let mut row = vec![
        model.to_string(),
        v["version"].as_str().unwrap_or_default().to_string(),
        number("max_rps", 1),
        v["limited_by"].as_str().unwrap_or_default().to_string(),
        number("batch_size", 1),
        number("latency_target_ms", 1),
        number("current_rps", 1),
        v["utilisation"].as_f64().map_or("-".into(), |u| format!("{:.0}%", 100.0 * u)),
        number("headroom_rps", 1),
        format!(
            "{:.0} us {}",
            v["overhead_us_per_request"].as_f64().unwrap_or_default(),
            v["overhead_source"].as_str().unwrap_or_default()
        ),
    ];
    if target {
        row.push(v["replicas_for_target"].as_u64().map_or("-".into(), |r| r.to_string()));
    }
    row
}

fn print_table(rows: &[Vec<String>], target: Option<f64>) {
    let mut header: Vec<String> =
        ["MODEL", "VERSION", "MAX RPS", "LIMITED BY", "BATCH", "TARGET MS", "NOW RPS", "UTIL", "HEADROOM", "OVERHEAD"]
            .map(String::from)
            .to_vec();
    if let Some(target) = target {
        header.push(format!("REPLICAS FOR {target}/s"));
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|i| rows.iter().chain([&header]).map(|r| r[i].len()).max().unwrap_or(0)).collect();
    for r in [&header].into_iter().chain(rows) {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        println!("{}", cells.join("  ").trim_end());
    }
}
