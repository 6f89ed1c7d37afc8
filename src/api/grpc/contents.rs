//! Typed `InferTensorContents` to raw little-endian bytes. Outputs always go
//! back as `raw_output_contents`, so only this direction exists.

use crate::error::{Error, Result};
use crate::pb::InferTensorContents;
use crate::tensor::{DataType, encode_bytes_elements};

/// Converts typed contents for an input of `datatype`, checking that the
/// field used is the one the protocol assigns to that type and that each
/// value fits it.
pub fn to_raw(name: &str, datatype: DataType, contents: &InferTensorContents) -> Result<Vec<u8>> {
    let wrong_field = || {
        let used = used_fields(contents);
        Error::invalid(format!(
            "input '{name}': {datatype} data must be in {}, received {}",
            field_for(datatype),
            if used.is_empty() { "no contents".to_string() } else { used.join(", ") }
        ))
    };
    if used_fields(contents).iter().any(|&f| f != field_for(datatype)) {
        return Err(wrong_field());
    }
    macro_rules! narrow {
        ($values:expr, $ty:ty) => {{
            let mut out = Vec::with_capacity($values.len() * std::mem::size_of::<$ty>());
            for (i, &v) in $values.iter().enumerate() {
                let v = <$ty>::try_from(v).map_err(|_| {
                    Error::invalid(format!("input '{name}': element {i} value {v} does not fit {datatype}"))
                })?;
                out.extend_from_slice(&v.to_le_bytes());
            }
            out
        }};
    }
    Ok(match datatype {
        DataType::Bool => contents.bool_contents.iter().map(|&b| u8::from(b)).collect(),
        DataType::Uint8 => narrow!(contents.uint_contents, u8),
        DataType::Uint16 => narrow!(contents.uint_contents, u16),
        DataType::Uint32 => narrow!(contents.uint_contents, u32),
        DataType::Uint64 => narrow!(contents.uint64_contents, u64),
        DataType::Int8 => narrow!(contents.int_contents, i8),
        DataType::Int16 => narrow!(contents.int_contents, i16),
        DataType::Int32 => narrow!(contents.int_contents, i32),
        DataType::Int64 => narrow!(contents.int64_contents, i64),
        DataType::Fp32 => contents.fp32_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::Fp64 => contents.fp64_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::Bytes => encode_bytes_elements(contents.bytes_contents.iter().map(|b| &b[..])),
        // Any typed field was refused above ("must be in raw_input_contents"),
        // so there are no values: an empty tensor, as for every other type.
        // This is how a request that uses typed contents for its other inputs
        // gives a zero-element FP16/BF16 input (raw and typed cannot be mixed).
        DataType::Fp16 | DataType::Bf16 => Vec::new(),
    })
}

fn field_for(datatype: DataType) -> &'static str {
    match datatype {
        DataType::Bool => "bool_contents",
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => "uint_contents",
        DataType::Uint64 => "uint64_contents",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int_contents",
        DataType::Int64 => "int64_contents",
        DataType::Fp32 => "fp32_contents",
        DataType::Fp64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
        DataType::Fp16 | DataType::Bf16 => "raw_input_contents",
    }
}

fn used_fields(c: &InferTensorContents) -> Vec<&'static str> {
    let fields = [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ];
    fields.into_iter().filter(|(_, n)| *n > 0).map(|(f, _)| f).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrows_with_range_checks() {
        let contents = InferTensorContents { int_contents: vec![1, -2], ..Default::default() };
        assert_eq!(to_raw("x", DataType::Int8, &contents).unwrap(), vec![1, 0xfe]);
        let contents = InferTensorContents { int_contents: vec![300], ..Default::default() };
        let err = to_raw("x", DataType::Int8, &contents).unwrap_err().to_string();
        assert!(err.contains("value 300 does not fit INT8"), "{err}");
    }

    #[test]
    fn wrong_field_is_named() {
        let contents = InferTensorContents { int_contents: vec![1], ..Default::default() };
        let err = to_raw("x", DataType::Fp32, &contents).unwrap_err().to_string();
        assert!(err.contains("must be in fp32_contents, received int_contents"), "{err}");
        let contents = InferTensorContents { fp32_contents: vec![1.0], ..Default::default() };
        let err = to_raw("x", DataType::Fp16, &contents).unwrap_err().to_string();
        assert!(err.contains("FP16 data must be in raw_input_contents, received fp32_contents"), "{err}");
    }

    #[test]
    fn empty_contents_give_empty_tensors() {
        let contents = InferTensorContents::default();
        assert_eq!(to_raw("x", DataType::Fp32, &contents).unwrap(), Vec::<u8>::new());
        assert_eq!(to_raw("x", DataType::Fp16, &contents).unwrap(), Vec::<u8>::new());
        assert_eq!(to_raw("x", DataType::Bf16, &contents).unwrap(), Vec::<u8>::new());
    }
}
