//! Compressed requests, for both fronts: an HTTP body with a
//! `Content-Encoding` and a gRPC message with a `grpc-encoding`, gzip or
//! deflate (zlib), inflated within two bounds — the size limit of the
//! inflated bytes (--max-message-bytes) and a ratio to the compressed size
//! (--max-decompression-ratio), so a few KiB of zeros cannot become
//! 64 MiB of work. The ratio holds above `RATIO_FLOOR` only: small requests
//! that compress very well (a tensor of zeros) always pass.

use crate::error::{Error, Result};
use std::io::Read;

/// Inflated sizes up to this pass whatever their ratio.
pub const RATIO_FLOOR: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Gzip,
    /// The zlib format, as HTTP's and gRPC's `deflate` both mean.
    Deflate,
}

impl Codec {
    /// The codec an encoding name asks for; `Ok(None)` for identity.
    pub fn from_name(name: &[u8]) -> Result<Option<Codec>> {
        match name.trim_ascii() {
            b"identity" => Ok(None),
            b"gzip" | b"x-gzip" => Ok(Some(Codec::Gzip)),
            b"deflate" => Ok(Some(Codec::Deflate)),
            other => Err(Error::UnsupportedMediaType(format!(
                "the encoding {:?} is not supported: use gzip, deflate or identity",
                String::from_utf8_lossy(other)
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Deflate => "deflate",
        }
    }
}

/// How far one request may inflate.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// --max-message-bytes.
    pub max_bytes: usize,
    /// --max-decompression-ratio.
    pub max_ratio: usize,
}

/// Inflates `compressed` (`what` names it in errors: "request body",
/// "request message"). Over a bound: ResourceExhausted naming the flag;
/// corrupt data: InvalidArgument. Stops reading one byte past the bound, so
/// a bomb costs at most the bound's worth of work.
pub fn inflate(codec: Codec, compressed: &[u8], bounds: Bounds, what: &str) -> Result<Vec<u8>> {
    let by_ratio = compressed.len().saturating_mul(bounds.max_ratio).max(RATIO_FLOOR);
    let cap = bounds.max_bytes.min(by_ratio);
    let decoder: Box<dyn Read + '_> = match codec {
        Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
        Codec::Deflate => Box::new(flate2::read::ZlibDecoder::new(compressed)),
    };
    let mut out = Vec::with_capacity(cap.min(compressed.len().saturating_mul(4)));
    decoder
        .take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::invalid(format!("the {what} is not valid {} data: {e}", codec.name())))?;
    if out.len() <= cap {
        return Ok(out);
    }
    Err(Error::ResourceExhausted(if cap == bounds.max_bytes {
        format!("the {what} inflates to more than {} bytes (--max-message-bytes)", bounds.max_bytes)
    } else {
        format!(
            "the {what} inflates to more than {} times its {} compressed bytes (--max-decompression-ratio)",
            bounds.max_ratio,
            compressed.len()
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    const BOUNDS: Bounds = Bounds { max_bytes: 64 << 20, max_ratio: 100 };

    #[test]
    fn both_codecs_round_trip() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i as f32).sin().to_le_bytes()).collect();
        assert_eq!(inflate(Codec::Gzip, &gzip(&data), BOUNDS, "body").unwrap(), data);
        assert_eq!(inflate(Codec::Deflate, &zlib(&data), BOUNDS, "body").unwrap(), data);
        // Concatenated gzip members are one body.
        let mut two = gzip(b"ab");
        two.extend(gzip(b"cd"));
        assert_eq!(inflate(Codec::Gzip, &two, BOUNDS, "body").unwrap(), b"abcd");
    }

    #[test]
    fn a_bomb_is_stopped_by_size_or_by_ratio() {
        let zeros = vec![0u8; 100 << 20];
        let bomb = gzip(&zeros);
        let error = inflate(Codec::Gzip, &bomb, Bounds { max_bytes: 64 << 20, max_ratio: 10_000 }, "body");
        assert!(matches!(&error, Err(Error::ResourceExhausted(m)) if m.contains("--max-message-bytes")), "{error:?}");
        let error = inflate(Codec::Gzip, &bomb, BOUNDS, "body");
        assert!(matches!(&error, Err(Error::ResourceExhausted(m)) if m.contains("100 times")), "{error:?}");
        // Under the floor any ratio passes.
        assert_eq!(inflate(Codec::Gzip, &gzip(&zeros[..RATIO_FLOOR]), BOUNDS, "body").unwrap().len(), RATIO_FLOOR);
    }

    #[test]
    fn corrupt_data_and_unknown_encodings_are_named() {
        let error = inflate(Codec::Gzip, b"not gzip at all", BOUNDS, "request body").unwrap_err();
        assert!(matches!(&error, Error::InvalidArgument(m) if m.contains("not valid gzip")), "{error:?}");
        let mut truncated = gzip(&[7u8; 10_000]);
        truncated.truncate(truncated.len() - 4);
        assert!(inflate(Codec::Gzip, &truncated, BOUNDS, "body").is_err());
        assert_eq!(Codec::from_name(b"identity").unwrap(), None);
        assert_eq!(Codec::from_name(b"x-gzip").unwrap(), Some(Codec::Gzip));
        let error = Codec::from_name(b"br").unwrap_err();
        assert!(matches!(&error, Error::UnsupportedMediaType(m) if m.contains("\"br\"")), "{error:?}");
        assert!(Codec::from_name(b"gzip, gzip").is_err());
    }
}
