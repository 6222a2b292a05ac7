//! How large an image becomes before it is cut into patches: `Siglip2ImageProcessorNoUpscale`'s rule.
//!
//! The budget for an image is its native patch count, `max((width / p) * (height / p), 1)` with
//! floor division, clamped into `[min_num_patches, max_num_patches]`. The size is then whatever
//! transformers' `get_image_size_for_max_num_patches` picks for that budget: a binary search over
//! one common scale factor (f64, as in Python) for the largest scale whose patch-aligned sides
//! (`max(p, ceil(side * scale / p) * p)`) stay within the budget. An image that already fits is
//! therefore only snapped to patch multiples (320x240 stays 320x240; 97x611 becomes 96x608), a
//! small one is enlarged towards `min_num_patches` (41x30 becomes 288x224, 252 patches) and a
//! large one shrinks to at most `max_num_patches` (1400x780 becomes 1280x720, 3600 patches).
//! Because the scale stops at 100, a 1x1 image becomes 112x112, not the full minimum.

use thiserror::Error;

/// Binary-search tolerance of `get_image_size_for_max_num_patches`.
const SCALE_EPS: f64 = 1e-5;
/// Upper end of the scale search.
const MAX_SCALE: f64 = 100.0;

/// The patch size and the range of patch counts an image may be resized to.
///
/// ```
/// use fovea_model::preprocess::PatchBudget;
/// let budget = PatchBudget::new(16, 256, 3600).expect("valid budget");
/// assert_eq!(budget.target_size(780, 1400), (720, 1280));
/// assert_eq!(budget.target_size(240, 320), (240, 320));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchBudget {
    patch_size: usize,
    min_num_patches: usize,
    max_num_patches: usize,
}

/// A patch budget that cannot be satisfied.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error(
    "invalid patch budget (patch_size {patch_size}, min_num_patches {min_num_patches}, \
     max_num_patches {max_num_patches}): need patch_size >= 1, max_num_patches >= 1 and \
     min_num_patches <= max_num_patches"
)]
pub struct InvalidPatchBudget {
    /// The rejected patch size.
    pub patch_size: usize,
    /// The rejected minimum.
    pub min_num_patches: usize,
    /// The rejected maximum.
    pub max_num_patches: usize,
}

impl PatchBudget {
    /// A budget of square `patch_size` patches, between `min_num_patches` and `max_num_patches` of them.
    pub fn new(
        patch_size: usize,
        min_num_patches: usize,
        max_num_patches: usize,
    ) -> Result<Self, InvalidPatchBudget> {
        if patch_size == 0 || max_num_patches == 0 || min_num_patches > max_num_patches {
            return Err(InvalidPatchBudget {
                patch_size,
                min_num_patches,
                max_num_patches,
            });
        }
        Ok(Self {
            patch_size,
            min_num_patches,
            max_num_patches,
        })
    }

    /// Side of a square patch, in pixels.
    pub fn patch_size(&self) -> usize {
        self.patch_size
    }

    /// The `(height, width)` an image of `height` x `width` pixels is resized to: multiples of the
    /// patch size, at least one patch each, at most `max_num_patches` patches in all.
    pub fn target_size(&self, height: usize, width: usize) -> (usize, usize) {
        let p = self.patch_size;
        let native = ((width / p).saturating_mul(height / p)).max(1);
        let budget = native.clamp(self.min_num_patches, self.max_num_patches);
        self.size_for_max_patches(height, width, budget)
    }

    /// transformers' `get_image_size_for_max_num_patches`.
    fn size_for_max_patches(&self, height: usize, width: usize, budget: usize) -> (usize, usize) {
        let p = self.patch_size as f64;
        let scaled_side =
            |side: usize, scale: f64| -> f64 { ((side as f64 * scale / p).ceil() * p).max(p) };
        let (mut scale_min, mut scale_max) = (SCALE_EPS / 10.0, MAX_SCALE);
        while scale_max - scale_min >= SCALE_EPS {
            let scale = (scale_min + scale_max) / 2.0;
            let patches = (scaled_side(height, scale) / p) * (scaled_side(width, scale) / p);
            if patches <= budget as f64 {
                scale_min = scale;
            } else {
                scale_max = scale;
            }
        }
        // f64 to usize saturates, so absurd inputs cannot wrap around.
        (
            scaled_side(height, scale_min) as usize,
            scaled_side(width, scale_min) as usize,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::test_support::{golden_budget, golden_images};

    #[test]
    fn target_size_matches_every_golden_image() {
        let budget = golden_budget();
        for golden in golden_images() {
            let target = budget.target_size(golden.source_height, golden.source_width);
            assert_eq!(target, golden.resized_hw, "{}", golden.file);
            assert_eq!(
                (
                    target.0 / budget.patch_size(),
                    target.1 / budget.patch_size()
                ),
                golden.grid,
                "{}",
                golden.file
            );
        }
    }

    #[test]
    fn in_budget_image_is_only_snapped_to_patch_multiples() {
        let budget = golden_budget();
        assert_eq!(budget.target_size(240, 320), (240, 320));
        assert_eq!(budget.target_size(611, 97), (608, 96));
    }

    #[test]
    fn one_pixel_image_grows_until_the_scale_cap() {
        // Scale stops at 100: ceil(100 / 16) = 7 patches per side, below the 256 minimum.
        assert_eq!(golden_budget().target_size(1, 1), (112, 112));
    }

    #[test]
    fn extreme_aspect_ratio_keeps_one_patch_row_within_budget() {
        // 10000 wide x 10 tall: native count 0 -> 1 -> raised to the 256 minimum, in one row.
        assert_eq!(golden_budget().target_size(10, 10_000), (16, 4096));
    }

    #[test]
    fn target_sizes_match_the_python_reference() {
        // Expected values from the processor's Python code (clamp + get_image_size_for_max_num_patches)
        // run on the same (height, width) pairs with patch 16, min 256, max 3600.
        let budget = golden_budget();
        let cases = [
            ((16_384, 1), (4096, 16)),
            ((15, 17), (240, 272)),
            ((4000, 3000), (1104, 832)),
            ((16_384, 16_384), (960, 960)),
            ((9, 16_384), (16, 4096)),
        ];
        for ((h, w), expected) in cases {
            assert_eq!(budget.target_size(h, w), expected, "{h}x{w}");
        }
    }

    #[test]
    fn unsatisfiable_budgets_are_rejected() {
        assert!(PatchBudget::new(0, 1, 10).is_err());
        assert!(PatchBudget::new(16, 1, 0).is_err());
        assert!(PatchBudget::new(16, 11, 10).is_err());
        assert!(PatchBudget::new(16, 0, 1).is_ok());
    }
}
