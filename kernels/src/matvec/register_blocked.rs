//! The AVX-512 kernel for decoding batches: micro-tiles of 4 output columns × up to 6 rows of
//! `X`, whose 24 accumulators stay in registers while the tile's 4 weight rows stream past.
//!
//! A band walks its columns 4 at a time; for each group of 4 weight rows it runs one tile per 6
//! rows of `X`. The first tile pulls the weight rows from memory, later tiles find them in L1/L2,
//! so every weight leaves memory once per call however many rows there are, and each loaded
//! weight vector feeds 6 multiply-adds (4 weight + 6 input loads per 24 of them, where a dot
//! product per output needs 2 loads per multiply-add). `X` (64 rows of 768 f32 are 192 KiB) is
//! read from L2 once per tile.
//!
//! Each accumulator sums one (row, column) pair over 16 lanes of `k`, in f32; the 4 columns of a
//! row are reduced together at the end of the tile.

use std::arch::x86_64::*;

use super::column_bands::ColumnBand;

/// Output columns per micro-tile (weight rows streamed side by side).
pub(super) const TILE_COLUMNS: usize = 4;

/// Rows of `X` per micro-tile: 4 × 6 accumulators, 4 weight vectors and 1 input vector fit the
/// 32 vector registers.
const TILE_ROWS: usize = 6;

/// Fills `band` with `x · wᵀ` for f32 weights.
///
/// # Panics
/// If `x` is shorter than `[rows, k]` or `w` than the band's weight rows.
#[target_feature(enable = "avx512f")]
pub(super) fn fill_band_f32(x: &[f32], w: &[f32], rows: usize, k: usize, band: &mut ColumnBand<'_>) {
    fill_band::<F32Lanes>(x, w, rows, k, band);
}

/// Fills `band` with `x · wᵀ` for bf16 `x` and weights (bit patterns), accumulating in f32.
///
/// # Panics
/// If `x` is shorter than `[rows, k]` or `w` than the band's weight rows.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) fn fill_band_bf16(x: &[u16], w: &[u16], rows: usize, k: usize, band: &mut ColumnBand<'_>) {
    fill_band::<Bf16Lanes>(x, w, rows, k, band);
}

/// One element type the kernel multiplies: how many values a 512-bit vector holds, how to load
/// them, and how a vector of weights times a vector of inputs adds into 16 f32 lanes.
///
/// The methods are `#[inline(always)]` and only called from the `#[target_feature]` entry points
/// above, so the intrinsics compile inline with the features those enable.
trait Lanes {
    type Value: Copy;
    type Vector: Copy;
    /// Values per 512-bit vector.
    const PER_VECTOR: usize;

    /// # Safety
    /// `PER_VECTOR` values readable from `p`; the CPU features of the entry point present.
    unsafe fn load(p: *const Self::Value) -> Self::Vector;

    /// The first `count < PER_VECTOR` values from `p`, zeros in the other lanes.
    ///
    /// # Safety
    /// `count` values readable from `p`; the CPU features of the entry point present.
    unsafe fn load_first(p: *const Self::Value, count: usize) -> Self::Vector;

    /// `acc + Σ w·x`, each of the 16 f32 lanes adding the products of its share of the vector.
    ///
    /// # Safety
    /// The CPU features of the entry point present.
    unsafe fn multiply_add(acc: __m512, w: Self::Vector, x: Self::Vector) -> __m512;
}

/// f32 weights and inputs: 16 per vector, fused multiply-add.
struct F32Lanes;

impl Lanes for F32Lanes {
    type Value = f32;
    type Vector = __m512;
    const PER_VECTOR: usize = 16;

    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: the caller guarantees 16 readable floats and AVX-512F.
        unsafe { _mm512_loadu_ps(p) }
    }

    #[inline(always)]
    unsafe fn load_first(p: *const f32, count: usize) -> __m512 {
        // SAFETY: masked-off lanes are not read; the caller guarantees `count` readable floats.
        unsafe { _mm512_maskz_loadu_ps((1u16 << count) - 1, p) }
    }

    #[inline(always)]
    unsafe fn multiply_add(acc: __m512, w: __m512, x: __m512) -> __m512 {
        // SAFETY: the caller guarantees AVX-512F.
        unsafe { _mm512_fmadd_ps(w, x, acc) }
    }
}

/// bf16 weights and inputs: 32 per vector, `vdpbf16ps` (pairs of exact products added into f32).
struct Bf16Lanes;

impl Lanes for Bf16Lanes {
    type Value = u16;
    type Vector = __m512bh;
    const PER_VECTOR: usize = 32;

    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m512bh {
        // SAFETY: the caller guarantees 32 readable values and AVX-512F; the transmute
        // reinterprets 512 bits of bf16 patterns as the bf16 vector type.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.cast())) }
    }

    #[inline(always)]
    unsafe fn load_first(p: *const u16, count: usize) -> __m512bh {
        // SAFETY: masked-off lanes are not read; the caller guarantees `count` readable values and
        // AVX-512BW.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16((1u32 << count) - 1, p.cast())) }
    }

    #[inline(always)]
    unsafe fn multiply_add(acc: __m512, w: __m512bh, x: __m512bh) -> __m512 {
        // SAFETY: the caller guarantees AVX-512 BF16.
        unsafe { _mm512_dpbf16_ps(acc, w, x) }
    }
}

/// Walks the band 4 columns at a time and, per group, the rows of `X` 6 at a time.
#[inline(always)]
fn fill_band<L: Lanes>(x: &[L::Value], w: &[L::Value], rows: usize, k: usize, band: &mut ColumnBand<'_>) {
    let columns = band.columns();
    assert!(x.len() >= rows * k, "x is shorter than [rows, k]");
    assert!(w.len() >= columns.end * k, "w is shorter than the band's weight rows");
    for first in columns.clone().step_by(TILE_COLUMNS) {
        let valid = (columns.end - first).min(TILE_COLUMNS);
        // A group with fewer than 4 columns left repeats its last weight row in the missing
        // places (read from cache, results dropped), so every tile has the same shape.
        let w_rows: [*const L::Value; TILE_COLUMNS] =
            std::array::from_fn(|c| w[(first + c.min(valid - 1)) * k..].as_ptr());
        let placement = TilePlacement { band_column: first - columns.start, valid };
        let mut row = 0;
        while row < rows {
            let x_rows = x[row * k..].as_ptr();
            // SAFETY (every arm): rows `row..row + R` of `x` and the 4 weight rows hold `k`
            // values each (asserted above), and the entry points enable the CPU features.
            match rows - row {
                1 => unsafe { tile::<L, 1>(x_rows, w_rows, k, band, row, placement) },
                2 => unsafe { tile::<L, 2>(x_rows, w_rows, k, band, row, placement) },
                3 => unsafe { tile::<L, 3>(x_rows, w_rows, k, band, row, placement) },
                4 => unsafe { tile::<L, 4>(x_rows, w_rows, k, band, row, placement) },
                5 => unsafe { tile::<L, 5>(x_rows, w_rows, k, band, row, placement) },
                _ => unsafe { tile::<L, TILE_ROWS>(x_rows, w_rows, k, band, row, placement) },
            }
            row += TILE_ROWS;
        }
    }
}

/// Where a tile's 4 columns land in its band.
#[derive(Clone, Copy)]
struct TilePlacement {
    /// The band column of the tile's first column.
    band_column: usize,
    /// How many of the 4 columns are real (the rest repeat the last one).
    valid: usize,
}

/// Computes `R` rows × 4 columns of the output and stores them in `band` from row `first_row`.
///
/// # Safety
/// `x_rows` starts `R` consecutive rows of `k` values, each `w_rows[c]` a row of `k` values; the
/// CPU features of the entry point present.
#[inline(always)]
unsafe fn tile<L: Lanes, const R: usize>(
    x_rows: *const L::Value,
    w_rows: [*const L::Value; TILE_COLUMNS],
    k: usize,
    band: &mut ColumnBand<'_>,
    first_row: usize,
    placement: TilePlacement,
) {
    // SAFETY: every offset below stays within a row of `k` values (full vectors while
    // `i + PER_VECTOR <= k`, then the `k - i` left), as the caller guarantees.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); TILE_COLUMNS]; R];
        let mut i = 0;
        while i + L::PER_VECTOR <= k {
            multiply_add_slice::<L, R>(&mut acc, x_rows, w_rows, k, i, L::PER_VECTOR);
            i += L::PER_VECTOR;
        }
        if i < k {
            multiply_add_slice::<L, R>(&mut acc, x_rows, w_rows, k, i, k - i);
        }
        let TilePlacement { band_column, valid } = placement;
        for (r, acc) in acc.iter().enumerate() {
            let mut sums = [0f32; TILE_COLUMNS];
            _mm_storeu_ps(sums.as_mut_ptr(), sum_each_of_four(*acc));
            band.row(first_row + r)[band_column..band_column + valid].copy_from_slice(&sums[..valid]);
        }
    }
}

/// Adds the products of values `i..i + count` (`count <= PER_VECTOR`) of every row of `X` and
/// every weight row into the tile's accumulators.
///
/// # Safety
/// As for [`tile`], with `i + count <= k`.
#[inline(always)]
unsafe fn multiply_add_slice<L: Lanes, const R: usize>(
    acc: &mut [[__m512; TILE_COLUMNS]; R],
    x_rows: *const L::Value,
    w_rows: [*const L::Value; TILE_COLUMNS],
    k: usize,
    i: usize,
    count: usize,
) {
    // SAFETY: the caller guarantees `count` readable values at offset `i` of every row.
    unsafe {
        let w = [
            load_up_to::<L>(w_rows[0].add(i), count),
            load_up_to::<L>(w_rows[1].add(i), count),
            load_up_to::<L>(w_rows[2].add(i), count),
            load_up_to::<L>(w_rows[3].add(i), count),
        ];
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = load_up_to::<L>(x_rows.add(r * k + i), count);
            for (acc, &w) in acc.iter_mut().zip(&w) {
                *acc = L::multiply_add(*acc, w, x);
            }
        }
    }
}

/// `count <= PER_VECTOR` values from `p`: a plain load when `count` is a whole vector (a
/// constant in the main loop, so the test folds away), a masked one for the end of a row.
///
/// # Safety
/// `count` values readable from `p`; the CPU features of the entry point present.
#[inline(always)]
unsafe fn load_up_to<L: Lanes>(p: *const L::Value, count: usize) -> L::Vector {
    // SAFETY: as the caller guarantees.
    unsafe {
        if count == L::PER_VECTOR {
            L::load(p)
        } else {
            L::load_first(p, count)
        }
    }
}

/// The lane sums of four vectors, `[Σa, Σb, Σc, Σd]`: a transposing add tree (12 instructions
/// where four separate reductions take about 32).
///
/// # Safety
/// AVX-512F present.
#[inline(always)]
unsafe fn sum_each_of_four([a, b, c, d]: [__m512; 4]) -> __m128 {
    // SAFETY: the caller guarantees AVX-512F (which implies AVX and SSE).
    unsafe {
        // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] and the same for c, d.
        let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
        // Per 128-bit lane: [Σa, Σb, Σc, Σd] over that lane's 4 elements.
        let abcd = _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(ab, cd),
            _mm512_shuffle_ps::<0b11_10_11_10>(ab, cd),
        );
        let halves = _mm256_add_ps(
            _mm512_castps512_ps256(abcd),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(abcd))),
        );
        _mm_add_ps(_mm256_castps256_ps128(halves), _mm256_extractf128_ps::<1>(halves))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_each_of_four_adds_every_lane_of_each_vector() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let vectors: Vec<[f32; 16]> = (0..4).map(|v| std::array::from_fn(|i| (v * 100 + i * i) as f32)).collect();
        let mut sums = [0f32; 4];
        // SAFETY: AVX-512F detected above; each array holds 16 floats.
        unsafe {
            let loaded = std::array::from_fn(|v| _mm512_loadu_ps(vectors[v].as_ptr()));
            _mm_storeu_ps(sums.as_mut_ptr(), sum_each_of_four(loaded));
        }
        let expected: Vec<f32> = vectors.iter().map(|v| v.iter().sum()).collect();
        assert_eq!(sums.to_vec(), expected);
    }
}
