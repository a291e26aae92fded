//! Dynamic int8 activations: each input vector is rounded, 32 values at a time, to
//! `scale · q` with `q` an int8 in `[−127, 127]` and `scale = max|x| / 127` held in f16. This is
//! how llama.cpp's CPU backend multiplies every quantized weight type (its `Q8_0` activation
//! blocks), so an RTN layer with `int8_activations` computes what the deployed GGUF computes,
//! and its kernel can multiply in integers.

use half::f16;

/// Activations per scale.
pub const BLOCK: usize = 32;

/// A vector as int8 blocks: `q` (one per value) and, per block of [`BLOCK`] values (the last
/// may be shorter), the f16-rounded scale and `Σ q`.
#[derive(Debug, Default, Clone)]
pub struct Int8Blocks {
    pub q: Vec<i8>,
    pub scales: Vec<f32>,
    pub sums: Vec<i32>,
}

impl Int8Blocks {
    /// Replaces the contents with `x`, quantized.
    pub fn quantize(&mut self, x: &[f32]) {
        self.q.clear();
        self.scales.clear();
        self.sums.clear();
        for block in x.chunks(BLOCK) {
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            // llama.cpp rounds `x · 127/amax` (not `x / scale` with the f16 scale), ties to
            // even as its AVX path does.
            let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            let start = self.q.len();
            self.q
                .extend(block.iter().map(|v| round_even(v * inv) as i8));
            let sum = self.q[start..].iter().map(|&k| i32::from(k)).sum();
            self.scales.push(f16::from_f32(amax / 127.0).to_f32());
            self.sums.push(sum);
        }
    }

    /// The value that stands for element `i`.
    pub fn value(&self, i: usize) -> f32 {
        self.scales[i / BLOCK] * f32::from(self.q[i])
    }
}

/// `v` (|v| ≤ 127) rounded to the nearest integer, ties to even: adding and subtracting 1.5·2²³
/// leaves no fraction bits, so the sum is rounded by the FPU's default mode. The same result as
/// `f32::round_ties_even`, which on baseline x86-64 is a library call per value.
#[inline]
fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// Rounds every row of `x` (rows of `cols` values) to the values [`Int8Blocks`] stands for, in
/// place: what the reference forward multiplies, so it computes the integer kernel's products.
pub fn round_rows(x: &mut [f32], cols: usize) {
    let mut blocks = Int8Blocks::default();
    for row in x.chunks_mut(cols.max(1)) {
        blocks.quantize(row);
        for (i, v) in row.iter_mut().enumerate() {
            *v = blocks.value(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_to_their_own_scale() {
        // Two blocks of very different ranges, and a short, all-zero last block.
        let mut x: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.01).collect();
        x.extend((0..32).map(|i| (i as f32 - 10.0) * 3.0));
        x.extend([0.0; 5]);
        let mut b = Int8Blocks::default();
        b.quantize(&x);
        let (q, scales, sums) = (&b.q, &b.scales, &b.sums);
        assert_eq!((q.len(), scales.len(), sums.len()), (69, 3, 3));
        // The value of largest magnitude lands on ±127 in its block.
        assert_eq!(q[0], -127);
        assert_eq!(q[63], 127);
        assert_eq!(scales[2], 0.0);
        assert!(q[64..].iter().all(|&k| k == 0));
        assert_eq!(
            sums[1],
            q[32..64].iter().map(|&k| i32::from(k)).sum::<i32>()
        );
        let mut r = x.clone();
        round_rows(&mut r, x.len());
        for (i, (a, b)) in x.iter().zip(&r).enumerate() {
            // Within half a step of the block's scale (plus the f16 rounding of the scale).
            let s = scales[i / BLOCK];
            assert!(
                (a - b).abs() <= 0.5 * s + 127.0 * s * 1e-3,
                "{i}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn rounding_is_ties_to_even() {
        for i in -2540..=2540 {
            let v = i as f32 * 0.05;
            assert_eq!(round_even(v), v.round_ties_even(), "{v}");
        }
        assert_eq!(
            (round_even(2.5), round_even(-3.5), round_even(0.5)),
            (2.0, -4.0, 0.0)
        );
    }

    #[test]
    fn rows_are_rounded_independently() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32).sin()).collect();
        let mut both = x.clone();
        round_rows(&mut both, 32);
        let mut first = x[..32].to_vec();
        round_rows(&mut first, 32);
        assert_eq!(&both[..32], &first[..]);
    }
}
