//! Splits the output columns of `Y = X · Wᵀ` across threads: every task owns a band of columns,
//! reads only the weight rows of that band and writes its outputs straight into `Y`.

use std::marker::PhantomData;
use std::ops::Range;

use rayon::prelude::*;

/// Most output columns per task (enough work to amortise scheduling).
const MAX_COLUMNS_PER_BAND: usize = 256;

/// Bands per thread wanted, so that work stealing evens out small layers: 768 columns make 16
/// bands on 2 threads rather than 3 that leave one thread idle a third of the time.
const BANDS_PER_THREAD: usize = 8;

/// Calls `compute` once per band of output columns, in parallel; `out` is `[rows, n]` row-major.
/// Band widths are multiples of `column_multiple` (except the last band).
pub(super) fn for_each_column_band(
    rows: usize,
    n: usize,
    column_multiple: usize,
    out: &mut [f32],
    compute: impl Fn(&mut ColumnBand<'_>) + Sync,
) {
    assert_eq!(out.len(), rows * n, "out is not [rows, n]");
    let width = band_width(n, column_multiple);
    let output = SharedOutput {
        start: out.as_mut_ptr(),
        rows,
        n,
    };
    (0..n.div_ceil(width)).into_par_iter().for_each(|band| {
        let columns = band * width..((band + 1) * width).min(n);
        // SAFETY: the bands `band * width..(band + 1) * width` are disjoint, so no two tasks touch
        // the same element of `out`, which stays borrowed mutably until every task has finished.
        let mut band = unsafe { output.band(columns) };
        compute(&mut band);
    });
}

/// Columns per band: about `BANDS_PER_THREAD` bands per thread, rounded up to `column_multiple`,
/// at most `MAX_COLUMNS_PER_BAND` (or `column_multiple` if that is larger).
fn band_width(n: usize, column_multiple: usize) -> usize {
    let wanted = n.div_ceil(rayon::current_num_threads() * BANDS_PER_THREAD);
    wanted
        .next_multiple_of(column_multiple)
        .min(MAX_COLUMNS_PER_BAND.max(column_multiple))
        .max(column_multiple)
}

/// The output matrix, shared by tasks that write disjoint column bands.
struct SharedOutput {
    start: *mut f32,
    rows: usize,
    n: usize,
}

// SAFETY: tasks only reach the matrix through `band`, whose callers guarantee disjoint columns.
unsafe impl Sync for SharedOutput {}

impl SharedOutput {
    /// The band of `columns` in every row.
    ///
    /// # Safety
    /// No other band alive at the same time may overlap `columns`, and `columns.end <= n`.
    unsafe fn band(&self, columns: Range<usize>) -> ColumnBand<'_> {
        ColumnBand {
            start: self.start,
            rows: self.rows,
            n: self.n,
            columns,
            _output: PhantomData,
        }
    }
}

/// One task's columns of the output: `out[r][columns]` for every row `r`.
pub(super) struct ColumnBand<'a> {
    start: *mut f32,
    rows: usize,
    n: usize,
    columns: Range<usize>,
    _output: PhantomData<&'a mut [f32]>,
}

impl ColumnBand<'_> {
    /// The output columns (equally, weight rows) of this band.
    pub(super) fn columns(&self) -> Range<usize> {
        self.columns.clone()
    }

    /// Row `r` of the band: `out[r][columns]`.
    ///
    /// # Panics
    /// If `r` is not a row of the output.
    pub(super) fn row(&mut self, r: usize) -> &mut [f32] {
        assert!(
            r < self.rows,
            "row {r} of an output with {} rows",
            self.rows
        );
        // SAFETY: `r < rows` and `columns.end <= n`, so the range lies inside the `[rows, n]`
        // matrix; the band owns these columns exclusively (see `SharedOutput::band`), and `&mut
        // self` keeps this slice the only one handed out at a time.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.start.add(r * self.n + self.columns.start),
                self.columns.len(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_cover_every_column_once_in_multiples_of_the_tile() {
        for (rows, n, multiple) in [
            (3, 1, 4),
            (2, 7, 4),
            (1, 768, 4),
            (5, 1000, 1),
            (2, 100_352, 4),
        ] {
            let mut out = vec![0f32; rows * n];
            for_each_column_band(rows, n, multiple, &mut out, |band| {
                let columns = band.columns();
                assert!(
                    columns.start.is_multiple_of(multiple),
                    "{columns:?} starts off the tile grid"
                );
                assert!(columns.len() <= MAX_COLUMNS_PER_BAND.max(multiple));
                for r in 0..rows {
                    for (value, column) in band.row(r).iter_mut().zip(columns.clone()) {
                        *value += (r * n + column) as f32 + 1.0;
                    }
                }
            });
            let expected: Vec<f32> = (0..rows * n).map(|i| i as f32 + 1.0).collect();
            assert_eq!(out, expected, "rows {rows}, n {n}");
        }
    }

    #[test]
    fn small_layers_get_several_bands_per_thread() {
        let threads = rayon::current_num_threads();
        assert!(768usize.div_ceil(band_width(768, 4)) >= (threads * 2).min(768 / 4));
        assert_eq!(band_width(100_352, 4), MAX_COLUMNS_PER_BAND);
        assert_eq!(band_width(3, 4), 4);
    }
}
