//! A resized RGB image to the encoder's input rows: rescale, normalize, cut into patches.
//!
//! Matches the reference numerically: `rescale` multiplies in f64 and stores f32, `normalize`
//! subtracts and divides in f32 (`(x - mean) / std` with f32 mean and std). Patches follow
//! transformers' `convert_image_to_patches`: raster order over the patch grid, each patch flattened
//! as `(row in patch, column in patch, channel)`.

use super::config::PreprocessConfig;
use super::rgb_image::RgbImage;

/// Encoder input for one image: a grid of patches, each a row of `patch_size² · 3` values.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedImage {
    /// Patch rows.
    pub grid_h: usize,
    /// Patch columns.
    pub grid_w: usize,
    /// `grid_h * grid_w` rows of `patch_size * patch_size * 3` values, row-major; row
    /// `r * grid_w + c` is the patch at grid row `r`, column `c`, laid out `(py, px, channel)`.
    pub patches: Vec<f32>,
}

/// Cuts `image` into `cfg`'s patches, rescaling and normalizing each sample.
///
/// The image should have sides that are multiples of the patch size (as
/// [`PatchBudget::target_size`](super::PatchBudget::target_size) produces); any partial patch at
/// the right or bottom edge is left out.
pub fn patchify(image: &RgbImage, cfg: &PreprocessConfig) -> PreparedImage {
    let p = cfg.patch_budget().patch_size();
    let (grid_h, grid_w) = (image.height() / p, image.width() / p);
    let values = SampleValues::new(cfg);
    let row_len = image.width() * 3;
    let mut patches = Vec::with_capacity(grid_h * grid_w * p * p * 3);
    for grid_row in 0..grid_h {
        for grid_col in 0..grid_w {
            for py in 0..p {
                let start = (grid_row * p + py) * row_len + grid_col * p * 3;
                let samples = &image.pixels()[start..start + p * 3];
                patches.extend(samples.chunks_exact(3).flat_map(|rgb| values.of_pixel(rgb)));
            }
        }
    }
    PreparedImage {
        grid_h,
        grid_w,
        patches,
    }
}

/// The encoder value of every possible byte in each channel, computed once per image.
struct SampleValues([[f32; 256]; 3]);

impl SampleValues {
    fn new(cfg: &PreprocessConfig) -> Self {
        let mut table = [[0.0f32; 256]; 3];
        for (channel, values) in table.iter_mut().enumerate() {
            for (byte, value) in values.iter_mut().enumerate() {
                let x = match cfg.rescale_factor {
                    Some(factor) => (byte as f64 * factor) as f32,
                    None => byte as f32,
                };
                *value = match cfg.normalization {
                    Some((mean, std)) => (x - mean[channel] as f32) / std[channel] as f32,
                    None => x,
                };
            }
        }
        Self(table)
    }

    fn of_pixel(&self, rgb: &[u8]) -> [f32; 3] {
        [
            self.0[0][usize::from(rgb[0])],
            self.0[1][usize::from(rgb[1])],
            self.0[2][usize::from(rgb[2])],
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::test_support::golden_config;

    #[test]
    fn patches_are_raster_ordered_and_flattened_row_column_channel() {
        // 32 wide x 16 tall: two patches side by side. Each byte encodes its position.
        let (width, height) = (32, 16);
        let pixels: Vec<u8> = (0..height)
            .flat_map(|y| {
                (0..width)
                    .flat_map(move |x| (0..3).map(move |c| ((y * 7 + x * 3 + c * 101) % 256) as u8))
            })
            .collect();
        let image = RgbImage::from_raw(width, height, pixels.clone()).expect("32x16 RGB");
        let prepared = patchify(&image, &golden_config());
        assert_eq!((prepared.grid_h, prepared.grid_w), (1, 2));
        assert_eq!(prepared.patches.len(), 2 * 16 * 16 * 3);
        let encoded = |byte: u8| ((f64::from(byte) * 0.00392156862745098) as f32 - 0.5) / 0.5;
        for patch in 0..2 {
            for py in 0..16 {
                for px in 0..16 {
                    for c in 0..3 {
                        let source = pixels[(py * width + patch * 16 + px) * 3 + c];
                        let index = patch * 768 + (py * 16 + px) * 3 + c;
                        assert_eq!(
                            prepared.patches[index],
                            encoded(source),
                            "patch {patch} ({py},{px},{c})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn extreme_bytes_map_to_minus_one_and_one() {
        let image = RgbImage::from_raw(16, 16, [0u8, 255, 0].repeat(256)).expect("16x16 RGB");
        let prepared = patchify(&image, &golden_config());
        assert_eq!(&prepared.patches[..3], &[-1.0, 1.0, -1.0]);
    }

    #[test]
    fn partial_edge_patches_are_left_out() {
        let image = RgbImage::from_raw(40, 20, vec![128; 40 * 20 * 3]).expect("40x20 RGB");
        let prepared = patchify(&image, &golden_config());
        assert_eq!(
            (prepared.grid_h, prepared.grid_w, prepared.patches.len()),
            (1, 2, 2 * 768)
        );
    }
}
