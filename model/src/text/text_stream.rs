//! One request's generated text, streamed: token ids in, text deltas out, cut at the first stop
//! string.
//!
//! Text that could still turn out to be the start of a stop string is held back until the next
//! tokens decide, so no delta ever contains part of a stop string, and the completion's text ends
//! right before the stop string (which is not included, as in the OpenAI API).

use std::sync::Arc;

use super::{Detokenizer, TextError, TextTokenizer};

/// The text one token added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextDelta {
    pub text: String,
    /// The stop string the text now contains; `text` ends right before it.
    pub matched_stop: Option<String>,
}

/// Detokenizer plus stop-string matching for one request.
pub struct TextStream {
    detokenizer: Detokenizer<Arc<TextTokenizer>>,
    stop_strings: Vec<String>,
    /// Decoded text not yet released: the longest suffix that is a prefix of a stop string.
    held: String,
    /// A stop string was found: nothing more is released.
    stopped: bool,
}

impl TextStream {
    /// A stream that stops at any of `stop_strings` (none of them empty).
    pub fn new(
        tokenizer: Arc<TextTokenizer>,
        skip_special_tokens: bool,
        stop_strings: Vec<String>,
    ) -> Self {
        TextStream {
            detokenizer: Detokenizer::new(tokenizer, skip_special_tokens),
            stop_strings,
            held: String::new(),
            stopped: false,
        }
    }

    /// Feeds one generated token.
    pub fn push(&mut self, id: u32) -> Result<TextDelta, TextError> {
        let delta = self.detokenizer.push(id)?;
        self.held.push_str(&delta);
        if let Some((stop_at, stop)) = first_match(&self.held, &self.stop_strings) {
            self.held.truncate(stop_at);
            self.stopped = true;
            return Ok(TextDelta {
                text: std::mem::take(&mut self.held),
                matched_stop: Some(stop.to_string()),
            });
        }
        let keep = self.partial_stop_suffix();
        let text = self.held.drain(..self.held.len() - keep).collect();
        Ok(TextDelta {
            text,
            matched_stop: None,
        })
    }

    /// Ends the stream: the text still held, cut at a stop string if it contains one (nothing
    /// after a stop string was found).
    pub fn finish(self) -> String {
        if self.stopped {
            return String::new();
        }
        let mut rest = self.held + &self.detokenizer.finish();
        if let Some((stop_at, _)) = first_match(&rest, &self.stop_strings) {
            rest.truncate(stop_at);
        }
        rest
    }

    /// Length of the longest suffix of `held` that a stop string starts with.
    fn partial_stop_suffix(&self) -> usize {
        let held = self.held.as_str();
        held.char_indices()
            .map(|(start, _)| &held[start..])
            .find(|suffix| {
                self.stop_strings
                    .iter()
                    .any(|stop| stop.starts_with(suffix))
            })
            .map_or(0, str::len)
    }
}

/// Byte offset and stop string of the earliest occurrence of any of `stop_strings` in `text`.
fn first_match<'a>(text: &str, stop_strings: &'a [String]) -> Option<(usize, &'a str)> {
    stop_strings
        .iter()
        .filter_map(|stop| text.find(stop.as_str()).map(|at| (at, stop.as_str())))
        .min_by_key(|(at, _)| *at)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn tokenizer() -> Arc<TextTokenizer> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/golden/model/tokenizer.json");
        Arc::new(TextTokenizer::from_file(&path).unwrap())
    }

    /// Streams `text`'s tokens; returns the deltas up to the stop and whether it stopped, plus
    /// what `finish` flushes.
    fn stream(text: &str, stops: &[&str]) -> (Vec<String>, bool, String) {
        let tokenizer = tokenizer();
        let ids = tokenizer.encode(text).unwrap();
        let mut stream = TextStream::new(
            tokenizer,
            false,
            stops.iter().map(|s| s.to_string()).collect(),
        );
        let mut deltas = Vec::new();
        for id in ids {
            let delta = stream.push(id).unwrap();
            deltas.push(delta.text);
            if delta.matched_stop.is_some() {
                return (deltas, true, stream.finish());
            }
        }
        (deltas, false, stream.finish())
    }

    #[test]
    fn without_stop_strings_the_text_streams_whole() {
        let (deltas, stopped, rest) = stream("Hello, wide world. 🙂", &[]);
        assert!(!stopped);
        assert_eq!(deltas.concat() + &rest, "Hello, wide world. 🙂");
    }

    #[test]
    fn text_ends_before_the_stop_string_and_never_shows_part_of_it() {
        let (deltas, stopped, rest) = stream("The answer is 42.\nEND of story", &["\nEND"]);
        assert!(stopped);
        assert_eq!(rest, "", "nothing follows a stop string");
        assert_eq!(deltas.concat(), "The answer is 42.");
        assert!(
            deltas.iter().all(|d| !d.contains('\n')),
            "held-back prefix leaked: {deltas:?}"
        );
    }

    #[test]
    fn the_matched_stop_string_is_reported() {
        let tokenizer = tokenizer();
        let ids = tokenizer.encode("alpha beta gamma").unwrap();
        let mut stream = TextStream::new(tokenizer, false, vec!["gamma".into(), "beta".into()]);
        let matched = ids
            .into_iter()
            .find_map(|id| stream.push(id).unwrap().matched_stop);
        assert_eq!(matched.as_deref(), Some("beta"));
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        let (deltas, stopped, _) = stream("alpha beta gamma", &["gamma", "beta"]);
        assert!(stopped);
        assert_eq!(deltas.concat(), "alpha ");
    }

    #[test]
    fn a_partial_match_that_does_not_complete_is_released() {
        let (deltas, stopped, rest) = stream("one two thr", &["three"]);
        assert!(!stopped);
        assert_eq!(deltas.concat(), "one two ");
        assert_eq!(rest, "thr", "finish releases the held-back text");
        let (deltas, stopped, rest) = stream("the end? the beginning", &["the end."]);
        assert!(!stopped);
        assert_eq!(deltas.concat() + &rest, "the end? the beginning");
    }
}
