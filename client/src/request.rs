//! Building a generation request: a conversation of text and images, a reasoning mode, and how
//! tokens are chosen and when to stop.

use std::path::Path;

use fovea_proto::v1::{self as wire, ChatMessage, ContentPart, content_part};

use crate::error::ClientError;

/// How the model is asked to answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// The model decides whether to reason first.
    #[default]
    Auto,
    /// Reason first: the completion opens inside `<think>`.
    Think,
    /// Answer directly.
    NoThink,
}

impl From<Mode> for wire::ReasoningMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Auto => wire::ReasoningMode::Auto,
            Mode::Think => wire::ReasoningMode::Think,
            Mode::NoThink => wire::ReasoningMode::Nothink,
        }
    }
}

/// One piece of a message, in reading order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Literal text.
    Text(String),
    /// An encoded image file's bytes (PNG, JPEG, WebP, GIF or BMP).
    Image(Vec<u8>),
}

impl Part {
    /// An image part from a file's bytes.
    ///
    /// ```no_run
    /// let part = fovea_client::Part::image_file("chart.png")?;
    /// # Ok::<(), fovea_client::ClientError>(())
    /// ```
    pub fn image_file(path: impl AsRef<Path>) -> Result<Part, ClientError> {
        let path = path.as_ref();
        std::fs::read(path)
            .map(Part::Image)
            .map_err(|source| ClientError::ImageFile {
                path: path.to_path_buf(),
                source,
            })
    }

    fn into_wire(self) -> ContentPart {
        let part = match self {
            Part::Text(text) => content_part::Part::Text(text),
            Part::Image(data) => content_part::Part::Image(wire::Image {
                data: data.into(),
                mime_type: String::new(),
            }),
        };
        ContentPart { part: Some(part) }
    }
}

impl From<&str> for Part {
    fn from(text: &str) -> Self {
        Part::Text(text.to_string())
    }
}

impl From<String> for Part {
    fn from(text: String) -> Self {
        Part::Text(text)
    }
}

/// A generation request under construction. Messages are kept in the order they are added; every
/// setter takes and returns the builder.
///
/// ```
/// use fovea_client::{GenerateRequestBuilder, Mode, Part};
/// let request = GenerateRequestBuilder::new()
///     .user(["What is in this picture?".into(), Part::Image(vec![0x89, b'P', b'N', b'G'])])
///     .mode(Mode::NoThink)
///     .max_tokens(64)
///     .temperature(0.7)
///     .seed(7)
///     .build();
/// assert_eq!(request.messages.len(), 1);
/// assert_eq!(request.sampling.unwrap().max_tokens, Some(64));
/// ```
#[derive(Debug, Clone, Default)]
pub struct GenerateRequestBuilder {
    request: wire::GenerateRequest,
    sampling: wire::SamplingParams,
}

impl GenerateRequestBuilder {
    /// An empty request: no messages, auto mode, greedy until end of turn.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a message from `role` made of `parts`, in order.
    pub fn message(mut self, role: wire::Role, parts: impl IntoIterator<Item = Part>) -> Self {
        self.request.messages.push(ChatMessage {
            role: role as i32,
            content: parts.into_iter().map(Part::into_wire).collect(),
        });
        self
    }

    /// Adds a user message made of `parts` (text and images, in reading order).
    pub fn user(self, parts: impl IntoIterator<Item = Part>) -> Self {
        self.message(wire::Role::User, parts)
    }

    /// Adds a user message of text alone.
    pub fn user_text(self, text: impl Into<String>) -> Self {
        self.user([Part::Text(text.into())])
    }

    /// Adds one of the model's earlier answers, for multi-turn conversations.
    pub fn assistant_text(self, text: impl Into<String>) -> Self {
        self.message(wire::Role::Assistant, [Part::Text(text.into())])
    }

    /// Adds a system message (accepted; the Phi-4 template does not pass it to the model).
    pub fn system_text(self, text: impl Into<String>) -> Self {
        self.message(wire::Role::System, [Part::Text(text.into())])
    }

    /// The model to use, as ListModels names it; unset: the server's default.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.request.model = model.into();
        self
    }

    /// The caller's id for the request, returned in the final event.
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request.request_id = id.into();
        self
    }

    /// The tenant the request is accounted to.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.request.tenant = tenant.into();
        self
    }

    /// The reasoning mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.request.mode = wire::ReasoningMode::from(mode) as i32;
        self
    }

    /// Most tokens to generate, reasoning and answer together.
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.sampling.max_tokens = Some(max_tokens);
        self
    }

    /// Softmax temperature; 0 is greedy.
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.sampling.temperature = temperature;
        self
    }

    /// Nucleus sampling threshold, in (0, 1].
    pub fn top_p(mut self, top_p: f32) -> Self {
        self.sampling.top_p = Some(top_p);
        self
    }

    /// Keep only the `top_k` most likely tokens; 0: all.
    pub fn top_k(mut self, top_k: u32) -> Self {
        self.sampling.top_k = top_k;
        self
    }

    /// The sampler's seed, for reproducible sampling.
    pub fn seed(mut self, seed: u64) -> Self {
        self.sampling.seed = Some(seed);
        self
    }

    /// Adds a string that ends generation (at most 8).
    pub fn stop(mut self, stop: impl Into<String>) -> Self {
        self.sampling.stop.push(stop.into());
        self
    }

    /// Adds a token id that ends generation, besides end of turn.
    pub fn stop_token_id(mut self, token_id: u32) -> Self {
        self.sampling.stop_token_ids.push(token_id);
        self
    }

    /// Report each token's log probability and the `top` (0 to 20) most likely tokens at its
    /// position, on [`crate::GenerationEvent::Delta::logprobs`]. They come from the model's own
    /// distribution, before temperature, top-k and top-p.
    ///
    /// ```
    /// let request = fovea_client::GenerateRequestBuilder::new().user_text("Hi").logprobs(5).build();
    /// assert_eq!(request.sampling.unwrap().logprobs, Some(5));
    /// ```
    pub fn logprobs(mut self, top: u32) -> Self {
        self.sampling.logprobs = Some(top);
        self
    }

    /// Keep generating through end of turn until `max_tokens` (for benchmarks and tests).
    pub fn ignore_eos(mut self, ignore_eos: bool) -> Self {
        self.sampling.ignore_eos = ignore_eos;
        self
    }

    /// The wire request.
    pub fn build(self) -> wire::GenerateRequest {
        wire::GenerateRequest {
            sampling: Some(self.sampling),
            ..self.request
        }
    }
}

impl From<GenerateRequestBuilder> for wire::GenerateRequest {
    fn from(builder: GenerateRequestBuilder) -> Self {
        builder.build()
    }
}
