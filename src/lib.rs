//! ferroserve: a low-latency ONNX inference server speaking the Open
//! Inference Protocol (KServe V2) with Triton's extensions.
//!
//! A request flows through the folders in order: `api` decodes it,
//! `repository` finds the model version and validates it, `scheduler` queues
//! it for an instance thread, `runtime` runs ONNX Runtime, and `telemetry`
//! records what happened. `security` decides, before any of that, who may
//! call what and over which TLS. `storage` mirrors a repository on object
//! storage into a local folder that `repository` reads as any other.

pub mod admission;
pub mod api;
pub mod config;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod infer;
pub mod pb;
pub mod plan;
pub mod repository;
pub mod runtime;
pub mod scheduler;
pub mod security;
pub mod server;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
pub mod tensor;
pub mod watch;
