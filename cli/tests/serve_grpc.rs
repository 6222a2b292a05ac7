//! `fovea serve` as a client sees it: a real server process, real gRPC over loopback.

mod support;

use std::time::{Duration, Instant};

use fovea_model::testing::{GoldenTensors, golden_cases, reference_log_softmax};
use fovea_proto::v1::{ContentPart, FinishReason, TokenLogprobs, content_part};
use support::{Server, collect, collect_deltas, golden_request};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_cases_stream_golden_tokens_alone_and_sixteen_at_once() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let cases = golden_cases();
    for case in &cases {
        let (tokens, _, last) = collect(&mut client, golden_request(case, 12)).await;
        assert_eq!(tokens, case.greedy_tokens, "{}", case.name);
        assert_eq!(last.finish_reason(), FinishReason::Length);
        let usage = last.usage.unwrap();
        assert_eq!(usage.prompt_tokens as usize, case.input_ids.len());
        assert_eq!(usage.completion_tokens, 12);
    }
    let idle = server.free_blocks().await;
    let runs = (0..16).map(|i| {
        let case = cases[i % cases.len()].clone();
        let mut client = client.clone();
        tokio::spawn(async move {
            let (tokens, _, _) = collect(&mut client, golden_request(&case, 12)).await;
            (tokens, case.greedy_tokens)
        })
    });
    for run in runs.collect::<Vec<_>>() {
        let (tokens, expected) = run.await.unwrap();
        assert_eq!(
            tokens, expected,
            "concurrent requests keep their golden tokens"
        );
    }
    assert_eq!(
        server.free_blocks().await,
        idle,
        "every block is free again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_stream_frees_its_kv_blocks() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let idle = server.free_blocks().await;
    let case = &golden_cases()[0];
    let mut stream = client
        .generate(golden_request(case, 10_000))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        stream.message().await.unwrap().unwrap();
    }
    assert!(
        server.free_blocks().await < idle,
        "a running request holds blocks"
    );
    drop(stream);
    let started = Instant::now();
    while server.free_blocks().await != idle {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "blocks were not freed after the cancel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_resource_exhausted() {
    let server = Server::start(&["--max-requests", "1"]);
    let mut client = server.client().await;
    let case = &golden_cases()[0];
    let mut long = client
        .generate(golden_request(case, 10_000))
        .await
        .unwrap()
        .into_inner();
    long.message().await.unwrap().unwrap();
    let refused = client.generate(golden_request(case, 4)).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "{}",
        refused.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_invalid_argument_and_the_server_keeps_serving() {
    let server = Server::start(&["--max-images", "2"]);
    let mut client = server.client().await;
    let cases = golden_cases();
    let text_case = &cases[0];
    let image_case = cases.iter().find(|c| c.name == "chart_nothink").unwrap();

    let mut bad_image = golden_request(image_case, 4);
    if let Some(content_part::Part::Image(image)) = &mut bad_image.messages[0].content[0].part {
        image.data = b"\x89PNG\r\n\x1a\nnot a png".to_vec().into();
    }
    let mut too_many_images = golden_request(image_case, 4);
    let image_part = too_many_images.messages[0].content[0].clone();
    too_many_images.messages[0]
        .content
        .extend([image_part.clone(), image_part]);
    let mut too_long = golden_request(text_case, 4);
    too_long.sampling.as_mut().unwrap().max_tokens = Some(40_000);
    let mut bad_top_p = golden_request(text_case, 4);
    bad_top_p.sampling.as_mut().unwrap().top_p = Some(2.0);
    let mut marker_in_text = golden_request(text_case, 4);
    marker_in_text.messages[0].content.push(ContentPart {
        part: Some(content_part::Part::Text("and <image>".into())),
    });
    let cases = [
        (bad_image, "image 0"),
        (too_many_images, "3 images exceed"),
        (too_long, "exceeds the context"),
        (bad_top_p, "top_p"),
        (marker_in_text, "<image>"),
    ];
    for (request, expected) in cases {
        let status = client.generate(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(
            status.message().contains(expected),
            "{:?} should mention {expected:?}",
            status.message()
        );
    }
    let (tokens, _, last) = collect(&mut client, golden_request(text_case, 12)).await;
    assert_eq!(
        tokens, text_case.greedy_tokens,
        "still serving after bad input"
    );
    assert_eq!(last.finish_reason(), FinishReason::Length);
}

/// Asserts that `entries` are one greedy position's log probabilities with `top` alternatives:
/// sorted, the chosen `token` first among them, and every value the reference's within 1e-4.
fn assert_logprobs_match(
    name: &str,
    token: u32,
    entries: &TokenLogprobs,
    top: usize,
    reference: &[f64],
) {
    assert_eq!(entries.top.len(), top, "{name}: exactly {top} alternatives");
    if top > 0 {
        assert_eq!(
            entries.top[0].token_id, token,
            "{name}: greedy's token is the most likely"
        );
        assert_eq!(entries.top[0].logprob, entries.logprob, "{name}");
    }
    assert!(
        entries.top.windows(2).all(|w| w[0].logprob >= w[1].logprob),
        "{name}: most likely first"
    );
    let close =
        |token: u32, logprob: f32| (f64::from(logprob) - reference[token as usize]).abs() < 1e-4;
    assert!(
        close(token, entries.logprob),
        "{name}: {} against {}",
        entries.logprob,
        reference[token as usize]
    );
    for alternative in &entries.top {
        assert!(
            close(alternative.token_id, alternative.logprob),
            "{name}: alternative {alternative:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_line_up_with_their_tokens_and_match_the_reference() {
    let server = Server::start(&[]);
    let mut client = server.client().await;
    let golden = GoldenTensors::load();
    let cases = golden_cases();
    for (case, top) in cases.iter().zip([5, 20, 1, 0, 5]) {
        let name = &case.name;
        let mut request = golden_request(case, 12);
        request.sampling.as_mut().unwrap().logprobs = Some(top);
        let (deltas, last) = collect_deltas(&mut client, request).await;
        assert_eq!(last.finish_reason(), FinishReason::Length, "{name}");
        let (mut tokens, mut logprobs) = (Vec::new(), Vec::new());
        for delta in deltas {
            assert_eq!(
                delta.logprobs.len(),
                delta.token_ids.len(),
                "{name}: one entry per token"
            );
            tokens.extend(delta.token_ids);
            logprobs.extend(delta.logprobs);
        }
        assert_eq!(tokens, case.greedy_tokens, "{name}");
        let reference = reference_log_softmax(&golden.prefill_last_logits(name));
        assert_logprobs_match(name, tokens[0], &logprobs[0], top as usize, &reference);
        for (token, entries) in tokens.iter().zip(&logprobs).skip(1) {
            assert_eq!(entries.top.len(), top as usize, "{name}");
            assert!(
                top == 0 || entries.top[0].token_id == *token,
                "{name}: greedy's token is the most likely"
            );
            assert!(entries.logprob <= 0.0, "{name}");
        }
    }

    let (deltas, _) = collect_deltas(&mut client, golden_request(&cases[0], 4)).await;
    assert!(
        deltas.iter().all(|delta| delta.logprobs.is_empty()),
        "no logprobs unless asked for"
    );
    let mut too_many = golden_request(&cases[0], 4);
    too_many.sampling.as_mut().unwrap().logprobs = Some(21);
    let status = client.generate(too_many).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().contains("0 to 20"),
        "{:?} should state the limit",
        status.message()
    );
    let (tokens, _, _) = collect(&mut client, golden_request(&cases[0], 12)).await;
    assert_eq!(
        tokens, cases[0].greedy_tokens,
        "still serving after the refusal"
    );
}
