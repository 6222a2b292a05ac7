//! Tensor parallelism: the decoder's weights split over ranks that combine their partial results
//! through a [`Communicator`]. With feature `cuda`, [`nccl`] implements it over NCCL, one rank per GPU.

pub mod communicator;
#[cfg(feature = "cuda")]
pub mod nccl;

pub use communicator::Communicator;
