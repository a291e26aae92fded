//! Randomized parameter sharing of one linear layer, post-training (`docs/techniques.md`,
//! RPS §3; STABLE-RPS's RANDOMFOLD mapping): fit the shared array of a [`HashedWeight`] to a
//! pretrained matrix.
//!
//! Two fits: the data-free least-squares projection (each slot takes the mean of its signed
//! weights, O(n)), which is exact at `c = 1` with fold and otherwise loses about `1 − 1/c` of
//! the layer's energy; and an optional output-aware refit that minimises `‖X(W − Ŵ(z))ᵀ‖²` on
//! calibration inputs by conjugate gradient on the normal equations, started from the
//! projection. This module never builds indices: the mapping is recomputed from the seed.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::calib::InputStats;
use crate::model::hashed::{HashMapping, HashedWeight, Hasher};
use crate::model::{LinearWeight, Model};
use crate::technique::recipe::{RpsKnobs, RpsMapping};

/// Ridge added to `XᵀX` for the refit, as a fraction of its mean diagonal (GPTQ's damping):
/// keeps the normal equations well conditioned when some input directions are never excited.
const REFIT_DAMP: f64 = 0.01;

impl From<RpsMapping> for HashMapping {
    fn from(m: RpsMapping) -> Self {
        match m {
            RpsMapping::Fold => HashMapping::Fold,
            RpsMapping::Uniform => HashMapping::Uniform,
        }
    }
}

/// The slots used for `n` weights at ratio `c`: `ceil(n / c)`, at least 1.
pub fn slots_for(n: usize, ratio: f64) -> usize {
    ((n as f64 / ratio).ceil() as usize).clamp(1, n.max(1))
}

/// Least-squares projection of `w` (row-major, `hasher.n` values) onto the sharing subspace:
/// `z_j = mean over i→j of g_i·w_i`; empty slots stay 0. Sums run in f64, so a slot holding one
/// weight returns it bit for bit.
pub fn project(w: &[f32], hasher: &Hasher) -> Vec<f32> {
    let mut sum = vec![0f64; hasher.m];
    let mut count = vec![0u32; hasher.m];
    hasher.for_each(0, w.len(), |i, s, neg| {
        let v = f64::from(w[i]);
        sum[s] += if neg { -v } else { v };
        count[s] += 1;
    });
    sum.iter()
        .zip(&count)
        .map(|(s, &c)| {
            if c > 0 {
                (s / f64::from(c)) as f32
            } else {
                0.0
            }
        })
        .collect()
}

/// `Ŵ = A z`: every weight reads its signed slot.
fn gather(z: &[f32], hasher: &Hasher, out: &mut [f32]) {
    hasher.for_each(0, out.len(), |i, s, neg| {
        out[i] = if neg { -z[s] } else { z[s] };
    });
}

/// `Aᵀ g`: each slot sums the signed values of its weights.
fn scatter(g: &[f32], hasher: &Hasher) -> Vec<f64> {
    let mut z = vec![0f64; hasher.m];
    hasher.for_each(0, g.len(), |i, s, neg| {
        let v = f64::from(g[i]);
        z[s] += if neg { -v } else { v };
    });
    z
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Output-aware refit: starting from `z0`, `iters` conjugate-gradient steps on
/// `Aᵀ A z H = Aᵀ W H` with `H = XᵀX + damp`, i.e. least squares of the layer's outputs on
/// the calibration inputs. Each step is one `[out, in] × [in, in]` product, on `device`.
#[allow(clippy::too_many_arguments)]
pub fn refit(
    w: &[f32],
    rows: usize,
    cols: usize,
    hasher: &Hasher,
    stats: &InputStats,
    z0: Vec<f32>,
    iters: usize,
    device: &Device,
) -> anyhow::Result<Vec<f32>> {
    anyhow::ensure!(
        stats.in_features == cols && stats.xtx.len() == cols * cols,
        "refit needs the {cols}×{cols} input Gram matrix, got {} values for {} inputs",
        stats.xtx.len(),
        stats.in_features
    );
    let mean_diag = (0..cols).map(|i| stats.xtx[i * cols + i]).sum::<f64>() / cols.max(1) as f64;
    if mean_diag <= 0.0 {
        return Ok(z0);
    }
    // H / mean_diag keeps values near 1 in f32.
    let mut h: Vec<f32> = stats.xtx.iter().map(|v| (v / mean_diag) as f32).collect();
    for i in 0..cols {
        h[i * cols + i] += REFIT_DAMP as f32;
    }
    let h = Tensor::from_vec(h, (cols, cols), device)?;
    // H is symmetric, so `M H` is the product below whatever the layout.
    let times_h = |m: &[f32]| -> anyhow::Result<Vec<f32>> {
        let t = Tensor::from_slice(m, (rows, cols), device)?;
        Ok(t.matmul(&h)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let mut buf = vec![0f32; rows * cols];
    let mut op = |z: &[f64]| -> anyhow::Result<Vec<f64>> {
        let zf: Vec<f32> = z.iter().map(|&v| v as f32).collect();
        gather(&zf, hasher, &mut buf);
        Ok(scatter(&times_h(&buf)?, hasher))
    };
    let b = scatter(&times_h(w)?, hasher);
    let mut x: Vec<f64> = z0.iter().map(|&v| f64::from(v)).collect();
    let ax = op(&x)?;
    let mut r: Vec<f64> = b.iter().zip(&ax).map(|(b, a)| b - a).collect();
    let mut p = r.clone();
    let mut rr = dot(&r, &r);
    let tol = 1e-10 * dot(&b, &b);
    for _ in 0..iters {
        if rr <= tol {
            break;
        }
        let ap = op(&p)?;
        let pap = dot(&p, &ap);
        if pap <= 0.0 {
            break;
        }
        let a = rr / pap;
        for ((xi, ri), (pi, api)) in x.iter_mut().zip(r.iter_mut()).zip(p.iter().zip(&ap)) {
            *xi += a * pi;
            *ri -= a * api;
        }
        let rr_new = dot(&r, &r);
        let beta = rr_new / rr;
        rr = rr_new;
        for (pi, ri) in p.iter_mut().zip(&r) {
            *pi = ri + beta * *pi;
        }
    }
    Ok(x.into_iter().map(|v| v as f32).collect())
}

/// Shares one layer's weights in a hashed array of `ceil(n / ratio)` slots (projection, then
/// the optional refit on `stats`).
pub fn share_linear(
    weight: &LinearWeight,
    knobs: &RpsKnobs,
    stats: Option<&InputStats>,
    seed: u64,
) -> anyhow::Result<LinearWeight> {
    let (rows, cols) = weight.shape();
    let n = rows * cols;
    anyhow::ensure!(n > 0, "cannot share an empty {rows}×{cols} matrix");
    let w = weight.to_dense()?.flatten_all()?.to_vec1::<f32>()?;
    let hasher = Hasher::new(knobs.mapping.into(), seed, n, slots_for(n, knobs.ratio));
    let mut z = project(&w, &hasher);
    if knobs.refit {
        let Some(stats) = stats else {
            anyhow::bail!("rps.refit needs calibration statistics, and none were gathered");
        };
        let device = weight.device();
        z = refit(
            &w,
            rows,
            cols,
            &hasher,
            stats,
            z,
            knobs.refit_iters,
            &device,
        )?;
    }
    Ok(LinearWeight::Hashed {
        hashed: Arc::new(HashedWeight {
            rows,
            cols,
            hasher,
            z,
        }),
        bias: weight.bias().cloned(),
    })
}

/// Weights per stored value over the shared layers (1 when none are shared).
pub fn model_rps_ratio(model: &Model) -> f64 {
    let (mut n, mut m) = (0usize, 0usize);
    for block in &model.transformer.blocks {
        for kind in crate::model::LinearKind::ALL {
            if let LinearWeight::Hashed { hashed, .. } = block.linear(kind) {
                n += hashed.hasher.n;
                m += hashed.hasher.m;
            }
        }
    }
    if m == 0 { 1.0 } else { n as f64 / m as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn gaussian(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        let mut u = || ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        (0..n)
            .map(|_| ((-2.0 * u().ln()).sqrt() * (std::f64::consts::TAU * u()).cos()) as f32)
            .collect()
    }

    fn rel_err(w: &[f32], z: &[f32], h: &Hasher) -> f64 {
        let mut wh = vec![0f32; w.len()];
        gather(z, h, &mut wh);
        let num: f64 = w
            .iter()
            .zip(&wh)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        num / w.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>()
    }

    #[test]
    fn fold_at_ratio_one_is_bit_exact() {
        let w = gaussian(3000, 1);
        let h = Hasher::new(HashMapping::Fold, 9, 3000, slots_for(3000, 1.0));
        let z = project(&w, &h);
        let mut back = vec![0f32; 3000];
        gather(&z, &h, &mut back);
        assert_eq!(back, w);
    }

    #[test]
    fn error_follows_one_minus_one_over_c() {
        let n = 100_000;
        let w = gaussian(n, 2);
        for c in [1.5, 2.0, 4.0] {
            let h = Hasher::new(HashMapping::Fold, 5, n, slots_for(n, c));
            let e = rel_err(&w, &project(&w, &h), &h);
            assert!((e - (1.0 - 1.0 / c)).abs() < 0.01, "fold c={c}: {e}");
        }
        // Uniform hashing at c = 1 leaves ~1/e of slots empty: error ≈ 0.368.
        let h = Hasher::new(HashMapping::Uniform, 5, n, n);
        let e = rel_err(&w, &project(&w, &h), &h);
        assert!((e - (-1f64).exp()).abs() < 0.01, "uniform c=1: {e}");
    }

    #[test]
    fn projection_is_idempotent_and_least_squares_optimal() {
        let n = 5000;
        let w = gaussian(n, 3);
        let h = Hasher::new(HashMapping::Fold, 11, n, slots_for(n, 3.0));
        let z = project(&w, &h);
        let mut wh = vec![0f32; n];
        gather(&z, &h, &mut wh);
        let z2 = project(&wh, &h);
        for (a, b) in z.iter().zip(&z2) {
            assert!((a - b).abs() < 1e-6);
        }
        let base = rel_err(&w, &z, &h);
        for j in [0, 17, h.m - 1] {
            for d in [-1e-2f32, 1e-2] {
                let mut zp = z.clone();
                zp[j] += d;
                assert!(rel_err(&w, &zp, &h) > base);
            }
        }
    }

    #[test]
    fn flipping_every_sign_leaves_the_reconstruction_unchanged() {
        // With all signs flipped the projection flips z, so ±z[h(i)] is the same weight.
        let n = 2000;
        let w = gaussian(n, 4);
        let h = Hasher::new(HashMapping::Fold, 13, n, 700);
        let z = project(&w, &h);
        let mut flipped_sum = vec![0f64; h.m];
        let mut count = vec![0f64; h.m];
        h.for_each(0, n, |i, s, neg| {
            let v = f64::from(w[i]);
            flipped_sum[s] += if neg { v } else { -v };
            count[s] += 1.0;
        });
        h.for_each(0, n, |_, s, neg| {
            let zf = (flipped_sum[s] / count[s]) as f32;
            let (a, b) = if neg { (-z[s], zf) } else { (z[s], -zf) };
            assert!((a - b).abs() < 1e-6);
        });
    }

    fn stats_from(x: &[f32], tokens: usize, cols: usize) -> InputStats {
        let mut xtx = vec![0f64; cols * cols];
        for t in 0..tokens {
            for a in 0..cols {
                for b in 0..cols {
                    xtx[a * cols + b] += f64::from(x[t * cols + a]) * f64::from(x[t * cols + b]);
                }
            }
        }
        InputStats {
            col_sq_norms: (0..cols).map(|a| xtx[a * cols + a]).collect(),
            xtx,
            in_features: cols,
            tokens,
        }
    }

    fn output_err(w: &[f32], wh: &[f32], x: &[f32], rows: usize, cols: usize) -> f64 {
        let mut e = 0.0;
        for xt in x.chunks_exact(cols) {
            for r in 0..rows {
                let d: f32 = (0..cols)
                    .map(|c| (w[r * cols + c] - wh[r * cols + c]) * xt[c])
                    .sum();
                e += f64::from(d).powi(2);
            }
        }
        e
    }

    #[test]
    fn refit_lowers_output_error_and_keeps_the_exact_case() {
        let (rows, cols, tokens) = (24, 32, 200);
        let w = gaussian(rows * cols, 5);
        // Correlated inputs with uneven column scales, like real activations.
        let base = gaussian(tokens * cols, 6);
        let x: Vec<f32> = base
            .chunks_exact(cols)
            .flat_map(|r| {
                (0..cols)
                    .map(|c| (r[c] + 0.8 * r[0]) * (1.0 + c as f32 / 4.0))
                    .collect::<Vec<_>>()
            })
            .collect();
        let stats = stats_from(&x, tokens, cols);
        let h = Hasher::new(
            HashMapping::Fold,
            3,
            rows * cols,
            slots_for(rows * cols, 2.0),
        );
        let z0 = project(&w, &h);
        let z1 = refit(&w, rows, cols, &h, &stats, z0.clone(), 50, &Device::Cpu).unwrap();
        let (mut w0, mut w1) = (vec![0f32; w.len()], vec![0f32; w.len()]);
        gather(&z0, &h, &mut w0);
        gather(&z1, &h, &mut w1);
        let (e0, e1) = (
            output_err(&w, &w0, &x, rows, cols),
            output_err(&w, &w1, &x, rows, cols),
        );
        assert!(e1 < 0.9 * e0, "refit {e1} vs projection {e0}");
        // At c = 1 with fold the projection is exact and the refit must keep it.
        let h1 = Hasher::new(HashMapping::Fold, 3, rows * cols, rows * cols);
        let z = refit(
            &w,
            rows,
            cols,
            &h1,
            &stats,
            project(&w, &h1),
            10,
            &Device::Cpu,
        )
        .unwrap();
        let mut back = vec![0f32; w.len()];
        gather(&z, &h1, &mut back);
        for (a, b) in w.iter().zip(&back) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn share_linear_counts_array_bytes_and_reports_the_ratio() {
        let (rows, cols) = (16, 40);
        let w = Tensor::from_vec(gaussian(rows * cols, 7), (rows, cols), &Device::Cpu).unwrap();
        let dense = LinearWeight::dense(w.clone(), None);
        let knobs = RpsKnobs {
            ratio: 4.0,
            mapping: RpsMapping::Fold,
            refit: false,
            refit_iters: 0,
        };
        let shared = share_linear(&dense, &knobs, None, 1).unwrap();
        assert_eq!(shared.size_bytes(), 160 * 4 + 8);
        assert_eq!(shared.form(), "rps");
        // The forward through the kernel equals a GEMM on the rebuilt matrix.
        let x = Tensor::from_vec(gaussian(2 * cols, 8), (2, cols), &Device::Cpu).unwrap();
        use candle_core::Module;
        let y = shared.forward(&x).unwrap();
        let want = x.matmul(&shared.to_dense().unwrap().t().unwrap()).unwrap();
        let d = (y - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-4);
        let refit = RpsKnobs {
            refit: true,
            ..knobs
        };
        assert!(
            share_linear(&dense, &refit, None, 1)
                .unwrap_err()
                .to_string()
                .contains("calibration")
        );
    }
}
