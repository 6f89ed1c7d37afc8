//! gRPC ModelInfer / ModelStreamInfer against the real server: every data
//! type round-trips, models compute what they should, bad requests are
//! refused with precise messages, and statistics count what happened.

mod common;
mod grpc_support;

use common::{Server, shipped_models, temp_repository, test_models};
use ferroserve::pb;
use ferroserve::pb::model_infer_request::InferInputTensor;
use grpc_support::*;
use tonic::Code;

// ---------------------------------------------------------------- datatypes

/// One identity_all input: its type suffix, wire datatype, shape (batch 2),
/// typed contents (None for FP16/BF16) and the raw bytes both forms mean.
struct Case {
    suffix: &'static str,
    datatype: &'static str,
    shape: Vec<i64>,
    contents: Option<pb::InferTensorContents>,
    raw: Vec<u8>,
}

fn le<T: Copy, const N: usize>(values: &[T], to_le: fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to_le(v)).collect()
}

/// Edge values of every type identity_all accepts.
fn datatype_cases() -> Vec<Case> {
    use pb::InferTensorContents as C;
    let d = C::default;
    let bools = [true, false, false, true];
    let u8s = [0u8, 1, 127, 128, 254, u8::MAX];
    let u16s = [0u16, 1, 0x7fff, 0x8000, 12345, u16::MAX];
    let u32s = [0u32, 1, 0x8000_0000, u32::MAX];
    let u64s = [0u64, 1, 1 << 63, u64::MAX];
    let i8s = [i8::MIN, -1, 0, 1, 42, i8::MAX];
    let i16s = [i16::MIN, -1, 0, i16::MAX];
    let i32s = [i32::MIN, -1, 0, i32::MAX];
    let i64s = [i64::MIN, -1, 0, i64::MAX];
    let f32s = [
        0.0f32,
        -0.0,
        1.5,
        f32::MAX,
        f32::MIN_POSITIVE,
        f32::from_bits(1), // smallest subnormal
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::from_bits(0xffc0_1234), // negative NaN with a payload
    ];
    let f64s = [
        0.0f64,
        -0.0,
        -2.25,
        f64::MAX,
        f64::MIN_POSITIVE,
        f64::from_bits(1),
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        f64::from_bits(0x7ff8_0000_dead_beef),
    ];
    // FP16 / BF16 bit patterns: 0, -0, 1, +inf, -inf, NaN, smallest subnormal, max.
    let f16_bits = [0x0000u16, 0x8000, 0x3c00, 0x7c00, 0xfc00, 0x7e00, 0x0001, 0x7bff];
    let bf16_bits = [0x0000u16, 0x8000, 0x3f80, 0x7f80, 0xff80, 0x7fc0, 0x0001, 0x7f7f];
    let long = "ß".repeat(300); // element longer than 255 bytes
    let strings: Vec<&[u8]> =
        vec![b"", b"plain ascii", "h\u{e9}llo w\u{f6}rld".as_bytes(), "日本語 😀".as_bytes(), b" ", long.as_bytes()];
    let f32_raw = le(&f32s, f32::to_le_bytes);
    let f64_raw = le(&f64s, f64::to_le_bytes);
    let case = |suffix, datatype, shape: &[i64], contents, raw| Case {
        suffix,
        datatype,
        shape: shape.to_vec(),
        contents,
        raw,
    };
    vec![
        case(
            "bool",
            "BOOL",
            &[2, 2],
            Some(C { bool_contents: bools.to_vec(), ..d() }),
            bools.iter().map(|&b| u8::from(b)).collect(),
        ),
        case(
            "uint8",
            "UINT8",
            &[2, 3],
            Some(C { uint_contents: u8s.iter().map(|&v| v.into()).collect(), ..d() }),
            u8s.to_vec(),
        ),
        case(
            "uint16",
            "UINT16",
            &[2, 3],
            Some(C { uint_contents: u16s.iter().map(|&v| v.into()).collect(), ..d() }),
            le(&u16s, u16::to_le_bytes),
        ),
        case("uint32", "UINT32", &[2, 2], Some(C { uint_contents: u32s.to_vec(), ..d() }), le(&u32s, u32::to_le_bytes)),
        case(
            "uint64",
            "UINT64",
            &[2, 2],
            Some(C { uint64_contents: u64s.to_vec(), ..d() }),
            le(&u64s, u64::to_le_bytes),
        ),
        case(
            "int8",
            "INT8",
            &[2, 3],
            Some(C { int_contents: i8s.iter().map(|&v| v.into()).collect(), ..d() }),
            le(&i8s, i8::to_le_bytes),
        ),
        case(
            "int16",
            "INT16",
            &[2, 2],
            Some(C { int_contents: i16s.iter().map(|&v| v.into()).collect(), ..d() }),
            le(&i16s, i16::to_le_bytes),
        ),
        case("int32", "INT32", &[2, 2], Some(C { int_contents: i32s.to_vec(), ..d() }), le(&i32s, i32::to_le_bytes)),
        case("int64", "INT64", &[2, 2], Some(C { int64_contents: i64s.to_vec(), ..d() }), le(&i64s, i64::to_le_bytes)),
        case("fp16", "FP16", &[2, 4], None, le(&f16_bits, u16::to_le_bytes)),
        case("fp32", "FP32", &[2, 5], Some(C { fp32_contents: f32s.to_vec(), ..d() }), f32_raw),
        case("fp64", "FP64", &[2, 5], Some(C { fp64_contents: f64s.to_vec(), ..d() }), f64_raw),
        case(
            "bytes",
            "BYTES",
            &[2, 3],
            Some(C { bytes_contents: strings.iter().map(|s| s.to_vec().into()).collect(), ..d() }),
            bytes_wire(&strings),
        ),
        case("bf16", "BF16", &[2, 4], None, le(&bf16_bits, u16::to_le_bytes)),
    ]
}

fn identity_server() -> (tempfile::TempDir, Server) {
    let repo = temp_repository(&[(&test_models(), "identity_all")]);
    let server = Server::start(repo.path(), &[]);
    (repo, server)
}

/// Each out_<t> has in_<t>'s datatype and shape and exactly `expected` bytes.
#[track_caller]
fn check_identity(response: &pb::ModelInferResponse, cases: &[Case], expected: impl Fn(&Case) -> (Vec<i64>, Vec<u8>)) {
    assert_eq!(response.outputs.len(), cases.len(), "outputs: {:?}", output_names(response));
    for case in cases {
        let (shape, bytes) = expected(case);
        let (datatype, got_shape, got) = output(response, &format!("out_{}", case.suffix));
        assert_eq!(datatype, case.datatype, "datatype of out_{}", case.suffix);
        assert_eq!(got_shape, shape, "shape of out_{}", case.suffix);
        assert_eq!(got, bytes, "bytes of out_{} (compared bitwise)", case.suffix);
    }
}

#[tokio::test]
async fn every_datatype_round_trips_through_raw_and_typed_contents() {
    let (_repo, server) = identity_server();
    let mut client = server.grpc_client().await;
    let cases = datatype_cases();

    // raw_input_contents for every input.
    let request = raw_request(
        "identity_all",
        cases.iter().map(|c| (input(&format!("in_{}", c.suffix), c.datatype, &c.shape), c.raw.clone())).collect(),
    );
    let response = client.model_infer(request).await.unwrap().into_inner();
    assert_eq!(response.model_name, "identity_all");
    assert_eq!(response.model_version, "1");
    check_identity(&response, &cases, |c| (c.shape.clone(), c.raw.clone()));

    // Typed contents for every type that has a field. Raw and typed cannot be
    // mixed in one request, so FP16 / BF16 go as zero-element tensors.
    let inputs: Vec<InferInputTensor> = cases
        .iter()
        .map(|c| match &c.contents {
            Some(contents) => typed(&format!("in_{}", c.suffix), c.datatype, &c.shape, contents.clone()),
            None => typed(&format!("in_{}", c.suffix), c.datatype, &[2, 0], Default::default()),
        })
        .collect();
    let response = client.model_infer(typed_request("identity_all", inputs)).await.unwrap().into_inner();
    check_identity(&response, &cases, |c| match c.contents {
        Some(_) => (c.shape.clone(), c.raw.clone()),
        None => (vec![2, 0], Vec::new()),
    });

    // A typed value that does not fit its narrower type is refused.
    let mut inputs: Vec<InferInputTensor> =
        cases.iter().map(|c| typed(&format!("in_{}", c.suffix), c.datatype, &[1, 0], Default::default())).collect();
    inputs[1] =
        typed("in_uint8", "UINT8", &[1, 1], pb::InferTensorContents { uint_contents: vec![256], ..Default::default() });
    let result = client.model_infer(typed_request("identity_all", inputs)).await;
    expect_error(result, Code::InvalidArgument, &["in_uint8", "256", "UINT8"]);
}

// ---------------------------------------------------------------- numerics

#[tokio::test]
async fn shipped_models_compute_the_expected_values() {
    let server = Server::start(&shipped_models(), &[]);
    let mut client = server.grpc_client().await;

    // mlp: rows are probability distributions; the request id is echoed.
    let mut request = mlp_request(3);
    request.id = "req-42".into();
    let response = client.model_infer(request).await.unwrap().into_inner();
    assert_eq!(
        (response.id.as_str(), response.model_name.as_str(), response.model_version.as_str()),
        ("req-42", "mlp", "1")
    );
    check_mlp_response(&response, 3);

    // mixed: values computed here.
    let a = [1.5f32, -2.0, 0.25, 100.0, 0.0, -0.5, 3.0, 7.75];
    let b = [1i32, 2, -3, 4, i32::MAX, 0, -100, 5];
    let mask = [true, false, true, true, false, false, false, true];
    let mixed = |outputs_wanted: &[&str]| pb::ModelInferRequest {
        outputs: outputs(outputs_wanted),
        ..raw_request(
            "mixed",
            vec![
                (input("a", "FP32", &[2, 4]), f32_bytes(&a)),
                (input("b", "INT32", &[2, 4]), b.iter().flat_map(|v| v.to_le_bytes()).collect()),
                (input("mask", "BOOL", &[2, 4]), mask.iter().map(|&m| u8::from(m)).collect()),
            ],
        )
    };
    let response = client.model_infer(mixed(&[])).await.unwrap().into_inner();
    assert_eq!(output_names(&response), ["sum", "masked", "count"]);
    let (dt, shape, sum) = output(&response, "sum");
    assert_eq!((dt, shape), ("FP32", &[2i64, 4][..]));
    let expected: Vec<f32> = a.iter().zip(&b).map(|(&a, &b)| a + b as f32).collect();
    assert_eq!(f32_values(sum), expected);
    let (dt, shape, masked) = output(&response, "masked");
    assert_eq!((dt, shape), ("FP64", &[2i64, 4][..]));
    let expected: Vec<f64> = a.iter().zip(&mask).map(|(&a, &m)| if m { a as f64 } else { 0.0 }).collect();
    assert_eq!(f64_values(masked), expected);
    let (dt, shape, count) = output(&response, "count");
    assert_eq!((dt, shape), ("INT64", &[2i64, 1][..]));
    assert_eq!(i64_values(count), [3, 1]);

    // Requested outputs: only those, in the order asked for.
    let response = client.model_infer(mixed(&["count"])).await.unwrap().into_inner();
    assert_eq!(output_names(&response), ["count"]);
    assert_eq!(i64_values(output(&response, "count").2), [3, 1]);
    let response = client.model_infer(mixed(&["masked", "sum"])).await.unwrap().into_inner();
    assert_eq!(output_names(&response), ["masked", "sum"]);

    // text: vocabulary ids (unknown -> 0), words echoed; raw and typed agree.
    let words: [&[u8]; 6] = [b"the", b"quick", b"zebra", b"hello", "w\u{f6}rld".as_bytes(), b"dog"];
    let raw = raw_request("text", vec![(input("words", "BYTES", &[2, 3]), bytes_wire(&words))]);
    let typed_words = typed_request(
        "text",
        vec![typed(
            "words",
            "BYTES",
            &[2, 3],
            pb::InferTensorContents {
                bytes_contents: words.iter().map(|w| w.to_vec().into()).collect(),
                ..Default::default()
            },
        )],
    );
    for request in [raw, typed_words] {
        let response = client.model_infer(request).await.unwrap().into_inner();
        let (dt, shape, ids) = output(&response, "ids");
        assert_eq!((dt, shape), ("INT64", &[2i64, 3][..]));
        assert_eq!(i64_values(ids), [1, 2, 0, 9, 0, 8]);
        let (dt, shape, echoed) = output(&response, "words_out");
        assert_eq!((dt, shape), ("BYTES", &[2i64, 3][..]));
        assert_eq!(echoed, bytes_wire(&words));
    }

    // cnn: a batch of images gives a batch of finite logits.
    let image: Vec<f32> = (0..2 * 3 * 32 * 32).map(|i| (i % 17) as f32 / 17.0).collect();
    let request = raw_request("cnn", vec![(input("image", "FP32", &[2, 3, 32, 32]), f32_bytes(&image))]);
    let response = client.model_infer(request).await.unwrap().into_inner();
    let (dt, shape, logits) = output(&response, "logits");
    assert_eq!((dt, shape), ("FP32", &[2i64, 10][..]));
    assert!(f32_values(logits).iter().all(|v| v.is_finite()));
}

#[tokio::test]
async fn versions_fixed_shapes_and_reshapes() {
    let repo =
        temp_repository(&[(&test_models(), "multiversion"), (&test_models(), "nobatch"), (&test_models(), "reshaped")]);
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;

    // multiversion: version v computes x + v; no version means the latest.
    let x = [0.5f32, -1.0, 10.0];
    for (version, add) in [("1", 1.0), ("2", 2.0), ("3", 3.0), ("", 3.0)] {
        let request = pb::ModelInferRequest {
            model_version: version.into(),
            ..raw_request("multiversion", vec![(input("x", "FP32", &[3, 1]), f32_bytes(&x))])
        };
        let response = client.model_infer(request).await.unwrap().into_inner();
        assert_eq!(response.model_version, if version.is_empty() { "3" } else { version });
        let (_, shape, y) = output(&response, "y");
        assert_eq!(shape, [3, 1]);
        assert_eq!(f32_values(y), x.iter().map(|v| v + add).collect::<Vec<_>>(), "version {version:?}");
    }
    let request = pb::ModelInferRequest {
        model_version: "4".into(),
        ..raw_request("multiversion", vec![(input("x", "FP32", &[1, 1]), f32_bytes(&[1.0]))])
    };
    expect_error(client.model_infer(request).await, Code::NotFound, &["'4'", "multiversion"]);

    // nobatch: exactly [2, 3], no batch dimension.
    let x = [1.0f32, 2.0, 3.0, -4.0, 0.5, 0.0];
    let response = client
        .model_infer(raw_request("nobatch", vec![(input("x", "FP32", &[2, 3]), f32_bytes(&x))]))
        .await
        .unwrap()
        .into_inner();
    let (_, shape, y) = output(&response, "y");
    assert_eq!(shape, [2, 3]);
    assert_eq!(f32_values(y), x.iter().map(|v| v * 2.0).collect::<Vec<_>>());
    let result =
        client.model_infer(raw_request("nobatch", vec![(input("x", "FP32", &[1, 2, 3]), f32_bytes(&x))])).await;
    expect_error(result, Code::InvalidArgument, &["'x'", "[2, 3]", "[1, 2, 3]"]);

    // reshaped: clients see [batch, 4] both ways although the graph runs [batch, 2, 2].
    let x: Vec<f32> = (0..12).map(|i| i as f32 - 5.5).collect();
    let response = client
        .model_infer(raw_request("reshaped", vec![(input("x", "FP32", &[3, 4]), f32_bytes(&x))]))
        .await
        .unwrap()
        .into_inner();
    let (_, shape, y) = output(&response, "y");
    assert_eq!(shape, [3, 4]);
    assert_eq!(f32_values(y), x);
    let result =
        client.model_infer(raw_request("reshaped", vec![(input("x", "FP32", &[3, 2, 2]), f32_bytes(&x))])).await;
    expect_error(result, Code::InvalidArgument, &["'x'", "[-1, 4]", "[3, 2, 2]"]);
}

// ---------------------------------------------------------------- bad input

#[tokio::test]
async fn bad_requests_are_refused_precisely_and_the_server_carries_on() {
    let repo = temp_repository(&[
        (&shipped_models(), "mlp"),
        (&shipped_models(), "mixed"),
        (&shipped_models(), "text"),
        (&test_models(), "identity_all"),
    ]);
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;
    let row = f32_bytes(&mlp_rows(1, 0.0));
    let mlp = |shape: &[i64], datatype: &str, bytes: Vec<u8>| {
        raw_request("mlp", vec![(input("input", datatype, shape), bytes)])
    };
    let fp32 = |name: &str, shape: &[i64], bytes: Vec<u8>| {
        raw_request("identity_all", vec![(input(name, "FP32", shape), bytes)])
    };
    let invalid = Code::InvalidArgument;
    let cases: Vec<(&str, pb::ModelInferRequest, Code, Vec<&str>)> = vec![
        (
            "wrong datatype",
            mlp(&[1, 16], "INT32", row.clone()),
            invalid,
            vec!["'input'", "expected datatype FP32", "received INT32"],
        ),
        (
            "wrong rank",
            mlp(&[16], "FP32", row.clone()),
            invalid,
            vec!["'input'", "expected shape [-1, 16]", "received [16]"],
        ),
        (
            "wrong dims",
            mlp(&[1, 15], "FP32", row[..60].to_vec()),
            invalid,
            vec!["'input'", "[-1, 16]", "received [1, 15]"],
        ),
        (
            "batch too large",
            mlp(&[33, 16], "FP32", f32_bytes(&mlp_rows(33, 0.0))),
            invalid,
            vec!["'input'", "33", "32"],
        ),
        ("zero batch", mlp(&[0, 16], "FP32", vec![]), invalid, vec!["'input'", "batch size 0"]),
        ("negative batch", mlp(&[-1, 16], "FP32", row.clone()), invalid, vec!["'input'", "-1"]),
        (
            "too few bytes",
            mlp(&[2, 16], "FP32", row.clone()),
            invalid,
            vec!["'input'", "needs 128 bytes", "received 64"],
        ),
        (
            "too many bytes",
            mlp(&[1, 16], "FP32", [row.clone(), vec![0]].concat()),
            invalid,
            vec!["'input'", "needs 64 bytes", "received 65"],
        ),
        ("huge batch", fp32("in_fp32", &[i64::MAX, 2], vec![]), invalid, vec!["'in_fp32'", "9223372036854775807"]),
        ("element count overflow", fp32("in_fp32", &[8, i64::MAX], vec![]), invalid, vec!["'in_fp32'", "overflows"]),
        ("byte count overflow", fp32("in_fp32", &[2, i64::MAX], vec![]), invalid, vec!["'in_fp32'", "too large"]),
        ("negative dim", fp32("in_fp32", &[1, -3], vec![]), invalid, vec!["'in_fp32'", "negative"]),
        (
            "unknown input",
            raw_request("mlp", vec![(input("bogus", "FP32", &[1, 16]), row.clone())]),
            invalid,
            vec!["unknown input 'bogus'", "'input'"],
        ),
        (
            "missing input",
            raw_request(
                "mixed",
                vec![(input("a", "FP32", &[1, 4]), f32_bytes(&[0.0; 4])), (input("b", "INT32", &[1, 4]), vec![0; 16])],
            ),
            invalid,
            vec!["missing input 'mask'", "mixed"],
        ),
        (
            "batch sizes differ",
            raw_request(
                "mixed",
                vec![
                    (input("a", "FP32", &[2, 4]), f32_bytes(&[0.0; 8])),
                    (input("b", "INT32", &[1, 4]), vec![0; 16]),
                    (input("mask", "BOOL", &[1, 4]), vec![0; 4]),
                ],
            ),
            invalid,
            vec!["'b'", "batch size 1", "2"],
        ),
        (
            "duplicate input",
            raw_request(
                "mlp",
                vec![(input("input", "FP32", &[1, 16]), row.clone()), (input("input", "FP32", &[1, 16]), row.clone())],
            ),
            invalid,
            vec!["'input'", "more than once"],
        ),
        (
            "raw count mismatch",
            pb::ModelInferRequest {
                raw_input_contents: vec![row.clone().into(), row.clone().into()],
                ..mlp(&[1, 16], "FP32", vec![])
            },
            invalid,
            vec!["raw_input_contents has 2 entries", "1 inputs"],
        ),
        (
            "unknown datatype",
            mlp(&[1, 16], "FLOAT32", row.clone()),
            invalid,
            vec!["'input'", "unknown datatype 'FLOAT32'"],
        ),
        (
            "typed contents in the wrong field",
            typed_request(
                "mlp",
                vec![typed(
                    "input",
                    "FP32",
                    &[1, 16],
                    pb::InferTensorContents { int_contents: vec![1; 16], ..Default::default() },
                )],
            ),
            invalid,
            vec!["'input'", "fp32_contents", "received int_contents"],
        ),
        (
            "both typed and raw",
            pb::ModelInferRequest {
                inputs: vec![typed(
                    "input",
                    "FP32",
                    &[1, 16],
                    pb::InferTensorContents { fp32_contents: vec![0.0; 16], ..Default::default() },
                )],
                raw_input_contents: vec![row.clone().into()],
                ..mlp(&[1, 16], "FP32", vec![])
            },
            invalid,
            vec!["'input'", "both"],
        ),
        (
            "no data at all",
            typed_request("mlp", vec![input("input", "FP32", &[1, 16])]),
            invalid,
            vec!["'input'", "no data"],
        ),
        (
            "typed FP16",
            typed_request(
                "identity_all",
                vec![typed(
                    "in_fp16",
                    "FP16",
                    &[1, 1],
                    pb::InferTensorContents { fp32_contents: vec![1.0], ..Default::default() },
                )],
            ),
            invalid,
            vec!["'in_fp16'", "raw_input_contents"],
        ),
        (
            "truncated BYTES",
            raw_request("text", vec![(input("words", "BYTES", &[1, 2]), bytes_wire(&[b"the", b"fox"])[..12].to_vec())]),
            invalid,
            vec!["'words'", "runs past the end"],
        ),
        (
            "BYTES element count",
            raw_request("text", vec![(input("words", "BYTES", &[1, 3]), bytes_wire(&[b"the", b"fox"]))]),
            invalid,
            vec!["'words'", "holds 3 BYTES elements, received 2"],
        ),
        (
            "unknown requested output",
            pb::ModelInferRequest { outputs: outputs(&["nope"]), ..mlp(&[1, 16], "FP32", row.clone()) },
            invalid,
            vec!["unknown output 'nope'", "'probabilities'"],
        ),
        (
            "unknown model",
            raw_request("no_such_model", vec![(input("input", "FP32", &[1, 16]), row.clone())]),
            Code::NotFound,
            vec!["no_such_model"],
        ),
        (
            "unknown version",
            pb::ModelInferRequest { model_version: "9".into(), ..mlp(&[1, 16], "FP32", row.clone()) },
            Code::NotFound,
            vec!["'9'", "mlp"],
        ),
        (
            "non-numeric version",
            pb::ModelInferRequest { model_version: "latest".into(), ..mlp(&[1, 16], "FP32", row.clone()) },
            Code::NotFound,
            vec!["'latest'", "mlp"],
        ),
    ];
    for (what, request, code, needles) in cases {
        let result = client.model_infer(request).await;
        match result {
            Ok(r) => panic!("{what}: expected {code:?}, got a response {:?}", output_names(r.get_ref())),
            Err(status) => {
                assert_eq!(status.code(), code, "{what}: {:?}", status.message());
                for needle in &needles {
                    assert!(
                        status.message().contains(needle),
                        "{what}: message {:?} lacks {needle:?}",
                        status.message()
                    );
                }
            }
        }
    }

    // Still healthy: a good request is answered correctly on the same connection.
    let response = client.model_infer(mlp_request(2)).await.unwrap().into_inner();
    check_mlp_response(&response, 2);
    assert!(client.server_ready(pb::ServerReadyRequest {}).await.unwrap().into_inner().ready);
}

// ---------------------------------------------------------------- streaming

#[tokio::test]
async fn stream_answers_in_order_echoes_ids_and_survives_bad_requests() {
    let repo = temp_repository(&[(&shipped_models(), "mlp"), (&test_models(), "multiversion")]);
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;
    let with_id = |id: &str, request: pb::ModelInferRequest| pb::ModelInferRequest { id: id.into(), ..request };
    let mv = |version: &str, x: f32| pb::ModelInferRequest {
        model_version: version.into(),
        ..raw_request("multiversion", vec![(input("x", "FP32", &[1, 1]), f32_bytes(&[x]))])
    };
    let requests = vec![
        with_id("first", mlp_request(1)),
        with_id("second", mv("1", 10.0)),
        with_id("bad-shape", raw_request("mlp", vec![(input("input", "FP32", &[1, 15]), f32_bytes(&[0.0; 15]))])),
        with_id("third", mv("3", 10.0)),
        with_id("bad-model", raw_request("nothing_here", vec![])),
        with_id("fourth", mlp_request(4)),
    ];
    let sent = requests.len();
    let mut stream = client.model_stream_infer(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let mut answers = Vec::new();
    while let Some(answer) = stream.message().await.unwrap() {
        answers.push(answer);
    }
    assert_eq!(answers.len(), sent, "one answer per request, then the stream ends");
    let ids: Vec<_> = answers.iter().map(|a| a.infer_response.as_ref().map_or("", |r| r.id.as_str())).collect();
    assert_eq!(ids, ["first", "second", "bad-shape", "third", "bad-model", "fourth"]);

    let ok = |i: usize| {
        assert_eq!(answers[i].error_message, "", "answer {i}");
        answers[i].infer_response.as_ref().unwrap()
    };
    check_mlp_response(ok(0), 1);
    assert_eq!(f32_values(output(ok(1), "y").2), [11.0]);
    assert_eq!(f32_values(output(ok(3), "y").2), [13.0]);
    check_mlp_response(ok(5), 4);
    assert!(
        answers[2].error_message.contains("'input'") && answers[2].error_message.contains("[1, 15]"),
        "{}",
        answers[2].error_message
    );
    assert!(answers[4].error_message.contains("nothing_here"), "{}", answers[4].error_message);
}

// ---------------------------------------------------------------- statistics

#[tokio::test]
async fn statistics_count_requests_executions_and_batch_rows() {
    let repo = temp_repository(&[(&shipped_models(), "mlp")]);
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;
    let stats = |name: &str, version: &str| pb::ModelStatisticsRequest { name: name.into(), version: version.into() };
    let before = client.model_statistics(stats("mlp", "1")).await.unwrap().into_inner().model_stats;
    assert_eq!(before.len(), 1);
    let before = &before[0];
    let success_before = before.inference_stats.as_ref().unwrap().success.unwrap().count;

    for rows in [1, 2, 5] {
        client.model_infer(mlp_request(rows)).await.unwrap();
    }
    let after = client.model_statistics(stats("mlp", "")).await.unwrap().into_inner().model_stats;
    assert_eq!(after.len(), 1);
    let after = &after[0];
    assert_eq!((after.name.as_str(), after.version.as_str()), ("mlp", "1"));
    let s = after.inference_stats.as_ref().unwrap();
    assert_eq!(s.success.unwrap().count, success_before + 3);
    assert!(s.success.unwrap().ns > 0);
    assert_eq!(s.queue.unwrap().count, before.inference_stats.as_ref().unwrap().queue.unwrap().count + 3);
    assert!(s.queue.unwrap().ns > 0, "{s:?}");
    assert!(s.compute_infer.unwrap().ns > 0, "{s:?}");
    assert_eq!(after.inference_count, before.inference_count + 8, "inference_count counts batch rows");
    assert_eq!(after.execution_count, before.execution_count + 3);
    assert!(after.last_inference > 0);
    for size in [1, 2, 5] {
        let batch = after.batch_stats.iter().find(|b| b.batch_size == size);
        assert!(batch.is_some_and(|b| b.compute_infer.unwrap().count >= 1), "batch {size}: {:?}", after.batch_stats);
    }

    // Every ready model when no name is given; unknown names are NOT_FOUND.
    let all = client.model_statistics(stats("", "")).await.unwrap().into_inner().model_stats;
    assert_eq!(all.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["mlp"]);
    expect_error(client.model_statistics(stats("nope", "")).await, Code::NotFound, &["nope"]);
    expect_error(client.model_statistics(stats("mlp", "7")).await, Code::NotFound, &["'7'"]);
}

/// Any non-zero BOOL byte is true (perf_analyzer sends random bytes), as
/// Triton reads them.
#[tokio::test]
async fn non_zero_bool_bytes_are_true() {
    let server = Server::start(&shipped_models(), &[]);
    let mut client = server.grpc_client().await;
    let a = [1.5f32, 2.5, 3.5, 4.5];
    let request = raw_request(
        "mixed",
        vec![
            (input("a", "FP32", &[1, 4]), f32_bytes(&a)),
            (input("b", "INT32", &[1, 4]), [0i32; 4].iter().flat_map(|v| v.to_le_bytes()).collect()),
            (input("mask", "BOOL", &[1, 4]), vec![0, 103, 1, 255]),
        ],
    );
    let response = client.model_infer(request).await.unwrap().into_inner();
    assert_eq!(i64_values(output(&response, "count").2), vec![3]);
    assert_eq!(f64_values(output(&response, "masked").2), vec![0.0, 2.5, 3.5, 4.5]);
}

/// A message over --max-message-bytes is refused RESOURCE_EXHAUSTED (not
/// tonic's OUT_OF_RANGE), and the connection serves on.
#[tokio::test]
async fn oversized_messages_are_resource_exhausted() {
    let server = Server::start(&shipped_models(), &["--max-message-bytes", "1000"]);
    let mut client = server.grpc_client().await;
    expect_error(client.model_infer(mlp_request(32)).await, Code::ResourceExhausted, &["too large"]);
    check_mlp_response(&client.model_infer(mlp_request(1)).await.unwrap().into_inner(), 1);
}

// ---------------------------------------------------------------- undecodable bytes

/// Posts one gRPC frame of `payload` to `method` of the inference service
/// and returns the grpc-status and grpc-message the server answers with.
async fn raw_grpc_call(server: &Server, method: &str, payload: &[u8]) -> (Code, String) {
    use http_body_util::BodyExt;
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http();
    let mut frame = vec![0u8];
    frame.extend((payload.len() as u32).to_be_bytes());
    frame.extend(payload);
    let request = hyper::Request::post(format!("http://{}/inference.GRPCInferenceService/{method}", server.grpc))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
        .unwrap();
    let response = client.request(request).await.expect("the gRPC port answers");
    let mut headers = response.headers().clone();
    if !headers.contains_key("grpc-status") {
        let collected = response.into_body().collect().await.expect("reading the answer");
        headers = collected.trailers().cloned().expect("a gRPC answer ends with trailers");
    }
    let code = headers["grpc-status"].to_str().unwrap().parse::<i32>().unwrap();
    let message = headers.get("grpc-message").map_or(String::new(), |m| m.to_str().unwrap().replace("%20", " "));
    (Code::from(code), message)
}

#[tokio::test]
async fn bytes_that_are_not_a_protobuf_message_are_invalid_argument_not_internal() {
    let server = Server::start(&shipped_models(), &[]);
    // Field 1 (model_name), length-delimited, claiming more bytes than follow.
    let garbage = [0x0a, 0xff, 0xff, 0xff, 0x0f, 0x61];
    for method in ["ModelInfer", "ModelStreamInfer"] {
        let (code, message) = raw_grpc_call(&server, method, &garbage).await;
        assert_eq!(code, Code::InvalidArgument, "{method}: {message}");
        assert!(message.contains("decode"), "{method}: {message}");
    }
    // The server goes on serving.
    let mut client = server.grpc_client().await;
    check_mlp_response(&client.model_infer(mlp_request(1)).await.unwrap().into_inner(), 1);
}
