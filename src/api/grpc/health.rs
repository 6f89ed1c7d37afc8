//! grpc.health.v1.Health answered from live state: service "" is the
//! server's readiness, a model's name is that model's readiness.

use crate::repository::Repository;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// How often Watch re-reads the state.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

pub struct HealthService {
    repository: Arc<Repository>,
}

impl HealthService {
    pub fn new(repository: Arc<Repository>) -> Self {
        HealthService { repository }
    }
}

fn status(repository: &Repository, service: &str) -> Result<ServingStatus, Status> {
    let serving = |ready: bool| if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
    match service {
        "" | "inference.GRPCInferenceService" => Ok(serving(repository.is_ready())),
        model => match repository.get(model, "") {
            Ok(_) => Ok(ServingStatus::Serving),
            Err(crate::error::Error::NotFound(_))
                if repository.scan().unwrap_or_default().iter().all(|m| m != model) =>
            {
                Err(Status::not_found(format!("unknown service or model '{model}'")))
            }
            Err(_) => Ok(ServingStatus::NotServing),
        },
    }
}

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for HealthService {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let status = status(&self.repository, &request.get_ref().service)?;
        Ok(Response::new(HealthCheckResponse { status: status.into() }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let repository = self.repository.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let now = status(&repository, &service).unwrap_or(ServingStatus::ServiceUnknown);
                if last != Some(now) {
                    last = Some(now);
                    if tx.send(Ok(HealthCheckResponse { status: now.into() })).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
