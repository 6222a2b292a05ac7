//! The engine's flags, shared by `fovea serve` and `fovea worker`, and starting a worker
//! service from them: load the checkpoint, start the engine, describe the worker.

use std::path::Path;
use std::sync::Arc;

use clap::Args;
use fovea_membership::WorkerCapacity;
use fovea_model::DeviceSpec;
use fovea_model::input::RequestPreparer;
use fovea_model::preprocess::PreprocessConfig;
use fovea_proto::worker::v1::{WorkerInfo, WorkerRole};
use fovea_worker::service::WorkerService;
use fovea_worker::engine_rank::load_ranks;
use fovea_worker::{Engine, EngineConfig};

use crate::generate::ComputeDtype;
use crate::tensor_parallel::TensorParallelArgs;

/// How the engine runs the model.
#[derive(Args)]
pub struct EngineArgs {
    #[arg(long, env = "FOVEA_DTYPE", value_enum, default_value = "f32")]
    dtype: ComputeDtype,
    /// Where the model runs: cpu, cuda or cuda:N (a GPU needs a build with `--features cuda`; the
    /// KV cache stays in host memory).
    #[arg(long, env = "FOVEA_DEVICE", default_value = "cpu")]
    device: DeviceSpec,
    /// KV cache blocks of 16 tokens.
    #[arg(long, env = "FOVEA_KV_BLOCKS", default_value_t = 4096)]
    kv_blocks: usize,
    /// Tokens per forward pass (decoding steps plus prefill chunks).
    #[arg(long, env = "FOVEA_MAX_BATCH_TOKENS", default_value_t = 512)]
    max_batch_tokens: usize,
    /// Prompt tokens per forward pass while some request is decoding (keeps its time between
    /// tokens short while long image prompts prefill).
    #[arg(long, env = "FOVEA_MAX_PREFILL_TOKENS_WHILE_DECODING", default_value_t = 128)]
    max_prefill_tokens_while_decoding: usize,
    #[command(flatten)]
    pub tensor_parallel: TensorParallelArgs,
}

/// Who the worker is, for its `Describe` answer.
pub struct WorkerIdentity<'a> {
    pub id: &'a str,
    pub role: WorkerRole,
    pub model_name: &'a str,
}

impl EngineArgs {
    /// Loads the checkpoint in `dir`, starts its engine and returns the worker service over it,
    /// with the capacity it registers.
    pub fn start_worker(
        &self,
        dir: &Path,
        identity: WorkerIdentity,
    ) -> Result<(WorkerService, WorkerCapacity), String> {
        let preparer = RequestPreparer::from_model_dir(dir).map_err(|e| e.to_string())?;
        let preprocess =
            PreprocessConfig::from_file(dir.join("preprocessor_config.json")).map_err(|e| e.to_string())?;
        let engine_config = EngineConfig {
            max_batch_tokens: self.max_batch_tokens,
            max_prefill_tokens_while_decoding: self.max_prefill_tokens_while_decoding,
            ..EngineConfig::new(self.kv_blocks)
        };
        let device = self.device.open().map_err(|e| e.to_string())?;
        let options = self.tensor_parallel.options()?;
        let ranks = load_ranks(dir, self.dtype.into(), &device, options, &engine_config).map_err(|e| e.to_string())?;
        let context_length = ranks.local().model().config().text.max_position_embeddings;
        let engine = Engine::start_on_ranks(ranks, Arc::clone(preparer.tokenizer()), engine_config)
            .map_err(|e| e.to_string())?;
        let info = WorkerInfo {
            worker_id: identity.id.to_string(),
            role: identity.role as i32,
            model: identity.model_name.to_string(),
            context_length: context_length as u32,
            tensor_parallel_size: self.tensor_parallel.tp as u32,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let capacity = WorkerCapacity {
            kv_blocks: self.kv_blocks as u32,
            max_batch_tokens: self.max_batch_tokens as u32,
        };
        Ok((WorkerService::new(engine, preprocess, info), capacity))
    }
}
