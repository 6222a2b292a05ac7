//! Which KV blocks are free and which sequence holds which: a free list and per-sequence block
//! tables, nothing else.
//!
//! The allocator only counts; the memory the ids name lives in [`KvBlockPool`](crate::kv_pool::KvBlockPool).
//! A block is either on the free list or in exactly one [`KvBlockTable`]: tables are not `Clone`,
//! and releasing a table empties it, so `free_blocks()` is back at `total_blocks()` exactly when every
//! table has been released.

/// The index of one block of the KV pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(u32);

impl BlockId {
    /// The block's index in the pool.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The blocks holding one sequence's keys and values: position `p` lives in block
/// `blocks()[p / block_size]`, slot `p % block_size`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KvBlockTable {
    blocks: Vec<BlockId>,
}

impl KvBlockTable {
    /// The blocks, in position order.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }
}

/// Not enough free blocks for a request to grow a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{needed} more KV blocks needed, {free} free")]
pub struct OutOfBlocks {
    pub needed: usize,
    pub free: usize,
}

/// A fixed number of fixed-size blocks, handed out to block tables.
#[derive(Debug)]
pub struct BlockAllocator {
    block_size: usize,
    total_blocks: usize,
    /// Free blocks; the last one is handed out next.
    free: Vec<BlockId>,
}

impl BlockAllocator {
    /// `total_blocks` free blocks of `block_size` token slots each.
    ///
    /// # Panics
    /// If `block_size` is 0 or `total_blocks` does not fit a `u32` (the engine's config is
    /// validated before it gets here).
    pub fn new(total_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "blocks must hold at least one token");
        let last = u32::try_from(total_blocks).expect("block count fits u32");
        BlockAllocator {
            block_size,
            total_blocks,
            // Reversed so that blocks are handed out from 0 upwards.
            free: (0..last).rev().map(BlockId).collect(),
        }
    }

    /// Token slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn total_blocks(&self) -> usize {
        self.total_blocks
    }

    /// Blocks on the free list.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// How many tokens `table` could hold if it took every free block.
    pub fn reachable_tokens(&self, table: &KvBlockTable) -> usize {
        (table.blocks.len() + self.free.len()) * self.block_size
    }

    /// Grows `table` until it holds `tokens` tokens; takes nothing if the free blocks do not suffice.
    pub fn grow(&mut self, table: &mut KvBlockTable, tokens: usize) -> Result<(), OutOfBlocks> {
        let needed = self.blocks_for(tokens).saturating_sub(table.blocks.len());
        if needed > self.free.len() {
            return Err(OutOfBlocks {
                needed,
                free: self.free.len(),
            });
        }
        let start = self.free.len() - needed;
        table.blocks.extend(self.free.drain(start..).rev());
        Ok(())
    }

    /// Returns all of `table`'s blocks to the free list, leaving it empty.
    pub fn release(&mut self, table: &mut KvBlockTable) {
        self.free.extend(table.blocks.drain(..).rev());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_takes_whole_blocks_and_release_returns_them_all() {
        let mut allocator = BlockAllocator::new(8, 4);
        let mut a = KvBlockTable::default();
        let mut b = KvBlockTable::default();
        allocator.grow(&mut a, 5).unwrap();
        assert_eq!(a.blocks().len(), 2);
        allocator.grow(&mut a, 8).unwrap();
        assert_eq!(a.blocks().len(), 2, "8 tokens still fit two blocks of 4");
        allocator.grow(&mut b, 13).unwrap();
        assert_eq!(b.blocks().len(), 4);
        assert_eq!(allocator.free_blocks(), 2);
        let mut all: Vec<BlockId> = a.blocks().iter().chain(b.blocks()).copied().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6, "no block is handed out twice");
        allocator.release(&mut a);
        allocator.release(&mut b);
        assert!(a.blocks().is_empty() && b.blocks().is_empty());
        assert_eq!(allocator.free_blocks(), allocator.total_blocks());
    }

    #[test]
    fn a_failed_grow_takes_nothing() {
        let mut allocator = BlockAllocator::new(3, 16);
        let mut table = KvBlockTable::default();
        allocator.grow(&mut table, 16).unwrap();
        assert_eq!(allocator.grow(&mut table, 64), Err(OutOfBlocks { needed: 3, free: 2 }));
        assert_eq!(table.blocks().len(), 1);
        assert_eq!(allocator.free_blocks(), 2);
        assert_eq!(allocator.reachable_tokens(&table), 48);
    }
}
