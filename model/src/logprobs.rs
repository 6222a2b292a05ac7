//! Log probabilities of generated tokens, as the APIs report them: the chosen token's and the N most
//! likely tokens' at one position.
//!
//! They come from the model's own distribution, the log-softmax of the raw logits, before
//! temperature, top-k and top-p reshape it for sampling (what vLLM reports by default and what
//! `fovea.v1.TokenLogprobs` documents). So a token's log probability does not depend on how it was
//! sampled, and greedy and sampled runs of one prompt report the same numbers for the same token.
//! The log-sum-exp is taken around the largest logit and summed in f64, so huge or tiny logits
//! neither overflow nor lose the small terms.

use crate::error::{ModelError, Result};

/// The most alternatives a request may ask for per position (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One token and its log probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenLogprob {
    /// The token's id.
    pub token_id: u32,
    /// Natural log of its probability, `<= 0`.
    pub logprob: f32,
}

/// Log probabilities at one generated position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The chosen token's log probability, `<= 0`.
    pub logprob: f32,
    /// The most likely tokens, most likely first (ties: lower id first, as greedy picks); the
    /// chosen token is among them only if it is that likely.
    pub top: Vec<TokenLogprob>,
}

/// Checks that `top` alternatives can be served (at most [`MAX_TOP_LOGPROBS`]).
pub fn validate_top(top: usize) -> Result<()> {
    if top > MAX_TOP_LOGPROBS {
        return Err(ModelError::BadInput(format!(
            "logprobs asks for {top} alternatives per token; at most {MAX_TOP_LOGPROBS} are served"
        )));
    }
    Ok(())
}

/// The log probabilities at one position: `chosen`'s and the `top` most likely tokens' (`top` at
/// most the vocabulary size), from that position's `logits`.
///
/// ```
/// use fovea_model::logprobs::token_logprobs;
/// let logprobs = token_logprobs(&[1.0, 3.0, 2.0], 2, 2);
/// assert_eq!(logprobs.top.iter().map(|t| t.token_id).collect::<Vec<_>>(), [1, 2]);
/// assert_eq!(logprobs.logprob, logprobs.top[1].logprob);
/// ```
pub fn token_logprobs(logits: &[f32], chosen: u32, top: usize) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_sum = sum.ln();
    let logprob_of = |logit: f32| (f64::from(logit - max) - log_sum) as f32;
    TokenLogprobs {
        logprob: logprob_of(logits[chosen as usize]),
        top: most_likely(logits, top)
            .into_iter()
            .map(|token_id| TokenLogprob {
                token_id,
                logprob: logprob_of(logits[token_id as usize]),
            })
            .collect(),
    }
}

/// The ids of the `n` largest logits, largest first, lower id first on ties. One pass over the
/// logits with a sorted list of at most `n` candidates.
fn most_likely(logits: &[f32], n: usize) -> Vec<u32> {
    let mut best: Vec<u32> = Vec::with_capacity(n + 1);
    if n == 0 {
        return best;
    }
    for (id, &logit) in logits.iter().enumerate() {
        // Ids arrive in increasing order, so an equal logit ranks after those already kept.
        if best.len() == n && logit <= logits[best[n - 1] as usize] {
            continue;
        }
        let at = best.partition_point(|&kept| logits[kept as usize] >= logit);
        best.insert(at, id as u32);
        best.truncate(n);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(logprobs: &TokenLogprobs) -> Vec<u32> {
        logprobs.top.iter().map(|t| t.token_id).collect()
    }

    #[test]
    fn probabilities_of_the_whole_vocabulary_sum_to_one() {
        let logits = [0.5, -1.25, 3.0, 2.0, 0.0, -7.5];
        let logprobs = token_logprobs(&logits, 4, logits.len());
        let total: f64 = logprobs
            .top
            .iter()
            .map(|t| f64::from(t.logprob).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-6, "probabilities sum to {total}");
        assert_eq!(ids(&logprobs), [2, 3, 0, 4, 1, 5]);
        assert!(
            logprobs
                .top
                .windows(2)
                .all(|w| w[0].logprob >= w[1].logprob)
        );
        assert_eq!(
            logprobs.logprob, logprobs.top[3].logprob,
            "the chosen token's own entry"
        );
    }

    #[test]
    fn differences_of_logprobs_are_differences_of_logits() {
        let logits = [1.0, 4.0, 2.5];
        let logprobs = token_logprobs(&logits, 0, 3);
        let by_id = |id: u32| {
            logprobs
                .top
                .iter()
                .find(|t| t.token_id == id)
                .unwrap()
                .logprob
        };
        assert!((by_id(1) - by_id(0) - 3.0).abs() < 1e-6);
        assert!((by_id(2) - by_id(0) - 1.5).abs() < 1e-6);
    }

    #[test]
    fn ties_share_a_logprob_and_rank_lower_ids_first() {
        let logits = [2.0, 5.0, 5.0, 1.0, 5.0];
        let logprobs = token_logprobs(&logits, 4, 4);
        assert_eq!(ids(&logprobs), [1, 2, 4, 0]);
        let tied = logprobs.top[0].logprob;
        assert!(logprobs.top[1..3].iter().all(|t| t.logprob == tied));
        assert_eq!(logprobs.logprob, tied);
        let uniform = token_logprobs(&[0.25; 8], 3, 2);
        assert_eq!(ids(&uniform), [0, 1]);
        assert!((uniform.logprob - (1.0f32 / 8.0).ln()).abs() < 1e-6);
    }

    #[test]
    fn zero_alternatives_still_give_the_chosen_tokens_logprob() {
        let logprobs = token_logprobs(&[0.0, 0.0], 1, 0);
        assert!(logprobs.top.is_empty());
        assert!((logprobs.logprob - 0.5f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn huge_and_tiny_logits_neither_overflow_nor_turn_nan() {
        let logits = [1e30, 1e30, -1e30, f32::NEG_INFINITY];
        let logprobs = token_logprobs(&logits, 2, 4);
        assert!(
            (logprobs.top[0].logprob + 2f32.ln()).abs() < 1e-6,
            "two equal maxima"
        );
        assert!(
            logprobs
                .top
                .iter()
                .all(|t| t.logprob <= 0.0 && !t.logprob.is_nan())
        );
        assert!(logprobs.logprob.is_finite() && logprobs.logprob < -1e29);
        assert_eq!(
            logprobs.top[3].logprob,
            f32::NEG_INFINITY,
            "a masked token is impossible"
        );
        let small = token_logprobs(&[-1000.0, -1001.0], 0, 1);
        assert!((small.logprob + (1.0 + (-1f64).exp()).ln() as f32).abs() < 1e-6);
    }

    #[test]
    fn more_than_twenty_alternatives_are_refused() {
        assert!(validate_top(MAX_TOP_LOGPROBS).is_ok());
        let error = validate_top(21).unwrap_err().to_string();
        assert!(error.contains("at most 20"), "{error}");
    }
}
