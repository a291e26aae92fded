//! Fused CPU kernels for the inference forward pass, where candle's composed ops would make
//! several passes over large tensors. Each has a test against the composed reference.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Softmax of `scale · scores` over the last axis with a causal mask: in the row of query `i`
/// (rows cycle through `n` queries) only keys `0..=pos0 + i` are kept; masked entries are 0 and
/// never exponentiated, which halves the exponentials of a prefill.
struct CausalSoftmax {
    n: usize,
    pos0: usize,
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(src) = storage else {
            candle_core::bail!("causal-softmax: f32 only");
        };
        let Some((o1, o2)) = layout.contiguous_offsets() else {
            candle_core::bail!("causal-softmax: input must be contiguous");
        };
        let src = &src[o1..o2];
        let s = layout.shape().dims().last().copied().unwrap_or(1);
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(s)
            .zip(src.par_chunks(s))
            .enumerate()
            .for_each(|(row, (d, x))| {
                let keep = (self.pos0 + row % self.n + 1).min(s);
                let (d, x) = (&mut d[..keep], &x[..keep]);
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (d, &v) in d.iter_mut().zip(x) {
                    *d = ((v - max) * self.scale).exp();
                    sum += *d;
                }
                let inv = 1.0 / sum;
                d.iter_mut().for_each(|v| *v *= inv);
            });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// `softmax(scale · scores)` with the causal mask, for scores `[.., n, pos0 + n]` whose rows
/// cycle through the `n` queries.
pub fn causal_softmax(scores: &Tensor, n: usize, pos0: usize, scale: f32) -> Result<Tensor> {
    scores
        .contiguous()?
        .apply_op1_no_bwd(&CausalSoftmax { n, pos0, scale })
}

/// `silu(gate) · up`, elementwise, in one pass (the SwiGLU activation).
struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(gate), CpuStorage::F32(up)) = (s1, s2) else {
            candle_core::bail!("silu-mul: f32 only");
        };
        let (Some((a1, a2)), Some((b1, b2))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("silu-mul: inputs must be contiguous");
        };
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "silu-mul: shapes {:?} and {:?} differ",
                l1.shape(),
                l2.shape()
            );
        }
        let (gate, up) = (&gate[a1..a2], &up[b1..b2]);
        let mut dst = vec![0f32; gate.len()];
        dst.par_chunks_mut(4096)
            .zip(gate.par_chunks(4096).zip(up.par_chunks(4096)))
            .for_each(|(d, (g, u))| {
                for ((d, &g), &u) in d.iter_mut().zip(g).zip(u) {
                    *d = g / (1.0 + (-g).exp()) * u;
                }
            });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }
}

/// `silu(gate) · up` in one pass.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?
        .apply_op2_no_bwd(&up.contiguous()?, &SiluMul)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn causal_softmax_matches_mask_then_softmax() {
        let (n, pos0) = (5, 3);
        let s = pos0 + n;
        let scores = Tensor::randn(0f32, 3.0, (2, 2 * n, s), &Device::Cpu).unwrap();
        let mask: Vec<f32> = (0..2 * n)
            .flat_map(|r| {
                (0..s).map(move |j| {
                    if j > pos0 + r % n {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (2 * n, s), &Device::Cpu).unwrap();
        let reference = candle_nn::ops::softmax_last_dim(
            &(scores.clone() * 0.5)
                .unwrap()
                .broadcast_add(&mask)
                .unwrap(),
        )
        .unwrap();
        let fused = causal_softmax(&scores, n, pos0, 0.5).unwrap();
        assert!(max_diff(&reference, &fused) < 1e-6);
    }

    #[test]
    fn silu_mul_matches_composed_ops() {
        let g = Tensor::randn(0f32, 2.0, (7, 33), &Device::Cpu).unwrap();
        let u = Tensor::randn(0f32, 2.0, (7, 33), &Device::Cpu).unwrap();
        let reference = (candle_nn::ops::silu(&g).unwrap() * &u).unwrap();
        assert!(max_diff(&reference, &silu_mul(&g, &u).unwrap()) < 1e-5);
    }
}
