//! `fovea serve`: the whole cluster in one process — one worker and the coordinator, talking over
//! the same worker API (on a loopback port) that separate processes use, with membership through
//! the in-process registry instead of etcd.

use std::net::SocketAddr;

use clap::Args;
use fovea_coordinator::health::HealthPolicy;
use fovea_coordinator::serve;
use fovea_membership::{LocalRegistry, Registry, WorkerRecord};
use fovea_proto::worker::v1::WorkerRole;

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
    #[command(flatten)]
    engine: EngineArgs,
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
    let (node, capacity) = args.engine.start_worker(&dir, identity)?;
    let worker_listener = listen(args.worker_addr, "the worker").await?;
    let worker_addr = worker_listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(node.serve(worker_listener, async {
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

    let listeners = args.api.listeners().await?;
    eprintln!(
        "fovea serving {model_name} ({}) on {}",
        dir.display(),
        describe(&listeners)?
    );
    let config =
        args.api
            .coordinator_config(dir, model_name, registry.members(), HealthPolicy::default());
    let served = serve(config, listeners, shutdown_signal()).await;
    registration.withdraw().await;
    let _ = stop_worker.send(());
    let _ = worker.await;
    served.map_err(|e| e.to_string())
}
