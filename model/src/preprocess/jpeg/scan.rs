//! Entropy-decoding one scan into the frame's coefficient blocks: sequential (baseline and
//! extended Huffman) and progressive (spectral selection and successive approximation), with
//! restart intervals, following libjpeg's `jdhuff.c` and `jdphuff.c`.

use super::JpegFault;
use super::bit_reader::BitReader;
use super::headers::{Frame, NATURAL_ORDER, ScanHeader, Tables};
use super::huffman::HuffmanTable;

/// libjpeg's `HUFF_EXTEND`: the `size`-bit magnitude `bits` as a signed value.
fn extend(bits: u32, size: u32) -> i32 {
    let value = bits as i32;
    if size > 0 && value < 1 << (size - 1) {
        value - (1 << size) + 1
    } else {
        value
    }
}

/// Which of the progressive passes a scan is.
#[derive(Clone, Copy)]
enum Pass {
    Sequential,
    DcFirst,
    DcRefine,
    AcFirst,
    AcRefine,
}

/// Per-scan decoding state.
struct ScanState<'t> {
    pass: Pass,
    dc_tables: Vec<Option<&'t HuffmanTable>>,
    ac_tables: Vec<Option<&'t HuffmanTable>>,
    dc_predictions: Vec<i32>,
    end_of_band_run: u32,
    ss: usize,
    se: usize,
    al: u32,
}

/// Decodes the scan whose entropy data starts at `start`; returns where the next marker begins.
pub(super) fn decode_scan(
    data: &[u8],
    start: usize,
    frame: &mut Frame,
    scan: &ScanHeader,
    tables: &Tables,
    restart_interval: usize,
) -> Result<usize, JpegFault> {
    let pass = match (frame.progressive, scan.ss == 0, scan.ah == 0) {
        (false, ..) => Pass::Sequential,
        (true, true, true) => Pass::DcFirst,
        (true, true, false) => Pass::DcRefine,
        (true, false, true) => Pass::AcFirst,
        (true, false, false) => Pass::AcRefine,
    };
    let needs_dc = matches!(pass, Pass::Sequential | Pass::DcFirst);
    let needs_ac = matches!(pass, Pass::Sequential | Pass::AcFirst | Pass::AcRefine);
    let mut dc_tables = Vec::with_capacity(scan.components.len());
    let mut ac_tables = Vec::with_capacity(scan.components.len());
    for component in &scan.components {
        let dc = tables.dc[component.dc_table].as_ref();
        let ac = tables.ac[component.ac_table].as_ref();
        if (needs_dc && dc.is_none()) || (needs_ac && ac.is_none()) {
            return Err(JpegFault::Corrupt(
                "scan uses an undefined Huffman table".into(),
            ));
        }
        if needs_dc && !dc.is_some_and(HuffmanTable::is_valid_for_dc) {
            return Err(JpegFault::Corrupt("bad DC Huffman table".into()));
        }
        dc_tables.push(dc);
        ac_tables.push(ac);
    }
    let mut state = ScanState {
        pass,
        dc_tables,
        ac_tables,
        dc_predictions: vec![0; scan.components.len()],
        end_of_band_run: 0,
        ss: scan.ss,
        se: scan.se,
        al: scan.al,
    };

    let mut reader = BitReader::new(data, start);
    let mut restarts_to_go = restart_interval;
    let mut next_mcu = |reader: &mut BitReader<'_>, state: &mut ScanState<'_>| {
        if restart_interval > 0 {
            if restarts_to_go == 0 {
                reader.restart();
                state.dc_predictions.fill(0);
                state.end_of_band_run = 0;
                restarts_to_go = restart_interval;
            }
            restarts_to_go -= 1;
        }
    };

    if let [single] = scan.components.as_slice() {
        // Non-interleaved: one block per MCU, over the blocks holding real samples.
        let component = &frame.components[single.index];
        let (blocks_high, blocks_wide) = (component.blocks_high, component.blocks_wide);
        for row in 0..blocks_high {
            for col in 0..blocks_wide {
                next_mcu(&mut reader, &mut state);
                let block = frame.components[single.index].block_mut(row, col);
                decode_block(&mut reader, &mut state, 0, block)?;
            }
        }
    } else {
        for mcu_row in 0..frame.mcus_high {
            for mcu_col in 0..frame.mcus_wide {
                next_mcu(&mut reader, &mut state);
                for (position, scan_component) in scan.components.iter().enumerate() {
                    let component = &mut frame.components[scan_component.index];
                    let (h, v) = (component.h, component.v);
                    for y in 0..v {
                        for x in 0..h {
                            let block = component.block_mut(mcu_row * v + y, mcu_col * h + x);
                            decode_block(&mut reader, &mut state, position, block)?;
                        }
                    }
                }
            }
        }
    }
    Ok(reader.marker_position())
}

/// Decodes one block of the scan's `position`-th component.
fn decode_block(
    reader: &mut BitReader<'_>,
    state: &mut ScanState<'_>,
    position: usize,
    block: &mut [i16],
) -> Result<(), JpegFault> {
    match state.pass {
        Pass::Sequential => {
            decode_dc_first(reader, state, position, block, 0)?;
            decode_ac_sequential(reader, state.ac_tables[position], block)
        }
        Pass::DcFirst => decode_dc_first(reader, state, position, block, state.al),
        Pass::DcRefine => {
            if reader.bit()? {
                block[0] |= 1 << state.al;
            }
            Ok(())
        }
        Pass::AcFirst => decode_ac_first(reader, state, position, block),
        Pass::AcRefine => decode_ac_refine(reader, state, position, block),
    }
}

/// The table a validated scan guarantees to exist.
fn table(table: Option<&HuffmanTable>) -> Result<&HuffmanTable, JpegFault> {
    table.ok_or_else(|| JpegFault::Corrupt("scan uses an undefined Huffman table".into()))
}

/// A DC coefficient: the predictor plus a Huffman-coded difference, shifted left by `al`.
fn decode_dc_first(
    reader: &mut BitReader<'_>,
    state: &mut ScanState<'_>,
    position: usize,
    block: &mut [i16],
    al: u32,
) -> Result<(), JpegFault> {
    let size = u32::from(table(state.dc_tables[position])?.decode(reader)?);
    let difference = extend(reader.bits(size)?, size);
    let prediction = &mut state.dc_predictions[position];
    *prediction = prediction.wrapping_add(difference);
    block[0] = prediction.wrapping_shl(al) as i16;
    Ok(())
}

/// The 63 AC coefficients of a sequential scan.
fn decode_ac_sequential(
    reader: &mut BitReader<'_>,
    ac: Option<&HuffmanTable>,
    block: &mut [i16],
) -> Result<(), JpegFault> {
    let ac = table(ac)?;
    let mut k = 1;
    while k < 64 {
        let symbol = ac.decode(reader)?;
        let (run, size) = (usize::from(symbol >> 4), u32::from(symbol & 15));
        if size != 0 {
            k += run;
            block[NATURAL_ORDER[k]] = extend(reader.bits(size)?, size) as i16;
        } else if run == 15 {
            k += 15;
        } else {
            break;
        }
        k += 1;
    }
    Ok(())
}

/// Reads an end-of-band run length: `2^run` plus `run` more bits.
fn end_of_band_run(reader: &mut BitReader<'_>, run: u32) -> Result<u32, JpegFault> {
    Ok((1 << run) + reader.bits(run)?)
}

/// First pass over a spectral band of a progressive scan.
fn decode_ac_first(
    reader: &mut BitReader<'_>,
    state: &mut ScanState<'_>,
    position: usize,
    block: &mut [i16],
) -> Result<(), JpegFault> {
    if state.end_of_band_run > 0 {
        state.end_of_band_run -= 1;
        return Ok(());
    }
    let ac = table(state.ac_tables[position])?;
    let mut k = state.ss;
    while k <= state.se {
        let symbol = ac.decode(reader)?;
        let (run, size) = (usize::from(symbol >> 4), u32::from(symbol & 15));
        if size != 0 {
            k += run;
            let value = extend(reader.bits(size)?, size);
            block[NATURAL_ORDER[k]] = value.wrapping_shl(state.al) as i16;
        } else if run == 15 {
            k += 15;
        } else {
            state.end_of_band_run = end_of_band_run(reader, run as u32)? - 1;
            break;
        }
        k += 1;
    }
    Ok(())
}

/// Refinement pass over a spectral band: one more bit of every nonzero coefficient, and new
/// coefficients of magnitude `2^al`.
fn decode_ac_refine(
    reader: &mut BitReader<'_>,
    state: &mut ScanState<'_>,
    position: usize,
    block: &mut [i16],
) -> Result<(), JpegFault> {
    let plus = 1i16.wrapping_shl(state.al);
    let minus = (-1i16).wrapping_shl(state.al);
    let refine = |reader: &mut BitReader<'_>, coefficient: &mut i16| -> Result<(), JpegFault> {
        if reader.bit()? && *coefficient & plus == 0 {
            *coefficient = coefficient.wrapping_add(if *coefficient >= 0 { plus } else { minus });
        }
        Ok(())
    };
    let mut k = state.ss;
    if state.end_of_band_run == 0 {
        let ac = table(state.ac_tables[position])?;
        while k <= state.se {
            let symbol = ac.decode(reader)?;
            let mut run = i32::from(symbol >> 4);
            let size = symbol & 15;
            let mut new_value = 0i16;
            if size != 0 {
                // libjpeg warns when size is not 1 and carries on.
                new_value = if reader.bit()? { plus } else { minus };
            } else if run != 15 {
                state.end_of_band_run = end_of_band_run(reader, run as u32)?;
                break;
            }
            while k <= state.se {
                let coefficient = &mut block[NATURAL_ORDER[k]];
                if *coefficient != 0 {
                    refine(reader, coefficient)?;
                } else {
                    run -= 1;
                    if run < 0 {
                        break;
                    }
                }
                k += 1;
            }
            if new_value != 0 {
                block[NATURAL_ORDER[k]] = new_value;
            }
            k += 1;
        }
    }
    if state.end_of_band_run > 0 {
        while k <= state.se {
            let coefficient = &mut block[NATURAL_ORDER[k]];
            if *coefficient != 0 {
                refine(reader, coefficient)?;
            }
            k += 1;
        }
        state.end_of_band_run -= 1;
    }
    Ok(())
}
