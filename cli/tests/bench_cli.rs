//! `fovea bench` against a real `fovea serve` on the golden checkpoint: a small mixed run whose
//! JSON report counts every request and has sane, positive metrics, in all and per kind of
//! request; an image-heavy mix of several images per request; and a dumped workload that replays
//! the sent requests.

mod support;

use std::process::Command;

use support::{Server, address, free_port};

/// Runs `fovea bench` with `args`, checks that it succeeded, and gives its standard output.
fn run_bench(args: impl IntoIterator<Item = impl AsRef<std::ffi::OsStr>>) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_fovea"))
        .arg("bench")
        .args(args)
        .output()
        .expect("fovea bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn bench_reports_every_request_of_a_mixed_run_as_json() {
    let port = free_port();
    let server = Server::start_on(port);
    server.wait_until_listening();
    let dir = std::env::temp_dir().join(format!("fovea-bench-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let json_path = json.to_str().unwrap();
    let stdout = run_bench([
        "--addr",
        &address(port),
        "--requests",
        "8",
        "--concurrency",
        "4",
        "--max-tokens",
        "8",
        "--mix",
        "mixed",
        "--image-size",
        "320x240",
        "--prompt-tokens",
        "32",
        "--ttft-slo-ms",
        "60000",
        "--tpot-slo-ms",
        "60000",
        "--seed",
        "3",
        "--json",
        json_path,
    ]);
    assert!(stdout.contains("Successful requests:"), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
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
    assert_eq!(
        kinds_add_up(&report),
        (4, 4),
        "--mix mixed: text and image take turns"
    );
}

/// Checks that the report's `by_kind` tallies account for every request and token of the totals,
/// each kind with positive, ordered latencies; returns the (text, image) requests completed.
fn kinds_add_up(report: &serde_json::Value) -> (u64, u64) {
    let by_kind = report["by_kind"]
        .as_object()
        .unwrap_or_else(|| panic!("no by_kind: {report}"));
    assert!(
        by_kind.keys().all(|kind| kind == "text" || kind == "image"),
        "{report}"
    );
    for key in [
        "completed",
        "failed",
        "total_input_tokens",
        "total_output_tokens",
    ] {
        let sum: u64 = by_kind
            .values()
            .map(|tally| tally[key].as_u64().unwrap())
            .sum();
        assert_eq!(
            Some(sum),
            report[key].as_u64(),
            "{key}: the kinds add up to the total"
        );
    }
    for key in ["request_throughput", "output_throughput", "request_goodput"] {
        let sum: f64 = by_kind
            .values()
            .map(|tally| tally[key].as_f64().unwrap())
            .sum();
        let total = report[key].as_f64().unwrap();
        assert!(
            (sum - total).abs() <= 1e-9 * total.max(1.0),
            "{key}: {sum} vs {total}"
        );
    }
    for (kind, tally) in by_kind {
        for metric in ["ttft", "itl", "tpot", "e2el"] {
            let stat = |name: &str| tally[format!("{name}_{metric}_ms")].as_f64().unwrap();
            let (mean, median, p99) = (stat("mean"), stat("median"), stat("p99"));
            assert!(
                0.0 < median && median <= p99 && mean <= p99,
                "{kind} {metric}: mean {mean}, median {median}, p99 {p99}"
            );
        }
    }
    let completed = |kind: &str| {
        by_kind
            .get(kind)
            .map_or(0, |tally| tally["completed"].as_u64().unwrap())
    };
    (completed("text"), completed("image"))
}

#[test]
fn bench_breaks_an_image_heavy_mix_down_by_kind() {
    let port = free_port();
    let server = Server::start_on(port);
    server.wait_until_listening();
    let dir = std::env::temp_dir().join(format!("fovea-bench-kinds-{}-{port}", std::process::id()));
    let json = dir.join("bench.json");
    let (json_path, workload_dir) = (json.to_str().unwrap(), dir.join("workload"));
    let stdout = run_bench([
        "--addr",
        &address(port),
        "--requests",
        "8",
        "--concurrency",
        "4",
        "--mix",
        "mixed",
        "--image-share",
        "0.25",
        "--images-per-request",
        "3",
        "--image-size",
        "96x64",
        "--prompt-tokens",
        "16",
        "--max-tokens",
        "5",
        "--ttft-slo-ms",
        "60000",
        "--tpot-slo-ms",
        "60000",
        "--json",
        json_path,
        "--dump-workload",
        workload_dir.to_str().unwrap(),
    ]);
    for section in [" text requests ", " image requests "] {
        assert!(
            stdout.contains(section),
            "the report has a section per kind: {stdout}"
        );
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let workload: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("workload/workload.json")).unwrap())
            .unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(
        (report["completed"].as_u64(), report["failed"].as_u64()),
        (Some(8), Some(0)),
        "{report}"
    );
    assert_eq!(
        kinds_add_up(&report),
        (6, 2),
        "a quarter of the requests ask about images"
    );
    let (text, image) = (&report["by_kind"]["text"], &report["by_kind"]["image"]);
    assert_eq!(
        image["total_output_tokens"], 10,
        "ignore_eos: max_tokens each"
    );
    let per_request = |tally: &serde_json::Value| {
        tally["total_input_tokens"].as_f64().unwrap() / tally["completed"].as_f64().unwrap()
    };
    assert!(
        per_request(image) > per_request(text),
        "three images outweigh 16 words: {report}"
    );
    let images_per_request: Vec<usize> = workload["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|request| {
            let content = request["messages"][0]["content"].as_array().unwrap();
            content
                .iter()
                .filter(|part| part["type"] == "image")
                .count()
        })
        .collect();
    assert_eq!(
        images_per_request,
        [0, 0, 0, 3, 0, 0, 0, 3],
        "every fourth request, three images"
    );
}

#[test]
fn an_image_share_without_a_mixed_workload_is_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_fovea"))
        .args([
            "bench",
            "--addr",
            &address(free_port()),
            "--concurrency",
            "1",
        ])
        .args(["--mix", "text", "--image-share", "0.5"])
        .output()
        .expect("fovea bench runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--image-share needs --mix mixed"),
        "{stderr}"
    );
}

/// Runs `fovea bench` on a small mixed workload, dumping it into `dir`; returns workload.json.
fn bench_and_dump(port: u16, dir: &std::path::Path, seed: &str) -> serde_json::Value {
    run_bench([
        "--addr",
        &address(port),
        "--requests",
        "4",
        "--concurrency",
        "2",
        "--max-tokens",
        "3",
        "--mix",
        "mixed",
        "--image-size",
        "320x240",
        "--prompt-tokens",
        "16",
        "--seed",
        seed,
        "--dump-workload",
        dir.to_str().unwrap(),
    ]);
    serde_json::from_str(&std::fs::read_to_string(dir.join("workload.json")).unwrap()).unwrap()
}

/// The prompt ids `fovea generate` makes of a user message (`<image>` where `image` goes).
fn generate_prompt_ids(prompt: &str, image: Option<&std::path::Path>) -> serde_json::Value {
    let model = fovea_model::testing::golden_model_dir();
    let mut command = Command::new(env!("CARGO_BIN_EXE_fovea"));
    command
        .args([
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            prompt,
        ])
        .args(["--mode", "nothink", "--max-new-tokens", "1", "--json"]);
    if let Some(image) = image {
        command.arg("--image").arg(image);
    }
    let output = command.output().expect("fovea generate runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
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
            (
                format!("<image>{}", content[1]["text"].as_str().unwrap()),
                Some(file),
            )
        };
        assert_eq!(
            request["prompt_token_ids"],
            generate_prompt_ids(&prompt, image.as_deref()),
            "request {index}: the dumped ids are those of the dumped messages"
        );
    }

    assert_eq!(
        bench_and_dump(port, &again, "7"),
        workload,
        "same seed, same workload"
    );
    for file in ["request-0001-image-0.png", "request-0003-image-0.png"] {
        assert_eq!(
            std::fs::read(first.join(file)).unwrap(),
            std::fs::read(again.join(file)).unwrap()
        );
    }
    assert_ne!(
        bench_and_dump(port, &other, "8"),
        workload,
        "another seed, other prompts"
    );
    let _ = std::fs::remove_dir_all(&root);
}
