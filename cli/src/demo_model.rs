//! `fovea demo-model`: writes a random-weight checkpoint directory.

use std::path::PathBuf;

use clap::Args;
use fovea_model::demo::{DemoPreset, write_demo_checkpoint};

#[derive(Args)]
pub struct DemoModelArgs {
    /// Sizes: `tiny` (the golden fixture's) or `bench` (~150M parameters per decoding step).
    #[arg(long, default_value = "tiny")]
    preset: DemoPreset,
    /// Directory to write (created if absent).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: DemoModelArgs) -> Result<(), String> {
    write_demo_checkpoint(args.preset, &args.out, args.seed).map_err(|e| e.to_string())?;
    eprintln!(
        "wrote {:?} checkpoint to {}",
        args.preset,
        args.out.display()
    );
    Ok(())
}
