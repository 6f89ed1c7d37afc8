//! In-process ONNX Runtime, through ferroserve's own `runtime` module with no
//! server in between: the limit the server's figures are compared against.
//! Prints JSON (one object per model and batch size) for loadtests/bench.sh.
//!
//!     cargo bench --bench inprocess -- [--models mlp,cnn] [--batches 1,8,16,32] [--seconds 3]
//!
//! Threads per session follow the model's config as the server does:
//! `intra_op_thread_count`, else cores ÷ instances.

use ferroserve::repository::config;
use ferroserve::runtime::{ModelThreads, RunInput, Runtime, SessionOptions, locate_library};
use ferroserve::tensor::{DataType, encode_bytes_elements};
use std::path::Path;
use std::time::{Duration, Instant};

struct Args {
    models: Vec<String>,
    batches: Vec<i64>,
    seconds: f64,
}

fn parse_args() -> Args {
    let mut args = Args {
        models: vec!["mlp".into(), "cnn".into(), "text".into(), "mixed".into()],
        batches: vec![1, 8, 16, 32],
        seconds: 3.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--models" => args.models = value().split(',').map(str::to_string).collect(),
            "--batches" => {
                args.batches = value().split(',').map(|b| b.parse().expect("batch sizes are numbers")).collect()
            }
            "--seconds" => args.seconds = value().parse().expect("--seconds takes a number"),
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// `count` ordinary values of `datatype` (normal floats: denormals would
/// make the figures lie).
fn sample_data(datatype: DataType, count: usize) -> Vec<u8> {
    let value = |i: usize| (i % 13) as f32 / 13.0 - 0.5;
    match datatype {
        DataType::Bool => (0..count).map(|i| (i % 2) as u8).collect(),
        DataType::Fp32 => (0..count).flat_map(|i| value(i).to_le_bytes()).collect(),
        DataType::Fp64 => (0..count).flat_map(|i| f64::from(value(i)).to_le_bytes()).collect(),
        DataType::Fp16 => (0..count).flat_map(|i| half::f16::from_f32(value(i)).to_le_bytes()).collect(),
        DataType::Bf16 => (0..count).flat_map(|i| half::bf16::from_f32(value(i)).to_le_bytes()).collect(),
        DataType::Bytes => encode_bytes_elements((0..count).map(|_| &b"fox"[..])),
        other => {
            let size = other.byte_size().expect("fixed-size type");
            (0..count).flat_map(|i| (i as u64 % 7).to_le_bytes()[..size].to_vec()).collect()
        }
    }
}

fn main() {
    let args = parse_args();
    let library = locate_library(None).expect("ONNX Runtime library (run deploy/setup.sh ort)");
    let runtime = Runtime::init(&library).expect("initialising ONNX Runtime");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut results = Vec::new();
    for model in &args.models {
        let dir = root.join(model);
        let text = std::fs::read_to_string(dir.join("config.pbtxt")).unwrap_or_default();
        let cfg = config::parse(&text).expect("a valid config.pbtxt");
        let max_batch = cfg.max_batch_size.max(1) as i64;
        let threads = config::parameter(&cfg, "intra_op_thread_count")
            .unwrap_or_else(|| (cores / config::instance_count(&cfg)).max(1));
        let options = SessionOptions {
            intra_op_threads: threads,
            inter_op_threads: 1,
            spinning: true,
            spin_between_runs: false,
            prepacked: Default::default(),
            threads: ModelThreads::new("bench-pool".into()),
        };
        let mut session = runtime.load(&dir.join("1/model.onnx"), &options).expect("loading the model");
        for &batch in args.batches.iter().filter(|&&b| b <= max_batch) {
            let samples: Vec<(String, DataType, Vec<i64>, Vec<u8>)> = session
                .inputs
                .iter()
                .map(|spec| {
                    let mut shape: Vec<i64> = spec.dims.iter().map(|&d| if d < 0 { 3 } else { d }).collect();
                    shape[0] = batch;
                    let count: i64 = shape.iter().product();
                    let data = sample_data(spec.datatype, count as usize);
                    (spec.name.clone(), spec.datatype, shape, data)
                })
                .collect();
            let parts: Vec<[&[u8]; 1]> = samples.iter().map(|s| [&s.3[..]]).collect();
            let inputs: Vec<RunInput<'_>> = samples
                .iter()
                .zip(&parts)
                .map(|(s, parts)| RunInput { name: &s.0, datatype: s.1, shape: &s.2, parts })
                .collect();
            for _ in 0..20 {
                session.run(&inputs).expect("warm-up run");
            }
            let mut latencies = Vec::new();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs_f64(args.seconds) {
                let t = Instant::now();
                session.run(&inputs).expect("model runs");
                latencies.push(t.elapsed());
            }
            let elapsed = started.elapsed().as_secs_f64();
            latencies.sort();
            let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
            results.push(format!(
                "{{\"model\":\"{model}\",\"batch\":{batch},\"threads\":{threads},\"runs\":{},\"infer_per_sec\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1}}}",
                latencies.len(),
                latencies.len() as f64 * batch as f64 / elapsed,
                pct(0.50),
                pct(0.99)
            ));
        }
    }
    println!("[\n  {}\n]", results.join(",\n  "));
}
