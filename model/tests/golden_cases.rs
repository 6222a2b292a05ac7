//! Every golden case end to end against the PyTorch reference, in f32: prompt ids from the chat
//! template and tokenizer, image grids, projected image features, prefill logits, 12 greedy tokens
//! and the logits of the last greedy step; and the first token's log probabilities against the
//! reference's log-softmax.

use candle_core::{DType, Tensor};
use fovea_model::kv_cache::ContiguousKvCache;
use fovea_model::sampling::{Sampler, SamplingParams, argmax};
use fovea_model::testing::{
    GoldenTensors, golden_cases, golden_model, golden_preparer, reference_log_softmax,
};
use fovea_model::text::IMAGE_PLACEHOLDER_ID;

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn logits(t: Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn every_golden_case_matches_the_reference_in_f32() {
    let golden = GoldenTensors::load();
    let preparer = golden_preparer();
    let model = golden_model(DType::F32);
    for case in &golden_cases() {
        let name = &case.name;
        let request = case.prepare(&preparer);
        assert_eq!(request.prompt_text, case.prompt_text, "{name}: prompt text");
        assert_eq!(request.prompt_ids, case.input_ids, "{name}: input_ids");

        let mut features = Vec::new();
        for (i, ((placement, image), span)) in
            request.images.iter().zip(&case.image_spans).enumerate()
        {
            assert_eq!(placement.start, span.start, "{name}: image {i} start");
            assert_eq!(
                [image.grid_h, image.grid_w],
                span.grid,
                "{name}: image {i} grid"
            );
            let got = model.encode_image(image).unwrap();
            let expected = golden.image_features(name, i);
            let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
            let relative = max_abs_diff(&logits(got.clone()), &expected) / scale;
            println!("{name}: image {i} features max relative diff {relative:e}");
            assert!(
                relative < 1e-4,
                "{name}: image {i} features differ by {relative} relative"
            );
            features.push((*placement, got));
        }

        let mut cache = ContiguousKvCache::new(model.config().text.num_layers);
        let embeddings = model
            .prompt_embeddings(&request.prompt_ids, &features)
            .unwrap();
        let mut step_logits = logits(
            model
                .forward(
                    &embeddings,
                    &cache.next_batch(embeddings.dim(0).unwrap()),
                    &mut cache,
                )
                .unwrap(),
        );
        let expected = golden.prefill_last_logits(name);
        let diff = max_abs_diff(&step_logits, &expected);
        println!("{name}: prefill logits max |diff| {diff:e}");
        assert!(diff < 1e-3, "{name}: prefill logits differ by {diff}");
        assert_first_token_logprobs(name, &step_logits, &expected);

        let expected_tokens = &case.greedy_tokens;
        let mut tokens = Vec::new();
        loop {
            tokens.push(argmax(&step_logits));
            if tokens.len() == expected_tokens.len() {
                break;
            }
            let next = model.decoder().embed(&tokens[tokens.len() - 1..]).unwrap();
            step_logits = logits(
                model
                    .forward(&next, &cache.next_batch(1), &mut cache)
                    .unwrap(),
            );
        }
        assert_eq!(&tokens, expected_tokens, "{name}: greedy tokens");
        let expected = golden.greedy_last_logits(name);
        let diff = max_abs_diff(&step_logits, &expected);
        println!("{name}: last greedy step logits max |diff| {diff:e}");
        assert!(diff < 1e-3, "{name}: last-step logits differ by {diff}");
        assert!(request.images.iter().all(|(p, _)| {
            request.prompt_ids[p.start..p.start + p.len]
                .iter()
                .all(|&t| t == IMAGE_PLACEHOLDER_ID)
        }));
    }
}

/// The greedy sampler's log probabilities on Fovea's prefill logits against the log-softmax of the
/// reference's: the chosen token's and each of the 20 alternatives' within 1e-4.
fn assert_first_token_logprobs(name: &str, fovea_logits: &[f32], reference_logits: &[f32]) {
    let params = SamplingParams {
        logprobs: Some(20),
        ..SamplingParams::default()
    };
    let sampled = Sampler::new(params).unwrap().sample(fovea_logits);
    let logprobs = sampled.logprobs.unwrap();
    let reference = reference_log_softmax(reference_logits);
    let diff = |token: u32, logprob: f32| (f64::from(logprob) - reference[token as usize]).abs();
    assert!(
        diff(sampled.id, logprobs.logprob) < 1e-4,
        "{name}: chosen token's logprob"
    );
    assert_eq!(logprobs.top.len(), 20, "{name}");
    assert_eq!(
        logprobs.top[0].token_id, sampled.id,
        "{name}: greedy picks the most likely"
    );
    for entry in &logprobs.top {
        assert!(
            diff(entry.token_id, entry.logprob) < 1e-4,
            "{name}: logprob of {}",
            entry.token_id
        );
    }
}

/// bf16 compute cannot be exact to an f32 reference; it must stay within bf16 rounding of it.
#[test]
fn bf16_compute_stays_close_to_the_reference() {
    let golden = GoldenTensors::load();
    let preparer = golden_preparer();
    let model = golden_model(DType::BF16);
    for case in &golden_cases() {
        let name = &case.name;
        let request = case.prepare(&preparer);
        let features: Vec<_> = request
            .images
            .iter()
            .map(|(p, image)| (*p, model.encode_image(image).unwrap()))
            .collect();
        let mut cache = ContiguousKvCache::new(model.config().text.num_layers);
        let embeddings = model
            .prompt_embeddings(&request.prompt_ids, &features)
            .unwrap();
        let got = logits(
            model
                .forward(
                    &embeddings,
                    &cache.next_batch(embeddings.dim(0).unwrap()),
                    &mut cache,
                )
                .unwrap(),
        );
        let expected = golden.prefill_last_logits(name);
        let diff = max_abs_diff(&got, &expected);
        println!("{name}: bf16 prefill logits max |diff| {diff:e}");
        // bf16 keeps 8 mantissa bits: O(1) logits move by a few hundredths; a broken path moves them by O(1).
        assert!(diff < 0.15, "{name}: bf16 logits differ by {diff}");
    }
}

/// Every golden image, of every case, encoded in one packed batch: each image's features are
/// those it gets encoded alone (attention never crosses images), and match the reference.
#[test]
fn golden_images_encoded_in_one_batch_match_their_lone_encodings() {
    let golden = GoldenTensors::load();
    let preparer = golden_preparer();
    let model = golden_model(DType::F32);
    let mut images = Vec::new();
    for case in &golden_cases() {
        let request = case.prepare(&preparer);
        for (i, (_, image)) in request.images.into_iter().enumerate() {
            images.push((case.name.clone(), i, image));
        }
    }
    assert!(
        images.len() >= 2,
        "the golden cases hold {} images; a batch needs two",
        images.len()
    );
    let batch: Vec<_> = images.iter().map(|(_, _, image)| image).collect();
    let batched = model.encode_images(&batch).unwrap();
    assert_eq!(batched.len(), images.len());
    for ((name, i, image), got) in images.iter().zip(batched) {
        let alone = logits(model.encode_image(image).unwrap());
        let got = logits(got);
        let scale = alone.iter().fold(0f32, |m, v| m.max(v.abs()));
        let relative = max_abs_diff(&got, &alone) / scale;
        println!("{name}: image {i} batched vs alone max relative diff {relative:e}");
        assert!(
            relative < 1e-6,
            "{name}: image {i} batched differs from alone by {relative} relative"
        );
        let expected = golden.image_features(name, *i);
        assert!(
            max_abs_diff(&got, &expected) / scale < 1e-4,
            "{name}: image {i} batched features differ from the reference"
        );
    }
}
