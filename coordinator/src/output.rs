//! From the worker's token ids to what a client reads: text deltas that never split a character,
//! each marked as reasoning (inside `<think>…</think>`) or answer, with stop strings found across
//! token boundaries.
//!
//! Text that could still be the start of a stop string is held back until the next token decides;
//! when a stop string completes, the text before it is released and generation ends.

use std::sync::Arc;

use fovea_model::text::{Detokenizer, TextError, TextTokenizer};

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
    detokenizer: Detokenizer<Arc<TextTokenizer>>,
    segment: Segment,
    stop_strings: Vec<String>,
    /// Decoded text not yet released because it may begin a stop string.
    held: String,
}

impl OutputShaper {
    /// A shaper for a completion that starts in `segment` (reasoning when the prompt ends with
    /// `<think>`), ending at any of `stop_strings`.
    pub fn new(tokenizer: Arc<TextTokenizer>, segment: Segment, stop_strings: Vec<String>) -> Self {
        OutputShaper {
            detokenizer: Detokenizer::new(tokenizer, true),
            segment,
            stop_strings: stop_strings.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
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
        self.held.push_str(&self.detokenizer.push(token)?);
        let (text, stopped_at) = self.release();
        // A segment switch releases everything: stop strings do not span `<think>` boundaries.
        let text = if self.segment != segment {
            text + &std::mem::take(&mut self.held)
        } else {
            text
        };
        Ok(Step {
            delta: Delta {
                token_ids: vec![token],
                text,
                segment,
            },
            stopped_at,
        })
    }

    /// Ends the stream: whatever text is still held (no stop string completed it).
    pub fn finish(self) -> Option<Delta> {
        let mut text = self.held;
        text.push_str(&self.detokenizer.finish());
        (!text.is_empty()).then_some(Delta {
            token_ids: Vec::new(),
            text,
            segment: self.segment,
        })
    }

    /// Splits `held` into text safe to release and text that may still begin a stop string.
    fn release(&mut self) -> (String, Option<String>) {
        let earliest = self
            .stop_strings
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()).map(|at| (at, stop)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = earliest {
            let stop = stop.clone();
            let text = self.held[..at].to_string();
            self.held.clear();
            return (text, Some(stop));
        }
        let keep = self
            .stop_strings
            .iter()
            .map(|stop| longest_suffix_that_starts(&self.held, stop))
            .max()
            .unwrap_or(0);
        let split = self.held.len() - keep;
        let text = self.held[..split].to_string();
        self.held.drain(..split);
        (text, None)
    }
}

/// Length in bytes of the longest suffix of `text` that is a proper prefix of `stop`
/// (on character boundaries).
fn longest_suffix_that_starts(text: &str, stop: &str) -> usize {
    let longest = text.len().min(stop.len().saturating_sub(1));
    (1..=longest)
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && stop.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tokenizer() -> Arc<TextTokenizer> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden/model/tokenizer.json");
        Arc::new(TextTokenizer::from_file(&path).unwrap())
    }

    fn run(shaper: &mut OutputShaper, tokens: &[u32]) -> (Vec<Delta>, Option<String>) {
        let mut deltas = Vec::new();
        for &t in tokens {
            let step = shaper.push(t).unwrap();
            deltas.push(step.delta);
            if step.stopped_at.is_some() {
                return (deltas, step.stopped_at);
            }
        }
        (deltas, None)
    }

    #[test]
    fn think_tokens_switch_segments_and_produce_no_text() {
        let tok = tokenizer();
        let mut ids = vec![THINK_OPEN_ID];
        ids.extend(tok.encode("reason").unwrap());
        ids.push(THINK_CLOSE_ID);
        ids.extend(tok.encode(" answer").unwrap());
        let mut shaper = OutputShaper::new(tok, Segment::Answer, vec![]);
        let (deltas, _) = run(&mut shaper, &ids);
        let text_of = |segment| -> String { deltas.iter().filter(|d| d.segment == segment).map(|d| d.text.as_str()).collect() };
        assert_eq!(text_of(Segment::Reasoning), "reason");
        assert_eq!(text_of(Segment::Answer), " answer");
    }

    #[test]
    fn stop_string_split_across_tokens_ends_output_before_it() {
        let tok = tokenizer();
        let ids = tok.encode("The answer is 42. END of story").unwrap();
        let mut shaper = OutputShaper::new(tok, Segment::Answer, vec!["END".into()]);
        let (deltas, stopped) = run(&mut shaper, &ids);
        assert_eq!(stopped.as_deref(), Some("END"));
        let text: String = deltas.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(text, "The answer is 42. ");
    }

    #[test]
    fn held_text_is_released_when_no_stop_string_completes() {
        let tok = tokenizer();
        let ids = tok.encode("ends with EN").unwrap();
        let mut shaper = OutputShaper::new(tok, Segment::Answer, vec!["END".into()]);
        let (deltas, stopped) = run(&mut shaper, &ids);
        assert!(stopped.is_none());
        let mut text: String = deltas.iter().map(|d| d.text.as_str()).collect();
        assert!(!text.ends_with("EN"), "a possible stop-string start is held back: {text:?}");
        text.push_str(&shaper.finish().unwrap().text);
        assert_eq!(text, "ends with EN");
    }

    #[test]
    fn suffix_matching_respects_character_boundaries() {
        assert_eq!(longest_suffix_that_starts("abc", "cde"), 1);
        assert_eq!(longest_suffix_that_starts("x日", "日本"), "日".len());
        assert_eq!(longest_suffix_that_starts("abc", "xyz"), 0);
    }
}
