//! Which of the model's KV heads a tensor-parallel rank's pool holds, and which of them it sends
//! when a prompt's keys and values leave the engine.
//!
//! A transfer always carries every KV head in the model's order (see [`crate::kv_handoff`]), so
//! prefill and decode workers of any two TP sizes exchange blocks. A rank holds a contiguous range
//! of heads ([`TpRank::heads`]); neighbouring ranks may hold copies of a shared head, so on export
//! each head is taken from the lowest rank that holds it, and on import every rank that holds a
//! head takes its copy.

use std::ops::Range;

use fovea_model::config::TextConfig;
use fovea_model::tp::TpRank;

/// One rank's KV heads among the model's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankKvHeads {
    /// KV heads of the whole model.
    pub total: usize,
    /// The heads this rank's pool holds, in pool order.
    pub held: Range<usize>,
    /// The held heads this rank exports: those no lower rank holds.
    pub exported: Range<usize>,
}

impl RankKvHeads {
    /// The heads of `rank` in a decoder of `config` (whose heads `TpRank::check_world` accepted).
    pub fn of_rank(rank: TpRank, config: &TextConfig) -> Self {
        let held = rank.heads(config).kv_heads;
        // Ranks' ranges start and end in rank order, so the lower ranks hold exactly the heads
        // below the end of the previous rank's range.
        let below = match rank.rank {
            0 => 0,
            previous => {
                TpRank {
                    rank: previous - 1,
                    ..rank
                }
                .heads(config)
                .kv_heads
                .end
            }
        };
        RankKvHeads {
            total: config.num_kv_heads,
            exported: held.start.max(below)..held.end,
            held,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The golden checkpoint's decoder (4 query heads, 2 KV heads) with `heads` and `kv_heads`.
    fn config(heads: usize, kv_heads: usize) -> TextConfig {
        let golden =
            fovea_model::ModelConfig::from_dir(&fovea_model::testing::golden_model_dir()).unwrap();
        TextConfig {
            num_heads: heads,
            num_kv_heads: kv_heads,
            ..golden.text
        }
    }

    /// Each rank's (held, exported) heads.
    fn ranks(heads: usize, kv_heads: usize, world: usize) -> Vec<(Range<usize>, Range<usize>)> {
        let config = config(heads, kv_heads);
        (0..world)
            .map(|rank| RankKvHeads::of_rank(TpRank { rank, world }, &config))
            .map(|heads| (heads.held, heads.exported))
            .collect()
    }

    #[test]
    fn every_head_is_exported_by_exactly_one_rank_that_holds_it() {
        for (heads, kv_heads, world) in [
            (4, 2, 1),
            (4, 2, 2),
            (4, 2, 4),
            (40, 10, 4),
            (40, 10, 8),
            (8, 8, 4),
        ] {
            let mut next = 0;
            for (held, exported) in ranks(heads, kv_heads, world) {
                assert_eq!(
                    exported.start, next,
                    "{heads}/{kv_heads} at TP {world}: in order, no gap"
                );
                assert!(
                    held.start <= exported.start && exported.end == held.end,
                    "{held:?} {exported:?}"
                );
                next = exported.end;
            }
            assert_eq!(
                next, kv_heads,
                "{heads}/{kv_heads} at TP {world}: every head"
            );
        }
    }

    #[test]
    fn a_shared_head_is_exported_by_the_lower_rank_only() {
        // The golden fixture at TP 4: ranks 0 and 1 share head 0, ranks 2 and 3 head 1.
        assert_eq!(
            ranks(4, 2, 4),
            [(0..1, 0..1), (0..1, 1..1), (1..2, 1..2), (1..2, 2..2)]
        );
        // Phi-4 at TP 4: 10 query heads per rank over 3 KV heads, the boundary ones shared.
        assert_eq!(
            ranks(40, 10, 4),
            [(0..3, 0..3), (2..5, 3..5), (5..8, 5..8), (7..10, 8..10)]
        );
    }
}
