//! Elementwise activations fused with what surrounds them, vectorised through the fast `exp`:
//! the decoder's gated SiLU (`silu(gate) · up` straight from the fused `gate_up` projection) and
//! the encoder's tanh-approximated GELU.

use rayon::prelude::*;

use crate::exp::exp;

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 16;

/// `out[r][i] = silu(gate_up[r][i]) · gate_up[r][inter + i]` for `gate_up` `[rows, 2·inter]`
/// (gate first, as Phi-3's fused projection) and `out` `[rows, inter]`.
///
/// # Panics
/// If the slice lengths do not fit `inter`.
pub fn silu_mul(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    assert!(
        inter > 0 && gate_up.len().is_multiple_of(2 * inter),
        "gate_up is not [rows, 2 * inter]"
    );
    assert_eq!(out.len(), gate_up.len() / 2, "out is not [rows, inter]");
    out.par_chunks_mut(inter * ROWS_PER_TASK)
        .zip(gate_up.par_chunks(2 * inter * ROWS_PER_TASK))
        .for_each(|(out_rows, in_rows)| {
            for (out_row, in_row) in out_rows
                .chunks_exact_mut(inter)
                .zip(in_rows.chunks_exact(2 * inter))
            {
                let (gate, up) = in_row.split_at(inter);
                for ((o, &g), &u) in out_row.iter_mut().zip(gate).zip(up) {
                    *o = g / (1.0 + exp(-g)) * u;
                }
            }
        });
}

/// `out = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, PyTorch's `gelu(approximate="tanh")`.
///
/// # Panics
/// If `input` and `out` differ in length.
pub fn gelu_tanh(input: &[f32], out: &mut [f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    assert_eq!(
        input.len(),
        out.len(),
        "gelu input and output differ in length"
    );
    out.par_chunks_mut(4096)
        .zip(input.par_chunks(4096))
        .for_each(|(out, input)| {
            for (o, &x) in out.iter_mut().zip(input) {
                let inner = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
                // tanh(u) = 1 − 2 / (e^{2u} + 1), exact at both tails once exp saturates.
                let tanh = 1.0 - 2.0 / (exp(2.0 * inner) + 1.0);
                *o = 0.5 * x * (1.0 + tanh);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_mul_matches_the_definition() {
        let inter = 5;
        let gate_up: Vec<f32> = (0..3 * 2 * inter).map(|i| i as f32 * 0.37 - 4.0).collect();
        let mut out = vec![0f32; 3 * inter];
        silu_mul(&gate_up, inter, &mut out);
        for r in 0..3 {
            for i in 0..inter {
                let (g, u) = (
                    gate_up[r * 2 * inter + i] as f64,
                    gate_up[r * 2 * inter + inter + i] as f64,
                );
                let expected = g / (1.0 + (-g).exp()) * u;
                assert!(
                    (out[r * inter + i] as f64 - expected).abs() < 1e-5 * expected.abs().max(1.0)
                );
            }
        }
    }

    #[test]
    fn gelu_tanh_matches_the_definition_including_tails() {
        let inputs: Vec<f32> = (0..2000).map(|i| i as f32 * 0.02 - 20.0).collect();
        let mut values = vec![0f32; inputs.len()];
        gelu_tanh(&inputs, &mut values);
        for (got, x) in values.iter().zip(inputs) {
            let x = x as f64;
            let expected = 0.5
                * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
            assert!(
                (*got as f64 - expected).abs() < 2e-6 * expected.abs().max(1.0),
                "gelu({x}) = {got}, want {expected}"
            );
        }
    }
}
