//! Dense linear algebra the numerics share (row-major `f64` slices): Cholesky through faer
//! (`cargo bench --bench linalg` measured it 2–5× faster than the blocked loop it replaced, at
//! Hessian sizes of 576–3072), a small triangular inverse and a vectorisable dot product.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{self, LltError};
use faer::{MatMut, Par};

/// In-place lower Cholesky `A = LLᵀ` of a row-major `n × n` matrix (only the lower triangle
/// is read and written), by faer on all rayon threads. Returns the failing pivot index if `A`
/// is not positive definite (or not finite).
pub fn cholesky_lower(a: &mut [f64], n: usize) -> Result<(), usize> {
    let par = Par::rayon(0);
    let mut scratch = MemBuffer::new(factor::cholesky_in_place_scratch::<f64>(
        n,
        par,
        Default::default(),
    ));
    factor::cholesky_in_place(
        MatMut::from_row_major_slice_mut(a, n, n),
        Default::default(),
        par,
        MemStack::new(&mut scratch),
        Default::default(),
    )
    .map(|_| ())
    .map_err(|LltError::NonPositivePivot { index }| index)
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
