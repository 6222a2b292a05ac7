//! What a caller submits ([`GenerateRequest`]) and what the engine accepts (`ValidRequest`):
//! every check happens once, in `RequestLimits::validate`, on the caller's thread, so the engine
//! loop never sees a request that cannot run.

use std::fmt;

use candle_core::Tensor;
use fovea_model::ImagePlacement;
use fovea_model::input::PreparedRequest;
use fovea_model::preprocess::PreparedImage;
use fovea_model::sampling::SamplingParams;

use crate::error::RequestError;
use crate::image_cache::ImageKey;

/// The engine's name for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request {}", self.0)
    }
}

/// One generation to run.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Prompt token ids; image positions hold any valid id (they are overwritten by features).
    pub prompt_ids: Vec<u32>,
    /// Each image with where its tokens sit in the prompt, in prompt order.
    pub images: Vec<(ImagePlacement, ImageSource)>,
    pub sampling: SamplingParams,
    /// At least 1.
    pub max_new_tokens: usize,
    /// Tokens that end generation in addition to the model's end-of-turn tokens; the stop token is
    /// the last token sent. These apply even with `ignore_eos`.
    pub stop_token_ids: Vec<u32>,
    /// Generate through the model's end-of-turn tokens.
    pub ignore_eos: bool,
    /// Texts that end generation; the completion's text stops right before the first one.
    pub stop_strings: Vec<String>,
    /// Leave special tokens (`<think>`, `<|im_end|>`, ...) out of the text.
    pub skip_special_tokens: bool,
    /// Tokens at the end of `prompt_ids` that an interrupted earlier attempt of this request
    /// generated: the sampler skips their draws, so a seeded request continues as it would have.
    /// `max_new_tokens` counts the tokens still to generate.
    pub replayed_tokens: usize,
}

impl GenerateRequest {
    /// A greedy request for `prepared`'s prompt and images, stopping at the model's end-of-turn
    /// tokens or after `max_new_tokens`.
    ///
    /// ```no_run
    /// # use fovea_model::{input::RequestPreparer, text::{ChatMessage, Mode}};
    /// # use fovea_worker::GenerateRequest;
    /// # let preparer = RequestPreparer::from_model_dir("model".as_ref()).unwrap();
    /// let messages = [ChatMessage { role: "user".into(), content: "Hi!".into() }];
    /// let prepared = preparer.prepare(&messages, &[], Mode::NoThink).unwrap();
    /// let request = GenerateRequest { ignore_eos: true, ..GenerateRequest::new(prepared, 64) };
    /// ```
    pub fn new(prepared: PreparedRequest, max_new_tokens: usize) -> Self {
        GenerateRequest {
            prompt_ids: prepared.prompt_ids,
            images: ImageSource::pixels(prepared.images),
            sampling: SamplingParams::default(),
            max_new_tokens,
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            stop_strings: Vec::new(),
            skip_special_tokens: false,
            replayed_tokens: 0,
        }
    }
}

/// Where an image's decoder-space features come from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// Patches to run through the vision tower here (or to find in the feature cache).
    Pixels(PreparedImage),
    /// Features `[grid_h · grid_w, text_hidden]` a vision worker encoded, under the image's key.
    Features { key: ImageKey, features: Tensor },
    /// Known by its key only: the prompt's keys and values come from a prefill worker, so the
    /// features are needed only if the sequence has to be recomputed (after a preemption, with
    /// its blocks gone from the prefix cache), so such a sequence is given back instead
    /// ([`crate::error::RequestError::GivenBack`]).
    KeyOnly { key: ImageKey, patches: usize },
}

impl ImageSource {
    /// Pixel sources for prepared images, as [`PreparedRequest`] holds them.
    pub fn pixels(
        images: Vec<(ImagePlacement, PreparedImage)>,
    ) -> Vec<(ImagePlacement, ImageSource)> {
        images
            .into_iter()
            .map(|(placement, image)| (placement, ImageSource::Pixels(image)))
            .collect()
    }

    /// Image positions the source covers (the patch count).
    fn patches(&self) -> usize {
        match self {
            ImageSource::Pixels(image) => image.grid_h * image.grid_w,
            ImageSource::Features { features, .. } => features.dims().first().copied().unwrap_or(0),
            ImageSource::KeyOnly { patches, .. } => *patches,
        }
    }

    /// The feature-cache and block-hash key of the image.
    fn key(&self) -> ImageKey {
        match self {
            ImageSource::Pixels(image) => ImageKey::of(image),
            ImageSource::Features { key, .. } | ImageSource::KeyOnly { key, .. } => *key,
        }
    }
}

/// One image of a valid request.
#[derive(Debug)]
pub(crate) struct RequestImage {
    pub placement: ImagePlacement,
    pub source: ImageSource,
    pub key: ImageKey,
}

/// A request that fits the model and the KV cache.
#[derive(Debug)]
pub(crate) struct ValidRequest {
    pub prompt_ids: Vec<u32>,
    pub images: Vec<RequestImage>,
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    /// The request's stop tokens plus, unless `ignore_eos`, the model's end-of-turn tokens.
    pub stop_token_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
    pub skip_special_tokens: bool,
    pub replayed_tokens: usize,
}

impl ValidRequest {
    /// Prompt tokens that are image patches.
    pub fn image_tokens(&self) -> usize {
        self.images.iter().map(|image| image.placement.len).sum()
    }
}

/// What a request must fit: the model's sizes and the KV cache's capacity.
#[derive(Debug, Clone)]
pub(crate) struct RequestLimits {
    pub vocab_size: usize,
    pub context_len: usize,
    /// Values per image patch (`patch_size² · channels`).
    pub patch_dim: usize,
    /// Elements per feature row (the decoder's hidden size).
    pub hidden_size: usize,
    pub eos_token_ids: Vec<u32>,
    /// Tokens the whole KV cache holds.
    pub kv_capacity_tokens: usize,
}

fn invalid(message: impl Into<String>) -> RequestError {
    RequestError::Invalid(message.into())
}

impl RequestLimits {
    /// Checks `request` against the limits, hashing its images for the feature cache.
    pub fn validate(&self, request: GenerateRequest) -> Result<ValidRequest, RequestError> {
        let GenerateRequest {
            prompt_ids,
            images,
            sampling,
            max_new_tokens,
            stop_token_ids,
            ignore_eos,
            stop_strings,
            skip_special_tokens,
            replayed_tokens,
        } = request;
        let prompt_tokens = prompt_ids.len();
        if prompt_tokens == 0 {
            return Err(invalid("the prompt is empty"));
        }
        if max_new_tokens == 0 {
            return Err(invalid("max_new_tokens must be at least 1"));
        }
        sampling.validate().map_err(|e| invalid(e.to_string()))?;
        if let Some(bad) = prompt_ids
            .iter()
            .chain(&stop_token_ids)
            .find(|&&id| id as usize >= self.vocab_size)
        {
            return Err(invalid(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.vocab_size
            )));
        }
        if replayed_tokens >= prompt_tokens {
            return Err(invalid(format!(
                "{replayed_tokens} replayed tokens leave nothing of the {prompt_tokens}-token prompt"
            )));
        }
        if stop_strings.iter().any(String::is_empty) {
            return Err(invalid("stop strings must not be empty"));
        }
        self.check_images(&images, prompt_tokens)?;
        if prompt_tokens + max_new_tokens > self.context_len {
            return Err(RequestError::ExceedsContext {
                prompt_tokens,
                max_new_tokens,
                context_len: self.context_len,
            });
        }
        // The last generated token is never fed back, so it needs no cache slot.
        let needed_tokens = prompt_tokens + max_new_tokens - 1;
        if needed_tokens > self.kv_capacity_tokens {
            return Err(RequestError::ExceedsKvCache {
                prompt_tokens,
                max_new_tokens,
                needed_tokens,
                capacity_tokens: self.kv_capacity_tokens,
            });
        }
        let mut stop_token_ids = stop_token_ids;
        if !ignore_eos {
            stop_token_ids.extend(&self.eos_token_ids);
        }
        Ok(ValidRequest {
            prompt_ids,
            images: images
                .into_iter()
                .map(|(placement, source)| RequestImage {
                    placement,
                    key: source.key(),
                    source,
                })
                .collect(),
            sampling,
            max_new_tokens,
            stop_token_ids,
            stop_strings,
            skip_special_tokens,
            replayed_tokens,
        })
    }

    /// Images must be whole grids of patches, placed in order, inside the prompt, without overlap.
    fn check_images(
        &self,
        images: &[(ImagePlacement, ImageSource)],
        prompt_tokens: usize,
    ) -> Result<(), RequestError> {
        let mut cursor = 0;
        for (index, (placement, source)) in images.iter().enumerate() {
            let patches = source.patches();
            match source {
                ImageSource::Pixels(image)
                    if patches == 0 || image.patches.len() != patches * self.patch_dim =>
                {
                    return Err(invalid(format!(
                        "image {index}: {} values do not make a {}x{} grid of {}-value patches",
                        image.patches.len(),
                        image.grid_h,
                        image.grid_w,
                        self.patch_dim
                    )));
                }
                ImageSource::Features { features, .. }
                    if features.dims() != [patches, self.hidden_size] =>
                {
                    return Err(invalid(format!(
                        "image {index}: features of shape {:?} are not rows of the decoder's {} values",
                        features.dims(),
                        self.hidden_size
                    )));
                }
                _ if patches == 0 => return Err(invalid(format!("image {index} has no patches"))),
                _ => {}
            }
            if placement.len != patches
                || placement.start < cursor
                || placement.start + placement.len > prompt_tokens
            {
                return Err(invalid(format!(
                    "image {index}: placement at {} of {} tokens does not fit its {patches} patches in order in a \
                     {prompt_tokens}-token prompt",
                    placement.start, placement.len
                )));
            }
            cursor = placement.start + placement.len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RequestLimits {
        RequestLimits {
            vocab_size: 100,
            context_len: 64,
            patch_dim: 3,
            hidden_size: 4,
            eos_token_ids: vec![99],
            kv_capacity_tokens: 48,
        }
    }

    fn request(prompt: usize, max_new_tokens: usize) -> GenerateRequest {
        GenerateRequest {
            prompt_ids: vec![1; prompt],
            images: Vec::new(),
            sampling: SamplingParams::default(),
            max_new_tokens,
            stop_token_ids: vec![7],
            ignore_eos: false,
            stop_strings: Vec::new(),
            skip_special_tokens: false,
            replayed_tokens: 0,
        }
    }

    fn image(start: usize, grid: (usize, usize)) -> (ImagePlacement, ImageSource) {
        let placement = ImagePlacement {
            start,
            len: grid.0 * grid.1,
        };
        let image = PreparedImage {
            grid_h: grid.0,
            grid_w: grid.1,
            patches: vec![0.0; grid.0 * grid.1 * 3],
        };
        (placement, ImageSource::Pixels(image))
    }

    #[test]
    fn a_fitting_request_gets_the_model_stop_tokens_unless_ignore_eos() {
        let valid = limits().validate(request(10, 39)).unwrap();
        assert_eq!(valid.stop_token_ids, vec![7, 99]);
        let ignoring = GenerateRequest {
            ignore_eos: true,
            ..request(10, 39)
        };
        assert_eq!(limits().validate(ignoring).unwrap().stop_token_ids, vec![7]);
    }

    #[test]
    fn requests_that_can_never_fit_are_refused() {
        assert!(matches!(
            limits().validate(request(40, 30)),
            Err(RequestError::ExceedsContext {
                context_len: 64,
                ..
            })
        ));
        assert!(matches!(
            limits().validate(request(10, 40)),
            Err(RequestError::ExceedsKvCache {
                needed_tokens: 49,
                capacity_tokens: 48,
                ..
            })
        ));
    }

    #[test]
    fn malformed_requests_are_invalid() {
        let bad =
            |r: GenerateRequest| matches!(limits().validate(r), Err(RequestError::Invalid(_)));
        assert!(bad(request(0, 4)));
        assert!(bad(request(4, 0)));
        assert!(bad(GenerateRequest {
            prompt_ids: vec![1, 100],
            ..request(2, 4)
        }));
        let mut sampling = request(4, 4);
        sampling.sampling.top_p = 0.0;
        assert!(bad(sampling));
        assert!(bad(GenerateRequest {
            stop_strings: vec![String::new()],
            ..request(4, 4)
        }));
        let with_images = |images| GenerateRequest {
            images,
            ..request(20, 4)
        };
        assert!(
            limits()
                .validate(with_images(vec![image(2, (2, 3)), image(8, (1, 4))]))
                .is_ok()
        );
        assert!(
            bad(with_images(vec![image(2, (2, 3)), image(7, (1, 4))])),
            "overlapping"
        );
        assert!(
            bad(with_images(vec![image(18, (2, 3))])),
            "past the prompt end"
        );
        let (mut placement, image) = image(0, (2, 2));
        placement.len = 5;
        assert!(
            bad(with_images(vec![(placement, image)])),
            "placement length is not the patch count"
        );
    }
}
