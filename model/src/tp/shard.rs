//! Which part of the decoder each rank of a tensor-parallel group holds.
//!
//! Query heads split evenly over the ranks, so the TP size must divide them. A rank keeps the KV
//! heads its query heads read: when ranks outnumber KV heads, or a rank's run of query heads crosses
//! a group boundary (Phi-4's 40 query and 10 KV heads at TP 4 or 8), neighbouring ranks hold copies
//! of a shared KV head. The MLP's intermediate features and the vocabulary split into contiguous,
//! balanced ranges (sizes differ by at most one), so they need not divide evenly.

use std::ops::Range;

use crate::attention::HeadGroups;
use crate::config::TextConfig;
use crate::error::{ModelError, Result};

/// One rank's place in a tensor-parallel group of `world` ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TpRank {
    pub rank: usize,
    pub world: usize,
}

/// The attention heads of one rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadShard {
    /// The rank's query heads, as indices into the model's heads.
    pub q_heads: Range<usize>,
    /// The KV heads those query heads read.
    pub kv_heads: Range<usize>,
    /// Which of the rank's KV heads each of its query heads reads.
    pub groups: HeadGroups,
}

impl TpRank {
    /// The whole model on one rank.
    pub const SINGLE: TpRank = TpRank { rank: 0, world: 1 };

    /// Checks that a decoder of `config` splits over `world` ranks.
    pub fn check_world(world: usize, config: &TextConfig) -> Result<()> {
        if world == 0 || !config.num_heads.is_multiple_of(world) {
            return Err(ModelError::TensorParallel(format!(
                "a TP size of {world} does not divide the model's {} query heads; use one of {}",
                config.num_heads,
                divisors(config.num_heads)
            )));
        }
        Ok(())
    }

    /// Whether this rank holds the whole model.
    pub fn is_single(&self) -> bool {
        self.world == 1
    }

    /// This rank's attention heads in a decoder of `config` (whose heads `check_world` accepted).
    pub fn heads(&self, config: &TextConfig) -> HeadShard {
        let per_rank = config.num_heads / self.world;
        let per_kv = config.num_heads / config.num_kv_heads;
        let q_heads = self.rank * per_rank..(self.rank + 1) * per_rank;
        let kv_heads = q_heads.start / per_kv..(q_heads.end - 1) / per_kv + 1;
        HeadShard {
            groups: HeadGroups {
                per_kv,
                first_in_group: q_heads.start % per_kv,
            },
            q_heads,
            kv_heads,
        }
    }

    /// This rank's part of `0..total` when it is cut into `world` contiguous, balanced ranges.
    pub fn part_of(&self, total: usize) -> Range<usize> {
        let boundary = |rank: usize| rank * total / self.world;
        boundary(self.rank)..boundary(self.rank + 1)
    }
}

/// `n`'s divisors, comma-separated, for error messages.
fn divisors(n: usize) -> String {
    (1..=n)
        .filter(|d| n.is_multiple_of(*d))
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(heads: usize, kv_heads: usize) -> TextConfig {
        TextConfig {
            hidden_size: heads * 8,
            num_layers: 1,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim: 8,
            rotary_dim: 8,
            intermediate_size: 30,
            vocab_size: 100,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 64,
        }
    }

    fn shards(heads: usize, kv_heads: usize, world: usize) -> Vec<HeadShard> {
        let config = config(heads, kv_heads);
        TpRank::check_world(world, &config).unwrap();
        (0..world)
            .map(|rank| TpRank { rank, world }.heads(&config))
            .collect()
    }

    #[test]
    fn ranks_that_outnumber_kv_heads_share_copies() {
        // The golden fixture at TP 4: 4 query heads, 2 KV heads.
        let kv: Vec<_> = shards(4, 2, 4).into_iter().map(|s| s.kv_heads).collect();
        assert_eq!(kv, [0..1, 0..1, 1..2, 1..2]);
    }

    #[test]
    fn phi4_at_tp_8_gives_every_rank_the_two_kv_heads_its_five_query_heads_read() {
        let shards = shards(40, 10, 8);
        assert_eq!(shards[1].q_heads, 5..10);
        assert_eq!(shards[1].kv_heads, 1..3);
        assert_eq!(
            (0..5)
                .map(|h| shards[1].groups.kv_head(h))
                .collect::<Vec<_>>(),
            [0, 0, 0, 1, 1]
        );
        for shard in &shards {
            assert!(
                shard.groups.fits(shard.q_heads.len(), shard.kv_heads.len()),
                "{shard:?}"
            );
            for (local, global) in shard.q_heads.clone().enumerate() {
                assert_eq!(
                    shard.kv_heads.start + shard.groups.kv_head(local),
                    global / 4
                );
            }
        }
    }

    #[test]
    fn a_size_that_does_not_divide_the_query_heads_is_refused_with_the_choices() {
        let error = TpRank::check_world(3, &config(4, 2))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("TP size of 3") && error.contains("1, 2, 4"),
            "{error}"
        );
        assert!(TpRank::check_world(0, &config(4, 2)).is_err());
    }

    #[test]
    fn uneven_dimensions_split_into_balanced_contiguous_ranges() {
        let parts: Vec<_> = (0..4)
            .map(|rank| TpRank { rank, world: 4 }.part_of(30))
            .collect();
        assert_eq!(parts, [0..7, 7..15, 15..22, 22..30]);
        assert_eq!(TpRank::SINGLE.part_of(30), 0..30);
    }
}
