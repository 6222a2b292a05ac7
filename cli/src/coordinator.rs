//! `fovea coordinator`: the public API (gRPC and OpenAI HTTP) as its own process, routing to the
//! workers registered in etcd. It holds no state another coordinator needs, so several can run
//! against the same etcd; while etcd is unreachable it keeps routing with its last view.

use std::time::Duration;

use clap::Args;
use fovea_coordinator::health::HealthPolicy;
use fovea_coordinator::serve;
use fovea_membership::{EtcdRegistry, Members, Registry, role_name};
use tokio::sync::watch;

use crate::api_args::{ApiArgs, describe};
use crate::etcd_args::EtcdArgs;
use crate::model_args::ModelArgs;
use crate::process::{block_on, shutdown_signal};

#[derive(Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// The checkpoint directory is read for the tokenizer, chat template and limits only.
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    api: ApiArgs,
    /// Seconds a worker with work may go without a forward pass before it gets no more jobs.
    #[arg(long, env = "FOVEA_HANG_TIMEOUT_SECS", default_value_t = 60)]
    hang_timeout_secs: u64,
}

pub fn run(args: CoordinatorArgs) -> Result<(), String> {
    block_on(coordinate(args))
}

async fn coordinate(args: CoordinatorArgs) -> Result<(), String> {
    let dir = args.model.dir()?;
    let model_name = args.model.model_name.clone();
    // The coordinator holds no lease: the TTL only matters to registering workers.
    let registry = EtcdRegistry::new(args.etcd.config(Duration::from_secs(10)));
    let members = registry.members();
    tokio::spawn(report_membership(members.clone()));
    let listeners = args.api.listeners().await?;
    eprintln!(
        "fovea coordinator for {model_name} on {}, workers from etcd {}",
        describe(&listeners)?,
        args.etcd.endpoints()
    );
    let health = HealthPolicy {
        hang_limit: Duration::from_secs(args.hang_timeout_secs),
        ..HealthPolicy::default()
    };
    let config = args
        .api
        .coordinator_config(dir, model_name, members, health);
    serve(config, listeners, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

/// Prints each worker that joins or leaves the registry, for the operator.
async fn report_membership(mut members: watch::Receiver<Members>) {
    let mut known = Members::default();
    loop {
        let now = members.borrow_and_update().clone();
        for (id, record) in now.iter().filter(|(id, _)| !known.contains_key(*id)) {
            eprintln!(
                "worker {id} joined: {} at {}, model {}",
                role_name(record.role),
                record.address,
                record.model
            );
        }
        for id in known.keys().filter(|id| !now.contains_key(*id)) {
            eprintln!("worker {id} left");
        }
        known = now;
        if members.changed().await.is_err() {
            return;
        }
    }
}
