//! From a user's request (chat messages, image bytes, mode) to model input: the rendered prompt,
//! its token ids with image placeholders, and each image prepared for the vision tower.
//!
//! Everything that can be wrong with user input is caught here, before any compute: a bad image
//! is named by its position, and the `<image>` marker count must match the images given.

use std::path::Path;
use std::sync::Arc;

use crate::model::ImagePlacement;
use crate::preprocess::{
    ImageError, PreparedImage, PreprocessConfig, PreprocessConfigError, prepare_image,
};
use crate::text::{ChatMessage, IMAGE_MARKER, Mode, PromptBuilder, TextError, TextTokenizer};

/// Why a request could not be turned into model input.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    PreprocessConfig(#[from] PreprocessConfigError),
    #[error("image {index}: {source}")]
    Image {
        index: usize,
        #[source]
        source: ImageError,
    },
}

/// A request ready for the model.
pub struct PreparedRequest {
    /// The rendered prompt text (template plus mode suffix).
    pub prompt_text: String,
    /// Token ids, with a placeholder id at every image position.
    pub prompt_ids: Vec<u32>,
    /// Each image with where its tokens sit, in prompt order.
    pub images: Vec<(ImagePlacement, PreparedImage)>,
}

/// The text and image front end of one checkpoint.
pub struct RequestPreparer {
    prompt_builder: PromptBuilder,
    preprocess: PreprocessConfig,
}

impl RequestPreparer {
    /// Loads the tokenizer, chat template and `preprocessor_config.json` of the checkpoint in `dir`.
    pub fn from_model_dir(dir: &Path) -> Result<Self, InputError> {
        let preprocess = PreprocessConfig::from_file(dir.join("preprocessor_config.json"))?;
        Ok(RequestPreparer {
            prompt_builder: PromptBuilder::from_model_dir(dir)?,
            preprocess,
        })
    }

    /// The checkpoint's tokenizer.
    pub fn tokenizer(&self) -> &Arc<TextTokenizer> {
        self.prompt_builder.tokenizer()
    }

    /// Renders `messages` in `mode`, prepares `images` (encoded bytes, in marker order) and tokenizes.
    pub fn prepare(
        &self,
        messages: &[ChatMessage],
        images: &[Vec<u8>],
        mode: Mode,
    ) -> Result<PreparedRequest, InputError> {
        let prompt_text = self.prompt_builder.render_prompt(messages, mode)?;
        let markers = prompt_text.matches(IMAGE_MARKER).count();
        if markers != images.len() {
            return Err(TextError::ImageCountMismatch {
                markers,
                images: images.len(),
            }
            .into());
        }
        let prepared = images
            .iter()
            .enumerate()
            .map(|(index, bytes)| {
                prepare_image(bytes, &self.preprocess)
                    .map_err(|source| InputError::Image { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let counts: Vec<usize> = prepared
            .iter()
            .map(|image| image.grid_h * image.grid_w)
            .collect();
        let tokenized = self.prompt_builder.tokenize_prompt(&prompt_text, &counts)?;
        let images = tokenized
            .image_spans
            .iter()
            .zip(prepared)
            .map(|(span, image)| {
                let placement = ImagePlacement {
                    start: span.start,
                    len: span.len,
                };
                (placement, image)
            })
            .collect();
        Ok(PreparedRequest {
            prompt_text,
            prompt_ids: tokenized.ids,
            images,
        })
    }
}
