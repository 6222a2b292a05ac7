//! Which KV blocks are free, which sequences hold which, and which free blocks still hold a
//! reusable prefix: reference counts, a free list, and the prefix cache's index.
//!
//! The allocator only counts; the memory the ids name lives in [`KvBlockPool`](crate::kv_pool::KvBlockPool).
//! A block is in exactly one of three states:
//! - *held* by one or more [`KvBlockTable`]s (more than one when a cached prefix is shared);
//! - *cached*: held by nobody but registered under the [`BlockHash`] of its content, so a later
//!   sequence with the same prefix can take it as is; evicted least recently released first;
//! - *free*: held by nobody, holding nothing worth keeping.
//!
//! Cached blocks count as free in [`BlockAllocator::free_blocks`] (taking one just evicts it), so
//! `free_blocks()` is back at `total_blocks()` exactly when every table has been released. Tables
//! are not `Clone` and releasing one empties it, so no reference is counted twice.

use std::collections::{BTreeMap, HashMap};

use crate::block_hash::BlockHash;

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
#[derive(Debug, Default, Clone, PartialEq, Eq)]
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
    /// Free blocks; the last one is handed out next.
    free: Vec<BlockId>,
    /// Per block, the tables holding it.
    holders: Vec<u32>,
    /// Per block, the content it is registered under.
    registered_as: Vec<Option<BlockHash>>,
    /// Registered blocks (held or cached) by content.
    by_hash: HashMap<BlockHash, BlockId>,
    /// Cached blocks by release time, oldest first.
    cached: BTreeMap<u64, BlockId>,
    /// Per cached block, its key in `cached`.
    cached_at: Vec<Option<u64>>,
    /// Counts releases, to order `cached`.
    clock: u64,
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
            // Reversed so that blocks are handed out from 0 upwards.
            free: (0..last).rev().map(BlockId).collect(),
            holders: vec![0; total_blocks],
            registered_as: vec![None; total_blocks],
            by_hash: HashMap::new(),
            cached: BTreeMap::new(),
            cached_at: vec![None; total_blocks],
            clock: 0,
        }
    }

    /// Token slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn total_blocks(&self) -> usize {
        self.holders.len()
    }

    /// Blocks no table holds (cached ones included).
    pub fn free_blocks(&self) -> usize {
        self.free.len() + self.cached.len()
    }

    /// Blocks no table holds that keep a reusable prefix.
    pub fn cached_blocks(&self) -> usize {
        self.cached.len()
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// How many tokens `table` could hold if it took every free block.
    pub fn reachable_tokens(&self, table: &KvBlockTable) -> usize {
        (table.blocks.len() + self.free_blocks()) * self.block_size
    }

    /// Grows `table` until it holds `tokens` tokens, evicting cached blocks once the free list is
    /// empty; takes nothing if the free blocks do not suffice.
    pub fn grow(&mut self, table: &mut KvBlockTable, tokens: usize) -> Result<(), OutOfBlocks> {
        let needed = self.blocks_for(tokens).saturating_sub(table.blocks.len());
        if needed > self.free_blocks() {
            return Err(OutOfBlocks {
                needed,
                free: self.free_blocks(),
            });
        }
        for _ in 0..needed {
            let block = match self.free.pop() {
                Some(block) => block,
                None => self.evict_oldest(),
            };
            self.holders[block.index()] = 1;
            table.blocks.push(block);
        }
        Ok(())
    }

    /// Takes the least recently released cached block out of the cache.
    fn evict_oldest(&mut self) -> BlockId {
        let (_, block) = self
            .cached
            .pop_first()
            .expect("free_blocks() counted a cached block");
        self.cached_at[block.index()] = None;
        if let Some(hash) = self.registered_as[block.index()].take() {
            self.by_hash.remove(&hash);
        }
        block
    }

    /// Returns all of `table`'s blocks, leaving it empty. Registered blocks nobody else holds
    /// become cached, the last positions first in line for eviction.
    pub fn release(&mut self, table: &mut KvBlockTable) {
        for block in table.blocks.drain(..).rev() {
            let holders = &mut self.holders[block.index()];
            *holders -= 1;
            if *holders > 0 {
                continue;
            }
            if self.registered_as[block.index()].is_some() {
                self.clock += 1;
                self.cached.insert(self.clock, block);
                self.cached_at[block.index()] = Some(self.clock);
            } else {
                self.free.push(block);
            }
        }
    }

    /// Registers block `index` of `table`, now full, as holding the content `hash`, so that it can
    /// be shared. Does nothing if the block is registered already or another block holds the
    /// same content.
    pub fn register(&mut self, table: &KvBlockTable, index: usize, hash: BlockHash) {
        let block = table.blocks[index];
        if self.registered_as[block.index()].is_some() || self.by_hash.contains_key(&hash) {
            return;
        }
        self.registered_as[block.index()] = Some(hash);
        self.by_hash.insert(hash, block);
    }

    /// Fills empty `table` with the registered blocks of the longest prefix of `hashes` and
    /// returns how many blocks that is.
    pub fn share_prefix(&mut self, table: &mut KvBlockTable, hashes: &[BlockHash]) -> usize {
        debug_assert!(
            table.blocks.is_empty(),
            "prefixes are shared into empty tables"
        );
        for hash in hashes {
            let Some(&block) = self.by_hash.get(hash) else {
                break;
            };
            if let Some(at) = self.cached_at[block.index()].take() {
                self.cached.remove(&at);
            }
            self.holders[block.index()] += 1;
            table.blocks.push(block);
        }
        table.blocks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_hash::extend_block_hashes;

    /// Hashes of `blocks` blocks of 4 tokens counting up from `first`.
    fn hashes(first: u32, blocks: usize) -> Vec<BlockHash> {
        let tokens: Vec<u32> = (first..first + 4 * blocks as u32).collect();
        let mut hashes = Vec::new();
        extend_block_hashes(&mut hashes, &tokens, &[], 4);
        hashes
    }

    /// A table of `hashes.len()` full registered blocks.
    fn registered_table(allocator: &mut BlockAllocator, hashes: &[BlockHash]) -> KvBlockTable {
        let mut table = KvBlockTable::default();
        allocator.grow(&mut table, 4 * hashes.len()).unwrap();
        for (index, hash) in hashes.iter().enumerate() {
            allocator.register(&table, index, *hash);
        }
        table
    }

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
        assert_eq!(allocator.cached_blocks(), 0, "nothing was registered");
    }

    #[test]
    fn a_failed_grow_takes_nothing() {
        let mut allocator = BlockAllocator::new(3, 16);
        let mut table = KvBlockTable::default();
        allocator.grow(&mut table, 16).unwrap();
        assert_eq!(
            allocator.grow(&mut table, 64),
            Err(OutOfBlocks { needed: 3, free: 2 })
        );
        assert_eq!(table.blocks().len(), 1);
        assert_eq!(allocator.free_blocks(), 2);
        assert_eq!(allocator.reachable_tokens(&table), 48);
    }

    #[test]
    fn shared_prefix_blocks_are_counted_once_and_cached_after_the_last_holder_leaves() {
        let mut allocator = BlockAllocator::new(8, 4);
        let prefix = hashes(0, 3);
        let mut first = registered_table(&mut allocator, &prefix);
        // A second sequence shares the first two blocks, and diverges in the third.
        let mut second = KvBlockTable::default();
        let mut other = prefix[..2].to_vec();
        other.push(hashes(100, 1)[0]);
        assert_eq!(allocator.share_prefix(&mut second, &other), 2);
        assert_eq!(second.blocks(), &first.blocks()[..2]);
        allocator.grow(&mut second, 12).unwrap();
        assert_eq!(
            allocator.free_blocks(),
            4,
            "3 blocks of the first, 1 more of the second"
        );
        allocator.release(&mut first);
        assert_eq!(
            (allocator.free_blocks(), allocator.cached_blocks()),
            (5, 1),
            "only block 2 is unheld"
        );
        allocator.release(&mut second);
        assert_eq!((allocator.free_blocks(), allocator.cached_blocks()), (8, 3));
        // The whole prefix is still there for a third sequence.
        let mut third = KvBlockTable::default();
        assert_eq!(allocator.share_prefix(&mut third, &prefix), 3);
        assert_eq!((allocator.free_blocks(), allocator.cached_blocks()), (5, 0));
        allocator.release(&mut third);
        assert_eq!(allocator.free_blocks(), 8);
    }

    #[test]
    fn cached_blocks_are_evicted_last_position_first_once_the_free_list_is_empty() {
        let mut allocator = BlockAllocator::new(4, 4);
        let prefix = hashes(0, 3);
        let mut table = registered_table(&mut allocator, &prefix);
        allocator.release(&mut table);
        let mut taker = KvBlockTable::default();
        // One block from the free list, then one evicted: the prefix's last block.
        allocator.grow(&mut taker, 8).unwrap();
        assert_eq!(allocator.cached_blocks(), 2);
        let mut reuser = KvBlockTable::default();
        assert_eq!(allocator.share_prefix(&mut reuser, &prefix), 2);
        allocator.release(&mut reuser);
        allocator.release(&mut taker);
        assert_eq!(allocator.free_blocks(), 4);
    }

    #[test]
    fn the_same_content_is_registered_once() {
        let mut allocator = BlockAllocator::new(4, 4);
        let prefix = hashes(0, 1);
        let mut a = registered_table(&mut allocator, &prefix);
        let mut b = registered_table(&mut allocator, &prefix);
        allocator.release(&mut a);
        allocator.release(&mut b);
        assert_eq!((allocator.free_blocks(), allocator.cached_blocks()), (4, 1));
    }
}
