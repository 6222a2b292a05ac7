//! Test fixtures of the preprocessing module: the golden images with their reference results, and
//! the small files under `testdata/preprocess/`.

use super::{PatchBudget, PreprocessConfig};
use crate::testing::{golden_cases, golden_dir};
use std::path::PathBuf;

/// One image of a golden case and what the reference made of it.
pub struct GoldenImage {
    /// File name under `testdata/golden/images/`.
    pub file: String,
    /// Key of its `resized_u8` tensor in `golden.safetensors`.
    tensor: String,
    /// Size of the file's picture.
    pub source_height: usize,
    pub source_width: usize,
    /// Size after resizing, `(height, width)`.
    pub resized_hw: (usize, usize),
    /// Patch grid, `(rows, columns)`.
    pub grid: (usize, usize),
}

impl GoldenImage {
    /// The file's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(golden_dir().join("images").join(&self.file)).expect("golden image file")
    }

    /// The reference's resized pixels, `[H, W, 3]` u8.
    pub fn resized_u8(&self) -> Vec<u8> {
        let file =
            std::fs::read(golden_dir().join("golden.safetensors")).expect("golden.safetensors");
        let tensors =
            safetensors::SafeTensors::deserialize(&file).expect("parse golden.safetensors");
        let tensor = tensors.tensor(&self.tensor).expect("resized_u8 tensor");
        assert_eq!(
            tensor.shape(),
            [self.resized_hw.0, self.resized_hw.1, 3],
            "{}",
            self.tensor
        );
        tensor.data().to_vec()
    }
}

/// Every image of every golden case, in case order.
pub fn golden_images() -> Vec<GoldenImage> {
    let mut images = Vec::new();
    for case in golden_cases() {
        for (index, span) in case.image_spans.into_iter().enumerate() {
            let (source_width, source_height) =
                image::ImageReader::open(golden_dir().join("images").join(&span.image))
                    .and_then(|reader| reader.with_guessed_format())
                    .expect("open golden image")
                    .into_dimensions()
                    .expect("golden image header");
            images.push(GoldenImage {
                tensor: format!("{}.image{index}.resized_u8", case.name),
                file: span.image,
                source_height: source_height as usize,
                source_width: source_width as usize,
                resized_hw: (span.resized_hw[0], span.resized_hw[1]),
                grid: (span.grid[0], span.grid[1]),
            });
        }
    }
    assert_eq!(images.len(), 4, "the golden set has four images");
    images
}

/// The golden checkpoint's preprocessor config.
pub fn golden_config() -> PreprocessConfig {
    PreprocessConfig::from_file(golden_dir().join("model/preprocessor_config.json"))
        .expect("golden preprocessor config")
}

/// The golden checkpoint's patch budget.
pub fn golden_budget() -> PatchBudget {
    golden_config().patch_budget()
}

/// A file under `testdata/preprocess/`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/preprocess")
        .join(name)
}

/// Reads every tensor of a safetensors fixture as `(name, shape, raw bytes)`.
pub fn read_safetensors(name: &str) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let file = std::fs::read(fixture(name)).expect("safetensors fixture");
    let tensors = safetensors::SafeTensors::deserialize(&file).expect("parse safetensors fixture");
    tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec(), view.data().to_vec()))
        .collect()
}
