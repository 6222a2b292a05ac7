//! Text-only golden cases: the decoder against the PyTorch reference (prefill logits, 12 greedy tokens).

use std::path::PathBuf;

use candle_core::{DType, Device};
use fovea_model::Phi4VisionModel;
use fovea_model::kv_cache::ContiguousKvCache;
use fovea_model::sampling::argmax;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn text_cases_match_reference_logits_and_greedy_tokens() {
    let dir = golden_dir();
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let tensors = candle_core::safetensors::load(dir.join("golden.safetensors"), &Device::Cpu).unwrap();
    let model = Phi4VisionModel::load(&dir.join("model"), DType::F32, &Device::Cpu).unwrap();
    for case in golden["cases"].as_array().unwrap() {
        if !case["images"].as_array().unwrap().is_empty() {
            continue;
        }
        let name = case["name"].as_str().unwrap();
        let ids: Vec<u32> = case["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let mut cache = ContiguousKvCache::new(model.config().text.num_layers);
        let embeddings = model.prompt_embeddings(&ids, &[]).unwrap();
        let mut logits: Vec<f32> = model.forward(&embeddings, &mut cache).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let expected: Vec<f32> = tensors[&format!("{name}.prefill_last_logits")].to_vec1().unwrap();
        let diff = max_abs_diff(&logits, &expected);
        println!("{name}: prefill max |diff| = {diff:e}");
        assert!(diff < 1e-3, "{name}: prefill logits differ by {diff}");
        let expected_tokens: Vec<u32> =
            case["greedy_tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let mut tokens = Vec::new();
        loop {
            let token = argmax(&logits);
            tokens.push(token);
            if tokens.len() == expected_tokens.len() {
                break;
            }
            let next = model.decoder().embed(&[token]).unwrap();
            logits = model.forward(&next, &mut cache).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        }
        assert_eq!(tokens, expected_tokens, "{name}: greedy tokens");
        let expected_last: Vec<f32> = tensors[&format!("{name}.greedy_last_logits")].to_vec1().unwrap();
        let diff = max_abs_diff(&logits, &expected_last);
        println!("{name}: last greedy step max |diff| = {diff:e}");
        assert!(diff < 1e-3, "{name}: last-step logits differ by {diff}");
    }
}
