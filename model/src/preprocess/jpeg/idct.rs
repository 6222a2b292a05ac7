//! libjpeg's accurate integer inverse DCT (`jpeg_idct_islow` in `jidctint.c`), bit for bit.
//!
//! Two one-dimensional passes (columns, then rows) of the Loeffler-Ligtenberg-Moschytz algorithm
//! in 13-bit fixed point with 2 extra bits kept between passes; the result is level-shifted by 128
//! and limited to 0..=255 through libjpeg's wrap-around range-limit table.

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;

const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

/// Rounds `x / 2^n` to nearest (ties up), as libjpeg's `DESCALE`.
fn descale(x: i64, n: u32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

/// The eight outputs of one 1-D pass over `input` (natural order, stride applied by the caller),
/// before descaling: `[out0, ..., out7]` scaled by `2^CONST_BITS`.
fn idct_1d(input: [i64; 8]) -> [i64; 8] {
    // Even part.
    let (z2, z3) = (input[2], input[6]);
    let z1 = (z2 + z3) * FIX_0_541196100;
    let tmp2 = z1 + z3 * -FIX_1_847759065;
    let tmp3 = z1 + z2 * FIX_0_765366865;
    let tmp0 = (input[0] + input[4]) << CONST_BITS;
    let tmp1 = (input[0] - input[4]) << CONST_BITS;
    let (tmp10, tmp13) = (tmp0 + tmp3, tmp0 - tmp3);
    let (tmp11, tmp12) = (tmp1 + tmp2, tmp1 - tmp2);

    // Odd part.
    let (t0, t1, t2, t3) = (input[7], input[5], input[3], input[1]);
    let z1 = t0 + t3;
    let z2 = t1 + t2;
    let z3 = t0 + t2;
    let z4 = t1 + t3;
    let z5 = (z3 + z4) * FIX_1_175875602;
    let t0 = t0 * FIX_0_298631336;
    let t1 = t1 * FIX_2_053119869;
    let t2 = t2 * FIX_3_072711026;
    let t3 = t3 * FIX_1_501321110;
    let z1 = z1 * -FIX_0_899976223;
    let z2 = z2 * -FIX_2_562915447;
    let z3 = z3 * -FIX_1_961570560 + z5;
    let z4 = z4 * -FIX_0_390180644 + z5;
    let t0 = t0 + z1 + z3;
    let t1 = t1 + z2 + z4;
    let t2 = t2 + z2 + z3;
    let t3 = t3 + z1 + z4;

    [
        tmp10 + t3,
        tmp11 + t2,
        tmp12 + t1,
        tmp13 + t0,
        tmp13 - t0,
        tmp12 - t1,
        tmp11 - t2,
        tmp10 - t3,
    ]
}

/// libjpeg's post-IDCT range limit: adds 128 and clamps, wrapping modulo 1024 like its table.
fn range_limit(x: i64) -> u8 {
    let index = (x & 1023) as u16;
    match index {
        0..=127 => (index + 128) as u8,
        128..=511 => 255,
        512..=895 => 0,
        _ => (index - 896) as u8,
    }
}

/// Dequantizes one block (natural order) and writes its 8x8 samples at `out[row * stride + col]`.
pub(super) fn idct_block(coefficients: &[i16], quant: &[i16; 64], out: &mut [u8], stride: usize) {
    let mut workspace = [0i32; 64];
    for col in 0..8 {
        // Coefficient times quantizer is a 16x16-bit product, as libjpeg's DEQUANTIZE.
        let input: [i64; 8] = std::array::from_fn(|row| {
            i64::from(i32::from(coefficients[row * 8 + col]) * i32::from(quant[row * 8 + col]))
        });
        let output = idct_1d(input);
        for (row, value) in output.into_iter().enumerate() {
            // libjpeg stores the intermediate in an `int`.
            workspace[row * 8 + col] = descale(value, CONST_BITS - PASS1_BITS) as i32;
        }
    }
    for row in 0..8 {
        let input: [i64; 8] = std::array::from_fn(|col| i64::from(workspace[row * 8 + col]));
        let output = idct_1d(input);
        for (col, value) in output.into_iter().enumerate() {
            out[row * stride + col] = range_limit(descale(value, CONST_BITS + PASS1_BITS + 3));
        }
    }
}
