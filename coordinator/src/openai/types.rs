//! The JSON shapes of OpenAI's chat completions API, as far as Fovea serves it, plus Fovea's own
//! extra body fields (`mode`, `top_k`, `ignore_eos`). Unknown request fields are ignored, as
//! OpenAI clients send many that do not apply here.

use serde::{Deserialize, Serialize};

/// The body of `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    /// The model, as `GET /v1/models` lists it; empty or absent: the server's default model.
    #[serde(default)]
    pub model: String,
    /// The conversation, oldest message first.
    pub messages: Vec<Message>,
    /// Most tokens to generate (OpenAI's older name for `max_completion_tokens`).
    pub max_tokens: Option<u32>,
    /// Most tokens to generate, reasoning included; wins over `max_tokens`.
    pub max_completion_tokens: Option<u32>,
    /// Softmax temperature; absent: 1, as in OpenAI's API. 0 is greedy decoding.
    pub temperature: Option<f32>,
    /// Nucleus sampling threshold in (0, 1].
    pub top_p: Option<f32>,
    /// Sampler seed, for reproducible sampling.
    pub seed: Option<u64>,
    /// One stop string or several.
    pub stop: Option<Stop>,
    /// Stream the completion as Server-Sent Events of `chat.completion.chunk` objects.
    #[serde(default)]
    pub stream: bool,
    /// Return each generated token's log probability (`choices[].logprobs.content`).
    #[serde(default)]
    pub logprobs: bool,
    /// With `logprobs`: also the 0 to 20 most likely tokens at each position.
    pub top_logprobs: Option<u32>,
    /// Fovea extra: how the model is asked to answer; absent: auto.
    pub mode: Option<ReasoningMode>,
    /// Fovea extra: keep only the k most likely tokens; absent or 0: all.
    pub top_k: Option<u32>,
    /// Fovea extra: keep generating through the end-of-turn token.
    #[serde(default)]
    pub ignore_eos: bool,
}

/// `stop`: a string or an array of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Fovea's reasoning modes, by their names in the extra `mode` field.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningMode {
    Auto,
    Think,
    Nothink,
}

/// One chat message.
#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: Content,
}

/// Who wrote a message; OpenAI's `developer` is a system message.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[serde(alias = "developer")]
    System,
    User,
    Assistant,
}

/// A message's content: plain text, or parts in reading order.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

/// An image reference; Fovea accepts `data:` URIs only.
#[derive(Debug, Deserialize)]
pub struct ImageUrl {
    pub url: String,
}

/// The body of a non-streaming response.
#[derive(Debug, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// Unix time in seconds when the request was received.
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

/// The one choice of a completion.
#[derive(Debug, Serialize)]
pub struct Choice {
    pub index: u32,
    pub message: AssistantMessage,
    /// Every generated token's log probability when the request set `logprobs`; null otherwise.
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: &'static str,
}

/// The log probabilities of a choice's tokens (or of a chunk's).
#[derive(Debug, Serialize)]
pub struct ChoiceLogprobs {
    /// One entry per generated token, in order: reasoning, answer and stop token alike.
    pub content: Vec<ContentLogprob>,
}

/// One generated token: its log probability and the most likely tokens at its position.
#[derive(Debug, Serialize)]
pub struct ContentLogprob {
    /// The token's text (U+FFFD where it holds part of a character).
    pub token: String,
    /// Natural log of its probability under the model's distribution (before temperature,
    /// top-k and top-p).
    pub logprob: f32,
    /// The token's raw UTF-8 bytes; null for an id the tokenizer does not know.
    pub bytes: Option<Vec<u8>>,
    /// The `top_logprobs` most likely tokens, most likely first.
    pub top_logprobs: Vec<TopLogprob>,
}

/// One of the most likely tokens at a position.
#[derive(Debug, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
}

/// The generated message: the answer, and the reasoning that preceded it.
#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The answer: the text outside the think tags.
    pub content: String,
    /// The reasoning: the text inside the think tags (the tags themselves are not text).
    pub reasoning_content: String,
}

/// One Server-Sent Event of a streaming response.
#[derive(Debug, Serialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    /// Present on the last chunk only (the one with a `finish_reason`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// The one choice of a chunk.
#[derive(Debug, Serialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: ChunkDelta,
    /// The log probabilities of this chunk's tokens when the request set `logprobs`; null otherwise.
    pub logprobs: Option<ChoiceLogprobs>,
    /// `stop` or `length` on the last chunk; null before.
    pub finish_reason: Option<&'static str>,
}

/// What a chunk adds to the message.
#[derive(Debug, Default, Serialize)]
pub struct ChunkDelta {
    /// `assistant`, on the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

/// Token counts.
#[derive(Debug, Serialize)]
pub struct Usage {
    /// Prompt positions, image positions included.
    pub prompt_tokens: u32,
    /// Generated tokens, reasoning and stop token included.
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

/// The body of `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<Model>,
}

/// One served model.
#[derive(Debug, Serialize)]
pub struct Model {
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// Fovea extra: most tokens in prompt plus completion.
    pub context_length: u32,
}

/// The body of every error response.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, in OpenAI's error format.
#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    pub message: String,
    /// The error class, e.g. `invalid_request_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The gRPC status code it comes from, e.g. `invalid_argument`.
    pub code: &'static str,
}
