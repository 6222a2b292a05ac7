//! The checkpoint's `tokenizer.json`, loaded with Hugging Face `tokenizers`.

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;

use tokenizers::Tokenizer;
use tokenizers::decoders::DecoderWrapper;

use super::byte_level::token_to_bytes;
use super::error::TextError;

/// A byte-level BPE tokenizer with its added (special) tokens, as the Phi-4 family ships it.
///
/// Special tokens written in the text (`<|im_start|>`, `<think>`, ...) are recognized as single
/// tokens, as Hugging Face does; no BOS or EOS is ever added.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    special_ids: HashSet<u32>,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` from `path`.
    pub fn from_file(path: &Path) -> Result<Self, TextError> {
        let json = std::fs::read_to_string(path).map_err(|source| TextError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&json, &path.display().to_string())
    }

    /// Parses the contents of a `tokenizer.json`.
    ///
    /// ```no_run
    /// # use fovea_model::text::{TextTokenizer, build_phi4_tokenizer_json};
    /// let tokenizer = TextTokenizer::from_json(&build_phi4_tokenizer_json()?)?;
    /// assert_eq!(tokenizer.encode("<think>")?, [100_350]);
    /// # Ok::<(), fovea_model::text::TextError>(())
    /// ```
    pub fn from_json(json: &str) -> Result<Self, TextError> {
        Self::parse(json, "in-memory tokenizer JSON")
    }

    fn parse(json: &str, origin: &str) -> Result<Self, TextError> {
        let inner = Tokenizer::from_str(json).map_err(|source| TextError::TokenizerParse {
            origin: origin.to_owned(),
            source,
        })?;
        if !matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
            return Err(TextError::UnsupportedDecoder {
                origin: origin.to_owned(),
            });
        }
        let special_ids = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect();
        Ok(Self { inner, special_ids })
    }

    /// Token ids of `text`, with special tokens in it recognized and nothing added around it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|source| TextError::Encode { source })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Decodes `ids` at once, as `tokenizers` does (ids outside the vocabulary are skipped;
    /// bytes that are not valid UTF-8 become U+FFFD).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TextError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|source| TextError::Decode { source })
    }

    /// The vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether `id` is a special added token (`<|im_end|>`, `<think>`, `<|dummy_N|>`, ...).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// The raw bytes token `id` stands for; they may be part of a multi-byte character.
    ///
    /// ```no_run
    /// # use fovea_model::text::{TextTokenizer, build_phi4_tokenizer_json};
    /// let tokenizer = TextTokenizer::from_json(&build_phi4_tokenizer_json()?)?;
    /// assert_eq!(tokenizer.token_bytes(100_350)?, b"<think>");
    /// # Ok::<(), fovea_model::text::TextError>(())
    /// ```
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>, TextError> {
        self.inner
            .id_to_token(id)
            .map(|token| token_to_bytes(&token))
            .ok_or(TextError::UnknownTokenId {
                id,
                vocab_size: self.vocab_size(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::golden::golden_tokenizer;
    use crate::text::special_tokens::{IMAGE_PLACEHOLDER_ID, NOTHINK_MARKER, THINK_OPEN};

    #[test]
    fn special_tokens_in_text_encode_as_single_ids() {
        let tokenizer = golden_tokenizer();
        let ids = tokenizer
            .encode("<|im_start|>user<|im_sep|>Hi<|im_end|>")
            .unwrap();
        assert_eq!(ids.first(), Some(&100_264));
        assert_eq!(ids.last(), Some(&100_265));
        assert_eq!(tokenizer.encode(THINK_OPEN).unwrap(), [100_350]);
        assert_eq!(tokenizer.encode("</think>").unwrap(), [100_351]);
        assert_eq!(tokenizer.encode(NOTHINK_MARKER).unwrap(), [100_348]);
        assert_eq!(
            tokenizer.encode("<|dummy_0|>").unwrap(),
            [IMAGE_PLACEHOLDER_ID]
        );
    }

    #[test]
    fn encoding_adds_no_bos_or_eos() {
        let tokenizer = golden_tokenizer();
        let ids = tokenizer.encode("hello").unwrap();
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), "hello");
        assert!(ids.iter().all(|&id| !tokenizer.is_special(id)));
    }

    #[test]
    fn every_phi4_added_token_is_special() {
        let tokenizer = golden_tokenizer();
        assert_eq!(tokenizer.vocab_size(), 100_352);
        assert!((100_256..100_352).all(|id| tokenizer.is_special(id)));
        assert!(!tokenizer.is_special(100_255));
    }

    #[test]
    fn unknown_token_id_is_an_error_with_the_vocab_size() {
        let error = golden_tokenizer().token_bytes(100_352).unwrap_err();
        assert!(error.to_string().contains("100352"), "{error}");
    }

    #[test]
    fn tokenizer_with_a_non_byte_level_decoder_is_rejected() {
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":null,"post_processor":null,
            "decoder":{"type":"Fuse"},
            "model":{"type":"WordLevel","vocab":{"a":0},"unk_token":"a"}}"#;
        let error = TextTokenizer::from_json(json).unwrap_err();
        assert!(
            matches!(error, TextError::UnsupportedDecoder { .. }),
            "{error}"
        );
    }

    #[test]
    fn missing_tokenizer_file_error_names_the_path() {
        let error = TextTokenizer::from_file(Path::new("/nonexistent/tokenizer.json")).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/tokenizer.json"),
            "{error}"
        );
    }
}
