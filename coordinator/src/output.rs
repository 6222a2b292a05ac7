//! From the worker's token ids to what a client reads: text deltas (never splitting a character,
//! never showing part of a stop string, via the model crate's `TextStream`), each marked as
//! reasoning (inside `<think>…</think>`) or answer.

use std::sync::Arc;

use fovea_model::text::{TextError, TextStream, TextTokenizer};

/// `<think>`: what follows is reasoning.
pub const THINK_OPEN_ID: u32 = 100350;
/// `</think>`: what follows is the answer.
pub const THINK_CLOSE_ID: u32 = 100351;

/// Which part of the completion a delta belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Reasoning,
    Answer,
}

/// Output released for one generated token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub token_ids: Vec<u32>,
    pub text: String,
    pub segment: Segment,
}

/// What one token did to the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Output to send now (the token id, with whatever text it completes).
    pub delta: Delta,
    /// The stop string this token completed: generation ends after `delta`.
    pub stopped_at: Option<String>,
}

/// Shapes one request's output.
pub struct OutputShaper {
    text: TextStream,
    segment: Segment,
}

impl OutputShaper {
    /// A shaper for a completion that starts in `segment` (reasoning when the prompt ends with
    /// `<think>`), ending at any of `stop_strings`. Special tokens produce no text.
    pub fn new(tokenizer: Arc<TextTokenizer>, segment: Segment, stop_strings: Vec<String>) -> Self {
        OutputShaper {
            text: TextStream::new(tokenizer, true, stop_strings),
            segment,
        }
    }

    /// Takes one generated token.
    pub fn push(&mut self, token: u32) -> Result<Step, TextError> {
        let segment = self.segment;
        match token {
            THINK_OPEN_ID => self.segment = Segment::Reasoning,
            THINK_CLOSE_ID => self.segment = Segment::Answer,
            _ => {}
        }
        let delta = self.text.push(token)?;
        Ok(Step {
            delta: Delta {
                token_ids: vec![token],
                text: delta.text,
                segment,
            },
            stopped_at: delta.matched_stop,
        })
    }

    /// Ends the stream: whatever text is still held (no stop string completed it).
    pub fn finish(self) -> Option<Delta> {
        let text = self.text.finish();
        (!text.is_empty()).then_some(Delta {
            token_ids: Vec::new(),
            text,
            segment: self.segment,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tokenizer() -> Arc<TextTokenizer> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/golden/model/tokenizer.json");
        Arc::new(TextTokenizer::from_file(&path).unwrap())
    }

    #[test]
    fn think_tokens_switch_segments_and_produce_no_text() {
        let tok = tokenizer();
        let mut ids = vec![THINK_OPEN_ID];
        ids.extend(tok.encode("reason").unwrap());
        ids.push(THINK_CLOSE_ID);
        ids.extend(tok.encode(" answer").unwrap());
        let mut shaper = OutputShaper::new(tok, Segment::Answer, vec![]);
        let deltas: Vec<Delta> = ids.iter().map(|&t| shaper.push(t).unwrap().delta).collect();
        let text_of = |segment| -> String {
            deltas
                .iter()
                .filter(|d| d.segment == segment)
                .map(|d| d.text.as_str())
                .collect()
        };
        assert_eq!(text_of(Segment::Reasoning), "reason");
        assert_eq!(text_of(Segment::Answer), " answer");
    }

    #[test]
    fn a_stop_string_across_tokens_ends_the_answer_before_it() {
        let tok = tokenizer();
        let ids = tok.encode("The answer is 42. END of story").unwrap();
        let mut shaper = OutputShaper::new(tok, Segment::Answer, vec!["END".into()]);
        let mut text = String::new();
        for id in ids {
            let step = shaper.push(id).unwrap();
            text.push_str(&step.delta.text);
            if let Some(stop) = step.stopped_at {
                assert_eq!(stop, "END");
                assert_eq!(text, "The answer is 42. ");
                return;
            }
        }
        panic!("the stop string was not found");
    }
}
