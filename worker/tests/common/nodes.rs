//! Worker nodes of any role on loopback ports, each in its own runtime so a test can kill one
//! (its connections drop at once, as a killed process's do), and golden cases as worker jobs.

use std::net::SocketAddr;
use std::sync::Arc;

use candle_core::{DType, Device};
use fovea_model::Phi4VisionModel;
use fovea_model::preprocess::PreprocessConfig;
use fovea_model::tp::RankOptions;
use fovea_proto::worker::v1::{
    EncodedImage, GenerateJob, ImageInput, SamplingParams, WorkerInfo, WorkerRole,
};
use fovea_worker::EngineConfig;
use fovea_worker::EngineHandle;
use fovea_worker::engine_rank::load_ranks;
use fovea_worker::node::WorkerNode;
use fovea_worker::vision_service::VisionEncoderService;

use super::{GoldenCase, model_dir};

/// A worker serving on a loopback port until killed or dropped.
pub struct Node {
    /// `host:port`.
    pub address: String,
    pub engine: Option<EngineHandle>,
    pub vision: Option<VisionEncoderService>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Node {
    /// Starts a `role` worker of `model` with `kv_blocks` blocks of 16 tokens.
    pub fn start(model: &Arc<Phi4VisionModel>, role: WorkerRole, kv_blocks: usize) -> Node {
        Self::start_with(model, role, EngineConfig::new(kv_blocks))
    }

    /// Starts a `role` worker of `model` whose engine runs with `config`.
    pub fn start_with(
        model: &Arc<Phi4VisionModel>,
        role: WorkerRole,
        config: EngineConfig,
    ) -> Node {
        let node = WorkerNode::start(
            Arc::clone(model),
            Arc::clone(super::preparer().tokenizer()),
            preprocess(),
            config,
            info(role),
        )
        .unwrap();
        Self::serve(node)
    }

    /// Starts a `role` worker of the golden checkpoint (f32) with its decoder split over `tp`
    /// rank threads of one compute thread each, and `kv_blocks` blocks of 16 tokens.
    pub fn start_tp(tp: usize, role: WorkerRole, kv_blocks: usize) -> Node {
        let config = EngineConfig::new(kv_blocks);
        let options = RankOptions {
            threads_per_rank: 1,
            ..RankOptions::new(tp)
        };
        let ranks = load_ranks(&model_dir(), DType::F32, &Device::Cpu, options, &config).unwrap();
        let tokenizer = Arc::clone(super::preparer().tokenizer());
        let node =
            WorkerNode::start_on_ranks(ranks, tokenizer, preprocess(), config, info(role)).unwrap();
        Self::serve(node)
    }

    /// Serves `node` on a loopback port, on a runtime of its own.
    fn serve(node: WorkerNode) -> Node {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (engine, vision) = (node.engine().cloned(), node.vision().cloned());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            node.serve(listener, std::future::pending()).await
        });
        Node {
            address: address.to_string(),
            engine,
            vision,
            runtime: Some(runtime),
        }
    }

    /// Stops serving at once, dropping every connection and the engine's service handles, as a
    /// `kill -9` of the process would.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The golden checkpoint's image preprocessing.
fn preprocess() -> PreprocessConfig {
    PreprocessConfig::from_file(model_dir().join("preprocessor_config.json")).unwrap()
}

/// What a `role` worker says of itself.
fn info(role: WorkerRole) -> WorkerInfo {
    WorkerInfo {
        worker_id: format!("{role:?}"),
        role: role as i32,
        ..Default::default()
    }
}

/// Waits up to 20 s for `engine` to hold no blocks and run nothing; panics naming `what` if not.
pub async fn wait_idle(engine: &EngineHandle, what: &str) {
    for _ in 0..400 {
        let stats = engine.stats();
        if stats.free_blocks == stats.total_blocks && stats.running == 0 && stats.waiting == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{what}: not idle: {:?}", engine.stats());
}

/// `case` as a greedy worker job for its golden tokens, images sent whole, each naming
/// `vision_worker` (empty: none).
pub fn golden_job(case: &GoldenCase, request_id: &str, vision_worker: &str) -> GenerateJob {
    GenerateJob {
        request_id: request_id.to_string(),
        prompt_token_ids: case.request.prompt_ids.clone(),
        images: case
            .request
            .images
            .iter()
            .zip(&case.image_files)
            .map(|((placement, image), file)| ImageInput {
                image: Some(EncodedImage {
                    content_hash: fovea_proto::image_content_hash(file).to_vec().into(),
                    data: file.clone().into(),
                    grid_rows: image.grid_h as u32,
                    grid_cols: image.grid_w as u32,
                    ..Default::default()
                }),
                start: placement.start as u32,
                vision_worker: vision_worker.to_string(),
            })
            .collect(),
        sampling: Some(SamplingParams {
            top_p: 1.0,
            ..Default::default()
        }),
        max_tokens: case.greedy_tokens.len() as u32,
        ..Default::default()
    }
}
