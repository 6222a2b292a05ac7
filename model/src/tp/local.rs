//! Collectives for ranks that are threads of one process, through shared memory.
//!
//! Each rank copies its tensor into its own slot; after a barrier, rank `r` sums (or gathers)
//! chunk `r` of every slot into its result slot; after a second barrier every rank reads the
//! results. The reduction work is spread over the ranks and nobody reads a slot while its owner
//! writes it. The barrier spins briefly (a decode step's all-reduce is a few kilobytes, so waking
//! a sleeping thread would cost more than the copy), then yields, and gives up after the group's
//! timeout or as soon as any rank aborts the group: a dead or stalled rank ends in an error on
//! every other rank, never in a hang.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::tp::Communicator;

/// Spins this many times before yielding the core while waiting at a barrier.
const SPINS_BEFORE_YIELD: u32 = 2000;

/// What all ranks of one group share.
struct Group {
    world: usize,
    /// Per rank: the shape and the f32 values it contributed to the current collective.
    slots: Vec<RwLock<(Vec<usize>, Vec<f32>)>>,
    /// Per rank: its chunk of the current all-reduce's result.
    results: Vec<RwLock<Vec<f32>>>,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    timeout: Duration,
    aborted: AtomicBool,
    abort_reason: Mutex<String>,
    /// Nanoseconds rank 0 spent inside collectives (waiting included).
    busy_nanos: AtomicU64,
}

/// A handle on a group's shared-memory collectives for one rank; see the module documentation.
pub struct LocalCommunicator {
    group: Arc<Group>,
    rank: usize,
}

/// Time spent in collectives by rank 0 of a [`LocalCommunicator`] group, for benchmarks.
#[derive(Clone)]
pub struct CollectiveClock(Arc<Group>);

impl CollectiveClock {
    /// Total time rank 0 has spent inside collectives, waiting for peers included.
    pub fn total(&self) -> Duration {
        Duration::from_nanos(self.0.busy_nanos.load(Ordering::Relaxed))
    }
}

/// Aborts a [`LocalCommunicator`] group from outside (when a rank's thread died).
#[derive(Clone)]
pub struct GroupAbort(Arc<Group>);

impl GroupAbort {
    /// Makes every pending and future collective of the group fail with `reason`.
    pub fn abort(&self, reason: &str) {
        self.0.abort(reason);
    }
}

impl LocalCommunicator {
    /// One communicator per rank of a new group of `world` ranks; a collective that waits longer
    /// than `timeout` for its peers fails and aborts the group.
    pub fn group(
        world: usize,
        timeout: Duration,
    ) -> (Vec<LocalCommunicator>, CollectiveClock, GroupAbort) {
        let group = Arc::new(Group {
            world,
            slots: (0..world)
                .map(|_| RwLock::new((Vec::new(), Vec::new())))
                .collect(),
            results: (0..world).map(|_| RwLock::new(Vec::new())).collect(),
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            timeout,
            aborted: AtomicBool::new(false),
            abort_reason: Mutex::new(String::new()),
            busy_nanos: AtomicU64::new(0),
        });
        let ranks = (0..world)
            .map(|rank| LocalCommunicator {
                group: Arc::clone(&group),
                rank,
            })
            .collect();
        (
            ranks,
            CollectiveClock(Arc::clone(&group)),
            GroupAbort(group),
        )
    }

    /// Runs one collective, timing it on rank 0.
    fn timed<R>(&self, collective: impl FnOnce() -> Result<R>) -> Result<R> {
        let started = Instant::now();
        let result = collective();
        if self.rank == 0 {
            let nanos = started.elapsed().as_nanos() as u64;
            self.group.busy_nanos.fetch_add(nanos, Ordering::Relaxed);
        }
        result
    }

    /// Copies `t`'s values (as f32) and shape into this rank's slot.
    fn publish(&self, t: &Tensor) -> Result<()> {
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        *self.group.slots[self.rank]
            .write()
            .unwrap_or_else(PoisonError::into_inner) = (t.dims().to_vec(), values);
        Ok(())
    }

    /// Rank `rank`'s published tensor, in `dtype`.
    fn slot_tensor(&self, rank: usize, dtype: DType) -> Result<Tensor> {
        let slot = self.group.slots[rank]
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let (shape, values) = &*slot;
        Ok(Tensor::from_slice(values, shape.as_slice(), &Device::Cpu)?.to_dtype(dtype)?)
    }
}

impl Group {
    fn abort(&self, reason: &str) {
        let mut stored = self
            .abort_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !self.aborted.load(Ordering::Acquire) {
            *stored = reason.to_string();
            self.aborted.store(true, Ordering::Release);
        }
    }

    fn failure(&self) -> ModelError {
        let reason = self
            .abort_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ModelError::RankFailed(reason.clone())
    }

    /// Waits until every rank has arrived, the group is aborted, or the timeout passes (which
    /// aborts the group).
    fn barrier(&self, rank: usize) -> Result<()> {
        if self.aborted.load(Ordering::Acquire) {
            return Err(self.failure());
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.world {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return Ok(());
        }
        let started = Instant::now();
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if self.aborted.load(Ordering::Acquire) {
                return Err(self.failure());
            }
            if spins < SPINS_BEFORE_YIELD {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            if started.elapsed() > self.timeout {
                self.abort(&format!(
                    "rank {rank} waited more than {:?} for its peers in a collective",
                    self.timeout
                ));
                return Err(self.failure());
            }
            std::thread::yield_now();
        }
        Ok(())
    }
}

impl Communicator for LocalCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.group.world
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.timed(|| {
            let group = &*self.group;
            self.publish(t)?;
            group.barrier(self.rank)?;
            let len = t.elem_count();
            let chunk = self.rank * len / group.world..(self.rank + 1) * len / group.world;
            {
                let mut sum = vec![0f32; chunk.len()];
                for slot in &group.slots {
                    let slot = slot.read().unwrap_or_else(PoisonError::into_inner);
                    for (acc, value) in sum.iter_mut().zip(&slot.1[chunk.clone()]) {
                        *acc += value;
                    }
                }
                *group.results[self.rank]
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = sum;
            }
            group.barrier(self.rank)?;
            let mut values = Vec::with_capacity(len);
            for result in &group.results {
                values.extend_from_slice(&result.read().unwrap_or_else(PoisonError::into_inner));
            }
            Ok(Tensor::from_vec(values, t.dims(), &Device::Cpu)?.to_dtype(t.dtype())?)
        })
    }

    fn all_gather(&self, t: &Tensor, dim: usize) -> Result<Tensor> {
        self.timed(|| {
            self.publish(t)?;
            self.group.barrier(self.rank)?;
            let parts = (0..self.group.world)
                .map(|rank| self.slot_tensor(rank, t.dtype()))
                .collect::<Result<Vec<_>>>()?;
            // Nobody may overwrite a slot before every rank has read them all.
            self.group.barrier(self.rank)?;
            Ok(Tensor::cat(&parts, dim)?)
        })
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        self.timed(|| {
            if self.rank == root {
                self.publish(t)?;
            }
            self.group.barrier(self.rank)?;
            let value = self.slot_tensor(root, t.dtype())?;
            self.group.barrier(self.rank)?;
            Ok(value)
        })
    }

    fn barrier(&self) -> Result<()> {
        self.timed(|| self.group.barrier(self.rank))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on every rank of a new group, one thread each, and returns their results in rank order.
    fn on_ranks<R: Send + 'static>(
        world: usize,
        f: impl Fn(&LocalCommunicator) -> R + Send + Sync + 'static,
    ) -> Vec<R> {
        let (ranks, _, _) = LocalCommunicator::group(world, Duration::from_secs(10));
        let f = Arc::new(f);
        let threads: Vec<_> = ranks
            .into_iter()
            .map(|comm| {
                let f = Arc::clone(&f);
                std::thread::spawn(move || f(&comm))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    fn rank_tensor(rank: usize, len: usize) -> Tensor {
        let values: Vec<f32> = (0..len).map(|i| (rank * 1000 + i) as f32).collect();
        Tensor::from_vec(values, (len / 3, 3), &Device::Cpu).unwrap()
    }

    #[test]
    fn all_reduce_gives_every_rank_the_sum_many_times_over() {
        for world in [1, 2, 3, 4] {
            let results = on_ranks(world, |comm| {
                (0..50)
                    .map(|round| {
                        let t = (rank_tensor(comm.rank(), 21) + round as f64).unwrap();
                        comm.all_reduce_sum(&t)
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            });
            for (round, sums) in results[0].iter().enumerate() {
                let expected: Vec<f32> = (0..21)
                    .map(|i| (0..world).map(|r| (r * 1000 + i + round) as f32).sum())
                    .collect();
                assert_eq!(sums, &expected, "world {world} round {round}");
                for other in &results[1..] {
                    assert_eq!(&other[round], sums);
                }
            }
        }
    }

    #[test]
    fn all_gather_concatenates_in_rank_order_and_broadcast_copies_the_root() {
        let results = on_ranks(3, |comm| {
            let gathered = comm.all_gather(&rank_tensor(comm.rank(), 6), 1).unwrap();
            let broadcast = comm.broadcast(&rank_tensor(comm.rank(), 6), 2).unwrap();
            (
                gathered.to_vec2::<f32>().unwrap(),
                broadcast.to_vec2::<f32>().unwrap(),
            )
        });
        for (gathered, broadcast) in results {
            assert_eq!(
                gathered[0],
                [
                    0.0, 1.0, 2.0, 1000.0, 1001.0, 1002.0, 2000.0, 2001.0, 2002.0
                ]
            );
            assert_eq!(broadcast, rank_tensor(2, 6).to_vec2::<f32>().unwrap());
        }
    }

    #[test]
    fn a_rank_that_never_arrives_fails_its_peers_after_the_timeout() {
        let (mut ranks, _, _) = LocalCommunicator::group(2, Duration::from_millis(200));
        let _absent = ranks.pop();
        let started = Instant::now();
        let error = ranks[0].barrier().unwrap_err().to_string();
        assert!(error.contains("waited more than"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // The group stays failed.
        assert!(ranks[0].all_reduce_sum(&rank_tensor(0, 3)).is_err());
    }

    #[test]
    fn an_abort_releases_a_waiting_rank_with_the_reason() {
        let (mut ranks, _, abort) = LocalCommunicator::group(2, Duration::from_secs(60));
        let waiting = ranks.remove(0);
        let thread = std::thread::spawn(move || waiting.barrier());
        std::thread::sleep(Duration::from_millis(50));
        abort.abort("rank 1 panicked: boom");
        let error = thread.join().unwrap().unwrap_err().to_string();
        assert!(error.contains("rank 1 panicked: boom"), "{error}");
    }
}
