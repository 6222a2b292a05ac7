//! The requests a benchmark sends: text prompts of about the asked length and image questions,
//! in the asked mix, all reproducible from one seed.

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
    /// One image and a question each.
    Image,
    /// Text and image requests taking turns.
    Mixed,
}

/// Common short English words, about one token each with their leading space.
const WORDS: &[&str] = &[
    "the", "model", "reads", "a", "long", "list", "of", "words", "and", "then", "answers", "with", "care", "about",
    "time", "light", "water", "city", "night", "number", "river", "green", "house", "music", "small", "fast", "open",
    "table", "paper", "stone", "cloud", "north", "story", "glass", "field", "quiet", "bright", "market", "garden",
];

/// The images of image requests: the user's files, or generated ones of a given size.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// Files read once and used in turn; at least one.
    Files(Vec<PathBuf>),
    /// A fresh PNG of `width` x `height` pixels per request, so the prefix cache cannot help.
    Generated { width: u32, height: u32 },
}

/// What a workload is made of.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub requests: usize,
    pub mix: Mix,
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
pub fn build(spec: &WorkloadSpec, rng: &mut StdRng) -> Result<Vec<GenerateRequest>, WorkloadError> {
    let files = match &spec.images {
        ImageSource::Files(paths) => paths.iter().map(Part::image_file).collect::<Result<Vec<_>, _>>()?,
        ImageSource::Generated { .. } => Vec::new(),
    };
    (0..spec.requests)
        .map(|i| {
            let with_image = match spec.mix {
                Mix::Text => false,
                Mix::Image => true,
                Mix::Mixed => i % 2 == 1,
            };
            let parts = if with_image {
                let image = match &spec.images {
                    ImageSource::Files(_) => files
                        .get(i % files.len().max(1))
                        .cloned()
                        .ok_or(WorkloadError::NoImageFiles)?,
                    ImageSource::Generated { width, height } => Part::Image(generated_png(*width, *height, rng)?),
                };
                vec![image, Part::Text("Describe this image in detail.".into())]
            } else {
                vec![Part::Text(prompt(spec.prompt_tokens, rng))]
            };
            let request = GenerateRequestBuilder::new()
                .user(parts)
                .mode(Mode::NoThink)
                .max_tokens(spec.max_tokens)
                .ignore_eos(true);
            Ok(match spec.logprobs {
                Some(top) => request.logprobs(top),
                None => request,
            }
            .build())
        })
        .collect()
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
        let noise = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503) ^ noise_seed) as u8 & 0x1f;
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
