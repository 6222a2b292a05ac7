//! The engine end to end on the golden checkpoint (f32, greedy, ignore_eos): golden tokens alone,
//! concurrently, and under preemption; cancellation, refusal, stops and seeded sampling.

use std::sync::Arc;

use candle_core::DType;

use fovea_model::Phi4VisionModel;
use fovea_model::generate::{GenerationRequest, SequenceRank, generate};
use fovea_model::sampling::SamplingParams;
use fovea_model::testing::{
    GoldenTensors, PreparedCase, golden_model, golden_preparer, prepared_golden_cases,
    reference_log_softmax,
};
use fovea_model::tp::RankGroup;
use fovea_worker::{
    Engine, EngineConfig, EngineHandle, Event, FinishReason, GenerateRequest, ImageSource,
    RequestError, RequestOutput,
};

struct Fixture {
    model: Arc<Phi4VisionModel>,
    preparer: fovea_model::input::RequestPreparer,
    cases: Vec<PreparedCase>,
}

fn fixture() -> Fixture {
    let preparer = golden_preparer();
    Fixture {
        model: Arc::new(golden_model(DType::F32)),
        cases: prepared_golden_cases(&preparer),
        preparer,
    }
}

impl Fixture {
    fn engine(&self, config: EngineConfig) -> EngineHandle {
        Engine::start(
            Arc::clone(&self.model),
            self.preparer.tokenizer().clone(),
            config,
        )
        .unwrap()
    }

    /// The golden request of `case`: greedy, through end-of-turn tokens, as many tokens as the
    /// reference generated.
    fn golden_request(&self, case: &PreparedCase) -> GenerateRequest {
        GenerateRequest {
            prompt_ids: case.request.prompt_ids.clone(),
            images: ImageSource::pixels(case.request.images.clone()),
            sampling: SamplingParams::default(),
            max_new_tokens: case.golden.greedy_tokens.len(),
            stop_token_ids: Vec::new(),
            ignore_eos: true,
            stop_strings: Vec::new(),
            skip_special_tokens: false,
            replayed_tokens: 0,
        }
    }

    fn case(&self, name: &str) -> &PreparedCase {
        self.cases
            .iter()
            .find(|case| case.golden.name == name)
            .unwrap()
    }
}

/// Asserts that `output` is `case`'s golden completion.
fn assert_golden(output: &RequestOutput, case: &PreparedCase) {
    let name = &case.golden.name;
    assert_eq!(
        output.completion.reason,
        FinishReason::Length,
        "{name}: finish reason"
    );
    assert_eq!(
        output.token_ids, case.golden.greedy_tokens,
        "{name}: tokens"
    );
    let usage = output.completion.usage;
    assert_eq!(
        usage.prompt_tokens,
        case.request.prompt_ids.len(),
        "{name}: prompt tokens"
    );
    let image_tokens: usize = case
        .request
        .images
        .iter()
        .map(|(placement, _)| placement.len)
        .sum();
    assert_eq!(usage.image_tokens, image_tokens, "{name}: image tokens");
    assert_eq!(
        usage.completion_tokens,
        case.golden.greedy_tokens.len(),
        "{name}: completion tokens"
    );
}

fn assert_idle(engine: &EngineHandle) {
    let stats = engine.stats();
    assert_eq!(
        stats.free_blocks, stats.total_blocks,
        "every block is free again: {stats:?}"
    );
    assert_eq!(
        (stats.running, stats.waiting, stats.queued_tokens),
        (0, 0, 0),
        "{stats:?}"
    );
}

#[test]
fn every_golden_case_alone_gives_the_golden_tokens() {
    let fixture = fixture();
    let engine = fixture.engine(EngineConfig::new(512));
    for case in &fixture.cases {
        let output = engine.submit(fixture.golden_request(case)).wait();
        assert_golden(&output, case);
        assert_eq!(output.completion.preemptions, 0);
        let timings = output.completion.timings;
        let first_token = timings.time_to_first_token.expect("a token was generated");
        assert!(
            timings.queue <= first_token && first_token <= timings.total,
            "{timings:?}"
        );
        assert_idle(&engine);
    }
}

#[test]
fn batched_requests_get_logprobs_with_every_token_that_match_the_reference() {
    let fixture = fixture();
    let golden = GoldenTensors::load();
    let engine = fixture.engine(EngineConfig::new(2048));
    let with_logprobs = |case| GenerateRequest {
        sampling: SamplingParams {
            logprobs: Some(3),
            ..SamplingParams::default()
        },
        ..fixture.golden_request(case)
    };
    let streams: Vec<_> = fixture
        .cases
        .iter()
        .map(|case| engine.submit(with_logprobs(case)))
        .collect();
    let without = engine.submit(fixture.golden_request(&fixture.cases[0]));
    for (stream, case) in streams.into_iter().zip(&fixture.cases) {
        let output = stream.wait();
        assert_golden(&output, case);
        let name = &case.golden.name;
        assert_eq!(
            output.logprobs.len(),
            output.token_ids.len(),
            "{name}: one entry per token"
        );
        for (token, logprobs) in output.token_ids.iter().zip(&output.logprobs) {
            assert_eq!(logprobs.top.len(), 3, "{name}");
            assert_eq!(
                logprobs.top[0].token_id, *token,
                "{name}: greedy picks the most likely"
            );
            assert_eq!(logprobs.logprob, logprobs.top[0].logprob, "{name}");
            assert!(
                logprobs
                    .top
                    .windows(2)
                    .all(|w| w[0].logprob >= w[1].logprob),
                "{name}: sorted"
            );
        }
        let reference = reference_log_softmax(&golden.prefill_last_logits(name));
        let first = f64::from(output.logprobs[0].logprob);
        let expected = reference[output.token_ids[0] as usize];
        assert!(
            (first - expected).abs() < 1e-4,
            "{name}: first logprob {first}, reference {expected}"
        );
    }
    assert!(
        without.wait().logprobs.is_empty(),
        "no logprobs unless asked for"
    );
    assert_idle(&engine);
}

#[test]
fn sixteen_concurrent_requests_all_give_their_golden_tokens() {
    let fixture = fixture();
    for prefix_caching in [true, false] {
        let engine = fixture.engine(EngineConfig {
            prefix_caching,
            ..EngineConfig::new(2048)
        });
        let cases: Vec<&PreparedCase> = fixture.cases.iter().cycle().take(16).collect();
        let streams: Vec<_> = cases
            .iter()
            .map(|case| engine.submit(fixture.golden_request(case)))
            .collect();
        for (stream, case) in streams.into_iter().zip(&cases) {
            assert_golden(&stream.wait(), case);
        }
        assert_idle(&engine);
        // Chart and screen 3 times each, the two-image case 3 times: 4 distinct images, each
        // encoded once. Without prefix caching every later use is a feature-cache hit; with it,
        // most later uses skip the image altogether.
        let stats = engine.stats();
        assert_eq!(stats.images_encoded, 4, "{stats:?}");
        if !prefix_caching {
            assert_eq!(stats.image_cache_hits, 8, "{stats:?}");
        }
    }
}

#[test]
fn a_repeated_prompt_reuses_its_cached_blocks_up_to_its_first_different_image() {
    let fixture = fixture();
    let engine = fixture.engine(EngineConfig::new(512));
    let case = fixture.case("chart_nothink");
    let first = engine.submit(fixture.golden_request(case)).wait();
    assert_eq!(first.completion.usage.cached_tokens, 0);
    assert_idle(&engine);
    assert!(engine.stats().cached_blocks > 0);

    // All full blocks but the one holding the last prompt token (731): 45 blocks of 16.
    let again = engine.submit(fixture.golden_request(case)).wait();
    assert_golden(&again, case);
    assert_eq!(again.completion.usage.cached_tokens, 720);

    // Another image of the same size: only the 26 blocks before the image (at 418) are shared.
    let mut images = case.request.images.clone();
    images[0]
        .1
        .patches
        .iter_mut()
        .for_each(|value| *value = -*value);
    let request = GenerateRequest {
        images: ImageSource::pixels(images.clone()),
        ..fixture.golden_request(case)
    };
    let other_image = engine.submit(request.clone()).wait();
    assert_eq!(other_image.completion.usage.cached_tokens, 416);
    let alone = generate(
        &mut RankGroup::single(SequenceRank::new(Arc::clone(&fixture.model))),
        &GenerationRequest {
            prompt_ids: &request.prompt_ids,
            images: &images,
            max_new_tokens: request.max_new_tokens,
            sampling: SamplingParams::default(),
            stop_token_ids: &[],
            ignore_eos: true,
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(other_image.token_ids, alone.token_ids);
    assert_idle(&engine);
}

#[test]
fn preemption_under_a_tiny_block_budget_still_gives_the_golden_tokens() {
    let fixture = fixture();
    for prefix_caching in [false, true] {
        // screen_grounding alone needs 4046 of the 4160 slots: everything else has to make way.
        let config = EngineConfig {
            max_batch_tokens: 256,
            prefix_caching,
            ..EngineConfig::new(260)
        };
        let engine = fixture.engine(config);
        let cases: Vec<&PreparedCase> = fixture.cases.iter().cycle().take(8).collect();
        let streams: Vec<_> = cases
            .iter()
            .map(|case| engine.submit(fixture.golden_request(case)))
            .collect();
        let mut preemptions = 0;
        for (stream, case) in streams.into_iter().zip(&cases) {
            let output = stream.wait();
            assert_golden(&output, case);
            preemptions += output.completion.preemptions;
        }
        assert!(preemptions > 0, "the budget was meant to force preemptions");
        assert_idle(&engine);
    }
}

#[test]
fn cancelling_running_and_waiting_requests_frees_every_block() {
    let fixture = fixture();
    let config = EngineConfig {
        max_running: 1,
        ..EngineConfig::new(512)
    };
    let engine = fixture.engine(config);
    let case = fixture.case("chart_nothink");
    let long = GenerateRequest {
        max_new_tokens: 2000,
        ..fixture.golden_request(case)
    };
    let mut running = engine.submit(long.clone());
    let waiting = engine.submit(long.clone());
    // Let the first one generate a little.
    let first_tokens: Vec<u32> = (0..3)
        .map(|_| match running.events.blocking_recv() {
            Some(Event::Token { id, .. }) => id,
            other => panic!("expected a token, got {other:?}"),
        })
        .collect();
    assert_eq!(first_tokens, case.golden.greedy_tokens[..3]);
    assert_eq!(
        engine.stats().waiting,
        1,
        "max_running 1 keeps the second one waiting"
    );
    engine.cancel(waiting.id);
    let output = waiting.wait();
    assert_eq!(output.completion.reason, FinishReason::Cancelled);
    assert!(output.token_ids.is_empty());
    engine.cancel(running.id);
    let output = running.wait();
    assert_eq!(output.completion.reason, FinishReason::Cancelled);
    assert_eq!(
        output.completion.usage.completion_tokens,
        3 + output.token_ids.len()
    );
    assert_idle(&engine);

    // Dropping the receiver cancels too; the engine notices at its next step.
    let dropped = engine.submit(long);
    drop(dropped);
    let after = engine.submit(fixture.golden_request(case)).wait();
    assert_golden(&after, case);
    assert_idle(&engine);
}

#[test]
fn requests_that_can_never_fit_get_an_error_event_at_once() {
    let fixture = fixture();
    let engine = fixture.engine(EngineConfig::new(16));
    let case = fixture.case("text_only_auto");
    let output = engine.submit(fixture.golden_request(case)).wait();
    assert!(
        matches!(
            output.completion.reason,
            FinishReason::Error(RequestError::ExceedsKvCache {
                prompt_tokens: 435,
                capacity_tokens: 256,
                ..
            })
        ),
        "{:?}",
        output.completion.reason
    );
    assert!(output.token_ids.is_empty());
    let too_long = GenerateRequest {
        max_new_tokens: 40_000,
        ..fixture.golden_request(case)
    };
    let reason = engine.submit(too_long).wait().completion.reason;
    assert!(
        matches!(
            reason,
            FinishReason::Error(RequestError::ExceedsContext { .. })
        ),
        "{reason:?}"
    );
    let empty = GenerateRequest {
        prompt_ids: Vec::new(),
        images: Vec::new(),
        ..fixture.golden_request(case)
    };
    let reason = engine.submit(empty).wait().completion.reason;
    assert!(
        matches!(reason, FinishReason::Error(RequestError::Invalid(_))),
        "{reason:?}"
    );
    assert_idle(&engine);
}

#[test]
fn stop_tokens_and_stop_strings_end_generation_early() {
    let fixture = fixture();
    let engine = fixture.engine(EngineConfig::new(512));
    let case = fixture.case("text_think_multiturn");
    let tokenizer = fixture.preparer.tokenizer();

    let stop_token = case.golden.greedy_tokens[4];
    let output = engine
        .submit(GenerateRequest {
            stop_token_ids: vec![stop_token],
            ..fixture.golden_request(case)
        })
        .wait();
    assert_eq!(output.completion.reason, FinishReason::Stop);
    let first_stop = case
        .golden
        .greedy_tokens
        .iter()
        .position(|&t| t == stop_token)
        .unwrap();
    assert_eq!(
        output.token_ids,
        case.golden.greedy_tokens[..=first_stop],
        "the stop token is the last one sent"
    );

    // A stop string made of the text of tokens 6 and 7: generation ends at token 7 and the
    // text at the end of token 5.
    let full_text = tokenizer.decode(&case.golden.greedy_tokens, false).unwrap();
    let before = tokenizer
        .decode(&case.golden.greedy_tokens[..6], false)
        .unwrap();
    let through = tokenizer
        .decode(&case.golden.greedy_tokens[..8], false)
        .unwrap();
    assert!(full_text.starts_with(&through) && through.starts_with(&before));
    let stop = through[before.len()..].to_string();
    assert!(
        !before.contains(&stop),
        "the stop string must first appear at token 6"
    );
    let output = engine
        .submit(GenerateRequest {
            stop_strings: vec![stop],
            ..fixture.golden_request(case)
        })
        .wait();
    assert_eq!(output.completion.reason, FinishReason::Stop);
    assert_eq!(output.token_ids, case.golden.greedy_tokens[..8]);
    assert_eq!(output.text, before);
    assert_idle(&engine);
}

#[test]
fn seeded_sampling_matches_single_sequence_generation_while_batched() {
    let fixture = fixture();
    let engine = fixture.engine(EngineConfig::new(1024));
    let sampling = |seed| SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        top_k: 50,
        seed,
        logprobs: None,
    };
    let streams: Vec<_> = fixture
        .cases
        .iter()
        .filter(|case| case.golden.name != "screen_grounding")
        .enumerate()
        .map(|(seed, case)| {
            let request = GenerateRequest {
                sampling: sampling(seed as u64),
                max_new_tokens: 16,
                ..fixture.golden_request(case)
            };
            (case, seed as u64, engine.submit(request))
        })
        .collect();
    for (case, seed, stream) in streams {
        let alone = generate(
            &mut RankGroup::single(SequenceRank::new(Arc::clone(&fixture.model))),
            &GenerationRequest {
                prompt_ids: &case.request.prompt_ids,
                images: &case.request.images,
                max_new_tokens: 16,
                sampling: sampling(seed),
                stop_token_ids: &[],
                ignore_eos: true,
            },
            |_| {},
        )
        .unwrap();
        let output = stream.wait();
        assert_eq!(output.token_ids, alone.token_ids, "{}", case.golden.name);
        let text = fixture
            .preparer
            .tokenizer()
            .decode(&alone.token_ids, false)
            .unwrap();
        assert_eq!(output.text, text, "{}", case.golden.name);
    }
    assert_idle(&engine);
}

#[test]
fn dropping_the_last_handle_cancels_what_is_running() {
    let fixture = fixture();
    let engine = fixture.engine(EngineConfig::new(512));
    let case = fixture.case("text_only_auto");
    let mut stream = engine.submit(GenerateRequest {
        max_new_tokens: 4000,
        ..fixture.golden_request(case)
    });
    assert!(matches!(
        stream.events.blocking_recv(),
        Some(Event::Token { .. })
    ));
    drop(engine);
    assert_eq!(stream.wait().completion.reason, FinishReason::Cancelled);
}

#[test]
fn a_bf16_model_gives_the_tokens_of_single_sequence_generation() {
    let fixture = fixture();
    let model = Arc::new(golden_model(DType::BF16));
    let engine = Engine::start(
        Arc::clone(&model),
        fixture.preparer.tokenizer().clone(),
        EngineConfig::new(1024),
    )
    .unwrap();
    let cases: Vec<&PreparedCase> = fixture
        .cases
        .iter()
        .filter(|case| case.golden.name != "screen_grounding")
        .collect();
    let streams: Vec<_> = cases
        .iter()
        .map(|case| engine.submit(fixture.golden_request(case)))
        .collect();
    for (case, stream) in cases.iter().zip(streams) {
        let request = GenerationRequest {
            prompt_ids: &case.request.prompt_ids,
            images: &case.request.images,
            max_new_tokens: case.golden.greedy_tokens.len(),
            sampling: SamplingParams::default(),
            stop_token_ids: &[],
            ignore_eos: true,
        };
        let alone = generate(
            &mut RankGroup::single(SequenceRank::new(Arc::clone(&model))),
            &request,
            |_| {},
        )
        .unwrap();
        assert_eq!(
            stream.wait().token_ids,
            alone.token_ids,
            "{}",
            case.golden.name
        );
    }
}
