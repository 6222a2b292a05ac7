//! Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling with a
//! seeded generator so that a seed reproduces a completion exactly; and, when asked, the chosen
//! token's log probabilities (see [`crate::logprobs`] for which distribution they come from).

use crate::error::{ModelError, Result};
use crate::logprobs::{TokenLogprobs, token_logprobs, validate_top};
use crate::random::SplitMix64;

/// How to pick tokens. `temperature == 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    pub seed: u64,
    /// Report log probabilities with each token: `None` none, `Some(n)` the chosen token's and
    /// the `n` most likely tokens' (`n` at most [`crate::logprobs::MAX_TOP_LOGPROBS`]).
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Checks the ranges: temperature ≥ 0 and finite, top_p in (0, 1], at most 20 logprobs.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(ModelError::BadInput(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ModelError::BadInput(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        self.logprobs.map_or(Ok(()), validate_top)
    }
}

/// A chosen token, with its log probabilities when the parameters ask for them.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    /// The token's id.
    pub id: u32,
    /// Its log probabilities, when [`SamplingParams::logprobs`] is set.
    pub logprobs: Option<TokenLogprobs>,
}

/// Picks tokens for one sequence.
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler with `params` (checked with [`SamplingParams::validate`]).
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = SplitMix64::new(params.seed);
        Ok(Sampler { params, rng })
    }

    /// Advances the generator past `tokens` tokens that another sampler with the same parameters
    /// chose (a prefill worker's first token, or the tokens of an interrupted attempt), so that
    /// this one continues exactly where that one would have.
    pub fn skip(&mut self, tokens: usize) {
        if self.params.temperature != 0.0 {
            for _ in 0..tokens {
                self.rng.next_f64();
            }
        }
    }

    /// The next token from one position's logits, with its log probabilities if asked for.
    pub fn sample(&mut self, logits: &[f32]) -> SampledToken {
        let id = self.choose(logits);
        SampledToken {
            id,
            logprobs: self
                .params
                .logprobs
                .map(|top| token_logprobs(logits, id, top)),
        }
    }

    fn choose(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.params.top_k > 0 {
            candidates.truncate(self.params.top_k);
        }
        let max = candidates[0].1;
        let inv_t = 1.0 / self.params.temperature as f64;
        let weights: Vec<f64> = candidates
            .iter()
            .map(|&(_, l)| ((l - max) as f64 * inv_t).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut kept = 0;
        let mut mass = 0.0;
        for w in &weights {
            mass += w / total;
            kept += 1;
            if mass >= self.params.top_p as f64 {
                break;
            }
        }
        let kept_total: f64 = weights[..kept].iter().sum();
        let mut draw = self.rng.next_f64() * kept_total;
        for (&(id, _), w) in candidates[..kept].iter().zip(&weights) {
            if draw < *w {
                return id;
            }
            draw -= w;
        }
        candidates[kept - 1].0
    }
}

/// Index of the largest logit (the first one on ties, as `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: usize, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            top_k,
            seed,
            logprobs: None,
        }
    }

    #[test]
    fn zero_temperature_is_greedy_with_first_index_on_ties() {
        let mut sampler = Sampler::new(params(0.0, 1.0, 0, 1)).unwrap();
        assert_eq!(sampler.sample(&[0.1, 3.0, 3.0, -1.0]).id, 1);
    }

    #[test]
    fn top_k_one_always_picks_the_best() {
        let mut sampler = Sampler::new(params(5.0, 1.0, 1, 7)).unwrap();
        for _ in 0..50 {
            assert_eq!(sampler.sample(&[0.0, 0.5, 0.4]).id, 1);
        }
    }

    #[test]
    fn top_p_excludes_the_unlikely_tail() {
        // Probabilities ~[0.84, 0.11, 0.04, ...]: top_p 0.8 keeps only the first.
        let mut sampler = Sampler::new(params(1.0, 0.8, 0, 3)).unwrap();
        for _ in 0..50 {
            assert_eq!(sampler.sample(&[4.0, 2.0, 1.0, 0.0]).id, 0);
        }
    }

    #[test]
    fn same_seed_same_tokens_and_sampling_spreads() {
        let logits = [1.0, 1.0, 1.0, 1.0];
        let draw = |seed| {
            let mut sampler = Sampler::new(params(1.0, 1.0, 0, seed)).unwrap();
            (0..64)
                .map(|_| sampler.sample(&logits).id)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        let seen: std::collections::BTreeSet<u32> = draw(42).into_iter().collect();
        assert_eq!(
            seen.len(),
            4,
            "uniform logits should reach every token in 64 draws"
        );
    }

    #[test]
    fn skipping_continues_where_the_skipped_draws_left_off() {
        let logits = [1.0, 1.0, 1.0, 1.0];
        let mut whole = Sampler::new(params(1.0, 1.0, 0, 9)).unwrap();
        let all: Vec<u32> = (0..20).map(|_| whole.sample(&logits).id).collect();
        let mut resumed = Sampler::new(params(1.0, 1.0, 0, 9)).unwrap();
        resumed.skip(5);
        let rest: Vec<u32> = (0..15).map(|_| resumed.sample(&logits).id).collect();
        assert_eq!(rest, all[5..]);
    }

    #[test]
    fn out_of_range_parameters_are_rejected() {
        assert!(Sampler::new(params(-1.0, 1.0, 0, 0)).is_err());
        assert!(Sampler::new(params(f32::NAN, 1.0, 0, 0)).is_err());
        assert!(Sampler::new(params(1.0, 0.0, 0, 0)).is_err());
        assert!(Sampler::new(params(1.0, 1.5, 0, 0)).is_err());
        let too_many_logprobs = SamplingParams {
            logprobs: Some(21),
            ..params(0.0, 1.0, 0, 0)
        };
        assert!(Sampler::new(too_many_logprobs).is_err());
    }

    #[test]
    fn logprobs_come_only_when_asked_and_ignore_temperature() {
        let logits = [0.0, 2.0, 1.0];
        assert_eq!(
            Sampler::new(params(0.0, 1.0, 0, 0))
                .unwrap()
                .sample(&logits)
                .logprobs,
            None
        );
        let with_logprobs = |temperature| SamplingParams {
            logprobs: Some(2),
            ..params(temperature, 1.0, 1, 5)
        };
        let greedy = Sampler::new(with_logprobs(0.0)).unwrap().sample(&logits);
        let hot = Sampler::new(with_logprobs(7.0)).unwrap().sample(&logits);
        assert_eq!((greedy.id, hot.id), (1, 1), "top_k 1 leaves one choice");
        assert_eq!(
            greedy.logprobs, hot.logprobs,
            "the raw logits' distribution, whatever the temperature"
        );
        let logprobs = greedy.logprobs.unwrap();
        assert_eq!(
            logprobs.top.iter().map(|t| t.token_id).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(logprobs.logprob, logprobs.top[0].logprob);
    }
}
