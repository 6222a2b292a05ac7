//! The engine's flags, shared by `fovea serve` and `fovea worker`, and starting a worker node
//! from them: load the checkpoint, start the engine (none for a vision worker), describe the
//! worker.

use std::path::Path;
use std::sync::Arc;

use clap::Args;
use fovea_membership::WorkerCapacity;
use fovea_model::DeviceSpec;
use fovea_model::input::RequestPreparer;
use fovea_model::preprocess::PreprocessConfig;
use fovea_model::{ModelConfig, Phi4VisionModel};
use fovea_proto::worker::v1::{WorkerInfo, WorkerRole};
use fovea_worker::EngineConfig;
use fovea_worker::engine_rank::load_ranks;
use fovea_worker::node::WorkerNode;

use crate::generate::ComputeDtype;
use crate::tensor_parallel::TensorParallelArgs;

/// A decode worker's prompt tokens per forward pass while some request is decoding: it prefills
/// only short prompts (and long ones when it has nothing else to do), so its steps stay close
/// to decoding steps.
const DECODE_ROLE_PREFILL_TOKENS_WHILE_DECODING: usize = 32;

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
    /// tokens short while long image prompts prefill); default 128, and 32 on a decode worker,
    /// which is there for its decoding steps.
    #[arg(long, env = "FOVEA_MAX_PREFILL_TOKENS_WHILE_DECODING")]
    max_prefill_tokens_while_decoding: Option<usize>,
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
    /// Refuses, before anything is loaded, a role this engine setup cannot serve: the vision role
    /// has no decoder to split, so it needs a single rank. Prefill and decode workers run at any
    /// `--tp` and exchange KV with workers of any other.
    pub fn check_role(&self, role: WorkerRole) -> Result<(), String> {
        if role == WorkerRole::Vision && self.tensor_parallel.tp != 1 {
            return Err(
                "the vision role needs --tp 1 (the vision tower runs on one rank; it has no decoder to split)".into(),
            );
        }
        Ok(())
    }

    /// The engine's settings for a worker of `role`.
    fn engine_config(&self, role: WorkerRole) -> EngineConfig {
        let defaults = EngineConfig::new(self.kv_blocks);
        let role_default = match role {
            WorkerRole::Decode => DECODE_ROLE_PREFILL_TOKENS_WHILE_DECODING,
            _ => defaults.max_prefill_tokens_while_decoding,
        };
        EngineConfig {
            max_batch_tokens: self.max_batch_tokens,
            max_prefill_tokens_while_decoding: self
                .max_prefill_tokens_while_decoding
                .unwrap_or(role_default),
            ..defaults
        }
    }

    /// Loads the checkpoint in `dir` and starts the worker node for `identity.role` on it (its
    /// engine, unless the role is vision), with the capacity it registers.
    pub fn start_worker(
        &self,
        dir: &Path,
        identity: WorkerIdentity,
    ) -> Result<(WorkerNode, WorkerCapacity), String> {
        self.check_role(identity.role)?;
        let preparer = RequestPreparer::from_model_dir(dir).map_err(|e| e.to_string())?;
        let preprocess = PreprocessConfig::from_file(dir.join("preprocessor_config.json"))
            .map_err(|e| e.to_string())?;
        let engine_config = self.engine_config(identity.role);
        let context_length = ModelConfig::from_dir(dir)
            .map_err(|e| e.to_string())?
            .text
            .max_position_embeddings;
        let device = self.device.open().map_err(|e| e.to_string())?;
        let info = WorkerInfo {
            worker_id: identity.id.to_string(),
            role: identity.role as i32,
            model: identity.model_name.to_string(),
            context_length: context_length as u32,
            tensor_parallel_size: self.tensor_parallel.tp as u32,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let tokenizer = Arc::clone(preparer.tokenizer());
        let node = if identity.role == WorkerRole::Vision {
            let model = Phi4VisionModel::load(dir, self.dtype.into(), &device)
                .map_err(|e| e.to_string())?;
            WorkerNode::start(Arc::new(model), tokenizer, preprocess, engine_config, info)
        } else {
            let options = self.tensor_parallel.options()?;
            let ranks = load_ranks(dir, self.dtype.into(), &device, options, &engine_config)
                .map_err(|e| e.to_string())?;
            WorkerNode::start_on_ranks(ranks, tokenizer, preprocess, engine_config, info)
        }
        .map_err(|e| e.to_string())?;
        let capacity = match identity.role {
            WorkerRole::Vision => WorkerCapacity {
                kv_blocks: 0,
                max_batch_tokens: 0,
            },
            _ => WorkerCapacity {
                kv_blocks: self.kv_blocks as u32,
                max_batch_tokens: self.max_batch_tokens as u32,
            },
        };
        Ok((node, capacity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        engine: EngineArgs,
    }

    fn prefill_tokens_while_decoding(args: &[&str], role: WorkerRole) -> usize {
        let command =
            Command::try_parse_from(std::iter::once("fovea").chain(args.iter().copied())).unwrap();
        command
            .engine
            .engine_config(role)
            .max_prefill_tokens_while_decoding
    }

    #[test]
    fn a_decode_worker_prefills_in_smaller_chunks_while_decoding_unless_told() {
        assert_eq!(prefill_tokens_while_decoding(&[], WorkerRole::Full), 128);
        assert_eq!(prefill_tokens_while_decoding(&[], WorkerRole::Prefill), 128);
        assert_eq!(prefill_tokens_while_decoding(&[], WorkerRole::Decode), 32);
        let told = ["--max-prefill-tokens-while-decoding", "64"];
        assert_eq!(prefill_tokens_while_decoding(&told, WorkerRole::Decode), 64);
        assert_eq!(prefill_tokens_while_decoding(&told, WorkerRole::Full), 64);
    }
}
