//! Dense linear algebra the numerics share, tuned for the sizes they meet (Hessians of a few
//! thousand inputs): a blocked, parallel Cholesky, a small triangular inverse and a
//! vectorisable dot product. Row-major `f64` slices, no allocation beyond what each returns.

use rayon::prelude::*;

/// In-place blocked lower Cholesky `A = LLᵀ` of a row-major `n × n` matrix (only the lower
/// triangle is read and written). Returns the failing pivot index if `A` is not positive definite.
pub fn cholesky_lower(a: &mut [f64], n: usize) -> Result<(), usize> {
    const NB: usize = 64;
    let mut panel: Vec<f64> = Vec::new();
    for k0 in (0..n).step_by(NB) {
        let k1 = (k0 + NB).min(n);
        let nb = k1 - k0;
        // Diagonal block (earlier columns were already subtracted by the trailing updates).
        for i in k0..k1 {
            for j in k0..=i {
                let s = a[i * n + j] - dot(&a[i * n + k0..i * n + j], &a[j * n + k0..j * n + j]);
                if i == j {
                    if s <= 0.0 || !s.is_finite() {
                        return Err(i);
                    }
                    a[i * n + i] = s.sqrt();
                } else {
                    a[i * n + j] = s / a[j * n + j];
                }
            }
        }
        if k1 == n {
            break;
        }
        // Panel below the diagonal block: row-wise forward substitution, rows independent.
        let (top, bottom) = a.split_at_mut(k1 * n);
        let top: &[f64] = top;
        bottom.par_chunks_mut(n).for_each(|row| {
            for j in k0..k1 {
                let s = row[j] - dot(&row[k0..j], &top[j * n + k0..j * n + j]);
                row[j] = s / top[j * n + j];
            }
        });
        // Pack the panel contiguously so the rank-nb trailing update reads it from cache.
        let m = n - k1;
        panel.clear();
        panel.reserve(m * nb);
        for i in k1..n {
            panel.extend_from_slice(&a[i * n + k0..i * n + k1]);
        }
        let panel: &[f64] = &panel;
        a[k1 * n..]
            .par_chunks_mut(n)
            .enumerate()
            .for_each(|(ii, row)| {
                let pi = &panel[ii * nb..(ii + 1) * nb];
                for (jj, v) in row[k1..=k1 + ii].iter_mut().enumerate() {
                    *v -= dot(pi, &panel[jj * nb..(jj + 1) * nb]);
                }
            });
    }
    Ok(())
}

/// Inverse of a small `m × m` upper-triangular matrix given by `u(t, j)` (t ≤ j), row-major.
pub fn upper_inverse(m: usize, u: impl Fn(usize, usize) -> f64) -> Vec<f64> {
    let mut z = vec![0.0f64; m * m];
    // Column by column: U z_j = e_j solved by back substitution.
    for j in 0..m {
        for t in (0..=j).rev() {
            let mut s = if t == j { 1.0 } else { 0.0 };
            for l in t + 1..=j {
                s -= u(t, l) * z[l * m + j];
            }
            z[t * m + j] = s / u(t, t);
        }
    }
    z
}

/// Dot product with independent lanes so LLVM can vectorise it (a single f64 accumulator would
/// force strict sequential order).
#[inline]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f64>() + tail
}
