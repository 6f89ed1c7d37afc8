//! The head of a ModelInfer message, read before the rest has arrived: the
//! model, the version and the first input's shape, which is all admission
//! needs. A 600 KB image is then refused from its first DATA frame, without
//! receiving and decoding the rest: under overload, refusals cost the
//! server (and the client, which stops sending at the reset) a fraction
//! of a full request, and the CPU stays with the model.
//!
//! Clients serialize fields in field-number order (as the protobuf
//! encoding guide recommends, and as every gRPC library does), so the head
//! comes first: model_name (1), model_version (2), id (3), parameters (4),
//! inputs (5), each input's name (1), datatype (2) and shape (3) before its
//! contents (5); the raw tensors (field 7) come last. Anything else (the
//! fields out of order, parameters, which may set a priority or a timeout,
//! a field cut off by the end of what has arrived) gives no head, and the
//! message is read whole and decoded as usual.

use prost::encoding::{WireType, decode_key, decode_varint};

/// What admission needs of a request, borrowed from its first bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Head<'a> {
    pub model: &'a str,
    pub version: &'a str,
    /// The shape of the first input.
    pub shape: Vec<i64>,
}

/// Reads the head from `message`, the first bytes of an uncompressed
/// ModelInferRequest; None when they do not hold a whole, plain one.
pub fn head(message: &[u8]) -> Option<Head<'_>> {
    let mut rest = message;
    let (mut model, mut version) = (None, "");
    while !rest.is_empty() {
        let (field, wire) = decode_key(&mut rest).ok()?;
        match (field, wire) {
            (1, WireType::LengthDelimited) => model = Some(utf8(delimited(&mut rest)?)?),
            (2, WireType::LengthDelimited) => version = utf8(delimited(&mut rest)?)?,
            (3, WireType::LengthDelimited) => {
                delimited(&mut rest)?;
            }
            (5, WireType::LengthDelimited) => {
                let length = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
                // The input may be cut off in its contents; its shape comes first.
                let input = &rest[..length.min(rest.len())];
                return Some(Head { model: model?, version, shape: shape(input)? });
            }
            _ => return None,
        }
    }
    None
}

/// The shape (field 3) of an InferInputTensor, from its first bytes.
fn shape(mut input: &[u8]) -> Option<Vec<i64>> {
    while !input.is_empty() {
        let (field, wire) = decode_key(&mut input).ok()?;
        match (field, wire) {
            (1 | 2, WireType::LengthDelimited) => {
                delimited(&mut input)?;
            }
            (3, WireType::LengthDelimited) => {
                let mut packed = delimited(&mut input)?;
                let mut dims = Vec::with_capacity(4);
                while !packed.is_empty() {
                    dims.push(decode_varint(&mut packed).ok()? as i64);
                }
                return Some(dims);
            }
            _ => return None,
        }
    }
    None
}

/// A length-delimited field's bytes, when all of them are here.
fn delimited<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let length = usize::try_from(decode_varint(rest).ok()?).ok()?;
    let (field, after) = (rest.get(..length)?, &rest[length..]);
    *rest = after;
    Some(field)
}

fn utf8(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use prost::Message;

    fn request(parameters: bool) -> Vec<u8> {
        let mut request = pb::ModelInferRequest {
            model_name: "resnet50".into(),
            model_version: "2".into(),
            id: "req-1".into(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "image".into(),
                datatype: "FP32".into(),
                shape: vec![4, 3, 224, 224],
                ..Default::default()
            }],
            raw_input_contents: vec![vec![0u8; 1 << 16].into()],
            ..Default::default()
        };
        if parameters {
            request.parameters.insert("priority".into(), pb::InferParameter::default());
        }
        request.encode_to_vec()
    }

    #[test]
    fn the_head_is_read_from_the_first_bytes_wherever_they_end() {
        let message = request(false);
        let expected = Head { model: "resnet50", version: "2", shape: vec![4, 3, 224, 224] };
        assert_eq!(head(&message), Some(expected));
        // Cut anywhere after the shape: the same head; anywhere before: none.
        let shape_end = message.windows(2).position(|w| w == [0xe0, 0x01]).expect("224 as a varint") + 4;
        for cut in 0..200 {
            let got = head(&message[..cut]);
            if cut >= shape_end {
                assert_eq!(got.map(|h| h.shape), Some(vec![4, 3, 224, 224]), "cut at {cut}");
            } else {
                assert_eq!(got, None, "cut at {cut}");
            }
        }
    }

    #[test]
    fn anything_unusual_gives_no_head() {
        assert_eq!(head(&request(true)), None, "parameters may set a priority or a timeout");
        // Inputs before the model's name.
        let mut reordered = Vec::new();
        prost::encoding::message::encode(
            5,
            &pb::model_infer_request::InferInputTensor { name: "x".into(), shape: vec![1], ..Default::default() },
            &mut reordered,
        );
        prost::encoding::string::encode(1, &"m".to_string(), &mut reordered);
        assert_eq!(head(&reordered), None);
        assert_eq!(head(&[0xff, 0xff, 0xff]), None, "garbage");
        assert_eq!(head(&[0x0a, 0x02, 0xff, 0xfe, 0x2a, 0x00]), None, "a model name that is not UTF-8");
        assert_eq!(head(b""), None);
    }
}
