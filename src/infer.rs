//! The transport-neutral inference request and response that the gRPC and
//! HTTP fronts decode into and encode from.

use crate::tensor::Tensor;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    pub model_name: String,
    /// Empty selects the highest ready version (or the routing policy).
    pub model_version: String,
    /// Echoed back in the response.
    pub id: String,
    pub inputs: Vec<Tensor>,
    /// Requested outputs by name; empty means every output.
    pub outputs: Vec<String>,
    /// When the client stops waiting (grpc-timeout and the like).
    pub deadline: Option<Instant>,
    /// The request's `timeout` parameter: how long it may wait in the queue
    /// (honoured as the model's queue policy allows).
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub outputs: Vec<Tensor>,
}

/// The error for a malformed `timeout` request parameter.
pub const TIMEOUT_PARAMETER: &str = "parameter 'timeout' must be a positive integer (microseconds)";
