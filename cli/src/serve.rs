//! `fovea serve`: the whole cluster in one process — one worker and the coordinator, talking over
//! the same worker API (on a loopback port) that separate processes use.
//!
//! With no `--model`, a tiny random-weight demo checkpoint is written to the cache directory on
//! first use, so the command works on a fresh machine with nothing downloaded.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use fovea_coordinator::admission::AdmissionLimits;
use fovea_coordinator::{CoordinatorConfig, Listeners, serve};
use fovea_model::{DeviceSpec, Phi4VisionModel};
use fovea_model::demo::{DemoPreset, write_demo_checkpoint};
use fovea_model::input::RequestPreparer;
use fovea_model::preprocess::PreprocessConfig;
use fovea_proto::worker::v1::{WorkerInfo, WorkerRole};
use fovea_worker::service::{WorkerService, serve_worker};
use fovea_worker::{Engine, EngineConfig};
use tokio::net::TcpListener;

use crate::generate::ComputeDtype;

#[derive(Args)]
pub struct ServeArgs {
    /// Checkpoint directory; default: a tiny demo checkpoint in the cache directory.
    #[arg(long, env = "FOVEA_MODEL")]
    model: Option<PathBuf>,
    /// Name clients use for the model.
    #[arg(long, env = "FOVEA_MODEL_NAME", default_value = "phi-4-reasoning-vision")]
    model_name: String,
    /// Public gRPC API address.
    #[arg(long, env = "FOVEA_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// OpenAI-compatible HTTP API address (`/v1/chat/completions`, `/v1/models`).
    #[arg(long, env = "FOVEA_HTTP_ADDR", default_value = "127.0.0.1:8000")]
    http_addr: SocketAddr,
    /// The in-process worker's API address (port 0: any free port).
    #[arg(long, env = "FOVEA_WORKER_ADDR", default_value = "127.0.0.1:0")]
    worker_addr: SocketAddr,
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
}

/// The demo checkpoint's directory: `$XDG_CACHE_HOME/fovea/demo-tiny` or `~/.cache/fovea/demo-tiny`.
fn demo_model_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("fovea").join("demo-tiny")
}

fn model_dir(args: &ServeArgs) -> Result<PathBuf, String> {
    if let Some(dir) = &args.model {
        return Ok(dir.clone());
    }
    let dir = demo_model_dir();
    if !dir.join("config.json").exists() {
        eprintln!("writing the tiny demo checkpoint to {}", dir.display());
        write_demo_checkpoint(DemoPreset::Tiny, &dir, 0).map_err(|e| e.to_string())?;
    }
    Ok(dir)
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn listen(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

pub fn run(args: ServeArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(serve_all(args))
}

async fn serve_all(args: ServeArgs) -> Result<(), String> {
    let device = args.device.open().map_err(|e| e.to_string())?;
    let dir = model_dir(&args)?;
    let model = Phi4VisionModel::load(&dir, args.dtype.into(), &device).map_err(|e| e.to_string())?;
    let preparer = RequestPreparer::from_model_dir(&dir).map_err(|e| e.to_string())?;
    let preprocess = PreprocessConfig::from_file(dir.join("preprocessor_config.json")).map_err(|e| e.to_string())?;
    let context_length = model.config().text.max_position_embeddings;
    let engine_config = EngineConfig {
        max_batch_tokens: args.max_batch_tokens,
        ..EngineConfig::new(args.kv_blocks)
    };
    let engine = Engine::start(Arc::new(model), Arc::clone(preparer.tokenizer()), engine_config).map_err(|e| e.to_string())?;
    let info = WorkerInfo {
        worker_id: "local".into(),
        role: WorkerRole::Full as i32,
        model: args.model_name.clone(),
        context_length: context_length as u32,
        tensor_parallel_size: 1,
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let worker_listener = TcpListener::bind(args.worker_addr)
        .await
        .map_err(|e| format!("cannot listen on {} for the worker: {e}", args.worker_addr))?;
    let worker_addr = worker_listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(serve_worker(
        WorkerService::new(engine, preprocess, info),
        worker_listener,
        async {
            let _ = worker_stopped.await;
        },
    ));

    let listeners = Listeners {
        grpc: listen(args.grpc_addr).await?,
        http: listen(args.http_addr).await?,
    };
    eprintln!(
        "fovea serving {} ({}) on grpc://{} and http://{}",
        args.model_name,
        dir.display(),
        listeners.grpc.local_addr().map_err(|e| e.to_string())?,
        listeners.http.local_addr().map_err(|e| e.to_string())?
    );
    let config = CoordinatorConfig {
        model_dir: dir,
        model_name: args.model_name,
        workers: vec![format!("http://{worker_addr}")],
        admission: AdmissionLimits {
            max_requests: args.max_requests,
            max_prompt_tokens: args.max_queued_tokens,
        },
        max_images: args.max_images,
        max_image_bytes: args.max_image_bytes,
    };
    let served = serve(config, listeners, shutdown_signal()).await;
    let _ = stop_worker.send(());
    let _ = worker.await;
    served.map_err(|e| e.to_string())
}
