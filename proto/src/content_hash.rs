//! 128-bit content hashes for cache keys (images, KV blocks): two SipHash streams with different
//! seeds over the same input, so that a collision, which would silently reuse the wrong features or
//! keys, is out of reach in practice.
//!
//! It lives with the contracts because one of its hashes is on the wire: `EncodedImage.content_hash`
//! is [`image_content_hash`], computed by the coordinator and checked by workers. std's SipHash is
//! stable within one Rust release, so every process of a cluster must run the same Fovea build
//! (which the cluster requires anyway).

use std::hash::{DefaultHasher, Hasher};

/// Builds one 128-bit hash.
#[derive(Clone)]
pub struct ContentHasher {
    halves: [DefaultHasher; 2],
}

impl Default for ContentHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl ContentHasher {
    /// A hasher over nothing yet.
    pub fn new() -> Self {
        let mut halves = [DefaultHasher::new(), DefaultHasher::new()];
        for (seed, hasher) in halves.iter_mut().enumerate() {
            hasher.write_u64(seed as u64);
        }
        ContentHasher { halves }
    }

    /// Adds `bytes`.
    pub fn write(&mut self, bytes: &[u8]) {
        self.halves
            .iter_mut()
            .for_each(|hasher| hasher.write(bytes));
    }

    /// Adds `value`'s little-endian bytes.
    pub fn write_u64(&mut self, value: u64) {
        self.write(&value.to_le_bytes());
    }

    /// Adds `value`'s little-endian bytes.
    pub fn write_u128(&mut self, value: u128) {
        self.write(&value.to_le_bytes());
    }

    /// The hash of everything added.
    pub fn finish(&self) -> u128 {
        let [high, low] = self.halves.each_ref().map(Hasher::finish);
        (u128::from(high) << 64) | u128::from(low)
    }
}

/// The content hash of an encoded image file, as `EncodedImage.content_hash` carries it: 16
/// bytes, little-endian.
pub fn image_content_hash(data: &[u8]) -> [u8; 16] {
    let mut hasher = ContentHasher::new();
    hasher.write(b"fovea image file");
    hasher.write(data);
    hasher.finish().to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_hashes_follow_the_bytes() {
        assert_eq!(image_content_hash(b"abc"), image_content_hash(b"abc"));
        assert_ne!(image_content_hash(b"abc"), image_content_hash(b"abd"));
        assert_ne!(image_content_hash(b""), [0; 16]);
    }
}
