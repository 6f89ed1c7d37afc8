//! gRPC server and model administration against the real server: health,
//! metadata, config, repository index, explicit load / unload, broken
//! models, readiness, grpc.health.v1, reflection, unimplemented RPCs.

mod common;
mod grpc_support;

use common::{GrpcClient, Server, shipped_models, temp_repository, test_models};
use ferroserve::pb;
use grpc_support::*;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn channel(server: &Server) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{}", server.grpc)).unwrap().connect().await.unwrap()
}

async fn model_ready(client: &mut GrpcClient, name: &str, version: &str) -> Result<bool, tonic::Status> {
    let request = pb::ModelReadyRequest { name: name.into(), version: version.into() };
    client.model_ready(request).await.map(|r| r.into_inner().ready)
}

async fn server_ready(client: &mut GrpcClient) -> bool {
    client.server_ready(pb::ServerReadyRequest {}).await.unwrap().into_inner().ready
}

async fn index(client: &mut GrpcClient) -> Vec<(String, String, String, String)> {
    let models = client.repository_index(pb::RepositoryIndexRequest::default()).await.unwrap().into_inner().models;
    models.into_iter().map(|m| (m.name, m.version, m.state, m.reason)).collect()
}

/// The index entries of one model as (version, state, reason).
async fn index_of(client: &mut GrpcClient, name: &str) -> Vec<(String, String, String)> {
    index(client).await.into_iter().filter(|e| e.0 == name).map(|e| (e.1, e.2, e.3)).collect()
}

async fn health(channel: &tonic::transport::Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let mut client = HealthClient::new(channel.clone());
    let response = client.check(HealthCheckRequest { service: service.into() }).await?.into_inner();
    Ok(ServingStatus::try_from(response.status).expect("a known serving status"))
}

fn load(name: &str) -> pb::RepositoryModelLoadRequest {
    pb::RepositoryModelLoadRequest { model_name: name.into(), ..Default::default() }
}

fn unload(name: &str) -> pb::RepositoryModelUnloadRequest {
    pb::RepositoryModelUnloadRequest { model_name: name.into(), ..Default::default() }
}

fn multiversion_request(version: &str, x: f32) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_version: version.into(),
        ..raw_request("multiversion", vec![(input("x", "FP32", &[1, 1]), f32_bytes(&[x]))])
    }
}

#[tokio::test]
async fn liveness_readiness_metadata_config_and_index() {
    let repo = temp_repository(&[
        (&shipped_models(), "mlp"),
        (&shipped_models(), "text"),
        (&test_models(), "mlp_auto"),
        (&test_models(), "multiversion"),
        (&test_models(), "nobatch"),
    ]);
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;

    assert!(client.server_live(pb::ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(server_ready(&mut client).await);
    assert!(model_ready(&mut client, "mlp", "").await.unwrap());
    assert!(model_ready(&mut client, "mlp", "1").await.unwrap());
    assert!(model_ready(&mut client, "multiversion", "2").await.unwrap());
    // Unknown models and versions are simply not ready (Triton's answer).
    assert!(!model_ready(&mut client, "unknown_model", "").await.unwrap());
    assert!(!model_ready(&mut client, "mlp", "2").await.unwrap());

    let metadata = client.server_metadata(pb::ServerMetadataRequest {}).await.unwrap().into_inner();
    assert_eq!(metadata.name, "ferroserve");
    assert_eq!(metadata.version, env!("CARGO_PKG_VERSION"));
    for extension in ["statistics", "model_repository", "model_configuration", "binary_tensor_data"] {
        assert!(
            metadata.extensions.iter().any(|e| e == extension),
            "{extension} missing from {:?}",
            metadata.extensions
        );
    }

    // Model metadata: -1 for the batch dimension, none without batching.
    let model_metadata =
        |name: &str, version: &str| pb::ModelMetadataRequest { name: name.into(), version: version.into() };
    let tensors = |t: &[pb::model_metadata_response::TensorMetadata]| {
        t.iter().map(|t| (t.name.clone(), t.datatype.clone(), t.shape.clone())).collect::<Vec<_>>()
    };
    let t = |name: &str, datatype: &str, shape: &[i64]| (name.to_string(), datatype.to_string(), shape.to_vec());
    let mlp = client.model_metadata(model_metadata("mlp", "")).await.unwrap().into_inner();
    assert_eq!(mlp.name, "mlp");
    assert_eq!(mlp.platform, "onnxruntime_onnx");
    assert_eq!(mlp.versions, ["1"]);
    assert_eq!(tensors(&mlp.inputs), [t("input", "FP32", &[-1, 16])]);
    assert_eq!(tensors(&mlp.outputs), [t("probabilities", "FP32", &[-1, 10])]);
    let text = client.model_metadata(model_metadata("text", "1")).await.unwrap().into_inner();
    assert_eq!(tensors(&text.inputs), [t("words", "BYTES", &[-1, -1])]);
    assert_eq!(tensors(&text.outputs), [t("ids", "INT64", &[-1, -1]), t("words_out", "BYTES", &[-1, -1])]);
    let nobatch = client.model_metadata(model_metadata("nobatch", "")).await.unwrap().into_inner();
    assert_eq!(tensors(&nobatch.inputs), [t("x", "FP32", &[2, 3])]);
    let multiversion = client.model_metadata(model_metadata("multiversion", "2")).await.unwrap().into_inner();
    assert_eq!(multiversion.versions, ["1", "2", "3"]);
    expect_error(client.model_metadata(model_metadata("nope", "")).await, Code::NotFound, &["nope"]);
    expect_error(client.model_metadata(model_metadata("mlp", "5")).await, Code::NotFound, &["'5'"]);

    // Model config: as written, and completed from the graph for mlp_auto.
    let config = |name: &str| pb::ModelConfigRequest { name: name.into(), version: String::new() };
    let mlp = client.model_config(config("mlp")).await.unwrap().into_inner().config.unwrap();
    assert_eq!((mlp.name.as_str(), mlp.platform.as_str(), mlp.max_batch_size), ("mlp", "onnxruntime_onnx", 32));
    assert_eq!(mlp.input.len(), 1);
    assert_eq!((mlp.input[0].name.as_str(), mlp.input[0].dims.as_slice()), ("input", &[16i64][..]));
    assert_eq!(mlp.input[0].data_type, pb::DataType::TypeFp32 as i32);
    assert_eq!((mlp.output[0].name.as_str(), mlp.output[0].dims.as_slice()), ("probabilities", &[10i64][..]));
    let Some(pb::model_config::SchedulingChoice::DynamicBatching(batching)) = &mlp.scheduling_choice else {
        panic!("mlp declares dynamic batching: {mlp:?}");
    };
    assert_eq!(batching.preferred_batch_size, [8, 16]);
    let auto = client.model_config(config("mlp_auto")).await.unwrap().into_inner().config.unwrap();
    assert_eq!(auto.name, "mlp_auto");
    assert_eq!(auto.platform, "onnxruntime_onnx");
    assert_eq!(auto.max_batch_size, 4, "auto-completed max_batch_size");
    assert!(matches!(auto.scheduling_choice, Some(pb::model_config::SchedulingChoice::DynamicBatching(_))));
    assert_eq!(
        auto.input.iter().map(|i| (i.name.as_str(), i.dims.clone(), i.data_type)).collect::<Vec<_>>(),
        [("input", vec![16], pb::DataType::TypeFp32 as i32)]
    );
    assert_eq!(
        auto.output.iter().map(|o| (o.name.as_str(), o.dims.clone())).collect::<Vec<_>>(),
        [("probabilities", vec![10])]
    );
    // mlp_auto serves batches of up to 4.
    let response = client
        .model_infer(raw_request("mlp_auto", vec![(input("input", "FP32", &[4, 16]), f32_bytes(&mlp_rows(4, 1.0)))]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(output(&response, "probabilities").1, [4, 10]);
    let result = client
        .model_infer(raw_request("mlp_auto", vec![(input("input", "FP32", &[5, 16]), f32_bytes(&mlp_rows(5, 1.0)))]))
        .await;
    expect_error(result, Code::InvalidArgument, &["'input'", "5", "4"]);
    expect_error(client.model_config(config("nope")).await, Code::NotFound, &["nope"]);

    // Repository index: every version READY.
    let entries = index(&mut client).await;
    let summary: Vec<_> = entries.iter().map(|e| (e.0.as_str(), e.1.as_str(), e.2.as_str())).collect();
    assert_eq!(
        summary,
        [
            ("mlp", "1", "READY"),
            ("mlp_auto", "1", "READY"),
            ("multiversion", "1", "READY"),
            ("multiversion", "2", "READY"),
            ("multiversion", "3", "READY"),
            ("nobatch", "1", "READY"),
            ("text", "1", "READY"),
        ]
    );
    let ready_only = client
        .repository_index(pb::RepositoryIndexRequest { ready: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ready_only.models.len(), entries.len());
    let other = pb::RepositoryIndexRequest { repository_name: "elsewhere".into(), ..Default::default() };
    expect_error(client.repository_index(other).await, Code::Unimplemented, &["elsewhere"]);
}

#[tokio::test]
async fn unsupported_rpcs_answer_unimplemented_and_health_and_reflection_work() {
    let repo = temp_repository(&[(&shipped_models(), "mlp")]);
    let server = Server::start(repo.path(), &[]);
    let mut client = server.grpc_client().await;

    let unimplemented = |result: Result<(), tonic::Status>, what: &str| match result {
        Ok(()) => panic!("{what} answered OK"),
        Err(status) => assert_eq!(status.code(), Code::Unimplemented, "{what}: {status:?}"),
    };
    unimplemented(
        client.system_shared_memory_status(pb::SystemSharedMemoryStatusRequest::default()).await.map(drop),
        "SystemSharedMemoryStatus",
    );
    let register =
        pb::SystemSharedMemoryRegisterRequest { name: "r".into(), key: "/k".into(), byte_size: 64, offset: 0 };
    unimplemented(client.system_shared_memory_register(register).await.map(drop), "SystemSharedMemoryRegister");
    unimplemented(
        client.system_shared_memory_unregister(pb::SystemSharedMemoryUnregisterRequest::default()).await.map(drop),
        "SystemSharedMemoryUnregister",
    );
    unimplemented(
        client.cuda_shared_memory_status(pb::CudaSharedMemoryStatusRequest::default()).await.map(drop),
        "CudaSharedMemoryStatus",
    );
    unimplemented(
        client.cuda_shared_memory_register(pb::CudaSharedMemoryRegisterRequest::default()).await.map(drop),
        "CudaSharedMemoryRegister",
    );
    unimplemented(
        client.cuda_shared_memory_unregister(pb::CudaSharedMemoryUnregisterRequest::default()).await.map(drop),
        "CudaSharedMemoryUnregister",
    );
    unimplemented(client.trace_setting(pb::TraceSettingRequest::default()).await.map(drop), "TraceSetting");
    unimplemented(client.log_settings(pb::LogSettingsRequest::default()).await.map(drop), "LogSettings");

    // grpc.health.v1: the server, the inference service and each model.
    let channel = channel(&server).await;
    assert_eq!(health(&channel, "").await.unwrap(), ServingStatus::Serving);
    assert_eq!(health(&channel, "inference.GRPCInferenceService").await.unwrap(), ServingStatus::Serving);
    assert_eq!(health(&channel, "mlp").await.unwrap(), ServingStatus::Serving);
    let unknown = health(&channel, "no_such_model").await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);

    // Server reflection (v1) lists the services.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().expect("one reflection response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a list of services: {response:?}");
    };
    let services: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["inference.GRPCInferenceService", "grpc.health.v1.Health"] {
        assert!(services.contains(&expected), "{expected} missing from {services:?}");
    }
}

#[tokio::test]
async fn explicit_mode_loads_and_unloads_on_request() {
    let root = tempfile::tempdir().unwrap();
    for (source, name) in [(shipped_models(), "mlp"), (test_models(), "multiversion")] {
        common::copy_dir(&source.join(name), &root.path().join(name));
    }
    write_broken_models(root.path());
    let server = Server::start(root.path(), &["--model-control-mode", "explicit", "--load-model", "mlp"]);
    let mut client = server.grpc_client().await;

    // Only mlp was loaded at start-up; the rest are on disk, unloaded.
    assert!(model_ready(&mut client, "mlp", "").await.unwrap());
    assert_eq!(
        index_of(&mut client, "multiversion").await,
        [(String::new(), "UNAVAILABLE".into(), "not loaded".into())]
    );
    expect_error(client.model_infer(multiversion_request("", 1.0)).await, Code::NotFound, &["multiversion"]);

    // Load: every version becomes ready and serves.
    client.repository_model_load(load("multiversion")).await.unwrap();
    assert!(model_ready(&mut client, "multiversion", "").await.unwrap());
    let states: Vec<_> = index_of(&mut client, "multiversion").await.into_iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(states, [("1".into(), "READY".into()), ("2".into(), "READY".into()), ("3".into(), "READY".into())]);
    let response = client.model_infer(multiversion_request("2", 1.0)).await.unwrap().into_inner();
    assert_eq!(f32_values(output(&response, "y").2), [3.0]);

    // Unload: not ready, refused as UNAVAILABLE, shown as unloaded; the server stays ready.
    client.repository_model_unload(unload("multiversion")).await.unwrap();
    assert!(!model_ready(&mut client, "multiversion", "").await.unwrap());
    expect_error(
        client.model_infer(multiversion_request("", 1.0)).await,
        Code::Unavailable,
        &["multiversion", "unloaded"],
    );
    assert_eq!(index_of(&mut client, "multiversion").await, [(String::new(), "UNAVAILABLE".into(), "unloaded".into())]);
    assert!(server_ready(&mut client).await);
    assert!(model_ready(&mut client, "mlp", "").await.unwrap(), "unloading one model leaves the others");

    // Load again: back in service.
    client.repository_model_load(load("multiversion")).await.unwrap();
    let response = client.model_infer(multiversion_request("", 1.0)).await.unwrap().into_inner();
    assert_eq!(f32_values(output(&response, "y").2), [4.0]);

    // Refusals: unknown and invalid names, broken models, load parameters, other repositories.
    expect_error(client.repository_model_load(load("ghost")).await, Code::NotFound, &["ghost"]);
    expect_error(client.repository_model_load(load("../mlp")).await, Code::NotFound, &["../mlp"]);
    expect_error(client.repository_model_unload(unload("ghost")).await, Code::NotFound, &["ghost"]);
    let error = expect_error(
        client.repository_model_load(load("wrong_dims")).await,
        Code::InvalidArgument,
        &["wrong_dims", "17"],
    );
    let entries = index_of(&mut client, "wrong_dims").await;
    assert!(entries.iter().any(|e| e.1 == "UNAVAILABLE" && e.2.contains("17")), "{entries:?} (load said {error})");
    assert!(!model_ready(&mut client, "wrong_dims", "").await.unwrap());
    let with_parameter = |key: &str, choice| {
        let mut request = load("mlp");
        let parameter = pb::ModelRepositoryParameter { parameter_choice: Some(choice) };
        request.parameters.insert(key.into(), parameter);
        request
    };
    use pb::model_repository_parameter::ParameterChoice;
    let file = with_parameter("file:1/model.onnx", ParameterChoice::BytesParam(vec![1u8, 2].into()));
    expect_error(client.repository_model_load(file).await, Code::Unimplemented, &["'file:1/model.onnx'", "config"]);
    let not_a_string = with_parameter("config", ParameterChoice::BoolParam(true));
    expect_error(client.repository_model_load(not_a_string).await, Code::InvalidArgument, &["'config'", "JSON"]);
    let not_json = with_parameter("config", ParameterChoice::StringParam("{oops".into()));
    expect_error(client.repository_model_load(not_json).await, Code::InvalidArgument, &["load request's config"]);
    let elsewhere = pb::RepositoryModelLoadRequest { repository_name: "elsewhere".into(), ..load("mlp") };
    expect_error(client.repository_model_load(elsewhere).await, Code::Unimplemented, &["elsewhere"]);

    // Unloading mlp takes it out of service too.
    client.repository_model_unload(unload("mlp")).await.unwrap();
    assert!(!model_ready(&mut client, "mlp", "").await.unwrap());
    expect_error(client.model_infer(mlp_request(1)).await, Code::Unavailable, &["mlp"]);
    let response = client.model_infer(multiversion_request("1", 1.0)).await.unwrap().into_inner();
    assert_eq!(f32_values(output(&response, "y").2), [2.0]);
}

#[tokio::test]
async fn broken_models_do_not_stop_healthy_ones_and_none_mode_refuses_load() {
    let root = tempfile::tempdir().unwrap();
    for name in ["mlp", "text"] {
        common::copy_dir(&shipped_models().join(name), &root.path().join(name));
    }
    let broken = write_broken_models(root.path());
    let server = Server::start(root.path(), &[]);
    let mut client = server.grpc_client().await;

    assert!(server_ready(&mut client).await, "one bad model does not make the server unready by default");
    for (name, phrase) in &broken {
        let entries = index_of(&mut client, name).await;
        assert!(!entries.is_empty(), "{name} missing from the index");
        assert!(entries.iter().all(|e| e.1 == "UNAVAILABLE"), "{name}: {entries:?}");
        assert!(entries.iter().any(|e| e.2.contains(phrase)), "{name}: reason lacks {phrase:?}: {entries:?}");
        assert!(!model_ready(&mut client, name, "").await.unwrap(), "{name} reported ready");
        let request = raw_request(name, vec![(input("input", "FP32", &[1, 16]), f32_bytes(&mlp_rows(1, 0.0)))]);
        expect_error(client.model_infer(request).await, Code::Unavailable, &[name]);
    }
    for name in ["mlp", "text"] {
        assert_eq!(index_of(&mut client, name).await, [("1".into(), "READY".into(), String::new())]);
        assert!(model_ready(&mut client, name, "").await.unwrap());
    }
    check_mlp_response(&client.model_infer(mlp_request(2)).await.unwrap().into_inner(), 2);
    let channel = channel(&server).await;
    assert_eq!(health(&channel, "").await.unwrap(), ServingStatus::Serving);
    assert_eq!(health(&channel, "garbage").await.unwrap(), ServingStatus::NotServing);
    assert_eq!(health(&channel, "mlp").await.unwrap(), ServingStatus::Serving);

    // Model control mode "none": load and unload are refused, nothing changes.
    expect_error(client.repository_model_load(load("garbage")).await, Code::Unavailable, &["explicit"]);
    expect_error(client.repository_model_unload(unload("mlp")).await, Code::Unavailable, &["explicit"]);
    assert!(model_ready(&mut client, "mlp", "").await.unwrap());
}

#[tokio::test]
async fn strict_readiness_requires_every_loaded_model() {
    // Explicit mode: ready with mlp alone, unready once a broken model was tried.
    let root = tempfile::tempdir().unwrap();
    common::copy_dir(&shipped_models().join("mlp"), &root.path().join("mlp"));
    write_broken_models(root.path());
    let server =
        Server::start(root.path(), &["--strict-readiness", "--model-control-mode", "explicit", "--load-model", "mlp"]);
    let mut client = server.grpc_client().await;
    assert!(server_ready(&mut client).await);
    expect_error(client.repository_model_load(load("garbage")).await, Code::InvalidArgument, &["garbage"]);
    assert!(!server_ready(&mut client).await, "strict readiness: a failed model makes the server unready");
    let channel = channel(&server).await;
    assert_eq!(health(&channel, "").await.unwrap(), ServingStatus::NotServing);
    // The healthy model still serves.
    assert!(model_ready(&mut client, "mlp", "").await.unwrap());
    check_mlp_response(&client.model_infer(mlp_request(1)).await.unwrap().into_inner(), 1);
    drop(server);

    // Mode none: start-up with a broken model never becomes ready.
    let server = Server::spawn(root.path(), &["--strict-readiness"]);
    let mut client = connect(&server.grpc).await;
    let settled = |models: &[pb::repository_index_response::ModelIndex]| {
        models.iter().any(|m| m.name == "mlp" && m.state == "READY")
            && models.iter().all(|m| m.state != "LOADING" && m.reason != "not loaded")
    };
    let models = wait_for_index(&mut client, settled).await;
    assert!(models.iter().any(|m| m.name == "garbage" && m.state == "UNAVAILABLE"), "{models:?}");
    assert!(!server_ready(&mut client).await);
    check_mlp_response(&client.model_infer(mlp_request(1)).await.unwrap().into_inner(), 1);
}

#[tokio::test]
async fn strict_readiness_recovers_after_unloading() {
    let root = tempfile::tempdir().unwrap();
    for name in ["mlp", "text"] {
        common::copy_dir(&shipped_models().join(name), &root.path().join(name));
    }
    write_broken_models(root.path());
    let flags = ["--strict-readiness", "--model-control-mode", "explicit", "--load-model", "mlp,text"];
    let server = Server::start(root.path(), &flags);
    let mut client = server.grpc_client().await;
    assert!(server_ready(&mut client).await);
    // Unloading a healthy model on purpose leaves every loaded model ready.
    client.repository_model_unload(unload("text")).await.unwrap();
    assert!(server_ready(&mut client).await, "unloading 'text' made the server unready");
    // Unloading the broken model that made the server unready restores readiness.
    let _ = client.repository_model_load(load("garbage")).await;
    assert!(!server_ready(&mut client).await);
    client.repository_model_unload(unload("garbage")).await.unwrap();
    assert!(server_ready(&mut client).await, "unloading the failed model did not restore readiness");
}
