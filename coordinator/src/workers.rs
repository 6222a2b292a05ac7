//! The workers a coordinator routes to. The pool follows the registry's live records for its
//! model (workers appear and disappear), keeps one gRPC client and one load stream per worker of
//! every role (a vision worker reports its encoder's load: images and patches still to encode,
//! batches answered), and gives each job the least-loaded ready worker of the role it needs
//! ([`crate::health`] says which are ready): fewest queued prompt tokens (counting the job's own,
//! less, on the workers with the fewest jobs in flight, the prefix the worker probably caches,
//! see [`crate::prefix_affinity`]), then the largest free share of the KV cache (in sixteenths:
//! reports come 100 ms apart, so finer differences are often stale), then fewest jobs in flight
//! from this coordinator (known at once). With no ready worker of that role the job is refused
//! with UNAVAILABLE, naming the role. The job splitter ([`crate::split`]) picks by role from this
//! one pool, excluding the workers that already failed a request.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use fovea_membership::{Members, WorkerRecord, role_name};
use fovea_proto::worker::v1::worker_client::WorkerClient;
use fovea_proto::worker::v1::{AbortRequest, WorkerRole};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::health::{HealthPolicy, WorkerHealth};
use crate::load_watch::watch_load;

/// A worker in the pool.
struct Worker {
    record: WorkerRecord,
    client: WorkerClient<Channel>,
    in_flight: AtomicUsize,
    health: Arc<Mutex<WorkerHealth>>,
    /// Reads the worker's load reports into `health` (every role reports its load, the vision
    /// role its encoder's).
    load_stream: JoinHandle<()>,
}

impl Worker {
    /// Clients for `record`'s address (connected lazily) and its load stream.
    fn connect(record: WorkerRecord) -> Result<Worker, tonic::transport::Error> {
        let channel = Endpoint::from_shared(record.address.clone())?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        let client = WorkerClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let health = Arc::default();
        let load_stream = tokio::spawn(watch_load(
            record.id.clone(),
            client.clone(),
            Arc::clone(&health),
        ));
        Ok(Worker {
            record,
            client,
            in_flight: AtomicUsize::new(0),
            health,
            load_stream,
        })
    }

    fn health(&self) -> MutexGuard<'_, WorkerHealth> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.load_stream.abort();
    }
}

struct Shared {
    model: String,
    policy: HealthPolicy,
    workers: RwLock<BTreeMap<String, Arc<Worker>>>,
}

impl Shared {
    /// Makes the pool match `members`: new workers of this model join, gone or changed ones leave.
    fn sync(&self, members: &Members) {
        let mut workers = self.workers.write().unwrap_or_else(PoisonError::into_inner);
        workers.retain(|id, worker| members.get(id) == Some(&worker.record));
        for (id, record) in members.iter() {
            if record.model != self.model || workers.contains_key(id) {
                continue;
            }
            match Worker::connect(record.clone()) {
                Ok(worker) => {
                    tracing::info!(worker = %id, role = role_name(record.role), address = %record.address, "worker joined");
                    workers.insert(id.clone(), Arc::new(worker));
                }
                Err(error) => {
                    tracing::warn!(worker = %id, "skipping a worker with a bad address {:?}: {error}", record.address)
                }
            }
        }
    }
}

/// The coordinator's view of its workers; cheap to clone.
#[derive(Clone)]
pub struct WorkerPool {
    shared: Arc<Shared>,
}

/// A chosen worker's client; counts as one job in flight on it until dropped.
pub struct WorkerLease {
    worker: Arc<Worker>,
    client: WorkerClient<Channel>,
}

impl WorkerPool {
    /// A pool of the workers in `members` that serve `model`, following its changes.
    pub fn follow(
        model: String,
        mut members: watch::Receiver<Members>,
        policy: HealthPolicy,
    ) -> Self {
        let shared = Arc::new(Shared {
            model,
            policy,
            workers: RwLock::default(),
        });
        shared.sync(&members.borrow_and_update());
        tokio::spawn(follow_members(Arc::downgrade(&shared), members));
        WorkerPool { shared }
    }

    /// The least-loaded ready worker of one of `roles` whose address is not in `excluded`
    /// (workers that failed this request), or UNAVAILABLE saying why there is none.
    pub fn pick_except(
        &self,
        roles: &[WorkerRole],
        excluded: &[String],
    ) -> Result<WorkerLease, Status> {
        self.pick_for(roles, excluded, 0, |_| 0)
    }

    /// [`WorkerPool::pick_except`] for a job of `prompt_tokens` prompt tokens, of which the worker
    /// at `address` probably caches `cached_tokens(address)`. The saving counts among the workers
    /// with the fewest jobs in flight, so that a shared prefix (every prompt starts with the same
    /// system prompt) does not pile jobs onto one worker.
    pub fn pick_for(
        &self,
        roles: &[WorkerRole],
        excluded: &[String],
        prompt_tokens: u64,
        cached_tokens: impl Fn(&str) -> u64,
    ) -> Result<WorkerLease, Status> {
        let now = Instant::now();
        let workers = self
            .shared
            .workers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut not_ready = Vec::new();
        let mut ready = Vec::new();
        let candidates = workers.values().filter(|worker| {
            roles.contains(&worker.record.role) && !excluded.contains(&worker.record.address)
        });
        for worker in candidates {
            let health = worker.health();
            let condition = health.condition(now, &self.shared.policy);
            if !condition.takes_jobs() {
                not_ready.push(format!("{} {condition}", worker.record.id));
                continue;
            }
            // A worker yet to report ranks as if it had no free blocks: after every reporting one.
            let load = health.load().cloned().unwrap_or_default();
            ready.push((worker, load, worker.in_flight.load(Ordering::Relaxed)));
        }
        let least_in_flight = ready
            .iter()
            .map(|(_, _, in_flight)| *in_flight)
            .min()
            .unwrap_or(0);
        let best = ready.into_iter().min_by_key(|(worker, load, in_flight)| {
            let cached = if *in_flight == least_in_flight {
                cached_tokens(&worker.record.address)
            } else {
                0
            };
            let tokens = prompt_tokens.saturating_sub(cached);
            let free_sixteenths =
                u64::from(load.free_kv_blocks) * 16 / u64::from(load.total_kv_blocks.max(1));
            (
                load.queued_tokens + tokens,
                Reverse(free_sixteenths),
                *in_flight,
            )
        });
        let Some((worker, _, _)) = best else {
            let roles = roles
                .iter()
                .map(|&role| role_name(role))
                .collect::<Vec<_>>()
                .join(" or ");
            let model = &self.shared.model;
            let others = if excluded.is_empty() {
                ""
            } else {
                " other than those that failed this request"
            };
            return Err(Status::unavailable(if not_ready.is_empty() {
                format!("no live {roles} worker{others} serves model {model:?}")
            } else {
                format!(
                    "no {roles} worker of model {model:?} is ready: {}",
                    not_ready.join(", ")
                )
            }));
        };
        worker.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(WorkerLease {
            worker: Arc::clone(worker),
            client: worker.client.clone(),
        })
    }

    /// Whether the pool has a worker of `role` (ready or not).
    pub fn has_role(&self, role: WorkerRole) -> bool {
        self.workers()
            .values()
            .any(|worker| worker.record.role == role)
    }

    /// Whether the pool has a worker of `role` at `address` that takes jobs now.
    pub fn is_ready(&self, role: WorkerRole, address: &str) -> bool {
        let now = Instant::now();
        self.workers().values().any(|worker| {
            worker.record.role == role
                && worker.record.address == address
                && worker
                    .health()
                    .condition(now, &self.shared.policy)
                    .takes_jobs()
        })
    }

    fn workers(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Worker>>> {
        self.shared
            .workers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps the pool behind `shared` in step with `members` while the pool exists. If the registry
/// goes away the pool keeps its last workers.
async fn follow_members(shared: Weak<Shared>, mut members: watch::Receiver<Members>) {
    while members.changed().await.is_ok() {
        let view = members.borrow_and_update().clone();
        match shared.upgrade() {
            Some(shared) => shared.sync(&view),
            None => return,
        }
    }
}

impl WorkerLease {
    /// The worker's id.
    pub fn worker_id(&self) -> &str {
        &self.worker.record.id
    }

    /// The worker's address, as it registered it (`http://host:port`).
    pub fn address(&self) -> &str {
        &self.worker.record.address
    }

    /// Takes the worker out of routing until its next load report (a job could not be sent).
    pub fn set_aside(&self) {
        self.worker.health().lost_contact();
    }

    /// Asks the worker to drop `request_id`.
    pub async fn abort(&self, request_id: &str) {
        let request = AbortRequest {
            request_id: request_id.to_string(),
        };
        if let Err(status) = self.client.clone().abort(request).await {
            tracing::warn!(worker = %self.worker.record.id, %request_id, "abort failed: {}", status.message());
        }
    }
}

impl std::ops::Deref for WorkerLease {
    type Target = WorkerClient<Channel>;
    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

impl std::ops::DerefMut for WorkerLease {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.client
    }
}

impl Drop for WorkerLease {
    fn drop(&mut self) {
        self.worker.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
