//! The workers a coordinator routes to. The pool follows the registry's live records for its
//! model (workers appear and disappear), keeps one gRPC client and one load stream per worker of
//! every role (a vision worker reports its encoder's load: images and patches still to encode,
//! batches answered), and gives each job the least-loaded ready worker of the role it needs
//! ([`crate::health`] says which are ready): fewest prompt tokens yet to compute (the last
//! report's corrected by this coordinator's jobs computed and sent since, and the job's own,
//! less, on the workers
//! with the fewest jobs in flight, the prefix the worker probably caches, see
//! [`crate::prefix_affinity`]), then the largest free share of the KV cache (in sixteenths:
//! reports come 100 ms apart, so finer differences are often stale), then fewest jobs in flight
//! from this coordinator (known at once). With no ready worker of that role the job is refused
//! with UNAVAILABLE, naming the role. The job splitter ([`crate::split`]) picks by role from this
//! one pool, excluding the workers that already failed a request, and may ask only for a worker
//! with room (a prefill backlog under a limit) or an idle one.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use fovea_membership::{Members, WorkerRecord, role_name};
use fovea_proto::worker::v1::prefiller_client::PrefillerClient;
use fovea_proto::worker::v1::vision_encoder_client::VisionEncoderClient;
use fovea_proto::worker::v1::worker_client::WorkerClient;
use fovea_proto::worker::v1::{AbortRequest, WorkerLoad, WorkerRole};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::health::{HealthPolicy, WorkerHealth};
use crate::load_watch::watch_load;

/// Largest message sent to or accepted from a worker (jobs carry image data).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A worker in the pool.
struct Worker {
    record: WorkerRecord,
    channel: Channel,
    client: WorkerClient<Channel>,
    /// This coordinator's jobs on the worker: in flight, by lease, and ended ones its last load
    /// report may still count.
    in_flight: Mutex<InFlight>,
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
        let client = WorkerClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let health = Arc::default();
        let load_stream = tokio::spawn(watch_load(
            record.id.clone(),
            client.clone(),
            Arc::clone(&health),
        ));
        Ok(Worker {
            record,
            channel,
            client,
            in_flight: Mutex::default(),
            health,
            load_stream,
        })
    }

    fn health(&self) -> MutexGuard<'_, WorkerHealth> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn in_flight(&self) -> MutexGuard<'_, InFlight> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How busy the worker is by `health`'s last report and this coordinator's jobs.
    fn busyness(&self, health: &WorkerHealth) -> Busyness {
        let reported_at = health.reported_at();
        let mut in_flight = self.in_flight();
        in_flight.forget_reported(reported_at);
        Busyness {
            // A worker yet to report ranks as if it had no free blocks: after every reporting one.
            load: health.load().cloned().unwrap_or_default(),
            in_flight: in_flight.jobs.len(),
            unreported_tokens: in_flight.unreported_tokens(reported_at),
            computed_since_report_tokens: in_flight.computed_since_tokens(reported_at),
            awaiting_kv: in_flight
                .jobs
                .values()
                .filter(|job| job.awaiting_kv)
                .count(),
        }
    }
}

/// This coordinator's jobs on one worker: those in flight, and those that ended after the last
/// report had been made that the report may still count as queued.
#[derive(Debug, Default)]
struct InFlight {
    jobs: BTreeMap<u64, Dispatch>,
    ended: Vec<Dispatch>,
}

impl InFlight {
    /// Prompt tokens of the jobs in flight sent after a report made at `reported_at` whose
    /// prompts are not computed yet: work the report cannot count.
    fn unreported_tokens(&self, reported_at: Option<Instant>) -> u64 {
        self.jobs
            .values()
            .filter(|job| Some(job.sent_at) > reported_at && job.prompt_computed_at.is_none())
            .map(|job| job.prompt_tokens)
            .sum()
    }

    /// Prompt tokens of the jobs (in flight or ended) that a report made at `reported_at`
    /// counted as queued and that have been computed since.
    fn computed_since_tokens(&self, reported_at: Option<Instant>) -> u64 {
        let counted_then_computed = |job: &&Dispatch| {
            Some(job.sent_at) <= reported_at
                && job
                    .prompt_computed_at
                    .is_some_and(|at| Some(at) > reported_at)
        };
        self.jobs
            .values()
            .chain(&self.ended)
            .filter(counted_then_computed)
            .map(|job| job.prompt_tokens)
            .sum()
    }

    /// Drops the ended jobs whose prompts were computed before a report made at `reported_at`:
    /// neither that report nor a later one counts them.
    fn forget_reported(&mut self, reported_at: Option<Instant>) {
        self.ended.retain(|job| {
            job.prompt_computed_at
                .is_some_and(|at| Some(at) > reported_at)
        });
    }
}

/// A job this coordinator sent to a worker.
#[derive(Debug, Clone, Copy)]
struct Dispatch {
    sent_at: Instant,
    prompt_tokens: u64,
    /// When the worker had computed the prompt (its first token came, or the job ended).
    prompt_computed_at: Option<Instant>,
    /// A decode job waiting for its prompt's keys and values (it computes nothing yet).
    awaiting_kv: bool,
}

/// Numbers leases.
static NEXT_LEASE: AtomicU64 = AtomicU64::new(0);

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
    id: u64,
}

/// How busy a ready worker is: its last load report and this coordinator's jobs on it.
#[derive(Debug, Clone, Default)]
pub struct Busyness {
    pub load: WorkerLoad,
    /// This coordinator's jobs on the worker.
    pub in_flight: usize,
    /// Prompt tokens of those sent after the last report, not computed yet.
    pub unreported_tokens: u64,
    /// Prompt tokens of this coordinator's jobs that the last report counted as queued and that
    /// have been computed since.
    pub computed_since_report_tokens: u64,
    /// Of `in_flight`, decode jobs waiting for their prompt's keys and values.
    pub awaiting_kv: usize,
}

impl Busyness {
    /// Prompt tokens the worker has yet to compute: those of its last report (every
    /// coordinator's jobs, as of up to 100 ms ago), less this coordinator's computed since, plus
    /// this coordinator's sent since.
    pub fn backlog_tokens(&self) -> u64 {
        self.load
            .queued_tokens
            .saturating_sub(self.computed_since_report_tokens)
            + self.unreported_tokens
    }

    /// Whether the worker has nothing to compute: no job queued and none generating (decode jobs
    /// still waiting for their prompt's keys and values compute nothing yet).
    pub fn is_idle(&self) -> bool {
        let load = &self.load;
        self.in_flight == self.awaiting_kv
            && load.queued_requests == 0
            && load.running_requests <= load.awaiting_kv_requests
    }
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
        self.pick_where(roles, excluded, prompt_tokens, cached_tokens, |_| true)?
            .ok_or_else(|| Status::internal("a ready worker was turned away"))
    }

    /// [`WorkerPool::pick_for`] among the ready workers that `admits` (by how busy they are):
    /// `Ok(None)` when there are ready workers but `admits` turns every one away.
    pub fn pick_where(
        &self,
        roles: &[WorkerRole],
        excluded: &[String],
        prompt_tokens: u64,
        cached_tokens: impl Fn(&str) -> u64,
        admits: impl Fn(&Busyness) -> bool,
    ) -> Result<Option<WorkerLease>, Status> {
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
            ready.push((worker, worker.busyness(&health)));
        }
        if ready.is_empty() {
            return Err(self.none_ready(roles, excluded, &not_ready));
        }
        let least_in_flight = ready
            .iter()
            .map(|(_, busyness)| busyness.in_flight)
            .min()
            .unwrap_or(0);
        let best = ready
            .into_iter()
            .filter(|(_, busyness)| admits(busyness))
            .min_by_key(|(worker, busyness)| {
                let (load, in_flight) = (&busyness.load, busyness.in_flight);
                let cached = if in_flight == least_in_flight {
                    cached_tokens(&worker.record.address)
                } else {
                    0
                };
                let tokens = prompt_tokens.saturating_sub(cached);
                let free_sixteenths =
                    u64::from(load.free_kv_blocks) * 16 / u64::from(load.total_kv_blocks.max(1));
                (
                    busyness.backlog_tokens() + tokens,
                    Reverse(free_sixteenths),
                    in_flight,
                )
            });
        Ok(best.map(|(worker, _)| WorkerLease::new(worker, prompt_tokens)))
    }

    /// UNAVAILABLE: no ready worker of `roles` outside `excluded`; `not_ready` says why for those
    /// that are there.
    fn none_ready(
        &self,
        roles: &[WorkerRole],
        excluded: &[String],
        not_ready: &[String],
    ) -> Status {
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
        Status::unavailable(if not_ready.is_empty() {
            format!("no live {roles} worker{others} serves model {model:?}")
        } else {
            format!(
                "no {roles} worker of model {model:?} is ready: {}",
                not_ready.join(", ")
            )
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
    /// Counts a job of `prompt_tokens` against `worker` until dropped.
    fn new(worker: &Arc<Worker>, prompt_tokens: u64) -> Self {
        let id = NEXT_LEASE.fetch_add(1, Ordering::Relaxed);
        let dispatch = Dispatch {
            sent_at: Instant::now(),
            prompt_tokens,
            prompt_computed_at: None,
            awaiting_kv: false,
        };
        worker.in_flight().jobs.insert(id, dispatch);
        WorkerLease {
            worker: Arc::clone(worker),
            client: worker.client.clone(),
            id,
        }
    }

    /// Counts the job as a decode job waiting for its prompt's keys and values, which computes
    /// nothing on the worker yet (`true`), or as one that generates (`false`).
    pub fn set_awaiting_kv(&self, awaiting: bool) {
        if let Some(job) = self.worker.in_flight().jobs.get_mut(&self.id) {
            job.awaiting_kv = awaiting;
        }
    }

    /// Notes that the worker has computed the job's prompt (its first token came).
    pub fn prompt_computed(&self) {
        if let Some(job) = self.worker.in_flight().jobs.get_mut(&self.id) {
            job.prompt_computed_at.get_or_insert_with(Instant::now);
        }
    }

    /// A client of the worker's `VisionEncoder` service (vision role), on the same connection.
    pub fn vision_encoder(&self) -> VisionEncoderClient<Channel> {
        VisionEncoderClient::new(self.worker.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// A client of the worker's `Prefiller` service (prefill role), on the same connection.
    pub fn prefiller(&self) -> PrefillerClient<Channel> {
        PrefillerClient::new(self.worker.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

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

    /// Stops counting the job as in flight (once; later calls do nothing).
    fn end(&self) {
        let reported_at = self.worker.health().reported_at();
        let mut in_flight = self.worker.in_flight();
        if let Some(mut job) = in_flight.jobs.remove(&self.id) {
            job.prompt_computed_at.get_or_insert_with(Instant::now);
            in_flight.ended.push(job);
        }
        in_flight.forget_reported(reported_at);
    }

    /// Asks the worker to drop `request_id`; from now on the job no longer counts against it.
    pub async fn abort(&self, request_id: &str) {
        self.end();
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
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reporting(queued_tokens: u64, running: u32, awaiting_kv: u32) -> Busyness {
        Busyness {
            load: WorkerLoad {
                queued_tokens,
                running_requests: running,
                awaiting_kv_requests: awaiting_kv,
                ..WorkerLoad::default()
            },
            ..Busyness::default()
        }
    }

    fn dispatch(sent_at: Instant, prompt_tokens: u64, computed_at: Option<Instant>) -> Dispatch {
        Dispatch {
            sent_at,
            prompt_tokens,
            prompt_computed_at: computed_at,
            awaiting_kv: false,
        }
    }

    #[test]
    fn the_backlog_corrects_the_report_by_the_jobs_sent_and_computed_since() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let report = Some(at(100));
        let mut in_flight = InFlight::default();
        // Sent before the report: computed before it (a decode worker's stream), computed since,
        // still queued.
        in_flight
            .jobs
            .insert(0, dispatch(at(0), 1000, Some(at(50))));
        in_flight
            .jobs
            .insert(1, dispatch(at(10), 200, Some(at(150))));
        in_flight.jobs.insert(2, dispatch(at(20), 300, None));
        // Sent since: still queued, computed already.
        in_flight.jobs.insert(3, dispatch(at(120), 400, None));
        in_flight
            .jobs
            .insert(4, dispatch(at(130), 50, Some(at(140))));
        // Ended: computed since the report, before it.
        in_flight.ended.push(dispatch(at(30), 600, Some(at(160))));
        in_flight.ended.push(dispatch(at(40), 700, Some(at(60))));
        in_flight.forget_reported(report);
        assert_eq!(in_flight.ended.len(), 1);
        assert_eq!(in_flight.unreported_tokens(report), 400);
        assert_eq!(in_flight.computed_since_tokens(report), 800);

        let mut busyness = reporting(1100, 3, 0);
        busyness.unreported_tokens = 400;
        busyness.computed_since_report_tokens = 800;
        assert_eq!(busyness.backlog_tokens(), 1100 - 800 + 400);
        // Another coordinator's report may count less than this one's jobs computed since.
        busyness.load.queued_tokens = 500;
        assert_eq!(busyness.backlog_tokens(), 400);
        // Before the first report every job not computed counts.
        assert_eq!(in_flight.unreported_tokens(None), 700);
        assert_eq!(in_flight.computed_since_tokens(None), 0);
    }

    #[test]
    fn a_worker_whose_only_jobs_await_their_prompts_is_idle() {
        let mut busyness = reporting(0, 1, 1);
        busyness.in_flight = 1;
        busyness.awaiting_kv = 1;
        assert!(busyness.is_idle());
        // A job of this coordinator that generates, reported or not yet.
        busyness.in_flight = 2;
        assert!(!busyness.is_idle());
        // Another coordinator's job that generates.
        let mut other = reporting(0, 2, 1);
        other.in_flight = 1;
        other.awaiting_kv = 1;
        assert!(!other.is_idle());
        // Queued work.
        let mut queued = reporting(0, 0, 0);
        queued.load.queued_requests = 1;
        assert!(!queued.is_idle());
        assert!(reporting(0, 0, 0).is_idle());
    }
}
