//! The Rust SDK against a real `fovea serve` on the golden checkpoint: golden tokens through the
//! request builder and the typed stream, the collect helper, retry while the server starts or
//! drops connections, typed errors, and log probabilities on the token events.

mod support;

use std::time::Duration;

use fovea_client::{
    Client, ClientConfig, ClientError, FinishReason, GenerateRequestBuilder, GenerationEvent, Mode,
    Part, RetryPolicy, Segment,
};
use fovea_model::testing::{GoldenTensors, golden_case, golden_dir, reference_log_softmax};
use support::{Server, address, free_port};
use tokio_stream::StreamExt;

/// Client settings patient enough for a server that loads its model on a busy machine: about a
/// minute of retries, as long as `serve_grpc.rs` waits for its server.
fn patient() -> ClientConfig {
    ClientConfig {
        retry: RetryPolicy {
            max_attempts: 125,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        },
        ..ClientConfig::default()
    }
}

/// A golden case's greedy tokens.
fn golden_tokens(name: &str) -> Vec<u32> {
    golden_case(name).greedy_tokens
}

/// The golden cases' decoding: greedy, 12 tokens, end of turn ignored.
fn golden_builder() -> GenerateRequestBuilder {
    GenerateRequestBuilder::new()
        .max_tokens(12)
        .ignore_eos(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_streams_golden_tokens_for_text_and_image_and_maps_invalid_argument() {
    let port = free_port();
    let server = Server::start_on(port);
    server.wait_until_listening();
    let client = Client::connect_with(address(port), patient())
        .await
        .unwrap();

    let models = client.list_models().await.unwrap();
    assert!(models[0].is_default, "{models:?}");

    let text = golden_builder()
        .user_text("What is 17 * 23? Answer briefly.")
        .mode(Mode::Auto);
    let prompt = client.tokenize(text.clone()).await.unwrap();
    assert_eq!(prompt.image_tokens, 0);
    let mut stream = client.generate(text).await.unwrap();
    let (mut tokens, mut finished) = (Vec::new(), None);
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            GenerationEvent::Delta { token_ids, .. } => tokens.extend(token_ids),
            GenerationEvent::Finished(last) => finished = Some(last),
        }
    }
    assert_eq!(tokens, golden_tokens("text_only_auto"));
    let finished = finished.expect("a final event ends the stream");
    assert_eq!(finished.finish_reason, FinishReason::Length);
    assert_eq!(finished.usage.completion_tokens, 12);
    assert_eq!(finished.usage.prompt_tokens, prompt.prompt_tokens);

    let image = golden_builder()
        .user([
            Part::image_file(golden_dir().join("images/chart_320x240.png")).unwrap(),
            Part::from("\nWhich bar is the tallest?"),
        ])
        .mode(Mode::NoThink);
    let completion = client.generate_text(image).await.unwrap();
    assert_eq!(completion.token_ids, golden_tokens("chart_nothink"));
    assert!(
        completion.reasoning.is_empty(),
        "nothink mode does not reason"
    );
    assert!(completion.finished.usage.image_tokens > 0);

    let bad = golden_builder().user_text("hello").top_p(2.0);
    match client.generate(bad).await {
        Err(ClientError::InvalidArgument(message)) => {
            assert!(message.contains("top_p"), "{message}")
        }
        other => panic!("expected InvalidArgument, got {:?}", other.err()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_helper_gathers_what_the_stream_delivers_segment_by_segment() {
    let port = free_port();
    let server = Server::start_on(port);
    server.wait_until_listening();
    let client = Client::connect_with(address(port), patient())
        .await
        .unwrap();
    let request = golden_builder()
        .user_text("Hi there!")
        .assistant_text("Hello. How can I help?")
        .user_text("Explain why the sky is blue, step by step. 日本語も少し。")
        .mode(Mode::Think);

    let (mut first_segment, mut reasoning, mut answer) = (None, String::new(), String::new());
    let mut stream = client.generate(request.clone()).await.unwrap();
    while let Some(event) = stream.next().await {
        if let GenerationEvent::Delta { text, segment, .. } = event.unwrap() {
            first_segment.get_or_insert(segment);
            match segment {
                Segment::Reasoning => reasoning.push_str(&text),
                Segment::Answer => answer.push_str(&text),
            }
        }
    }
    assert_eq!(
        first_segment,
        Some(Segment::Reasoning),
        "think mode opens inside the reasoning"
    );

    let completion = client.generate_text(request).await.unwrap();
    assert_eq!(completion.token_ids, golden_tokens("text_think_multiturn"));
    assert_eq!(
        (completion.reasoning, completion.answer),
        (reasoning, answer)
    );
    assert_eq!(completion.finished.finish_reason, FinishReason::Length);
    assert!(completion.finished.usage.reasoning_tokens > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_sent_before_the_server_starts_is_retried_until_it_succeeds() {
    let port = free_port();
    let client = Client::connect_with(address(port), patient())
        .await
        .unwrap();
    let starter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Server::start_on(port)
    });
    let completion = client
        .generate_text(golden_builder().user_text("What is 17 * 23? Answer briefly."))
        .await
        .expect("retried until the server was up");
    assert_eq!(completion.token_ids, golden_tokens("text_only_auto"));
    drop(starter.await.unwrap());
}

/// What a generation sent to `port` by a client making 3 attempts 10 ms apart fails with.
async fn error_after_three_attempts(port: u16) -> Option<ClientError> {
    let config = ClientConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
        },
        ..ClientConfig::default()
    };
    let client = Client::connect_with(address(port), config).await.unwrap();
    client
        .generate(golden_builder().user_text("hello"))
        .await
        .err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded_when_no_server_comes() {
    let error = error_after_three_attempts(free_port()).await;
    assert!(
        matches!(error, Some(ClientError::Unavailable(_))),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_drops_connections_is_retried_and_reported_unavailable() {
    // A port that accepts each connection and closes it at once, as a server going down does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((connection, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(connection);
        }
    });
    let error = error_after_three_attempts(port).await;
    assert!(
        matches!(error, Some(ClientError::Unavailable(_))),
        "{error:?}"
    );
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "every attempt reached the port"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_token_events_carry_logprobs_that_match_the_reference() {
    let port = free_port();
    let server = Server::start_on(port);
    server.wait_until_listening();
    let client = Client::connect_with(address(port), patient())
        .await
        .unwrap();
    let request = golden_builder()
        .user_text("What is 17 * 23? Answer briefly.")
        .logprobs(4);
    let mut stream = client.generate(request.clone()).await.unwrap();
    let mut streamed = Vec::new();
    while let Some(event) = stream.next().await {
        if let GenerationEvent::Delta {
            token_ids,
            logprobs,
            ..
        } = event.unwrap()
        {
            assert_eq!(logprobs.len(), token_ids.len(), "one entry per token");
            streamed.extend(logprobs);
        }
    }
    // The second run reuses the first one's cached prefix, so its values may differ in the last bits.
    let completion = client.generate_text(request).await.unwrap();
    assert_eq!(completion.token_ids, golden_tokens("text_only_auto"));
    assert_eq!(
        completion.logprobs.len(),
        streamed.len(),
        "the collected completion keeps one per token"
    );
    for ((token, logprobs), seen) in completion
        .token_ids
        .iter()
        .zip(&completion.logprobs)
        .zip(&streamed)
    {
        assert_eq!(logprobs.top.len(), 4);
        assert_eq!(
            logprobs.top[0].token_id, *token,
            "greedy's token is the most likely"
        );
        assert!(
            (logprobs.logprob - seen.logprob).abs() < 1e-4,
            "{logprobs:?} against {seen:?}"
        );
    }
    let reference =
        reference_log_softmax(&GoldenTensors::load().prefill_last_logits("text_only_auto"));
    let first = f64::from(completion.logprobs[0].logprob);
    let expected = reference[completion.token_ids[0] as usize];
    assert!(
        (first - expected).abs() < 1e-4,
        "first logprob {first}, reference {expected}"
    );
}
