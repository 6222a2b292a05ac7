//! 128-bit content hashes for cache keys (images, KV blocks): two SipHash streams with different
//! seeds over the same input, so that a collision, which would silently reuse the wrong features or
//! keys, is out of reach in practice.

use std::hash::{DefaultHasher, Hasher};

/// Builds one 128-bit hash.
pub struct ContentHasher {
    halves: [DefaultHasher; 2],
}

impl ContentHasher {
    pub fn new() -> Self {
        let mut halves = [DefaultHasher::new(), DefaultHasher::new()];
        for (seed, hasher) in halves.iter_mut().enumerate() {
            hasher.write_u64(seed as u64);
        }
        ContentHasher { halves }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.halves.iter_mut().for_each(|hasher| hasher.write(bytes));
    }

    pub fn write_u64(&mut self, value: u64) {
        self.write(&value.to_le_bytes());
    }

    pub fn write_u128(&mut self, value: u128) {
        self.write(&value.to_le_bytes());
    }

    pub fn finish(&self) -> u128 {
        let [high, low] = self.halves.each_ref().map(Hasher::finish);
        (u128::from(high) << 64) | u128::from(low)
    }
}
