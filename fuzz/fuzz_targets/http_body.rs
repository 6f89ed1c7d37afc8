//! An HTTP inference body (JSON, optionally followed by binary tensor data).
//!
//! Input layout: byte 0 odd means an `Inference-Header-Content-Length` is
//! sent, and bytes 1..5 give it (little-endian u32, clamped to the body's
//! length); the body is the rest. Byte 0 even means no header; the body is
//! everything after byte 0.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let (header, body) = if selector & 1 == 1 {
        if rest.len() < 4 {
            return;
        }
        let (len, body) = rest.split_at(4);
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        (Some(len.min(body.len())), body)
    } else {
        (None, rest)
    };
    if let Ok((request, _)) = ferroserve::api::http::decode_body("m", "", body.to_vec().into(), header) {
        for tensor in request.inputs {
            let _ = tensor.check_len();
        }
    }
});
