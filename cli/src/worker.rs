//! `fovea worker`: one worker process. It loads the model, serves its role's worker services
//! (`fovea_worker::node`: a vision, prefill, decode or full worker), and registers
//! itself in etcd under a lease it keeps alive; if etcd is not up yet (or goes away) it keeps
//! serving and keeps trying. SIGTERM or Ctrl-C deregisters it (the lease is revoked, so
//! coordinators stop routing to it at once), then drains: running jobs finish, and it exits.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use fovea_membership::{EtcdRegistry, Registry, WorkerRecord, parse_role, role_name};
use fovea_proto::worker::v1::WorkerRole;

use crate::engine_args::{EngineArgs, WorkerIdentity};
use crate::etcd_args::EtcdArgs;
use crate::model_args::ModelArgs;
use crate::process::{block_on, listen, shutdown_signal};

#[derive(Args)]
pub struct WorkerArgs {
    /// The part of the work this worker does: vision, prefill, decode or full.
    #[arg(long, env = "FOVEA_WORKER_ROLE", value_parser = parse_role)]
    role: WorkerRole,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// The worker API's listening address (port 0: any free port).
    #[arg(long, env = "FOVEA_WORKER_ADDR", default_value = "127.0.0.1:50061")]
    addr: SocketAddr,
    /// The address coordinators reach it at; default: the listening address.
    #[arg(long, env = "FOVEA_WORKER_ADVERTISE_ADDR")]
    advertise_addr: Option<SocketAddr>,
    /// The worker's id in the cluster; default: `<role>@<advertised address>`.
    #[arg(long, env = "FOVEA_WORKER_ID")]
    worker_id: Option<String>,
    /// Seconds the registration outlives the worker's last keep-alive (a killed worker stops
    /// receiving work within about this long).
    #[arg(long, env = "FOVEA_LEASE_TTL_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    lease_ttl_secs: u64,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn run(args: WorkerArgs) -> Result<(), String> {
    block_on(work(args))
}

async fn work(args: WorkerArgs) -> Result<(), String> {
    args.engine.check_role(args.role)?;
    let dir = args.model.dir()?;
    let listener = listen(args.addr, "the worker API").await?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let advertised = args.advertise_addr.unwrap_or(local);
    let id = args
        .worker_id
        .clone()
        .unwrap_or_else(|| format!("{}@{advertised}", role_name(args.role)));
    let identity = WorkerIdentity {
        id: &id,
        role: args.role,
        model_name: &args.model.model_name,
    };
    let (node, capacity) = args.engine.start_worker(&dir, identity)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(node.serve(listener, async {
        let _ = stopped.await;
    }));
    let registry = EtcdRegistry::new(args.etcd.config(Duration::from_secs(args.lease_ttl_secs)));
    let mut registration = registry.register(WorkerRecord {
        id: id.clone(),
        role: args.role,
        address: format!("http://{advertised}"),
        model: args.model.model_name.clone(),
        tensor_parallel_size: args.engine.tensor_parallel.tp as u32,
        capacity,
    });
    eprintln!(
        "fovea worker {id} ({}) serving on {local}; registering in etcd {}",
        role_name(args.role),
        args.etcd.endpoints()
    );
    let signal = shutdown_signal();
    tokio::pin!(signal);
    tokio::select! {
        () = &mut signal => {}
        () = registration.registered() => {
            eprintln!("worker {id} registered");
            tokio::select! {
                () = &mut signal => {}
                served = &mut server => return finished(served),
            }
        }
        served = &mut server => return finished(served),
    }
    eprintln!("worker {id} deregistering and draining");
    registration.withdraw().await;
    let _ = stop.send(());
    finished(server.await)
}

/// The worker server's outcome as the command's.
fn finished(
    served: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), String> {
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("the worker API server failed: {error}")),
        Err(error) => Err(format!("the worker API server stopped: {error}")),
    }
}
