//! The gRPC and HTTP fronts: decode, call the repository, encode. No policy
//! lives here; only this folder knows tonic and axum.

pub mod describe;
pub mod gather;
pub mod grpc;
pub mod http;
pub mod inflate;
pub mod listen;
mod status;

pub use status::{code_of_grpc_status, code_of_status, grpc_status, http_status, retry_after_secs};

/// Protocol extensions ferroserve implements, as ServerMetadata lists them.
pub const EXTENSIONS: &[&str] =
    &["model_repository", "model_configuration", "binary_tensor_data", "parameters", "statistics"];
