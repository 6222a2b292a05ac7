//! Messages shared by the tests: a multimodal request and the stream a server answers it with.

use fovea_proto::v1::{
    ChatMessage, ContentPart, FinishReason, GenerateFinal, GenerateRequest, GenerateResponse,
    Image, ReasoningMode, Role, SamplingParams, Segment, Timings, TokenDelta, TokenLogprob,
    TokenLogprobs, Usage, content_part::Part, generate_response::Event,
};
use prost::bytes::Bytes;

/// The id of `</think>`, which closes the reasoning.
pub const THINK_CLOSE_ID: u32 = 100_351;
/// The id of `<|im_end|>`, the end-of-turn stop token.
pub const IM_END_ID: u32 = 100_265;

/// A text part.
pub fn text(text: &str) -> ContentPart {
    ContentPart {
        part: Some(Part::Text(text.to_owned())),
    }
}

/// An image part with the given file bytes and MIME type.
pub fn image(data: &'static [u8], mime_type: &str) -> ContentPart {
    ContentPart {
        part: Some(Part::Image(Image {
            data: Bytes::from_static(data),
            mime_type: mime_type.to_owned(),
        })),
    }
}

/// A two-turn conversation with two images between text, in think mode, every sampling field set.
pub fn multimodal_request() -> GenerateRequest {
    GenerateRequest {
        request_id: "req-42".to_owned(),
        tenant: "team-vision".to_owned(),
        model: "phi-4-reasoning-vision-15b".to_owned(),
        messages: vec![
            ChatMessage {
                role: Role::User.into(),
                content: vec![
                    text("Compare"),
                    image(b"\x89PNG\r\n\x1a\n-chart", "image/png"),
                ],
            },
            ChatMessage {
                role: Role::Assistant.into(),
                content: vec![text("A bar chart.")],
            },
            ChatMessage {
                role: Role::User.into(),
                content: vec![text("and"), image(b"\xff\xd8\xff-photo", ""), text("?")],
            },
        ],
        mode: ReasoningMode::Think.into(),
        sampling: Some(SamplingParams {
            max_tokens: Some(64),
            temperature: 0.7,
            top_p: Some(0.9),
            top_k: 40,
            seed: Some(0),
            stop: vec!["\n\nUser:".to_owned()],
            stop_token_ids: vec![100_257],
            ignore_eos: false,
            logprobs: Some(1),
        }),
    }
}

/// What a server streams for a think-mode request: two reasoning deltas (the second closing the
/// reasoning), two answer deltas (the last ending with the stop token, whose text is not sent),
/// then the final message.
pub fn canned_stream(request_id: &str) -> Vec<GenerateResponse> {
    let delta = |token_ids: Vec<u32>, text: &str, segment: Segment| {
        let logprobs = token_ids
            .iter()
            .map(|&token_id| TokenLogprobs {
                logprob: -0.25,
                top: vec![TokenLogprob {
                    token_id,
                    logprob: -0.25,
                }],
            })
            .collect();
        GenerateResponse {
            event: Some(Event::Delta(TokenDelta {
                token_ids,
                text: text.to_owned(),
                segment: segment.into(),
                logprobs,
            })),
        }
    };
    let last = GenerateResponse {
        event: Some(Event::Final(GenerateFinal {
            request_id: request_id.to_owned(),
            finish_reason: FinishReason::Stop.into(),
            error: String::new(),
            matched_stop: String::new(),
            seed: 0,
            usage: Some(Usage {
                prompt_tokens: 812,
                image_tokens: 768,
                cached_tokens: 256,
                completion_tokens: 7,
                reasoning_tokens: 3,
            }),
            timings: Some(Timings {
                queue_us: 1_500,
                time_to_first_token_us: 95_000,
                total_us: 180_000,
            }),
        })),
    };
    vec![
        delta(vec![10_267, 1_518], "Two charts", Segment::Reasoning),
        delta(vec![THINK_CLOSE_ID], "</think>", Segment::Reasoning),
        delta(vec![32, 3_703], "Both bars", Segment::Answer),
        delta(vec![13, IM_END_ID], ".", Segment::Answer),
        last,
    ]
}
