//! The round-to-nearest baseline quantizer (what RTN layers and the `[embedding]` step hold).

use rayon::prelude::*;

/// Where a group's levels sit relative to zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtnRule {
    /// `scale·(q − zero)` with an integer zero point (GPTQ's, and compressed-tensors').
    IntegerZero,
    /// `scale·k`, `k ∈ [−2^(bits−1), 2^(bits−1) − 1]`: no zero point (llama.cpp's Q4_0/Q5_0/Q8_0).
    Symmetric,
    /// `scale·q + min` with the group's minimum in f16 (llama.cpp's Q4_1/Q5_1).
    FloatMin,
}

impl RtnRule {
    /// The rule a recipe's two knobs name (`symmetric` wins; recipes refuse both).
    pub fn of(symmetric: bool, float_min: bool) -> Self {
        match (symmetric, float_min) {
            (true, _) => Self::Symmetric,
            (false, true) => Self::FloatMin,
            (false, false) => Self::IntegerZero,
        }
    }
}

/// The value of level `q` of a [`RtnRule::FloatMin`] group, computed as every reader computes
/// it (f32 multiply, then add: llama.cpp's and candle's Q4_1 dequantization).
#[inline]
pub fn float_min_value(q: u32, scale: f32, min: f32) -> f32 {
    q as f32 * scale + min
}

/// Round-to-nearest baseline: asymmetric uniform quantization with one (scale, zero) pair per
/// (row, run of `group` consecutive input columns), GPTQ style: the range is `[min(x,0),
/// max(x,0)]`, `scale = range/(2^bits − 1)` rounded to f16 (as stored), integer zero point, ties
/// to even. `group == 0` means the whole row. Returns the dequantized matrix.
///
/// Storage: `bits + 2·16/group` bits per weight (an fp16 scale and an fp16-sized zero per group;
/// e.g. 3.25 bits at 3 bits, group 128). `bits` is clamped to `1..=16`.
///
/// [`RtnRule::Symmetric`]: no zero point; `scale = −m / 2^(bits−1)` rounded to f16, with `m`
/// the group's weight of largest magnitude (signed, so the scale may be negative), and values
/// `scale·k`, `k ∈ [−2^(bits−1), 2^(bits−1) − 1]` (`bits + 16/group` bits per weight):
/// llama.cpp's Q4_0 rule, and its Q4_0/Q5_0/Q8_0 hold such a group exactly at group 32.
///
/// [`RtnRule::FloatMin`]: the group's own range `[min, max]` (not widened to zero), `scale =
/// (max − min)/(2^bits − 1)` and `min` both rounded to f16, values [`float_min_value`]:
/// llama.cpp's Q4_1 rule, and its Q4_1/Q5_1 hold such a group exactly at group 32.
///
/// # Panics
/// If `w.len() < rows·cols`.
pub fn rtn_quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    bits: usize,
    group: usize,
    rule: RtnRule,
) -> Vec<f32> {
    match rule {
        RtnRule::Symmetric => return symmetric_quantize(w, rows, cols, bits, group),
        RtnRule::FloatMin => return float_min_quantize(w, rows, cols, bits, group),
        RtnRule::IntegerZero => {}
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

fn float_min_quantize(w: &[f32], rows: usize, cols: usize, bits: usize, group: usize) -> Vec<f32> {
    let maxq = (1u32 << bits.clamp(1, 16)) - 1;
    let group = if group == 0 { cols.max(1) } else { group };
    let mut out = w[..rows * cols].to_vec();
    out.par_chunks_mut(cols.max(1)).for_each(|row| {
        for chunk in row.chunks_mut(group) {
            let lo = chunk.iter().fold(f32::INFINITY, |m, &x| m.min(x));
            let hi = chunk.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let min = half::f16::from_f32(lo).to_f32();
            let scale = half::f16::from_f32((hi - lo) / maxq as f32).to_f32();
            for x in chunk.iter_mut() {
                let q = if scale > 0.0 {
                    ((*x - min) / scale)
                        .round_ties_even()
                        .clamp(0.0, maxq as f32) as u32
                } else {
                    0
                };
                *x = float_min_value(q, scale, min);
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
