//! The content identity of a full KV block, for prefix caching: a hash of everything the block's
//! keys and values depend on, which is every token up to the block's end.
//!
//! Hashes are chained (each block's hash covers its parent's), so equal hashes mean equal
//! prefixes. Image positions hold the same placeholder id whatever the image, so they are hashed
//! as the image's content key and the patch index instead: the same prompt with another image
//! shares only the blocks before the image.

use fovea_model::ImagePlacement;

use crate::image_cache::ImageKey;
use fovea_proto::content_hash::ContentHasher;

/// The hash of one full block and all blocks before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockHash(u128);

/// Appends to `hashes` (the hashes of the first `hashes.len()` blocks) the hashes of every further
/// full block of `tokens`, whose image positions are `images` (in prompt order).
pub fn extend_block_hashes(
    hashes: &mut Vec<BlockHash>,
    tokens: &[u32],
    images: &[(ImagePlacement, ImageKey)],
    block_size: usize,
) {
    while (hashes.len() + 1) * block_size <= tokens.len() {
        let start = hashes.len() * block_size;
        let end = start + block_size;
        let mut hasher = ContentHasher::new();
        hasher.write_u128(hashes.last().map_or(0, |parent| parent.0));
        let mut cursor = start;
        for (placement, key) in images {
            let overlap = placement.start.max(start)..(placement.start + placement.len).min(end);
            if overlap.is_empty() {
                continue;
            }
            hash_tokens(&mut hasher, &tokens[cursor..overlap.start]);
            hasher.write_u64(1);
            hasher.write_u128(key.value());
            hasher.write_u64((overlap.start - placement.start) as u64);
            hasher.write_u64(overlap.len() as u64);
            cursor = overlap.end;
        }
        hash_tokens(&mut hasher, &tokens[cursor..end]);
        hashes.push(BlockHash(hasher.finish()));
    }
}

/// A run of text tokens.
fn hash_tokens(hasher: &mut ContentHasher, tokens: &[u32]) {
    if tokens.is_empty() {
        return;
    }
    hasher.write_u64(0);
    hasher.write_u64(tokens.len() as u64);
    let bytes: Vec<u8> = tokens.iter().flat_map(|id| id.to_le_bytes()).collect();
    hasher.write(&bytes);
}

#[cfg(test)]
mod tests {
    use fovea_model::preprocess::PreparedImage;

    use super::*;

    fn hashes(tokens: &[u32], images: &[(ImagePlacement, ImageKey)]) -> Vec<BlockHash> {
        let mut hashes = Vec::new();
        extend_block_hashes(&mut hashes, tokens, images, 4);
        hashes
    }

    fn key(value: f32) -> ImageKey {
        ImageKey::of(&PreparedImage {
            grid_h: 1,
            grid_w: 3,
            patches: vec![value; 3],
        })
    }

    #[test]
    fn only_full_blocks_are_hashed_and_extending_matches_hashing_at_once() {
        let tokens: Vec<u32> = (0..11).collect();
        let all = hashes(&tokens, &[]);
        assert_eq!(all.len(), 2);
        let mut grown = hashes(&tokens[..5], &[]);
        extend_block_hashes(&mut grown, &tokens, &[], 4);
        assert_eq!(grown, all);
    }

    #[test]
    fn a_block_hash_covers_everything_before_it() {
        let a: Vec<u32> = (0..8).collect();
        let mut b = a.clone();
        b[0] = 99;
        let (a, b) = (hashes(&a, &[]), hashes(&b, &[]));
        assert_ne!(a[0], b[0]);
        assert_ne!(a[1], b[1], "same tokens in block 1, different prefix");
    }

    #[test]
    fn images_are_told_apart_by_content_not_by_placeholder_ids() {
        let tokens = vec![5, 5, 5, 5, 7, 7, 7, 5, 5, 5, 5, 5];
        let image = |key| {
            let placement = ImagePlacement { start: 4, len: 3 };
            [(placement, key)]
        };
        let with_a = hashes(&tokens, &image(key(0.5)));
        let with_b = hashes(&tokens, &image(key(0.25)));
        assert_eq!(with_a, hashes(&tokens, &image(key(0.5))));
        assert_eq!(
            with_a[0],
            hashes(&tokens, &[])[0],
            "block 0 ends before the image"
        );
        assert_ne!(with_a[1], with_b[1]);
        assert_ne!(with_a[2], with_b[2]);
    }
}
