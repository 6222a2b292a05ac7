//! The model crate's error type: every failure names the file, key or tensor at fault.

use std::path::PathBuf;

/// Errors from loading a checkpoint or running the network.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file of the checkpoint directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file of the checkpoint is not valid JSON of the expected shape.
    #[error("{path} is not a valid checkpoint file: {message}")]
    BadJson { path: PathBuf, message: String },
    /// `config.json` holds a value the network cannot run with.
    #[error("config.json: `{key}` {problem}")]
    BadConfig { key: String, problem: String },
    /// A tensor the network needs is absent from the safetensors files.
    #[error("checkpoint has no tensor `{name}`")]
    MissingTensor { name: String },
    /// A tensor has a shape other than the config implies.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?} from config.json")]
    TensorShape {
        name: String,
        actual: Vec<usize>,
        expected: Vec<usize>,
    },
    /// A tensor is stored in a dtype the loader does not convert.
    #[error("tensor `{name}` is stored as {dtype}; only bf16, f16 and f32 are supported")]
    TensorDtype { name: String, dtype: String },
    /// The device asked for cannot be used: a build without CUDA support, no CUDA driver or GPU,
    /// or no GPU of that index.
    #[error("{0}")]
    DeviceUnavailable(String),
    /// A CUDA kernel or an NCCL collective failed on the GPU.
    #[error("GPU operation failed: {0}")]
    Gpu(String),
    /// The inputs to a forward pass do not fit the network.
    #[error("invalid model input: {0}")]
    BadInput(String),
    /// The tokenizer or chat template failed.
    #[error(transparent)]
    Text(#[from] crate::text::TextError),
    /// A tensor-parallel size the model cannot be split into.
    #[error("tensor parallelism: {0}")]
    TensorParallel(String),
    /// A rank of a tensor-parallel group failed (panicked, stalled, or lost its peers); the
    /// group computes nothing more.
    #[error("tensor-parallel rank failed: {0}")]
    RankFailed(String),
    /// A tensor operation failed (a bug or an exhausted resource, not bad user input).
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl ModelError {
    pub(crate) fn config(key: &str, problem: impl Into<String>) -> Self {
        ModelError::BadConfig {
            key: key.to_string(),
            problem: problem.into(),
        }
    }
}

/// Result alias of the model crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
