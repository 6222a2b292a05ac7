//! From an OpenAI chat completion request to a `fovea.v1.GenerateRequest`: message parts keep
//! their order, `data:` image URIs are decoded to image bytes, sampling fields are renamed. Only
//! the shape is translated here; the `Generation` service validates the values.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fovea_proto::v1::{
    self as wire, ContentPart as WirePart, GenerateRequest, SamplingParams, content_part,
};

use super::error::ApiError;
use super::types::{
    ChatCompletionRequest, Content, ContentPart, Message, ReasoningMode, Role, Stop,
};

/// OpenAI's default temperature, used when a request gives none.
const DEFAULT_TEMPERATURE: f32 = 1.0;

/// The `Generation` request for `request`, under the id `request_id`.
pub fn generate_request(
    request: ChatCompletionRequest,
    request_id: String,
) -> Result<GenerateRequest, ApiError> {
    let messages = request
        .messages
        .into_iter()
        .enumerate()
        .map(|(index, message)| chat_message(index, message))
        .collect::<Result<_, _>>()?;
    let mode = match request.mode {
        None | Some(ReasoningMode::Auto) => wire::ReasoningMode::Auto,
        Some(ReasoningMode::Think) => wire::ReasoningMode::Think,
        Some(ReasoningMode::Nothink) => wire::ReasoningMode::Nothink,
    };
    let logprobs = match (request.logprobs, request.top_logprobs) {
        (true, top) => Some(top.unwrap_or(0)),
        (false, None) => None,
        (false, Some(_)) => {
            return Err(ApiError::bad_request(
                "top_logprobs needs \"logprobs\": true",
            ));
        }
    };
    let stop = match request.stop {
        None => Vec::new(),
        Some(Stop::One(stop)) => vec![stop],
        Some(Stop::Many(stops)) => stops,
    };
    Ok(GenerateRequest {
        request_id,
        model: request.model,
        messages,
        mode: mode as i32,
        sampling: Some(SamplingParams {
            max_tokens: request.max_completion_tokens.or(request.max_tokens),
            temperature: request.temperature.unwrap_or(DEFAULT_TEMPERATURE),
            top_p: request.top_p,
            top_k: request.top_k.unwrap_or(0),
            seed: request.seed,
            stop,
            ignore_eos: request.ignore_eos,
            logprobs,
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn chat_message(index: usize, message: Message) -> Result<wire::ChatMessage, ApiError> {
    let role = match message.role {
        Role::System => wire::Role::System,
        Role::User => wire::Role::User,
        Role::Assistant => wire::Role::Assistant,
    };
    let content = match message.content {
        Content::Text(text) => vec![content_part::Part::Text(text)],
        Content::Parts(parts) => parts
            .into_iter()
            .enumerate()
            .map(|(part_index, part)| match part {
                ContentPart::Text { text } => Ok(content_part::Part::Text(text)),
                ContentPart::ImageUrl { image_url } => data_uri_image(&image_url.url)
                    .map(content_part::Part::Image)
                    .map_err(|why| {
                        ApiError::bad_request(format!(
                            "messages[{index}].content[{part_index}].image_url: {why}"
                        ))
                    }),
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(wire::ChatMessage {
        role: role as i32,
        content: content
            .into_iter()
            .map(|part| WirePart { part: Some(part) })
            .collect(),
    })
}

/// The image in a `data:<mime type>;base64,<data>` URI, or why there is none.
fn data_uri_image(url: &str) -> Result<wire::Image, String> {
    let rest = url.strip_prefix("data:").ok_or(
        "only data URIs (data:image/png;base64,...) are accepted; the server does not fetch image URLs",
    )?;
    let (header, payload) = rest
        .split_once(',')
        .ok_or("the data URI has no ',' before its data")?;
    let mime_type = header
        .strip_suffix(";base64")
        .ok_or("only base64 data URIs (data:<mime type>;base64,<data>) are accepted")?;
    let data = STANDARD
        .decode(payload.trim())
        .map_err(|e| format!("the data URI's base64 data is invalid: {e}"))?;
    Ok(wire::Image {
        data: data.into(),
        mime_type: mime_type.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_uri_decodes_to_bytes_and_mime_type() {
        let image = data_uri_image("data:image/png;base64,iVBORw0K").unwrap();
        assert_eq!(image.mime_type, "image/png");
        assert_eq!(&image.data[..], b"\x89PNG\r\n");
    }

    #[test]
    fn remote_urls_and_plain_data_uris_are_refused() {
        assert!(
            data_uri_image("https://example.com/cat.png")
                .unwrap_err()
                .contains("only data URIs")
        );
        assert!(
            data_uri_image("data:image/png,rawbytes")
                .unwrap_err()
                .contains("base64")
        );
        assert!(
            data_uri_image("data:image/png;base64,%%%")
                .unwrap_err()
                .contains("invalid")
        );
    }

    #[test]
    fn parts_keep_their_order_and_extras_reach_the_sampling_params() {
        let body = r#"{"messages": [{"role": "user", "content": [
            {"type": "text", "text": "a"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
            {"type": "text", "text": "b"}]}],
            "max_tokens": 5, "max_completion_tokens": 7, "stop": "x",
            "mode": "think", "top_k": 3, "ignore_eos": true}"#;
        let request = generate_request(serde_json::from_str(body).unwrap(), "id".into()).unwrap();
        use content_part::Part::{Image, Text};
        let parts: Vec<_> = request.messages[0]
            .content
            .iter()
            .map(|p| p.part.clone().unwrap())
            .collect();
        assert!(matches!(&parts[..], [Text(a), Image(_), Text(b)] if a == "a" && b == "b"));
        assert_eq!(request.mode(), wire::ReasoningMode::Think);
        let sampling = request.sampling.unwrap();
        assert_eq!(
            (sampling.max_tokens, sampling.top_k, sampling.ignore_eos),
            (Some(7), 3, true)
        );
        assert_eq!(sampling.stop, ["x"]);
        assert_eq!(sampling.temperature, DEFAULT_TEMPERATURE);
        assert_eq!(sampling.logprobs, None);
    }

    #[test]
    fn logprobs_and_top_logprobs_become_the_logprobs_option() {
        let with = |extra: &str| {
            let body = format!(r#"{{"messages": [{{"role": "user", "content": "hi"}}]{extra}}}"#);
            generate_request(serde_json::from_str(&body).unwrap(), "id".into())
        };
        let logprobs = |extra| with(extra).unwrap().sampling.unwrap().logprobs;
        assert_eq!(logprobs(r#", "logprobs": true"#), Some(0));
        assert_eq!(
            logprobs(r#", "logprobs": true, "top_logprobs": 5"#),
            Some(5)
        );
        assert_eq!(logprobs(r#", "logprobs": false"#), None);
        let error = with(r#", "top_logprobs": 5"#).unwrap_err();
        assert!(
            error.body().error.message.contains("\"logprobs\": true"),
            "{error:?}"
        );
    }
}
