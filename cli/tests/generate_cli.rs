//! `fovea generate` and `fovea demo-model` as a user runs them: real processes, real files.

use std::path::{Path, PathBuf};
use std::process::Command;

use fovea_model::testing::{golden_cases, golden_dir, golden_model_dir};

fn fovea(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fovea"))
        .args(args)
        .output()
        .expect("fovea runs")
}

/// An empty directory, removed when dropped.
fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("fovea-cli-test-{name}-"))
        .tempdir()
        .unwrap()
}

fn ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn generate_json(
    model: &Path,
    messages_file: &Path,
    images: &[PathBuf],
    mode: &str,
    tokens: usize,
    extra: &[&str],
) -> serde_json::Value {
    let mut args = vec![
        "generate".to_string(),
        "--model".into(),
        model.display().to_string(),
        "--messages".into(),
        messages_file.display().to_string(),
        "--mode".into(),
        mode.into(),
        "--max-new-tokens".into(),
        tokens.to_string(),
        "--ignore-eos".into(),
        "--json".into(),
    ];
    for image in images {
        args.push("--image".into());
        args.push(image.display().to_string());
    }
    args.extend(extra.iter().map(|arg| arg.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = fovea(&args);
    assert!(
        output.status.success(),
        "fovea generate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON object on stdout")
}

/// `fovea generate --json` with `extra` arguments on every golden case gives the golden tokens.
fn check_golden_cases(extra: &[&str]) {
    let temp = temp_dir("golden");
    let dir = temp.path();
    for case in golden_cases() {
        let name = &case.name;
        let messages_file = dir.join(format!("{name}.json"));
        std::fs::write(
            &messages_file,
            serde_json::to_string(&case.messages).unwrap(),
        )
        .unwrap();
        let out = generate_json(
            &golden_model_dir(),
            &messages_file,
            &case.image_paths(),
            &case.mode_name,
            12,
            extra,
        );
        assert_eq!(
            ids(&out["prompt_token_ids"]),
            case.input_ids,
            "{name} {extra:?}: prompt ids"
        );
        assert_eq!(
            ids(&out["token_ids"]),
            case.greedy_tokens,
            "{name} {extra:?}: greedy tokens"
        );
        assert_eq!(out["text"], case.greedy_text, "{name} {extra:?}: text");
        assert_eq!(out["finish_reason"], "length", "{name} {extra:?}");
    }
}

#[test]
fn generate_json_reproduces_every_golden_case() {
    check_golden_cases(&[]);
}

/// TP 4 over the fixture's 4 query and 2 KV heads: pairs of ranks share a KV head.
#[test]
fn generate_json_reproduces_every_golden_case_at_tp_2_and_4() {
    check_golden_cases(&["--tp", "2"]);
    check_golden_cases(&["--tp", "4", "--threads-per-rank", "1"]);
}

#[test]
fn bad_inputs_fail_with_a_message_not_a_panic() {
    let model = golden_dir().join("model");
    let model = model.to_str().unwrap();
    let image = golden_dir().join("images/chart_320x240.png");
    let image = image.to_str().unwrap();
    let temp = temp_dir("bad");
    let dir = temp.path();
    let corrupt = dir.join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--prompt", "<image> <image>", "--image", image],
            "2 `<image>` marker",
        ),
        (vec!["--prompt", "hi", "--mode", "sometimes"], "sometimes"),
        (
            vec!["--prompt", "<image>", "--image", corrupt.to_str().unwrap()],
            "image 0",
        ),
        (vec!["--prompt", "hi", "--temperature=-1"], "temperature"),
        (
            vec!["--prompt", "hi", "--tp", "3"],
            "TP size of 3 does not divide the model's 4 query heads",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["generate", "--model", model];
        args.extend(extra.iter());
        let output = fovea(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(
            stderr.contains(expected),
            "{args:?}: stderr {stderr:?} should mention {expected:?}"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
}

#[test]
fn demo_model_writes_a_checkpoint_that_generate_runs() {
    let temp = temp_dir("demo");
    let dir = temp.path();
    let out = dir.join("tiny");
    let output = fovea(&[
        "demo-model",
        "--preset",
        "tiny",
        "--out",
        out.to_str().unwrap(),
        "--seed",
        "7",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for file in [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(file).exists(), "demo checkpoint lacks {file}");
    }
    // Same keys and sizes as the golden checkpoint, which the tiny preset mirrors.
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    assert_eq!(
        read(out.join("config.json")),
        read(golden_dir().join("model/config.json"))
    );
    let index = read(out.join("model.safetensors.index.json"));
    let golden_index = read(golden_dir().join("model/model.safetensors.index.json"));
    let names = |v: &serde_json::Value| -> Vec<String> {
        let mut names: Vec<String> = v["weight_map"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(&index),
        names(&golden_index),
        "demo checkpoint has the real tensor names"
    );

    let messages = dir.join("messages.json");
    std::fs::write(
        &messages,
        r#"[{"role": "user", "content": "<image>\nDescribe."}]"#,
    )
    .unwrap();
    let image = golden_dir().join("images/noise_41x30.png");
    let first = generate_json(
        &out,
        &messages,
        std::slice::from_ref(&image),
        "think",
        5,
        &[],
    );
    assert_eq!(ids(&first["token_ids"]).len(), 5);
    // The same seed writes the same weights, so the same tokens come out.
    let again = dir.join("tiny-again");
    assert!(
        fovea(&[
            "demo-model",
            "--out",
            again.to_str().unwrap(),
            "--seed",
            "7"
        ])
        .status
        .success()
    );
    let second = generate_json(&again, &messages, &[image], "think", 5, &[]);
    assert_eq!(first["token_ids"], second["token_ids"]);
}
