//! The model flags every serving subcommand takes, and where the checkpoint is when none is
//! given: a tiny random-weight demo checkpoint in the cache directory, written on first use, so
//! the commands work on a fresh machine with nothing downloaded.

use std::path::PathBuf;

use clap::Args;
use fovea_model::demo::{DemoPreset, write_demo_checkpoint};

/// Which model is served, and under what name.
#[derive(Args)]
pub struct ModelArgs {
    /// Checkpoint directory; default: a tiny demo checkpoint in the cache directory.
    #[arg(long, env = "FOVEA_MODEL")]
    model: Option<PathBuf>,
    /// Name clients use for the model (workers and coordinators of one cluster must agree).
    #[arg(
        long,
        env = "FOVEA_MODEL_NAME",
        default_value = "phi-4-reasoning-vision"
    )]
    pub model_name: String,
}

impl ModelArgs {
    /// The checkpoint directory, writing the demo checkpoint first if it is the one and is missing.
    pub fn dir(&self) -> Result<PathBuf, String> {
        if let Some(dir) = &self.model {
            return Ok(dir.clone());
        }
        let dir = demo_model_dir();
        if !dir.join("config.json").exists() {
            eprintln!("writing the tiny demo checkpoint to {}", dir.display());
            write_demo_checkpoint(DemoPreset::Tiny, &dir, 0).map_err(|e| e.to_string())?;
        }
        Ok(dir)
    }
}

/// The demo checkpoint's directory: `$XDG_CACHE_HOME/fovea/demo-tiny` or `~/.cache/fovea/demo-tiny`.
fn demo_model_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("fovea").join("demo-tiny")
}
