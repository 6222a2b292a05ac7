//! Tensor parallelism: the decoder's weights split over ranks that combine their partial results
//! through a [`Communicator`]. [`shard`] says which part each rank holds, [`local`] is the
//! shared-memory communicator for ranks that are threads of one process, [`ranks`] runs a
//! group's ranks in lockstep, and with feature `cuda`, [`nccl`] implements the communicator over
//! NCCL, one rank per GPU.

pub mod communicator;
pub mod local;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod ranks;
pub mod shard;

pub use communicator::{Communicator, SoloCommunicator};
pub use ranks::{Fault, RankGroup, RankOptions, Transport};
pub use shard::TpRank;
