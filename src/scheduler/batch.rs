//! Batch assembly and output split: pure functions over tensors, so they
//! are tested and benchmarked without a model.

use crate::error::{Error, Result};
use crate::tensor::{Tensor, bytes_elements, element_count};

/// The graph shape of a batch input: the first job's shape with the batch
/// dimension set to the batch's total rows.
pub fn batched_shape(shape: &[i64], total_rows: usize, batching: bool) -> Vec<i64> {
    let mut out = shape.to_vec();
    if batching && !out.is_empty() {
        out[0] = total_rows as i64;
    }
    out
}

/// Splits each batch output along its first dimension into one set of
/// outputs per job (`rows` each), sharing the output buffers (no copy).
pub fn split(outputs: Vec<Tensor>, rows: &[usize], batching: bool) -> Result<Vec<Vec<Tensor>>> {
    if !batching || rows.len() == 1 {
        return Ok(vec![outputs]);
    }
    let total: usize = rows.iter().sum();
    let mut per_job: Vec<Vec<Tensor>> = (0..rows.len()).map(|_| Vec::with_capacity(outputs.len())).collect();
    for output in outputs {
        if output.shape.first() != Some(&(total as i64)) {
            return Err(Error::internal(format!(
                "output '{}' has shape {:?}; its first dimension should be the batch size {total}",
                output.name, output.shape
            )));
        }
        let offsets = row_offsets(&output, total)?;
        let mut row = 0;
        for (job, &n) in per_job.iter_mut().zip(rows) {
            let mut shape = output.shape.clone();
            shape[0] = n as i64;
            let data = output.data.slice(offsets[row]..offsets[row + n]);
            job.push(Tensor { name: output.name.clone(), datatype: output.datatype, shape, data });
            row += n;
        }
    }
    Ok(per_job)
}

/// Byte offset where each row starts, plus the end (total + 1 entries).
fn row_offsets(output: &Tensor, total: usize) -> Result<Vec<usize>> {
    let count = element_count(&output.shape).map_err(Error::internal)?;
    if total == 0 || count % total != 0 {
        return Err(Error::internal(format!("output '{}' cannot be split into {total} rows", output.name)));
    }
    let per_row = count / total;
    match output.datatype.byte_size() {
        Some(size) => {
            if count.checked_mul(size) != Some(output.data.len()) {
                return Err(Error::internal(format!(
                    "output '{}' has {} bytes, its shape {:?} needs {count} elements of {size}",
                    output.name,
                    output.data.len(),
                    output.shape
                )));
            }
            Ok((0..=total).map(|r| r * per_row * size).collect())
        }
        None => {
            let mut offsets = Vec::with_capacity(total + 1);
            let mut position = 0;
            offsets.push(0);
            for (index, element) in bytes_elements(&output.data).enumerate() {
                position += 4 + element.map_err(Error::internal)?.len();
                if per_row > 0 && (index + 1) % per_row == 0 {
                    offsets.push(position);
                }
            }
            if per_row == 0 {
                offsets.resize(total + 1, 0);
            }
            if offsets.len() != total + 1 || offsets.last() != Some(&output.data.len()) {
                return Err(Error::internal(format!("output '{}' has an uneven BYTES layout", output.name)));
            }
            Ok(offsets)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{DataType, encode_bytes_elements};

    fn tensor(datatype: DataType, shape: Vec<i64>, data: Vec<u8>) -> Tensor {
        Tensor { name: "y".into(), datatype, shape, data: data.into() }
    }

    #[test]
    fn fixed_size_outputs_split_by_rows() {
        let data: Vec<u8> = (0..12u8).collect(); // 3 rows x 2 UINT16
        let parts = split(vec![tensor(DataType::Uint16, vec![3, 2], data)], &[1, 2], true).unwrap();
        assert_eq!(parts[0][0].shape, vec![1, 2]);
        assert_eq!(&parts[0][0].data[..], &[0, 1, 2, 3]);
        assert_eq!(parts[1][0].shape, vec![2, 2]);
        assert_eq!(&parts[1][0].data[..], &[4, 5, 6, 7, 8, 9, 10, 11]);
    }

    #[test]
    fn bytes_outputs_split_on_element_boundaries() {
        let data = encode_bytes_elements([&b"a"[..], b"bb", b"", b"dddd"]);
        let parts = split(vec![tensor(DataType::Bytes, vec![2, 2], data)], &[1, 1], true).unwrap();
        assert_eq!(&parts[0][0].data[..], &encode_bytes_elements([&b"a"[..], b"bb"])[..]);
        assert_eq!(&parts[1][0].data[..], &encode_bytes_elements([&b""[..], b"dddd"])[..]);
    }

    #[test]
    fn a_wrong_batch_dimension_is_an_error() {
        let err = split(vec![tensor(DataType::Uint8, vec![2], vec![0, 1])], &[1, 2], true).unwrap_err();
        assert!(err.to_string().contains("batch size 3"), "{err}");
    }

    #[test]
    fn data_that_disagrees_with_the_shape_is_an_error_not_a_panic() {
        let err = split(vec![tensor(DataType::Fp32, vec![2, 2], vec![0; 4])], &[1, 1], true).unwrap_err();
        assert!(err.to_string().contains("has 4 bytes"), "{err}");
        let three = encode_bytes_elements([&b"a"[..], b"b", b"c"]);
        assert!(split(vec![tensor(DataType::Bytes, vec![2], three)], &[1, 1], true).is_err());
    }

    #[test]
    fn shapes_take_the_total_rows() {
        assert_eq!(batched_shape(&[1, 16], 5, true), vec![5, 16]);
        assert_eq!(batched_shape(&[2, 3], 1, false), vec![2, 3]);
    }
}
