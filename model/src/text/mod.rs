//! The text side of the model: from chat messages to prompt token ids, and from generated ids back
//! to text.
//!
//! - [`ChatTemplate`] renders messages with the checkpoint's `chat_template.jinja` the way Hugging
//!   Face does, then appends the reasoning [`Mode`]'s suffix.
//! - [`TextTokenizer`] wraps the checkpoint's `tokenizer.json`; [`tokenize_prompt`] turns a rendered
//!   prompt into ids with a placeholder run for every `<image>` marker.
//! - [`Detokenizer`] turns generated ids into text one token at a time without splitting characters.
//! - [`build_phi4_tokenizer_json`] rebuilds the family's `tokenizer.json` offline from the
//!   `cl100k_base` ranks shipped in `tiktoken-rs`.
//!
//! [`PromptBuilder`] bundles the template and the tokenizer of one model directory.

mod byte_level;
mod chat_template;
mod detokenize;
mod error;
mod mode;
mod prompt;
mod special_tokens;
mod text_stream;
mod tokenizer;
mod tokenizer_json;

#[cfg(test)]
mod golden;

pub use chat_template::{ChatMessage, ChatTemplate, TemplateSpecialTokens};
pub use detokenize::Detokenizer;
pub use error::TextError;
pub use mode::Mode;
pub use prompt::{IMAGE_MARKER, ImageSpan, PromptBuilder, TokenizedPrompt, tokenize_prompt};
pub use special_tokens::{IMAGE_PLACEHOLDER_ID, NOTHINK_MARKER, THINK_OPEN};
pub use text_stream::{TextDelta, TextStream};
pub use tokenizer::TextTokenizer;
pub use tokenizer_json::build_phi4_tokenizer_json;
