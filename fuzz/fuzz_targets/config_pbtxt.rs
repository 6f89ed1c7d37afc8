//! A model configuration: config.pbtxt (protobuf text) and the JSON form.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ferroserve::repository::config::parse(text);
        let _ = ferroserve::repository::config::parse_json(text);
    }
});
