//! The golden fixture as the worker's tests use it: the f32 model, and every golden case prepared
//! through the real front end with its 12 reference greedy tokens.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device};
use fovea_model::Phi4VisionModel;
use fovea_model::input::{PreparedRequest, RequestPreparer};
use fovea_model::text::{ChatMessage, Mode};

pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden")
}

pub fn model_dir() -> PathBuf {
    golden_dir().join("model")
}

/// The golden checkpoint, computing in f32.
pub fn load_model() -> Arc<Phi4VisionModel> {
    Arc::new(Phi4VisionModel::load(&model_dir(), DType::F32, &Device::Cpu).unwrap())
}

pub fn preparer() -> RequestPreparer {
    RequestPreparer::from_model_dir(&model_dir()).unwrap()
}

/// One golden case: its prepared request and the reference's greedy tokens.
pub struct GoldenCase {
    pub name: String,
    pub request: PreparedRequest,
    pub greedy_tokens: Vec<u32>,
}

/// Every golden case, prepared by `preparer`.
pub fn golden_cases(preparer: &RequestPreparer) -> Vec<GoldenCase> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("golden.json")).unwrap()).unwrap();
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
            let mode: Mode = case["mode"].as_str().unwrap().parse().unwrap();
            let images: Vec<Vec<u8>> = case["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| std::fs::read(golden_dir().join("images").join(f.as_str().unwrap())).unwrap())
                .collect();
            GoldenCase {
                name: case["name"].as_str().unwrap().to_string(),
                request: preparer.prepare(&messages, &images, mode).unwrap(),
                greedy_tokens: case["greedy_tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_u64().unwrap() as u32)
                    .collect(),
            }
        })
        .collect()
}
