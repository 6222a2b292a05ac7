//! The NCCL backend of [`Communicator`] (feature `cuda`): one rank per GPU, each rank a process or
//! thread that owns one candle CUDA device.
//!
//! Rank 0 creates an [`NcclUniqueId`] and the launcher hands its 128 bytes
//! ([`NcclUniqueId::to_bytes`]) to every other rank, which rebuilds it with
//! [`NcclUniqueId::from_bytes`]; then every rank calls [`NcclCommunicator::new`] with its device.
//! Collectives run on the stream of the rank's candle device, so they are ordered after the
//! kernels that produced their input, and each call waits (up to its timeout) until the
//! collective has completed, which is when every rank has contributed. A failed or timed-out
//! collective aborts the NCCL communicator and every later call returns that error.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Shape, Storage, Tensor};
use cudarc::driver::{CudaSlice, CudaStream, CudaView, DeviceRepr};
use cudarc::nccl::{Comm, Id, NcclType, ReduceOp};
use half::{bf16, f16};

use super::Communicator;
use crate::error::{ModelError, Result};

/// Bytes of an NCCL unique id.
pub const NCCL_UNIQUE_ID_BYTES: usize = 128;

/// Most dimensions a tensor passed to [`Communicator::all_gather`] may have.
const MAX_GATHER_DIMS: usize = 8;

/// The rendezvous token of one NCCL group: created once (on rank 0) and given to every rank.
#[derive(Clone, Copy)]
pub struct NcclUniqueId(Id);

impl NcclUniqueId {
    /// A fresh id (NCCL opens a bootstrap socket on this host that the other ranks connect to).
    pub fn new() -> Result<Self> {
        Id::new()
            .map(NcclUniqueId)
            .map_err(|e| nccl_error("ncclGetUniqueId", e))
    }

    /// The id as bytes a launcher can pass to the other ranks (command line, environment, registry).
    pub fn to_bytes(&self) -> [u8; NCCL_UNIQUE_ID_BYTES] {
        self.0.internal().map(|c| c as u8)
    }

    /// The id rank 0 created, from its [`to_bytes`](Self::to_bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bytes: &[u8; NCCL_UNIQUE_ID_BYTES] = bytes.try_into().map_err(|_| {
            ModelError::BadInput(format!(
                "an NCCL unique id has {NCCL_UNIQUE_ID_BYTES} bytes, not {}",
                bytes.len()
            ))
        })?;
        Ok(NcclUniqueId(Id::uninit(
            bytes.map(|b| b as core::ffi::c_char),
        )))
    }
}

/// One rank's NCCL communicator.
pub struct NcclCommunicator {
    state: Mutex<State>,
    device: CudaDevice,
    rank: usize,
    world_size: usize,
    timeout: Duration,
}

enum State {
    Live(LiveComm),
    /// A collective failed; the communicator was aborted and answers every call with this message.
    Broken(String),
}

/// An NCCL communicator handle.
struct LiveComm(Comm);

// SAFETY: an NCCL communicator may be used from any thread as long as no two threads call into it
// at once; `NcclCommunicator` only reaches it through its mutex.
unsafe impl Send for LiveComm {}

impl NcclCommunicator {
    /// Joins the group of `world_size` ranks identified by `id` as `rank`, on CUDA `device`.
    /// Blocks until every rank has joined. Each collective may take up to `timeout` before the
    /// communicator gives up on its peers.
    pub fn new(
        device: &Device,
        rank: usize,
        world_size: usize,
        id: &NcclUniqueId,
        timeout: Duration,
    ) -> Result<Self> {
        if rank >= world_size {
            return Err(ModelError::BadInput(format!(
                "rank {rank} is not below the world size {world_size}"
            )));
        }
        let Device::Cuda(device) = device else {
            return Err(ModelError::BadInput(format!(
                "NCCL needs a CUDA device, not {:?}",
                device.location()
            )));
        };
        let stream = device.cuda_stream();
        // NCCL binds the communicator to the device current on the calling thread.
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| ModelError::Gpu(e.to_string()))?;
        let comm = Comm::from_rank(stream, rank, world_size, id.0)
            .map_err(|e| nccl_error("ncclCommInitRank", e))?;
        Ok(NcclCommunicator {
            state: Mutex::new(State::Live(LiveComm(comm))),
            device: device.clone(),
            rank,
            world_size,
            timeout,
        })
    }

    /// Runs `collective` on the live communicator and waits for it to complete; a failure or a
    /// timeout aborts the communicator for good.
    fn run<R>(&self, what: &str, collective: impl FnOnce(&Comm) -> Result<R>) -> Result<R> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let comm = match &*state {
            State::Live(LiveComm(comm)) => comm,
            State::Broken(message) => {
                return Err(ModelError::Gpu(format!(
                    "NCCL communicator unusable after an earlier failure: {message}"
                )));
            }
        };
        let outcome =
            collective(comm).and_then(|value| self.wait_for(&comm.stream(), what).map(|()| value));
        if let Err(error) = &outcome {
            // Dropping the communicator aborts it, which also ends its pending collectives.
            *state = State::Broken(format!("rank {} {what}: {error}", self.rank));
        }
        outcome
    }

    /// Waits until the work queued on `stream` so far has completed, or `self.timeout` passes.
    fn wait_for(&self, stream: &Arc<CudaStream>, what: &str) -> Result<()> {
        let done = stream
            .record_event(None)
            .map_err(|e| ModelError::Gpu(e.to_string()))?;
        let started = Instant::now();
        while !done
            .try_is_complete()
            .map_err(|e| ModelError::Gpu(e.to_string()))?
        {
            if started.elapsed() > self.timeout {
                return Err(ModelError::Gpu(format!(
                    "{what} did not complete within {:?}: a peer rank stalled or failed",
                    self.timeout
                )));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        Ok(())
    }

    /// Refuses, before any collective starts, a tensor this rank cannot hand to NCCL.
    fn check_input(&self, t: &Tensor) -> Result<()> {
        if !matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16) {
            return Err(ModelError::BadInput(format!(
                "NCCL collectives take f32, bf16 or f16 tensors, not {:?}",
                t.dtype()
            )));
        }
        match t.device() {
            Device::Cuda(device) if device.id() == self.device.id() => Ok(()),
            Device::Cuda(_) => Err(ModelError::BadInput(
                "the tensor is on another GPU than this rank's".into(),
            )),
            _ => Err(ModelError::BadInput(
                "NCCL collectives need CUDA tensors".into(),
            )),
        }
    }

    /// Runs `op` from the packed device buffer of `t` (f32, bf16 or f16, on this rank's device)
    /// into a fresh buffer, returned as a tensor of `out_shape` and `t`'s dtype.
    fn map_buffer(&self, t: &Tensor, out_shape: Shape, op: impl TypedOp) -> Result<Tensor> {
        self.check_input(t)?;
        match t.dtype() {
            DType::BF16 => self.map_typed::<bf16>(t, out_shape, op),
            DType::F16 => self.map_typed::<f16>(t, out_shape, op),
            _ => self.map_typed::<f32>(t, out_shape, op),
        }
    }

    fn map_typed<T: CudaDType + NcclType + DeviceRepr>(
        &self,
        t: &Tensor,
        out_shape: Shape,
        op: impl TypedOp,
    ) -> Result<Tensor> {
        let t = t.contiguous()?;
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(cuda) = &*storage else {
            return Err(ModelError::BadInput(
                "NCCL collectives need CUDA tensors".into(),
            ));
        };
        let start = layout.start_offset();
        let input = cuda
            .as_cuda_slice::<T>()?
            .slice(start..start + t.elem_count());
        // SAFETY: every collective below writes its whole output buffer.
        let mut out = unsafe { self.device.alloc::<T>(out_shape.elem_count()) }?;
        self.run(op.name(), |comm| op.apply(comm, &input, &mut out))?;
        let out = CudaStorage::wrap_cuda_slice(out, self.device.clone());
        Ok(Tensor::from_storage(
            Storage::Cuda(out),
            out_shape,
            BackpropOp::none(),
            false,
        ))
    }

    /// Every rank's shape (rank order), exchanged so that all ranks can check them alike.
    fn gather_shapes(&self, dims: &[usize]) -> Result<Vec<Vec<usize>>> {
        if dims.len() > MAX_GATHER_DIMS {
            return Err(ModelError::BadInput(format!(
                "all_gather takes up to {MAX_GATHER_DIMS} dimensions, not {}",
                dims.len()
            )));
        }
        let mut descriptor = vec![dims.len() as u64; 1];
        descriptor.extend(dims.iter().map(|&d| d as u64));
        descriptor.resize(MAX_GATHER_DIMS + 1, 0);
        let stream = self.device.cuda_stream();
        let gpu_error = |e: cudarc::driver::DriverError| ModelError::Gpu(e.to_string());
        let mine = stream.clone_htod(&descriptor).map_err(gpu_error)?;
        // SAFETY: the all-gather writes every element.
        let mut all = unsafe { stream.alloc::<u64>(descriptor.len() * self.world_size) }
            .map_err(gpu_error)?;
        self.run("all_gather of shapes", |comm| {
            comm.all_gather(&mine, &mut all)
                .map(drop)
                .map_err(|e| nccl_error("ncclAllGather", e))
        })?;
        let all = stream.clone_dtoh(&all).map_err(gpu_error)?;
        Ok(all
            .chunks_exact(MAX_GATHER_DIMS + 1)
            .map(|d| d[1..=d[0] as usize].iter().map(|&x| x as usize).collect())
            .collect())
    }
}

/// A collective from one typed device buffer to another.
trait TypedOp: Copy {
    fn name(&self) -> &'static str;
    fn apply<T: NcclType>(
        self,
        comm: &Comm,
        input: &CudaView<T>,
        out: &mut CudaSlice<T>,
    ) -> Result<()>;
}

#[derive(Clone, Copy)]
struct AllReduceSum;

impl TypedOp for AllReduceSum {
    fn name(&self) -> &'static str {
        "all_reduce_sum"
    }

    fn apply<T: NcclType>(
        self,
        comm: &Comm,
        input: &CudaView<T>,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        comm.all_reduce(input, out, &ReduceOp::Sum)
            .map(drop)
            .map_err(|e| nccl_error("ncclAllReduce", e))
    }
}

#[derive(Clone, Copy)]
struct AllGather;

impl TypedOp for AllGather {
    fn name(&self) -> &'static str {
        "all_gather"
    }

    fn apply<T: NcclType>(
        self,
        comm: &Comm,
        input: &CudaView<T>,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        comm.all_gather(input, out)
            .map(drop)
            .map_err(|e| nccl_error("ncclAllGather", e))
    }
}

#[derive(Clone, Copy)]
struct Broadcast {
    root: usize,
}

impl TypedOp for Broadcast {
    fn name(&self) -> &'static str {
        "broadcast"
    }

    fn apply<T: NcclType>(
        self,
        comm: &Comm,
        input: &CudaView<T>,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        comm.broadcast(Some(input), out, self.root as i32)
            .map(drop)
            .map_err(|e| nccl_error("ncclBroadcast", e))
    }
}

impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.map_buffer(t, t.shape().clone(), AllReduceSum)
    }

    fn all_gather(&self, t: &Tensor, dim: usize) -> Result<Tensor> {
        self.check_input(t)?;
        let dims = t.dims();
        if dim >= dims.len() {
            return Err(ModelError::BadInput(format!(
                "all_gather along dim {dim} of a {}-d tensor",
                dims.len()
            )));
        }
        let shapes = self.gather_shapes(dims)?;
        let fits = |shape: &Vec<usize>| {
            shape.len() == dims.len()
                && shape
                    .iter()
                    .zip(dims)
                    .enumerate()
                    .all(|(d, (a, b))| d == dim || a == b)
        };
        if let Some((rank, shape)) = shapes.iter().enumerate().find(|(_, shape)| !fits(shape)) {
            return Err(ModelError::BadInput(format!(
                "all_gather along dim {dim}: rank {rank} has shape {shape:?}, rank {} has {dims:?}",
                self.rank
            )));
        }
        // NCCL gathers equal-sized, rank-major blocks: move `dim` first, pad every rank's block to
        // the longest, gather, then cut each rank's rows back out.
        let longest = shapes.iter().map(|shape| shape[dim]).max().unwrap_or(0);
        let block = t
            .pad_with_zeros(dim, 0, longest - dims[dim])?
            .transpose(0, dim)?
            .contiguous()?;
        let mut gathered_dims = block.dims().to_vec();
        gathered_dims[0] *= self.world_size;
        let gathered = self.map_buffer(&block, Shape::from(gathered_dims), AllGather)?;
        let pieces = shapes
            .iter()
            .enumerate()
            .map(|(rank, shape)| gathered.narrow(0, rank * longest, shape[dim]))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&pieces, 0)?.transpose(0, dim)?.contiguous()?)
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.world_size {
            return Err(ModelError::BadInput(format!(
                "broadcast from rank {root} in a group of {}",
                self.world_size
            )));
        }
        self.map_buffer(t, t.shape().clone(), Broadcast { root })
    }

    fn barrier(&self) -> Result<()> {
        let token = Tensor::zeros(1, DType::F32, &Device::Cuda(self.device.clone()))?;
        self.all_reduce_sum(&token).map(drop)
    }
}

fn nccl_error(call: &str, error: cudarc::nccl::result::NcclError) -> ModelError {
    ModelError::Gpu(format!("{call} failed: {:?}", error.0))
}
