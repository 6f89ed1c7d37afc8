//! The transport-neutral inference request and response that the gRPC and
//! HTTP fronts decode into and encode from.

use crate::error::{Error, Result};
use crate::tensor::{Tensor, element_count};
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
    /// The request's `priority` parameter (Triton's: 1 is the highest
    /// level, 0 or none the model's default level).
    pub priority: Option<u64>,
    /// The request's server span, when tracing is on and the trace is
    /// sampled: the scheduler's `queue` and `compute` spans hang under it.
    pub trace: Option<opentelemetry::trace::SpanContext>,
}

#[derive(Debug, Clone)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub outputs: Vec<Tensor>,
}

/// The error for a malformed `priority` request parameter.
pub const PRIORITY_PARAMETER: &str = "parameter 'priority' must be a whole number (0 for the model's default level)";

/// The error for a malformed `timeout` request parameter.
pub const TIMEOUT_PARAMETER: &str = "parameter 'timeout' must be a positive integer (microseconds)";

/// Server-wide bounds on the shape of one request (`--max-inputs`,
/// `--max-tensor-elements`), checked before anything is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Inputs per request, and outputs asked for per request.
    pub max_inputs: usize,
    /// Elements in one input tensor (the product of its shape).
    pub max_tensor_elements: u64,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits { max_inputs: 1024, max_tensor_elements: 1 << 26 }
    }
}

impl RequestLimits {
    /// Refuses a request with too many inputs or requested outputs with
    /// RESOURCE_EXHAUSTED (HTTP 413), naming the flag. Checked first: it
    /// bounds the work of validating the rest.
    pub fn check_counts(&self, request: &InferRequest) -> Result<()> {
        for (what, count) in [("inputs", request.inputs.len()), ("requested outputs", request.outputs.len())] {
            if count > self.max_inputs {
                return Err(Error::ResourceExhausted(format!(
                    "the request has {count} {what}; the server accepts at most {} (--max-inputs)",
                    self.max_inputs
                )));
            }
        }
        Ok(())
    }

    /// Refuses an input over `--max-tensor-elements` with RESOURCE_EXHAUSTED
    /// (HTTP 413). Checked last, so a request the model's contract refuses
    /// hears that reason instead.
    pub fn check_elements(&self, request: &InferRequest) -> Result<()> {
        for tensor in &request.inputs {
            // A malformed shape is the decoder's or the model's to name; only size counts here.
            let Ok(elements) = element_count(&tensor.shape) else { continue };
            if elements as u64 > self.max_tensor_elements {
                return Err(Error::ResourceExhausted(format!(
                    "input '{}': shape {:?} has more than {} elements (--max-tensor-elements)",
                    tensor.name, tensor.shape, self.max_tensor_elements
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DataType;

    fn request(inputs: usize, shape: Vec<i64>) -> InferRequest {
        let tensor = Tensor { name: "x".into(), datatype: DataType::Fp32, shape, data: Default::default() };
        InferRequest { inputs: vec![tensor; inputs], ..Default::default() }
    }

    impl RequestLimits {
        fn check_all(&self, request: &InferRequest) -> Result<()> {
            self.check_counts(request).and_then(|()| self.check_elements(request))
        }
    }

    #[test]
    fn limits_refuse_too_many_inputs_or_elements_naming_the_flag() {
        let limits = RequestLimits { max_inputs: 2, max_tensor_elements: 100 };
        assert!(limits.check_all(&request(2, vec![10, 10])).is_ok());
        let e = limits.check_all(&request(3, vec![1])).unwrap_err();
        assert!(matches!(&e, Error::ResourceExhausted(m) if m.contains("3 inputs") && m.contains("--max-inputs")));
        let e = limits.check_all(&request(1, vec![10, 11])).unwrap_err();
        assert!(matches!(&e, Error::ResourceExhausted(m) if m.contains("--max-tensor-elements")), "{e}");
        // A shape that overflows is left for validation to name precisely.
        assert!(limits.check_all(&request(1, vec![1 << 40, 1 << 40])).is_ok());
        let outputs = InferRequest { outputs: vec!["y".into(); 3], ..Default::default() };
        assert!(limits.check_all(&outputs).is_err());
    }
}
