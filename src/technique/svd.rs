//! A small thin SVD for the merge step (candle has none): the eigendecomposition of the Gram
//! matrix of the smaller side by cyclic Jacobi rotations, in f64.
//!
//! Squaring the matrix halves the relative precision of the smallest singular values, which is
//! harmless here: OPCM only needs the dominant subspace and the rank-one directions of a task
//! vector stored in f32, and directions below [`RANK_TOL`] of the largest are dropped as null.

use candle_core::{Device, Tensor};

/// Singular values below this fraction of the largest count as zero (their vectors are not
/// determined by an f32 matrix anyway).
pub const RANK_TOL: f64 = 1e-6;
/// Jacobi sweeps are capped; cyclic Jacobi converges quadratically, in well under 20.
const MAX_SWEEPS: usize = 40;

/// `A ≈ U diag(s) Vᵀ` with `k` numerically non-zero singular values, sorted descending.
#[derive(Debug, Clone)]
pub struct ThinSvd {
    /// `rows × k`, row-major, orthonormal columns.
    pub u: Vec<f64>,
    pub s: Vec<f64>,
    /// `cols × k`, row-major, orthonormal columns.
    pub v: Vec<f64>,
    pub rows: usize,
    pub cols: usize,
    pub k: usize,
}

/// `a [r, c] · b [c, d]` through candle's f64 GEMM.
pub fn matmul(a: &[f64], r: usize, c: usize, b: &[f64], d: usize) -> candle_core::Result<Vec<f64>> {
    let at = Tensor::from_slice(a, (r, c), &Device::Cpu)?;
    let bt = Tensor::from_slice(b, (c, d), &Device::Cpu)?;
    at.matmul(&bt)?.flatten_all()?.to_vec1::<f64>()
}

/// Row-major transpose.
pub fn transpose(a: &[f64], r: usize, c: usize) -> Vec<f64> {
    let mut t = vec![0f64; r * c];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = a[i * c + j];
        }
    }
    t
}

/// Eigen-decomposition of the symmetric `n × n` matrix `s` (row-major, overwritten): returns
/// the eigenvalues and the eigenvectors as the columns of a row-major `n × n` matrix.
pub fn symmetric_eigen(mut s: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = s.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
    for _ in 0..MAX_SWEEPS {
        let off: f64 = (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .map(|(i, j)| s[i * n + j] * s[i * n + j])
            .sum();
        if off <= 1e-30 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = s[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (s[q * n + q] - s[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let sn = t * c;
                // Sᵀ J: columns p, q; then Jᵀ S: rows p, q; V J: columns p, q.
                for k in 0..n {
                    let (kp, kq) = (s[k * n + p], s[k * n + q]);
                    s[k * n + p] = c * kp - sn * kq;
                    s[k * n + q] = sn * kp + c * kq;
                }
                for k in 0..n {
                    let (pk, qk) = (s[p * n + k], s[q * n + k]);
                    s[p * n + k] = c * pk - sn * qk;
                    s[q * n + k] = sn * pk + c * qk;
                }
                for k in 0..n {
                    let (kp, kq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * kp - sn * kq;
                    v[k * n + q] = sn * kp + c * kq;
                }
            }
        }
    }
    ((0..n).map(|i| s[i * n + i]).collect(), v)
}

/// Thin SVD of the row-major `rows × cols` matrix `a`.
pub fn thin_svd(a: &[f64], rows: usize, cols: usize) -> candle_core::Result<ThinSvd> {
    // Work on the Gram matrix of the smaller side; `wide` swaps the roles of U and V.
    let wide = cols > rows;
    let (m, p, mat) = if wide {
        (cols, rows, transpose(a, rows, cols))
    } else {
        (rows, cols, a.to_vec())
    };
    // mat is m × p (m ≥ p); G = matᵀ mat is p × p.
    let mt = transpose(&mat, m, p);
    let gram = matmul(&mt, p, m, &mat, p)?;
    let (evals, evecs) = symmetric_eigen(gram, p);
    let mut order: Vec<usize> = (0..p).collect();
    order.sort_by(|&x, &y| evals[y].total_cmp(&evals[x]));
    let smax = evals[order[0]].max(0.0).sqrt();
    let kept: Vec<usize> = order
        .into_iter()
        .filter(|&i| evals[i] > 0.0 && evals[i].sqrt() > RANK_TOL * smax)
        .collect();
    let k = kept.len();
    let s: Vec<f64> = kept.iter().map(|&i| evals[i].sqrt()).collect();
    // Right vectors (p × k) from the eigenvectors; left ones (m × k) as mat · v / σ.
    let mut right = vec![0f64; p * k];
    for (col, &i) in kept.iter().enumerate() {
        for r in 0..p {
            right[r * k + col] = evecs[r * p + i];
        }
    }
    let mut left = if k == 0 {
        Vec::new()
    } else {
        matmul(&mat, m, p, &right, k)?
    };
    for row in left.chunks_exact_mut(k.max(1)) {
        for (x, sv) in row.iter_mut().zip(&s) {
            *x /= sv;
        }
    }
    let (u, v) = if wide { (right, left) } else { (left, right) };
    Ok(ThinSvd {
        u,
        s,
        v,
        rows,
        cols,
        k,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5)
            .collect()
    }

    fn check(a: &[f64], rows: usize, cols: usize, rank: usize) {
        let d = thin_svd(a, rows, cols).unwrap();
        assert_eq!(d.k, rank, "{rows}×{cols}");
        assert!(d.s.windows(2).all(|w| w[0] >= w[1]));
        // Orthonormal columns.
        for (mat, n) in [(&d.u, rows), (&d.v, cols)] {
            for i in 0..d.k {
                for j in 0..d.k {
                    let g: f64 = (0..n).map(|r| mat[r * d.k + i] * mat[r * d.k + j]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((g - want).abs() < 1e-8, "{i} {j}: {g}");
                }
            }
        }
        // Reconstruction.
        for r in 0..rows {
            for c in 0..cols {
                let x: f64 = (0..d.k)
                    .map(|i| d.u[r * d.k + i] * d.s[i] * d.v[c * d.k + i])
                    .sum();
                assert!((x - a[r * cols + c]).abs() < 1e-9, "{r} {c}");
            }
        }
    }

    #[test]
    fn tall_wide_and_rank_deficient_matrices() {
        check(&random(30 * 12, 1), 30, 12, 12);
        check(&random(9 * 25, 2), 9, 25, 9);
        // Rank 3: a product of 20×3 and 3×15 factors.
        let (l, r) = (random(20 * 3, 3), random(3 * 15, 4));
        let a = matmul(&l, 20, 3, &r, 15).unwrap();
        check(&a, 20, 15, 3);
        check(&[0.0; 12], 3, 4, 0);
    }

    #[test]
    fn singular_values_of_a_known_matrix() {
        // diag(3, 2, 1) with rows and columns permuted has singular values 3, 2, 1.
        let a = [0.0, 2.0, 0.0, 0.0, 0.0, -1.0, 3.0, 0.0, 0.0];
        let d = thin_svd(&a, 3, 3).unwrap();
        for (s, want) in d.s.iter().zip([3.0, 2.0, 1.0]) {
            assert!((s - want).abs() < 1e-12);
        }
    }
}
