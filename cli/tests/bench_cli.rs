//! `fovea bench` against a real `fovea serve` on the golden checkpoint: a small mixed run whose
//! JSON report counts every request and has sane, positive metrics.

mod support;

use std::process::Command;

use support::{Server, address, free_port};

#[test]
fn bench_reports_every_request_of_a_mixed_run_as_json() {
    let port = free_port();
    let server = Server::start_on(port);
    server.wait_until_listening();
    let dir = std::env::temp_dir().join(format!("fovea-bench-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let output = Command::new(env!("CARGO_BIN_EXE_fovea"))
        .args([
            "bench",
            "--addr",
            &address(port),
            "--requests",
            "8",
            "--concurrency",
            "4",
        ])
        .args([
            "--max-tokens",
            "8",
            "--mix",
            "mixed",
            "--image-size",
            "320x240",
            "--prompt-tokens",
            "32",
        ])
        .args(["--ttft-slo-ms", "60000", "--tpot-slo-ms", "60000", "--seed", "3"])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("fovea bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Successful requests:"), "{stdout}");

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(report["completed"], 8, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(
        report["total_output_tokens"], 64,
        "ignore_eos gives every request max_tokens"
    );
    let positive = |key: &str| {
        let value = report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {report}"));
        assert!(value > 0.0 && value.is_finite(), "{key} = {value}");
        value
    };
    for key in [
        "duration",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
    ] {
        positive(key);
    }
    assert!(positive("total_token_throughput") > positive("output_throughput"));
    assert!(
        positive("total_input_tokens") > 8.0 * 32.0 / 2.0,
        "text and image prompts were counted"
    );
    for metric in ["ttft", "tpot", "itl", "e2el"] {
        let (mean, median, p99) = (
            positive(&format!("mean_{metric}_ms")),
            positive(&format!("median_{metric}_ms")),
            positive(&format!("p99_{metric}_ms")),
        );
        assert!(
            median <= p99 && mean <= p99,
            "{metric}: mean {mean}, median {median}, p99 {p99}"
        );
    }
    assert!(positive("p99_ttft_ms") <= positive("p99_e2el_ms"));
    assert_eq!(
        report["request_goodput"], report["request_throughput"],
        "generous SLOs: every request is good"
    );
}

/// Runs `fovea bench` on a small mixed workload, dumping it into `dir`; returns workload.json.
fn bench_and_dump(port: u16, dir: &std::path::Path, seed: &str) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_fovea"))
        .args(["bench", "--addr", &address(port), "--requests", "4", "--concurrency", "2"])
        .args(["--max-tokens", "3", "--mix", "mixed", "--image-size", "320x240"])
        .args(["--prompt-tokens", "16", "--seed", seed, "--dump-workload"])
        .arg(dir)
        .output()
        .expect("fovea bench runs");
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(dir.join("workload.json")).unwrap()).unwrap()
}

/// The prompt ids `fovea generate` makes of a user message (`<image>` where `image` goes).
fn generate_prompt_ids(prompt: &str, image: Option<&std::path::Path>) -> serde_json::Value {
    let model = fovea_model::testing::golden_model_dir();
    let mut command = Command::new(env!("CARGO_BIN_EXE_fovea"));
    command
        .args(["generate", "--model", model.to_str().unwrap(), "--prompt", prompt])
        .args(["--mode", "nothink", "--max-new-tokens", "1", "--json"]);
    if let Some(image) = image {
        command.arg("--image").arg(image);
    }
    let output = command.output().expect("fovea generate runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    out["prompt_token_ids"].clone()
}

#[test]
fn dumped_workload_replays_the_sent_requests_with_the_servers_prompt_ids() {
    let port = free_port();
    let server = Server::start_on(port);
    server.wait_until_listening();
    let root = std::env::temp_dir().join(format!("fovea-bench-dump-{}-{port}", std::process::id()));
    let (first, again, other) = (root.join("first"), root.join("again"), root.join("other"));
    let workload = bench_and_dump(port, &first, "7");

    let requests = workload["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 4, "{workload}");
    for (index, request) in requests.iter().enumerate() {
        assert_eq!(request["mode"], "nothink");
        assert_eq!(request["max_tokens"], 3);
        assert_eq!(request["temperature"], 0.0);
        assert_eq!(request["ignore_eos"], true);
        let content = request["messages"][0]["content"].as_array().unwrap();
        assert_eq!(request["messages"][0]["role"], "user");
        // `--mix mixed`: text, then an image question, taking turns.
        let (prompt, image) = if index % 2 == 0 {
            assert_eq!(content.len(), 1, "{request}");
            (content[0]["text"].as_str().unwrap().to_string(), None)
        } else {
            assert_eq!(content[0]["type"], "image", "{request}");
            let file = first.join(content[0]["file"].as_str().unwrap());
            let decoded = image::open(&file).expect("the dumped image decodes");
            assert_eq!((decoded.width(), decoded.height()), (320, 240));
            (format!("<image>{}", content[1]["text"].as_str().unwrap()), Some(file))
        };
        assert_eq!(
            request["prompt_token_ids"],
            generate_prompt_ids(&prompt, image.as_deref()),
            "request {index}: the dumped ids are those of the dumped messages"
        );
    }

    assert_eq!(bench_and_dump(port, &again, "7"), workload, "same seed, same workload");
    for file in ["request-0001-image-0.png", "request-0003-image-0.png"] {
        assert_eq!(std::fs::read(first.join(file)).unwrap(), std::fs::read(again.join(file)).unwrap());
    }
    assert_ne!(bench_and_dump(port, &other, "8"), workload, "another seed, other prompts");
    let _ = std::fs::remove_dir_all(&root);
}
