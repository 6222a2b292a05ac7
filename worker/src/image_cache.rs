//! Decoder-space features of recently seen images, keyed by the image's content, so that an image
//! sent again (the same screenshot in every turn of a conversation) is not encoded again.
//!
//! The cache is bounded in bytes and evicts the least recently used entry. Features are candle
//! tensors, which share their storage: a sequence still holding an evicted image's features keeps
//! them alive, the cache just stops counting them.

use std::collections::HashMap;

use candle_core::Tensor;
use fovea_model::preprocess::PreparedImage;

use fovea_proto::content_hash::ContentHasher;

/// The content hash of a prepared image: its grid and every patch value (128 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageKey(u128);

impl ImageKey {
    /// Hashes `image`'s grid and patch values.
    pub fn of(image: &PreparedImage) -> Self {
        let mut hasher = ContentHasher::new();
        hasher.write_u64(image.grid_h as u64);
        hasher.write_u64(image.grid_w as u64);
        let mut bytes = Vec::with_capacity(4096);
        for chunk in image.patches.chunks(1024) {
            bytes.clear();
            bytes.extend(chunk.iter().flat_map(|value| value.to_bits().to_le_bytes()));
            hasher.write(&bytes);
        }
        ImageKey(hasher.finish())
    }

    /// The key of an image known by its file's content hash (`EncodedImage.content_hash`, see
    /// [`fovea_proto::image_content_hash`]): images whose features come from a vision worker.
    pub fn of_file(content_hash: [u8; 16]) -> Self {
        let mut hasher = ContentHasher::new();
        hasher.write(b"image file");
        hasher.write(&content_hash);
        ImageKey(hasher.finish())
    }

    /// The hash's value.
    pub fn value(self) -> u128 {
        self.0
    }
}

struct Entry {
    features: Tensor,
    bytes: usize,
    last_used: u64,
}

/// Image features by [`ImageKey`], at most `capacity_bytes` of them.
pub struct ImageFeatureCache {
    capacity_bytes: usize,
    used_bytes: usize,
    entries: HashMap<ImageKey, Entry>,
    /// Ticks once per lookup; entries remember the tick of their last use.
    clock: u64,
    hits: u64,
    encoded: u64,
}

impl ImageFeatureCache {
    /// An empty cache holding at most `capacity_bytes` of features (0 disables caching).
    pub fn new(capacity_bytes: usize) -> Self {
        ImageFeatureCache {
            capacity_bytes,
            used_bytes: 0,
            entries: HashMap::new(),
            clock: 0,
            hits: 0,
            encoded: 0,
        }
    }

    /// The cached features of `key`, counting a hit; `None` on a miss.
    pub fn get(&mut self, key: ImageKey) -> Option<Tensor> {
        self.clock += 1;
        let entry = self.entries.get_mut(&key)?;
        entry.last_used = self.clock;
        self.hits += 1;
        Some(entry.features.clone())
    }

    /// Whether the cache holds `key`'s features (not counted as a lookup).
    pub fn contains(&self, key: ImageKey) -> bool {
        self.entries.contains_key(&key)
    }

    /// Keeps `features`, just encoded for `key`, evicting the least recently used entries to make
    /// room (features larger than the whole cache are counted but not kept).
    pub fn insert(&mut self, key: ImageKey, features: Tensor) {
        self.clock += 1;
        self.encoded += 1;
        let bytes = features.elem_count() * features.dtype().size_in_bytes();
        if bytes > self.capacity_bytes {
            return;
        }
        if let Some(old) = self.entries.remove(&key) {
            self.used_bytes -= old.bytes;
        }
        while self.used_bytes + bytes > self.capacity_bytes {
            self.evict_least_recently_used();
        }
        self.used_bytes += bytes;
        let entry = Entry {
            features,
            bytes,
            last_used: self.clock,
        };
        self.entries.insert(key, entry);
    }

    fn evict_least_recently_used(&mut self) {
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, entry)| entry.last_used)
            .map(|(key, _)| *key);
        if let Some(entry) = oldest.and_then(|key| self.entries.remove(&key)) {
            self.used_bytes -= entry.bytes;
        }
    }

    /// Bytes of features held.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    /// Lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Images encoded (lookups the cache could not answer).
    pub fn encoded(&self) -> u64 {
        self.encoded
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn image(value: f32) -> PreparedImage {
        PreparedImage {
            grid_h: 1,
            grid_w: 2,
            patches: vec![value; 6],
        }
    }

    /// Features of 4 f32 values (16 bytes).
    fn features(value: f32) -> Tensor {
        Tensor::new(&[value; 4], &Device::Cpu).unwrap()
    }

    #[test]
    fn keys_follow_content() {
        assert_eq!(ImageKey::of(&image(0.5)), ImageKey::of(&image(0.5)));
        assert_ne!(ImageKey::of(&image(0.5)), ImageKey::of(&image(0.25)));
        let transposed = PreparedImage {
            grid_h: 2,
            grid_w: 1,
            ..image(0.5)
        };
        assert_ne!(ImageKey::of(&image(0.5)), ImageKey::of(&transposed));
    }

    #[test]
    fn a_repeated_image_is_found_and_the_least_recently_used_goes_first() {
        let mut cache = ImageFeatureCache::new(32);
        let [a, b, c] = [1.0, 2.0, 3.0].map(|v| ImageKey::of(&image(v)));
        cache.insert(a, features(1.0));
        cache.insert(b, features(2.0));
        let again = cache.get(a).expect("a is cached");
        assert_eq!(again.to_vec1::<f32>().unwrap(), vec![1.0; 4]);
        assert_eq!(
            (cache.hits(), cache.encoded(), cache.used_bytes()),
            (1, 2, 32)
        );
        // c evicts b, the least recently used.
        cache.insert(c, features(3.0));
        assert_eq!(cache.used_bytes(), 32);
        assert!(cache.get(a).is_some(), "a is still cached");
        assert!(!cache.contains(b), "b was evicted");
        cache.insert(b, features(2.0));
        assert_eq!(cache.encoded(), 4);
    }

    #[test]
    fn features_larger_than_the_cache_are_counted_but_not_kept() {
        let mut cache = ImageFeatureCache::new(8);
        let key = ImageKey::of(&image(1.0));
        cache.insert(key, features(1.0));
        cache.insert(key, features(1.0));
        assert_eq!((cache.encoded(), cache.used_bytes()), (2, 0));
        assert!(cache.get(key).is_none());
    }
}
