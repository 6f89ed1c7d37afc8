//! The server's request path in process, for counting instructions under
//! callgrind: an encoded request goes through the front's own service
//! (tonic's gRPC routes, or the HTTP router), the repository, the scheduler
//! and the instance thread, and comes back encoded. Only the sockets and
//! the HTTP/2 framing are left out.
//!
//!     cargo bench --bench instructions -- [--model mlp] [--requests 1000]
//!         [--transport grpc|http-binary|http-json]
//!
//! loadtests/instructions.py runs it twice under valgrind with different
//! request counts and divides the difference: start-up and model loading
//! cancel out, and ONNX Runtime's own instructions are counted apart.

use bytes::{BufMut, Bytes, BytesMut};
use clap::Parser;
use ferroserve::config::Config;
use ferroserve::pb;
use http_body_util::{BodyExt, Full};
use prost::Message;
use std::path::Path;
use tower::ServiceExt;

/// The server's allocator, so that what is counted is what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Grpc,
    HttpBinary,
    HttpJson,
}

struct Args {
    model: String,
    requests: usize,
    transport: Transport,
}

fn parse_args() -> Args {
    let mut args = Args { model: "mlp".into(), requests: 1000, transport: Transport::Grpc };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => args.model = value(),
            "--requests" => args.requests = value().parse().expect("--requests: a count"),
            "--transport" => {
                args.transport = match value().as_str() {
                    "grpc" => Transport::Grpc,
                    "http-binary" => Transport::HttpBinary,
                    "http-json" => Transport::HttpJson,
                    other => panic!("--transport: grpc, http-binary or http-json, not {other}"),
                }
            }
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// The model's first input (name, dims after the batch dim) from its
/// config, dynamic dims taken as 1.
fn request_for(state: &ferroserve::server::State, model: &str) -> (String, Vec<i64>) {
    let version = state.repository.get(model, "").expect("the model is loaded");
    let input = &version.config.input[0];
    (input.name.clone(), input.dims.iter().map(|&d| d.max(1)).collect())
}

fn grpc_frame(model: &str, name: &str, shape: &[i64], raw: Vec<u8>) -> Bytes {
    let request = pb::ModelInferRequest {
        model_name: model.into(),
        id: "instructions".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: "FP32".into(),
            shape: shape.to_vec(),
            ..Default::default()
        }],
        raw_input_contents: vec![Bytes::from(raw)],
        ..Default::default()
    };
    let message = request.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(&message);
    frame.freeze()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating the temporary repository");
    for entry in std::fs::read_dir(from).expect("reading the model folder") {
        let entry = entry.expect("reading the model folder");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copying a model file");
        }
    }
}

fn main() {
    let args = parse_args();
    let repository = tempfile::tempdir().expect("a temporary folder");
    copy_dir(&Path::new("models").join(&args.model), &repository.path().join(&args.model));
    let config = Config::parse_from(["ferroserve", "--model-repository", &repository.path().to_string_lossy()]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(async {
        let (state, _metrics) = ferroserve::server::prepare(&config).expect("preparing the server");
        ferroserve::server::load_initial(&state.repository, &config).await;
        state.repository.set_ready(true);
        let (name, dims) = request_for(&state, &args.model);
        let mut shape = vec![1];
        shape.extend(&dims);
        let elements: i64 = dims.iter().product();
        let raw: Vec<u8> = (0..elements).flat_map(|_| 0.5f32.to_le_bytes()).collect();
        let grpc = ferroserve::api::grpc::service(state.clone());
        let http = ferroserve::api::http::router(state.clone());
        let path = format!("/v2/models/{}/infer", args.model);
        let binary_header =
            format!(r#"{{"inputs":[{{"name":"{name}","shape":{shape:?},"datatype":"FP32","parameters":{{"binary_data_size":{}}}}}]}}"#, raw.len());
        let json = format!(
            r#"{{"inputs":[{{"name":"{name}","shape":{shape:?},"datatype":"FP32","data":[{}]}}]}}"#,
            vec!["0.5"; elements as usize].join(",")
        );
        let frame = grpc_frame(&args.model, &name, &shape, raw.clone());
        let mut binary = BytesMut::from(binary_header.as_bytes());
        binary.put_slice(&raw);
        let binary = binary.freeze();
        for _ in 0..args.requests {
            let builder = axum::http::Request::builder().method("POST");
            match args.transport {
                Transport::Grpc => {
                    let request = builder
                        .uri("/inference.GRPCInferenceService/ModelInfer")
                        .header("content-type", "application/grpc")
                        .header("te", "trailers")
                        .body(Full::new(frame.clone()))
                        .expect("a request");
                    let response = grpc.clone().oneshot(request).await.expect("routes never fail");
                    let collected = response.into_body().collect().await.expect("the body");
                    let status = collected.trailers().and_then(|t| t.get("grpc-status")).map(|s| s.as_bytes().to_vec());
                    assert_eq!(status.as_deref(), Some(&b"0"[..]), "the call failed");
                    assert!(collected.to_bytes().len() > 5, "no message in the answer");
                }
                Transport::HttpBinary | Transport::HttpJson => {
                    let (body, header) = if args.transport == Transport::HttpBinary {
                        (binary.clone(), Some(binary_header.len()))
                    } else {
                        (Bytes::from(json.clone()), None)
                    };
                    let mut builder = builder.uri(&path).header("content-type", "application/json");
                    if let Some(length) = header {
                        builder = builder.header(ferroserve::api::http::HEADER_LENGTH, length);
                    }
                    let request = builder.body(axum::body::Body::new(Full::new(body))).expect("a request");
                    let response = http.clone().oneshot(request).await.expect("the router never fails");
                    assert_eq!(response.status(), 200, "the request failed");
                    let body = response.into_body().collect().await.expect("the body").to_bytes();
                    assert!(!body.is_empty());
                }
            }
        }
        println!("{{\"requests\": {}}}", args.requests);
    });
}
