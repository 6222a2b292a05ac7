//! Converting full-resolution JPEG components to RGB as libjpeg-turbo and PIL do.
//!
//! YCbCr uses libjpeg's 16-bit fixed-point tables (`jdcolor.c`); CMYK is Adobe-inverted, which PIL
//! undoes (`CMYK;I`) before its `cmyk2rgb`; YCCK is first turned into CMYK by libjpeg.

/// The JPEG's colour space, guessed from its markers as libjpeg does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ColorSpace {
    Grayscale,
    YCbCr,
    Rgb,
    Cmyk,
    Ycck,
}

const SCALE_BITS: u32 = 16;
const ONE_HALF: i32 = 1 << (SCALE_BITS - 1);

/// `FIX(x)`: `x` in 16-bit fixed point, rounded.
fn fix(x: f64) -> i32 {
    (x * f64::from(1u32 << SCALE_BITS) + 0.5) as i32
}

/// libjpeg's `build_ycc_rgb_table`, indexed by the chroma sample.
struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i32; 256],
    cb_g: [i32; 256],
}

impl YccTables {
    fn new() -> Self {
        let centered = |i: usize| i as i32 - 128;
        Self {
            cr_r: std::array::from_fn(|i| (fix(1.40200) * centered(i) + ONE_HALF) >> SCALE_BITS),
            cb_b: std::array::from_fn(|i| (fix(1.77200) * centered(i) + ONE_HALF) >> SCALE_BITS),
            cr_g: std::array::from_fn(|i| -fix(0.71414) * centered(i)),
            cb_g: std::array::from_fn(|i| -fix(0.34414) * centered(i) + ONE_HALF),
        }
    }

    /// `ycc_rgb_convert` for one pixel.
    fn rgb(&self, y: u8, cb: u8, cr: u8) -> [u8; 3] {
        let (y, cb, cr) = (i32::from(y), usize::from(cb), usize::from(cr));
        [
            clamp(y + self.cr_r[cr]),
            clamp(y + ((self.cb_g[cb] + self.cr_g[cr]) >> SCALE_BITS)),
            clamp(y + self.cb_b[cb]),
        ]
    }
}

fn clamp(x: i32) -> u8 {
    x.clamp(0, 255) as u8
}

/// PIL's `cmyk2rgb` applied to libjpeg's (Adobe-inverted) CMYK samples.
fn inverted_cmyk_to_rgb(c: u8, m: u8, y: u8, k: u8) -> [u8; 3] {
    let not_k = i32::from(k); // PIL inverts K, then takes 255 - K
    let channel = |inverted: u8| {
        let ink = 255 - i32::from(inverted);
        let product = ink * not_k + 128;
        clamp(not_k - (((product >> 8) + product) >> 8))
    };
    [channel(c), channel(m), channel(y)]
}

/// Interleaved RGB from full-resolution component planes (1, 3 or 4 of them, equal lengths).
pub(super) fn to_rgb(space: ColorSpace, planes: &[Vec<u8>]) -> Vec<u8> {
    let pixels = planes.first().map_or(0, Vec::len);
    let mut rgb = Vec::with_capacity(pixels * 3);
    match (space, planes) {
        (ColorSpace::Grayscale, [gray, ..]) => {
            for &v in gray {
                rgb.extend_from_slice(&[v, v, v]);
            }
        }
        (ColorSpace::Rgb, [r, g, b, ..]) => {
            for ((&r, &g), &b) in r.iter().zip(g).zip(b) {
                rgb.extend_from_slice(&[r, g, b]);
            }
        }
        (ColorSpace::YCbCr, [y, cb, cr, ..]) => {
            let tables = YccTables::new();
            for ((&y, &cb), &cr) in y.iter().zip(cb).zip(cr) {
                rgb.extend_from_slice(&tables.rgb(y, cb, cr));
            }
        }
        (ColorSpace::Cmyk, [c, m, y, k, ..]) => {
            for (((&c, &m), &y), &k) in c.iter().zip(m).zip(y).zip(k) {
                rgb.extend_from_slice(&inverted_cmyk_to_rgb(c, m, y, k));
            }
        }
        (ColorSpace::Ycck, [y, cb, cr, k, ..]) => {
            let tables = YccTables::new();
            for (((&y, &cb), &cr), &k) in y.iter().zip(cb).zip(cr).zip(k) {
                // `ycck_cmyk_convert`: CMY = 255 - RGB of the YCbCr part, K unchanged.
                let [r, g, b] = tables.rgb(y, cb, cr);
                rgb.extend_from_slice(&inverted_cmyk_to_rgb(255 - r, 255 - g, 255 - b, k));
            }
        }
        _ => {}
    }
    rgb
}
