//! The public API's flags (addresses, admission limits and job splitting), shared by `fovea serve` and
//! `fovea coordinator`, and the coordinator configuration they make.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use fovea_coordinator::admission::AdmissionLimits;
use fovea_coordinator::health::HealthPolicy;
use fovea_coordinator::split::SplitPolicy;
use fovea_coordinator::{CoordinatorConfig, Listeners};
use fovea_membership::Members;
use tokio::sync::watch;

use crate::process::listen;

/// Where the public API listens and how much it admits.
#[derive(Args)]
pub struct ApiArgs {
    /// Public gRPC API address.
    #[arg(long, env = "FOVEA_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// OpenAI-compatible HTTP API address (`/v1/chat/completions`, `/v1/models`).
    #[arg(long, env = "FOVEA_HTTP_ADDR", default_value = "127.0.0.1:8000")]
    http_addr: SocketAddr,
    /// Requests in flight before new ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "FOVEA_MAX_REQUESTS", default_value_t = 256)]
    max_requests: usize,
    /// Prompt tokens in flight before new requests get RESOURCE_EXHAUSTED.
    #[arg(long, env = "FOVEA_MAX_QUEUED_TOKENS", default_value_t = 1 << 20)]
    max_queued_tokens: usize,
    /// Most images per request.
    #[arg(long, env = "FOVEA_MAX_IMAGES", default_value_t = 16)]
    max_images: usize,
    /// Most bytes per encoded image.
    #[arg(long, env = "FOVEA_MAX_IMAGE_BYTES", default_value_t = 32 << 20)]
    max_image_bytes: usize,
    /// Prompts of at least this many tokens are prefilled on a prefill worker and decoded on a
    /// decode worker (when the cluster has both); shorter ones run whole on one worker.
    #[arg(long, env = "FOVEA_DISAGG_MIN_PROMPT_TOKENS", default_value_t = SplitPolicy::default().disagg_min_prompt_tokens)]
    disagg_min_prompt_tokens: usize,
    /// Times a failed job is retried on other workers (and a decode worker lost mid-stream
    /// replaced).
    #[arg(long, env = "FOVEA_JOB_RETRIES", default_value_t = SplitPolicy::default().job_retries)]
    job_retries: usize,
    /// Lets a decode worker prefill a prompt of at least --disagg-min-prompt-tokens itself when
    /// no prefill (or full) worker can take it; without it such a request ends with UNAVAILABLE.
    #[arg(long, env = "FOVEA_PREFILL_FALLBACK")]
    prefill_fallback: bool,
    /// A prefill worker is given another prompt only while it has at most this many prompt
    /// tokens yet to compute (0: only when idle); past it prompts wait in the coordinator until a
    /// prefill worker has room or an idle decode worker takes one. A huge value never waits.
    #[arg(long, env = "FOVEA_MAX_PREFILL_BACKLOG_TOKENS", default_value_t = SplitPolicy::default().max_prefill_backlog_tokens)]
    max_prefill_backlog_tokens: u64,
    /// Prompts sent to disaggregation of at most this many tokens run whole on a decode worker at
    /// once when no prefill worker has room; longer ones wait for one.
    #[arg(long, env = "FOVEA_MAX_LOCAL_PREFILL_TOKENS", default_value_t = SplitPolicy::default().max_local_prefill_tokens)]
    max_local_prefill_tokens: usize,
    /// Whether a decode worker with nothing to do runs a prompt that waits for a prefill worker
    /// whole, prefilling it itself.
    #[arg(long, env = "FOVEA_IDLE_DECODE_PREFILL", default_value_t = SplitPolicy::default().idle_decode_prefill, action = clap::ArgAction::Set)]
    idle_decode_prefill: bool,
}

impl ApiArgs {
    /// Listens on the gRPC and HTTP addresses.
    pub async fn listeners(&self) -> Result<Listeners, String> {
        Ok(Listeners {
            grpc: listen(self.grpc_addr, "the gRPC API").await?,
            http: listen(self.http_addr, "the HTTP API").await?,
        })
    }

    /// The coordinator for `model_name` (checkpoint `model_dir`) over the workers in `members`.
    pub fn coordinator_config(
        &self,
        model_dir: PathBuf,
        model_name: String,
        members: watch::Receiver<Members>,
        health: HealthPolicy,
    ) -> CoordinatorConfig {
        CoordinatorConfig {
            model_dir,
            model_name,
            members,
            health,
            split: SplitPolicy {
                disagg_min_prompt_tokens: self.disagg_min_prompt_tokens,
                job_retries: self.job_retries,
                prefill_fallback: self.prefill_fallback,
                max_prefill_backlog_tokens: self.max_prefill_backlog_tokens,
                max_local_prefill_tokens: self.max_local_prefill_tokens,
                idle_decode_prefill: self.idle_decode_prefill,
            },
            admission: AdmissionLimits {
                max_requests: self.max_requests,
                max_prompt_tokens: self.max_queued_tokens,
            },
            max_images: self.max_images,
            max_image_bytes: self.max_image_bytes,
        }
    }
}

/// `listeners`' addresses, as a line for the operator.
pub fn describe(listeners: &Listeners) -> Result<String, String> {
    let grpc = listeners.grpc.local_addr().map_err(|e| e.to_string())?;
    let http = listeners.http.local_addr().map_err(|e| e.to_string())?;
    Ok(format!("grpc://{grpc} and http://{http}"))
}
