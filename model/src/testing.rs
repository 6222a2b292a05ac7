//! The golden reference fixture (`testdata/golden`) as the tests of every crate load it: the
//! checkpoint, the recorded cases of `golden.json`, their images, the reference tensors of
//! `golden.safetensors`, and a plain f64 log-softmax to check reported log probabilities against.
//!
//! Only tests use it: it is compiled with the `testing` feature, which the workspace's crates turn
//! on from their `[dev-dependencies]`. Everything here panics on a broken fixture, as a test should.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::Phi4VisionModel;
use crate::input::{PreparedRequest, RequestPreparer};
use crate::text::{ChatMessage, Mode};

/// `testdata/golden` at the repository root.
pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden")
}

/// The golden checkpoint's directory.
pub fn golden_model_dir() -> PathBuf {
    golden_dir().join("model")
}

/// The golden checkpoint, computing in `dtype`.
pub fn golden_model(dtype: DType) -> Phi4VisionModel {
    Phi4VisionModel::load(&golden_model_dir(), dtype, &Device::Cpu)
        .expect("the golden checkpoint loads")
}

/// The golden checkpoint's front end (chat template, tokenizer, image preprocessing).
pub fn golden_preparer() -> RequestPreparer {
    RequestPreparer::from_model_dir(&golden_model_dir()).expect("the golden front end loads")
}

/// Where one image of a case went in the reference's prompt.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageSpan {
    /// The image's file name under `testdata/golden/images`.
    pub image: String,
    /// Index of its first token in `input_ids`.
    pub start: usize,
    /// Patch grid, `[rows, columns]`.
    pub grid: [usize; 2],
    /// Size after resizing, `[height, width]`.
    pub resized_hw: [usize; 2],
    /// Its tokens (`rows · columns`).
    pub tokens: usize,
}

/// One case of `golden.json`: a conversation and what the reference computed for it.
#[derive(Debug, Clone, Deserialize)]
pub struct GoldenCase {
    pub name: String,
    /// The chat turns; each `<image>` marks where the next image goes.
    pub messages: Vec<ChatMessage>,
    /// Image file names under `testdata/golden/images`, in prompt order.
    pub images: Vec<String>,
    /// `auto`, `think` or `nothink`.
    #[serde(rename = "mode")]
    pub mode_name: String,
    /// The rendered template plus the mode's suffix.
    pub prompt_text: String,
    /// The whole prompt, image positions as 100256.
    pub input_ids: Vec<u32>,
    pub image_spans: Vec<ImageSpan>,
    /// The reference's 12 greedy tokens (no stop handling) and their text.
    pub greedy_tokens: Vec<u32>,
    pub greedy_text: String,
    /// The smallest gap between the two best logits over the greedy steps.
    pub min_top2_gap: f64,
}

impl GoldenCase {
    /// The reasoning mode.
    pub fn mode(&self) -> Mode {
        self.mode_name
            .parse()
            .expect("a golden case names a known mode")
    }

    /// The images' paths, in prompt order.
    pub fn image_paths(&self) -> Vec<PathBuf> {
        self.images
            .iter()
            .map(|file| golden_dir().join("images").join(file))
            .collect()
    }

    /// The images' encoded bytes, in prompt order.
    pub fn image_bytes(&self) -> Vec<Vec<u8>> {
        self.image_paths()
            .iter()
            .map(|path| std::fs::read(path).expect("a golden image reads"))
            .collect()
    }

    /// The case's messages, images and mode through `preparer` (the real front end).
    pub fn prepare(&self, preparer: &RequestPreparer) -> PreparedRequest {
        preparer
            .prepare(&self.messages, &self.image_bytes(), self.mode())
            .expect("a golden case prepares")
    }
}

/// A golden case with its prompt and images prepared by the real front end.
pub struct PreparedCase {
    pub golden: GoldenCase,
    pub request: PreparedRequest,
}

/// Every golden case, prepared by `preparer`.
pub fn prepared_golden_cases(preparer: &RequestPreparer) -> Vec<PreparedCase> {
    golden_cases()
        .into_iter()
        .map(|golden| PreparedCase {
            request: golden.prepare(preparer),
            golden,
        })
        .collect()
}

/// Every case of `golden.json`, in file order.
pub fn golden_cases() -> Vec<GoldenCase> {
    #[derive(Deserialize)]
    struct GoldenFile {
        cases: Vec<GoldenCase>,
    }
    let json =
        std::fs::read_to_string(golden_dir().join("golden.json")).expect("golden.json reads");
    serde_json::from_str::<GoldenFile>(&json)
        .expect("golden.json parses")
        .cases
}

/// The case called `name`.
pub fn golden_case(name: &str) -> GoldenCase {
    golden_cases()
        .into_iter()
        .find(|case| case.name == name)
        .unwrap_or_else(|| panic!("no golden case {name:?}"))
}

/// The reference's tensors from `golden.safetensors`.
pub struct GoldenTensors(HashMap<String, Tensor>);

impl GoldenTensors {
    /// Loads `golden.safetensors`.
    pub fn load() -> Self {
        let path = golden_dir().join("golden.safetensors");
        GoldenTensors(
            candle_core::safetensors::load(path, &Device::Cpu).expect("golden.safetensors loads"),
        )
    }

    fn values(&self, key: &str) -> Vec<f32> {
        let tensor = self
            .0
            .get(key)
            .unwrap_or_else(|| panic!("golden.safetensors has no {key}"));
        tensor
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("an f32 golden tensor")
    }

    /// Projector output for image `image` of `case`, `[patches · text_hidden]` flattened.
    pub fn image_features(&self, case: &str, image: usize) -> Vec<f32> {
        self.values(&format!("{case}.image{image}.features"))
    }

    /// Logits at the last prompt position of `case`: the first generated token's distribution.
    pub fn prefill_last_logits(&self, case: &str) -> Vec<f32> {
        self.values(&format!("{case}.prefill_last_logits"))
    }

    /// Logits at the last greedy step of `case`.
    pub fn greedy_last_logits(&self, case: &str) -> Vec<f32> {
        self.values(&format!("{case}.greedy_last_logits"))
    }
}

/// `ln softmax(logits)` computed the plain way in f64, as a reference for reported log
/// probabilities.
pub fn reference_log_softmax(logits: &[f32]) -> Vec<f64> {
    let logits: Vec<f64> = logits.iter().map(|&l| f64::from(l)).collect();
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln() + max;
    logits.iter().map(|l| l - log_sum).collect()
}

/// The largest absolute difference between `got` and `expected`, relative to the largest
/// magnitude in `expected`.
pub fn max_relative_difference(got: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(got.len(), expected.len(), "lengths differ");
    let scale = expected
        .iter()
        .fold(f32::MIN_POSITIVE, |m, v| m.max(v.abs()));
    got.iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
        / scale
}
