//! `fovea serve`: the whole cluster in one process — one worker and the coordinator, talking over
//! the same worker API (on a loopback port) that separate processes use, with membership through
//! the in-process registry instead of etcd.

use std::net::SocketAddr;

use clap::Args;
<<<<<<< HEAD
use fovea_coordinator::health::HealthPolicy;
use fovea_coordinator::serve;
use fovea_membership::{LocalRegistry, Registry, WorkerRecord};
use fovea_proto::worker::v1::WorkerRole;
use fovea_worker::service::serve_worker;
=======
use fovea_coordinator::admission::AdmissionLimits;
use fovea_coordinator::split::SplitPolicy;
use fovea_coordinator::{CoordinatorConfig, Listeners, serve};
use fovea_model::Phi4VisionModel;
use fovea_model::demo::{DemoPreset, write_demo_checkpoint};
use fovea_model::input::RequestPreparer;
use fovea_model::preprocess::PreprocessConfig;
use fovea_proto::worker::v1::{WorkerInfo, WorkerRole};
use fovea_worker::EngineConfig;
use fovea_worker::node::WorkerNode;
use tokio::net::TcpListener;
>>>>>>> disagg

use crate::api_args::{ApiArgs, describe};
use crate::engine_args::{EngineArgs, WorkerIdentity};
use crate::model_args::ModelArgs;
use crate::process::{block_on, listen, shutdown_signal};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    api: ApiArgs,
    /// The in-process worker's API address (port 0: any free port).
    #[arg(long, env = "FOVEA_WORKER_ADDR", default_value = "127.0.0.1:0")]
    worker_addr: SocketAddr,
<<<<<<< HEAD
    #[command(flatten)]
    engine: EngineArgs,
=======
    #[arg(long, env = "FOVEA_DTYPE", value_enum, default_value = "f32")]
    dtype: ComputeDtype,
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
    /// A worker process to use besides the in-process one, as ROLE=HOST:PORT (role full,
    /// vision, prefill or decode); repeatable, comma-separated in the environment variable.
    #[arg(long = "cluster-worker", env = "FOVEA_CLUSTER_WORKERS", value_delimiter = ',')]
    cluster_workers: Vec<String>,
    /// Prompts of at least this many tokens are prefilled on a prefill worker and decoded on a
    /// decode worker (when there are both); shorter ones run whole on one worker.
    #[arg(long, env = "FOVEA_DISAGG_MIN_PROMPT_TOKENS", default_value_t = SplitPolicy::default().disagg_min_prompt_tokens)]
    disagg_min_prompt_tokens: usize,
    /// Times a failed vision, prefill or decode job is retried on other workers (and a decode
    /// worker lost mid-stream replaced).
    #[arg(long, env = "FOVEA_JOB_RETRIES", default_value_t = SplitPolicy::default().job_retries)]
    job_retries: usize,
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
>>>>>>> disagg
}

pub fn run(args: ServeArgs) -> Result<(), String> {
    block_on(serve_all(args))
}

async fn serve_all(args: ServeArgs) -> Result<(), String> {
    let dir = args.model.dir()?;
    let model_name = args.model.model_name.clone();
    let identity = WorkerIdentity {
        id: "local",
        role: WorkerRole::Full,
        model_name: &model_name,
    };
<<<<<<< HEAD
    let (service, capacity) = args.engine.start_worker(&dir, identity)?;
    let worker_listener = listen(args.worker_addr, "the worker").await?;
    let worker_addr = worker_listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(serve_worker(service, worker_listener, async {
        let _ = worker_stopped.await;
    }));
    let registry = LocalRegistry::new();
    let registration = registry.register(WorkerRecord {
        id: "local".into(),
        role: WorkerRole::Full,
        address: format!("http://{worker_addr}"),
        model: model_name.clone(),
        tensor_parallel_size: args.engine.tensor_parallel.tp as u32,
        capacity,
    });
=======
    let info = WorkerInfo {
        worker_id: "local".into(),
        role: WorkerRole::Full as i32,
        model: args.model_name.clone(),
        context_length: context_length as u32,
        tensor_parallel_size: 1,
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let node = WorkerNode::start(
        Arc::new(model),
        Arc::clone(preparer.tokenizer()),
        preprocess,
        engine_config,
        info,
    )
    .map_err(|e| e.to_string())?;
    let worker_listener = TcpListener::bind(args.worker_addr)
        .await
        .map_err(|e| format!("cannot listen on {} for the worker: {e}", args.worker_addr))?;
    let worker_addr = worker_listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(node.serve(worker_listener, async {
        let _ = worker_stopped.await;
    }));
>>>>>>> disagg

    let listeners = args.api.listeners().await?;
    eprintln!(
        "fovea serving {model_name} ({}) on {}",
        dir.display(),
        describe(&listeners)?
    );
<<<<<<< HEAD
    let config = args
        .api
        .coordinator_config(dir, model_name, registry.members(), HealthPolicy::default());
=======
    let config = CoordinatorConfig {
        model_dir: dir,
        model_name: args.model_name,
        workers: std::iter::once(format!("http://{worker_addr}"))
            .chain(args.cluster_workers)
            .collect(),
        split: SplitPolicy {
            disagg_min_prompt_tokens: args.disagg_min_prompt_tokens,
            job_retries: args.job_retries,
        },
        admission: AdmissionLimits {
            max_requests: args.max_requests,
            max_prompt_tokens: args.max_queued_tokens,
        },
        max_images: args.max_images,
        max_image_bytes: args.max_image_bytes,
    };
>>>>>>> disagg
    let served = serve(config, listeners, shutdown_signal()).await;
    registration.withdraw().await;
    let _ = stop_worker.send(());
    let _ = worker.await;
    served.map_err(|e| e.to_string())
}
