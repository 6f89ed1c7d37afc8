//! In-process ONNX Runtime through ferroserve's own `runtime` module, with
//! no server in between: the floor that server latency is compared against.
//!
//!     cargo bench --bench runtime            # mlp at batch 1, 8, 32
//!
//! Needs the ONNX Runtime library (deploy/setup.sh ort).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ferroserve::runtime::{ModelThreads, RunInput, Runtime, SessionOptions, locate_library};
use ferroserve::tensor::DataType;
use std::path::Path;

fn mlp(c: &mut Criterion) {
    let library = locate_library(None).expect("ONNX Runtime library (run deploy/setup.sh ort)");
    let runtime = Runtime::init(&library).expect("initialising ONNX Runtime");
    let options = SessionOptions {
        intra_op_threads: 1,
        inter_op_threads: 1,
        spinning: true,
        spin_between_runs: false,
        prepacked: Default::default(),
        threads: ModelThreads::new("bench-pool".into()),
    };
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mlp/1/model.onnx");
    let mut session = runtime.load(&model, &options).expect("loading models/mlp");
    let mut group = c.benchmark_group("inprocess_mlp");
    for batch in [1i64, 8, 32] {
        let data: Vec<u8> = (0..batch * 16).flat_map(|i| (i as f32 / 100.0).to_le_bytes()).collect();
        let shape = [batch, 16];
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, _| {
            b.iter(|| {
                let parts = [&data[..]];
                let input = RunInput { name: "input", datatype: DataType::Fp32, shape: &shape, parts: &parts };
                session.run(&[input]).expect("mlp runs")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, mlp);
criterion_main!(benches);
