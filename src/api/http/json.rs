//! JSON tensor data (KServe V2 REST): nested or flat arrays in row-major
//! order, converted to and from the raw wire layout.

use crate::error::{Error, Result};
use crate::tensor::{DataType, Tensor, bytes_elements};
use serde_json::Value;

/// Flattens `data` (nested arrays allowed) into raw bytes of `datatype`.
pub fn decode(name: &str, datatype: DataType, data: &Value) -> Result<Vec<u8>> {
    let mut elements = Vec::new();
    flatten(data, &mut elements);
    let size = datatype.byte_size().unwrap_or(8);
    let mut out = Vec::with_capacity(elements.len() * size);
    for (i, value) in elements.into_iter().enumerate() {
        push(&mut out, datatype, value).map_err(|why| {
            Error::invalid(format!("input '{name}': element {i} ({value}) is not a valid {datatype}: {why}"))
        })?;
    }
    Ok(out)
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        other => out.push(other),
    }
}

fn push(out: &mut Vec<u8>, datatype: DataType, value: &Value) -> Result<(), &'static str> {
    macro_rules! int {
        ($ty:ty) => {{
            let v = if let Some(i) = value.as_i64() {
                <$ty>::try_from(i).map_err(|_| "out of range")?
            } else if let Some(u) = value.as_u64() {
                <$ty>::try_from(u).map_err(|_| "out of range")?
            } else {
                return Err("expected an integer");
            };
            out.extend_from_slice(&v.to_le_bytes());
        }};
    }
    let float = || value.as_f64().ok_or("expected a number");
    // JSON numbers are finite: one that narrows to infinity is out of range.
    let finite = |infinite: bool| if infinite { Err("out of range") } else { Ok(()) };
    match datatype {
        DataType::Bool => out.push(u8::from(value.as_bool().ok_or("expected true or false")?)),
        DataType::Uint8 => int!(u8),
        DataType::Uint16 => int!(u16),
        DataType::Uint32 => int!(u32),
        DataType::Uint64 => int!(u64),
        DataType::Int8 => int!(i8),
        DataType::Int16 => int!(i16),
        DataType::Int32 => int!(i32),
        DataType::Int64 => int!(i64),
        DataType::Fp16 => {
            let v = half::f16::from_f64(float()?);
            finite(v.is_infinite())?;
            out.extend_from_slice(&v.to_le_bytes());
        }
        DataType::Bf16 => {
            let v = half::bf16::from_f64(float()?);
            finite(v.is_infinite())?;
            out.extend_from_slice(&v.to_le_bytes());
        }
        DataType::Fp32 => {
            let v = float()? as f32;
            finite(v.is_infinite())?;
            out.extend_from_slice(&v.to_le_bytes());
        }
        DataType::Fp64 => out.extend_from_slice(&float()?.to_le_bytes()),
        DataType::Bytes => {
            let s = value.as_str().ok_or("expected a string")?;
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    Ok(())
}

/// The tensor's elements as a flat JSON array.
pub fn encode(tensor: &Tensor) -> Value {
    let data = &tensor.data[..];
    macro_rules! each {
        ($ty:ty, $map:expr) => {
            data.chunks_exact(std::mem::size_of::<$ty>())
                .map(|c| $map(<$ty>::from_le_bytes(c.try_into().expect("exact chunk; this is a bug"))))
                .collect()
        };
    }
    let values: Vec<Value> = match tensor.datatype {
        DataType::Bool => data.iter().map(|&b| Value::Bool(b != 0)).collect(),
        DataType::Uint8 => each!(u8, Value::from),
        DataType::Uint16 => each!(u16, Value::from),
        DataType::Uint32 => each!(u32, Value::from),
        DataType::Uint64 => each!(u64, Value::from),
        DataType::Int8 => each!(i8, Value::from),
        DataType::Int16 => each!(i16, Value::from),
        DataType::Int32 => each!(i32, Value::from),
        DataType::Int64 => each!(i64, Value::from),
        DataType::Fp16 => each!(u16, |b| Value::from(half::f16::from_bits(b).to_f64())),
        DataType::Bf16 => each!(u16, |b| Value::from(half::bf16::from_bits(b).to_f64())),
        DataType::Fp32 => each!(f32, |v: f32| Value::from(f64::from(v))),
        DataType::Fp64 => each!(f64, Value::from),
        DataType::Bytes => bytes_elements(data)
            .map(|e| Value::from(String::from_utf8_lossy(e.unwrap_or_default()).into_owned()))
            .collect(),
    };
    Value::Array(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_flat_arrays_agree() {
        let nested = decode("x", DataType::Int32, &json!([[1, 2], [3, 4]])).unwrap();
        let flat = decode("x", DataType::Int32, &json!([1, 2, 3, 4])).unwrap();
        assert_eq!(nested, flat);
    }

    #[test]
    fn out_of_range_and_wrong_kinds_are_named() {
        let err = decode("x", DataType::Uint8, &json!([1, 256])).unwrap_err().to_string();
        assert!(err.contains("element 1 (256) is not a valid UINT8: out of range"), "{err}");
        let err = decode("x", DataType::Bool, &json!([1])).unwrap_err().to_string();
        assert!(err.contains("expected true or false"), "{err}");
    }

    #[test]
    fn floats_that_overflow_the_datatype_are_out_of_range() {
        for (datatype, max, over) in [
            (DataType::Fp16, 65504.0, 70000.0),
            (DataType::Bf16, 3.0e38, 3.5e38),
            (DataType::Fp32, f64::from(f32::MAX), 1e39),
        ] {
            assert!(decode("x", datatype, &json!([max, -max])).is_ok(), "{datatype}");
            let err = decode("x", datatype, &json!([0.0, -over])).unwrap_err().to_string();
            assert!(err.contains("element 1") && err.contains("out of range"), "{datatype}: {err}");
        }
        assert!(decode("x", DataType::Fp64, &json!([1e300])).is_ok());
    }

    #[test]
    fn round_trips_every_type() {
        for datatype in DataType::ALL {
            let data = match datatype {
                DataType::Bool => json!([true, false]),
                DataType::Bytes => json!(["a", ""]),
                DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64 => json!([1.5, -2.0]),
                DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => json!([-3, 4]),
                _ => json!([3, 4]),
            };
            let raw = decode("x", datatype, &data).unwrap();
            let tensor = Tensor { name: "x".into(), datatype, shape: vec![2], data: raw.into() };
            assert_eq!(encode(&tensor), data, "{datatype}");
        }
    }
}
