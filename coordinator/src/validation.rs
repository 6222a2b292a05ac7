//! The edge of the public API: a `GenerateRequest` is checked once, here, and becomes a
//! [`ValidRequest`]; code past this point never sees an unchecked request. Every problem is an
//! INVALID_ARGUMENT status whose message says what is wrong.

use fovea_model::input::{InputError, PreparedRequest, RequestPreparer};
use fovea_model::logprobs::MAX_TOP_LOGPROBS;
use fovea_model::text::{ChatMessage, IMAGE_MARKER, Mode};
use fovea_proto::v1::{
    ChatMessage as WireMessage, GenerateRequest, ReasoningMode, Role, content_part,
};
use tonic::Status;

/// What the server accepts, beyond what the model itself imposes.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most tokens in prompt plus completion (the model's context).
    pub context_length: usize,
    /// Most images in one request.
    pub max_images: usize,
    /// Most bytes of one encoded image.
    pub max_image_bytes: usize,
}

/// Most stop strings and their length, as documented in `sampling.proto`.
const MAX_STOP_STRINGS: usize = 8;
const MAX_STOP_BYTES: usize = 64;
const MAX_ID_BYTES: usize = 128;

/// A request that passed every check, with its prompt prepared.
pub struct ValidRequest {
    pub request_id: Option<String>,
    pub tenant: String,
    pub mode: Mode,
    pub prepared: PreparedRequest,
    /// The encoded images, in prompt order (the worker decodes them again).
    pub image_bytes: Vec<Vec<u8>>,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Top alternatives to report with each token's log probability (0 to 20); `None`: no logprobs.
    pub logprobs: Option<u32>,
}

impl ValidRequest {
    /// Tokens of the prompt that are image patches.
    pub fn image_tokens(&self) -> usize {
        self.prepared
            .images
            .iter()
            .map(|(placement, _)| placement.len)
            .sum()
    }
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}

fn printable_id(value: &str, field: &str) -> Result<(), Status> {
    if value.len() > MAX_ID_BYTES || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(invalid(format!(
            "{field} must be at most {MAX_ID_BYTES} printable ASCII characters"
        )));
    }
    Ok(())
}

/// The chat messages with each image part replaced by an `<image>` marker, and the images' bytes in order.
pub fn chat_messages(
    messages: &[WireMessage],
    limits: &Limits,
) -> Result<(Vec<ChatMessage>, Vec<Vec<u8>>), Status> {
    if messages.is_empty() {
        return Err(invalid("messages must hold at least one message"));
    }
    let mut chat = Vec::with_capacity(messages.len());
    let mut images = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let role = match message.role() {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Unspecified => return Err(invalid(format!("messages[{index}] has no role"))),
        };
        if message.content.is_empty() {
            return Err(invalid(format!("messages[{index}] has no content parts")));
        }
        let mut content = String::new();
        for (part_index, part) in message.content.iter().enumerate() {
            match &part.part {
                Some(content_part::Part::Text(text)) => {
                    if text.contains(IMAGE_MARKER) {
                        return Err(invalid(format!(
                            "messages[{index}].content[{part_index}] contains a literal {IMAGE_MARKER}; send images as image parts"
                        )));
                    }
                    content.push_str(text);
                }
                Some(content_part::Part::Image(image)) => {
                    if image.data.len() > limits.max_image_bytes {
                        return Err(invalid(format!(
                            "messages[{index}].content[{part_index}]: image of {} bytes exceeds the limit of {} bytes",
                            image.data.len(),
                            limits.max_image_bytes
                        )));
                    }
                    content.push_str(IMAGE_MARKER);
                    images.push(image.data.to_vec());
                }
                None => {
                    return Err(invalid(format!(
                        "messages[{index}].content[{part_index}] is empty"
                    )));
                }
            }
        }
        chat.push(ChatMessage {
            role: role.to_string(),
            content,
        });
    }
    if images.len() > limits.max_images {
        return Err(invalid(format!(
            "{} images exceed the limit of {} per request",
            images.len(),
            limits.max_images
        )));
    }
    Ok((chat, images))
}

/// The model's reasoning mode for a wire mode.
pub fn mode(mode: ReasoningMode) -> Mode {
    match mode {
        ReasoningMode::Think => Mode::Think,
        ReasoningMode::Nothink => Mode::NoThink,
        ReasoningMode::Auto | ReasoningMode::Unspecified => Mode::Auto,
    }
}

/// Checks `request` and prepares its prompt (template, tokenizer, image preprocessing).
pub fn validate(
    request: &GenerateRequest,
    preparer: &RequestPreparer,
    limits: &Limits,
) -> Result<ValidRequest, Status> {
    printable_id(&request.request_id, "request_id")?;
    printable_id(&request.tenant, "tenant")?;
    let sampling = request.sampling.clone().unwrap_or_default();
    if !(sampling.temperature.is_finite() && (0.0..=100.0).contains(&sampling.temperature)) {
        return Err(invalid(format!(
            "temperature must be in [0, 100], got {}",
            sampling.temperature
        )));
    }
    let top_p = sampling.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid(format!("top_p must be in (0, 1], got {top_p}")));
    }
    if sampling.stop.len() > MAX_STOP_STRINGS {
        return Err(invalid(format!(
            "at most {MAX_STOP_STRINGS} stop strings, got {}",
            sampling.stop.len()
        )));
    }
    if let Some(bad) = sampling
        .stop
        .iter()
        .find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(invalid(format!(
            "stop strings must be 1 to {MAX_STOP_BYTES} bytes, got {bad:?}"
        )));
    }
    if let Some(top) = sampling
        .logprobs
        .filter(|&top| top as usize > MAX_TOP_LOGPROBS)
    {
        return Err(invalid(format!(
            "logprobs must be 0 to {MAX_TOP_LOGPROBS} (alternatives reported per token), got {top}"
        )));
    }
    if sampling.max_tokens == Some(0) {
        return Err(invalid("max_tokens must be at least 1"));
    }
    let (messages, images) = chat_messages(&request.messages, limits)?;
    let mode = mode(request.mode());
    let prepared = preparer
        .prepare(&messages, &images, mode)
        .map_err(|e| match e {
            InputError::Image { .. } | InputError::Text(_) => invalid(e.to_string()),
            InputError::PreprocessConfig(_) => Status::internal(e.to_string()),
        })?;
    let prompt_tokens = prepared.prompt_ids.len();
    if prompt_tokens >= limits.context_length {
        return Err(invalid(format!(
            "the prompt is {prompt_tokens} tokens; the context holds {} (prompt plus completion)",
            limits.context_length
        )));
    }
    let room = limits.context_length - prompt_tokens;
    let max_tokens = match sampling.max_tokens {
        Some(requested) if requested as usize > room => {
            return Err(invalid(format!(
                "max_tokens {requested} plus the {prompt_tokens}-token prompt exceeds the context of {}",
                limits.context_length
            )));
        }
        Some(requested) => requested as usize,
        None => room,
    };
    Ok(ValidRequest {
        request_id: (!request.request_id.is_empty()).then(|| request.request_id.clone()),
        tenant: request.tenant.clone(),
        mode,
        prepared,
        image_bytes: images,
        max_tokens,
        temperature: sampling.temperature,
        top_p,
        top_k: sampling.top_k as usize,
        seed: sampling.seed,
        stop: sampling.stop,
        stop_token_ids: sampling.stop_token_ids,
        ignore_eos: sampling.ignore_eos,
        logprobs: sampling.logprobs,
    })
}
