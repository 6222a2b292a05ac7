//! The golden cases with the decoder split over 1, 2 and 4 ranks (threads of this process, talking
//! through the shared-memory communicator): the same greedy tokens as the PyTorch reference and
//! logits within 1e-3, in f32. The fixture has 4 query and 2 KV heads, so at 4 ranks pairs of
//! ranks hold copies of one KV head.

use std::sync::Arc;

use candle_core::{DType, Device};
use fovea_model::generate::{GenerationRequest, SequenceRank, generate};
use fovea_model::kv_cache::ContiguousKvCache;
use fovea_model::sampling::{SamplingParams, argmax};
use fovea_model::testing::{
    GoldenTensors, golden_model_dir, golden_preparer, prepared_golden_cases,
};
use fovea_model::tp::{RankGroup, RankOptions};
use fovea_model::{ModelError, Phi4VisionModel};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A rank's part of the model and the one sequence's cache.
struct Rank {
    model: Phi4VisionModel,
    cache: ContiguousKvCache,
}

fn ranks(world: usize) -> RankGroup<Rank> {
    let mut options = RankOptions::new(world);
    options.threads_per_rank = 1;
    Phi4VisionModel::load_ranks(
        &golden_model_dir(),
        DType::F32,
        &Device::Cpu,
        options,
        |model| {
            let layers = model.config().text.num_layers;
            Ok(Rank {
                model,
                cache: ContiguousKvCache::new(layers),
            })
        },
    )
    .unwrap()
}

#[test]
fn golden_cases_give_the_reference_tokens_and_logits_at_tp_1_2_and_4() {
    let cases = prepared_golden_cases(&golden_preparer());
    let tensors = GoldenTensors::load();
    for world in [1, 2, 4] {
        let mut ranks = ranks(world);
        for case in &cases {
            let name = &case.golden.name;
            let request = &case.request;
            let features: Vec<_> = request
                .images
                .iter()
                .map(|(placement, image)| {
                    (*placement, ranks.local().model.encode_image(image).unwrap())
                })
                .collect();
            let ids = request.prompt_ids.clone();
            let prefill = ranks
                .run(move |rank| {
                    rank.cache = ContiguousKvCache::new(rank.model.config().text.num_layers);
                    let embeddings = rank.model.prompt_embeddings(&ids, &features)?;
                    rank.model.forward(
                        &embeddings,
                        &rank.cache.next_batch(ids.len()),
                        &mut rank.cache,
                    )
                })
                .unwrap();
            let mut logits: Vec<f32> = prefill.flatten_all().unwrap().to_vec1().unwrap();
            let expected = tensors.prefill_last_logits(name);
            assert_eq!(
                logits.len(),
                expected.len(),
                "TP {world} {name}: gathered logits cover the vocabulary"
            );
            let diff = max_abs_diff(&logits, &expected);
            println!("TP {world} {name}: prefill logits max |diff| {diff:e}");
            assert!(
                diff < 1e-3,
                "TP {world} {name}: prefill logits differ by {diff}"
            );

            let expected_tokens = &case.golden.greedy_tokens;
            let mut tokens = vec![argmax(&logits)];
            while tokens.len() < expected_tokens.len() {
                let token = *tokens.last().unwrap();
                let step = ranks
                    .run(move |rank| {
                        let embeddings = rank.model.decoder().embed(&[token])?;
                        rank.model
                            .forward(&embeddings, &rank.cache.next_batch(1), &mut rank.cache)
                    })
                    .unwrap();
                logits = step.flatten_all().unwrap().to_vec1().unwrap();
                tokens.push(argmax(&logits));
            }
            assert_eq!(&tokens, expected_tokens, "TP {world} {name}: greedy tokens");
            let expected = tensors.greedy_last_logits(name);
            let diff = max_abs_diff(&logits, &expected);
            assert!(
                diff < 1e-3,
                "TP {world} {name}: last-step logits differ by {diff}"
            );
        }
    }
}

#[test]
fn generate_runs_on_a_group_and_matches_one_rank() {
    let case = &prepared_golden_cases(&golden_preparer())[0];
    let (dir, request) = (golden_model_dir(), &case.request);
    let generate_on = |world: usize| {
        let mut ranks = Phi4VisionModel::load_ranks(
            &dir,
            DType::F32,
            &Device::Cpu,
            RankOptions::new(world),
            |model| Ok(SequenceRank::new(Arc::new(model))),
        )
        .unwrap();
        let request = GenerationRequest {
            prompt_ids: &request.prompt_ids,
            images: &request.images,
            max_new_tokens: 12,
            sampling: SamplingParams::default(),
            stop_token_ids: &[],
            ignore_eos: true,
        };
        generate(&mut ranks, &request, |_| {}).unwrap().token_ids
    };
    assert_eq!(generate_on(1), case.golden.greedy_tokens);
    assert_eq!(generate_on(2), case.golden.greedy_tokens);
}

#[test]
fn a_tp_size_that_does_not_divide_the_query_heads_fails_at_load_with_the_choices() {
    let result = Phi4VisionModel::load_ranks(
        &golden_model_dir(),
        DType::F32,
        &Device::Cpu,
        RankOptions::new(3),
        Ok,
    );
    let Err(error @ ModelError::TensorParallel(_)) = result else {
        panic!("TP 3 over 4 heads must be refused");
    };
    let message = error.to_string();
    assert!(
        message.contains("TP size of 3") && message.contains("1, 2, 4"),
        "{message}"
    );
}
