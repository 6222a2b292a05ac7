//! Loading checkpoints that are not right: every error names what is wrong.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use fovea_model::{ModelError, Phi4VisionModel};
use tempfile::TempDir;

fn golden_model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden/model")
}

/// An empty directory, removed when dropped.
fn temp_dir(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("fovea-checkpoint-{name}-"))
        .tempdir()
        .unwrap()
}

/// A copy of the golden checkpoint as a single `model.safetensors`, with `edit` applied to its tensors.
fn edited_checkpoint(name: &str, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> TempDir {
    let temp = temp_dir(name);
    let dir = temp.path();
    let golden = golden_model_dir();
    for file in [
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
    ] {
        std::fs::copy(golden.join(file), dir.join(file)).unwrap();
    }
    let mut tensors = HashMap::new();
    for shard in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        tensors.extend(candle_core::safetensors::load(golden.join(shard), &Device::Cpu).unwrap());
    }
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    temp
}

fn load(dir: &Path) -> Result<Phi4VisionModel, ModelError> {
    Phi4VisionModel::load(dir, DType::F32, &Device::Cpu)
}

#[test]
fn single_file_checkpoint_loads_and_skips_unused_vision_tensors() {
    let dir = edited_checkpoint("single", |tensors| {
        // The network never reads the pooling head: dropping it changes nothing.
        tensors.retain(|name, _| !name.contains(".head."));
    });
    load(dir.path()).expect("single-file checkpoint without the unused head loads");
}

#[test]
fn missing_tensor_is_named() {
    let name = "model.layers.1.mlp.down_proj.weight";
    let dir = edited_checkpoint("missing", |tensors| {
        tensors.remove(name);
    });
    let err = load(dir.path())
        .err()
        .expect("a checkpoint without a decoder weight must not load")
        .to_string();
    assert!(err.contains(name), "{err}");
}

#[test]
fn misshaped_tensor_is_named_with_both_shapes() {
    let name = "model.mm_projector.0.weight";
    let dir = edited_checkpoint("misshaped", |tensors| {
        tensors.insert(
            name.to_string(),
            Tensor::zeros((64, 31), DType::BF16, &Device::Cpu).unwrap(),
        );
    });
    let err = load(dir.path())
        .err()
        .expect("a mis-shaped projector must not load")
        .to_string();
    assert!(
        err.contains(name) && err.contains("[64, 31]") && err.contains("[64, 32]"),
        "{err}"
    );
}

#[test]
fn integer_tensor_is_refused_by_dtype() {
    let name = "model.norm.weight";
    let dir = edited_checkpoint("dtype", |tensors| {
        tensors.insert(
            name.to_string(),
            Tensor::zeros(64, DType::U32, &Device::Cpu).unwrap(),
        );
    });
    let err = load(dir.path())
        .err()
        .expect("an integer norm weight must not load")
        .to_string();
    assert!(err.contains(name) && err.contains("U32"), "{err}");
}

#[test]
fn directory_without_weights_says_so() {
    let dir = temp_dir("empty");
    std::fs::copy(
        golden_model_dir().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let err = load(dir.path())
        .err()
        .expect("no weights, no model")
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}
