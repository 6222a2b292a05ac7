//! The etcd registry: each worker's record under `<prefix>/workers/<id>`, attached to a lease
//! the worker keeps alive ([`lease`]); coordinators follow the prefix with a watch ([`watch`]).
//! Both sides reconnect with backoff while etcd is down: the worker keeps (or, once its lease
//! is gone, re-creates) its record; the coordinator keeps its last view until it can read a
//! fresh one.

mod lease;
mod watch;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::watch as channel;

use crate::record::WorkerRecord;
use crate::registry::{Members, Registration, Registry};

/// Where the records live and how long they outlive their worker.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// etcd client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// The key prefix of this cluster (several clusters can share one etcd), e.g. `/fovea`.
    pub prefix: String,
    /// How long a record outlives its worker's last keep-alive.
    pub lease_ttl: Duration,
}

impl EtcdConfig {
    /// The prefix every worker record's key starts with.
    fn workers_prefix(&self) -> String {
        format!("{}/workers/", self.prefix.trim_end_matches('/'))
    }

    fn worker_key(&self, id: &str) -> String {
        format!("{}{id}", self.workers_prefix())
    }
}

/// Failures talking to etcd; all of them are retried.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EtcdError {
    #[error("etcd: {0}")]
    Client(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the lease expired; registering again")]
    LeaseLost,
    #[error("etcd ended the {0} stream")]
    StreamEnded(&'static str),
    #[error("etcd cancelled the watch: {0}")]
    WatchCancelled(String),
}

/// How long one unary etcd call may take before the connection is given up on.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Backoff between reconnection attempts: short, so that a restarted etcd is found again well
/// within a lease's lifetime.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Runs `call` with [`CALL_TIMEOUT`].
async fn timed<T>(
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(EtcdError::Timeout(CALL_TIMEOUT)),
    }
}

/// A client for `config`'s endpoints; HTTP/2 keep-alive pings notice a dead connection within
/// about two seconds.
async fn connect(config: &EtcdConfig) -> Result<Client, EtcdError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(CALL_TIMEOUT)
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
        .with_keep_alive_while_idle(true);
    timed(Client::connect(&config.endpoints, Some(options))).await
}

/// Records in etcd, shared by every process pointed at the same endpoints and prefix.
#[derive(Debug)]
pub struct EtcdRegistry {
    config: Arc<EtcdConfig>,
    members: OnceLock<channel::Receiver<Members>>,
}

impl EtcdRegistry {
    /// A registry on `config`; nothing is contacted until a record is registered or the members
    /// are asked for.
    pub fn new(config: EtcdConfig) -> Self {
        EtcdRegistry {
            config: Arc::new(config),
            members: OnceLock::new(),
        }
    }
}

impl Registry for EtcdRegistry {
    fn register(&self, record: WorkerRecord) -> Registration {
        let config = Arc::clone(&self.config);
        Registration::spawn(move |stopped, registered| {
            lease::keep_registered(config, record, stopped, registered)
        })
    }

    /// The first call starts following etcd (the view is empty until the first read); later
    /// calls share that view.
    fn members(&self) -> channel::Receiver<Members> {
        self.members
            .get_or_init(|| {
                let (view, members) = channel::channel(Members::default());
                tokio::spawn(watch::follow(Arc::clone(&self.config), view));
                members
            })
            .clone()
    }
}
