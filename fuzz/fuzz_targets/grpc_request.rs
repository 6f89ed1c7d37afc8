//! A gRPC ModelInfer request: protobuf bytes, then the request decoder.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(request) = <ferroserve::pb::ModelInferRequest as prost::Message>::decode(data) {
        let _ = ferroserve::api::grpc::decode_request(request, None);
    }
});
