//! The decoded picture that every later preprocessing step works on: 8-bit RGB, row-major.

/// An 8-bit RGB picture stored row-major, three bytes per pixel (`R, G, B`), no padding.
///
/// The length of the pixel buffer always equals `width * height * 3`; the constructor enforces it,
/// so the resize and patchify steps can index without checks failing. Zero-sized images are
/// representable (a 0-wide image has an empty buffer), although [`decode_rgb`](super::decode_rgb)
/// never produces one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl RgbImage {
    /// Wraps a row-major RGB buffer; `None` when `pixels.len() != width * height * 3`.
    ///
    /// ```
    /// use fovea_model::preprocess::RgbImage;
    /// let red_dot = RgbImage::from_raw(1, 1, vec![255, 0, 0]).expect("3 bytes for 1 pixel");
    /// assert_eq!((red_dot.width(), red_dot.height()), (1, 1));
    /// assert!(RgbImage::from_raw(2, 1, vec![255, 0, 0]).is_none());
    /// ```
    pub fn from_raw(width: usize, height: usize, pixels: Vec<u8>) -> Option<Self> {
        let expected = width.checked_mul(height)?.checked_mul(3)?;
        (pixels.len() == expected).then_some(Self {
            width,
            height,
            pixels,
        })
    }

    /// Wraps a buffer that preprocessing code produced itself, sized `width * height * 3` by
    /// construction.
    pub(super) fn from_produced(width: usize, height: usize, pixels: Vec<u8>) -> Self {
        debug_assert_eq!(pixels.len(), width * height * 3, "RGB buffer size");
        Self {
            width,
            height,
            pixels,
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The pixels, row-major, `R, G, B` per pixel.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }
}
