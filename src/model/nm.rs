//! Compressed n:m semi-structured sparsity (2:4, 4:8): the inference form of an n:m-pruned
//! linear layer.
//!
//! Each group of `m` consecutive inputs of a row keeps exactly `n` values (f32) and their
//! positions inside the group as 4-bit indices, two per byte, so 2:4 costs 2·4 + 1 = 9 bytes per
//! 4 weights (56 % of dense f32) whatever the values are. Owns the packing and its kernels (a
//! row-parallel GEMV for decode, an axpy kernel over transposed activations for many rows); the
//! pruning that produces the pattern lives in `technique::prune`.

use rayon::prelude::*;

/// Why a matrix cannot be packed as n:m.
#[derive(Debug, thiserror::Error)]
pub enum NmError {
    #[error("packed parts do not fit the shape: {0}")]
    Parts(String),
    #[error("n:m = {n}:{m} must keep 0 < n < m <= 16 (4-bit positions)")]
    Pattern { n: usize, m: usize },
    #[error("{cols} input columns are not a multiple of m = {m}")]
    Width { cols: usize, m: usize },
    #[error("matrix has {got} values, expected {rows}×{cols}")]
    Shape {
        rows: usize,
        cols: usize,
        got: usize,
    },
    #[error("row {row}, group {group} has {nonzeros} non-zeros, more than n = {n}")]
    Dense {
        row: usize,
        group: usize,
        nonzeros: usize,
        n: usize,
    },
}

/// A `rows × cols` matrix with at most `n` non-zeros in every group of `m` inputs of a row.
#[derive(Debug, Clone)]
pub struct NmPacked {
    pub rows: usize,
    pub cols: usize,
    pub n: usize,
    pub m: usize,
    /// `rows × (cols / m) × n` kept values, row-major.
    values: Vec<f32>,
    /// The position (0..m) of each kept value, 4 bits each, low nibble first; each row starts
    /// on a byte boundary.
    index: Vec<u8>,
}

impl NmPacked {
    /// Packs the row-major `rows × cols` matrix `dense`, which must have at most `n` non-zeros
    /// per group (groups with fewer store explicit zeros).
    pub fn from_dense(
        dense: &[f32],
        rows: usize,
        cols: usize,
        n: usize,
        m: usize,
    ) -> Result<Self, NmError> {
        if n == 0 || n >= m || m > 16 {
            return Err(NmError::Pattern { n, m });
        }
        if !cols.is_multiple_of(m) {
            return Err(NmError::Width { cols, m });
        }
        if dense.len() != rows * cols {
            return Err(NmError::Shape {
                rows,
                cols,
                got: dense.len(),
            });
        }
        let groups = cols / m;
        let row_bytes = (groups * n).div_ceil(2);
        let mut values = Vec::with_capacity(rows * groups * n);
        let mut index = vec![0u8; rows * row_bytes];
        for r in 0..rows {
            let mut k = 0;
            for g in 0..groups {
                let group = &dense[r * cols + g * m..][..m];
                let nonzeros = group.iter().filter(|v| **v != 0.0).count();
                if nonzeros > n {
                    return Err(NmError::Dense {
                        row: r,
                        group: g,
                        nonzeros,
                        n,
                    });
                }
                // Non-zeros first, then zero-valued fillers at the lowest unused positions.
                let kept = (0..m)
                    .filter(|&j| group[j] != 0.0)
                    .chain((0..m).filter(|&j| group[j] == 0.0))
                    .take(n);
                for j in kept {
                    values.push(group[j]);
                    index[r * row_bytes + k / 2] |= (j as u8) << (4 * (k % 2));
                    k += 1;
                }
            }
        }
        Ok(Self {
            rows,
            cols,
            n,
            m,
            values,
            index,
        })
    }

    /// The stored arrays: kept values and their packed 4-bit positions (for serialising).
    pub fn parts(&self) -> (&[f32], &[u8]) {
        (&self.values, &self.index)
    }

    /// Rebuilds a packed matrix from [`Self::parts`], checking every length and position.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        n: usize,
        m: usize,
        values: Vec<f32>,
        index: Vec<u8>,
    ) -> Result<Self, NmError> {
        if n == 0 || n >= m || m > 16 {
            return Err(NmError::Pattern { n, m });
        }
        if !cols.is_multiple_of(m) {
            return Err(NmError::Width { cols, m });
        }
        let out = Self {
            rows,
            cols,
            n,
            m,
            values,
            index,
        };
        let per_row = cols / m * n;
        if out.values.len() != rows * per_row || out.index.len() != rows * out.row_bytes() {
            return Err(NmError::Parts(format!(
                "{} values and {} index bytes for {rows}×{cols} at {n}:{m}",
                out.values.len(),
                out.index.len()
            )));
        }
        // Padding nibbles (odd counts per row) are zero, so every nibble is a position < m.
        let bad_position = out
            .index
            .iter()
            .any(|b| usize::from(b & 0xf) >= m || usize::from(b >> 4) >= m);
        if bad_position {
            return Err(NmError::Parts(format!("a position is not below m = {m}")));
        }
        Ok(out)
    }

    fn row_bytes(&self) -> usize {
        (self.cols / self.m * self.n).div_ceil(2)
    }

    /// Exact bytes held: kept values and their 4-bit positions.
    pub fn size_bytes(&self) -> usize {
        self.values.len() * 4 + self.index.len()
    }

    /// The bytes of a `rows × cols` matrix kept `n` in every `m` (`cols` a multiple of `m`).
    pub fn size_for(rows: usize, cols: usize, n: usize, m: usize) -> usize {
        let kept = cols / m.max(1) * n;
        rows * (kept * 4 + kept.div_ceil(2))
    }

    /// Visits `(column, value)` of every kept entry of row `r`.
    #[inline]
    fn for_row(&self, r: usize, mut f: impl FnMut(usize, f32)) {
        let per_row = self.cols / self.m * self.n;
        let vals = &self.values[r * per_row..][..per_row];
        let idx = &self.index[r * self.row_bytes()..][..self.row_bytes()];
        for (k, v) in vals.iter().enumerate() {
            let pos = (idx[k / 2] >> (4 * (k % 2))) & 0xf;
            f((k / self.n) * self.m + usize::from(pos), *v);
        }
    }

    /// The row-major dense matrix.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for r in 0..self.rows {
            let row = &mut out[r * self.cols..][..self.cols];
            self.for_row(r, |c, v| row[c] += v);
        }
        out
    }

    /// One row's dot product. 2:4 (the common case) reads one index byte per group.
    #[inline]
    pub fn row_dot(&self, r: usize, x: &[f32]) -> f32 {
        if self.n == 2 {
            let groups = self.cols / self.m;
            let vals = &self.values[r * groups * 2..][..groups * 2];
            let idx = &self.index[r * groups..][..groups];
            if self.m == 4 && simd::available() {
                return simd::row_dot_2of4(vals, idx, &x[..groups * 4]);
            }
            let mut acc = [0f32; 2];
            for (g, (v, &b)) in vals.chunks_exact(2).zip(idx).enumerate() {
                let base = g * self.m;
                acc[0] += v[0] * x[base + usize::from(b & 0xf)];
                acc[1] += v[1] * x[base + usize::from(b >> 4)];
            }
            return acc[0] + acc[1];
        }
        let mut acc = 0f32;
        self.for_row(r, |c, v| acc += v * x[c]);
        acc
    }

    /// `y = W x` for one activation row, rows split over rayon's pool.
    pub fn gemv(&self, x: &[f32], y: &mut [f32]) {
        y.par_iter_mut()
            .enumerate()
            .with_min_len(32)
            .for_each(|(r, yr)| *yr = self.row_dot(r, x));
    }

    /// `y [t, rows] = x [t, cols] Wᵀ`, one GEMV per activation row.
    pub fn gemm(&self, x: &[f32], t: usize, y: &mut [f32]) {
        for (xr, yr) in x
            .chunks_exact(self.cols)
            .zip(y.chunks_exact_mut(self.rows))
            .take(t)
        {
            self.gemv(xr, yr);
        }
    }
}

/// 2:4 rows in AVX-512: 16 groups (64 inputs) a step, each kept value's input picked from the
/// 64 in registers by a two-table permute, so no input is gathered from memory.
#[allow(unsafe_code)]
mod simd {
    pub fn available() -> bool {
        crate::cpu::has_avx512f()
    }

    /// `Σ vals[2g + i] · x[4g + nibble_i(idx[g])]` over the groups of one row.
    pub fn row_dot_2of4(vals: &[f32], idx: &[u8], x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            assert!(available());
            assert!(vals.len() == 2 * idx.len() && x.len() == 4 * idx.len());
            // SAFETY: the features are present; the kernel reads whole 16-group steps inside
            // the asserted lengths and leaves the rest to the scalar tail.
            unsafe { row_dot_2of4_avx512(vals, idx, x) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (vals, idx, x);
            unreachable!("the AVX-512 kernel is only dispatched on x86_64");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn row_dot_2of4_avx512(vals: &[f32], idx: &[u8], x: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let steps = idx.len() / 16;
        // Lane j holds the value of group j/2 (of eight), kept input nibble j%2: its index
        // into the 32 inputs of those groups is 4·(j/2) + nibble.
        let shift = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
        let base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
        let nibble = _mm512_set1_epi32(0xf);
        let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let lanes = |bytes: __m128i| {
            let v = _mm512_and_si512(
                _mm512_srlv_epi32(_mm512_cvtepu8_epi32(bytes), shift),
                nibble,
            );
            _mm512_add_epi32(v, base)
        };
        for s in 0..steps {
            // SAFETY (all loads): step `s` reads 16 index bytes, 32 values and 64 inputs, all
            // inside the lengths asserted by the caller.
            let (b, v0, v1, xs) = unsafe {
                (
                    _mm_loadu_si128(idx.as_ptr().add(16 * s).cast::<__m128i>()),
                    _mm512_loadu_ps(vals.as_ptr().add(32 * s)),
                    _mm512_loadu_ps(vals.as_ptr().add(32 * s + 16)),
                    [0, 16, 32, 48].map(|o| _mm512_loadu_ps(x.as_ptr().add(64 * s + o))),
                )
            };
            // Each index byte twice, so lane j reads byte j/2.
            let (lo, hi) = (_mm_unpacklo_epi8(b, b), _mm_unpackhi_epi8(b, b));
            let x0 = _mm512_permutex2var_ps(xs[0], lanes(lo), xs[1]);
            let x1 = _mm512_permutex2var_ps(xs[2], lanes(hi), xs[3]);
            acc0 = _mm512_fmadd_ps(v0, x0, acc0);
            acc1 = _mm512_fmadd_ps(v1, x1, acc1);
        }
        let mut acc = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        for g in 16 * steps..idx.len() {
            let b = idx[g];
            acc += vals[2 * g] * x[4 * g + usize::from(b & 0xf)];
            acc += vals[2 * g + 1] * x[4 * g + usize::from(b >> 4)];
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps the `n` largest of every `m` (ties: lowest position).
    fn nm_matrix(rows: usize, cols: usize, n: usize, m: usize) -> Vec<f32> {
        let mut w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 + 5) % 23) as f32 - 11.0)
            .collect();
        for g in w.chunks_exact_mut(m) {
            let mut order: Vec<usize> = (0..m).collect();
            order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()).then(a.cmp(&b)));
            for &j in &order[n..] {
                g[j] = 0.0;
            }
        }
        w
    }

    #[test]
    fn round_trip_exact_bytes_and_kernels() {
        // 40 inputs: the scalar loop only; 152: two 16-group AVX-512 steps of 2:4 and a tail.
        for ((n, m), (rows, cols)) in [(2, 4), (4, 8), (1, 4), (3, 8)]
            .into_iter()
            .flat_map(|nm| [(nm, (19, 40)), (nm, (5, 152))])
        {
            let w = nm_matrix(rows, cols, n, m);
            let p = NmPacked::from_dense(&w, rows, cols, n, m).unwrap();
            assert_eq!(p.to_dense(), w, "{n}:{m}");
            let kept = rows * cols / m * n;
            assert_eq!(p.size_bytes(), kept * 4 + rows * (cols / m * n).div_ceil(2));
            let x: Vec<f32> = (0..3 * cols).map(|i| ((i * 3) % 7) as f32 - 3.0).collect();
            let mut y = vec![0f32; 3 * rows];
            p.gemm(&x, 3, &mut y);
            for t in 0..3 {
                for r in 0..rows {
                    let want: f32 = (0..cols).map(|c| w[r * cols + c] * x[t * cols + c]).sum();
                    assert_eq!(y[t * rows + r], want, "{n}:{m} t {t} r {r}");
                }
            }
        }
    }

    #[test]
    fn two_of_four_costs_nine_bytes_per_four_weights() {
        let w = nm_matrix(16, 64, 2, 4);
        let p = NmPacked::from_dense(&w, 16, 64, 2, 4).unwrap();
        assert_eq!(p.size_bytes(), 16 * 64 / 4 * 9);
    }

    #[test]
    fn violations_are_errors() {
        let dense = vec![1.0f32; 8];
        assert!(matches!(
            NmPacked::from_dense(&dense, 1, 8, 2, 4),
            Err(NmError::Dense { .. })
        ));
        assert!(NmPacked::from_dense(&dense, 1, 8, 2, 3).is_err());
        assert!(NmPacked::from_dense(&dense, 1, 8, 4, 4).is_err());
        assert!(NmPacked::from_dense(&dense, 2, 8, 2, 4).is_err());
    }
}
