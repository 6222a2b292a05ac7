//! The image processor's settings, read from a checkpoint's `preprocessor_config.json`.

use super::patch_budget::{InvalidPatchBudget, PatchBudget};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Validated settings of `Siglip2ImageProcessorNoUpscale`.
///
/// Deserializes from `preprocessor_config.json`; keys other than `patch_size`, `min_num_patches`,
/// `max_num_patches`, `do_rescale`, `rescale_factor`, `do_normalize`, `image_mean` and `image_std`
/// are ignored (resampling is always PIL bilinear, which is what the family's `resample: 2` means).
/// Invalid values (an unsatisfiable patch budget, a zero or non-finite `image_std`, a non-finite
/// `rescale_factor`) fail deserialization, so a constructed config is always usable.
///
/// ```no_run
/// use fovea_model::preprocess::PreprocessConfig;
/// let cfg = PreprocessConfig::from_file("checkpoint/preprocessor_config.json")?;
/// assert_eq!(cfg.patch_budget().patch_size(), 16);
/// # Ok::<(), fovea_model::preprocess::PreprocessConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawPreprocessConfig")]
pub struct PreprocessConfig {
    budget: PatchBudget,
    /// Factor applied to u8 samples, `None` when `do_rescale` is false.
    pub(super) rescale_factor: Option<f64>,
    /// Per-channel `(mean, std)`, `None` when `do_normalize` is false.
    pub(super) normalization: Option<([f64; 3], [f64; 3])>,
}

/// Why a preprocessor config could not be loaded.
#[derive(Debug, Error)]
pub enum PreprocessConfigError {
    /// The file could not be read.
    #[error("cannot read the preprocessor config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The file is not JSON of the expected shape, or its values are unusable.
    #[error("the preprocessor config {path} is invalid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What serde or validation reported.
        source: serde_json::Error,
    },
}

impl PreprocessConfig {
    /// Reads and validates `preprocessor_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, PreprocessConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| PreprocessConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| PreprocessConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The patch size and patch-count range images are resized into.
    pub fn patch_budget(&self) -> PatchBudget {
        self.budget
    }
}

/// `preprocessor_config.json` as written, before validation.
#[derive(Deserialize)]
struct RawPreprocessConfig {
    patch_size: usize,
    min_num_patches: usize,
    max_num_patches: usize,
    #[serde(default = "enabled")]
    do_rescale: bool,
    rescale_factor: f64,
    #[serde(default = "enabled")]
    do_normalize: bool,
    image_mean: [f64; 3],
    image_std: [f64; 3],
}

fn enabled() -> bool {
    true
}

/// Values of a preprocessor config that cannot be used.
#[derive(Debug, Error)]
enum InvalidPreprocessConfig {
    #[error(transparent)]
    Budget(#[from] InvalidPatchBudget),
    #[error("rescale_factor must be finite, got {0}")]
    RescaleFactor(f64),
    #[error(
        "image_mean must be finite and image_std finite and nonzero, got mean {mean:?}, std {std:?}"
    )]
    Normalization { mean: [f64; 3], std: [f64; 3] },
}

impl TryFrom<RawPreprocessConfig> for PreprocessConfig {
    type Error = InvalidPreprocessConfig;

    fn try_from(raw: RawPreprocessConfig) -> Result<Self, Self::Error> {
        let budget = PatchBudget::new(raw.patch_size, raw.min_num_patches, raw.max_num_patches)?;
        if !raw.rescale_factor.is_finite() {
            return Err(InvalidPreprocessConfig::RescaleFactor(raw.rescale_factor));
        }
        let (mean, std) = (raw.image_mean, raw.image_std);
        if !mean.iter().all(|m| m.is_finite()) || !std.iter().all(|s| s.is_finite() && *s != 0.0) {
            return Err(InvalidPreprocessConfig::Normalization { mean, std });
        }
        Ok(Self {
            budget,
            rescale_factor: raw.do_rescale.then_some(raw.rescale_factor),
            normalization: raw.do_normalize.then_some((mean, std)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::golden_dir;

    fn parse(json: &str) -> Result<PreprocessConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn golden_config_loads_with_unknown_keys_ignored() {
        let cfg = PreprocessConfig::from_file(golden_dir().join("model/preprocessor_config.json"))
            .expect("golden preprocessor config");
        assert_eq!(
            cfg.patch_budget(),
            PatchBudget::new(16, 256, 3600).expect("budget")
        );
        assert_eq!(cfg.rescale_factor, Some(0.00392156862745098));
        assert_eq!(cfg.normalization, Some(([0.5; 3], [0.5; 3])));
    }

    #[test]
    fn unusable_values_are_rejected_when_parsing() {
        let valid = r#"{"patch_size": 16, "min_num_patches": 256, "max_num_patches": 3600,
            "rescale_factor": 0.00392156862745098, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}"#;
        assert!(parse(valid).is_ok());
        let zero_std = valid.replace(
            r#""image_std": [0.5, 0.5, 0.5]"#,
            r#""image_std": [0.5, 0, 0.5]"#,
        );
        assert!(
            parse(&zero_std)
                .unwrap_err()
                .to_string()
                .contains("image_std")
        );
        let inverted_budget =
            valid.replace("\"min_num_patches\": 256", "\"min_num_patches\": 4000");
        assert!(
            parse(&inverted_budget)
                .unwrap_err()
                .to_string()
                .contains("min_num_patches")
        );
        let missing_patch_size = valid.replace("\"patch_size\": 16,", "");
        assert!(
            parse(&missing_patch_size)
                .unwrap_err()
                .to_string()
                .contains("patch_size")
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = PreprocessConfig::from_file("/nonexistent/preprocessor_config.json").unwrap_err();
        assert!(matches!(err, PreprocessConfigError::Read { .. }));
        assert!(
            err.to_string()
                .contains("/nonexistent/preprocessor_config.json")
        );
    }
}
