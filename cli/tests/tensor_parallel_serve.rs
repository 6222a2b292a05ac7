//! `fovea serve --tp N` as a client sees it: the decoder split over rank threads behind the same
//! gRPC API gives the golden tokens, and a rank that panics or stalls ends its requests with an
//! error status instead of hanging the server.

mod support;

use std::time::{Duration, Instant};

use fovea_model::testing::golden_cases;
use fovea_proto::v1::{FinishReason, ListModelsRequest, generate_response};
use support::{Server, collect, golden_request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_cases_stream_golden_tokens_at_tp_2_and_4() {
    for tp in ["2", "4"] {
        let server = Server::start(&["--tp", tp, "--threads-per-rank", "1"]);
        let mut client = server.client().await;
        let cases = golden_cases();
        let idle = server.free_blocks().await;
        let runs: Vec<_> = cases
            .iter()
            .map(|case| {
                let (case, mut client) = (case.clone(), client.clone());
                tokio::spawn(async move {
                    let (tokens, _, last) = collect(&mut client, golden_request(&case, 12)).await;
                    (
                        case.name.clone(),
                        tokens,
                        case.greedy_tokens.clone(),
                        last.finish_reason(),
                    )
                })
            })
            .collect();
        for run in runs {
            let (name, tokens, expected, reason) = run.await.unwrap();
            assert_eq!(
                tokens, expected,
                "TP {tp} {name}: batched with the other cases"
            );
            assert_eq!(reason, FinishReason::Length);
        }
        let (tokens, _, _) = collect(&mut client, golden_request(&cases[0], 12)).await;
        assert_eq!(tokens, cases[0].greedy_tokens, "TP {tp}: alone");
        assert_eq!(
            server.free_blocks().await,
            idle,
            "TP {tp}: every block is free again"
        );
    }
}

/// How one request ended when it may fail: its tokens, and the error (a final ERROR message, or a
/// gRPC status when it failed before its first token).
async fn run_to_end(server: &Server, max_tokens: u32) -> (usize, Option<String>) {
    let mut client = server.client().await;
    let request = golden_request(&golden_cases()[0], max_tokens);
    let mut stream = match client.generate(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (0, Some(status.message().to_string())),
    };
    let mut tokens = 0;
    loop {
        match stream.message().await {
            Ok(Some(message)) => match message.event {
                Some(generate_response::Event::Delta(delta)) => tokens += delta.token_ids.len(),
                Some(generate_response::Event::Final(last)) => {
                    let error =
                        (last.finish_reason() == FinishReason::Error).then(|| last.error.clone());
                    assert!(
                        stream.message().await.unwrap().is_none(),
                        "nothing follows the final message"
                    );
                    return (tokens, error);
                }
                None => panic!("empty response message"),
            },
            Ok(None) => panic!("the stream ended without a final message"),
            Err(status) => return (tokens, Some(status.message().to_string())),
        }
    }
}

/// Runs a request on a server whose rank 1 fails at step 5, expecting `cause` in the error; then
/// checks that later requests fail at once and the server still answers.
async fn rank_failure_ends_requests_with_an_error(fault: &str, cause: &[&str]) {
    let server = Server::start(&[
        "--tp",
        "2",
        "--threads-per-rank",
        "1",
        "--tp-timeout-secs",
        "2",
        "--tp-fault",
        fault,
    ]);
    let started = Instant::now();
    let (tokens, error) = run_to_end(&server, 40).await;
    let error = error.expect("a failed rank fails the request");
    assert!(
        tokens > 0 && tokens < 40,
        "the request streamed tokens until step 5, then ended: {tokens}"
    );
    assert!(
        cause.iter().any(|c| error.contains(c)),
        "{fault}: error names the cause: {error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{fault}: ended promptly"
    );

    let started = Instant::now();
    let (tokens, error) = run_to_end(&server, 8).await;
    assert_eq!(tokens, 0);
    assert!(
        error
            .expect("the group stays failed")
            .contains("tensor-parallel")
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{fault}: later requests fail at once"
    );
    let mut client = server.client().await;
    client
        .list_models(ListModelsRequest {})
        .await
        .expect("the server keeps answering");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_rank_ends_its_requests_with_an_error() {
    rank_failure_ends_requests_with_an_error("panic:1:5", &["rank 1 panicked"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_rank_ends_its_requests_with_an_error_after_the_timeout() {
    rank_failure_ends_requests_with_an_error("stall:1:5", &["waited more than", "did not finish"])
        .await;
}
