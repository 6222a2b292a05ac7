//! Job splitting: how one request becomes worker jobs. Each image goes to a vision worker
//! ([`crate::vision_assignment`]), the prompt to a prefill worker whose keys and values go to a decode
//! worker, or, below the disaggregation threshold or without decode workers, the whole job to a
//! full or decode worker that prefills itself. Features and keys and values move between workers directly: the job
//! names the vision worker and the decode worker, never the coordinator.
//!
//! Prompts go preferably where their prefix is cached: routing counts the tokens each worker would
//! still have to compute ([`crate::prefix_affinity`]).
//!
//! A vision, prefill or decode worker that fails before the first token is excluded and the
//! attempt repeated on others, at most [`SplitPolicy::job_retries`] times; a worker's error that
//! a peer caused names the peer (`FAILED_PEER_METADATA`), so the peer is the one excluded. With
//! every vision worker excluded, images are encoded where the prompt is computed. A prompt sent
//! to disaggregation that no prefill worker can take (none ready, or every one excluded) runs
//! whole on a full worker, which holds the prefill role too; with none of those either, the
//! request ends with UNAVAILABLE naming the missing prefill role, unless
//! [`SplitPolicy::prefill_fallback`] lets a decode worker prefill it itself. A pool of full
//! workers only (`fovea serve`) never disaggregates, so nothing of this applies there.
//!
//! Conditional disaggregation: a prompt sent to disaggregation goes to a prefill worker only
//! while that worker's backlog is within [`SplitPolicy::max_prefill_backlog_tokens`]. Otherwise
//! a prompt of at most [`SplitPolicy::max_local_prefill_tokens`] runs whole on a decode worker at
//! once, and a longer one waits in the coordinator, first come first served, until a prefill
//! worker has room or (with [`SplitPolicy::idle_decode_prefill`]) a decode worker has nothing to
//! do, which then runs it whole. Long prompts are bound to a worker only when one can start them,
//! so a decode worker left idle takes one rather than watching it queue behind others on a busy
//! prefill worker; a waiting prompt's images are encoded on vision workers meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fovea_proto::image_content_hash;
use fovea_proto::worker::FAILED_PEER_METADATA;
use fovea_proto::worker::v1::{GenerateEvent, GenerateJob, PrefillJob, WorkerRole};
use tonic::{Code, Status, Streaming};

use crate::prefix_affinity::{PrefixAffinity, PromptBlocks};
use crate::vision_assignment::{VisionAssignment, peer_address};
use crate::workers::{Busyness, WorkerLease, WorkerPool};

/// Workers that run whole jobs (and decode after a transfer): full and decode workers.
const GENERATE_ROLES: [WorkerRole; 2] = [WorkerRole::Full, WorkerRole::Decode];

/// Workers that run a prompt sent to disaggregation whole when no prefill worker can take it:
/// full workers, which hold the prefill role too (decode workers only with
/// [`SplitPolicy::prefill_fallback`]).
const PREFILLING_ROLES: [WorkerRole; 1] = [WorkerRole::Full];

/// How often a prompt waiting for a prefill worker with room (or an idle decode worker) looks
/// again.
const ROOM_POLL: Duration = Duration::from_millis(10);

/// When disaggregation pays, and how hard to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitPolicy {
    /// Prompts of at least this many tokens (images included) are prefilled on a prefill worker
    /// and decoded on a decode worker; shorter ones run whole on a decode or full worker, where
    /// shipping their keys and values would cost more than computing them.
    pub disagg_min_prompt_tokens: usize,
    /// Times a failed vision, prefill or decode job is tried again on other workers.
    pub job_retries: usize,
    /// Whether a prompt sent to disaggregation that no prefill (or full) worker can take runs
    /// whole on a decode worker, which then prefills it itself: availability over keeping long
    /// prompts off the decode workers. Without it (the default) such a request ends with
    /// UNAVAILABLE naming the missing prefill role.
    pub prefill_fallback: bool,
    /// Prompt tokens a prefill worker may have yet to compute and still be given another prompt
    /// (0: only an idle one). Past it a prompt waits in the coordinator, bound to no worker, until
    /// a prefill worker has room or an idle decode worker takes it; `u64::MAX` never waits.
    pub max_prefill_backlog_tokens: u64,
    /// Prompts sent to disaggregation of at most this many tokens run whole on a decode worker
    /// at once when no prefill worker has room (or when a longer prompt is waiting for one);
    /// longer ones wait.
    pub max_local_prefill_tokens: usize,
    /// Whether a decode worker with nothing to do runs a prompt that waits for a prefill worker
    /// whole, prefilling it itself (it streams nothing a prefill could slow down).
    pub idle_decode_prefill: bool,
}

impl Default for SplitPolicy {
    fn default() -> Self {
        SplitPolicy {
            disagg_min_prompt_tokens: 512,
            job_retries: 2,
            prefill_fallback: false,
            max_prefill_backlog_tokens: 0,
            max_local_prefill_tokens: 2048,
            idle_decode_prefill: true,
        }
    }
}

/// Where a prompt sent to disaggregation runs.
enum Placement {
    /// Prefilled on this prefill worker, decoded on a decode worker.
    Split(WorkerLease),
    /// Whole on this idle decode worker.
    Idle(WorkerLease),
    /// Whole on the least-loaded decode (or full) worker: it is short enough to prefill there.
    Local,
    /// No prefill worker is ready: why.
    NoPrefillWorker(Status),
}

/// A started request: the decode (or whole) job's event stream and the worker running it.
pub struct Started {
    pub events: Streaming<GenerateEvent>,
    /// Counts the job against its worker until dropped.
    pub worker: WorkerLease,
}

/// Splits requests over the workers of one pool by their roles.
pub struct JobSplitter {
    workers: WorkerPool,
    policy: SplitPolicy,
    /// Which vision worker encodes which image.
    vision: VisionAssignment,
    /// Which prompt prefixes went to which worker.
    prefixes: PrefixAffinity,
    next_transfer: AtomicU64,
    /// Held by the prompt that places itself next: prompts waiting for room go first come first
    /// served.
    placement_turn: tokio::sync::Mutex<()>,
}

impl JobSplitter {
    /// Splits over `workers` by `policy`.
    pub fn new(workers: WorkerPool, policy: SplitPolicy) -> Self {
        JobSplitter {
            vision: VisionAssignment::new(workers.clone()),
            workers,
            policy,
            prefixes: PrefixAffinity::default(),
            next_transfer: AtomicU64::new(1),
            placement_turn: tokio::sync::Mutex::default(),
        }
    }

    /// When it disaggregates, and how often it retries.
    pub fn policy(&self) -> SplitPolicy {
        self.policy
    }

    /// Starts `job`, avoiding the workers in `excluded` and adding those that fail to it.
    pub async fn start(
        &self,
        job: &GenerateJob,
        excluded: &mut Vec<String>,
    ) -> Result<Started, Status> {
        let job = with_content_hashes(job);
        let mut last_error = None;
        for _ in 0..=self.policy.job_retries {
            match self.attempt(&job, excluded).await {
                Ok(started) => return Ok(started),
                Err(Failure::Final(status)) => return Err(status),
                Err(Failure::Worker { address, status }) => {
                    tracing::warn!(request_id = %job.request_id, %address, "job failed, retrying elsewhere: {}", status.message());
                    excluded.push(address);
                    last_error = Some(status);
                }
            }
        }
        let status =
            last_error.unwrap_or_else(|| Status::unavailable("no worker could take the job"));
        Err(Status::unavailable(format!(
            "the job failed on {} workers: {}",
            self.policy.job_retries + 1,
            status.message()
        )))
    }

    /// One try: where the prompt runs, vision workers assigned, then a whole job or a decode job
    /// plus its prefill.
    async fn attempt(&self, job: &GenerateJob, excluded: &[String]) -> Result<Started, Failure> {
        let mut job = job.clone();
        // A transfer carries the first token without its log probabilities: such requests stay whole.
        let wants_logprobs = job.sampling.as_ref().is_some_and(|s| s.logprobs.is_some());
        let prompt_tokens = job.prompt_token_ids.len();
        let long = prompt_tokens >= self.policy.disagg_min_prompt_tokens && !wants_logprobs;
        let blocks = PromptBlocks::of(&job);
        let cached_tokens = |address: &str| self.prefixes.cached_tokens(address, &blocks) as u64;
        let pick = |roles: &[WorkerRole]| {
            self.workers
                .pick_for(roles, excluded, prompt_tokens as u64, cached_tokens)
        };
        let placement = if long && self.workers.has_role(WorkerRole::Decode) {
            Some(
                self.place_long_prompt(&job, excluded, prompt_tokens as u64, cached_tokens)
                    .await,
            )
        } else {
            None
        };
        // An idle worker encodes the images no vision worker has seen itself.
        let fresh_images_here = matches!(placement, Some(Placement::Idle(_)));
        let _vision = self.vision.assign(&mut job, excluded, fresh_images_here);
        let whole = match placement {
            None => pick(&GENERATE_ROLES).map_err(Failure::Final),
            Some(Placement::Split(prefill)) => {
                return self.split(job, prefill, excluded, &blocks).await;
            }
            Some(Placement::Idle(idle)) => Ok(idle),
            Some(Placement::Local) => pick(&GENERATE_ROLES).map_err(Failure::Final),
            // Without a prefill worker, a full worker runs the prompt whole; a decode worker
            // only by the policy's leave.
            Some(Placement::NoPrefillWorker(_)) if self.policy.prefill_fallback => {
                pick(&GENERATE_ROLES).map_err(Failure::Final)
            }
            Some(Placement::NoPrefillWorker(no_prefill)) => pick(&PREFILLING_ROLES)
                .map_err(|_| self.no_prefill_worker(prompt_tokens, &no_prefill)),
        };
        let mut worker = whole?;
        let events = match worker.generate(job).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(Failure::of_lease(&worker, status)),
        };
        self.prefixes.record(worker.address(), &blocks);
        Ok(Started { events, worker })
    }

    /// Where a prompt of `prompt_tokens` sent to disaggregation runs: on a ready prefill worker
    /// with room (the least loaded); else, if it is short enough and no longer prompt is
    /// waiting, on a decode worker at once; else on an idle decode worker if the policy lets one
    /// take it; else, after waiting its turn, on whichever of the two comes first, its images
    /// encoded meanwhile.
    async fn place_long_prompt(
        &self,
        job: &GenerateJob,
        excluded: &[String],
        prompt_tokens: u64,
        cached_tokens: impl Fn(&str) -> u64 + Copy,
    ) -> Placement {
        let max_backlog = self.policy.max_prefill_backlog_tokens;
        let has_room = |busyness: &Busyness| busyness.backlog_tokens() <= max_backlog;
        let short = prompt_tokens <= self.policy.max_local_prefill_tokens as u64;
        let _turn = match self.placement_turn.try_lock() {
            Ok(turn) => turn,
            Err(_) if short => return Placement::Local,
            Err(_) => self.placement_turn.lock().await,
        };
        let mut prefetched = false;
        loop {
            let prefill = self.workers.pick_where(
                &[WorkerRole::Prefill],
                excluded,
                prompt_tokens,
                cached_tokens,
                has_room,
            );
            match prefill {
                Ok(Some(prefill)) => return Placement::Split(prefill),
                Err(no_prefill) => return Placement::NoPrefillWorker(no_prefill),
                Ok(None) if short => return Placement::Local,
                Ok(None) => {}
            }
            if self.policy.idle_decode_prefill
                && let Ok(Some(idle)) = self.workers.pick_where(
                    &GENERATE_ROLES,
                    excluded,
                    prompt_tokens,
                    cached_tokens,
                    Busyness::is_idle,
                )
            {
                return Placement::Idle(idle);
            }
            if !prefetched {
                self.vision.prefetch(job, excluded);
                prefetched = true;
            }
            tokio::time::sleep(ROOM_POLL).await;
        }
    }

    /// Runs `job` split: a decode worker reserves its prompt's blocks, then `prefill` computes the
    /// prompt (`blocks`) and pushes its keys and values there.
    async fn split(
        &self,
        mut job: GenerateJob,
        prefill: WorkerLease,
        excluded: &[String],
        blocks: &PromptBlocks,
    ) -> Result<Started, Failure> {
        let transfer_id = format!(
            "{}/kv-{}",
            job.request_id,
            self.next_transfer.fetch_add(1, Ordering::Relaxed)
        );
        job.kv_transfer_id = transfer_id.clone();
        let mut decode = self
            .workers
            .pick_except(&[WorkerRole::Decode], excluded)
            .map_err(Failure::Final)?;
        let decode_address = decode.address().to_string();
        decode.set_awaiting_kv(true);
        // The decode worker reserves the prompt's blocks before the prefill pushes them; it needs
        // the images' keys and grids, not their data.
        let events = match decode.generate(without_image_data(&job)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(Failure::of_lease(&decode, status)),
        };
        let prefill_address = prefill.address().to_string();
        let request_id = job.request_id.clone();
        let prefill_job = PrefillJob {
            job: Some(job),
            decode_worker: peer_address(&decode_address).to_string(),
            transfer_id,
        };
        let prefilled = prefill.prefiller().prefill(prefill_job).await;
        if let Err(status) = prefilled {
            let failure = Failure::of_lease(&prefill, status);
            // Free the decode job's blocks (and its request id) before anything is retried.
            drop(events);
            decode.abort(&request_id).await;
            return Err(failure);
        }
        decode.set_awaiting_kv(false);
        // Both hold the prompt's blocks now: the prefill worker computed them, the decode worker
        // received them.
        self.prefixes.record(&prefill_address, blocks);
        self.prefixes.record(&decode_address, blocks);
        Ok(Started {
            events,
            worker: decode,
        })
    }

    /// The end of a request whose prompt of `prompt_tokens` tokens no prefill worker could take,
    /// `status` saying why.
    fn no_prefill_worker(&self, prompt_tokens: usize, status: &Status) -> Failure {
        Failure::Final(Status::unavailable(format!(
            "a prompt of {prompt_tokens} tokens (--disagg-min-prompt-tokens {}) needs a prefill \
             worker: {}; start one, or let decode workers prefill such prompts themselves with \
             --prefill-fallback",
            self.policy.disagg_min_prompt_tokens,
            status.message()
        )))
    }
}

/// `job` with every image's content hash filled in, the key of the vision workers' caches.
fn with_content_hashes(job: &GenerateJob) -> GenerateJob {
    let mut job = job.clone();
    for image in job
        .images
        .iter_mut()
        .filter_map(|input| input.image.as_mut())
    {
        if image.content_hash.is_empty() {
            image.content_hash = image_content_hash(&image.data).to_vec().into();
        }
    }
    job
}

/// `job` with its images' data left out (their hashes and grids stay).
fn without_image_data(job: &GenerateJob) -> GenerateJob {
    let mut job = job.clone();
    for image in job
        .images
        .iter_mut()
        .filter_map(|input| input.image.as_mut())
    {
        image.data = Default::default();
    }
    job
}

/// Why an attempt failed.
enum Failure {
    /// The request itself is at fault (or nothing is left to try): no retry.
    Final(Status),
    /// The worker at `address` (`http://host:port`) failed: retry without it.
    Worker { address: String, status: Status },
}

impl Failure {
    /// Classifies `status` from a call to `worker` (see [`Failure::of`]); a worker that could not
    /// be reached is also set aside for every request until it reports its load again.
    fn of_lease(worker: &WorkerLease, status: Status) -> Failure {
        let failure = Failure::of(worker.address(), status);
        if let Failure::Worker { address, status } = &failure
            && address == worker.address()
            && matches!(status.code(), Code::Unavailable | Code::Unknown)
        {
            worker.set_aside();
        }
        failure
    }

    /// Classifies `status` from a call to the worker at `address`: a failure a peer caused blames
    /// the peer; transport and server failures blame the worker; anything else is final.
    fn of(address: &str, status: Status) -> Failure {
        if let Some(peer) = status
            .metadata()
            .get(FAILED_PEER_METADATA)
            .and_then(|v| v.to_str().ok())
        {
            return Failure::Worker {
                address: format!("http://{peer}"),
                status,
            };
        }
        match status.code() {
            Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::Aborted
            | Code::DeadlineExceeded => Failure::Worker {
                address: address.to_string(),
                status,
            },
            _ => Failure::Final(status),
        }
    }
}
