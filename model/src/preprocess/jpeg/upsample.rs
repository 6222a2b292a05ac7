//! Chroma upsampling as libjpeg-turbo does it by default (`jdsample.c` with fancy upsampling).
//!
//! 2:1 horizontal and 2:1 both-ways components use the "fancy" triangle filter (3/4 of the nearer
//! sample, 1/4 of the farther, in each direction, with libjpeg's alternating rounding biases)
//! when the component is more than 2 samples wide, and replication otherwise; 1:2 vertical is
//! always fancy. Any other integral ratio is replicated. At the edges the nearest real sample
//! stands in for the missing neighbour, which is what libjpeg's edge handling and its duplicated
//! context rows amount to.

/// One decoded component: `width` x `height` real samples in rows of `stride` bytes.
pub(super) struct Plane<'a> {
    pub samples: &'a [u8],
    pub stride: usize,
    pub width: usize,
    pub height: usize,
}

impl Plane<'_> {
    fn row(&self, y: usize) -> &[u8] {
        &self.samples[y * self.stride..y * self.stride + self.width]
    }
}

/// Upsamples `plane` by `h_factor` x `v_factor` to `out_width` x `out_height` samples (row-major).
///
/// The output never reads past the plane's real samples (`out_width <= width * h_factor`, and the
/// same vertically, hold for every component of a valid frame).
pub(super) fn upsample(
    plane: &Plane<'_>,
    h_factor: usize,
    v_factor: usize,
    out_width: usize,
    out_height: usize,
) -> Vec<u8> {
    let mut out = vec![0u8; out_width * out_height];
    if out_width == 0 {
        return out;
    }
    let fancy_width = plane.width > 2;
    for (y, out_row) in out.chunks_exact_mut(out_width).enumerate() {
        match (h_factor, v_factor) {
            (2, 1) if fancy_width => fancy_h2v1(plane.row(y), out_row),
            (1, 2) => {
                let (near, far, bias) = vertical_neighbours(plane, y);
                for (out, (&n, &f)) in out_row.iter_mut().zip(near.iter().zip(far)) {
                    *out = ((3 * u32::from(n) + u32::from(f) + bias) >> 2) as u8;
                }
            }
            (2, 2) if fancy_width => {
                let (near, far, _) = vertical_neighbours(plane, y);
                fancy_h2v2(near, far, out_row);
            }
            _ => {
                let row = plane.row(y / v_factor);
                for (x, out) in out_row.iter_mut().enumerate() {
                    *out = row[x / h_factor];
                }
            }
        }
    }
    out
}

/// For output row `y` of a 2:1 vertical upsampling: the nearer input row, the farther one (the
/// row above for even `y`, below for odd, clamped to the real rows) and libjpeg's rounding bias.
fn vertical_neighbours<'p>(plane: &'p Plane<'_>, y: usize) -> (&'p [u8], &'p [u8], u32) {
    let row = y / 2;
    if y.is_multiple_of(2) {
        (plane.row(row), plane.row(row.saturating_sub(1)), 1)
    } else {
        (
            plane.row(row),
            plane.row((row + 1).min(plane.height - 1)),
            2,
        )
    }
}

/// `h2v1_fancy_upsample` for one row; `out` holds up to `2 * input.len()` samples.
fn fancy_h2v1(input: &[u8], out: &mut [u8]) {
    let last = input.len() - 1;
    for (x, out) in out.iter_mut().enumerate() {
        let column = x / 2;
        let near = 3 * u32::from(input[column]);
        *out = if x.is_multiple_of(2) {
            ((near + u32::from(input[column.saturating_sub(1)]) + 1) >> 2) as u8
        } else {
            ((near + u32::from(input[(column + 1).min(last)]) + 2) >> 2) as u8
        };
    }
}

/// `h2v2_fancy_upsample` for one output row from its nearer and farther input rows.
fn fancy_h2v2(near: &[u8], far: &[u8], out: &mut [u8]) {
    let last = near.len() - 1;
    let column_sum = |c: usize| 3 * u32::from(near[c]) + u32::from(far[c]);
    for (x, out) in out.iter_mut().enumerate() {
        let column = x / 2;
        let this = 3 * column_sum(column);
        *out = if x.is_multiple_of(2) {
            ((this + column_sum(column.saturating_sub(1)) + 8) >> 4) as u8
        } else {
            ((this + column_sum((column + 1).min(last)) + 7) >> 4) as u8
        };
    }
}
