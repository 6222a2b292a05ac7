//! The memory of the paged KV cache: per layer, one preallocated f32 buffer of keys and one of
//! values, cut into fixed-size blocks that sequences hold through their [`KvBlockTable`]s.
//!
//! A block is laid out `[kv_heads, block_size, head_dim]`, so one head's run of consecutive
//! positions inside a block is contiguous: writing new tokens and gathering a sequence's keys both
//! copy whole runs. Keys are stored in f32 whatever the model's dtype (attention computes in f32).

use fovea_model::config::TextConfig;

use crate::block_allocator::{BlockId, KvBlockTable};

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

    /// f32 values of one block of one layer's keys (or values).
    pub fn block_len(&self) -> usize {
        self.kv_heads * self.block_size * self.head_dim
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

    /// Offset in a layer buffer of `head`'s row `slot` in `block`.
    fn offset(&self, block: BlockId, head: usize, slot: usize) -> usize {
        ((block.index() * self.shape.kv_heads + head) * self.shape.block_size + slot) * self.shape.head_dim
    }

    /// Stores `rows` of `keys` and `values` (`[kv_heads, batch_rows, head_dim]`) for `layer` in
    /// `table`'s blocks.
    ///
    /// # Panics
    /// If `table` does not cover the positions or the slices are shorter than `rows` says (the
    /// paged cache checks both first).
    pub fn write(&mut self, layer: usize, table: &KvBlockTable, rows: NewRows, keys: &[f32], values: &[f32]) {
        let d = self.shape.head_dim;
        let positions = rows.first_position..rows.first_position + rows.count;
        for run in block_runs(self.shape.block_size, positions) {
            for head in 0..self.shape.kv_heads {
                let dst = self.offset(table.blocks()[run.block], head, run.slot);
                let src = (head * rows.batch_rows + rows.first_row + run.position - rows.first_position) * d;
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
    pub fn gather(&self, layer: usize, table: &KvBlockTable, len: usize, keys: &mut Vec<f32>, values: &mut Vec<f32>) {
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
    /// Appends `layer`'s keys and values of the blocks holding positions `0..tokens` of `table`
    /// to `keys` and `values`, whole blocks in table order, with the slots past `tokens` zeroed.
    ///
    /// # Panics
    /// If `table` does not cover `tokens` positions.
    pub fn read_prompt_blocks(
        &self,
        layer: usize,
        table: &KvBlockTable,
        tokens: usize,
        keys: &mut Vec<f32>,
        values: &mut Vec<f32>,
    ) {
        let (block_len, block_size, d) = (self.shape.block_len(), self.shape.block_size, self.shape.head_dim);
        let blocks = tokens.div_ceil(block_size);
        for (index, block) in table.blocks()[..blocks].iter().enumerate() {
            let start = keys.len();
            let src = self.offset(*block, 0, 0);
            keys.extend_from_slice(&self.keys[layer][src..src + block_len]);
            values.extend_from_slice(&self.values[layer][src..src + block_len]);
            let filled = tokens - index * block_size;
            if filled < block_size {
                for head in 0..self.shape.kv_heads {
                    let head_start = start + head * block_size * d;
                    let tail = head_start + filled * d..head_start + block_size * d;
                    keys[tail.clone()].fill(0.0);
                    values[tail].fill(0.0);
                }
            }
        }
    }

    /// Overwrites `layer`'s keys and values of `table`'s blocks `first_block..` with `keys` and
    /// `values`, whole blocks laid out as [`KvBlockPool::read_prompt_blocks`] gives them.
    ///
    /// # Panics
    /// If the slices are not whole blocks of equal length or `table` has too few blocks.
    pub fn write_blocks(&mut self, layer: usize, table: &KvBlockTable, first_block: usize, keys: &[f32], values: &[f32]) {
        let block_len = self.shape.block_len();
        assert!(keys.len() % block_len == 0 && keys.len() == values.len(), "whole blocks of keys and values");
        let count = keys.len() / block_len;
        for (index, block) in table.blocks()[first_block..first_block + count].iter().enumerate() {
            let dst = self.offset(*block, 0, 0);
            let src = index * block_len..(index + 1) * block_len;
            self.keys[layer][dst..dst + block_len].copy_from_slice(&keys[src.clone()]);
            self.values[layer][dst..dst + block_len].copy_from_slice(&values[src]);
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
fn block_runs(block_size: usize, positions: std::ops::Range<usize>) -> impl Iterator<Item = BlockRun> {
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
    use super::*;
    use crate::block_allocator::BlockAllocator;

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
        // Value for (head, position, dim) of the sequence; keys and values differ by sign.
        let value = |h: usize, p: usize, i: usize| (100 * h + 10 * p + i) as f32;
        // Write positions 0..7 then 7..11, each from the middle of a larger batch.
        for (first, count) in [(0, 7), (7, 4)] {
            let (batch_rows, first_row) = (count + 3, 2);
            let mut keys = vec![0.0; shape.kv_heads * batch_rows * shape.head_dim];
            for h in 0..shape.kv_heads {
                for r in 0..count {
                    for i in 0..shape.head_dim {
                        keys[(h * batch_rows + first_row + r) * shape.head_dim + i] = value(h, first + r, i);
                    }
                }
            }
            let values: Vec<f32> = keys.iter().map(|x| -x).collect();
            let rows = NewRows {
                batch_rows,
                first_row,
                first_position: first,
                count,
            };
            pool.write(1, &table, rows, &keys, &values);
        }
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
        let (mut block_keys, mut block_values) = (Vec::new(), Vec::new());
        pool.read_prompt_blocks(1, &table, 10, &mut block_keys, &mut block_values);
        assert_eq!(block_keys.len(), 3 * shape.block_len());
        let last_slot = (shape.kv_heads - 1) * shape.block_size * shape.head_dim + 2 * shape.head_dim;
        assert_eq!(block_keys[2 * shape.block_len() + last_slot..], [0.0; 6], "slots past 10 are zeros");
        let mut receiver = KvBlockPool::new(shape);
        let mut received = KvBlockTable::default();
        allocator.grow(&mut received, 10).unwrap();
        let half = shape.block_len();
        receiver.write_blocks(1, &received, 1, &block_keys[half..], &block_values[half..]);
        receiver.write_blocks(1, &received, 0, &block_keys[..half], &block_values[..half]);
        let (mut expected_keys, mut expected_values) = (Vec::new(), Vec::new());
        pool.gather(1, &table, 10, &mut expected_keys, &mut expected_values);
        receiver.gather(1, &received, 10, &mut keys, &mut values);
        assert_eq!((keys, values), (expected_keys, expected_values));
    }
}
