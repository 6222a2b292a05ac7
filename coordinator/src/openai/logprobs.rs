//! OpenAI's `logprobs` object from the `Generation` stream's token ids and `TokenLogprobs`: each
//! token spelled out as its text and its raw bytes (a byte-level token may be part of a
//! multi-byte character; its text then shows U+FFFD where the bytes are not whole characters).

use fovea_model::text::TextTokenizer;
use fovea_proto::v1::TokenLogprobs;

use super::types::{ContentLogprob, TopLogprob};

/// The `logprobs.content` entries of `token_ids`, whose log probabilities are `logprobs` (one
/// per token, in the same order).
pub fn content_logprobs(
    tokenizer: &TextTokenizer,
    token_ids: &[u32],
    logprobs: &[TokenLogprobs],
) -> Vec<ContentLogprob> {
    token_ids
        .iter()
        .zip(logprobs)
        .map(|(&token_id, logprobs)| {
            let (token, bytes) = spell(tokenizer, token_id);
            ContentLogprob {
                token,
                logprob: logprobs.logprob,
                bytes,
                top_logprobs: logprobs
                    .top
                    .iter()
                    .map(|alternative| {
                        let (token, bytes) = spell(tokenizer, alternative.token_id);
                        TopLogprob {
                            token,
                            logprob: alternative.logprob,
                            bytes,
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

/// A token's text and bytes; an id the tokenizer does not know (a padded vocabulary row) is
/// spelled `token_id:<id>` with no bytes, as vLLM spells ids.
fn spell(tokenizer: &TextTokenizer, token_id: u32) -> (String, Option<Vec<u8>>) {
    match tokenizer.token_bytes(token_id) {
        Ok(bytes) => (String::from_utf8_lossy(&bytes).into_owned(), Some(bytes)),
        Err(_) => (format!("token_id:{token_id}"), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fovea_proto::v1::TokenLogprob;
    use std::path::PathBuf;

    fn tokenizer() -> TextTokenizer {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/golden/model/tokenizer.json");
        TextTokenizer::from_file(&path).unwrap()
    }

    #[test]
    fn tokens_are_spelled_as_text_and_bytes_with_their_alternatives() {
        let tokenizer = tokenizer();
        let hello = tokenizer.encode("Hello").unwrap()[0];
        let think = 100_350;
        let logprobs = TokenLogprobs {
            logprob: -0.25,
            top: vec![
                TokenLogprob {
                    token_id: hello,
                    logprob: -0.25,
                },
                TokenLogprob {
                    token_id: think,
                    logprob: -1.5,
                },
            ],
        };
        let [entry] = &content_logprobs(&tokenizer, &[hello], &[logprobs])[..] else {
            panic!("one entry per token")
        };
        assert_eq!((entry.token.as_str(), entry.logprob), ("Hello", -0.25));
        assert_eq!(entry.bytes.as_deref(), Some(&b"Hello"[..]));
        let alternatives: Vec<_> = entry
            .top_logprobs
            .iter()
            .map(|t| (t.token.as_str(), t.logprob))
            .collect();
        assert_eq!(alternatives, [("Hello", -0.25), ("<think>", -1.5)]);
    }

    #[test]
    fn part_of_a_character_keeps_its_raw_bytes_and_unknown_ids_are_spelled_by_id() {
        let tokenizer = tokenizer();
        // Byte-level BPE has a token for every single byte, so some low id is a lone UTF-8 lead byte.
        let partial = (0..1000)
            .find(|&id| std::str::from_utf8(&tokenizer.token_bytes(id).unwrap()).is_err())
            .expect("a token that is part of a character");
        let (token, bytes) = spell(&tokenizer, partial);
        assert!(token.contains('\u{fffd}'), "{token:?}");
        assert_eq!(bytes, tokenizer.token_bytes(partial).ok());
        assert_eq!(
            spell(&tokenizer, 200_000),
            ("token_id:200000".to_string(), None)
        );
    }
}
