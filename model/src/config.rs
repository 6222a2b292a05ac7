//! The checkpoint's `config.json` and `generation_config.json`, parsed and checked once.
//!
//! Every size the network uses is read here; nothing else in the crate hard-codes a dimension.
//! [`ModelConfig::from_dir`] turns the raw JSON into validated, typed sizes, so an inconsistent
//! config fails at load time with the offending key named rather than deep inside a forward pass.

use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{ModelError, Result};

/// Sizes of the Phi-4 decoder (the Phi-3 architecture).
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// How many leading dimensions of each head RoPE rotates (`head_dim * partial_rotary_factor`).
    pub rotary_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
}

/// Sizes of the SigLIP-2 NaFlex vision tower.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    /// Layers in the checkpoint; the network runs all but the last (features come from the second-to-last).
    pub num_layers: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    /// Side of the square learned position grid (`sqrt(num_patches)`, 16 for SigLIP-2).
    pub position_grid_side: usize,
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// Encoder layers that contribute to the features (all but the last one).
    pub fn used_layers(&self) -> usize {
        self.num_layers - 1
    }

    /// Length of one flattened patch (`patch_size² · channels`).
    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.num_channels
    }
}

/// The whole model's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    /// Token ids that end generation (`eos_token_id` of config.json and generation_config.json).
    pub eos_token_ids: Vec<u32>,
    pub min_num_patches: usize,
    pub max_num_patches: usize,
}

#[derive(Deserialize)]
struct RawConfig {
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    intermediate_size: Option<usize>,
    vocab_size: Option<usize>,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    #[serde(default = "one")]
    partial_rotary_factor: f64,
    #[serde(default = "default_rms_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    hidden_act: Option<String>,
    eos_token_id: Option<EosIds>,
    mm_hidden_size: Option<usize>,
    mm_projector_type: Option<String>,
    min_num_patches: Option<usize>,
    max_num_patches: Option<usize>,
    vision_config: Option<RawVisionConfig>,
}

#[derive(Deserialize)]
struct RawVisionConfig {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_attention_heads: Option<usize>,
    num_hidden_layers: Option<usize>,
    #[serde(default = "default_patch_size")]
    patch_size: usize,
    #[serde(default = "default_num_patches")]
    num_patches: usize,
    #[serde(default = "default_channels")]
    num_channels: usize,
    #[serde(default = "default_ln_eps")]
    layer_norm_eps: f64,
    hidden_act: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EosIds {
    One(u32),
    Many(Vec<u32>),
}

impl EosIds {
    fn into_vec(self) -> Vec<u32> {
        match self {
            EosIds::One(id) => vec![id],
            EosIds::Many(ids) => ids,
        }
    }
}

#[derive(Deserialize)]
struct RawGenerationConfig {
    eos_token_id: Option<EosIds>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}
fn one() -> f64 {
    1.0
}
fn default_rms_eps() -> f64 {
    1e-5
}
fn default_max_positions() -> usize {
    32_768
}
fn default_patch_size() -> usize {
    16
}
fn default_num_patches() -> usize {
    256
}
fn default_channels() -> usize {
    3
}
fn default_ln_eps() -> f64 {
    1e-6
}

/// Reads and parses one JSON file of the checkpoint directory.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::BadJson {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn required(value: Option<usize>, key: &str) -> Result<usize> {
    match value {
        None => Err(ModelError::config(key, "is missing")),
        Some(0) => Err(ModelError::config(key, "must be positive")),
        Some(v) => Ok(v),
    }
}

fn divides(
    numerator: usize,
    numerator_key: &str,
    denominator: usize,
    denominator_key: &str,
) -> Result<()> {
    if !numerator.is_multiple_of(denominator) {
        return Err(ModelError::config(
            numerator_key,
            format!("({numerator}) must be a multiple of {denominator_key} ({denominator})"),
        ));
    }
    Ok(())
}

impl ModelConfig {
    /// Reads `config.json` (and `generation_config.json`, when present) from a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let raw: RawConfig = read_json(&dir.join("config.json"))?;
        let generation_path = dir.join("generation_config.json");
        let generation_eos = if generation_path.exists() {
            let generation: RawGenerationConfig = read_json(&generation_path)?;
            generation.eos_token_id.map(EosIds::into_vec)
        } else {
            None
        };
        Self::from_raw(raw, generation_eos)
    }

    /// Parses `config.json` text (without generation_config.json).
    pub fn from_json_str(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| ModelError::BadJson {
            path: "config.json".into(),
            message: e.to_string(),
        })?;
        Self::from_raw(raw, None)
    }

    fn from_raw(raw: RawConfig, generation_eos: Option<Vec<u32>>) -> Result<Self> {
        let text = text_config(&raw)?;
        let raw_vision = raw
            .vision_config
            .as_ref()
            .ok_or_else(|| ModelError::config("vision_config", "is missing"))?;
        let vision = vision_config(raw_vision)?;
        if let Some(mm_hidden) = raw.mm_hidden_size
            && mm_hidden != vision.hidden_size
        {
            return Err(ModelError::config(
                "mm_hidden_size",
                format!(
                    "({mm_hidden}) must equal vision_config.hidden_size ({})",
                    vision.hidden_size
                ),
            ));
        }
        match raw.mm_projector_type.as_deref() {
            None | Some("mlp2x_gelu") => {}
            Some(other) => {
                return Err(ModelError::config(
                    "mm_projector_type",
                    format!("is {other:?}; only \"mlp2x_gelu\" is supported"),
                ));
            }
        }
        let min_num_patches = raw.min_num_patches.unwrap_or(256);
        let max_num_patches = raw.max_num_patches.unwrap_or(3600);
        if min_num_patches == 0 || min_num_patches > max_num_patches {
            return Err(ModelError::config(
                "min_num_patches",
                format!(
                    "({min_num_patches}) must be positive and at most max_num_patches ({max_num_patches})"
                ),
            ));
        }
        let mut eos_token_ids = raw.eos_token_id.map(EosIds::into_vec).unwrap_or_default();
        for id in generation_eos.into_iter().flatten() {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
        Ok(ModelConfig {
            text,
            vision,
            eos_token_ids,
            min_num_patches,
            max_num_patches,
        })
    }
}

fn text_config(raw: &RawConfig) -> Result<TextConfig> {
    let hidden_size = required(raw.hidden_size, "hidden_size")?;
    let num_heads = required(raw.num_attention_heads, "num_attention_heads")?;
    let num_kv_heads = required(
        raw.num_key_value_heads.or(Some(num_heads)),
        "num_key_value_heads",
    )?;
    divides(
        num_heads,
        "num_attention_heads",
        num_kv_heads,
        "num_key_value_heads",
    )?;
    let head_dim = match raw.head_dim {
        Some(d) => required(Some(d), "head_dim")?,
        None => {
            divides(hidden_size, "hidden_size", num_heads, "num_attention_heads")?;
            hidden_size / num_heads
        }
    };
    if !(raw.partial_rotary_factor > 0.0 && raw.partial_rotary_factor <= 1.0) {
        return Err(ModelError::config(
            "partial_rotary_factor",
            "must be in (0, 1]",
        ));
    }
    let rotary_dim = (head_dim as f64 * raw.partial_rotary_factor) as usize;
    if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) {
        return Err(ModelError::config(
            "partial_rotary_factor",
            format!(
                "gives an odd or empty rotary dimension ({rotary_dim}) for head_dim {head_dim}"
            ),
        ));
    }
    if let Some(scaling) = &raw.rope_scaling
        && !scaling.is_null()
    {
        let kind = scaling
            .get("rope_type")
            .or_else(|| scaling.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("<none>");
        if kind != "default" {
            return Err(ModelError::config(
                "rope_scaling",
                format!("has type {kind:?}; only null or \"default\" is supported"),
            ));
        }
    }
    if raw.tie_word_embeddings {
        return Err(ModelError::config(
            "tie_word_embeddings",
            "is true; this family has an untied lm_head",
        ));
    }
    if raw.attention_bias {
        return Err(ModelError::config(
            "attention_bias",
            "is true; this family has no attention bias",
        ));
    }
    match raw.hidden_act.as_deref() {
        None | Some("silu") => {}
        Some(other) => {
            return Err(ModelError::config(
                "hidden_act",
                format!("is {other:?}; the Phi-4 decoder uses \"silu\""),
            ));
        }
    }
    if raw.rope_theta.is_nan() || raw.rope_theta <= 0.0 {
        return Err(ModelError::config("rope_theta", "must be positive"));
    }
    Ok(TextConfig {
        hidden_size,
        num_layers: required(raw.num_hidden_layers, "num_hidden_layers")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rotary_dim,
        intermediate_size: required(raw.intermediate_size, "intermediate_size")?,
        vocab_size: required(raw.vocab_size, "vocab_size")?,
        rope_theta: raw.rope_theta,
        rms_norm_eps: raw.rms_norm_eps,
        max_position_embeddings: required(
            Some(raw.max_position_embeddings),
            "max_position_embeddings",
        )?,
    })
}

fn vision_config(raw: &RawVisionConfig) -> Result<VisionConfig> {
    let hidden_size = required(raw.hidden_size, "vision_config.hidden_size")?;
    let num_heads = required(raw.num_attention_heads, "vision_config.num_attention_heads")?;
    divides(
        hidden_size,
        "vision_config.hidden_size",
        num_heads,
        "vision_config.num_attention_heads",
    )?;
    let num_layers = required(raw.num_hidden_layers, "vision_config.num_hidden_layers")?;
    if num_layers < 2 {
        return Err(ModelError::config(
            "vision_config.num_hidden_layers",
            "must be at least 2 (features come from the second-to-last layer)",
        ));
    }
    let position_grid_side = (raw.num_patches as f64).sqrt().round() as usize;
    if position_grid_side * position_grid_side != raw.num_patches || raw.num_patches == 0 {
        return Err(ModelError::config(
            "vision_config.num_patches",
            format!("({}) must be a positive perfect square", raw.num_patches),
        ));
    }
    match raw.hidden_act.as_deref() {
        None | Some("gelu_pytorch_tanh") => {}
        Some(other) => {
            return Err(ModelError::config(
                "vision_config.hidden_act",
                format!("is {other:?}; SigLIP-2 uses \"gelu_pytorch_tanh\""),
            ));
        }
    }
    Ok(VisionConfig {
        hidden_size,
        intermediate_size: required(raw.intermediate_size, "vision_config.intermediate_size")?,
        num_heads,
        num_layers,
        patch_size: required(Some(raw.patch_size), "vision_config.patch_size")?,
        num_channels: required(Some(raw.num_channels), "vision_config.num_channels")?,
        position_grid_side,
        layer_norm_eps: raw.layer_norm_eps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::golden_dir;

    fn golden_config_json() -> serde_json::Value {
        let text = std::fs::read_to_string(golden_dir().join("model/config.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn parse(value: &serde_json::Value) -> Result<ModelConfig> {
        ModelConfig::from_json_str(&value.to_string())
    }

    #[test]
    fn golden_config_reads_every_size() {
        let cfg = ModelConfig::from_dir(&golden_dir().join("model")).unwrap();
        assert_eq!(cfg.text.hidden_size, 64);
        assert_eq!(cfg.text.num_layers, 2);
        assert_eq!(
            (cfg.text.num_heads, cfg.text.num_kv_heads, cfg.text.head_dim),
            (4, 2, 16)
        );
        assert_eq!(cfg.text.rotary_dim, 16);
        assert_eq!(cfg.text.intermediate_size, 160);
        assert_eq!(cfg.text.vocab_size, 100352);
        assert_eq!(cfg.text.rope_theta, 500000.0);
        assert_eq!(cfg.vision.hidden_size, 32);
        assert_eq!(cfg.vision.used_layers(), 2);
        assert_eq!(cfg.vision.position_grid_side, 16);
        assert_eq!(cfg.eos_token_ids, vec![100265]);
        assert_eq!((cfg.min_num_patches, cfg.max_num_patches), (256, 3600));
    }

    #[test]
    fn unknown_rope_scaling_type_is_named() {
        let mut json = golden_config_json();
        json["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0});
        let err = parse(&json).unwrap_err().to_string();
        assert!(
            err.contains("rope_scaling") && err.contains("yarn"),
            "{err}"
        );
    }

    #[test]
    fn heads_not_divisible_by_kv_heads_is_named() {
        let mut json = golden_config_json();
        json["num_key_value_heads"] = serde_json::json!(3);
        let err = parse(&json).unwrap_err().to_string();
        assert!(
            err.contains("num_attention_heads") && err.contains("num_key_value_heads"),
            "{err}"
        );
    }

    #[test]
    fn missing_size_is_named() {
        let mut json = golden_config_json();
        json.as_object_mut().unwrap().remove("intermediate_size");
        let err = parse(&json).unwrap_err().to_string();
        assert!(err.contains("`intermediate_size` is missing"), "{err}");
    }

    #[test]
    fn projector_width_must_match_vision_width() {
        let mut json = golden_config_json();
        json["mm_hidden_size"] = serde_json::json!(48);
        let err = parse(&json).unwrap_err().to_string();
        assert!(err.contains("mm_hidden_size"), "{err}");
    }
}
