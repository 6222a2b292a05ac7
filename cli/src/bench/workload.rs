//! The requests a benchmark sends: text prompts of about the asked length and image questions of
//! a given number of images each, text and image requests spread evenly in the asked shares, all
//! reproducible from one seed.

use std::io::Cursor;
use std::path::PathBuf;

use fovea_client::{ClientError, GenerateRequestBuilder, Mode, Part};
use fovea_proto::v1::GenerateRequest;
use image::{ImageFormat, Rgb, RgbImage};
use rand::Rng;
use rand::rngs::StdRng;

/// Which kinds of request a benchmark sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// Text prompts only.
    Text,
    /// Image questions only.
    Image,
    /// Text and image requests, spread evenly (by default taking turns).
    Mixed,
}

impl Mix {
    /// The share of image requests, given that of a `Mixed` workload.
    pub fn image_share(self, mixed_share: f64) -> f64 {
        match self {
            Mix::Text => 0.0,
            Mix::Image => 1.0,
            Mix::Mixed => mixed_share,
        }
    }
}

/// What a request asks about: text alone, or images and a question. Results are broken down by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestKind {
    Text,
    Image,
}

impl RequestKind {
    /// The kind's name in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Text => "text",
            RequestKind::Image => "image",
        }
    }
}

/// One request of a workload, with its kind.
#[derive(Debug, Clone)]
pub struct BenchRequest {
    pub kind: RequestKind,
    pub request: GenerateRequest,
}

/// Common short English words, about one token each with their leading space.
const WORDS: &[&str] = &[
    "the", "model", "reads", "a", "long", "list", "of", "words", "and", "then", "answers", "with",
    "care", "about", "time", "light", "water", "city", "night", "number", "river", "green",
    "house", "music", "small", "fast", "open", "table", "paper", "stone", "cloud", "north",
    "story", "glass", "field", "quiet", "bright", "market", "garden",
];

/// The images of image requests: the user's files, or generated ones of a given size.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// Files read once and used in turn; at least one.
    Files(Vec<PathBuf>),
    /// A fresh PNG of `width` x `height` pixels per image, so the prefix cache cannot help.
    Generated { width: u32, height: u32 },
}

/// What a workload is made of.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub requests: usize,
    /// The share of image requests, 0 to 1; the others are text requests.
    pub image_share: f64,
    /// Images in each image request, at least one.
    pub images_per_request: usize,
    pub images: ImageSource,
    /// Approximate prompt length of text requests, in tokens.
    pub prompt_tokens: usize,
    pub max_tokens: u32,
    /// Log probabilities to ask for per token (the number of alternatives); `None`: none.
    pub logprobs: Option<u32>,
}

/// Errors while building a workload.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(transparent)]
    ImageFile(#[from] ClientError),
    #[error("cannot encode a generated image: {0}")]
    Encode(#[from] image::ImageError),
    #[error("image requests need at least one image file")]
    NoImageFiles,
}

/// The benchmark's requests, in sending order: greedy, nothink, `ignore_eos` so that every
/// completion has exactly `max_tokens` tokens.
pub fn build(spec: &WorkloadSpec, rng: &mut StdRng) -> Result<Vec<BenchRequest>, WorkloadError> {
    let files = match &spec.images {
        ImageSource::Files(paths) => paths
            .iter()
            .map(Part::image_file)
            .collect::<Result<Vec<_>, _>>()?,
        ImageSource::Generated { .. } => Vec::new(),
    };
    let mut images_sent = 0;
    let mut requests = Vec::with_capacity(spec.requests);
    for index in 0..spec.requests {
        let kind = kind_of(index, spec.image_share);
        let parts = match kind {
            RequestKind::Text => vec![Part::Text(prompt(spec.prompt_tokens, rng))],
            RequestKind::Image => {
                let mut parts = Vec::with_capacity(spec.images_per_request + 1);
                for _ in 0..spec.images_per_request {
                    parts.push(match &spec.images {
                        ImageSource::Files(_) => files
                            .get(images_sent % files.len().max(1))
                            .cloned()
                            .ok_or(WorkloadError::NoImageFiles)?,
                        ImageSource::Generated { width, height } => {
                            Part::Image(generated_png(*width, *height, rng)?)
                        }
                    });
                    images_sent += 1;
                }
                let question = match spec.images_per_request {
                    1 => "Describe this image in detail.",
                    _ => "Describe these images in detail.",
                };
                parts.push(Part::Text(question.into()));
                parts
            }
        };
        let request = GenerateRequestBuilder::new()
            .user(parts)
            .mode(Mode::NoThink)
            .max_tokens(spec.max_tokens)
            .ignore_eos(true);
        let request = match spec.logprobs {
            Some(top) => request.logprobs(top),
            None => request,
        };
        requests.push(BenchRequest {
            kind,
            request: request.build(),
        });
    }
    Ok(requests)
}

/// The kind of request `index`: image requests are spread evenly at `image_share`, the first at
/// the index where the share first adds up to a whole request (0.5: text, image, text, image, ...).
fn kind_of(index: usize, image_share: f64) -> RequestKind {
    let images_until = |requests: usize| (requests as f64 * image_share).floor();
    if images_until(index + 1) > images_until(index) {
        RequestKind::Image
    } else {
        RequestKind::Text
    }
}

/// About `tokens` tokens of random words.
fn prompt(tokens: usize, rng: &mut StdRng) -> String {
    let words: Vec<&str> = (0..tokens.max(1))
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect();
    words.join(" ")
}

/// A PNG of smooth gradients with a random tint and noise, so each one is different.
fn generated_png(width: u32, height: u32, rng: &mut StdRng) -> Result<Vec<u8>, image::ImageError> {
    let tint: [u8; 3] = rng.random();
    let noise_seed: u32 = rng.random();
    let image = RgbImage::from_fn(width, height, |x, y| {
        let noise =
            (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503) ^ noise_seed) as u8 & 0x1f;
        Rgb([
            ((x * 255 / width.max(1)) as u8).wrapping_add(tint[0]) ^ noise,
            ((y * 255 / height.max(1)) as u8).wrapping_add(tint[1]),
            tint[2] ^ noise,
        ])
    });
    let mut png = Vec::new();
    image.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(requests: usize, image_share: f64) -> String {
        (0..requests)
            .map(|index| match kind_of(index, image_share) {
                RequestKind::Text => 't',
                RequestKind::Image => 'I',
            })
            .collect()
    }

    #[test]
    fn image_requests_are_spread_evenly_at_their_share() {
        assert_eq!(kinds(6, 0.5), "tItItI", "half: taking turns, text first");
        assert_eq!(kinds(8, 0.25), "tttItttI");
        assert_eq!(kinds(6, 1.0 / 3.0), "ttIttI");
        assert_eq!(kinds(4, 0.0), "tttt");
        assert_eq!(kinds(4, 1.0), "IIII");
    }
}
