//! Assembling the coordinator's gRPC server: the Generation service for one model, the standard
//! health service and reflection, on a listener the caller chose.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use fovea_model::ModelConfig;
use fovea_model::input::RequestPreparer;
use fovea_proto::v1::generation_server::GenerationServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admission::{Admission, AdmissionLimits};
use crate::generation::{GenerationService, ModelDescription};
use crate::validation::Limits;
use crate::workers::WorkerPool;

/// Everything the coordinator needs to start.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The checkpoint directory (for the tokenizer, chat template and limits; no weights are read).
    pub model_dir: PathBuf,
    /// The name clients use for the model.
    pub model_name: String,
    /// Worker API addresses (`http://host:port`).
    pub workers: Vec<String>,
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
    #[error("bad worker address: {0}")]
    WorkerAddress(tonic::transport::Error),
    #[error("gRPC reflection could not be set up: {0}")]
    Reflection(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the coordinator on `listener` until `shutdown` resolves; in-flight streams are given
/// their final message before it returns.
pub async fn serve(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let model = ModelConfig::from_dir(&config.model_dir)?;
    let preparer = Arc::new(RequestPreparer::from_model_dir(&config.model_dir)?);
    let workers = WorkerPool::new(&config.workers).map_err(ServeError::WorkerAddress)?;
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
    let service = GenerationService::new(preparer, limits, Admission::new(config.admission), workers, description);
    let (health_reporter, health_service) = fovea_proto::health::server::health_reporter();
    health_reporter
        .set_serving::<GenerationServer<GenerationService>>()
        .await;
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(fovea_proto::reflection_service().map_err(|e| ServeError::Reflection(e.to_string()))?)
        .add_service(
            GenerationServer::new(service)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
