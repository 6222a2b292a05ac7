//! Random-weight checkpoints in the exact Hugging Face directory format of the family, so that
//! anyone can run Fovea (and its tests and benchmarks) without downloading 30 GB.
//!
//! The tensor list comes from the network's own loader ([`Phi4VisionModel::tensor_inventory`]),
//! plus the tensors real checkpoints carry that the network skips (the vision tower's last layer,
//! `post_layernorm` and the pooling `head.*`), so the files look like the real thing.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use half::bf16;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::model::Phi4VisionModel;
use crate::random::SplitMix64;
use crate::text::build_phi4_tokenizer_json;

/// The chat template of Phi-4-reasoning-vision, shipped in every demo checkpoint.
pub const CHAT_TEMPLATE: &str = include_str!("../assets/chat_template.jinja");

/// Sizes of a demo checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoPreset {
    /// The golden fixture's sizes (text hidden 64, 2 layers; vision hidden 32, 3 layers): fast tests.
    Tiny,
    /// About 150M parameters read per decoding step (hidden 768, 12 layers, 12 heads, 4 KV heads;
    /// vision hidden 384, 6 layers): the model of every CPU benchmark.
    Bench,
}

impl FromStr for DemoPreset {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "tiny" => Ok(DemoPreset::Tiny),
            "bench" => Ok(DemoPreset::Bench),
            other => Err(format!(
                "unknown preset {other:?}; expected \"tiny\" or \"bench\""
            )),
        }
    }
}

struct PresetSizes {
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    intermediate: usize,
    vision_hidden: usize,
    vision_layers: usize,
    vision_heads: usize,
    vision_intermediate: usize,
}

impl DemoPreset {
    fn sizes(self) -> PresetSizes {
        match self {
            DemoPreset::Tiny => PresetSizes {
                hidden: 64,
                layers: 2,
                heads: 4,
                kv_heads: 2,
                intermediate: 160,
                vision_hidden: 32,
                vision_layers: 3,
                vision_heads: 2,
                vision_intermediate: 72,
            },
            DemoPreset::Bench => PresetSizes {
                hidden: 768,
                layers: 12,
                heads: 12,
                kv_heads: 4,
                intermediate: 2048,
                vision_hidden: 384,
                vision_layers: 6,
                vision_heads: 6,
                vision_intermediate: 1536,
            },
        }
    }

    /// The `config.json` of this preset, with the real model's keys.
    pub fn config_json(self) -> serde_json::Value {
        let s = self.sizes();
        json!({
            "architectures": ["Phi4ForCausalLMV"],
            "attention_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": 100257,
            "dtype": "bfloat16",
            "embd_pdrop": 0.0,
            "eos_token_id": 100265,
            "hidden_act": "silu",
            "hidden_size": s.hidden,
            "image_aspect_ratio": "square",
            "initializer_range": 0.02,
            "intermediate_size": s.intermediate,
            "max_num_patches": 3600,
            "max_position_embeddings": 32768,
            "min_num_patches": 256,
            "mm_hidden_size": s.vision_hidden,
            "mm_projector_type": "mlp2x_gelu",
            "mm_vision_tower": "google/siglip2-so400m-patch16-naflex",
            "model_type": "phi4-siglip",
            "num_attention_heads": s.heads,
            "num_hidden_layers": s.layers,
            "num_key_value_heads": s.kv_heads,
            "original_max_position_embeddings": 32768,
            "pad_token_id": 100349,
            "partial_rotary_factor": 1.0,
            "resid_pdrop": 0.0,
            "rms_norm_eps": 1e-05,
            "rope_scaling": null,
            "rope_theta": 500000.0,
            "sliding_window": null,
            "tie_word_embeddings": false,
            "tokenizer_model_max_length": 8192,
            "use_cache": false,
            "use_mm_proj": true,
            "use_s2": false,
            "vocab_size": 100352,
            "vision_config": {
                "hidden_size": s.vision_hidden,
                "intermediate_size": s.vision_intermediate,
                "model_type": "siglip2_vision_model",
                "num_attention_heads": s.vision_heads,
                "num_hidden_layers": s.vision_layers
            }
        })
    }
}

fn preprocessor_config_json() -> serde_json::Value {
    json!({
        "do_convert_rgb": true,
        "do_normalize": true,
        "do_rescale": true,
        "do_resize": true,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "Siglip2ImageProcessorNoUpscale",
        "max_num_patches": 3600,
        "min_num_patches": 256,
        "patch_size": 16,
        "rescale_factor": 1.0 / 255.0,
        "resample": 2
    })
}

fn generation_config_json() -> serde_json::Value {
    json!({
        "bos_token_id": 100257,
        "do_sample": true,
        "eos_token_id": [100265],
        "pad_token_id": 100349,
        "temperature": 0.8,
        "top_p": 0.95
    })
}

/// The tokenizer settings the chat template reads (special tokens); the vocabulary is in tokenizer.json.
fn tokenizer_config_json() -> serde_json::Value {
    json!({
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": 32768,
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|dummy_85|>",
        "unk_token": "<|endoftext|>",
        "add_bos_token": false,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false
    })
}

const VISION_PREFIX: &str = "model.vision_tower.vision_tower.vision_model";

/// Tensors of real checkpoints that the network never reads: the last encoder layer (a copy of
/// layer 0's shapes), `post_layernorm` and the attention-pooling head.
fn skipped_tensors(
    config: &ModelConfig,
    inventory: &[(String, Vec<usize>)],
) -> Vec<(String, Vec<usize>)> {
    let (h, inter) = (config.vision.hidden_size, config.vision.intermediate_size);
    let layer0 = format!("{VISION_PREFIX}.encoder.layers.0.");
    let last = format!(
        "{VISION_PREFIX}.encoder.layers.{}.",
        config.vision.num_layers - 1
    );
    let mut extra: Vec<(String, Vec<usize>)> = inventory
        .iter()
        .filter_map(|(name, shape)| {
            name.strip_prefix(&layer0)
                .map(|rest| (format!("{last}{rest}"), shape.clone()))
        })
        .collect();
    let head = [
        ("post_layernorm.weight", vec![h]),
        ("post_layernorm.bias", vec![h]),
        ("head.probe", vec![1, 1, h]),
        ("head.attention.in_proj_weight", vec![3 * h, h]),
        ("head.attention.in_proj_bias", vec![3 * h]),
        ("head.attention.out_proj.weight", vec![h, h]),
        ("head.attention.out_proj.bias", vec![h]),
        ("head.layernorm.weight", vec![h]),
        ("head.layernorm.bias", vec![h]),
        ("head.mlp.fc1.weight", vec![inter, h]),
        ("head.mlp.fc1.bias", vec![inter]),
        ("head.mlp.fc2.weight", vec![h, inter]),
        ("head.mlp.fc2.bias", vec![h]),
    ];
    extra.extend(
        head.into_iter()
            .map(|(name, shape)| (format!("{VISION_PREFIX}.{name}"), shape)),
    );
    extra
}

/// A tensor's name, shape and little-endian bf16 bytes.
type RandomTensor = (String, Vec<usize>, Vec<u8>);

/// Random bf16 values: normalisation scales near 1, everything else N(0, 0.02²).
fn random_values(name: &str, count: usize, rng: &mut SplitMix64) -> Vec<u8> {
    let center = if name.contains("norm") && name.ends_with(".weight") {
        1.0
    } else {
        0.0
    };
    let mut bytes = Vec::with_capacity(count * 2);
    for _ in 0..count {
        let value = bf16::from_f64(center + 0.02 * rng.next_normal());
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes
}

fn write_file(path: &Path, contents: &[u8]) -> Result<()> {
    std::fs::write(path, contents).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values always serialise");
    write_file(path, text.as_bytes())
}

/// Writes a complete random-weight checkpoint of `preset` into `out` (created if needed), in two
/// safetensors shards with an index. The same seed writes the same bytes.
pub fn write_demo_checkpoint(preset: DemoPreset, out: &Path, seed: u64) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|source| ModelError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let config_json = preset.config_json();
    let config = ModelConfig::from_json_str(&config_json.to_string())?;
    let mut tensors = Phi4VisionModel::tensor_inventory(&config)?;
    let skipped = skipped_tensors(&config, &tensors);
    tensors.extend(skipped);

    let mut rng = SplitMix64::new(seed);
    let data: Vec<RandomTensor> = tensors
        .into_iter()
        .map(|(name, shape)| {
            let values = random_values(&name, shape.iter().product(), &mut rng);
            (name, shape, values)
        })
        .collect();
    let total_size: usize = data.iter().map(|(_, _, bytes)| bytes.len()).sum();

    // Two shards split at half the bytes, like the real checkpoint's several files.
    let mut weight_map = BTreeMap::new();
    let mut shards: [Vec<&RandomTensor>; 2] = [Vec::new(), Vec::new()];
    let mut written = 0;
    for entry in &data {
        let shard = usize::from(written >= total_size / 2);
        written += entry.2.len();
        shards[shard].push(entry);
    }
    for (index, shard) in shards.iter().enumerate() {
        let file_name = format!("model-{:05}-of-00002.safetensors", index + 1);
        let views = shard
            .iter()
            .map(|(name, shape, bytes)| {
                weight_map.insert(name.clone(), file_name.clone());
                let view =
                    TensorView::new(Dtype::BF16, shape.clone(), bytes).expect("sizes match shapes");
                (name.clone(), view)
            })
            .collect::<Vec<_>>();
        let path = out.join(&file_name);
        safetensors::serialize_to_file(views, None, &path).map_err(|e| ModelError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    write_json(
        &out.join("model.safetensors.index.json"),
        &json!({ "metadata": { "total_size": total_size }, "weight_map": weight_map }),
    )?;
    write_json(&out.join("config.json"), &config_json)?;
    write_json(
        &out.join("preprocessor_config.json"),
        &preprocessor_config_json(),
    )?;
    write_json(
        &out.join("generation_config.json"),
        &generation_config_json(),
    )?;
    write_file(&out.join("chat_template.jinja"), CHAT_TEMPLATE.as_bytes())?;
    let tokenizer = build_phi4_tokenizer_json()?;
    write_file(&out.join("tokenizer.json"), tokenizer.as_bytes())?;
    write_json(&out.join("tokenizer_config.json"), &tokenizer_config_json())?;
    Ok(())
}
