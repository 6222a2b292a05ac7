//! One worker process's services by role: `full` (what `fovea serve` runs) serves Worker,
//! VisionEncoder, Prefiller and KvTransfer over one engine; `vision` VisionEncoder and a Worker
//! service that describes it and reports the encoder's load (no engine, no KV cache; see
//! [`crate::vision_worker`]); `prefill` Prefiller and Worker (whose Generate it refuses); `decode`
//! Worker (whole requests below the coordinator's disaggregation threshold, and jobs with a KV
//! transfer) and KvTransfer. Every role also serves `grpc.health.v1`, and every role's Worker
//! service streams load reports, so a coordinator watches each worker alike.
//!
//! [`WorkerNode::serve`] is how every worker process (`fovea serve`, `fovea worker`) serves: on
//! shutdown health turns NOT_SERVING and the worker drains (see [`crate::service`]) before the
//! server stops.

use std::future::Future;
use std::sync::Arc;

use fovea_model::Phi4VisionModel;
use fovea_model::config::TextConfig;
use fovea_model::preprocess::PreprocessConfig;
use fovea_proto::worker::v1::kv_transfer_server::KvTransferServer;
use fovea_proto::worker::v1::prefiller_server::PrefillerServer;
use fovea_proto::worker::v1::vision_encoder_server::VisionEncoderServer;
use fovea_proto::worker::v1::worker_server::WorkerServer;
use fovea_proto::worker::v1::{DType as WireDType, KvCacheLayout, WorkerInfo, WorkerRole};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::EngineConfig;
use crate::engine::Engine;
use crate::engine_rank::{EngineRanks, single_rank};
use crate::error::EngineError;
use crate::handle::EngineHandle;
use crate::job::JobContext;
use crate::kv_receiver::{AwaitedTransfers, KvReceiverService};
use crate::peers::PeerChannels;
use crate::prefill_service::PrefillService;
use crate::service::WorkerService;
use crate::vision_service::VisionEncoderService;
use crate::vision_worker::VisionWorkerService;

/// Largest message any worker service sends or takes (features of a 3600-patch image, KV chunks).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The geometry of the KV blocks a worker with `block_size` sends and takes for a decoder of
/// `text`: every KV head, whatever the worker's tensor-parallel size.
pub fn kv_cache_layout(text: &TextConfig, block_size: usize) -> KvCacheLayout {
    KvCacheLayout {
        block_size: block_size as u32,
        num_layers: text.num_layers as u32,
        num_kv_heads: text.num_kv_heads as u32,
        head_dim: text.head_dim as u32,
        dtype: WireDType::DtypeF32 as i32,
        total_kv_heads: text.num_kv_heads as u32,
        first_kv_head: 0,
    }
}

/// A worker's services for its role, ready to serve.
pub struct WorkerNode {
    engine: Option<EngineHandle>,
    /// The Worker service over the engine (every role but vision).
    worker: Option<WorkerService>,
    /// The Worker service over the encoder (vision role).
    vision_worker: Option<VisionWorkerService>,
    vision: Option<VisionEncoderService>,
    prefill: Option<PrefillService>,
    kv: Option<KvReceiverService>,
}

impl WorkerNode {
    /// Starts the services of `info.role` on `model` (an engine with `config` on one rank unless
    /// the role is `vision`), decoding images with `preprocess`. `info.kv_cache` is filled in here.
    pub fn start(
        model: Arc<Phi4VisionModel>,
        tokenizer: Arc<fovea_model::text::TextTokenizer>,
        preprocess: PreprocessConfig,
        config: EngineConfig,
        info: WorkerInfo,
    ) -> Result<Self, EngineError> {
        if info.role() == WorkerRole::Vision {
            return Self::vision_only(model, preprocess, &config, info);
        }
        let ranks = single_rank(model, &config)?;
        Self::start_on_ranks(ranks, tokenizer, preprocess, config, info)
    }

    /// [`WorkerNode::start`] on (possibly tensor-parallel) engine `ranks`; rank 0's model encodes
    /// images. Prefill and decode workers of any TP sizes exchange KV with each other.
    pub fn start_on_ranks(
        ranks: EngineRanks,
        tokenizer: Arc<fovea_model::text::TextTokenizer>,
        preprocess: PreprocessConfig,
        config: EngineConfig,
        mut info: WorkerInfo,
    ) -> Result<Self, EngineError> {
        let role = info.role();
        let model = Arc::clone(ranks.local().model());
        if role == WorkerRole::Vision {
            return Self::vision_only(model, preprocess, &config, info);
        }
        if role == WorkerRole::Unspecified {
            return Err(EngineError::Config("a worker needs a role".into()));
        }
        let preprocess = Arc::new(preprocess);
        let vision = (role == WorkerRole::Full)
            .then(|| {
                VisionEncoderService::new(
                    Arc::clone(&model),
                    Arc::clone(&preprocess),
                    config.image_cache_bytes,
                )
            })
            .transpose()
            .map_err(EngineError::Spawn)?;
        let layout = kv_cache_layout(&model.config().text, config.block_size);
        info.kv_cache = Some(layout);
        let jobs = JobContext {
            preprocess,
            peers: Arc::new(PeerChannels::default()),
            hidden_size: model.config().text.hidden_size,
            preparing: Arc::default(),
        };
        let engine = Engine::start_on_ranks(ranks, tokenizer, config)?;
        let awaited = AwaitedTransfers::default();
        let prefill = matches!(role, WorkerRole::Full | WorkerRole::Prefill)
            .then(|| PrefillService::new(engine.clone(), jobs.clone(), layout));
        let kv = matches!(role, WorkerRole::Full | WorkerRole::Decode)
            .then(|| KvReceiverService::new(engine.clone(), awaited.clone(), layout));
        Ok(WorkerNode {
            worker: Some(WorkerService::new(engine.clone(), jobs, info, awaited)),
            vision_worker: None,
            engine: Some(engine),
            vision,
            prefill,
            kv,
        })
    }

    /// The vision role's node: the encoder and its load reports, no engine and no KV cache.
    fn vision_only(
        model: Arc<Phi4VisionModel>,
        preprocess: PreprocessConfig,
        config: &EngineConfig,
        info: WorkerInfo,
    ) -> Result<Self, EngineError> {
        let vision =
            VisionEncoderService::new(model, Arc::new(preprocess), config.image_cache_bytes)
                .map_err(EngineError::Spawn)?;
        Ok(WorkerNode {
            engine: None,
            worker: None,
            vision_worker: Some(VisionWorkerService::new(vision.clone(), info)),
            vision: Some(vision),
            prefill: None,
            kv: None,
        })
    }

    /// The engine (none in the vision role), for load and block counts.
    pub fn engine(&self) -> Option<&EngineHandle> {
        self.engine.as_ref()
    }

    /// The vision encoder (full and vision roles), for its counts.
    pub fn vision(&self) -> Option<&VisionEncoderService> {
        self.vision.as_ref()
    }

    /// Serves the role's services on `listener` until `shutdown` resolves, then drains: health
    /// says NOT_SERVING, new jobs are refused, running ones finish, and it returns once every
    /// call has ended.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let (health_reporter, health_service) = fovea_proto::health::server::health_reporter();
        let draining = self
            .worker
            .as_ref()
            .map(WorkerService::draining)
            .or_else(|| {
                self.vision_worker
                    .as_ref()
                    .map(VisionWorkerService::draining)
            });
        let has_worker_api = draining.is_some();
        let has_vision = self.vision.is_some();
        let stop_reporter = health_reporter.clone();
        let shutdown = async move {
            shutdown.await;
            if let Some(draining) = draining {
                draining.send_replace(true);
                // Both Worker services (over the engine, over the encoder) go by one name.
                stop_reporter
                    .set_not_serving::<WorkerServer<WorkerService>>()
                    .await;
            }
            if has_vision {
                stop_reporter
                    .set_not_serving::<VisionEncoderServer<VisionEncoderService>>()
                    .await;
            }
        };
        let mut router = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_optional_service(self.worker.map(|service| {
                WorkerServer::new(service)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
            }))
            .add_optional_service(self.vision_worker.map(WorkerServer::new));
        if has_worker_api {
            health_reporter
                .set_serving::<WorkerServer<WorkerService>>()
                .await;
        }
        if let Some(vision) = self.vision {
            health_reporter
                .set_serving::<VisionEncoderServer<VisionEncoderService>>()
                .await;
            router = router.add_service(
                VisionEncoderServer::new(vision)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            );
        }
        router = router.add_optional_service(self.prefill.map(|service| {
            PrefillerServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        }));
        router = router.add_optional_service(self.kv.map(|service| {
            KvTransferServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        }));
        router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
    }
}
