//! The golden fixture as the text tests need it, loaded once per test process.

use std::sync::OnceLock;

use super::chat_template::ChatTemplate;
use super::tokenizer::TextTokenizer;
use crate::testing::golden_dir;

pub use crate::testing::GoldenCase;

/// The cases of `golden.json`.
pub fn golden_cases() -> &'static [GoldenCase] {
    static CASES: OnceLock<Vec<GoldenCase>> = OnceLock::new();
    CASES.get_or_init(crate::testing::golden_cases)
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
