//! The paged cache against the contiguous one: golden prompts of different lengths batched
//! together, in chunks, some decoding while others prefill, give every sequence the logits it gets
//! alone.

use candle_core::{DType, Tensor};
use fovea_model::Phi4VisionModel;
use fovea_model::batch::{BatchLayout, BatchSegment};
use fovea_model::kv_cache::{ContiguousKvCache, KvCache};
use fovea_model::sampling::argmax;
use fovea_model::testing::{golden_cases, golden_model, golden_preparer};
use fovea_worker::block_allocator::{BlockAllocator, KvBlockTable};
use fovea_worker::kv_pool::{KvBlockPool, KvPoolShape};
use fovea_worker::paged_cache::PagedKvCache;

/// One sequence as both caches see it: its prompt embeddings, the tokens it has decoded, and the
/// contiguous cache that runs it alone.
struct Sequence {
    prompt: Tensor,
    prompt_len: usize,
    decoded: Vec<u32>,
    computed: usize,
    alone: ContiguousKvCache,
    table: KvBlockTable,
}

impl Sequence {
    /// Embeddings of the next `tokens` tokens (prompt rows, then decoded tokens one at a time).
    fn next_embeddings(&self, model: &Phi4VisionModel, tokens: usize) -> Tensor {
        if self.computed < self.prompt_len {
            assert!(
                self.computed + tokens <= self.prompt_len,
                "chunks do not straddle the prompt end"
            );
            self.prompt.narrow(0, self.computed, tokens).unwrap()
        } else {
            assert_eq!(tokens, 1, "one token per decoding step");
            model
                .decoder()
                .embed(&self.decoded[self.decoded.len() - 1..])
                .unwrap()
        }
    }
}

fn row(logits: &Tensor, index: usize) -> Vec<f32> {
    logits.get(index).unwrap().to_vec1().unwrap()
}

#[test]
fn batched_chunks_over_the_paged_cache_match_each_sequence_alone() {
    let model = golden_model(DType::F32);
    let preparer = golden_preparer();
    let layers = model.config().text.num_layers;
    let mut sequences: Vec<Sequence> = golden_cases()
        .iter()
        .filter(|case| case.name != "screen_grounding")
        .map(|case| {
            let request = case.prepare(&preparer);
            let features: Vec<_> = request
                .images
                .iter()
                .map(|(placement, image)| (*placement, model.encode_image(image).unwrap()))
                .collect();
            Sequence {
                prompt: model
                    .prompt_embeddings(&request.prompt_ids, &features)
                    .unwrap(),
                prompt_len: request.prompt_ids.len(),
                decoded: Vec::new(),
                computed: 0,
                alone: ContiguousKvCache::new(layers),
                table: KvBlockTable::default(),
            }
        })
        .collect();
    let lens: Vec<usize> = sequences.iter().map(|s| s.prompt_len).collect();
    assert_eq!(
        lens,
        vec![435, 466, 732, 917],
        "text, multi-turn, one image, two images"
    );

    let block_size = 16;
    let blocks = 200;
    let mut allocator = BlockAllocator::new(blocks, block_size);
    let mut pool = KvBlockPool::new(KvPoolShape::for_decoder(
        &model.config().text,
        blocks,
        block_size,
    ));
    // Per step, (sequence, new tokens): sequence 0 prefills at once and decodes while 1 and 2
    // prefill in chunks (2's first chunk ends inside its image); 3 joins at step 1.
    let steps: Vec<Vec<(usize, usize)>> = vec![
        vec![(0, 435), (1, 300), (2, 500)],
        vec![(1, 166), (0, 1), (2, 200), (3, 917)],
        vec![(0, 1), (1, 1), (2, 32), (3, 1)],
        vec![(3, 1), (2, 1), (1, 1), (0, 1)],
        vec![(2, 1), (0, 1), (3, 1), (1, 1)],
    ];
    let mut worst = 0f32;
    for step in &steps {
        for &(s, tokens) in step {
            let sequence = &mut sequences[s];
            allocator
                .grow(&mut sequence.table, sequence.computed + tokens)
                .unwrap();
        }
        let embeddings: Vec<Tensor> = step
            .iter()
            .map(|&(s, tokens)| sequences[s].next_embeddings(&model, tokens))
            .collect();
        let layout = BatchLayout::new(
            step.iter()
                .map(|&(s, tokens)| BatchSegment {
                    past: sequences[s].computed,
                    tokens,
                })
                .collect(),
        );
        let tables = step.iter().map(|&(s, _)| &sequences[s].table).collect();
        let mut paged = PagedKvCache::new(&mut pool, tables);
        let batched = model
            .forward(&Tensor::cat(&embeddings, 0).unwrap(), &layout, &mut paged)
            .unwrap();

        for (index, (&(s, tokens), embeddings)) in step.iter().zip(&embeddings).enumerate() {
            let sequence = &mut sequences[s];
            let layout = sequence.alone.next_batch(tokens);
            let alone = model
                .forward(embeddings, &layout, &mut sequence.alone as &mut dyn KvCache)
                .unwrap();
            let (got, expected) = (row(&batched, index), row(&alone, 0));
            let diff = got
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-4, "sequence {s}: logits differ by {diff}");
            worst = worst.max(diff);
            sequence.computed += tokens;
            if sequence.computed >= sequence.prompt_len {
                sequence.decoded.push(argmax(&expected));
            }
        }
    }
    println!("largest logit difference, batched paged vs alone contiguous: {worst:e}");
    for sequence in &mut sequences {
        allocator.release(&mut sequence.table);
    }
    assert_eq!(allocator.free_blocks(), blocks);
}
