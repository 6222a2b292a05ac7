//! The collectives tensor-parallel ranks use to combine their partial results.
//!
//! A [`Communicator`] belongs to one rank of a group of `world_size` ranks. Every rank of the group
//! must make the same sequence of calls with tensors of the same shape; each call returns once
//! every rank has contributed. A backend that loses a peer (a rank panicked, stalled past its
//! timeout, or its device failed) returns an error from then on instead of waiting forever, so the
//! caller can fail the requests of the step and stay responsive.

use candle_core::Tensor;

use crate::error::Result;

/// One rank's handle on a group's collectives.
pub trait Communicator: Send + Sync {
    /// This rank's index, `0..world_size`.
    fn rank(&self) -> usize;

    /// Ranks in the group.
    fn world_size(&self) -> usize;

    /// The element-wise sum of every rank's `t`, returned on every rank (same shape and dtype).
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;

    /// Every rank's `t` concatenated along `dim` in rank order, returned on every rank. The ranks'
    /// tensors may differ in size along `dim` only.
    fn all_gather(&self, t: &Tensor, dim: usize) -> Result<Tensor>;

    /// Rank `root`'s `t`, returned on every rank; the other ranks pass a tensor of the same shape
    /// and dtype, whose values are ignored.
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;

    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
}

/// The communicator of a group of one: every collective returns its input.
pub struct SoloCommunicator;

impl Communicator for SoloCommunicator {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }

    fn all_gather(&self, t: &Tensor, _dim: usize) -> Result<Tensor> {
        Ok(t.clone())
    }

    fn broadcast(&self, t: &Tensor, _root: usize) -> Result<Tensor> {
        Ok(t.clone())
    }

    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}
