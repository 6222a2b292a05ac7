//! Assembling the coordinator's servers: the Generation service for one model, served over gRPC
//! (with the standard health service and reflection) and over the OpenAI-compatible HTTP API, on
//! listeners the caller chose, stopping together.

use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::sync::Arc;

use fovea_membership::Members;
use fovea_model::ModelConfig;
use fovea_model::input::RequestPreparer;
use fovea_proto::v1::generation_server::GenerationServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admission::{Admission, AdmissionLimits};
use crate::generation::{GenerationService, ModelDescription};
use crate::health::HealthPolicy;
use crate::openai;
use crate::split::{JobSplitter, SplitPolicy};
use crate::validation::Limits;
use crate::workers::WorkerPool;

/// Everything the coordinator needs to start.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The checkpoint directory (for the tokenizer, chat template and limits; no weights are read).
    pub model_dir: PathBuf,
    /// The name clients use for the model.
    pub model_name: String,
    /// The live workers (from a registry); those serving `model_name` get jobs, by role.
    pub members: watch::Receiver<Members>,
    /// When a worker counts as not ready.
    pub health: HealthPolicy,
    /// When prompts are prefilled apart from decoding, and how often failed jobs are retried.
    pub split: SplitPolicy,
    pub admission: AdmissionLimits,
    pub max_images: usize,
    pub max_image_bytes: usize,
}

/// Why the coordinator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot load the model's configuration: {0}")]
    Model(#[from] fovea_model::ModelError),
    #[error("cannot load the model's tokenizer or preprocessing: {0}")]
    Input(#[from] fovea_model::input::InputError),
    #[error("gRPC reflection could not be set up: {0}")]
    Reflection(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// Where the coordinator listens.
#[derive(Debug)]
pub struct Listeners {
    /// The public gRPC API.
    pub grpc: TcpListener,
    /// The OpenAI-compatible HTTP API.
    pub http: TcpListener,
}

/// Serves the coordinator on `listeners` until `shutdown` resolves or either server fails (which
/// stops the other); in-flight streams are given their final message before it returns.
pub async fn serve(
    config: CoordinatorConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let model = ModelConfig::from_dir(&config.model_dir)?;
    let preparer = Arc::new(RequestPreparer::from_model_dir(&config.model_dir)?);
    let workers = WorkerPool::follow(config.model_name.clone(), config.members, config.health);
    let limits = Limits {
        context_length: model.text.max_position_embeddings,
        max_images: config.max_images,
        max_image_bytes: config.max_image_bytes,
    };
    let description = ModelDescription {
        name: config.model_name.clone(),
        min_image_tokens: model.min_num_patches,
        max_image_tokens: model.max_num_patches,
        eos_token_ids: model.eos_token_ids.clone(),
    };
    let service = Arc::new(GenerationService::new(
        preparer,
        limits,
        Admission::new(config.admission),
        Arc::new(JobSplitter::new(workers, config.split)),
        description,
    ));
    let (health_reporter, health_service) = fovea_proto::health::server::health_reporter();
    health_reporter
        .set_serving::<GenerationServer<GenerationService>>()
        .await;
    let reflection =
        fovea_proto::reflection_service().map_err(|e| ServeError::Reflection(e.to_string()))?;
    let (stop, stopping) = watch::channel(false);
    let grpc = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            GenerationServer::from_arc(Arc::clone(&service))
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listeners.grpc),
            stopped(stopping.clone()),
        );
    let http = axum::serve(listeners.http, openai::router(service, config.model_name))
        .with_graceful_shutdown(stopped(stopping));
    let signal = async {
        tokio::select! {
            () = shutdown => {}
            () = stopped(stop.subscribe()) => {}
        }
        let _ = stop.send(true);
    };
    let ((), grpc, http) = tokio::join!(
        signal,
        then_stop(grpc, &stop),
        then_stop(http.into_future(), &stop)
    );
    grpc?;
    http.map_err(ServeError::Http)
}

/// Runs one server and then gives the stop signal: whichever way one server ends, the other is
/// told to stop too.
async fn then_stop<T>(server: impl Future<Output = T>, stop: &watch::Sender<bool>) -> T {
    let served = server.await;
    let _ = stop.send(true);
    served
}

/// Resolves once the stop signal is given.
async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|&stop| stop).await;
}
