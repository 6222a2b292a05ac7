//! `--device` as a user meets it: real `fovea` processes asked for devices this build or this
//! machine cannot give, which must end with a message and a non-zero exit, never a panic or a hang.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn golden_model() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/golden/model")
        .display()
        .to_string()
}

/// Runs `fovea args` to completion, killing it (and failing) if it runs for a minute.
fn fovea(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fovea"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fovea starts");
    let started = Instant::now();
    while child.try_wait().expect("fovea can be waited on").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("fovea {args:?} still running after a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("fovea's output")
}

fn assert_fails_with(output: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "exited successfully; stderr: {stderr}"
    );
    assert!(
        stderr.contains(message),
        "stderr lacks {message:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
}

#[test]
fn an_unknown_device_name_is_refused_with_the_accepted_forms() {
    let output = fovea(&[
        "generate",
        "--model",
        &golden_model(),
        "--prompt",
        "Hi",
        "--device",
        "gpu0",
    ]);
    assert_fails_with(&output, "expected cpu, cuda or cuda:N");
}

#[test]
fn generate_on_the_cpu_device_runs() {
    let output = fovea(&[
        "generate",
        "--model",
        &golden_model(),
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "2",
        "--ignore-eos",
        "--json",
        "--device",
        "cpu",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(json["token_ids"].as_array().map(Vec::len), Some(2));
}

#[cfg(not(feature = "cuda"))]
#[test]
fn generate_on_cuda_says_this_build_has_no_cuda_support() {
    for device in ["cuda", "cuda:1"] {
        let output = fovea(&[
            "generate",
            "--model",
            &golden_model(),
            "--prompt",
            "Hi",
            "--device",
            device,
        ]);
        assert_fails_with(&output, "this build has no CUDA support");
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn serve_on_cuda_says_this_build_has_no_cuda_support_before_listening() {
    let output = fovea(&[
        "serve",
        "--model",
        &golden_model(),
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--device",
        "cuda",
    ]);
    assert_fails_with(&output, "this build has no CUDA support");
}
