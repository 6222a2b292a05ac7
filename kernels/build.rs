//! Compiles the CUDA kernels in `cuda/` to PTX when the `cuda` feature is on, and does nothing
//! otherwise (the default CPU build needs no CUDA compiler).
//!
//! `NVCC` names the compiler (default: `nvcc` on `PATH`); `CUDA_COMPUTE_CAP` the virtual
//! architecture the PTX targets (default 80, Ampere: the driver JIT-compiles it for newer GPUs).

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// The `.cu` files under `cuda/`, each compiled to `$OUT_DIR/<name>.ptx`.
const SOURCES: &[&str] = &["activation"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo::rerun-if-env-changed=NVCC");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let nvcc = env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let compute_cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    if compute_cap.is_empty() || !compute_cap.bytes().all(|b| b.is_ascii_digit()) {
        panic!("CUDA_COMPUTE_CAP={compute_cap:?} is not a compute capability such as 80 or 90");
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for name in SOURCES {
        let source = format!("cuda/{name}.cu");
        println!("cargo::rerun-if-changed={source}");
        let ptx = out_dir.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("--gpu-architecture=compute_{compute_cap}"))
            .arg(&source)
            .arg("-o")
            .arg(&ptx)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run `{nvcc}` ({e}): the `cuda` feature needs the CUDA compiler on PATH or in NVCC (README, GPU)")
            });
        if !status.success() {
            panic!("`{nvcc}` failed to compile {source} ({status})");
        }
    }
}
