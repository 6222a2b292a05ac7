//! Memory-mapped safetensors checkpoints: the one place where tensor names meet the network.
//!
//! A checkpoint is either sharded (`model.safetensors.index.json` naming its files) or a single
//! `model.safetensors`. Tensors are read lazily by name, checked against the shape the config implies,
//! and converted to the compute dtype; tensors the network never asks for (the vision tower's last
//! layer, `post_layernorm`, `head.*`) are simply never read.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

use crate::config::read_json;
use crate::error::{ModelError, Result};

/// An opened checkpoint: memory maps of its safetensors files, or a recorder of what the network asks for.
pub struct Checkpoint {
    source: TensorSource,
    dtype: DType,
    device: Device,
    progress: ProgressBar,
}

enum TensorSource {
    Files(MmapedSafetensors),
    /// Answers every request with zeros and records its name and shape: the network's inventory.
    Inventory(RefCell<Vec<(String, Vec<usize>)>>),
}

#[derive(Deserialize)]
struct SafetensorsIndex {
    weight_map: HashMap<String, String>,
}

/// The safetensors files of a checkpoint directory, from its index when it has one.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.exists() {
        let index: SafetensorsIndex = read_json(&index_path)?;
        let files: BTreeSet<&String> = index.weight_map.values().collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(ModelError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no model.safetensors.index.json or model.safetensors in this directory",
        ),
    })
}

impl Checkpoint {
    /// Memory-maps the checkpoint in `dir`; tensors will be converted to `dtype` on `device`.
    /// A progress bar (on a terminal) counts the bytes loaded.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let files = safetensors_files(dir)?;
        let mut total_bytes = 0u64;
        for file in &files {
            let meta = std::fs::metadata(file).map_err(|source| ModelError::Io {
                path: file.clone(),
                source,
            })?;
            total_bytes += meta.len();
        }
        // SAFETY: the files are opened read-only; like every mmap-based loader we rely on them not
        // being truncated while the checkpoint is open.
        let tensors =
            unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| ModelError::BadJson {
                path: dir.to_path_buf(),
                message: format!("unreadable safetensors file: {e}"),
            })?;
        let progress = ProgressBar::new(total_bytes).with_style(
            ProgressStyle::with_template("loading weights {bar:40} {bytes}/{total_bytes} ({eta})")
                .expect("progress template is valid"),
        );
        Ok(Checkpoint {
            source: TensorSource::Files(tensors),
            dtype,
            device: device.clone(),
            progress,
        })
    }

    /// The checkpoint's top level, from which layers descend with [`Weights::pp`].
    pub fn root(&self) -> Weights<'_> {
        Weights {
            checkpoint: self,
            prefix: String::new(),
        }
    }

    /// Clears the progress bar once loading is done.
    pub fn finish_loading(&self) {
        self.progress.finish_and_clear();
    }

    /// A checkpoint with no files that records every tensor the loader asks for (see [`Checkpoint::inventory`]).
    pub fn recorder() -> Self {
        Checkpoint {
            source: TensorSource::Inventory(RefCell::new(Vec::new())),
            dtype: DType::F32,
            device: Device::Cpu,
            progress: ProgressBar::hidden(),
        }
    }

    /// Names and shapes requested so far from a [`Checkpoint::recorder`], in request order.
    pub fn inventory(&self) -> Vec<(String, Vec<usize>)> {
        match &self.source {
            TensorSource::Files(_) => Vec::new(),
            TensorSource::Inventory(requests) => requests.borrow().clone(),
        }
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.load_part(name, shape, None)
    }

    /// Loads `name`, which must have `shape`; with `part = Some((dim, range))`, only that range of
    /// dimension `dim` is read from the file (a tensor-parallel rank's slice).
    fn load_part(
        &self,
        name: &str,
        shape: &[usize],
        part: Option<(usize, Range<usize>)>,
    ) -> Result<Tensor> {
        let part = part.filter(|(dim, range)| *range != (0..shape[*dim]));
        let tensors = match &self.source {
            TensorSource::Files(tensors) => tensors,
            TensorSource::Inventory(requests) => {
                requests
                    .borrow_mut()
                    .push((name.to_string(), shape.to_vec()));
                let mut part_shape = shape.to_vec();
                if let Some((dim, range)) = &part {
                    part_shape[*dim] = range.len();
                }
                return Ok(Tensor::zeros(part_shape, self.dtype, &self.device)?);
            }
        };
        let view = tensors.get(name).map_err(|_| ModelError::MissingTensor {
            name: name.to_string(),
        })?;
        if view.shape() != shape {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                actual: view.shape().to_vec(),
                expected: shape.to_vec(),
            });
        }
        use safetensors::Dtype as St;
        let stored = match view.dtype() {
            St::BF16 => DType::BF16,
            St::F16 => DType::F16,
            St::F32 => DType::F32,
            other => {
                return Err(ModelError::TensorDtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        let tensor = match part {
            None => {
                self.progress.inc(view.data().len() as u64);
                tensors.load(name, &self.device)?
            }
            Some((dim, range)) => {
                let bytes = slice_bytes(view.data(), shape, dim, &range, stored.size_in_bytes());
                self.progress.inc(bytes.len() as u64);
                let mut part_shape = shape.to_vec();
                part_shape[dim] = range.len();
                Tensor::from_raw_buffer(&bytes, stored, &part_shape, &self.device)?
            }
        };
        Ok(tensor.to_dtype(self.dtype)?)
    }
}

/// The bytes of `range` along dimension `dim` of a row-major tensor of `shape` stored in `data`.
fn slice_bytes(
    data: &[u8],
    shape: &[usize],
    dim: usize,
    range: &Range<usize>,
    element_size: usize,
) -> Vec<u8> {
    let outer: usize = shape[..dim].iter().product();
    let inner: usize = shape[dim + 1..].iter().product::<usize>() * element_size;
    let mut bytes = Vec::with_capacity(outer * range.len() * inner);
    for block in data.chunks_exact(shape[dim] * inner).take(outer) {
        bytes.extend_from_slice(&block[range.start * inner..range.end * inner]);
    }
    bytes
}

/// A prefix into a [`Checkpoint`], as a layer sees it (`model.layers.3` → `self_attn.qkv_proj.weight`).
#[derive(Clone)]
pub struct Weights<'a> {
    checkpoint: &'a Checkpoint,
    prefix: String,
}

impl<'a> Weights<'a> {
    /// A view one level deeper: `weights.pp("mlp")`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Weights<'a> {
        Weights {
            checkpoint: self.checkpoint,
            prefix: self.full_name(&name.to_string()),
        }
    }

    /// Loads `prefix.name`, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.checkpoint.load(&self.full_name(name), shape)
    }

    /// Loads only `range` of dimension `dim` of `prefix.name`, which must have exactly `shape`;
    /// the rest of the tensor is never read.
    pub fn get_part(
        &self,
        name: &str,
        shape: &[usize],
        dim: usize,
        range: Range<usize>,
    ) -> Result<Tensor> {
        if dim >= shape.len() || range.start > range.end || range.end > shape[dim] {
            return Err(ModelError::BadInput(format!(
                "cannot take {range:?} of dimension {dim} of `{name}` shaped {shape:?}"
            )));
        }
        self.checkpoint
            .load_part(&self.full_name(name), shape, Some((dim, range)))
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The compute dtype of the checkpoint.
    pub fn dtype(&self) -> DType {
        self.checkpoint.dtype
    }

    /// The device tensors are placed on.
    pub fn device(&self) -> &Device {
        &self.checkpoint.device
    }
}
