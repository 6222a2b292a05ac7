//! The golden fixture (`fovea_model::testing`) in the shape the disaggregation tests use: the f32
//! model, and every golden case prepared by the real front end with its encoded image files and
//! its 12 reference greedy tokens.

#![allow(dead_code)] // Each test binary uses its own part of this module.

pub mod nodes;

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::DType;
use fovea_model::Phi4VisionModel;
use fovea_model::input::{PreparedRequest, RequestPreparer};
use fovea_model::testing;

pub fn model_dir() -> PathBuf {
    testing::golden_model_dir()
}

/// The golden checkpoint, computing in f32.
pub fn load_model() -> Arc<Phi4VisionModel> {
    Arc::new(testing::golden_model(DType::F32))
}

/// A two-thread runtime for a test's clients (its workers run their own).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn preparer() -> RequestPreparer {
    testing::golden_preparer()
}

/// One golden case: its prepared request, its image files and the reference's greedy tokens.
pub struct GoldenCase {
    pub name: String,
    pub request: PreparedRequest,
    /// The encoded image files, in prompt order.
    pub image_files: Vec<Vec<u8>>,
    pub greedy_tokens: Vec<u32>,
}

/// Every golden case, prepared by `preparer`.
pub fn golden_cases(preparer: &RequestPreparer) -> Vec<GoldenCase> {
    testing::golden_cases()
        .into_iter()
        .map(|case| GoldenCase {
            request: case.prepare(preparer),
            image_files: case.image_bytes(),
            name: case.name,
            greedy_tokens: case.greedy_tokens,
        })
        .collect()
}
