//! `fovea bench --dump-workload DIR`: writes the exact requests a benchmark sends, with the prompt
//! ids the server makes of each, so that another client (`bench/static_batch.py`) can replay the
//! identical workload and check that it tokenizes it as Fovea does.
//!
//! `DIR/workload.json` is `{"requests": [...]}` in sending order; each request has `messages`
//! (`role` and `content` parts `{"type": "text", "text"}` or `{"type": "image", "file"}`, the
//! file's name relative to `DIR`), `mode` (`auto`, `think` or `nothink`), `max_tokens` (null:
//! unset), `temperature`, `ignore_eos` and `prompt_token_ids` (the server's `Tokenize` answer,
//! every image position as 100256). Image parts are written next to it as the bytes sent.

use std::path::{Path, PathBuf};

use fovea_client::{Client, ClientError};
use fovea_proto::v1::{ChatMessage, ReasoningMode, Role, content_part};
use serde_json::{Value, json};

use super::workload::BenchRequest;

/// The file, inside the dump directory, that lists the requests.
pub const WORKLOAD_FILE: &str = "workload.json";

/// Why a workload could not be dumped.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot tokenize request {index} for --dump-workload: {source}")]
    Tokenize { index: usize, source: ClientError },
}

/// Writes `requests` into `dir` (created if missing), asking the server for each one's prompt ids.
pub async fn write(
    client: &Client,
    requests: &[BenchRequest],
    dir: &Path,
) -> Result<(), DumpError> {
    std::fs::create_dir_all(dir).map_err(|source| DumpError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut entries = Vec::with_capacity(requests.len());
    for (index, BenchRequest { request, .. }) in requests.iter().enumerate() {
        let tokenized = client
            .tokenize(request.clone())
            .await
            .map_err(|source| DumpError::Tokenize { index, source })?;
        let sampling = request.sampling.clone().unwrap_or_default();
        entries.push(json!({
            "messages": messages_json(&request.messages, index, dir)?,
            "mode": mode_name(request.mode()),
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "ignore_eos": sampling.ignore_eos,
            "prompt_token_ids": tokenized.token_ids,
        }));
    }
    let path = dir.join(WORKLOAD_FILE);
    let text = serde_json::to_string(&json!({ "requests": entries })).map_err(std::io::Error::from);
    text.and_then(|text| std::fs::write(&path, text + "\n"))
        .map_err(|source| DumpError::Write { path, source })
}

/// Request `index`'s messages as JSON, its images written to `dir` as `request-NNNN-image-K.EXT`.
fn messages_json(
    messages: &[ChatMessage],
    index: usize,
    dir: &Path,
) -> Result<Vec<Value>, DumpError> {
    let mut images = 0;
    let mut out = Vec::with_capacity(messages.len());
    for message in messages {
        let mut content = Vec::with_capacity(message.content.len());
        for part in &message.content {
            match &part.part {
                Some(content_part::Part::Text(text)) => {
                    content.push(json!({ "type": "text", "text": text }))
                }
                Some(content_part::Part::Image(image)) => {
                    let extension = image::guess_format(&image.data).map_or("bin", |format| {
                        format.extensions_str().first().copied().unwrap_or("bin")
                    });
                    let file = format!("request-{index:04}-image-{images}.{extension}");
                    let path = dir.join(&file);
                    std::fs::write(&path, &image.data)
                        .map_err(|source| DumpError::Write { path, source })?;
                    content.push(json!({ "type": "image", "file": file }));
                    images += 1;
                }
                None => {}
            }
        }
        out.push(json!({ "role": role_name(message.role()), "content": content }));
    }
    Ok(out)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Unspecified => "unspecified",
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

fn mode_name(mode: ReasoningMode) -> &'static str {
    match mode {
        ReasoningMode::Unspecified | ReasoningMode::Auto => "auto",
        ReasoningMode::Think => "think",
        ReasoningMode::Nothink => "nothink",
    }
}
