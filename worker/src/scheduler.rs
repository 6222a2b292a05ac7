//! Which tokens of which sequences go into the next forward pass, and which KV blocks hold them.
//!
//! Each step, running sequences are served in admission order under a token budget: a decoding
//! sequence takes one token, one still in its prompt takes a chunk (chunked prefill), leaving one
//! token of budget for every decoding sequence behind it so that a long prompt never stalls them.
//! While any sequence is decoding, prompt chunks together take at most a smaller budget of their
//! own, so that a step carrying a long image prompt stays short and the decoding sequences' time
//! between tokens stays close to a pure decoding step's.
//! Encoding an image costs step budget too: a chunk that reaches an image not yet encoded pays the
//! image's cost (in prompt tokens' worth of compute) on top of its tokens, and ends right before
//! the image when that does not fit. A chunk that would then be empty takes the image anyway when
//! no other prompt chunk is in the step, so every sequence makes progress and a step carries at
//! most one image beyond its budget.
//! When a sequence needs a block and none is free, the latest-admitted running sequence not yet
//! served this step is preempted: its blocks are freed and it waits to be recomputed from scratch
//! (prompt plus generated tokens). If no preemption happened, waiting sequences are admitted in
//! arrival order while budget, blocks and running slots last.
//!
//! With prefix caching, a sequence being admitted first takes the cached blocks of the longest
//! prefix of its tokens that the cache holds (always leaving at least one token to compute, whose
//! logits give the next token), and every block a sequence fills is registered in the cache. A
//! waiting sequence whose next block a running sequence is about to compute (a burst of requests
//! sharing a system prompt) waits for it to be cached instead of computing it again; those behind
//! it in the queue may go first meanwhile.
//!
//! A sequence whose prompt's keys and values come from a prefill worker is *receiving*: its
//! blocks are reserved when it arrives, it is never scheduled or preempted while the transfer
//! runs, and it joins the running set, decoding, once the transfer completes.
//!
//! The scheduler knows token counts and block tables only; the tokens themselves live in the
//! engine's [`Sequence`](crate::sequence::Sequence)s.

use std::collections::VecDeque;
use std::ops::Range;

use crate::block_allocator::{BlockAllocator, KvBlockTable, OutOfBlocks};
use crate::block_hash::BlockHash;
use crate::request::RequestId;

/// What the scheduler asks of the engine's sequences.
pub trait SequenceContent {
    /// Hashes of sequence `id`'s full blocks of known tokens.
    fn block_hashes(&self, id: RequestId) -> &[BlockHash];

    /// The images among tokens `range` of sequence `id` that still have to be encoded, in prompt
    /// order.
    fn images_to_encode(&self, id: RequestId, range: Range<usize>) -> Vec<ImageCost>;
}

/// An image a chunk would have to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageCost {
    /// Position of the image's first token.
    pub start: usize,
    /// Step budget its encoding takes, in prompt tokens' worth.
    pub tokens: usize,
}

/// How many of `wanted` prompt tokens from `start` fit in `room` tokens of step budget once the
/// encoding of `images` (those the tokens reach, in order) is paid for: the chunk ends before the
/// first image that does not fit, unless that leaves it empty while the chunk is `alone` (no
/// other prompt chunk in the step), when it takes the image and what room is left after it (at
/// least one token).
fn fit_images(
    images: &[ImageCost],
    start: usize,
    wanted: usize,
    room: usize,
    alone: bool,
) -> usize {
    let mut spent = 0;
    for image in images {
        let before = image.start.saturating_sub(start);
        if before + spent + image.tokens > room {
            if before > 0 || !alone {
                return before.min(room.saturating_sub(spent));
            }
            return wanted.min(room.saturating_sub(image.tokens).max(1));
        }
        spent += image.tokens;
    }
    wanted.min(room.saturating_sub(spent))
}

/// Whether a running sequence has yet to compute block `block` of a prompt whose full blocks'
/// hashes are `hashes` (the same hash there means the same tokens up to the block's end).
fn will_compute(
    running: &[Entry],
    content: &impl SequenceContent,
    hashes: &[BlockHash],
    block: usize,
    block_size: usize,
) -> bool {
    let Some(wanted) = hashes.get(block) else {
        return false;
    };
    running.iter().any(|e| {
        e.computed < (block + 1) * block_size
            && content.block_hashes(e.id).get(block) == Some(wanted)
    })
}

/// The step budget that encoding the images among tokens `range` of sequence `id` takes.
fn encoding_cost(content: &impl SequenceContent, id: RequestId, range: Range<usize>) -> usize {
    content
        .images_to_encode(id, range)
        .iter()
        .map(|image| image.tokens)
        .sum()
}

/// Step-size limits.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerLimits {
    /// Tokens per forward pass.
    pub max_batch_tokens: usize,
    /// Prompt tokens per forward pass while some sequence is decoding.
    pub max_prefill_tokens_while_decoding: usize,
    /// Sequences holding KV blocks at once.
    pub max_running: usize,
    /// Reuse the blocks of prefixes computed before.
    pub prefix_caching: bool,
}

/// The KV side of one sequence.
#[derive(Debug)]
struct Entry {
    id: RequestId,
    /// Submission order: the waiting queue's order.
    arrival: u64,
    /// Tokens known (prompt plus generated).
    len: usize,
    /// Tokens whose keys and values are in `table`.
    computed: usize,
    table: KvBlockTable,
    /// Blocks of `table` registered in the prefix cache (the first ones).
    registered: usize,
}

impl Entry {
    /// Tokens known but not yet in the cache.
    fn pending(&self) -> usize {
        self.len - self.computed
    }
}

/// New tokens of one sequence in the next forward pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub id: RequestId,
    /// Positions of the tokens (`start` tokens are cached already).
    pub positions: Range<usize>,
}

/// The scheduler's decision for one step.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// What to compute, in batch order; every chunk's positions are covered by its table.
    pub chunks: Vec<Chunk>,
    /// Sequences whose blocks were freed this step (they are waiting again).
    pub preempted: Vec<RequestId>,
    /// Sequences admitted this step whose first tokens came from the prefix cache, with how many.
    pub reused: Vec<(RequestId, usize)>,
}

/// The waiting queue, the running set and the block allocator.
pub struct Scheduler {
    limits: SchedulerLimits,
    allocator: BlockAllocator,
    /// In arrival order.
    waiting: VecDeque<Entry>,
    /// In admission order: served first to last, preempted last to first.
    running: Vec<Entry>,
    /// Sequences whose prompt's keys and values are being transferred into their tables.
    receiving: Vec<Entry>,
    next_arrival: u64,
}

impl Scheduler {
    pub fn new(allocator: BlockAllocator, limits: SchedulerLimits) -> Self {
        Scheduler {
            limits,
            allocator,
            waiting: VecDeque::new(),
            running: Vec::new(),
            receiving: Vec::new(),
            next_arrival: 0,
        }
    }

    /// Queues sequence `id` with a prompt of `len` tokens.
    pub fn add(&mut self, id: RequestId, len: usize) {
        self.waiting.push_back(Entry {
            id,
            arrival: self.next_arrival,
            len,
            computed: 0,
            table: KvBlockTable::default(),
            registered: 0,
        });
        self.next_arrival += 1;
    }

    /// Reserves the blocks of sequence `id`'s `len`-token prompt, whose keys and values another
    /// worker computes; it waits, unscheduled, until [`Scheduler::received`].
    pub fn reserve(&mut self, id: RequestId, len: usize) -> Result<(), OutOfBlocks> {
        let mut table = KvBlockTable::default();
        self.allocator.grow(&mut table, len)?;
        self.receiving.push(Entry {
            id,
            arrival: self.next_arrival,
            len,
            computed: 0,
            table,
            registered: 0,
        });
        self.next_arrival += 1;
        Ok(())
    }

    /// The reserved table of receiving sequence `id`.
    pub fn receiving_table(&self, id: RequestId) -> Option<&KvBlockTable> {
        self.receiving.iter().find(|e| e.id == id).map(|e| &e.table)
    }

    /// Records that receiving sequence `id` got its whole prompt and its first token: it runs,
    /// decoding, from the next step; its full blocks (hashes in `block_hashes`) are registered for
    /// prefix reuse. False if it is not receiving.
    pub fn received(&mut self, id: RequestId, block_hashes: &[BlockHash]) -> bool {
        let Some(index) = self.receiving.iter().position(|e| e.id == id) else {
            return false;
        };
        let mut entry = self.receiving.remove(index);
        entry.computed = entry.len;
        entry.len += 1;
        if self.limits.prefix_caching {
            let full = (entry.computed / self.allocator.block_size()).min(block_hashes.len());
            for (index, hash) in block_hashes.iter().enumerate().take(full) {
                self.allocator.register(&entry.table, index, *hash);
            }
            entry.registered = full;
        }
        self.running.push(entry);
        true
    }

    /// Whether a step has anything to schedule (receiving sequences wait for their transfer).
    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// Chooses the next step's chunks, growing block tables and preempting as needed.
    pub fn schedule(&mut self, content: &impl SequenceContent) -> Schedule {
        let mut schedule = Schedule::default();
        let mut prompt_chunks = 0;
        let mut budget = self.limits.max_batch_tokens;
        let mut decodes_behind = self.running.iter().filter(|e| e.pending() == 1).count();
        let mut prefill_budget = match decodes_behind {
            0 => usize::MAX,
            _ => self.limits.max_prefill_tokens_while_decoding,
        };
        let mut next = 0;
        while next < self.running.len() {
            let pending = self.running[next].pending();
            let decoding = pending == 1;
            if decoding {
                decodes_behind -= 1;
            }
            let mut wanted = pending.min(budget.saturating_sub(decodes_behind));
            if !decoding {
                let entry = &self.running[next];
                let room = wanted.min(prefill_budget);
                let start = entry.computed;
                let images = content.images_to_encode(entry.id, start..start + room);
                wanted = fit_images(&images, start, room, room, prompt_chunks == 0);
            }
            if wanted == 0 {
                next += 1;
                continue;
            }
            loop {
                if let Some(tokens) = self.grow(next, wanted, decoding) {
                    let entry = &self.running[next];
                    schedule.chunks.push(Chunk {
                        id: entry.id,
                        positions: entry.computed..entry.computed + tokens,
                    });
                    if decoding {
                        budget -= tokens;
                    } else {
                        let spent = tokens
                            + encoding_cost(
                                content,
                                entry.id,
                                entry.computed..entry.computed + tokens,
                            );
                        budget = budget.saturating_sub(spent);
                        prefill_budget = prefill_budget.saturating_sub(spent);
                        prompt_chunks += 1;
                    }
                    next += 1;
                    break;
                }
                // Everything after `next` is unserved this step: the last of them goes first,
                // then `next` itself.
                let victim = self.running.len() - 1;
                if victim == next {
                    schedule.preempted.push(self.preempt(victim));
                    break;
                }
                if self.running[victim].pending() == 1 {
                    decodes_behind -= 1;
                }
                schedule.preempted.push(self.preempt(victim));
            }
        }
        if schedule.preempted.is_empty() {
            budget = budget.min(prefill_budget);
            self.admit(&mut budget, &mut schedule, content, prompt_chunks);
        }
        schedule
    }

    /// Grows running sequence `index`'s table for up to `wanted` more tokens (exactly `wanted`
    /// when `exact`), returning how many fit; `None` when none (or not all, if `exact`) do.
    fn grow(&mut self, index: usize, wanted: usize, exact: bool) -> Option<usize> {
        let entry = &mut self.running[index];
        let room = self.allocator.reachable_tokens(&entry.table) - entry.computed;
        let tokens = wanted.min(room);
        if tokens == 0 || (exact && tokens < wanted) {
            return None;
        }
        self.allocator
            .grow(&mut entry.table, entry.computed + tokens)
            .ok()?;
        Some(tokens)
    }

    /// Frees running sequence `index`'s blocks and queues it again in arrival order.
    fn preempt(&mut self, index: usize) -> RequestId {
        let mut entry = self.running.remove(index);
        self.allocator.release(&mut entry.table);
        entry.computed = 0;
        entry.registered = 0;
        let at = self.waiting.partition_point(|w| w.arrival < entry.arrival);
        let id = entry.id;
        self.waiting.insert(at, entry);
        id
    }

    /// Moves waiting sequences to running, each with its cached prefix and a first chunk, while
    /// the budget and the free blocks last. Blocks for one more token of every decoding sequence
    /// are kept free, so that a newcomer does not cause a preemption at the next step.
    fn admit(
        &mut self,
        budget: &mut usize,
        schedule: &mut Schedule,
        content: &impl SequenceContent,
        mut prompt_chunks: usize,
    ) {
        let reserve = self.running.iter().filter(|e| e.pending() <= 1).count();
        let block_size = self.allocator.block_size();
        let mut index = 0;
        while index < self.waiting.len() {
            if self.running.len() >= self.limits.max_running || *budget == 0 {
                break;
            }
            let entry = &mut self.waiting[index];
            if self.limits.prefix_caching {
                let hashes = content.block_hashes(entry.id);
                let reusable = hashes.len().min((entry.len - 1) / block_size);
                entry.registered = self
                    .allocator
                    .share_prefix(&mut entry.table, &hashes[..reusable]);
                entry.computed = entry.registered * block_size;
                if will_compute(
                    &self.running,
                    content,
                    &hashes[..reusable],
                    entry.registered,
                    block_size,
                ) {
                    // Its next block is in a running sequence's prompt: it is cached in a step
                    // or two, instead of computed twice.
                    self.allocator.release(&mut entry.table);
                    (entry.computed, entry.registered) = (0, 0);
                    index += 1;
                    continue;
                }
            }
            let spare_blocks = self.allocator.free_blocks().saturating_sub(reserve);
            let room = entry.pending().min(*budget).min(spare_blocks * block_size);
            let start = entry.computed;
            let images = content.images_to_encode(entry.id, start..start + room);
            let tokens = fit_images(&images, start, room, room, prompt_chunks == 0);
            if tokens == 0 {
                self.allocator.release(&mut entry.table);
                (entry.computed, entry.registered) = (0, 0);
                break;
            }
            self.allocator
                .grow(&mut entry.table, entry.computed + tokens)
                .expect("spare blocks were counted");
            if entry.computed > 0 {
                schedule.reused.push((entry.id, entry.computed));
            }
            let positions = entry.computed..entry.computed + tokens;
            *budget =
                budget.saturating_sub(tokens + encoding_cost(content, entry.id, positions.clone()));
            schedule.chunks.push(Chunk {
                id: entry.id,
                positions,
            });
            prompt_chunks += 1;
            let entry = self.waiting.remove(index).expect("index is in the queue");
            self.running.push(entry);
        }
    }

    /// Records that a scheduled chunk of `id` was computed, and whether a token was then
    /// generated (which the next step has to feed back); registers the blocks it filled, whose
    /// hashes are in `block_hashes`.
    pub fn computed(
        &mut self,
        id: RequestId,
        tokens: usize,
        generated: bool,
        block_hashes: &[BlockHash],
    ) {
        let prefix_caching = self.limits.prefix_caching;
        let block_size = self.allocator.block_size();
        let Some(entry) = self.running.iter_mut().find(|e| e.id == id) else {
            return;
        };
        entry.computed += tokens;
        entry.len += usize::from(generated);
        if prefix_caching {
            let full = (entry.computed / block_size).min(block_hashes.len());
            for (index, hash) in block_hashes
                .iter()
                .enumerate()
                .take(full)
                .skip(entry.registered)
            {
                self.allocator.register(&entry.table, index, *hash);
            }
            entry.registered = entry.registered.max(full);
        }
    }

    /// The block tables of `chunks`' sequences, in order (`None` if one is not running).
    pub fn tables(&self, chunks: &[Chunk]) -> Option<Vec<&KvBlockTable>> {
        chunks
            .iter()
            .map(|chunk| {
                self.running
                    .iter()
                    .find(|e| e.id == chunk.id)
                    .map(|e| &e.table)
            })
            .collect()
    }

    /// The table of running sequence `id`.
    pub fn running_table(&self, id: RequestId) -> Option<&KvBlockTable> {
        self.running.iter().find(|e| e.id == id).map(|e| &e.table)
    }

    /// Forgets sequence `id`, freeing its blocks; false if it is not known.
    pub fn remove(&mut self, id: RequestId) -> bool {
        let entry = if let Some(index) = self.running.iter().position(|e| e.id == id) {
            Some(self.running.remove(index))
        } else if let Some(index) = self.receiving.iter().position(|e| e.id == id) {
            Some(self.receiving.remove(index))
        } else {
            self.waiting
                .iter()
                .position(|e| e.id == id)
                .and_then(|index| self.waiting.remove(index))
        };
        entry
            .map(|mut entry| self.allocator.release(&mut entry.table))
            .is_some()
    }

    /// Sequences holding blocks (receiving ones included).
    pub fn running(&self) -> usize {
        self.running.len() + self.receiving.len()
    }

    /// Of the running sequences, those waiting for their transferred prompt.
    pub fn receiving(&self) -> usize {
        self.receiving.len()
    }

    /// Sequences waiting for admission (new or preempted).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Tokens known but not yet computed, over all sequences.
    pub fn queued_tokens(&self) -> usize {
        self.waiting
            .iter()
            .chain(&self.running)
            .map(Entry::pending)
            .sum()
    }

    pub fn allocator(&self) -> &BlockAllocator {
        &self.allocator
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler(blocks: usize, block_size: usize, max_batch_tokens: usize) -> Scheduler {
        let limits = SchedulerLimits {
            max_batch_tokens,
            max_prefill_tokens_while_decoding: max_batch_tokens,
            max_running: 8,
            prefix_caching: false,
        };
        Scheduler::new(BlockAllocator::new(blocks, block_size), limits)
    }

    /// Sequences that all show the same tokens (`hashes`), and images not encoded yet, each
    /// `(sequence, start, len, cost)`.
    #[derive(Default)]
    struct Content {
        hashes: Vec<BlockHash>,
        images: Vec<(u64, usize, usize, usize)>,
    }

    impl SequenceContent for Content {
        fn block_hashes(&self, _: RequestId) -> &[BlockHash] {
            &self.hashes
        }

        fn images_to_encode(&self, id: RequestId, range: Range<usize>) -> Vec<ImageCost> {
            self.images
                .iter()
                .filter(|(of, start, len, _)| {
                    *of == id.0 && *start < range.end && range.start < start + len
                })
                .map(|&(_, start, _, tokens)| ImageCost { start, tokens })
                .collect()
        }
    }

    const NO_CONTENT: Content = Content {
        hashes: Vec::new(),
        images: Vec::new(),
    };

    fn chunk(id: u64, positions: Range<usize>) -> Chunk {
        Chunk {
            id: RequestId(id),
            positions,
        }
    }

    /// Marks every chunk computed, generating a token where the chunk reached the end.
    fn run(scheduler: &mut Scheduler, schedule: &Schedule, lens: &[usize]) {
        for chunk in &schedule.chunks {
            let generated = chunk.positions.end >= lens[chunk.id.0 as usize];
            scheduler.computed(chunk.id, chunk.positions.len(), generated, &[]);
        }
    }

    #[test]
    fn long_prompts_are_chunked_and_leave_budget_for_decodes_behind_them() {
        let mut s = scheduler(100, 4, 10);
        s.add(RequestId(0), 25);
        s.add(RequestId(1), 3);
        let lens = [25, 3];
        let first = s.schedule(&NO_CONTENT);
        assert_eq!(first.chunks, vec![chunk(0, 0..10)]);
        run(&mut s, &first, &lens);
        let second = s.schedule(&NO_CONTENT);
        assert_eq!(
            second.chunks,
            vec![chunk(0, 10..20)],
            "request 1 waits: budget spent"
        );
        run(&mut s, &second, &lens);
        let third = s.schedule(&NO_CONTENT);
        assert_eq!(third.chunks, vec![chunk(0, 20..25), chunk(1, 0..3)]);
        run(&mut s, &third, &lens);
        // Both decode now: one token each.
        let fourth = s.schedule(&NO_CONTENT);
        assert_eq!(fourth.chunks, vec![chunk(0, 25..26), chunk(1, 3..4)]);
        run(&mut s, &fourth, &[26, 4]);
        // A new long prompt takes what the decodes leave.
        s.add(RequestId(2), 30);
        let fifth = s.schedule(&NO_CONTENT);
        assert_eq!(
            fifth.chunks,
            vec![chunk(0, 26..27), chunk(1, 4..5), chunk(2, 0..8)]
        );
        assert_eq!(s.queued_tokens(), 2 + 30);
    }

    #[test]
    fn while_a_sequence_decodes_prompts_share_the_smaller_prefill_budget() {
        let mut s = scheduler(100, 4, 16);
        s.limits.max_prefill_tokens_while_decoding = 5;
        s.add(RequestId(0), 3);
        let lens = [3, 30, 30];
        let first = s.schedule(&NO_CONTENT);
        assert_eq!(
            first.chunks,
            vec![chunk(0, 0..3)],
            "nobody decodes yet: the whole budget"
        );
        run(&mut s, &first, &lens);
        s.add(RequestId(1), 30);
        s.add(RequestId(2), 30);
        let second = s.schedule(&NO_CONTENT);
        assert_eq!(
            second.chunks,
            vec![chunk(0, 3..4), chunk(1, 0..5)],
            "5 prompt tokens, then the budget is spent"
        );
        run(&mut s, &second, &[4, 30, 30]);
        let third = s.schedule(&NO_CONTENT);
        assert_eq!(third.chunks, vec![chunk(0, 4..5), chunk(1, 5..10)]);
        s.remove(RequestId(0));
        let alone = s.schedule(&NO_CONTENT);
        assert_eq!(
            alone.chunks,
            vec![chunk(1, 5..21)],
            "no decode left: the whole budget again"
        );
    }

    #[test]
    fn encoding_an_image_takes_prompt_budget_and_a_chunk_stops_before_an_image_that_does_not_fit() {
        let mut s = scheduler(100, 4, 16);
        s.limits.max_prefill_tokens_while_decoding = 6;
        let mut content = Content {
            images: vec![(1, 4, 10, 5), (2, 0, 10, 20)],
            ..Content::default()
        };
        s.add(RequestId(0), 3);
        let first = s.schedule(&content);
        run(&mut s, &first, &[3, 30, 30]);
        s.add(RequestId(1), 30);
        s.add(RequestId(2), 30);
        let second = s.schedule(&content);
        assert_eq!(
            second.chunks,
            vec![chunk(0, 3..4), chunk(1, 0..4)],
            "1 stops before its image (4 tokens + 5 to encode > 6); 2's image needs a step of its own"
        );
        run(&mut s, &second, &[4, 30, 30]);
        let third = s.schedule(&content);
        assert_eq!(
            third.chunks,
            vec![chunk(0, 4..5), chunk(1, 4..5)],
            "the image (5) and one token"
        );
        run(&mut s, &third, &[5, 30, 30]);
        content.images.retain(|(of, ..)| *of != 1);
        let fourth = s.schedule(&content);
        assert_eq!(
            fourth.chunks,
            vec![chunk(0, 5..6), chunk(1, 5..11)],
            "encoded: tokens only"
        );
        s.remove(RequestId(0));
        s.remove(RequestId(1));
        let alone = s.schedule(&content);
        assert_eq!(
            alone.chunks,
            vec![chunk(2, 0..1)],
            "an image over the whole budget goes alone"
        );
    }

    #[test]
    fn a_prompt_whose_next_block_a_running_prompt_computes_waits_for_it_to_be_cached() {
        let mut s = scheduler(100, 4, 64);
        s.limits.prefix_caching = true;
        let tokens: Vec<u32> = (0..40).collect();
        let mut hashes = Vec::new();
        crate::block_hash::extend_block_hashes(&mut hashes, &tokens, &[], 4);
        let content = Content {
            hashes: hashes.clone(),
            ..Content::default()
        };
        for id in 0..3 {
            s.add(RequestId(id), 40);
        }
        let first = s.schedule(&content);
        assert_eq!(
            first.chunks,
            vec![chunk(0, 0..40)],
            "1 and 2 wait for 0's blocks"
        );
        assert_eq!((s.running(), s.waiting()), (1, 2));
        s.computed(RequestId(0), 40, true, &hashes);
        let second = s.schedule(&content);
        assert_eq!(
            second.chunks,
            vec![chunk(0, 40..41), chunk(1, 36..40), chunk(2, 36..40)]
        );
        assert_eq!(second.reused, vec![(RequestId(1), 36), (RequestId(2), 36)]);
    }

    #[test]
    fn fitting_images_into_the_budget() {
        let image = |start, tokens| ImageCost { start, tokens };
        assert_eq!(fit_images(&[], 0, 8, 8, false), 8);
        assert_eq!(
            fit_images(&[image(2, 3)], 0, 8, 8, false),
            5,
            "3 of 8 go to encoding"
        );
        assert_eq!(
            fit_images(&[image(6, 3)], 0, 8, 8, false),
            6,
            "stops before the image"
        );
        assert_eq!(
            fit_images(&[image(0, 9)], 0, 8, 8, false),
            0,
            "waits for a step of its own"
        );
        assert_eq!(
            fit_images(&[image(0, 9)], 0, 8, 8, true),
            1,
            "alone: the image and one token"
        );
        assert_eq!(
            fit_images(&[image(0, 3), image(5, 3)], 0, 8, 8, true),
            5,
            "the second does not fit"
        );
        assert_eq!(
            fit_images(&[image(0, 2)], 10, 4, 4, false),
            2,
            "an image begun before the chunk"
        );
    }

    #[test]
    fn a_prefilling_sequence_ahead_leaves_a_token_for_each_decode_behind_it() {
        let mut s = scheduler(100, 4, 8);
        // 0 is mid-prompt; 1 and 2, admitted after it, decode.
        for (id, len, computed) in [(0, 20, 4), (1, 3, 2), (2, 3, 2)] {
            let mut table = KvBlockTable::default();
            s.allocator.grow(&mut table, computed).unwrap();
            s.running.push(Entry {
                id: RequestId(id),
                arrival: id,
                len,
                computed,
                table,
                registered: 0,
            });
        }
        let schedule = s.schedule(&NO_CONTENT);
        assert_eq!(
            schedule.chunks,
            vec![chunk(0, 4..10), chunk(1, 2..3), chunk(2, 2..3)]
        );
    }

    #[test]
    fn out_of_blocks_preempts_the_latest_arrival_and_readmits_it_from_scratch() {
        // 4 blocks of 4 tokens; two sequences of 7 tokens fill them.
        let mut s = scheduler(4, 4, 64);
        s.add(RequestId(0), 7);
        s.add(RequestId(1), 7);
        let lens = [7, 7];
        let schedule = s.schedule(&NO_CONTENT);
        assert_eq!(schedule.chunks, vec![chunk(0, 0..7), chunk(1, 0..7)]);
        run(&mut s, &schedule, &lens);
        // Both generated a token (len 8): position 7 still fits the second blocks.
        let schedule = s.schedule(&NO_CONTENT);
        assert_eq!(schedule.chunks, vec![chunk(0, 7..8), chunk(1, 7..8)]);
        run(&mut s, &schedule, &[8, 8]);
        assert_eq!(s.allocator().free_blocks(), 0);
        // Position 8 needs a third block: 1 is preempted so that 0 continues.
        let schedule = s.schedule(&NO_CONTENT);
        assert_eq!(schedule.chunks, vec![chunk(0, 8..9)]);
        assert_eq!(schedule.preempted, vec![RequestId(1)]);
        assert_eq!((s.running(), s.waiting()), (1, 1));
        assert_eq!(s.allocator().free_blocks(), 1);
        assert_eq!(
            s.queued_tokens(),
            9 + 1,
            "1 recomputes its 9 tokens; 0's scheduled one is not computed yet"
        );
        s.remove(RequestId(0));
        let schedule = s.schedule(&NO_CONTENT);
        assert_eq!(
            schedule.chunks,
            vec![chunk(1, 0..9)],
            "recomputed from scratch"
        );
    }

    #[test]
    fn a_receiving_sequence_holds_its_blocks_unscheduled_then_decodes() {
        let mut s = scheduler(8, 4, 64);
        s.reserve(RequestId(0), 10).unwrap();
        assert_eq!(
            s.allocator().free_blocks(),
            5,
            "ceil(10 / 4) blocks reserved"
        );
        assert!(!s.has_work());
        assert_eq!(s.schedule(&NO_CONTENT), Schedule::default());
        assert!(
            s.reserve(RequestId(1), 30).is_err(),
            "30 tokens need 8 blocks, 5 are free"
        );
        assert!(s.received(RequestId(0), &[]));
        // The transferred prompt is computed; the first token is fed back next.
        assert_eq!(s.schedule(&NO_CONTENT).chunks, vec![chunk(0, 10..11)]);
        assert!(s.remove(RequestId(0)));
        assert_eq!(s.allocator().free_blocks(), 8);
        s.reserve(RequestId(2), 4).unwrap();
        assert!(
            s.remove(RequestId(2)),
            "a receiving sequence can be cancelled"
        );
        assert_eq!((s.allocator().free_blocks(), s.running()), (8, 0));
    }

    #[test]
    fn newcomers_leave_a_block_per_decode_and_a_sequence_with_nobody_behind_it_preempts_itself() {
        let mut s = scheduler(4, 4, 64);
        s.add(RequestId(0), 5);
        assert_eq!(s.schedule(&NO_CONTENT).chunks, vec![chunk(0, 0..5)]);
        s.computed(RequestId(0), 5, true, &[]);
        s.add(RequestId(1), 8);
        // 1 gets one block of its prompt: the last free block stays for 0's decoding.
        assert_eq!(
            s.schedule(&NO_CONTENT).chunks,
            vec![chunk(0, 5..6), chunk(1, 0..4)]
        );
        s.computed(RequestId(0), 1, true, &[]);
        s.computed(RequestId(1), 4, false, &[]);
        assert_eq!(
            s.schedule(&NO_CONTENT).chunks,
            vec![chunk(0, 6..7), chunk(1, 4..8)]
        );
        s.computed(RequestId(0), 1, true, &[]);
        s.computed(RequestId(1), 4, true, &[]);
        assert_eq!(s.allocator().free_blocks(), 0);
        // 0's next position fits its blocks; 1's needs a new block, and only 0, ahead of it,
        // holds any: 1 gives its own blocks up.
        let schedule = s.schedule(&NO_CONTENT);
        assert_eq!(schedule.chunks, vec![chunk(0, 7..8)]);
        assert_eq!(schedule.preempted, vec![RequestId(1)]);
        assert_eq!(s.allocator().free_blocks(), 2);
    }

    #[test]
    fn removing_sequences_returns_every_block() {
        let mut s = scheduler(10, 4, 16);
        for id in 0..4 {
            s.add(RequestId(id), 9);
        }
        let schedule = s.schedule(&NO_CONTENT);
        assert_eq!(schedule.chunks.len(), 2, "budget of 16 admits 9 + 7");
        assert!(s.allocator().free_blocks() < 10);
        for id in 0..4 {
            assert!(s.remove(RequestId(id)));
        }
        assert!(!s.remove(RequestId(0)));
        assert_eq!(s.allocator().free_blocks(), 10);
        assert_eq!((s.running(), s.waiting(), s.queued_tokens()), (0, 0, 0));
    }

    #[test]
    fn an_admitted_sequence_starts_after_its_cached_prefix_and_computes_at_least_one_token() {
        let mut s = scheduler(16, 4, 64);
        s.limits.prefix_caching = true;
        let tokens: Vec<u32> = (0..14).collect();
        let mut hashes = Vec::new();
        crate::block_hash::extend_block_hashes(&mut hashes, &tokens, &[], 4);
        assert_eq!(hashes.len(), 3);
        let content = Content {
            hashes: hashes.clone(),
            ..Content::default()
        };
        s.add(RequestId(0), 14);
        let schedule = s.schedule(&content);
        assert_eq!(schedule.chunks, vec![chunk(0, 0..14)]);
        assert!(schedule.reused.is_empty());
        s.computed(RequestId(0), 14, true, &hashes);
        s.remove(RequestId(0));
        assert_eq!(s.allocator().cached_blocks(), 3);
        // The same 14 tokens: three cached blocks, two tokens to compute.
        s.add(RequestId(1), 14);
        let schedule = s.schedule(&content);
        assert_eq!(schedule.chunks, vec![chunk(1, 12..14)]);
        assert_eq!(schedule.reused, vec![(RequestId(1), 12)]);
        // Its first 12 tokens alone: the last block is computed again, for its logits (1, not
        // computed yet, is scheduled again too).
        s.add(RequestId(2), 12);
        let schedule = s.schedule(&content);
        assert_eq!(schedule.chunks, vec![chunk(1, 12..14), chunk(2, 8..12)]);
        s.remove(RequestId(1));
        s.remove(RequestId(2));
        assert_eq!(s.allocator().free_blocks(), 16);
    }
}
