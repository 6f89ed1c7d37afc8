//! BYTES tensors as ONNX string tensors, byte for byte: elements may hold
//! any bytes (NUL and non-UTF-8 included), which the `ort` crate's
//! String-based helpers do not allow, so this goes through the C API.

use crate::tensor::{bytes_elements, element_count};
use ort::AsPointer;
use ort::value::{DynTensor, TensorElementType};

/// Turns an ONNX Runtime status into an error message.
fn check(status: ort::sys::OrtStatusPtr) -> Result<(), String> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status is a valid OrtStatus owned by us until released.
    unsafe {
        let message = std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0)).to_string_lossy().into_owned();
        (api.ReleaseStatus)(status.0);
        Err(message)
    }
}

/// A string tensor of `shape` filled from serialized BYTES `data`.
pub fn to_tensor(allocator: &ort::memory::Allocator, shape: &[i64], data: &[u8]) -> Result<DynTensor, String> {
    let mut tensor = DynTensor::new(allocator, TensorElementType::String, shape.to_vec()).map_err(|e| e.to_string())?;
    let api = ort::api();
    for (index, element) in bytes_elements(data).enumerate() {
        let element = element?;
        let mut buffer: *mut std::ffi::c_char = std::ptr::null_mut();
        // SAFETY: `index` < element count (checked by the caller against
        // `shape`); ONNX Runtime returns a buffer of exactly element.len() bytes.
        unsafe {
            check((api.GetResizedStringTensorElementBuffer)(tensor.ptr_mut(), index, element.len(), &mut buffer))?;
            if !element.is_empty() {
                std::ptr::copy_nonoverlapping(element.as_ptr(), buffer.cast::<u8>(), element.len());
            }
        }
    }
    Ok(tensor)
}

/// Serialized BYTES (4-byte LE length prefix per element) of a string tensor.
pub fn from_tensor(tensor: &DynTensor, shape: &[i64]) -> Result<Vec<u8>, String> {
    let count = element_count(shape)?;
    let api = ort::api();
    let mut total = 0usize;
    // SAFETY: `tensor` is a live string tensor of `count` elements.
    unsafe { check((api.GetStringTensorDataLength)(tensor.ptr(), &mut total))? };
    let mut content = vec![0u8; total];
    let mut offsets = vec![0usize; count];
    if count > 0 {
        // SAFETY: buffers sized as the API requires (total bytes, count offsets).
        unsafe {
            check((api.GetStringTensorContent)(
                tensor.ptr(),
                content.as_mut_ptr().cast(),
                total,
                offsets.as_mut_ptr(),
                count,
            ))?;
        }
    }
    let mut out = Vec::with_capacity(total + 4 * count);
    for (i, &start) in offsets.iter().enumerate() {
        let end = offsets.get(i + 1).copied().unwrap_or(total);
        let element = content.get(start..end).ok_or("ONNX Runtime returned inconsistent string offsets")?;
        out.extend_from_slice(&(element.len() as u32).to_le_bytes());
        out.extend_from_slice(element);
    }
    Ok(out)
}
