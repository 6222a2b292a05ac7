//! Huffman tables of a JPEG file and decoding one symbol, as libjpeg's `jdhuff.c` does.

use super::JpegFault;
use super::bit_reader::BitReader;

/// Codes up to this long are decoded with one table lookup.
const LOOKUP_BITS: u32 = 9;

/// A decoding table built from a DHT segment's code-length counts and symbols.
#[derive(Debug, Clone)]
pub(super) struct HuffmanTable {
    /// `(length << 8) | symbol` for every `LOOKUP_BITS`-bit prefix that starts a short code; 0 if none.
    lookup: Vec<u16>,
    /// Largest code of each length (index 1..=16), -1 if there is none.
    max_code: [i32; 17],
    /// Offset from a code of each length to its symbol's index.
    value_offset: [i32; 17],
    /// Symbols in code order, padded with zeros to 256.
    symbols: Vec<u8>,
    /// Number of real symbols.
    symbol_count: usize,
}

impl HuffmanTable {
    /// Builds the table from the 16 code-length counts and the symbols (libjpeg's
    /// `jpeg_make_d_derived_tbl`); over-full or over-long code sets are corrupt.
    pub(super) fn new(counts: &[u8; 16], symbols: &[u8]) -> Result<Self, JpegFault> {
        let symbol_count: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if symbol_count > 256 || symbol_count != symbols.len() {
            return Err(JpegFault::Corrupt("bad Huffman table".into()));
        }
        let mut max_code = [-1i32; 17];
        let mut value_offset = [0i32; 17];
        let mut lookup = vec![0u16; 1 << LOOKUP_BITS];
        let mut code: i32 = 0;
        let mut index: usize = 0;
        for length in 1..=16u32 {
            let count = usize::from(counts[length as usize - 1]);
            if count > 0 {
                value_offset[length as usize] = index as i32 - code;
                for _ in 0..count {
                    if length <= LOOKUP_BITS {
                        let first = (code as usize) << (LOOKUP_BITS - length);
                        let entry = ((length as u16) << 8) | u16::from(symbols[index]);
                        lookup[first..first + (1 << (LOOKUP_BITS - length))].fill(entry);
                    }
                    code += 1;
                    index += 1;
                }
                max_code[length as usize] = code - 1;
            }
            // No code may be all ones, so the next code must still fit in `length` bits.
            if code >= 1 << length {
                return Err(JpegFault::Corrupt("bad Huffman table".into()));
            }
            code <<= 1;
        }
        let mut padded = symbols.to_vec();
        padded.resize(256, 0);
        Ok(Self {
            lookup,
            max_code,
            value_offset,
            symbols: padded,
            symbol_count,
        })
    }

    /// Whether every symbol is a valid DC magnitude category (libjpeg refuses others in DC tables).
    pub(super) fn is_valid_for_dc(&self) -> bool {
        self.symbols[..self.symbol_count].iter().all(|&s| s <= 15)
    }

    /// Decodes one symbol. An invalid code consumes 17 bits and yields 0, as in libjpeg.
    pub(super) fn decode(&self, reader: &mut BitReader<'_>) -> Result<u8, JpegFault> {
        let peek = reader.peek16();
        let entry = self.lookup[(peek >> (16 - LOOKUP_BITS)) as usize];
        if entry != 0 {
            reader.consume(u32::from(entry >> 8))?;
            return Ok(entry as u8);
        }
        for length in LOOKUP_BITS + 1..=16 {
            let code = (peek >> (16 - length)) as i32;
            if code <= self.max_code[length as usize] {
                reader.consume(length)?;
                // Canonical codes make the index fall inside the symbols; `get` keeps that unchecked
                // assumption from ever panicking.
                let index = usize::try_from(self.value_offset[length as usize] + code)
                    .unwrap_or(usize::MAX);
                return Ok(self.symbols.get(index).copied().unwrap_or(0));
            }
        }
        reader.consume(16)?;
        reader.consume(1)?;
        Ok(0)
    }
}
