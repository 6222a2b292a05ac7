//! A tensor-parallel group of ranks that run every step together.
//!
//! [`RankGroup`] owns one state per rank (its weight shard and its KV memory). Rank 0 runs on the
//! caller's thread, the others on threads of their own; each rank computes on a thread pool of its
//! own size, so a group of two ranks with one thread each uses the same cores as one rank with two.
//! [`RankGroup::run`] hands the same step to every rank and returns rank 0's result, which the
//! ranks' collectives made complete (gathered logits, say).
//!
//! Failure is contained: a rank that panics or errors aborts the group's collectives, so its peers
//! stop waiting; a rank that stalls makes its peers' collectives time out. The step then fails with
//! [`ModelError::RankFailed`], and so does every later step, at once: callers fail their requests
//! instead of hanging. For tests, a [`Fault`] makes one rank panic or stall at a chosen step.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{ModelError, Result};
use crate::tp::local::{CollectiveClock, GroupAbort, LocalCommunicator};
use crate::tp::{Communicator, SoloCommunicator};

/// How a group's ranks run.
#[derive(Debug, Clone)]
pub struct RankOptions {
    /// Ranks in the group.
    pub world: usize,
    /// Compute threads of each rank.
    pub threads_per_rank: usize,
    /// How long a rank waits for its peers in a collective (or for their step to end) before the
    /// group is declared failed.
    pub timeout: Duration,
    /// A fault to inject, for tests.
    pub fault: Option<Fault>,
    /// How the ranks' collectives travel.
    pub transport: Transport,
}

/// How a group's ranks exchange their partial results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Shared memory between threads of this process (CPU ranks).
    SharedMemory,
    /// NCCL, rank `r` on GPU `first_gpu + r` (feature `cuda`).
    #[cfg(feature = "cuda")]
    Nccl { first_gpu: usize },
}

/// Makes one rank's communicator on that rank's own thread (NCCL ranks must join together).
type Connector = Box<dyn FnOnce() -> Result<Arc<dyn Communicator>> + Send>;

/// Each rank's connector, with the group's clock and abort handle where the transport has them.
fn connectors(
    options: &RankOptions,
) -> Result<(Vec<Connector>, Option<CollectiveClock>, Option<GroupAbort>)> {
    match options.transport {
        Transport::SharedMemory => {
            let (communicators, clock, abort) =
                LocalCommunicator::group(options.world, options.timeout);
            let connectors = communicators
                .into_iter()
                .map(|comm| {
                    Box::new(move || Ok(Arc::new(comm) as Arc<dyn Communicator>)) as Connector
                })
                .collect();
            Ok((connectors, Some(clock), Some(abort)))
        }
        #[cfg(feature = "cuda")]
        Transport::Nccl { first_gpu } => {
            use crate::tp::nccl::{NcclCommunicator, NcclUniqueId};
            // The launcher here is this process: rank 0's id goes to every rank thread.
            let id = Arc::new(NcclUniqueId::new()?);
            let (world, timeout) = (options.world, options.timeout);
            let connectors = (0..world)
                .map(|rank| {
                    let id = Arc::clone(&id);
                    Box::new(move || {
                        let device = candle_core::Device::new_cuda(first_gpu + rank)?;
                        Ok(
                            Arc::new(NcclCommunicator::new(&device, rank, world, &id, timeout)?)
                                as Arc<dyn Communicator>,
                        )
                    }) as Connector
                })
                .collect();
            Ok((connectors, None, None))
        }
    }
}

impl RankOptions {
    /// `world` ranks sharing this machine's cores evenly, with a generous timeout.
    pub fn new(world: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        RankOptions {
            world,
            threads_per_rank: (cores / world.max(1)).max(1),
            timeout: Duration::from_secs(300),
            fault: None,
            transport: Transport::SharedMemory,
        }
    }
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The rank panics.
    Panic,
    /// The rank stops making progress, forever.
    Stall,
}

/// A fault injected into one rank at one step, written `panic:RANK:STEP` or `stall:RANK:STEP`
/// (steps count from 0 over the group's lifetime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub rank: usize,
    pub step: u64,
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}` is not a fault: write panic:RANK:STEP or stall:RANK:STEP");
        let mut parts = s.split(':');
        let kind = match parts.next() {
            Some("panic") => FaultKind::Panic,
            Some("stall") => FaultKind::Stall,
            _ => return Err(bad()),
        };
        let rank = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
        let step = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Fault { kind, rank, step })
    }
}

impl Fault {
    fn strike(&self) {
        match self.kind {
            FaultKind::Panic => panic!("injected fault at step {}", self.step),
            FaultKind::Stall => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
        }
    }
}

type Step<S> = Arc<dyn Fn(&mut S) -> Result<()> + Send + Sync>;

/// A rank on a thread of its own.
struct Peer<S> {
    steps: Sender<Step<S>>,
    done: Receiver<Result<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The ranks of a tensor-parallel group, each with its state `S`; see the module documentation.
pub struct RankGroup<S> {
    local: S,
    local_pool: Option<rayon::ThreadPool>,
    peers: Vec<Peer<S>>,
    abort: Option<GroupAbort>,
    clock: Option<CollectiveClock>,
    options: RankOptions,
    steps_run: u64,
    failed: Option<String>,
}

/// A thread pool of `threads` threads for `rank`.
fn rank_pool(rank: usize, threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("fovea-rank{rank}-{i}"))
        .build()
        .map_err(|e| ModelError::RankFailed(format!("cannot start rank {rank}'s threads: {e}")))
}

/// Runs `f`, turning a panic into an error that names `rank`.
fn contained<R>(rank: usize, f: impl FnOnce() -> Result<R>) -> Result<R> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(ModelError::RankFailed(format!(
            "rank {rank} panicked: {message}"
        )))
    })
}

impl<S: Send + 'static> RankGroup<S> {
    /// Starts the ranks of `options`; `init` builds each rank's state from its communicator on the
    /// rank's own thread (so shards load in parallel). A group of one runs on the caller's thread
    /// and thread pool, with no collectives at all.
    pub fn start(
        options: RankOptions,
        init: impl Fn(Arc<dyn Communicator>) -> Result<S> + Send + Sync + 'static,
    ) -> Result<Self> {
        if options.world <= 1 {
            let mut group = Self::single(init(Arc::new(SoloCommunicator))?);
            group.options.fault = options.fault;
            return Ok(group);
        }
        let (connectors, clock, abort) = connectors(&options)?;
        let init = Arc::new(init);
        let mut connectors = connectors.into_iter();
        let local_connector = connectors.next().expect("a group has a rank 0");
        let mut peers = Vec::new();
        for (index, connector) in connectors.enumerate() {
            peers.push(Self::spawn_peer(
                index + 1,
                connector,
                &options,
                Arc::clone(&init),
                abort.clone(),
            )?);
        }
        let local_pool = rank_pool(0, options.threads_per_rank)?;
        let local = contained(0, || local_pool.install(|| init(local_connector()?)));
        let mut failure = local.as_ref().err().map(ToString::to_string);
        for (index, peer) in peers.iter().enumerate() {
            match peer.done.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = failure.or(Some(e.to_string())),
                Err(_) => {
                    failure = failure.or(Some(format!("rank {} exited while loading", index + 1)))
                }
            }
        }
        if let Some(reason) = failure {
            if let Some(abort) = &abort {
                abort.abort(&reason);
            }
            return Err(ModelError::RankFailed(reason));
        }
        Ok(RankGroup {
            local: local?,
            local_pool: Some(local_pool),
            peers,
            abort,
            clock,
            options,
            steps_run: 0,
            failed: None,
        })
    }

    /// A group of one rank with `state` (the whole model), running on the caller's thread and
    /// thread pool.
    pub fn single(state: S) -> Self {
        RankGroup {
            local: state,
            local_pool: None,
            peers: Vec::new(),
            abort: None,
            clock: None,
            options: RankOptions::new(1),
            steps_run: 0,
            failed: None,
        }
    }

    /// Starts `rank` on its own thread: it connects, builds its state, reports, then runs steps
    /// until its channel closes.
    fn spawn_peer(
        rank: usize,
        connect: Connector,
        options: &RankOptions,
        init: Arc<impl Fn(Arc<dyn Communicator>) -> Result<S> + Send + Sync + 'static>,
        abort: Option<GroupAbort>,
    ) -> Result<Peer<S>> {
        let pool = rank_pool(rank, options.threads_per_rank)?;
        let (steps, step_receiver) = channel::<Step<S>>();
        let (done_sender, done) = channel();
        let thread = std::thread::Builder::new()
            .name(format!("fovea-rank{rank}"))
            .spawn(move || {
                let state = contained(rank, || pool.install(|| init(connect()?)));
                let mut state = match state {
                    Ok(state) => {
                        let _ = done_sender.send(Ok(()));
                        state
                    }
                    Err(e) => {
                        let _ = done_sender.send(Err(e));
                        return;
                    }
                };
                while let Ok(step) = step_receiver.recv() {
                    let result = contained(rank, || pool.install(|| step(&mut state)));
                    if let (Err(e), Some(abort)) = (&result, &abort) {
                        abort.abort(&e.to_string());
                    }
                    if done_sender.send(result).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| {
                ModelError::RankFailed(format!("cannot start rank {rank}'s thread: {e}"))
            })?;
        Ok(Peer {
            steps,
            done,
            thread: Some(thread),
        })
    }

    /// Ranks in the group.
    pub fn world(&self) -> usize {
        self.options.world
    }

    /// Rank 0's state (the rank that holds the vision tower and returns results).
    pub fn local(&self) -> &S {
        &self.local
    }

    /// Rank 0's state, to change it between steps (what every rank must see changed goes
    /// through [`RankGroup::run`] instead).
    pub fn local_mut(&mut self) -> &mut S {
        &mut self.local
    }

    /// Time rank 0 has spent in collectives so far (zero for a group of one).
    pub fn collective_time(&self) -> Duration {
        self.clock
            .as_ref()
            .map_or(Duration::ZERO, CollectiveClock::total)
    }

    /// Runs `step` on every rank at once and returns rank 0's result. Once a step has failed on
    /// any rank, this and every later call fail with [`ModelError::RankFailed`].
    pub fn run<R: Send>(
        &mut self,
        step: impl Fn(&mut S) -> Result<R> + Send + Sync + 'static,
    ) -> Result<R> {
        if let Some(reason) = &self.failed {
            return Err(ModelError::RankFailed(format!(
                "the tensor-parallel group failed earlier: {reason}"
            )));
        }
        let index = self.steps_run;
        self.steps_run += 1;
        let fault_at = |rank: usize| {
            self.options
                .fault
                .filter(|f| f.rank == rank && f.step == index)
        };
        let step = Arc::new(step);
        let mut failure = None;
        for (peer_index, peer) in self.peers.iter().enumerate() {
            let (step, fault) = (Arc::clone(&step), fault_at(peer_index + 1));
            let job: Step<S> = Arc::new(move |state: &mut S| {
                if let Some(fault) = fault {
                    fault.strike();
                }
                step(state).map(drop)
            });
            if peer.steps.send(job).is_err() {
                failure = Some(format!("rank {}'s thread is gone", peer_index + 1));
            }
        }
        let fault = fault_at(0);
        let local = &mut self.local;
        let mut run_local = || {
            if let Some(fault) = fault {
                fault.strike();
            }
            step(local)
        };
        let result = if failure.is_some() {
            Err(ModelError::RankFailed(String::new()))
        } else {
            contained(0, || match &self.local_pool {
                Some(pool) => pool.install(run_local),
                None => run_local(),
            })
        };
        if let Err(e) = &result {
            failure = failure.or(Some(e.to_string()));
            if let Some(abort) = &self.abort {
                abort.abort(&e.to_string());
            }
        }
        for (peer_index, peer) in self.peers.iter().enumerate() {
            // Once the group is aborted, live peers return at once; only a stalled one keeps us.
            let patience = match failure {
                Some(_) => self.options.timeout.min(Duration::from_secs(1)),
                None => self.options.timeout,
            };
            match peer.done.recv_timeout(patience) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = failure.or(Some(e.to_string())),
                Err(RecvTimeoutError::Timeout) => {
                    failure = failure.or(Some(format!(
                        "rank {} did not finish its step within {:?}",
                        peer_index + 1,
                        self.options.timeout
                    )))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    failure = failure.or(Some(format!("rank {}'s thread is gone", peer_index + 1)))
                }
            }
            if failure.is_some() {
                break;
            }
        }
        match failure {
            None => result,
            Some(reason) => {
                if let Some(abort) = &self.abort {
                    abort.abort(&reason);
                }
                tracing::error!("tensor-parallel group failed: {reason}");
                self.failed = Some(reason.clone());
                Err(ModelError::RankFailed(reason))
            }
        }
    }
}

impl<S> Drop for RankGroup<S> {
    /// Closes the peers' channels and joins their threads, unless the group failed (a stalled
    /// rank's thread never ends; it is left behind).
    fn drop(&mut self) {
        let peers = std::mem::take(&mut self.peers);
        let threads: Vec<_> = peers
            .into_iter()
            .filter_map(|mut peer| peer.thread.take())
            .collect();
        if self.failed.is_none() {
            for thread in threads {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Each rank holds its rank number; a step all-reduces it. Collectives wait at most
    /// `timeout` (generous unless the test is about stalls: printing a panic's backtrace is slow).
    fn group(
        world: usize,
        fault: Option<Fault>,
        timeout: Duration,
    ) -> RankGroup<(Arc<dyn Communicator>, f32)> {
        let mut options = RankOptions::new(world);
        options.timeout = timeout;
        options.fault = fault;
        RankGroup::start(options, |comm| {
            let rank = comm.rank() as f32;
            Ok((comm, rank))
        })
        .unwrap()
    }

    fn sum_of_ranks(group: &mut RankGroup<(Arc<dyn Communicator>, f32)>) -> Result<f32> {
        group.run(|(comm, rank)| {
            let t = Tensor::new(&[*rank], &Device::Cpu)?;
            Ok(comm.all_reduce_sum(&t)?.to_vec1::<f32>()?[0])
        })
    }

    #[test]
    fn every_rank_runs_every_step() {
        let mut group = group(3, None, Duration::from_secs(30));
        for _ in 0..20 {
            assert_eq!(sum_of_ranks(&mut group).unwrap(), 3.0);
        }
    }

    #[test]
    fn a_panicking_rank_fails_the_step_and_every_later_one_without_hanging() {
        let mut group = group(
            2,
            Some("panic:1:2".parse().unwrap()),
            Duration::from_secs(30),
        );
        assert_eq!(sum_of_ranks(&mut group).unwrap(), 1.0);
        assert_eq!(sum_of_ranks(&mut group).unwrap(), 1.0);
        let error = sum_of_ranks(&mut group).unwrap_err().to_string();
        assert!(error.contains("rank 1 panicked"), "{error}");
        let error = sum_of_ranks(&mut group).unwrap_err().to_string();
        assert!(error.contains("failed earlier"), "{error}");
    }

    #[test]
    fn a_stalled_rank_fails_the_step_after_the_timeout() {
        let mut group = group(
            2,
            Some("stall:1:0".parse().unwrap()),
            Duration::from_millis(500),
        );
        let error = sum_of_ranks(&mut group).unwrap_err().to_string();
        assert!(
            error.contains("waited more than") || error.contains("did not finish"),
            "{error}"
        );
    }

    #[test]
    fn rank_zero_may_fail_too() {
        let mut group = group(
            2,
            Some("panic:0:0".parse().unwrap()),
            Duration::from_secs(30),
        );
        let error = sum_of_ranks(&mut group).unwrap_err().to_string();
        assert!(error.contains("rank 0 panicked"), "{error}");
    }

    #[test]
    fn faults_parse_from_their_written_form() {
        assert_eq!(
            "stall:2:7".parse::<Fault>().unwrap(),
            Fault {
                kind: FaultKind::Stall,
                rank: 2,
                step: 7
            }
        );
        assert!("explode:1:1".parse::<Fault>().is_err());
        assert!("panic:1".parse::<Fault>().is_err());
    }
}
