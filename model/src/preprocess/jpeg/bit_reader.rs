//! Reading the bits of an entropy-coded JPEG segment, with libjpeg's handling of its end.
//!
//! `FF 00` stands for a data byte `FF`, runs of `FF` fill bytes are skipped, and any other `FF xx`
//! is a marker that ends the segment. Past a marker the reader supplies zero bits, as libjpeg
//! does (it warns and decodes zeros); running out of file without a marker is truncation.

use super::JpegFault;

/// Why the segment's data stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegmentEnd {
    /// More data may follow.
    Open,
    /// A marker starts at `position`.
    Marker,
    /// The file ended.
    EndOfFile,
}

/// A bit-level reader over the entropy-coded data starting at a byte offset.
pub(super) struct BitReader<'a> {
    data: &'a [u8],
    /// Next unread byte (the marker's `FF` once `end` is `Marker`).
    position: usize,
    /// Unconsumed bits, most significant first.
    buffer: u64,
    bits: u32,
    end: SegmentEnd,
}

impl<'a> BitReader<'a> {
    /// A reader starting at `position` in `data`.
    pub(super) fn new(data: &'a [u8], position: usize) -> Self {
        Self {
            data,
            position,
            buffer: 0,
            bits: 0,
            end: SegmentEnd::Open,
        }
    }

    /// Loads bytes until at least 57 bits are buffered or the segment ends.
    fn fill(&mut self) {
        while self.bits <= 56 && self.end == SegmentEnd::Open {
            let Some(&byte) = self.data.get(self.position) else {
                self.end = SegmentEnd::EndOfFile;
                break;
            };
            let mut value = byte;
            if byte == 0xff {
                let mut next = self.position + 1;
                while self.data.get(next) == Some(&0xff) {
                    next += 1;
                }
                match self.data.get(next) {
                    None => {
                        self.end = SegmentEnd::EndOfFile;
                        break;
                    }
                    Some(0) => self.position = next,
                    Some(_) => {
                        self.position = next - 1;
                        self.end = SegmentEnd::Marker;
                        break;
                    }
                }
                value = 0xff;
            }
            self.position += 1;
            self.buffer |= u64::from(value) << (56 - self.bits);
            self.bits += 8;
        }
    }

    /// The next 16 bits without consuming them, zero-padded past the end of the segment.
    pub(super) fn peek16(&mut self) -> u32 {
        if self.bits < 16 {
            self.fill();
        }
        (self.buffer >> 48) as u32
    }

    /// Consumes `count` (at most 32) bits; past a marker they are zeros, past the file's end an error.
    pub(super) fn consume(&mut self, count: u32) -> Result<(), JpegFault> {
        if count > self.bits {
            self.fill();
        }
        if count > self.bits {
            if self.end == SegmentEnd::EndOfFile {
                return Err(JpegFault::Truncated);
            }
            self.buffer = 0;
            self.bits = 0;
            return Ok(());
        }
        self.buffer = if count == 64 { 0 } else { self.buffer << count };
        self.bits -= count;
        Ok(())
    }

    /// Reads `count` (0 to 16) bits as an unsigned number.
    pub(super) fn bits(&mut self, count: u32) -> Result<u32, JpegFault> {
        if count == 0 {
            return Ok(0);
        }
        let value = self.peek16() >> (16 - count);
        self.consume(count)?;
        Ok(value)
    }

    /// Reads one bit.
    pub(super) fn bit(&mut self) -> Result<bool, JpegFault> {
        Ok(self.bits(1)? == 1)
    }

    /// Restart handling: drops the buffered bits and steps over the next marker if it is `RSTn`.
    pub(super) fn restart(&mut self) {
        self.buffer = 0;
        self.bits = 0;
        self.position = next_marker(self.data, self.position);
        if let Some(0xd0..=0xd7) = self.data.get(self.position + 1) {
            self.position += 2;
        }
        self.end = if self.position < self.data.len() {
            SegmentEnd::Open
        } else {
            SegmentEnd::EndOfFile
        };
    }

    /// Where the marker after this segment starts (skipping stray bytes, as libjpeg does).
    pub(super) fn marker_position(&self) -> usize {
        next_marker(self.data, self.position)
    }
}

/// The offset of the first marker (`FF` followed by neither `00` nor `FF`) at or after `from`,
/// or the file's length if there is none.
pub(super) fn next_marker(data: &[u8], from: usize) -> usize {
    let mut position = from;
    while position + 1 < data.len() {
        if data[position] == 0xff && !matches!(data[position + 1], 0x00 | 0xff) {
            return position;
        }
        position += 1;
    }
    data.len()
}
