//! The request hot path without a model: protobuf decode of a
//! ModelInferRequest into tensors, batch assembly (the one copy into the
//! batch buffer), and the split of a batch output back per request.
//!
//!     cargo bench --bench hot_path

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferroserve::api::grpc::decode_request;
use ferroserve::pb;
use ferroserve::scheduler::batch::split;
use ferroserve::tensor::{AlignedBuffer, DataType, Tensor};
use prost::Message;

/// An encoded ModelInferRequest for the mlp: `rows` x 16 FP32 in raw form.
fn encoded_request(rows: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..rows * 16).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let request = pb::ModelInferRequest {
        model_name: "mlp".into(),
        id: "bench".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![rows as i64, 16],
            ..Default::default()
        }],
        raw_input_contents: vec![Bytes::from(data)],
        ..Default::default()
    };
    request.encode_to_vec()
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for rows in [1usize, 32] {
        let bytes = Bytes::from(encoded_request(rows));
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(rows), &bytes, |b, bytes| {
            b.iter(|| {
                let request = pb::ModelInferRequest::decode(bytes.clone()).expect("valid protobuf");
                decode_request(request, None).expect("valid request")
            })
        });
    }
    group.finish();
}

fn assemble(c: &mut Criterion) {
    let mut group = c.benchmark_group("assemble");
    let request: Vec<u8> = (0..16).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let mut buffer = AlignedBuffer::default();
    for batch in [1usize, 8, 32] {
        let parts: Vec<&[u8]> = (0..batch).map(|_| &request[..]).collect();
        group.throughput(Throughput::Bytes((batch * request.len()) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &parts, |b, parts| {
            b.iter(|| buffer.fill(parts).len())
        });
    }
    group.finish();
}

fn split_outputs(c: &mut Criterion) {
    let mut group = c.benchmark_group("split");
    for batch in [8usize, 32] {
        let data: Vec<u8> = (0..batch * 10).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let output = Tensor {
            name: "probabilities".into(),
            datatype: DataType::Fp32,
            shape: vec![batch as i64, 10],
            data: Bytes::from(data),
        };
        let rows = vec![1usize; batch];
        group.bench_with_input(BenchmarkId::from_parameter(batch), &output, |b, output| {
            b.iter(|| split(vec![output.clone()], &rows, true).expect("splits"))
        });
    }
    group.finish();
}

criterion_group!(benches, decode, assemble, split_outputs);
criterion_main!(benches);
