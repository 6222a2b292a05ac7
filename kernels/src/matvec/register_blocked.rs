//! The AVX-512 kernel for decoding batches: micro-tiles of 4 output columns × up to 6 rows of
//! `X`, whose 24 accumulators stay in registers while the tile's 4 weight rows stream past.
//!
//! A band goes through its weights in chunks of 96 KiB, and each chunk runs all its tiles for 6
//! rows of `X` at a time: the first row block pulls the chunk's weights from memory, the later
//! ones find them in L2 while their 6 rows of `X` (18 KiB at k = 768) stay in L1. So every weight
//! leaves memory once per call however many rows there are, and each loaded weight vector feeds
//! 6 multiply-adds (4 weight + 6 input loads per 24 of them, where a dot product per output needs
//! 2 loads per multiply-add). A tile takes one column from each quarter of its band, so each of
//! its 4 weight streams runs through consecutive rows of `W`, which the prefetchers follow.
//!
//! Each accumulator sums one (row, column) pair over 16 lanes of `k`, in f32; the 4 columns of a
//! row are reduced together at the end of the tile.

use std::arch::x86_64::*;
use std::ops::Range;

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
pub(super) fn fill_band_f32(
    x: &[f32],
    w: &[f32],
    rows: usize,
    k: usize,
    band: &mut ColumnBand<'_>,
) {
    fill_band::<F32Lanes>(x, w, rows, k, band);
}

/// Fills `band` with `x · wᵀ` for bf16 `x` and weights (bit patterns), accumulating in f32.
///
/// # Panics
/// If `x` is shorter than `[rows, k]` or `w` than the band's weight rows.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) fn fill_band_bf16(
    x: &[u16],
    w: &[u16],
    rows: usize,
    k: usize,
    band: &mut ColumnBand<'_>,
) {
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
        unsafe {
            std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16(
                (1u32 << count) - 1,
                p.cast(),
            ))
        }
    }

    #[inline(always)]
    unsafe fn multiply_add(acc: __m512, w: __m512bh, x: __m512bh) -> __m512 {
        // SAFETY: the caller guarantees AVX-512 BF16.
        unsafe { _mm512_dpbf16_ps(acc, w, x) }
    }
}

/// Walks the band in chunks of weight rows that fit in L2; per chunk, the rows of `X` 6 at a
/// time, and per 6 rows every tile of the chunk.
#[inline(always)]
fn fill_band<L: Lanes>(
    x: &[L::Value],
    w: &[L::Value],
    rows: usize,
    k: usize,
    band: &mut ColumnBand<'_>,
) {
    let columns = band.columns();
    assert!(x.len() >= rows * k, "x is shorter than [rows, k]");
    assert!(
        w.len() >= columns.end * k,
        "w is shorter than the band's weight rows"
    );
    let quarter = columns.len().div_ceil(TILE_COLUMNS);
    let tiles_per_chunk = (CHUNK_BYTES / (TILE_COLUMNS * k.max(1) * size_of::<L::Value>())).max(1);
    let band_weights = &w[columns.start * k..columns.end * k];
    // The tiles write a packed `[rows, width]` copy of the band, copied out at the end: rows of
    // the output itself can lie a multiple of 4 KiB apart (n = 4096 or 100352 f32), and their
    // lines would then all compete for the same few L1 sets as the weights and `X`.
    let mut packed = vec![0f32; rows * columns.len()];
    for first_offset in (0..quarter).step_by(tiles_per_chunk) {
        let chunk = Chunk {
            offsets: first_offset..(first_offset + tiles_per_chunk).min(quarter),
            quarter,
            width: columns.len(),
        };
        let mut row = 0;
        while row < rows {
            let x_rows = x[row * k..].as_ptr();
            // SAFETY (every arm): rows `row..row + R` of `x` and the band's weight rows hold `k`
            // values each (asserted above), and the entry points enable the CPU features.
            match rows - row {
                1 => unsafe {
                    row_block::<L, 1>(x_rows, band_weights, k, &chunk, &mut packed, row)
                },
                2 => unsafe {
                    row_block::<L, 2>(x_rows, band_weights, k, &chunk, &mut packed, row)
                },
                3 => unsafe {
                    row_block::<L, 3>(x_rows, band_weights, k, &chunk, &mut packed, row)
                },
                4 => unsafe {
                    row_block::<L, 4>(x_rows, band_weights, k, &chunk, &mut packed, row)
                },
                5 => unsafe {
                    row_block::<L, 5>(x_rows, band_weights, k, &chunk, &mut packed, row)
                },
                _ => unsafe {
                    row_block::<L, TILE_ROWS>(x_rows, band_weights, k, &chunk, &mut packed, row)
                },
            }
            row += TILE_ROWS;
        }
    }
    for (r, packed_row) in packed.chunks_exact(columns.len()).enumerate() {
        band.row(r).copy_from_slice(packed_row);
    }
}

/// Weight bytes per chunk: the chunk's rows leave memory during its first row block and are
/// read from L2 (1 MiB per core here) by the others, next to the rows of `X`. At 64 rows, 96 KiB
/// ran the bench preset's f32 gate|up and `lm_head` weights 2× and 1.4× faster than 256 KiB.
const CHUNK_BYTES: usize = 96 << 10;

/// The tiles of one chunk: offsets into each quarter of the band.
struct Chunk {
    offsets: Range<usize>,
    /// Columns per quarter of the band.
    quarter: usize,
    /// The band's width.
    width: usize,
}

/// Runs every tile of `chunk` for `R` rows of `X` starting at `x_rows` (output row `first_row`).
///
/// # Safety
/// `x_rows` starts `R` rows of `k` values; `band_weights` holds the band's weight rows; the CPU
/// features of the entry point present.
#[inline(always)]
unsafe fn row_block<L: Lanes, const R: usize>(
    x_rows: *const L::Value,
    band_weights: &[L::Value],
    k: usize,
    chunk: &Chunk,
    packed: &mut [f32],
    first_row: usize,
) {
    for offset in chunk.offsets.clone() {
        let placement = TilePlacement {
            band_columns: std::array::from_fn(|c| c * chunk.quarter + offset),
            width: chunk.width,
        };
        // Quarters that end short (when the width is not a multiple of 4) repeat column
        // `offset` in their missing places (read from cache, results dropped).
        let w_rows: [*const L::Value; TILE_COLUMNS] = std::array::from_fn(|c| {
            let column = placement.band_columns[c];
            band_weights[if column < chunk.width { column } else { offset } * k..].as_ptr()
        });
        // SAFETY: as the caller guarantees; each `w_rows[c]` starts a weight row of the band.
        unsafe { tile::<L, R>(x_rows, w_rows, k, packed, first_row, placement) };
    }
}

/// Where a tile's 4 columns land in its band: one in each quarter, at the same offset, so that
/// each of the tile's weight streams runs through consecutive rows of `W` (contiguous memory,
/// which the hardware prefetchers follow) rather than jumping 4 rows at every tile.
#[derive(Clone, Copy)]
struct TilePlacement {
    /// The band columns of the tile's 4 columns.
    band_columns: [usize; TILE_COLUMNS],
    /// The band's width: columns at or past it are repeats whose results are dropped.
    width: usize,
}

/// Computes `R` rows × 4 columns of the output and stores them in `packed` (the band's output,
/// `[rows, width]`) from row `first_row`.
///
/// # Safety
/// `x_rows` starts `R` consecutive rows of `k` values, each `w_rows[c]` a row of `k` values; the
/// CPU features of the entry point present.
#[inline(always)]
unsafe fn tile<L: Lanes, const R: usize>(
    x_rows: *const L::Value,
    w_rows: [*const L::Value; TILE_COLUMNS],
    k: usize,
    packed: &mut [f32],
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
        for (r, acc) in acc.iter().enumerate() {
            let mut sums = [0f32; TILE_COLUMNS];
            _mm_storeu_ps(sums.as_mut_ptr(), sum_each_of_four(*acc));
            let out = &mut packed[(first_row + r) * placement.width..][..placement.width];
            for (&band_column, sum) in placement.band_columns.iter().zip(sums) {
                if band_column < placement.width {
                    out[band_column] = sum;
                }
            }
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
        _mm_add_ps(
            _mm256_castps256_ps128(halves),
            _mm256_extractf128_ps::<1>(halves),
        )
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
        let vectors: Vec<[f32; 16]> = (0..4)
            .map(|v| std::array::from_fn(|i| (v * 100 + i * i) as f32))
            .collect();
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
