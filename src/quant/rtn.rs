//! The round-to-nearest baseline quantizer (what RTN layers and the `[embedding]` step hold).

use rayon::prelude::*;

/// Round-to-nearest baseline: asymmetric uniform quantization with one (scale, zero) pair per
/// (row, run of `group` consecutive input columns), GPTQ style: the range is `[min(x,0),
/// max(x,0)]`, `scale = range/(2^bits − 1)` rounded to f16 (as stored), integer zero point, ties
/// to even. `group == 0` means the whole row. Returns the dequantized matrix.
///
/// Storage: `bits + 2·16/group` bits per weight (an fp16 scale and an fp16-sized zero per group;
/// e.g. 3.25 bits at 3 bits, group 128). `bits` is clamped to `1..=16`.
///
/// `symmetric`: no zero point; `scale = −m / 2^(bits−1)` rounded to f16, with `m` the group's
/// weight of largest magnitude (signed, so the scale may be negative), and values `scale·k`,
/// `k ∈ [−2^(bits−1), 2^(bits−1) − 1]` (`bits + 16/group` bits per weight): llama.cpp's Q4_0
/// rule, and its Q4_0/Q5_0/Q8_0 hold such a group exactly at group 32.
///
/// # Panics
/// If `w.len() < rows·cols`.
pub fn rtn_quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    bits: usize,
    group: usize,
    symmetric: bool,
) -> Vec<f32> {
    if symmetric {
        return symmetric_quantize(w, rows, cols, bits, group);
    }
    let maxq = ((1u32 << bits.clamp(1, 16)) - 1) as f32;
    let group = if group == 0 { cols.max(1) } else { group };
    let mut out = w[..rows * cols].to_vec();
    out.par_chunks_mut(cols.max(1)).for_each(|row| {
        for chunk in row.chunks_mut(group) {
            let lo = chunk.iter().fold(0.0f32, |m, &x| m.min(x));
            let hi = chunk.iter().fold(0.0f32, |m, &x| m.max(x));
            // The scale is stored in f16, so it is rounded there before use: the dequantized
            // values are exactly what packed codes + f16 scale and zero give back.
            let scale = half::f16::from_f32((hi - lo) / maxq).to_f32();
            if scale <= 0.0 || !scale.is_finite() {
                // All-zero group: zero reproduces it exactly.
                continue;
            }
            let zero = (-lo / scale).round_ties_even();
            for x in chunk.iter_mut() {
                let q = ((*x / scale).round_ties_even() + zero).clamp(0.0, maxq);
                *x = scale * (q - zero);
            }
        }
    });
    out
}

fn symmetric_quantize(w: &[f32], rows: usize, cols: usize, bits: usize, group: usize) -> Vec<f32> {
    let half = (1u32 << (bits.clamp(2, 16) - 1)) as f32;
    let group = if group == 0 { cols.max(1) } else { group };
    let mut out = w[..rows * cols].to_vec();
    out.par_chunks_mut(cols.max(1)).for_each(|row| {
        for chunk in row.chunks_mut(group) {
            // The weight of largest magnitude, with its sign, lands on the level −2^(bits−1),
            // the one without a positive twin: all 2^bits levels are used.
            let extreme = chunk
                .iter()
                .copied()
                .fold(0.0f32, |m, x| if x.abs() > m.abs() { x } else { m });
            let scale = half::f16::from_f32(-extreme / half).to_f32();
            if scale == 0.0 || !scale.is_finite() {
                chunk.fill(0.0);
                continue;
            }
            for x in chunk.iter_mut() {
                // `+ 0.0` turns a rounded −0 into +0, the zero every format stores.
                *x = scale * ((*x / scale).round_ties_even().clamp(-half, half - 1.0) + 0.0);
            }
        }
    });
    out
}
