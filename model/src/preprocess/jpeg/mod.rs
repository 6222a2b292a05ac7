//! A JPEG decoder whose pixels equal libjpeg-turbo's default output, i.e. what PIL returns.
//!
//! The reference processor reads JPEGs through PIL, and other decoders differ from libjpeg-turbo
//! by a few levels on many pixels (zune-jpeg: up to 4 levels on 16% of the golden JPEG's samples),
//! which shows up in the encoder's features. This decoder reproduces libjpeg's default
//! decompression step by step: Huffman decoding (baseline, extended and progressive), the
//! accurate integer IDCT (`JDCT_ISLOW`), fancy chroma upsampling and the fixed-point colour
//! conversion, with libjpeg's colour-space guess from the JFIF and Adobe markers.
//!
//! Variants it does not implement (arithmetic coding, 12-bit or lossless, hierarchical,
//! 2-component or non-integral sampling ratios) are reported as unsupported so the caller can
//! fall back to another decoder.

mod bit_reader;
mod color;
mod headers;
mod huffman;
mod idct;
mod scan;
mod upsample;

use self::color::ColorSpace;
use self::headers::{Frame, Tables};
use self::upsample::Plane;
use super::decode::check_claimed_size;
use super::error::ImageError;
use super::rgb_image::RgbImage;

/// Why this decoder stopped.
#[derive(Debug)]
pub(super) enum JpegFault {
    /// The file ends inside the image data.
    Truncated,
    /// The data is malformed.
    Corrupt(String),
    /// A JPEG variant this decoder leaves to another one.
    Unsupported,
    /// The frame's size is outside the accepted limits.
    Refused(ImageError),
}

/// Decodes a JPEG exactly as PIL (libjpeg-turbo) would; `Ok(None)` for variants it does not
/// implement. Size limits are enforced before any pixel storage is allocated.
pub(super) fn decode_jpeg(bytes: &[u8]) -> Result<Option<RgbImage>, ImageError> {
    let format = || "JPEG".to_owned();
    match decode(bytes) {
        Ok(image) => Ok(Some(image)),
        Err(JpegFault::Unsupported) => Ok(None),
        Err(JpegFault::Truncated) => Err(ImageError::Truncated { format: format() }),
        Err(JpegFault::Corrupt(detail)) => Err(ImageError::Corrupt {
            format: format(),
            detail,
        }),
        Err(JpegFault::Refused(error)) => Err(error),
    }
}

/// Marker codes.
const SOI: u8 = 0xd8;
const EOI: u8 = 0xd9;
const SOS: u8 = 0xda;
const DQT: u8 = 0xdb;
const DHT: u8 = 0xc4;
const DRI: u8 = 0xdd;
const APP0: u8 = 0xe0;
const APP14: u8 = 0xee;

/// Walks the markers, decodes every scan and converts the result.
fn decode(data: &[u8]) -> Result<RgbImage, JpegFault> {
    if !data.starts_with(&[0xff, SOI]) {
        return Err(JpegFault::Corrupt("missing start-of-image marker".into()));
    }
    let mut tables = Tables::default();
    let mut frame: Option<Frame> = None;
    let mut restart_interval = 0;
    let mut saw_jfif = false;
    let mut adobe_transform = None;
    let mut position = 2;
    loop {
        position = bit_reader::next_marker(data, position);
        let Some(&marker) = data.get(position + 1) else {
            // The file ended without EOI; libjpeg (through PIL) cannot finish such a file.
            return Err(JpegFault::Truncated);
        };
        position += 2;
        if marker == EOI {
            break;
        }
        if matches!(marker, 0x01 | 0xd0..=0xd7) {
            continue; // stand-alone markers
        }
        let length = data
            .get(position..position + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or(JpegFault::Truncated)?;
        if length < 2 {
            return Err(JpegFault::Corrupt(
                "marker segment shorter than its length field".into(),
            ));
        }
        let payload = data
            .get(position + 2..position + length)
            .ok_or(JpegFault::Truncated)?;
        position += length;
        match marker {
            0xc0..=0xc2 => {
                if frame.is_some() {
                    return Err(JpegFault::Corrupt("more than one frame header".into()));
                }
                let (width, height) = headers::frame_size(payload)
                    .ok_or_else(|| JpegFault::Corrupt("short frame header".into()))?;
                check_claimed_size(width, height).map_err(JpegFault::Refused)?;
                frame = Some(headers::parse_frame(payload, marker == 0xc2)?);
            }
            0xc3 | 0xc5..=0xc7 | 0xc9..=0xcb | 0xcd..=0xcf => return Err(JpegFault::Unsupported),
            DHT => headers::parse_huffman_tables(payload, &mut tables)?,
            DQT => headers::parse_quant_tables(payload, &mut tables)?,
            DRI => restart_interval = headers::parse_restart_interval(payload)?,
            APP0 => saw_jfif |= headers::is_jfif(payload),
            APP14 => adobe_transform = adobe_transform.or(headers::adobe_transform(payload)),
            SOS => {
                let frame = frame
                    .as_mut()
                    .ok_or_else(|| JpegFault::Corrupt("scan before the frame header".into()))?;
                let scan = headers::parse_scan(payload, frame)?;
                for scan_component in &scan.components {
                    let component = &mut frame.components[scan_component.index];
                    if component.quant.is_none() {
                        let table = tables.quant[component.quant_slot].ok_or_else(|| {
                            JpegFault::Corrupt("undefined quantization table".into())
                        })?;
                        component.quant = Some(table);
                    }
                }
                position =
                    scan::decode_scan(data, position, frame, &scan, &tables, restart_interval)?;
            }
            _ => {} // APPn, COM, DNL and others carry nothing the pixels depend on
        }
    }
    let frame = frame.ok_or_else(|| JpegFault::Corrupt("no frame header".into()))?;
    let space = color_space(&frame, saw_jfif, adobe_transform);
    let planes = frame
        .components
        .into_iter()
        .map(|component| {
            component_samples(
                component,
                frame.max_h,
                frame.max_v,
                frame.width,
                frame.height,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pixels = color::to_rgb(space, &planes);
    RgbImage::from_raw(frame.width, frame.height, pixels)
        .ok_or_else(|| JpegFault::Corrupt("colour conversion produced the wrong size".into()))
}

/// libjpeg's `default_decompress_parms` guess of the colour space.
fn color_space(frame: &Frame, saw_jfif: bool, adobe_transform: Option<u8>) -> ColorSpace {
    match frame.components.len() {
        1 => ColorSpace::Grayscale,
        3 => {
            let ids: Vec<u8> = frame.components.iter().map(|c| c.id).collect();
            match (saw_jfif, adobe_transform) {
                (true, _) => ColorSpace::YCbCr,
                (false, Some(0)) => ColorSpace::Rgb,
                (false, Some(_)) => ColorSpace::YCbCr,
                (false, None) if ids == [b'R', b'G', b'B'] => ColorSpace::Rgb,
                (false, None) => ColorSpace::YCbCr,
            }
        }
        _ => match adobe_transform {
            Some(0) | None => ColorSpace::Cmyk,
            Some(_) => ColorSpace::Ycck,
        },
    }
}

/// One component's samples at full image resolution: IDCT of its blocks, then upsampling.
fn component_samples(
    component: headers::Component,
    max_h: usize,
    max_v: usize,
    width: usize,
    height: usize,
) -> Result<Vec<u8>, JpegFault> {
    if !max_h.is_multiple_of(component.h) || !max_v.is_multiple_of(component.v) {
        return Err(JpegFault::Unsupported); // libjpeg refuses fractional ratios too
    }
    let stride = component.blocks_wide * 8;
    let mut samples = vec![0u8; stride * component.blocks_high * 8];
    let quant = component.quant.unwrap_or([0; 64]);
    for row in 0..component.blocks_high {
        for col in 0..component.blocks_wide {
            let start = (row * component.stride_blocks + col) * 64;
            let block = &component.coefficients[start..start + 64];
            idct::idct_block(
                block,
                &quant,
                &mut samples[row * 8 * stride + col * 8..],
                stride,
            );
        }
    }
    let plane = Plane {
        samples: &samples,
        stride,
        width: component.width,
        height: component.height,
    };
    Ok(upsample::upsample(
        &plane,
        max_h / component.h,
        max_v / component.v,
        width,
        height,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::test_support::{fixture, golden_images, read_safetensors};

    fn decode_fixture(name: &str) -> Result<Option<RgbImage>, ImageError> {
        decode_jpeg(&std::fs::read(fixture(name)).expect("fixture JPEG"))
    }

    #[test]
    fn every_variant_decodes_exactly_as_libjpeg_turbo() {
        let cases = read_safetensors("jpeg_cases.safetensors");
        assert_eq!(cases.len(), 8);
        for (name, shape, expected) in cases {
            let image = decode_fixture(&format!("jpeg_{name}.jpg"))
                .expect(&name)
                .expect("a supported variant");
            assert_eq!(
                (image.height(), image.width()),
                (shape[0], shape[1]),
                "{name}"
            );
            let differing = image
                .pixels()
                .iter()
                .zip(&expected)
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(differing, 0, "{name}: {differing} samples differ from PIL");
        }
    }

    #[test]
    fn golden_jpeg_decodes_with_the_libjpeg_path() {
        let golden = golden_images()
            .into_iter()
            .find(|g| g.file.ends_with(".jpg"))
            .expect("golden JPEG");
        let image = decode_jpeg(&golden.bytes())
            .expect("golden JPEG")
            .expect("supported");
        assert_eq!(
            (image.width(), image.height()),
            (golden.source_width, golden.source_height)
        );
    }

    #[test]
    fn lossless_and_twelve_bit_jpegs_are_left_to_the_fallback_decoder() {
        let lossless = [
            0xff, 0xd8, 0xff, 0xc3, 0x00, 0x0b, 0x08, 0x00, 0x01, 0x00, 0x01, 0x01, 0x01, 0x11,
            0x00,
        ];
        assert!(decode_jpeg(&lossless).expect("no error").is_none());
        let twelve_bit = [
            0xff, 0xd8, 0xff, 0xc1, 0x00, 0x0b, 0x0c, 0x00, 0x01, 0x00, 0x01, 0x01, 0x01, 0x11,
            0x00,
        ];
        assert!(decode_jpeg(&twelve_bit).expect("no error").is_none());
    }

    #[test]
    fn jpeg_without_its_end_marker_is_truncated_as_in_pil() {
        let bytes = std::fs::read(fixture("jpeg_baseline_420.jpg")).expect("fixture");
        for cut in [2, 10, bytes.len() / 2] {
            let result = decode_jpeg(&bytes[..bytes.len() - cut]);
            assert!(
                matches!(result, Err(ImageError::Truncated { .. })),
                "cut {cut}: {result:?}"
            );
        }
    }

    #[test]
    fn frame_larger_than_the_limits_is_refused() {
        // SOF0 claiming 65535 x 65535.
        let huge = [
            0xff, 0xd8, 0xff, 0xc0, 0x00, 0x0b, 0x08, 0xff, 0xff, 0xff, 0xff, 0x01, 0x01, 0x11,
            0x00, 0xff, 0xd9,
        ];
        let result = decode_jpeg(&huge);
        assert!(
            matches!(
                result,
                Err(ImageError::TooLarge {
                    width: 65535,
                    height: 65535
                })
            ),
            "{result:?}"
        );
    }
}
