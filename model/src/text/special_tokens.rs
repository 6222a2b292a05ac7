//! The Phi-4 special tokens: ids 100256..=100351, right after the 100256 cl100k_base ranks.
//!
//! Ten of them have names (cl100k_base's own five, the chat markers and the think tags); every
//! other id is a `<|dummy_N|>` token, numbered from 0 in id order.

/// The first special token id (also the number of cl100k_base ranks).
pub(crate) const FIRST_SPECIAL_ID: u32 = 100_256;

/// How many special tokens follow the cl100k_base ranks.
const SPECIAL_COUNT: u32 = 96;

/// The id every image position carries in `input_ids` (`<|dummy_0|>`); the image's features
/// replace the embeddings there.
pub const IMAGE_PLACEHOLDER_ID: u32 = FIRST_SPECIAL_ID;

/// The tag that opens a reasoning section; appended to the prompt in `think` mode.
pub const THINK_OPEN: &str = "<think>";

/// The marker that asks for an answer without reasoning (`<|dummy_84|>`, id 100348); appended to
/// the prompt in `nothink` mode.
pub const NOTHINK_MARKER: &str = "<|dummy_84|>";

/// The special tokens that are not `<|dummy_N|>`, by id.
const NAMED: [(u32, &str); 10] = [
    (100_257, "<|endoftext|>"),
    (100_258, "<|fim_prefix|>"),
    (100_259, "<|fim_middle|>"),
    (100_260, "<|fim_suffix|>"),
    (100_264, "<|im_start|>"),
    (100_265, "<|im_end|>"),
    (100_266, "<|im_sep|>"),
    (100_276, "<|endofprompt|>"),
    (100_350, THINK_OPEN),
    (100_351, "</think>"),
];

/// Every Phi-4 special token as `(id, content)`, in id order.
pub(crate) fn phi4_special_tokens() -> impl Iterator<Item = (u32, String)> {
    let mut next_dummy = 0;
    (FIRST_SPECIAL_ID..FIRST_SPECIAL_ID + SPECIAL_COUNT).map(move |id| {
        let content = match NAMED.iter().find(|(named_id, _)| *named_id == id) {
            Some((_, name)) => (*name).to_owned(),
            None => {
                next_dummy += 1;
                format!("<|dummy_{}|>", next_dummy - 1)
            }
        };
        (id, content)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_token_table_numbers_dummies_around_named_tokens() {
        let tokens: Vec<(u32, String)> = phi4_special_tokens().collect();
        assert_eq!(tokens.len(), 96);
        assert_eq!(tokens[0], (IMAGE_PLACEHOLDER_ID, "<|dummy_0|>".to_owned()));
        assert_eq!(tokens[5], (100_261, "<|dummy_1|>".to_owned()));
        assert_eq!(tokens[92], (100_348, NOTHINK_MARKER.to_owned()));
        assert_eq!(tokens[93], (100_349, "<|dummy_85|>".to_owned()));
        assert_eq!(tokens[95], (100_351, "</think>".to_owned()));
    }
}
