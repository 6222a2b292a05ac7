//! Why user-supplied image bytes could not become encoder input, worded for the person who sent them.

use super::decode::{MAX_DECODER_ALLOC_BYTES, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE};
use thiserror::Error;

/// Why an image could not be decoded or prepared for the vision encoder.
///
/// Every variant is the sender's problem and says what to do about it; none of them is a bug in
/// Fovea. `format` fields name the detected container (`"PNG"`, `"JPEG"`, ...).
#[derive(Debug, Error)]
pub enum ImageError {
    /// Zero bytes were given.
    #[error("the image is empty (0 bytes); send the file's contents")]
    Empty,

    /// The leading bytes match no known image signature.
    #[error(
        "the data is not a recognised image (it starts with {leading_bytes}); \
         send a PNG, JPEG, WebP, GIF or BMP file"
    )]
    UnknownFormat {
        /// The first bytes of the input in hex, to help tell e.g. HTML or base64 text apart.
        leading_bytes: String,
    },

    /// A known image format that this build cannot decode (TIFF, AVIF, ...).
    #[error("{format} images are not supported; convert the image to PNG, JPEG, WebP, GIF or BMP")]
    UnsupportedFormat {
        /// The detected format.
        format: String,
    },

    /// The header claims a size over [`MAX_IMAGE_SIDE`] or [`MAX_IMAGE_PIXELS`]; nothing was decoded.
    #[error(
        "the image header claims {width}x{height} pixels, over the limit of {max_side} pixels per \
         side and {max_pixels} pixels in all; downscale the image before sending it",
        max_side = MAX_IMAGE_SIDE,
        max_pixels = MAX_IMAGE_PIXELS
    )]
    TooLarge {
        /// Width claimed by the header.
        width: u32,
        /// Height claimed by the header.
        height: u32,
    },

    /// The header claims a width or height of zero.
    #[error(
        "the image header claims an empty {width}x{height} picture; send an image with at least one pixel"
    )]
    ZeroSized {
        /// Width claimed by the header.
        width: u32,
        /// Height claimed by the header.
        height: u32,
    },

    /// The data stops before the image is complete.
    #[error(
        "the {format} file ends before the image data does; it was probably cut off, send the whole file"
    )]
    Truncated {
        /// The detected format.
        format: String,
    },

    /// The data is malformed.
    #[error("the {format} data is corrupt ({detail}); re-export or re-encode the image")]
    Corrupt {
        /// The detected format.
        format: String,
        /// The decoder's description of the fault.
        detail: String,
    },

    /// A valid file using a variant of its format that the decoder does not implement.
    #[error(
        "the {format} image uses a feature that cannot be decoded ({detail}); re-encode it as a plain PNG or JPEG"
    )]
    UnsupportedFeature {
        /// The detected format.
        format: String,
        /// The decoder's description of the feature.
        detail: String,
    },

    /// Decoding would allocate more than [`MAX_DECODER_ALLOC_BYTES`].
    #[error(
        "decoding this {format} image needs more than {limit} bytes of memory; send a smaller image",
        limit = MAX_DECODER_ALLOC_BYTES
    )]
    DecoderMemoryLimit {
        /// The detected format.
        format: String,
    },
}
