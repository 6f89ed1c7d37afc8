//! Generated protobuf types of the `inference` package (proto/), and the
//! encoded descriptor set used by gRPC reflection and the config.pbtxt parser.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("inference");

/// The encoded `FileDescriptorSet` of proto/, produced by build.rs.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));
