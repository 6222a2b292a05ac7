//! The golden fixture as the text tests need it, loaded once per test process.

use std::sync::OnceLock;

use serde::Deserialize;

use super::chat_template::{ChatMessage, ChatTemplate};
use super::tokenizer::TextTokenizer;
use crate::test_fixtures::golden_dir;

/// One case of `golden.json`, reduced to its text fields.
#[derive(Debug, Deserialize)]
pub struct GoldenCase {
    pub name: String,
    pub messages: Vec<ChatMessage>,
    pub mode: String,
    pub prompt_text: String,
    pub input_ids: Vec<u32>,
    pub image_spans: Vec<GoldenImageSpan>,
    pub greedy_tokens: Vec<u32>,
    pub greedy_text: String,
}

/// Where one image sits in a golden case's `input_ids`.
#[derive(Debug, Deserialize)]
pub struct GoldenImageSpan {
    pub start: usize,
    pub tokens: usize,
}

#[derive(Deserialize)]
struct GoldenFile {
    cases: Vec<GoldenCase>,
}

/// The cases of `golden.json`.
pub fn golden_cases() -> &'static [GoldenCase] {
    static CASES: OnceLock<Vec<GoldenCase>> = OnceLock::new();
    CASES.get_or_init(|| {
        let json = std::fs::read_to_string(golden_dir().join("golden.json")).unwrap();
        serde_json::from_str::<GoldenFile>(&json).unwrap().cases
    })
}

/// The golden checkpoint's tokenizer.
pub fn golden_tokenizer() -> &'static TextTokenizer {
    static TOKENIZER: OnceLock<TextTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        TextTokenizer::from_file(&golden_dir().join("model/tokenizer.json")).unwrap()
    })
}

/// The golden checkpoint's chat template.
pub fn golden_template() -> &'static ChatTemplate {
    static TEMPLATE: OnceLock<ChatTemplate> = OnceLock::new();
    TEMPLATE.get_or_init(|| ChatTemplate::from_model_dir(&golden_dir().join("model")).unwrap())
}
