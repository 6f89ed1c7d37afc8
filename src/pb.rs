//! Generated protobuf types of the `inference` package (proto/), and the
//! encoded descriptor set used by gRPC reflection and the config.pbtxt parser.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("inference");

/// The encoded `FileDescriptorSet` of proto/, produced by build.rs.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));

/// The descriptors of proto/, decoded once: for parsing config.pbtxt and for
/// rendering protocol messages as JSON.
pub fn descriptor_pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("build.rs embeds a valid descriptor set; this is a bug")
    })
}
