//! Start-up smoke test: the shipped repository loads and answers.

mod common;

use common::{Server, shipped_models};

#[tokio::test]
async fn shipped_models_load_and_answer_over_both_fronts() {
    let server = Server::start(&shipped_models(), &[]);
    let mut client = server.grpc_client().await;
    let index = client.repository_index(ferroserve::pb::RepositoryIndexRequest::default()).await.unwrap().into_inner();
    let ready: Vec<_> = index.models.iter().filter(|m| m.state == "READY").map(|m| m.name.as_str()).collect();
    assert_eq!(ready, ["cnn", "mixed", "mlp", "text"]);
    let body = reqwest::get(server.http_url("/v2/models/mlp")).await.unwrap().text().await.unwrap();
    assert!(body.contains("\"probabilities\""), "{body}");
}
