//! Tensors as they travel through the server: a datatype, a shape and the
//! raw little-endian bytes of the elements (BYTES elements each carry a 4-byte
//! little-endian length prefix), which is the wire form of both gRPC
//! `raw_input_contents` and Triton's HTTP binary extension.

mod buffer;
mod datatype;
mod shape;

pub use buffer::AlignedBuffer;
pub use datatype::DataType;
pub use shape::{element_count, shape_matches};

use crate::error::{Error, Result};
use bytes::Bytes;

/// One named tensor of a request or a response.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    /// Raw element bytes; see the module comment for the layout.
    pub data: Bytes,
}

/// What a model declares for one of its inputs or outputs: `dims` is the full
/// shape the model runs with, batch dimension included, -1 where dynamic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub dims: Vec<i64>,
}

impl Tensor {
    /// Checks that the byte length agrees with shape and datatype, returning
    /// the element count. Names the tensor in every error.
    pub fn check_len(&self) -> Result<usize> {
        let count = element_count(&self.shape).map_err(|e| Error::invalid(format!("input '{}': {e}", self.name)))?;
        match self.datatype.byte_size() {
            Some(size) => {
                let expected = count.checked_mul(size).ok_or_else(|| {
                    Error::invalid(format!("input '{}': shape {:?} is too large", self.name, self.shape))
                })?;
                if self.data.len() != expected {
                    return Err(Error::invalid(format!(
                        "input '{}': shape {:?} of {} needs {expected} bytes, received {}",
                        self.name,
                        self.shape,
                        self.datatype,
                        self.data.len()
                    )));
                }
            }
            None => {
                let found = bytes_elements(&self.data)
                    .try_fold(0usize, |n, e| e.map(|_| n + 1))
                    .map_err(|e| Error::invalid(format!("input '{}': {e}", self.name)))?;
                if found != count {
                    return Err(Error::invalid(format!(
                        "input '{}': shape {:?} holds {count} BYTES elements, received {found}",
                        self.name, self.shape
                    )));
                }
            }
        }
        Ok(count)
    }
}

/// Iterates the elements of serialized BYTES data (4-byte LE length prefix
/// each), failing on a truncated prefix or element.
pub fn bytes_elements(data: &[u8]) -> impl Iterator<Item = Result<&[u8], String>> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() < 4 {
            rest = &[];
            return Some(Err("BYTES data ends inside a 4-byte length prefix".to_string()));
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes; this is a bug")) as usize;
        if rest.len() - 4 < len {
            let err =
                format!("BYTES element of length {len} runs past the end of the data ({} bytes left)", rest.len() - 4);
            rest = &[];
            return Some(Err(err));
        }
        let element = &rest[4..4 + len];
        rest = &rest[4 + len..];
        Some(Ok(element))
    })
}

/// Serializes BYTES elements into the length-prefixed wire form.
pub fn encode_bytes_elements<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for element in elements {
        out.extend_from_slice(&(element.len() as u32).to_le_bytes());
        out.extend_from_slice(element);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(datatype: DataType, shape: Vec<i64>, data: Vec<u8>) -> Tensor {
        Tensor { name: "x".into(), datatype, shape, data: data.into() }
    }

    #[test]
    fn fixed_size_lengths_are_checked() {
        assert_eq!(tensor(DataType::Fp32, vec![2, 2], vec![0; 16]).check_len(), Ok(4));
        let err = tensor(DataType::Fp32, vec![2, 2], vec![0; 15]).check_len().unwrap_err();
        assert!(err.to_string().contains("needs 16 bytes, received 15"), "{err}");
    }

    #[test]
    fn bytes_elements_round_trip_and_reject_truncation() {
        let data = encode_bytes_elements([&b"ab"[..], b"", b"xyz"]);
        let elements: Vec<_> = bytes_elements(&data).collect::<Result<_, _>>().unwrap();
        assert_eq!(elements, vec![&b"ab"[..], b"", b"xyz"]);
        assert_eq!(tensor(DataType::Bytes, vec![3], data.clone()).check_len(), Ok(3));
        let err = tensor(DataType::Bytes, vec![3], data[..data.len() - 1].to_vec()).check_len();
        assert!(err.unwrap_err().to_string().contains("runs past the end"));
        let err = tensor(DataType::Bytes, vec![2], data).check_len().unwrap_err();
        assert!(err.to_string().contains("holds 2 BYTES elements, received 3"), "{err}");
    }

    #[test]
    fn overflowing_shapes_are_rejected() {
        let err = tensor(DataType::Fp64, vec![i64::MAX, 4], vec![]).check_len().unwrap_err();
        assert!(err.to_string().contains("overflows"), "{err}");
    }
}
