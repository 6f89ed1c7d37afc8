//! The batch input buffer: one per model input and instance, reused across
//! batches, aligned so ONNX Runtime can read it as any element type.

/// A growable byte buffer aligned to 8 bytes.
#[derive(Default)]
pub struct AlignedBuffer {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBuffer {
    /// Replaces the contents with the concatenation of `parts`: the one copy
    /// from request bytes into the batch. Reuses the allocation.
    pub fn fill(&mut self, parts: &[&[u8]]) -> &mut [u8] {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.words.len() < len.div_ceil(8) {
            self.words.resize(len.div_ceil(8), 0);
        }
        self.len = len;
        // SAFETY: `words` holds at least `len` initialized bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), len) };
        let mut at = 0;
        for part in parts {
            bytes[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenates_and_stays_aligned() {
        let mut buffer = AlignedBuffer::default();
        let bytes = buffer.fill(&[&[1, 2, 3], &[], &[4]]);
        assert_eq!(bytes, &[1, 2, 3, 4]);
        assert_eq!(bytes.as_ptr() as usize % 8, 0);
        assert_eq!(buffer.fill(&[&[9]]), &[9]);
    }
}
