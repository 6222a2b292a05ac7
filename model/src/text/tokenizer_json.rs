//! Builds the Phi-4 family's `tokenizer.json` offline, from the cl100k_base ranks that ship inside
//! the `tiktoken-rs` crate, so a demo checkpoint needs no download.
//!
//! The result is what Hugging Face's `TikTokenConverter` produces: a byte-level BPE whose vocabulary
//! is the ranks (bytes written in GPT-2's byte-level alphabet) and whose merges are, for every token
//! in rank order, each split of it into two in-vocabulary pieces ordered by the left piece's rank;
//! the cl100k split regex; and the 96 Phi-4 special tokens as added tokens.

use std::collections::HashMap;

use tiktoken_rs::Rank;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::byte_level::bytes_to_token;
use super::error::TextError;
use super::special_tokens::{FIRST_SPECIAL_ID, phi4_special_tokens};

/// cl100k_base's pre-tokenization regex in the form HF's converter writes it (no possessive
/// quantifiers, which the `tokenizers` regex engines lack).
const CL100K_SPLIT_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The Phi-4 `tokenizer.json`, serialized compactly; it tokenizes exactly like the one shipped
/// with the checkpoints.
///
/// ```no_run
/// let json = fovea_model::text::build_phi4_tokenizer_json()?;
/// std::fs::write("tokenizer.json", json).expect("writable directory");
/// # Ok::<(), fovea_model::text::TextError>(())
/// ```
pub fn build_phi4_tokenizer_json() -> Result<String, TextError> {
    build_phi4_tokenizer()?
        .to_string(false)
        .map_err(|error| build_error(format!("serializing tokenizer.json: {error}")))
}

fn build_phi4_tokenizer() -> Result<Tokenizer, TextError> {
    let ranks = cl100k_token_bytes()?;
    let tokens: Vec<String> = ranks.iter().map(|bytes| bytes_to_token(bytes)).collect();
    let vocab: Vocab = tokens.iter().cloned().zip(0..).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges_from_ranks(&ranks, &tokens))
        .ignore_merges(true)
        .build()
        .map_err(|error| build_error(format!("BPE model: {error}")))?;

    let split = Split::new(
        SplitPattern::Regex(CL100K_SPLIT_PATTERN.to_owned()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|error| build_error(format!("split regex: {error}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ])));
    tokenizer.with_decoder(Some(ByteLevel::default()));

    let special_tokens: Vec<(u32, String)> = phi4_special_tokens().collect();
    tokenizer
        .add_special_tokens(
            special_tokens
                .iter()
                .map(|(_, content)| AddedToken::from(content.as_str(), true)),
        )
        .map_err(|error| build_error(format!("adding special tokens: {error}")))?;
    // Added tokens take the next free ids in order; check they landed on the Phi-4 ids.
    for (id, content) in &special_tokens {
        let got = tokenizer.token_to_id(content);
        if got != Some(*id) {
            return Err(build_error(format!(
                "{content} got id {got:?} instead of {id}"
            )));
        }
    }
    Ok(tokenizer)
}

/// The bytes of every cl100k_base rank, indexed by rank.
fn cl100k_token_bytes() -> Result<Vec<Vec<u8>>, TextError> {
    let bpe = tiktoken_rs::cl100k_base()
        .map_err(|error| build_error(format!("loading cl100k_base from tiktoken-rs: {error}")))?;
    (0..FIRST_SPECIAL_ID)
        .map(|rank: Rank| {
            bpe.decode_bytes(&[rank])
                .map_err(|error| build_error(format!("cl100k_base has no rank {rank}: {error}")))
        })
        .collect()
}

/// HF's merges for a tiktoken vocabulary: for each token in rank order, every split into two
/// in-vocabulary pieces, ordered by the pieces' ranks.
fn merges_from_ranks(ranks: &[Vec<u8>], tokens: &[String]) -> Vec<(String, String)> {
    let rank_of: HashMap<&[u8], usize> = ranks
        .iter()
        .enumerate()
        .map(|(rank, bytes)| (bytes.as_slice(), rank))
        .collect();
    let mut merges = Vec::new();
    for bytes in ranks {
        let mut splits: Vec<(usize, usize)> = (1..bytes.len())
            .filter_map(|at| {
                let (left, right) = bytes.split_at(at);
                Some((*rank_of.get(left)?, *rank_of.get(right)?))
            })
            .collect();
        splits.sort_unstable();
        merges.extend(
            splits
                .into_iter()
                .map(|(left, right)| (tokens[left].clone(), tokens[right].clone())),
        );
    }
    merges
}

fn build_error(detail: String) -> TextError {
    TextError::TokenizerBuild { detail }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use serde_json::Value;

    use super::*;
    use crate::testing::golden_dir;
    use crate::text::golden::{golden_cases, golden_tokenizer};
    use crate::text::tokenizer::TextTokenizer;

    /// The built JSON, built once for all tests.
    fn built_json() -> &'static str {
        static JSON: OnceLock<String> = OnceLock::new();
        JSON.get_or_init(|| build_phi4_tokenizer_json().unwrap())
    }

    #[test]
    fn built_tokenizer_json_equals_the_golden_file() {
        let built: Value = serde_json::from_str(built_json()).unwrap();
        let golden_text =
            std::fs::read_to_string(golden_dir().join("model/tokenizer.json")).unwrap();
        let golden: Value = serde_json::from_str(&golden_text).unwrap();
        // Vocab and merges first, with small messages (the full diff would be megabytes).
        for part in ["vocab", "merges"] {
            let (built, golden) = (&built["model"][part], &golden["model"][part]);
            assert!(
                built == golden,
                "model.{part} differs from the golden tokenizer.json"
            );
        }
        assert_eq!(
            golden["model"]["merges"].as_array().map(Vec::len),
            Some(233_378)
        );
        let golden_fields = golden.as_object().unwrap();
        let differing: Vec<&String> = golden_fields
            .keys()
            .filter(|key| built[key.as_str()] != golden[key.as_str()])
            .collect();
        assert!(
            differing.is_empty(),
            "fields differing from the golden file: {differing:?}"
        );
        assert_eq!(built, golden);
    }

    #[test]
    fn built_tokenizer_encodes_like_the_golden_one() {
        let built = TextTokenizer::from_json(built_json()).unwrap();
        let samples = [
            "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
            "def f(x):\n\treturn x**2  # square\r\n",
            "Numbers: 1234567 3.14159 -0.5e10 1,000,000",
            "Whitespace   runs\n\n\n  and   trailing   ",
            "日本語も少し。Ünïcödé 🙂👍🏽 Привет мир عربى",
            "I'm sure they'LL say it's DONE'S",
            "<|im_start|>user<|im_sep|>hi<|im_end|><think>x</think><|dummy_84|><|endoftext|>",
            "<|not_special|> <thinking> <|dummy_99|>",
            "",
        ];
        let prompts = golden_cases().iter().map(|case| case.prompt_text.as_str());
        for text in samples.into_iter().chain(prompts) {
            assert_eq!(
                built.encode(text).unwrap(),
                golden_tokenizer().encode(text).unwrap(),
                "{text:?}"
            );
        }
    }
}
