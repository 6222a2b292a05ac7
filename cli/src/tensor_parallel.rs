//! The tensor-parallel flags that `fovea generate` and `fovea serve` share.

use std::time::Duration;

use clap::Args;
use fovea_model::tp::{Fault, RankOptions};

/// How the decoder is split over ranks (threads of this process).
#[derive(Args, Clone, Debug)]
pub struct TensorParallelArgs {
    /// Tensor-parallel ranks to split the decoder over; must divide the model's query heads.
    #[arg(long, env = "FOVEA_TP", default_value_t = 1)]
    pub tp: usize,
    /// Compute threads per rank (default: this machine's cores divided by --tp).
    #[arg(long, env = "FOVEA_THREADS_PER_RANK")]
    pub threads_per_rank: Option<usize>,
    /// Seconds a rank waits for its peers in a collective before the group is declared failed
    /// and its requests end with an error.
    #[arg(long, env = "FOVEA_TP_TIMEOUT_SECS", default_value_t = 300)]
    pub tp_timeout_secs: u64,
    /// Test hook: make a rank fail at a step (panic:RANK:STEP or stall:RANK:STEP).
    #[arg(long, env = "FOVEA_TP_FAULT", hide = true)]
    pub tp_fault: Option<Fault>,
}

impl TensorParallelArgs {
    /// The rank group these flags describe.
    pub fn options(&self) -> Result<RankOptions, String> {
        if self.tp == 0 {
            return Err("--tp must be at least 1".into());
        }
        let mut options = RankOptions::new(self.tp);
        if let Some(threads) = self.threads_per_rank {
            if threads == 0 {
                return Err("--threads-per-rank must be at least 1".into());
            }
            options.threads_per_rank = threads;
        }
        options.timeout = Duration::from_secs(self.tp_timeout_secs.max(1));
        options.fault = self.tp_fault;
        Ok(options)
    }
}
