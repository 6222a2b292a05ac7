//! Where prompts' prefixes are probably cached. Workers keep the KV blocks of prompts they computed
//! (prefix caching), so the coordinator remembers, per worker, the hashes of the prompt blocks it
//! sent there, and routing counts a job as only the tokens a worker would still have to compute:
//! a prompt that starts like an earlier one goes to the worker holding that start, unless another
//! worker's shorter queue makes up for the recomputation.
//!
//! The view is approximate (a worker evicts blocks it needs, and its block size may differ from
//! the granularity here); a wrong guess costs at most the recomputation that plain least-loaded
//! routing would have cost. Each worker's entry is bounded, and forgetting the older half of it
//! when full keeps recent prefixes.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use fovea_proto::content_hash::ContentHasher;
use fovea_proto::worker::v1::GenerateJob;

/// Tokens per remembered block.
pub const BLOCK_TOKENS: usize = 16;

/// Blocks remembered per worker (a million tokens of prompts).
const BLOCKS_PER_WORKER: usize = 65536;

/// The chained hashes of a prompt's full blocks: each covers its tokens, the content of the
/// images among them, and every block before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptBlocks(Vec<u128>);

impl PromptBlocks {
    /// The blocks of `job`'s prompt (images known by their content hashes).
    pub fn of(job: &GenerateJob) -> Self {
        let images: Vec<(usize, &[u8])> = job
            .images
            .iter()
            .map(|input| {
                let hash = input
                    .image
                    .as_ref()
                    .map_or(&[][..], |image| &image.content_hash[..]);
                (input.start as usize, hash)
            })
            .collect();
        let mut hashes = Vec::with_capacity(job.prompt_token_ids.len() / BLOCK_TOKENS);
        let mut previous = 0u128;
        for (index, block) in job.prompt_token_ids.chunks_exact(BLOCK_TOKENS).enumerate() {
            let mut hasher = ContentHasher::new();
            hasher.write_u128(previous);
            for token in block {
                hasher.write(&token.to_le_bytes());
            }
            let range = index * BLOCK_TOKENS..(index + 1) * BLOCK_TOKENS;
            // An image is named in the block of its first token; later blocks inherit it through
            // the chain.
            for (start, hash) in images.iter().filter(|(start, _)| range.contains(start)) {
                hasher.write_u64(*start as u64);
                hasher.write(hash);
            }
            previous = hasher.finish();
            hashes.push(previous);
        }
        PromptBlocks(hashes)
    }
}

/// One worker's remembered blocks, each with when it was last sent.
#[derive(Default)]
struct WorkerBlocks {
    last_used: HashMap<u128, u64>,
    clock: u64,
}

impl WorkerBlocks {
    fn record(&mut self, blocks: &PromptBlocks) {
        self.clock += 1;
        for hash in &blocks.0 {
            self.last_used.insert(*hash, self.clock);
        }
        if self.last_used.len() > BLOCKS_PER_WORKER {
            let mut ages: Vec<u64> = self.last_used.values().copied().collect();
            let (_, median, _) = ages.select_nth_unstable(self.last_used.len() / 2);
            let cutoff = *median;
            self.last_used.retain(|_, used| *used > cutoff);
        }
    }

    fn cached_blocks(&self, blocks: &PromptBlocks) -> usize {
        blocks
            .0
            .iter()
            .take_while(|hash| self.last_used.contains_key(hash))
            .count()
    }
}

/// Remembered prompt blocks by worker address.
#[derive(Default)]
pub struct PrefixAffinity {
    workers: Mutex<HashMap<String, WorkerBlocks>>,
}

impl PrefixAffinity {
    /// Prompt tokens of `blocks` that the worker at `address` probably holds already.
    pub fn cached_tokens(&self, address: &str, blocks: &PromptBlocks) -> usize {
        let workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        workers
            .get(address)
            .map_or(0, |worker| worker.cached_blocks(blocks) * BLOCK_TOKENS)
    }

    /// Notes that the worker at `address` computes (or receives) the prompt of `blocks`.
    pub fn record(&self, address: &str, blocks: &PromptBlocks) {
        let mut workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        workers
            .entry(address.to_string())
            .or_default()
            .record(blocks);
    }
}

#[cfg(test)]
mod tests {
    use fovea_proto::worker::v1::{EncodedImage, ImageInput};

    use super::*;

    fn job(tokens: std::ops::Range<u32>, images: &[(u32, u8)]) -> GenerateJob {
        GenerateJob {
            prompt_token_ids: tokens.collect(),
            images: images
                .iter()
                .map(|&(start, content)| ImageInput {
                    image: Some(EncodedImage {
                        content_hash: vec![content; 16].into(),
                        ..Default::default()
                    }),
                    start,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_worker_is_credited_with_the_longest_prefix_it_was_sent() {
        let affinity = PrefixAffinity::default();
        let first = PromptBlocks::of(&job(0..100, &[]));
        assert_eq!(first.0.len(), 6, "full blocks only");
        affinity.record("a", &first);
        assert_eq!(affinity.cached_tokens("a", &first), 96);
        assert_eq!(affinity.cached_tokens("b", &first), 0);
        // Same first 40 tokens, then different: two whole blocks match.
        let mut tokens: Vec<u32> = (0..40).collect();
        tokens.extend(1000..1060);
        let diverging = GenerateJob {
            prompt_token_ids: tokens,
            ..Default::default()
        };
        assert_eq!(
            affinity.cached_tokens("a", &PromptBlocks::of(&diverging)),
            32
        );
    }

    #[test]
    fn blocks_after_an_image_depend_on_its_content() {
        let affinity = PrefixAffinity::default();
        affinity.record("a", &PromptBlocks::of(&job(0..64, &[(20, 1)])));
        assert_eq!(
            affinity.cached_tokens("a", &PromptBlocks::of(&job(0..64, &[(20, 1)]))),
            64
        );
        assert_eq!(
            affinity.cached_tokens("a", &PromptBlocks::of(&job(0..64, &[(20, 2)]))),
            16,
            "only the block before the other image matches"
        );
    }

    #[test]
    fn a_full_worker_forgets_its_older_half() {
        let mut worker = WorkerBlocks::default();
        let old = PromptBlocks((0..BLOCKS_PER_WORKER as u128).collect());
        worker.record(&old);
        let new =
            PromptBlocks((BLOCKS_PER_WORKER as u128..BLOCKS_PER_WORKER as u128 + 10).collect());
        worker.record(&new);
        assert_eq!(worker.cached_blocks(&new), 10);
        assert_eq!(worker.cached_blocks(&old), 0);
        assert!(worker.last_used.len() <= BLOCKS_PER_WORKER);
    }
}
