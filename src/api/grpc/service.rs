//! inference.GRPCInferenceService: decode, call the repository, encode.

use super::contents;
use crate::api::{describe, grpc_status};
use crate::config::ControlMode;
use crate::error::{Error, Result, Retry};
use crate::infer::{InferRequest, InferResponse, PRIORITY_PARAMETER, TIMEOUT_PARAMETER};
use crate::pb;
use crate::pb::grpc_inference_service_server::GrpcInferenceService;
use crate::security::audit;
use crate::server::State;
use crate::telemetry::trace::{self, Incoming, RequestSpan};
use crate::tensor::{DataType, Tensor};
use futures::stream::FuturesOrdered;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::Instrument;

pub struct Inference {
    state: Arc<State>,
}

impl Inference {
    pub fn new(state: Arc<State>) -> Self {
        Inference { state }
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// The stream ModelStreamInfer answers with.
type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

fn reply<T>(result: Result<T>) -> Reply<T> {
    result.map(Response::new).map_err(grpc_status)
}

/// Decodes a ModelInferRequest. `deadline` comes from grpc-timeout.
pub fn decode_request(request: pb::ModelInferRequest, deadline: Option<Instant>) -> Result<InferRequest> {
    if !request.raw_input_contents.is_empty() && request.raw_input_contents.len() != request.inputs.len() {
        return Err(Error::invalid(format!(
            "raw_input_contents has {} entries but the request has {} inputs",
            request.raw_input_contents.len(),
            request.inputs.len()
        )));
    }
    let mut raw = request.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let datatype = DataType::from_wire(&input.datatype)
            .ok_or_else(|| Error::invalid(format!("input '{}': unknown datatype '{}'", input.name, input.datatype)))?;
        let data = match (raw.next(), &input.contents) {
            (Some(_), Some(c)) if c != &pb::InferTensorContents::default() => {
                return Err(Error::invalid(format!("input '{}' has both contents and raw_input_contents", input.name)));
            }
            (Some(bytes), _) => bytes,
            (None, Some(c)) => contents::to_raw(&input.name, datatype, c)?.into(),
            (None, None) => {
                return Err(Error::invalid(format!(
                    "input '{}' has no data: set contents or raw_input_contents",
                    input.name
                )));
            }
        };
        inputs.push(Tensor { name: input.name, datatype, shape: input.shape, data });
    }
    let timeout = match request.parameters.get("timeout").map(|p| &p.parameter_choice) {
        None => None,
        Some(Some(pb::infer_parameter::ParameterChoice::Int64Param(v))) if *v > 0 => Some(*v as u64),
        Some(Some(pb::infer_parameter::ParameterChoice::Uint64Param(v))) if *v > 0 => Some(*v),
        Some(_) => return Err(Error::invalid(TIMEOUT_PARAMETER)),
    };
    let priority = match request.parameters.get("priority").map(|p| &p.parameter_choice) {
        None => None,
        Some(Some(pb::infer_parameter::ParameterChoice::Int64Param(v))) if *v >= 0 => Some(*v as u64),
        Some(Some(pb::infer_parameter::ParameterChoice::Uint64Param(v))) => Some(*v),
        Some(_) => return Err(Error::invalid(PRIORITY_PARAMETER)),
    };
    if let Some(key) =
        ["sequence_id", "sequence_start", "sequence_end"].iter().find(|k| request.parameters.contains_key(**k))
    {
        return Err(Error::Unimplemented(format!("parameter '{key}': sequence batching is not supported")));
    }
    let mut outputs = Vec::with_capacity(request.outputs.len());
    for output in request.outputs {
        if output.parameters.contains_key("classification") {
            return Err(Error::Unimplemented(format!(
                "output '{}': the classification extension is not supported",
                output.name
            )));
        }
        outputs.push(output.name);
    }
    Ok(InferRequest {
        model_name: request.model_name,
        model_version: request.model_version,
        id: request.id,
        inputs,
        outputs,
        deadline,
        timeout: timeout.map(Duration::from_micros),
        priority,
        trace: None,
    })
}

pub fn encode_response(response: InferResponse) -> pb::ModelInferResponse {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut raw = Vec::with_capacity(response.outputs.len());
    for tensor in response.outputs {
        outputs.push(pb::model_infer_response::InferOutputTensor {
            name: tensor.name,
            datatype: tensor.datatype.wire_name().to_string(),
            shape: tensor.shape,
            parameters: Default::default(),
            contents: None,
        });
        raw.push(tensor.data);
    }
    pb::ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id,
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    }
}

/// The deadline a `grpc-timeout` header sets ("<digits><unit>", unit one of
/// H M S m u n): now plus the timeout. Nothing else enforces the header (the
/// front has no transport timeout layer, see api/grpc/mod.rs), so when it
/// passes the client hears DEADLINE_EXCEEDED from the repository.
pub(super) fn grpc_deadline(headers: &tonic::codegen::http::HeaderMap) -> Option<Instant> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

/// The answer to a load parameter other than a string `config`.
pub fn load_parameter_refused(key: &str) -> Error {
    if key == "config" {
        Error::invalid("load parameter 'config' must be a string: the model config as JSON")
    } else {
        Error::Unimplemented(format!("load parameter '{key}' is not supported (only 'config', a JSON model config)"))
    }
}

/// Requests of one ModelStreamInfer stream that may be in flight at once.
const STREAM_IN_FLIGHT: usize = 64;

/// Decodes and runs one request inside its server span (when traced).
pub(super) async fn traced_infer(
    repository: &crate::repository::Repository,
    mut span: Option<RequestSpan>,
    mut message: pb::ModelInferRequest,
    deadline: Option<Instant>,
) -> Result<InferResponse> {
    let started = Instant::now();
    // The model is looked up before the request is decoded, so an unknown
    // one is NOT_FOUND whatever the message holds; a refusal here is
    // counted here, under the model when the repository knows it.
    let model = std::mem::take(&mut message.model_name);
    let decoded = repository.get(&model, &message.model_version).and_then(|_| decode_request(message, deadline));
    let result = match decoded {
        Ok(mut request) => {
            request.model_name = model;
            // On the heap once: the repository's future is large, and
            // every layer above (tonic boxes the call's future) would
            // otherwise move it whole.
            match &mut span {
                Some(span) => {
                    span.attach(&mut request);
                    Box::pin(repository.infer(request).instrument(span.log_scope())).await
                }
                None => Box::pin(repository.infer(request)).await,
            }
        }
        Err(e) => {
            repository.count_refused(&model, e.code(), started, false);
            Err(e)
        }
    };
    if let Some(span) = span {
        span.finish(result.as_ref());
    }
    result
}

/// Runs one streamed request; an error answers it in `error_message`.
async fn stream_answer(
    repository: Arc<crate::repository::Repository>,
    message: pb::ModelInferRequest,
    deadline: Option<Instant>,
    incoming: Option<Incoming>,
) -> pb::ModelStreamInferResponse {
    let id = message.id.clone();
    let span = incoming.and_then(|incoming| RequestSpan::start("grpc", || incoming));
    let result = traced_infer(&repository, span, message, deadline).await;
    match result {
        Ok(response) => pb::ModelStreamInferResponse {
            error_message: String::new(),
            infer_response: Some(encode_response(response)),
        },
        Err(e) => pb::ModelStreamInferResponse {
            error_message: e.to_string(),
            infer_response: Some(pb::ModelInferResponse { id, ..Default::default() }),
        },
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Reply<pb::ServerLiveResponse> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<pb::ServerReadyRequest>) -> Reply<pb::ServerReadyResponse> {
        Ok(Response::new(pb::ServerReadyResponse { ready: self.state.repository.is_ready() }))
    }

    async fn model_ready(&self, request: Request<pb::ModelReadyRequest>) -> Reply<pb::ModelReadyResponse> {
        let r = request.into_inner();
        // Unknown models are simply not ready, as Triton answers.
        let ready = self.state.repository.get(&r.name, &r.version).is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(&self, _: Request<pb::ServerMetadataRequest>) -> Reply<pb::ServerMetadataResponse> {
        Ok(Response::new(describe::server_metadata()))
    }

    async fn model_metadata(&self, request: Request<pb::ModelMetadataRequest>) -> Reply<pb::ModelMetadataResponse> {
        let r = request.into_inner();
        reply(describe::model_metadata(&self.state.repository, &r.name, &r.version))
    }

    async fn model_infer(&self, request: Request<pb::ModelInferRequest>) -> Reply<pb::ModelInferResponse> {
        let span = RequestSpan::start("grpc", || Incoming::from_headers(request.metadata().as_ref()));
        let deadline = grpc_deadline(request.metadata().as_ref());
        let result = traced_infer(&self.state.repository, span, request.into_inner(), deadline).await;
        reply(result.map(encode_response))
    }

    /// Requests are answered in the order they arrive; an error answers its
    /// request in `error_message` and the stream goes on.
    async fn model_stream_infer(
        &self,
        request: Request<tonic::Streaming<pb::ModelInferRequest>>,
    ) -> Reply<ResponseStream> {
        let deadline = grpc_deadline(request.metadata().as_ref());
        // Every message of the stream is a request with its own span, all
        // children of the call's trace context.
        let parent = trace::tracer().map(|_| Incoming::from_headers(request.metadata().as_ref()));
        let mut incoming = request.into_inner();
        let repository = self.state.repository.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_IN_FLIGHT);
        tokio::spawn(async move {
            // Requests run concurrently (so one stream's requests can share a
            // batch) and are answered in the order they arrived.
            let mut pending = FuturesOrdered::new();
            let mut incoming_open = true;
            loop {
                tokio::select! {
                    message = incoming.next(), if incoming_open && pending.len() < STREAM_IN_FLIGHT => match message {
                        Some(Ok(message)) => pending.push_back(stream_answer(repository.clone(), message, deadline, parent.clone())),
                        Some(Err(status)) => {
                            let status = match super::codec_refusal_code(status.code(), status.message()) {
                                Some(code) => Status::new(code, status.message()),
                                None => status,
                            };
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                        None => incoming_open = false,
                    },
                    Some(answer) = pending.next(), if !pending.is_empty() => {
                        if tx.send(Ok(answer)).await.is_err() {
                            return; // the client went away
                        }
                    }
                    else => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn model_config(&self, request: Request<pb::ModelConfigRequest>) -> Reply<pb::ModelConfigResponse> {
        let r = request.into_inner();
        reply(
            self.state
                .repository
                .config(&r.name, &r.version)
                .map(|config| pb::ModelConfigResponse { config: Some(config) }),
        )
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Reply<pb::ModelStatisticsResponse> {
        let r = request.into_inner();
        reply(describe::statistics(&self.state.repository, &r.name, &r.version))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Reply<pb::RepositoryIndexResponse> {
        let r = request.into_inner();
        check_repository_name(&r.repository_name).map_err(grpc_status)?;
        Ok(Response::new(describe::repository_index(&self.state.repository, r.ready)))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Reply<pb::RepositoryModelLoadResponse> {
        let (_, extensions, r) = request.into_parts();
        let model = model_named(&r.repository_name, &r.model_name).to_string();
        let result = async {
            if !r.model_name.is_empty() {
                check_repository_name(&r.repository_name)?;
            }
            self.explicit_mode()?;
            let mut config = None;
            for (key, value) in r.parameters {
                match value.parameter_choice {
                    Some(pb::model_repository_parameter::ParameterChoice::StringParam(json)) if key == "config" => {
                        config = Some(json);
                    }
                    _ => return Err(load_parameter_refused(&key)),
                }
            }
            self.state.repository.load_with(&model, config).await
        }
        .await;
        audit::record("load", &model, &extensions, result.as_ref().map(|_| ()));
        result.map_err(grpc_status)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse { model_name: model, is_loaded: true }))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Reply<pb::RepositoryModelUnloadResponse> {
        let (_, extensions, r) = request.into_parts();
        let model = model_named(&r.repository_name, &r.model_name).to_string();
        let result = async {
            if !r.model_name.is_empty() {
                check_repository_name(&r.repository_name)?;
            }
            self.explicit_mode()?;
            self.state.repository.unload(&model).await
        }
        .await;
        audit::record("unload", &model, &extensions, result.as_ref().map(|_| ()));
        result.map_err(grpc_status)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse { model_name: model, is_unloaded: true }))
    }
}

impl Inference {
    fn explicit_mode(&self) -> Result<()> {
        explicit_mode(self.state.config.model_control_mode)
    }
}

/// Load and unload requests are honoured only in explicit mode, as in Triton.
pub fn explicit_mode(mode: ControlMode) -> Result<()> {
    let mode = match mode {
        ControlMode::Explicit => return Ok(()),
        ControlMode::None => "none",
        ControlMode::Poll => "poll (the repository on disk decides what is loaded)",
    };
    Err(Error::Unavailable(
        format!(
            "explicit model load / unload is not allowed in model control mode {mode}: start with --model-control-mode explicit"
        ),
        Retry::Never,
    ))
}

/// The model a RepositoryModelLoad/Unload names: Triton's `model_name`
/// (field 2), or, when only field 1 is set, KServe's `model_name` there.
fn model_named<'a>(repository_name: &'a str, model_name: &'a str) -> &'a str {
    if model_name.is_empty() { repository_name } else { model_name }
}

/// ferroserve serves one repository; naming another is an error.
pub fn check_repository_name(name: &str) -> Result<()> {
    if name.is_empty() {
        Ok(())
    } else {
        Err(Error::Unimplemented(format!(
            "repository '{name}': ferroserve serves a single repository, so leave repository_name empty \
             and name the model in model_name (a request with only field 1 set is read as KServe's layout, \
             the model's name)"
        )))
    }
}
