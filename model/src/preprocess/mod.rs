//! Image preprocessing for the vision encoder, exact to the reference `Siglip2ImageProcessorNoUpscale`.
//!
//! The pipeline is [`decode_rgb`] (bytes to 8-bit RGB as PIL decodes them, JPEGs included, refusing
//! decompression bombs), then
//! [`PatchBudget::target_size`] (the patch-aligned size within the patch budget), then
//! [`resize_bilinear`] (PIL's antialiased bilinear, bit-exact), then [`patchify`] (rescale,
//! normalize, cut into 16x16 patches); [`prepare_image`] chains them. [`resize_position_grid`]
//! resizes the encoder's learned position-embedding grid to an image's patch grid as PyTorch does.
//! Nothing here touches tensors or devices: the output is plain `f32` rows for the model to upload.

mod config;
mod decode;
mod error;
mod jpeg;
mod patch_budget;
mod patchify;
mod position_resize;
mod resize;
mod rgb_image;
#[cfg(test)]
mod test_support;

pub use config::{PreprocessConfig, PreprocessConfigError};
pub use decode::{MAX_DECODER_ALLOC_BYTES, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, decode_rgb};
pub use error::ImageError;
pub use patch_budget::{InvalidPatchBudget, PatchBudget};
pub use patchify::{PreparedImage, patchify};
pub use position_resize::resize_position_grid;
pub use resize::resize_bilinear;
pub use rgb_image::RgbImage;

/// Decodes image bytes and turns them into encoder patches: decode, budget, resize, patchify.
///
/// ```no_run
/// use fovea_model::preprocess::{prepare_image, PreprocessConfig};
/// let cfg = PreprocessConfig::from_file("checkpoint/preprocessor_config.json")?;
/// let prepared = prepare_image(&std::fs::read("photo.jpg")?, &cfg)?;
/// println!("{}x{} patches", prepared.grid_h, prepared.grid_w);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn prepare_image(bytes: &[u8], cfg: &PreprocessConfig) -> Result<PreparedImage, ImageError> {
    let image = decode_rgb(bytes)?;
    let (height, width) = cfg
        .patch_budget()
        .target_size(image.height(), image.width());
    Ok(patchify(&resize_bilinear(&image, height, width), cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::test_support::{golden_config, golden_images};
    use image::{ImageEncoder, codecs::png::PngEncoder};

    #[test]
    fn prepare_image_gives_the_golden_grid_for_every_golden_image() {
        let cfg = golden_config();
        for golden in golden_images() {
            let prepared = prepare_image(&golden.bytes(), &cfg).expect("golden image");
            assert_eq!(
                (prepared.grid_h, prepared.grid_w),
                golden.grid,
                "{}",
                golden.file
            );
            assert_eq!(
                prepared.patches.len(),
                golden.grid.0 * golden.grid.1 * 768,
                "{}",
                golden.file
            );
        }
    }

    fn png_rgb(width: u32, height: u32) -> Vec<u8> {
        let pixels: Vec<u8> = (0..width * height * 3).map(|i| (i % 251) as u8).collect();
        let mut png = Vec::new();
        PngEncoder::new(&mut png)
            .write_image(&pixels, width, height, image::ExtendedColorType::Rgb8)
            .expect("encode PNG");
        png
    }

    #[test]
    fn one_pixel_image_becomes_a_seven_by_seven_grid() {
        let prepared = prepare_image(&png_rgb(1, 1), &golden_config()).expect("1x1 PNG");
        assert_eq!((prepared.grid_h, prepared.grid_w), (7, 7));
    }

    #[test]
    fn ten_thousand_by_ten_image_becomes_one_row_of_the_minimum_patches() {
        let prepared = prepare_image(&png_rgb(10_000, 10), &golden_config()).expect("10000x10 PNG");
        assert_eq!((prepared.grid_h, prepared.grid_w), (1, 256));
        assert_eq!(prepared.patches.len(), 256 * 768);
    }
}
