//! The memory of the paged KV cache: per layer, one preallocated f32 buffer of keys and one of
//! values, cut into fixed-size blocks that sequences hold through their [`KvBlockTable`]s.
//!
//! A block is laid out `[kv_heads, block_size, head_dim]`, so one head's run of consecutive
//! positions inside a block is contiguous: writing new tokens and gathering a sequence's keys both
//! copy whole runs. Keys are stored in f32 whatever the model's dtype (attention computes in f32).
//!
//! A tensor-parallel rank's pool holds only its KV heads ([`RankKvHeads`]); prompts leave and enter
//! it in the transfer layout, blocks of every KV head of the model, each rank copying its heads.

use fovea_kernels::paged_attention::PagedKv;
use fovea_model::config::TextConfig;

use crate::block_allocator::{BlockId, KvBlockTable};
use crate::kv_heads::RankKvHeads;

/// Sizes of a [`KvBlockPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvPoolShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Token slots per block.
    pub block_size: usize,
    pub blocks: usize,
}

impl KvPoolShape {
    /// The pool a decoder of `config` needs for `blocks` blocks of `block_size` tokens.
    pub fn for_decoder(config: &TextConfig, blocks: usize, block_size: usize) -> Self {
        KvPoolShape {
            layers: config.num_layers,
            kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            block_size,
            blocks,
        }
    }

    /// f32 values of one head's slots in one block of one layer's keys (or values).
    pub fn head_len(&self) -> usize {
        self.block_size * self.head_dim
    }

    /// f32 values of one block of one layer's keys (or values).
    pub fn block_len(&self) -> usize {
        self.kv_heads * self.head_len()
    }

    /// Bytes of the whole pool (keys and values of every layer), `None` on overflow.
    pub fn bytes(&self) -> Option<usize> {
        self.block_len()
            .checked_mul(self.blocks)?
            .checked_mul(2 * self.layers)?
            .checked_mul(size_of::<f32>())
    }
}

/// Where a run of new rows comes from: rows `first_row..first_row + count` of a batch's
/// `[kv_heads, batch_rows, head_dim]` keys and values, which go to positions
/// `first_position..first_position + count` of one sequence.
#[derive(Debug, Clone, Copy)]
pub struct NewRows {
    pub batch_rows: usize,
    pub first_row: usize,
    pub first_position: usize,
    pub count: usize,
}

/// Keys and values of every layer, in blocks.
pub struct KvBlockPool {
    shape: KvPoolShape,
    /// Per layer, `[blocks, kv_heads, block_size, head_dim]`.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

impl KvBlockPool {
    /// A zeroed pool (the operating system provides the pages on first write).
    pub fn new(shape: KvPoolShape) -> Self {
        let layer_len = shape.block_len() * shape.blocks;
        KvBlockPool {
            shape,
            keys: (0..shape.layers).map(|_| vec![0.0; layer_len]).collect(),
            values: (0..shape.layers).map(|_| vec![0.0; layer_len]).collect(),
        }
    }

    /// The pool's sizes.
    pub fn shape(&self) -> &KvPoolShape {
        &self.shape
    }

    /// `layer`'s keys and values as the in-place attention kernel reads them.
    pub fn layer(&self, layer: usize) -> PagedKv<'_> {
        PagedKv {
            keys: &self.keys[layer],
            values: &self.values[layer],
            kv_heads: self.shape.kv_heads,
            block_size: self.shape.block_size,
            head_dim: self.shape.head_dim,
        }
    }

    /// Offset in a layer buffer of `head`'s row `slot` in `block`.
    fn offset(&self, block: BlockId, head: usize, slot: usize) -> usize {
        ((block.index() * self.shape.kv_heads + head) * self.shape.block_size + slot)
            * self.shape.head_dim
    }

    /// Stores `rows` of `keys` and `values` (`[kv_heads, batch_rows, head_dim]`) for `layer` in
    /// `table`'s blocks.
    ///
    /// # Panics
    /// If `table` does not cover the positions or the slices are shorter than `rows` says (the
    /// paged cache checks both first).
    pub fn write(
        &mut self,
        layer: usize,
        table: &KvBlockTable,
        rows: NewRows,
        keys: &[f32],
        values: &[f32],
    ) {
        let d = self.shape.head_dim;
        let positions = rows.first_position..rows.first_position + rows.count;
        for run in block_runs(self.shape.block_size, positions) {
            for head in 0..self.shape.kv_heads {
                let dst = self.offset(table.blocks()[run.block], head, run.slot);
                let src = (head * rows.batch_rows + rows.first_row + run.position
                    - rows.first_position)
                    * d;
                let len = run.len * d;
                self.keys[layer][dst..dst + len].copy_from_slice(&keys[src..src + len]);
                self.values[layer][dst..dst + len].copy_from_slice(&values[src..src + len]);
            }
        }
    }

    /// Copies positions `0..len` of `table`'s keys and values for `layer` into `keys` and
    /// `values`, resized to `[kv_heads, len, head_dim]`.
    ///
    /// # Panics
    /// If `table` does not cover `len` positions.
    pub fn gather(
        &self,
        layer: usize,
        table: &KvBlockTable,
        len: usize,
        keys: &mut Vec<f32>,
        values: &mut Vec<f32>,
    ) {
        let d = self.shape.head_dim;
        keys.resize(self.shape.kv_heads * len * d, 0.0);
        values.resize(self.shape.kv_heads * len * d, 0.0);
        for run in block_runs(self.shape.block_size, 0..len) {
            for head in 0..self.shape.kv_heads {
                let src = self.offset(table.blocks()[run.block], head, run.slot);
                let dst = (head * len + run.position) * d;
                let n = run.len * d;
                keys[dst..dst + n].copy_from_slice(&self.keys[layer][src..src + n]);
                values[dst..dst + n].copy_from_slice(&self.values[layer][src..src + n]);
            }
        }
    }
}

impl KvBlockPool {
    /// Copies `heads.exported` of `layer`'s keys and values in the blocks holding positions
    /// `0..tokens` of `table` into `keys` and `values`, which hold those blocks in transfer layout
    /// (see [`crate::kv_handoff::PromptKv`]: whole blocks in table order, each
    /// `[heads.total, block_size, head_dim]`). Slots past `tokens` and the heads of other ranks
    /// are left as they are.
    ///
    /// # Panics
    /// If `heads` does not describe this pool, `table` does not cover `tokens` positions, or the
    /// buffers are shorter than those blocks.
    pub fn export_prompt_blocks(
        &self,
        layer: usize,
        table: &KvBlockTable,
        tokens: usize,
        heads: &RankKvHeads,
        keys: &mut [f32],
        values: &mut [f32],
    ) {
        assert_eq!(
            heads.held.len(),
            self.shape.kv_heads,
            "the pool holds the heads it exports"
        );
        let (block_size, head_len) = (self.shape.block_size, self.shape.head_len());
        for (index, block) in table.blocks()[..tokens.div_ceil(block_size)]
            .iter()
            .enumerate()
        {
            let filled = (tokens - index * block_size).min(block_size) * self.shape.head_dim;
            for head in heads.exported.clone() {
                let src = self.offset(*block, head - heads.held.start, 0);
                let dst = (index * heads.total + head) * head_len;
                keys[dst..dst + filled].copy_from_slice(&self.keys[layer][src..src + filled]);
                values[dst..dst + filled].copy_from_slice(&self.values[layer][src..src + filled]);
            }
        }
    }

    /// Overwrites `layer`'s keys and values of `table`'s blocks `first_block..` with the heads
    /// this pool holds (`heads.held`) of `keys` and `values`: whole blocks in transfer layout, as
    /// [`KvBlockPool::export_prompt_blocks`] fills them.
    ///
    /// # Panics
    /// If `heads` does not describe this pool, the slices are not whole transfer blocks of equal
    /// length, or `table` has too few blocks.
    pub fn import_blocks(
        &mut self,
        layer: usize,
        table: &KvBlockTable,
        first_block: usize,
        heads: &RankKvHeads,
        keys: &[f32],
        values: &[f32],
    ) {
        assert_eq!(
            heads.held.len(),
            self.shape.kv_heads,
            "the pool holds the heads it imports"
        );
        let (block_len, head_len) = (self.shape.block_len(), self.shape.head_len());
        let transfer_block_len = heads.total * head_len;
        assert!(
            keys.len().is_multiple_of(transfer_block_len) && keys.len() == values.len(),
            "whole blocks of keys and values"
        );
        let count = keys.len() / transfer_block_len;
        for (index, block) in table.blocks()[first_block..first_block + count]
            .iter()
            .enumerate()
        {
            // The held heads are consecutive, so they are one run of a transfer block.
            let src = index * transfer_block_len + heads.held.start * head_len;
            let dst = self.offset(*block, 0, 0);
            self.keys[layer][dst..dst + block_len].copy_from_slice(&keys[src..src + block_len]);
            self.values[layer][dst..dst + block_len].copy_from_slice(&values[src..src + block_len]);
        }
    }
}

/// Consecutive positions that share one block.
struct BlockRun {
    /// Index of the block in the sequence's table.
    block: usize,
    /// Slot of the first position in the block.
    slot: usize,
    /// The first position.
    position: usize,
    len: usize,
}

/// `positions` cut at block boundaries.
fn block_runs(
    block_size: usize,
    positions: std::ops::Range<usize>,
) -> impl Iterator<Item = BlockRun> {
    let end = positions.end;
    let mut position = positions.start;
    std::iter::from_fn(move || {
        (position < end).then(|| {
            let slot = position % block_size;
            let len = (block_size - slot).min(end - position);
            let run = BlockRun {
                block: position / block_size,
                slot,
                position,
                len,
            };
            position += len;
            run
        })
    })
}

#[cfg(test)]
mod tests {
    use fovea_model::tp::TpRank;

    use super::*;
    use crate::block_allocator::BlockAllocator;

    /// Writes `positions` of heads `first_head..` (as many as `pool` holds) of `table`'s sequence
    /// into `layer`, from the middle of a larger batch: keys `value(head, position, dim)`, values
    /// their negatives.
    fn write_positions(
        pool: &mut KvBlockPool,
        layer: usize,
        table: &KvBlockTable,
        positions: std::ops::Range<usize>,
        first_head: usize,
        value: impl Fn(usize, usize, usize) -> f32,
    ) {
        let shape = *pool.shape();
        let (count, first_row) = (positions.len(), 2);
        let batch_rows = count + 3;
        let mut keys = vec![0.0; shape.kv_heads * batch_rows * shape.head_dim];
        for h in 0..shape.kv_heads {
            for r in 0..count {
                for i in 0..shape.head_dim {
                    keys[(h * batch_rows + first_row + r) * shape.head_dim + i] =
                        value(first_head + h, positions.start + r, i);
                }
            }
        }
        let values: Vec<f32> = keys.iter().map(|x| -x).collect();
        let rows = NewRows {
            batch_rows,
            first_row,
            first_position: positions.start,
            count,
        };
        pool.write(layer, table, rows, &keys, &values);
    }

    #[test]
    fn runs_split_at_block_boundaries() {
        let runs: Vec<(usize, usize, usize, usize)> = block_runs(4, 3..10)
            .map(|r| (r.block, r.slot, r.position, r.len))
            .collect();
        assert_eq!(runs, vec![(0, 3, 3, 1), (1, 0, 4, 4), (2, 0, 8, 2)]);
    }

    #[test]
    fn gather_returns_what_chunked_writes_stored() {
        let shape = KvPoolShape {
            layers: 2,
            kv_heads: 2,
            head_dim: 3,
            block_size: 4,
            blocks: 8,
        };
        let mut pool = KvBlockPool::new(shape);
        let mut allocator = BlockAllocator::new(shape.blocks, shape.block_size);
        // Another sequence's table first, so this one's blocks are not the first ones.
        let mut other = KvBlockTable::default();
        allocator.grow(&mut other, 5).unwrap();
        let mut table = KvBlockTable::default();
        allocator.grow(&mut table, 11).unwrap();
        let value = |h: usize, p: usize, i: usize| (100 * h + 10 * p + i) as f32;
        // Positions 0..7 then 7..11.
        write_positions(&mut pool, 1, &table, 0..7, 0, value);
        write_positions(&mut pool, 1, &table, 7..11, 0, value);
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        pool.gather(1, &table, 11, &mut keys, &mut values);
        for h in 0..shape.kv_heads {
            for p in 0..11 {
                for i in 0..shape.head_dim {
                    let at = (h * 11 + p) * shape.head_dim + i;
                    assert_eq!(
                        (keys[at], values[at]),
                        (value(h, p, i), -value(h, p, i)),
                        "head {h} position {p}"
                    );
                }
            }
        }
        pool.gather(0, &table, 11, &mut keys, &mut values);
        assert!(
            keys.iter().chain(&values).all(|&x| x == 0.0),
            "layer 0 was never written"
        );

        // Exported blocks written into another table of another pool gather the same positions.
        let whole = RankKvHeads {
            total: shape.kv_heads,
            held: 0..shape.kv_heads,
            exported: 0..shape.kv_heads,
        };
        let (mut block_keys, mut block_values) = (
            vec![0.0; 3 * shape.block_len()],
            vec![0.0; 3 * shape.block_len()],
        );
        pool.export_prompt_blocks(1, &table, 10, &whole, &mut block_keys, &mut block_values);
        let last_slot =
            (shape.kv_heads - 1) * shape.block_size * shape.head_dim + 2 * shape.head_dim;
        assert_eq!(
            block_keys[2 * shape.block_len() + last_slot..],
            [0.0; 6],
            "slots past 10 are not sent"
        );
        let mut receiver = KvBlockPool::new(shape);
        let mut received = KvBlockTable::default();
        allocator.grow(&mut received, 10).unwrap();
        let half = shape.block_len();
        receiver.import_blocks(
            1,
            &received,
            1,
            &whole,
            &block_keys[half..],
            &block_values[half..],
        );
        receiver.import_blocks(
            1,
            &received,
            0,
            &whole,
            &block_keys[..half],
            &block_values[..half],
        );
        let (mut expected_keys, mut expected_values) = (Vec::new(), Vec::new());
        pool.gather(1, &table, 10, &mut expected_keys, &mut expected_values);
        receiver.gather(1, &received, 10, &mut keys, &mut values);
        assert_eq!((keys, values), (expected_keys, expected_values));
    }

    #[test]
    fn prompts_move_between_any_tp_sizes_head_by_head() {
        // The golden decoder: 4 query heads over 2 KV heads, so at TP 4 ranks 0 and 1 share KV
        // head 0 and ranks 2 and 3 share head 1.
        let config = fovea_model::ModelConfig::from_dir(&fovea_model::testing::golden_model_dir())
            .unwrap()
            .text;
        let (block_size, tokens, layer): (usize, usize, usize) = (4, 10, 1);
        let blocks = tokens.div_ceil(block_size);
        let value = |h: usize, p: usize, i: usize| (1000 * h + 10 * p + i) as f32 + 0.5;
        // Rank `rank`'s pool and a table of `tokens` positions that does not start at block 0.
        let rank_pool = |rank: TpRank| {
            let heads = RankKvHeads::of_rank(rank, &config);
            let shape = KvPoolShape {
                kv_heads: heads.held.len(),
                ..KvPoolShape::for_decoder(&config, 16, block_size)
            };
            let mut allocator = BlockAllocator::new(shape.blocks, block_size);
            allocator
                .grow(&mut KvBlockTable::default(), (rank.rank + 1) * block_size)
                .unwrap();
            let mut table = KvBlockTable::default();
            allocator.grow(&mut table, tokens).unwrap();
            (KvBlockPool::new(shape), table, heads)
        };
        // The transfer layout, naively: block b, head h, slot s is position b · block_size + s.
        let head_len = block_size * config.head_dim;
        let expected_keys: Vec<f32> = (0..blocks * config.num_kv_heads * head_len)
            .map(|at| {
                let (block, head) = (
                    at / (config.num_kv_heads * head_len),
                    at / head_len % config.num_kv_heads,
                );
                let (slot, dim) = (at % head_len / config.head_dim, at % config.head_dim);
                let position = block * block_size + slot;
                if position < tokens {
                    value(head, position, dim)
                } else {
                    0.0
                }
            })
            .collect();
        for from in [1, 2, 4] {
            let (mut keys, mut values) = (
                vec![0.0; expected_keys.len()],
                vec![0.0; expected_keys.len()],
            );
            for rank in 0..from {
                let (mut pool, table, heads) = rank_pool(TpRank { rank, world: from });
                write_positions(
                    &mut pool,
                    layer,
                    &table,
                    0..tokens + 1,
                    heads.held.start,
                    value,
                );
                pool.export_prompt_blocks(layer, &table, tokens, &heads, &mut keys, &mut values);
            }
            assert_eq!(keys, expected_keys, "exported from TP {from}");
            assert_eq!(
                values,
                expected_keys.iter().map(|x| -x).collect::<Vec<_>>(),
                "TP {from}"
            );
            for to in [1, 2, 4] {
                for rank in 0..to {
                    let (mut pool, table, heads) = rank_pool(TpRank { rank, world: to });
                    let split = head_len * config.num_kv_heads;
                    pool.import_blocks(layer, &table, 1, &heads, &keys[split..], &values[split..]);
                    pool.import_blocks(layer, &table, 0, &heads, &keys[..split], &values[..split]);
                    let (mut got_keys, mut got_values) = (Vec::new(), Vec::new());
                    pool.gather(layer, &table, tokens, &mut got_keys, &mut got_values);
                    for (local, head) in heads.held.clone().enumerate() {
                        for position in 0..tokens {
                            for dim in 0..config.head_dim {
                                let at = (local * tokens + position) * config.head_dim + dim;
                                let want = value(head, position, dim);
                                assert_eq!(
                                    (got_keys[at], got_values[at]),
                                    (want, -want),
                                    "TP {from} → rank {rank} of {to}: head {head} position {position}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
