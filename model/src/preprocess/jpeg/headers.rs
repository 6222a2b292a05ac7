//! Parsing the JPEG marker segments that matter for decoding: SOF, DQT, DHT, DRI, SOS, APP0, APP14.

use super::JpegFault;
use super::huffman::HuffmanTable;

/// libjpeg's zigzag-to-natural order, with 16 extra entries pointing at 63 so that corrupt run
/// lengths land on the last coefficient instead of outside the block.
pub(super) const NATURAL_ORDER: [usize; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63,
];

/// One component of the frame and its decoded coefficients.
pub(super) struct Component {
    pub id: u8,
    /// Sampling factors.
    pub h: usize,
    pub v: usize,
    /// Which quantization table (0..=3) the frame assigns.
    pub quant_slot: usize,
    /// The quantization table as it was when the component's first scan began (libjpeg latches
    /// it then); all zeros if no scan ever covered the component.
    pub quant: Option<[i16; 64]>,
    /// Samples of the component (`downsampled_width` x `downsampled_height` in libjpeg).
    pub width: usize,
    pub height: usize,
    /// Blocks holding real samples.
    pub blocks_wide: usize,
    pub blocks_high: usize,
    /// Blocks stored per row (whole MCUs, so interleaved scans' padding blocks fit).
    pub stride_blocks: usize,
    /// 64 natural-order coefficients per stored block.
    pub coefficients: Vec<i16>,
}

impl Component {
    /// The 64 coefficients of block (`row`, `col`).
    pub(super) fn block_mut(&mut self, row: usize, col: usize) -> &mut [i16] {
        let start = (row * self.stride_blocks + col) * 64;
        &mut self.coefficients[start..start + 64]
    }
}

/// The frame header (SOF) and the storage it implies.
pub(super) struct Frame {
    pub progressive: bool,
    pub width: usize,
    pub height: usize,
    pub max_h: usize,
    pub max_v: usize,
    pub mcus_wide: usize,
    pub mcus_high: usize,
    pub components: Vec<Component>,
}

/// One component of a scan and its entropy tables.
pub(super) struct ScanComponent {
    /// Index into the frame's components.
    pub index: usize,
    pub dc_table: usize,
    pub ac_table: usize,
}

/// A scan header (SOS).
pub(super) struct ScanHeader {
    pub components: Vec<ScanComponent>,
    /// Spectral selection start and end, successive approximation high and low bits.
    pub ss: usize,
    pub se: usize,
    pub ah: u32,
    pub al: u32,
}

/// Tables defined so far: 4 quantization, 4 DC and 4 AC Huffman slots.
#[derive(Default)]
pub(super) struct Tables {
    pub quant: [Option<[i16; 64]>; 4],
    pub dc: [Option<HuffmanTable>; 4],
    pub ac: [Option<HuffmanTable>; 4],
}

fn corrupt(what: &str) -> JpegFault {
    JpegFault::Corrupt(what.to_owned())
}

fn ceil_div(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// SOF0/1/2 payload. Dimensions are checked by the caller before anything is allocated.
pub(super) fn parse_frame(payload: &[u8], progressive: bool) -> Result<Frame, JpegFault> {
    let [precision, h1, h0, w1, w0, count, rest @ ..] = payload else {
        return Err(corrupt("short frame header"));
    };
    if *precision != 8 {
        return Err(JpegFault::Unsupported);
    }
    let height = usize::from(u16::from_be_bytes([*h1, *h0]));
    let width = usize::from(u16::from_be_bytes([*w1, *w0]));
    let count = usize::from(*count);
    if !matches!(count, 1 | 3 | 4) {
        return Err(JpegFault::Unsupported);
    }
    if width == 0 || height == 0 {
        return Err(corrupt("zero image size in the frame header"));
    }
    if rest.len() < count * 3 {
        return Err(corrupt("short frame header"));
    }
    let mut specs: Vec<(u8, usize, usize, usize)> = Vec::with_capacity(count);
    for spec in rest[..count * 3].chunks_exact(3) {
        let (h, v) = (usize::from(spec[1] >> 4), usize::from(spec[1] & 15));
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
            return Err(corrupt("bad sampling factors"));
        }
        if spec[2] > 3 {
            return Err(corrupt("bad quantization table index"));
        }
        if specs.iter().any(|&(id, ..)| id == spec[0]) {
            return Err(corrupt("duplicate component id"));
        }
        specs.push((spec[0], h, v, usize::from(spec[2])));
    }
    let max_h = specs.iter().map(|s| s.1).max().unwrap_or(1);
    let max_v = specs.iter().map(|s| s.2).max().unwrap_or(1);
    let mcus_wide = ceil_div(width, 8 * max_h);
    let mcus_high = ceil_div(height, 8 * max_v);
    let components = specs
        .into_iter()
        .map(|(id, h, v, quant_slot)| {
            let stride_blocks = mcus_wide * h;
            Component {
                id,
                h,
                v,
                quant_slot,
                quant: None,
                width: ceil_div(width * h, max_h),
                height: ceil_div(height * v, max_v),
                blocks_wide: ceil_div(width * h, max_h * 8),
                blocks_high: ceil_div(height * v, max_v * 8),
                stride_blocks,
                coefficients: vec![0; stride_blocks * mcus_high * v * 64],
            }
        })
        .collect();
    Ok(Frame {
        progressive,
        width,
        height,
        max_h,
        max_v,
        mcus_wide,
        mcus_high,
        components,
    })
}

/// Reads the frame dimensions `(width, height)` of a SOF payload without building the frame.
pub(super) fn frame_size(payload: &[u8]) -> Option<(u32, u32)> {
    let [_, h1, h0, w1, w0, ..] = payload else {
        return None;
    };
    Some((
        u32::from(u16::from_be_bytes([*w1, *w0])),
        u32::from(u16::from_be_bytes([*h1, *h0])),
    ))
}

/// DQT payload: one or more tables, stored in natural order.
pub(super) fn parse_quant_tables(mut payload: &[u8], tables: &mut Tables) -> Result<(), JpegFault> {
    while let [info, rest @ ..] = payload {
        let (sixteen_bit, slot) = (info >> 4, usize::from(info & 15));
        if slot > 3 || sixteen_bit > 1 {
            return Err(corrupt("bad quantization table"));
        }
        let size = if sixteen_bit == 1 { 128 } else { 64 };
        if rest.len() < size {
            return Err(corrupt("short quantization table"));
        }
        let mut table = [0i16; 64];
        for (zigzag, &natural) in NATURAL_ORDER[..64].iter().enumerate() {
            let value = if sixteen_bit == 1 {
                u16::from_be_bytes([rest[2 * zigzag], rest[2 * zigzag + 1]])
            } else {
                u16::from(rest[zigzag])
            };
            // libjpeg's multiplier table for this IDCT holds 16-bit signed values.
            table[natural] = value as i16;
        }
        tables.quant[slot] = Some(table);
        payload = &rest[size..];
    }
    Ok(())
}

/// DHT payload: one or more tables.
pub(super) fn parse_huffman_tables(
    mut payload: &[u8],
    tables: &mut Tables,
) -> Result<(), JpegFault> {
    while let [info, rest @ ..] = payload {
        let (class, slot) = (info >> 4, usize::from(info & 15));
        if class > 1 || slot > 3 || rest.len() < 16 {
            return Err(corrupt("bad Huffman table"));
        }
        let counts: [u8; 16] = std::array::from_fn(|i| rest[i]);
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        let symbols = rest
            .get(16..16 + total)
            .ok_or_else(|| corrupt("short Huffman table"))?;
        let table = HuffmanTable::new(&counts, symbols)?;
        if class == 0 {
            tables.dc[slot] = Some(table);
        } else {
            tables.ac[slot] = Some(table);
        }
        payload = &rest[16 + total..];
    }
    Ok(())
}

/// DRI payload: the restart interval in MCUs.
pub(super) fn parse_restart_interval(payload: &[u8]) -> Result<usize, JpegFault> {
    match payload {
        [high, low, ..] => Ok(usize::from(u16::from_be_bytes([*high, *low]))),
        _ => Err(corrupt("short restart interval")),
    }
}

/// SOS payload, validated against the frame as libjpeg does.
pub(super) fn parse_scan(payload: &[u8], frame: &Frame) -> Result<ScanHeader, JpegFault> {
    let [count, rest @ ..] = payload else {
        return Err(corrupt("short scan header"));
    };
    let count = usize::from(*count);
    if count == 0 || count > 4 || rest.len() < count * 2 + 3 {
        return Err(corrupt("bad scan header"));
    }
    let mut components: Vec<ScanComponent> = Vec::with_capacity(count);
    for spec in rest[..count * 2].chunks_exact(2) {
        let index = frame
            .components
            .iter()
            .position(|c| c.id == spec[0])
            .ok_or_else(|| corrupt("scan names a component the frame does not have"))?;
        if components.iter().any(|c| c.index == index) {
            return Err(corrupt("scan names a component twice"));
        }
        let (dc_table, ac_table) = (usize::from(spec[1] >> 4), usize::from(spec[1] & 15));
        if dc_table > 3 || ac_table > 3 {
            return Err(corrupt("bad Huffman table index"));
        }
        components.push(ScanComponent {
            index,
            dc_table,
            ac_table,
        });
    }
    let tail = &rest[count * 2..];
    let (ss, se, ah, al) = (
        usize::from(tail[0]),
        usize::from(tail[1]),
        u32::from(tail[2] >> 4),
        u32::from(tail[2] & 15),
    );
    let blocks_per_mcu: usize = components
        .iter()
        .map(|c| frame.components[c.index].h * frame.components[c.index].v)
        .sum();
    if count > 1 && blocks_per_mcu > 10 {
        return Err(corrupt("too many blocks per MCU"));
    }
    if frame.progressive {
        let bad = se > 63
            || ss > se
            || al > 13
            || (ah != 0 && ah != al + 1)
            || (ss == 0 && se != 0)
            || (ss > 0 && count != 1);
        if bad {
            return Err(corrupt("bad progression parameters"));
        }
    }
    Ok(ScanHeader {
        components,
        ss,
        se,
        ah,
        al,
    })
}

/// Whether an APP0 payload is a JFIF header.
pub(super) fn is_jfif(payload: &[u8]) -> bool {
    payload.len() >= 14 && payload.starts_with(b"JFIF\0")
}

/// The colour transform of an APP14 Adobe payload, if it is one.
pub(super) fn adobe_transform(payload: &[u8]) -> Option<u8> {
    (payload.len() >= 12 && payload.starts_with(b"Adobe")).then(|| payload[11])
}
