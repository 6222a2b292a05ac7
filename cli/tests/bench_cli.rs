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
