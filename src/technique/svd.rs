//! The thin SVD the merge step needs (candle has none), through faer's bidiagonal SVD in f64:
//! unlike an eigendecomposition of the Gram matrix it does not square the condition number,
//! so small singular values keep their precision (`cargo bench --bench linalg`).

use candle_core::{Device, Tensor};
use faer::MatRef;

/// Singular values below this fraction of the largest count as zero (their vectors are not
/// determined by an f32 matrix anyway).
pub const RANK_TOL: f64 = 1e-6;

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

/// Thin SVD of the row-major `rows × cols` matrix `a`, keeping the singular values above
/// [`RANK_TOL`] of the largest.
pub fn thin_svd(a: &[f64], rows: usize, cols: usize) -> anyhow::Result<ThinSvd> {
    anyhow::ensure!(
        a.len() == rows * cols,
        "thin_svd: {} values for {rows}×{cols}",
        a.len()
    );
    if rows == 0 || cols == 0 {
        return Ok(ThinSvd {
            u: Vec::new(),
            s: Vec::new(),
            v: Vec::new(),
            rows,
            cols,
            k: 0,
        });
    }
    let d = MatRef::from_row_major_slice(a, rows, cols)
        .thin_svd()
        .map_err(|e| anyhow::anyhow!("the SVD did not converge: {e:?}"))?;
    let sv: Vec<f64> = d.S().column_vector().iter().copied().collect();
    let smax = sv.first().copied().unwrap_or(0.0);
    let k = sv
        .iter()
        .take_while(|&&s| s > 0.0 && s > RANK_TOL * smax)
        .count();
    let (u, v) = (d.U(), d.V());
    Ok(ThinSvd {
        u: (0..rows)
            .flat_map(|r| (0..k).map(move |i| u[(r, i)]))
            .collect(),
        s: sv[..k].to_vec(),
        v: (0..cols)
            .flat_map(|c| (0..k).map(move |i| v[(c, i)]))
            .collect(),
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
