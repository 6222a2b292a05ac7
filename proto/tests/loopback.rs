//! A real gRPC round trip on 127.0.0.1: a test-only `Generation` server answering with canned
//! messages, the generated client, the health service and reflection.

mod common;

use std::pin::Pin;

use common::{canned_stream, multimodal_request};
use fovea_proto::health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use fovea_proto::v1::generation_client::GenerationClient;
use fovea_proto::v1::generation_server::{Generation, GenerationServer};
use fovea_proto::v1::{
    GenerateRequest, GenerateResponse, ImagePlacement, ListModelsRequest, ListModelsResponse,
    ModelInfo, TokenizeRequest, TokenizeResponse, content_part::Part, generate_response::Event,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// The image placeholder id every image position shows as.
const IMAGE_PLACEHOLDER_ID: u32 = 100_256;

/// Answers every call with canned messages; Tokenize gives each text part one token and each
/// image a 2x2 patch grid.
struct CannedGeneration;

#[tonic::async_trait]
impl Generation for CannedGeneration {
    type GenerateStream = Pin<Box<dyn Stream<Item = Result<GenerateResponse, Status>> + Send>>;

    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let responses = canned_stream(&request.into_inner().request_id);
        Ok(Response::new(Box::pin(tokio_stream::iter(
            responses.into_iter().map(Ok),
        ))))
    }

    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        Ok(Response::new(ListModelsResponse {
            models: vec![ModelInfo {
                name: "phi-4-reasoning-vision-15b".to_owned(),
                is_default: true,
                context_length: 32_768,
                min_image_tokens: 256,
                max_image_tokens: 3_600,
            }],
        }))
    }

    async fn tokenize(
        &self,
        request: Request<TokenizeRequest>,
    ) -> Result<Response<TokenizeResponse>, Status> {
        let mut response = TokenizeResponse::default();
        let parts = request
            .into_inner()
            .messages
            .into_iter()
            .flat_map(|m| m.content);
        for part in parts.filter_map(|part| part.part) {
            match part {
                Part::Text(_) => response.token_ids.push(1_000),
                Part::Image(_) => {
                    response.images.push(ImagePlacement {
                        start: response.token_ids.len() as u32,
                        tokens: 4,
                        grid_rows: 2,
                        grid_cols: 2,
                    });
                    response.token_ids.extend([IMAGE_PLACEHOLDER_ID; 4]);
                    response.image_tokens += 4;
                }
            }
        }
        response.prompt_tokens = response.token_ids.len() as u32;
        Ok(Response::new(response))
    }
}

/// Serves the canned `Generation`, health (Generation marked SERVING) and reflection on an
/// ephemeral loopback port, and returns a channel to it. The server lives as long as the test's
/// runtime.
async fn start_server() -> Channel {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (health_reporter, health_service) = fovea_proto::health::server::health_reporter();
    health_reporter
        .set_serving::<GenerationServer<CannedGeneration>>()
        .await;
    let router = Server::builder()
        .add_service(GenerationServer::new(CannedGeneration))
        .add_service(health_service)
        .add_service(fovea_proto::reflection_service().unwrap());
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn generate_streams_deltas_then_exactly_one_final() {
    let mut client = GenerationClient::new(start_server().await);
    let mut stream = client
        .generate(multimodal_request())
        .await
        .unwrap()
        .into_inner();
    let mut received = Vec::new();
    while let Some(response) = stream.next().await {
        received.push(response.unwrap().event.unwrap());
    }
    let finals: Vec<usize> = (0..received.len())
        .filter(|&i| matches!(received[i], Event::Final(_)))
        .collect();
    assert_eq!(finals, [received.len() - 1], "one final, last");
    let Some(Event::Final(last)) = received.last() else {
        unreachable!()
    };
    assert_eq!(last.request_id, "req-42");
    assert_eq!(received.len(), canned_stream("req-42").len());
}

#[tokio::test]
async fn tokenize_shows_image_positions_as_the_placeholder_id() {
    let mut client = GenerationClient::new(start_server().await);
    let request = TokenizeRequest {
        model: String::new(),
        messages: multimodal_request().messages,
        mode: multimodal_request().mode,
    };
    let response = client.tokenize(request).await.unwrap().into_inner();
    assert_eq!(response.prompt_tokens as usize, response.token_ids.len());
    assert_eq!(response.image_tokens, 8);
    for image in &response.images {
        let span = &response.token_ids[image.start as usize..][..image.tokens as usize];
        assert!(span.iter().all(|&id| id == IMAGE_PLACEHOLDER_ID));
    }
    assert_eq!(
        response
            .images
            .iter()
            .map(|image| image.start)
            .collect::<Vec<_>>(),
        [1, 7]
    );
}

#[tokio::test]
async fn list_models_names_the_default_model() {
    let mut client = GenerationClient::new(start_server().await);
    let models = client
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert!(models[0].is_default);
}

#[tokio::test]
async fn health_reports_generation_serving() {
    let mut client = HealthClient::new(start_server().await);
    let request = HealthCheckRequest {
        service: "fovea.v1.Generation".to_owned(),
    };
    let response = client.check(request).await.unwrap().into_inner();
    assert_eq!(response.status(), ServingStatus::Serving);
}

#[tokio::test]
async fn reflection_lists_fovea_and_health_services() {
    let mut client = ServerReflectionClient::new(start_server().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for expected in [
        "fovea.v1.Generation",
        "fovea.worker.v1.Worker",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|name| name == expected),
            "{expected} not in {names:?}"
        );
    }
}
