//! Every golden case end to end against the PyTorch reference, in f32: prompt ids from the chat
//! template and tokenizer, image grids, projected image features, prefill logits, 12 greedy tokens
//! and the logits of the last greedy step.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use fovea_model::Phi4VisionModel;
use fovea_model::input::{PreparedRequest, RequestPreparer};
use fovea_model::kv_cache::ContiguousKvCache;
use fovea_model::sampling::argmax;
use fovea_model::text::{ChatMessage, IMAGE_PLACEHOLDER_ID, Mode};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn ids(value: &serde_json::Value) -> Vec<u32> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

fn logits(t: Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

struct Golden {
    cases: Vec<serde_json::Value>,
    tensors: HashMap<String, Tensor>,
}

fn golden() -> Golden {
    let dir = golden_dir();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    Golden {
        cases: json["cases"].as_array().unwrap().clone(),
        tensors: candle_core::safetensors::load(dir.join("golden.safetensors"), &Device::Cpu).unwrap(),
    }
}

/// The case's messages, images and mode through the real front end.
fn prepare_case(preparer: &RequestPreparer, case: &serde_json::Value) -> PreparedRequest {
    let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
    let mode: Mode = case["mode"].as_str().unwrap().parse().unwrap();
    let images: Vec<Vec<u8>> = case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| std::fs::read(golden_dir().join("images").join(f.as_str().unwrap())).unwrap())
        .collect();
    preparer.prepare(&messages, &images, mode).unwrap()
}

#[test]
fn every_golden_case_matches_the_reference_in_f32() {
    let golden = golden();
    let model_dir = golden_dir().join("model");
    let preparer = RequestPreparer::from_model_dir(&model_dir).unwrap();
    let model = Phi4VisionModel::load(&model_dir, DType::F32, &Device::Cpu).unwrap();
    for case in &golden.cases {
        let name = case["name"].as_str().unwrap();
        let request = prepare_case(&preparer, case);
        assert_eq!(request.prompt_text, case["prompt_text"].as_str().unwrap(), "{name}: prompt text");
        assert_eq!(request.prompt_ids, ids(&case["input_ids"]), "{name}: input_ids");

        let mut features = Vec::new();
        for (i, ((placement, image), span)) in request.images.iter().zip(case["image_spans"].as_array().unwrap()).enumerate() {
            assert_eq!(placement.start as u64, span["start"].as_u64().unwrap(), "{name}: image {i} start");
            assert_eq!(vec![image.grid_h as u32, image.grid_w as u32], ids(&span["grid"]), "{name}: image {i} grid");
            let got = model.encode_image(image).unwrap();
            let expected: Vec<f32> = golden.tensors[&format!("{name}.image{i}.features")].flatten_all().unwrap().to_vec1().unwrap();
            let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
            let relative = max_abs_diff(&logits(got.clone()), &expected) / scale;
            println!("{name}: image {i} features max relative diff {relative:e}");
            assert!(relative < 1e-4, "{name}: image {i} features differ by {relative} relative");
            features.push((*placement, got));
        }

        let mut cache = ContiguousKvCache::new(model.config().text.num_layers);
        let embeddings = model.prompt_embeddings(&request.prompt_ids, &features).unwrap();
        let mut step_logits = logits(model.forward(&embeddings, &cache.next_batch(embeddings.dim(0).unwrap()), &mut cache).unwrap());
        let expected = golden.tensors[&format!("{name}.prefill_last_logits")].to_vec1::<f32>().unwrap();
        let diff = max_abs_diff(&step_logits, &expected);
        println!("{name}: prefill logits max |diff| {diff:e}");
        assert!(diff < 1e-3, "{name}: prefill logits differ by {diff}");

        let expected_tokens = ids(&case["greedy_tokens"]);
        let mut tokens = Vec::new();
        loop {
            tokens.push(argmax(&step_logits));
            if tokens.len() == expected_tokens.len() {
                break;
            }
            let next = model.decoder().embed(&tokens[tokens.len() - 1..]).unwrap();
            step_logits = logits(model.forward(&next, &cache.next_batch(1), &mut cache).unwrap());
        }
        assert_eq!(tokens, expected_tokens, "{name}: greedy tokens");
        let expected = golden.tensors[&format!("{name}.greedy_last_logits")].to_vec1::<f32>().unwrap();
        let diff = max_abs_diff(&step_logits, &expected);
        println!("{name}: last greedy step logits max |diff| {diff:e}");
        assert!(diff < 1e-3, "{name}: last-step logits differ by {diff}");
        assert!(request.images.iter().all(|(p, _)| request.prompt_ids[p.start..p.start + p.len].iter().all(|&t| t == IMAGE_PLACEHOLDER_ID)));
    }
}

/// bf16 compute cannot be exact to an f32 reference; it must stay within bf16 rounding of it.
#[test]
fn bf16_compute_stays_close_to_the_reference() {
    let golden = golden();
    let model_dir = golden_dir().join("model");
    let preparer = RequestPreparer::from_model_dir(&model_dir).unwrap();
    let model = Phi4VisionModel::load(&model_dir, DType::BF16, &Device::Cpu).unwrap();
    for case in &golden.cases {
        let name = case["name"].as_str().unwrap();
        let request = prepare_case(&preparer, case);
        let features: Vec<_> = request.images.iter().map(|(p, image)| (*p, model.encode_image(image).unwrap())).collect();
        let mut cache = ContiguousKvCache::new(model.config().text.num_layers);
        let embeddings = model.prompt_embeddings(&request.prompt_ids, &features).unwrap();
        let got = logits(model.forward(&embeddings, &cache.next_batch(embeddings.dim(0).unwrap()), &mut cache).unwrap());
        let expected = golden.tensors[&format!("{name}.prefill_last_logits")].to_vec1::<f32>().unwrap();
        let diff = max_abs_diff(&got, &expected);
        println!("{name}: bf16 prefill logits max |diff| {diff:e}");
        // bf16 keeps 8 mantissa bits: O(1) logits move by a few hundredths; a broken path moves them by O(1).
        assert!(diff < 0.15, "{name}: bf16 logits differ by {diff}");
    }
}
