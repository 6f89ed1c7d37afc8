//! Property-based fuzzing of everything that reads untrusted bytes: the
//! protobuf request decoder, the HTTP body decoder (JSON and binary), tensor
//! byte-count checks, BYTES parsing, config.pbtxt parsing, and the output
//! split. Each must answer with a value or an error, never panic or hang.
//! Bounded (a few thousand cases each, fixed seed) so it runs in every
//! `cargo test`. It found one bug already: a batch output whose bytes
//! disagreed with its shape made the split panic.

use crate::api::grpc::decode_request;
use crate::api::http::decode_body;
use crate::pb;
use crate::repository::config;
use crate::scheduler::batch::split;
use crate::tensor::{DataType, Tensor, bytes_elements};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

fn datatype() -> impl Strategy<Value = DataType> {
    (0..DataType::ALL.len()).prop_map(|i| DataType::ALL[i])
}

fn shape() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(prop_oneof![-2i64..40, Just(i64::MAX), Just(i64::MIN), Just(1 << 40)], 0..5)
}

proptest! {
    // A fixed seed keeps CI deterministic; raise `cases` (or change the seed)
    // locally to search further.
    #![proptest_config(ProptestConfig {
        cases: 3000,
        rng_seed: RngSeed::Fixed(0x5eed_f0e5),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn protobuf_requests_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(request) = <pb::ModelInferRequest as prost::Message>::decode(&bytes[..]) {
            let _ = decode_request(request, None);
        }
    }

    #[test]
    fn structured_requests_never_panic(
        names in prop::collection::vec("[a-z]{0,3}", 0..4),
        types in prop::collection::vec("(FP32|BYTES|BOOL|INT8|UINT64|FP16|BF16|FLOAT|)", 0..4),
        shapes in prop::collection::vec(shape(), 0..4),
        raw in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..5),
        ints in prop::collection::vec(any::<i32>(), 0..8),
    ) {
        let inputs = names.iter().zip(&types).zip(&shapes).map(|((name, datatype), shape)| {
            pb::model_infer_request::InferInputTensor {
                name: name.clone(),
                datatype: datatype.clone(),
                shape: shape.clone(),
                contents: Some(pb::InferTensorContents { int_contents: ints.clone(), ..Default::default() }),
                ..Default::default()
            }
        }).collect();
        let request = pb::ModelInferRequest {
            inputs,
            raw_input_contents: raw.into_iter().map(Into::into).collect(),
            ..Default::default()
        };
        if let Ok(decoded) = decode_request(request, None) {
            for tensor in decoded.inputs {
                let _ = tensor.check_len();
            }
        }
    }

    #[test]
    fn http_bodies_never_panic(
        inputs in prop::collection::vec((
            "[a-z]{0,2}",
            shape(),
            "(FP32|BYTES|BOOL|UINT8|FP16|INT64|X)",
            prop_oneof![
                prop::collection::vec(-300i64..300, 0..6).prop_map(|v| serde_json::json!({ "data": v })),
                prop::collection::vec("[a-z]{0,3}", 0..4).prop_map(|v| serde_json::json!({ "data": v })),
                (0u64..100).prop_map(|n| serde_json::json!({ "parameters": { "binary_data_size": n } })),
                Just(serde_json::json!({ "data": [[1.5, 1e300], [true, null]] })),
            ],
        ), 0..4),
        binary in prop::collection::vec(any::<u8>(), 0..64),
        claimed in prop::option::of(0usize..200),
    ) {
        let inputs: Vec<serde_json::Value> = inputs.into_iter().map(|(name, shape, datatype, data)| {
            let mut input = serde_json::json!({ "name": name, "shape": shape, "datatype": datatype });
            input.as_object_mut().unwrap().extend(data.as_object().unwrap().clone());
            input
        }).collect();
        let json = serde_json::to_vec(&serde_json::json!({ "inputs": inputs })).unwrap();
        let header = claimed.or(Some(json.len()));
        let mut body = json;
        body.extend_from_slice(&binary);
        if let Ok((request, _)) = decode_body("m", "", body.into(), header) {
            for tensor in request.inputs {
                let _ = tensor.check_len();
            }
        }
    }

    #[test]
    fn arbitrary_http_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256), header in prop::option::of(0usize..300)) {
        let _ = decode_body("m", "1", body.into(), header);
    }

    #[test]
    fn tensor_checks_never_panic(datatype in datatype(), shape in shape(), data in prop::collection::vec(any::<u8>(), 0..128)) {
        let tensor = Tensor { name: "x".into(), datatype, shape, data: data.clone().into() };
        let _ = tensor.check_len();
        let _ = bytes_elements(&data).count();
    }

    #[test]
    fn config_text_never_panics(text in r#"[a-z_:{}\[\] \n"0-9#,]{0,120}"#) {
        let _ = config::parse(&text);
    }

    #[test]
    fn output_split_never_panics(
        datatype in datatype(),
        shape in shape(),
        data in prop::collection::vec(any::<u8>(), 0..128),
        rows in prop::collection::vec(0usize..5, 1..4),
    ) {
        let output = Tensor { name: "y".into(), datatype, shape, data: data.into() };
        let _ = split(vec![output], &rows, true);
    }
}
