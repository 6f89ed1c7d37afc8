//! A request body's pieces gathered into one buffer, for both fronts: the
//! common case of a body in a single piece is kept as it came, without a
//! copy; a second piece starts a joined buffer.

use bytes::{Bytes, BytesMut};

#[derive(Default)]
pub struct Gathered {
    first: Option<Bytes>,
    joined: BytesMut,
}

impl Gathered {
    pub fn push(&mut self, data: Bytes) {
        match self.first.take() {
            None if self.joined.is_empty() => self.first = Some(data),
            None => self.joined.extend_from_slice(&data),
            Some(earlier) => {
                self.joined.extend_from_slice(&earlier);
                self.joined.extend_from_slice(&data);
            }
        }
    }

    /// What has been gathered so far.
    pub fn bytes(&self) -> &[u8] {
        self.first.as_deref().unwrap_or(&self.joined)
    }

    pub fn finish(self) -> Bytes {
        self.first.unwrap_or_else(|| self.joined.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_piece_is_kept_and_more_are_joined() {
        let mut one = Gathered::default();
        let piece = Bytes::from_static(b"whole");
        one.push(piece.clone());
        let kept = one.finish();
        assert_eq!(kept.as_ptr(), piece.as_ptr(), "a single piece is not copied");
        let mut many = Gathered::default();
        for piece in [&b"ab"[..], b"", b"cd", b"e"] {
            many.push(Bytes::copy_from_slice(piece));
        }
        assert_eq!(many.bytes(), b"abcde");
        assert_eq!(&many.finish()[..], b"abcde");
        assert!(Gathered::default().finish().is_empty());
    }
}
