//! From a rendered prompt to model input ids, with a run of placeholder ids for every image.

use std::path::Path;
use std::sync::Arc;

use super::chat_template::{ChatMessage, ChatTemplate};
use super::error::TextError;
use super::mode::Mode;
use super::special_tokens::IMAGE_PLACEHOLDER_ID;
use super::tokenizer::TextTokenizer;

/// The marker that stands for one image in message text.
pub const IMAGE_MARKER: &str = "<image>";

/// Where one image's features go in [`TokenizedPrompt::ids`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSpan {
    /// Index of the image's first position.
    pub start: usize,
    /// Number of positions (the image's patch grid `h * w`).
    pub len: usize,
}

/// A prompt ready for prefill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    /// Token ids; every image position holds [`IMAGE_PLACEHOLDER_ID`].
    pub ids: Vec<u32>,
    /// One span per image, in image order.
    pub image_spans: Vec<ImageSpan>,
}

/// Tokenizes a rendered prompt, expanding the `n`-th `<image>` marker into
/// `image_token_counts[n]` placeholder ids.
///
/// The prompt is split on `<image>` before tokenizing and each text piece is tokenized on its own
/// (special tokens recognized, no BOS/EOS), as the reference processor does, so no BPE merge spans
/// an image boundary. The number of markers must equal the number of images.
pub fn tokenize_prompt(
    tokenizer: &TextTokenizer,
    prompt: &str,
    image_token_counts: &[usize],
) -> Result<TokenizedPrompt, TextError> {
    let markers = prompt.matches(IMAGE_MARKER).count();
    if markers != image_token_counts.len() {
        return Err(TextError::ImageCountMismatch {
            markers,
            images: image_token_counts.len(),
        });
    }
    let mut pieces = prompt.split(IMAGE_MARKER);
    let mut ids = Vec::new();
    let mut image_spans = Vec::with_capacity(image_token_counts.len());
    // `split` yields one more piece than there are markers: text, then (image, text) pairs.
    if let Some(first) = pieces.next() {
        ids.extend(tokenizer.encode(first)?);
    }
    for (&len, text) in image_token_counts.iter().zip(pieces) {
        image_spans.push(ImageSpan {
            start: ids.len(),
            len,
        });
        ids.resize(ids.len() + len, IMAGE_PLACEHOLDER_ID);
        ids.extend(tokenizer.encode(text)?);
    }
    Ok(TokenizedPrompt { ids, image_spans })
}

/// The chat template and tokenizer of one checkpoint: messages in, input ids out.
#[derive(Debug)]
pub struct PromptBuilder {
    template: ChatTemplate,
    tokenizer: Arc<TextTokenizer>,
}

impl PromptBuilder {
    /// Loads `chat_template.jinja`, `tokenizer_config.json` (optional) and `tokenizer.json` from a
    /// checkpoint directory.
    pub fn from_model_dir(dir: &Path) -> Result<Self, TextError> {
        Ok(Self::new(
            ChatTemplate::from_model_dir(dir)?,
            Arc::new(TextTokenizer::from_file(&dir.join("tokenizer.json"))?),
        ))
    }

    /// Bundles an already loaded template and tokenizer.
    pub fn new(template: ChatTemplate, tokenizer: Arc<TextTokenizer>) -> Self {
        Self {
            template,
            tokenizer,
        }
    }

    /// The prompt text: the rendered template plus `mode`'s suffix.
    pub fn render_prompt(&self, messages: &[ChatMessage], mode: Mode) -> Result<String, TextError> {
        self.template.render(messages, mode)
    }

    /// The prompt's ids and image spans; see [`tokenize_prompt`].
    pub fn tokenize_prompt(
        &self,
        prompt: &str,
        image_token_counts: &[usize],
    ) -> Result<TokenizedPrompt, TextError> {
        tokenize_prompt(&self.tokenizer, prompt, image_token_counts)
    }

    /// The tokenizer, shared, e.g. to start a [`Detokenizer`](super::Detokenizer) per request.
    pub fn tokenizer(&self) -> &Arc<TextTokenizer> {
        &self.tokenizer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::golden_dir;
    use crate::text::golden::{golden_cases, golden_tokenizer};

    fn golden_token_counts(case: &crate::text::golden::GoldenCase) -> Vec<usize> {
        case.image_spans.iter().map(|span| span.tokens).collect()
    }

    #[test]
    fn golden_prompts_tokenize_to_golden_input_ids() {
        for case in golden_cases() {
            let prompt = tokenize_prompt(
                golden_tokenizer(),
                &case.prompt_text,
                &golden_token_counts(case),
            )
            .unwrap();
            assert_eq!(prompt.ids, case.input_ids, "case {}", case.name);
            let starts: Vec<usize> = prompt.image_spans.iter().map(|span| span.start).collect();
            let golden_starts: Vec<usize> =
                case.image_spans.iter().map(|span| span.start).collect();
            assert_eq!(starts, golden_starts, "case {}", case.name);
        }
    }

    #[test]
    fn image_spans_cover_exactly_the_placeholder_runs() {
        let prompt =
            tokenize_prompt(golden_tokenizer(), "a<image>b <image><image>c", &[2, 3, 1]).unwrap();
        let placeholders: Vec<usize> = (0..prompt.ids.len())
            .filter(|&i| prompt.ids[i] == IMAGE_PLACEHOLDER_ID)
            .collect();
        let covered: Vec<usize> = prompt
            .image_spans
            .iter()
            .flat_map(|span| span.start..span.start + span.len)
            .collect();
        assert_eq!(covered, placeholders);
        assert_eq!(prompt.image_spans[1].start + 3, prompt.image_spans[2].start);
    }

    #[test]
    fn marker_and_image_count_mismatch_names_both_counts() {
        let error = tokenize_prompt(golden_tokenizer(), "<image> and <image>", &[4]).unwrap_err();
        assert!(matches!(
            error,
            TextError::ImageCountMismatch {
                markers: 2,
                images: 1
            }
        ));
        assert!(
            error
                .to_string()
                .contains("2 `<image>` marker(s) but 1 image(s)"),
            "{error}"
        );
    }

    #[test]
    fn prompt_builder_renders_and_tokenizes_golden_cases() {
        let builder = PromptBuilder::from_model_dir(&golden_dir().join("model")).unwrap();
        let case = &golden_cases()[4];
        let prompt = builder.render_prompt(&case.messages, case.mode()).unwrap();
        let tokenized = builder
            .tokenize_prompt(&prompt, &golden_token_counts(case))
            .unwrap();
        assert_eq!(tokenized.ids, case.input_ids);
    }
}
