//! Streaming detokenization: generated ids in, complete UTF-8 text out, one token at a time.
//!
//! Byte-level BPE tokens are byte strings, and one character can span several tokens (most CJK
//! characters and emoji do). The detokenizer keeps the bytes of an unfinished character until the
//! token that completes it arrives, so every delta is valid text and the deltas concatenate to
//! exactly what [`TextTokenizer::decode`] returns for all ids at once, U+FFFD for invalid bytes
//! included.

use std::ops::Deref;

use super::error::TextError;
use super::tokenizer::TextTokenizer;

/// Turns one request's generated ids into text deltas.
///
/// `T` is any handle to the tokenizer: `&TextTokenizer` for a borrow, or
/// `Arc<TextTokenizer>` for a stream that outlives the caller's borrow (e.g. inside a task).
///
/// Special tokens: with `skip_special_tokens` false (the `tokenizers` and transformers default,
/// with which the golden `greedy_text` was decoded) they are written out as text (`<think>`,
/// `<|im_end|>`); with it true they produce nothing.
#[derive(Debug)]
pub struct Detokenizer<T> {
    tokenizer: T,
    skip_special_tokens: bool,
    /// Bytes of a character whose remaining bytes have not been generated yet (at most 3).
    pending: Vec<u8>,
}

impl<T: Deref<Target = TextTokenizer>> Detokenizer<T> {
    /// Starts a stream with nothing decoded yet.
    pub fn new(tokenizer: T, skip_special_tokens: bool) -> Self {
        Self {
            tokenizer,
            skip_special_tokens,
            pending: Vec::new(),
        }
    }

    /// Feeds one generated id and returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, TextError> {
        if self.skip_special_tokens && self.tokenizer.is_special(id) {
            return Ok(String::new());
        }
        self.pending.extend(self.tokenizer.token_bytes(id)?);
        Ok(self.take_complete_text())
    }

    /// Ends the stream: the bytes still held (an unfinished character) as U+FFFD.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }

    /// Removes and returns the decodable prefix of `pending`, exactly as `from_utf8_lossy` would
    /// decode it, keeping back only a trailing sequence that later bytes could still complete.
    fn take_complete_text(&mut self) -> String {
        let mut text = String::new();
        let mut held = 0;
        let mut chunks = self.pending.utf8_chunks().peekable();
        while let Some(chunk) = chunks.next() {
            text.push_str(chunk.valid());
            let invalid = chunk.invalid();
            if invalid.is_empty() {
                continue;
            }
            let is_last = chunks.peek().is_none();
            let may_complete =
                std::str::from_utf8(invalid).is_err_and(|error| error.error_len().is_none());
            if is_last && may_complete {
                held = invalid.len();
            } else {
                text.push(char::REPLACEMENT_CHARACTER);
            }
        }
        self.pending.drain(..self.pending.len() - held);
        text
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::text::golden::{golden_cases, golden_tokenizer};

    /// Streams `ids` and returns the deltas, the final flush last.
    fn stream(ids: &[u32], skip_special_tokens: bool) -> Vec<String> {
        let mut detokenizer = Detokenizer::new(golden_tokenizer(), skip_special_tokens);
        let mut deltas: Vec<String> = ids
            .iter()
            .map(|&id| detokenizer.push(id).unwrap())
            .collect();
        deltas.push(detokenizer.finish());
        deltas
    }

    /// Asserts that streaming `ids` gives the one-shot decode, with both special-token settings.
    fn assert_stream_matches_decode(ids: &[u32]) {
        for skip in [false, true] {
            let expected = golden_tokenizer().decode(ids, skip).unwrap();
            assert_eq!(
                stream(ids, skip).concat(),
                expected,
                "skip_special_tokens={skip}"
            );
        }
    }

    #[test]
    fn golden_greedy_tokens_stream_to_golden_greedy_text() {
        for case in golden_cases() {
            assert_eq!(
                stream(&case.greedy_tokens, false).concat(),
                case.greedy_text,
                "{}",
                case.name
            );
            assert_stream_matches_decode(&case.greedy_tokens);
        }
    }

    #[test]
    fn characters_split_across_tokens_are_emitted_whole() {
        let text = "日本語も少し。🙂👍🏽 naïve café — 𝔘𝔫𝔦𝔠𝔬𝔡𝔢";
        let ids = golden_tokenizer().encode(text).unwrap();
        let split_chars = ids
            .iter()
            .filter(|&&id| {
                std::str::from_utf8(&golden_tokenizer().token_bytes(id).unwrap()).is_err()
            })
            .count();
        assert!(
            split_chars > 0,
            "the sample must contain tokens that split a character"
        );
        let deltas = stream(&ids, false);
        assert_eq!(deltas.concat(), text);
        assert!(
            deltas
                .iter()
                .all(|delta| !delta.contains(char::REPLACEMENT_CHARACTER))
        );
        assert_stream_matches_decode(&ids);
    }

    #[test]
    fn special_tokens_are_text_unless_skipped() {
        let ids = golden_tokenizer()
            .encode("<think>hi</think><|im_end|>")
            .unwrap();
        assert_eq!(stream(&ids, false).concat(), "<think>hi</think><|im_end|>");
        assert_eq!(stream(&ids, true).concat(), "hi");
    }

    #[test]
    fn invalid_and_unfinished_bytes_become_replacement_characters_like_decode() {
        let tokenizer = golden_tokenizer();
        let emoji = tokenizer.encode("🙂").unwrap();
        assert!(emoji.len() > 1, "🙂 must span several tokens");
        // The emoji's first token alone, then text: the unfinished bytes are invalid once 'a' comes.
        let mut interrupted = vec![emoji[0]];
        interrupted.extend(tokenizer.encode("a").unwrap());
        assert_stream_matches_decode(&interrupted);
        // Stream ending inside a character: finish flushes U+FFFD, as decode shows it.
        assert_stream_matches_decode(&emoji[..1]);
        assert_eq!(stream(&emoji[..1], false).last().unwrap(), "\u{FFFD}");
    }

    #[test]
    fn detokenizer_can_own_a_shared_tokenizer() {
        let tokenizer = Arc::new(golden_tokenizer().clone());
        let mut detokenizer = Detokenizer::new(Arc::clone(&tokenizer), false);
        let ids = tokenizer.encode("shared").unwrap();
        let text: String = ids
            .iter()
            .map(|&id| detokenizer.push(id).unwrap())
            .collect();
        assert_eq!(text + &detokenizer.finish(), "shared");
    }

    #[test]
    fn unknown_token_id_is_an_error() {
        let mut detokenizer = Detokenizer::new(golden_tokenizer(), false);
        assert!(matches!(
            detokenizer.push(200_000),
            Err(TextError::UnknownTokenId { id: 200_000, .. })
        ));
    }
}
