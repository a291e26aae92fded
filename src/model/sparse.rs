//! Compressed sparse rows (CSR): the inference form of an unstructured-pruned linear layer.
//!
//! Owns the storage (f32 values, u16 column indices, u32 row starts) and its kernels: a
//! row-parallel gather GEMV for decode and, for many activation rows, an axpy kernel over the
//! transposed activations. It does not decide when CSR is worth it (that is
//! `technique::prune`: the smallest of bitmask, CSR and dense, so CSR above ~94 % sparsity).

use rayon::prelude::*;

/// Activation rows at or above which the multi-row kernel is used instead of one GEMV per row.
const MATMUL_MIN_ROWS: usize = 4;

/// Why a matrix cannot be held in CSR.
#[derive(Debug, thiserror::Error)]
pub enum SparseError {
    #[error("sparse parts are inconsistent: {0}")]
    Parts(String),
    #[error("{cols} input columns do not fit 16-bit column indices")]
    TooWide { cols: usize },
    #[error("matrix has {got} values, expected {rows}×{cols}")]
    Shape {
        rows: usize,
        cols: usize,
        got: usize,
    },
    #[error("{nnz} non-zeros do not fit 32-bit row starts")]
    TooManyValues { nnz: usize },
}

/// A `rows × cols` matrix in compressed sparse rows.
#[derive(Debug, Clone)]
pub struct CsrMatrix {
    pub rows: usize,
    pub cols: usize,
    /// `row_start[r]..row_start[r + 1]` index the values of row `r`; `rows + 1` entries.
    row_start: Vec<u32>,
    col: Vec<u16>,
    values: Vec<f32>,
}

impl CsrMatrix {
    /// Keeps the non-zero entries of the row-major `rows × cols` matrix `dense`.
    pub fn from_dense(dense: &[f32], rows: usize, cols: usize) -> Result<Self, SparseError> {
        if cols > usize::from(u16::MAX) + 1 {
            return Err(SparseError::TooWide { cols });
        }
        if dense.len() != rows * cols {
            return Err(SparseError::Shape {
                rows,
                cols,
                got: dense.len(),
            });
        }
        let nnz = dense.iter().filter(|v| **v != 0.0).count();
        if nnz > u32::MAX as usize {
            return Err(SparseError::TooManyValues { nnz });
        }
        let mut row_start = Vec::with_capacity(rows + 1);
        let mut col = Vec::with_capacity(nnz);
        let mut values = Vec::with_capacity(nnz);
        row_start.push(0);
        for r in 0..rows {
            for (c, &v) in dense[r * cols..(r + 1) * cols].iter().enumerate() {
                if v != 0.0 {
                    col.push(c as u16);
                    values.push(v);
                }
            }
            row_start.push(values.len() as u32);
        }
        Ok(Self {
            rows,
            cols,
            row_start,
            col,
            values,
        })
    }

    /// The stored arrays: row starts, column indices, values (for serialising).
    pub fn parts(&self) -> (&[u32], &[u16], &[f32]) {
        (&self.row_start, &self.col, &self.values)
    }

    /// Rebuilds a matrix from [`Self::parts`], checking that row starts ascend to the number of
    /// values and every column index is inside the matrix.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        row_start: Vec<u32>,
        col: Vec<u16>,
        values: Vec<f32>,
    ) -> Result<Self, SparseError> {
        let bad = |why: String| Err(SparseError::Parts(why));
        if row_start.len() != rows + 1 || row_start.first() != Some(&0) {
            return bad(format!("{} row starts for {rows} rows", row_start.len()));
        }
        if row_start.windows(2).any(|w| w[0] > w[1])
            || row_start.last().map(|&l| l as usize) != Some(values.len())
            || col.len() != values.len()
        {
            return bad(format!(
                "row starts do not ascend to the {} values ({} column indices)",
                values.len(),
                col.len()
            ));
        }
        if col.iter().any(|&c| usize::from(c) >= cols) {
            return bad(format!("a column index is not below {cols}"));
        }
        Ok(Self {
            rows,
            cols,
            row_start,
            col,
            values,
        })
    }

    /// Stored non-zeros.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Exact bytes held: values, column indices and row starts.
    pub fn size_bytes(&self) -> usize {
        Self::size_for(self.rows, self.values.len())
    }

    /// The bytes of a `rows`-row matrix with `nnz` stored values.
    pub fn size_for(rows: usize, nnz: usize) -> usize {
        nnz * (4 + 2) + (rows + 1) * 4
    }

    /// The row-major dense matrix.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for r in 0..self.rows {
            let (a, b) = self.span(r);
            for k in a..b {
                out[r * self.cols + usize::from(self.col[k])] = self.values[k];
            }
        }
        out
    }

    fn span(&self, r: usize) -> (usize, usize) {
        (self.row_start[r] as usize, self.row_start[r + 1] as usize)
    }

    /// One row's dot product with `x`, four independent accumulators so the gathers overlap.
    #[inline]
    pub fn row_dot(&self, r: usize, x: &[f32]) -> f32 {
        let (a, b) = self.span(r);
        let (vals, cols) = (&self.values[a..b], &self.col[a..b]);
        let mut acc = [0f32; 4];
        let vc = vals.chunks_exact(4);
        let cc = cols.chunks_exact(4);
        let tail: f32 = vc
            .remainder()
            .iter()
            .zip(cc.remainder())
            .map(|(v, c)| v * x[usize::from(*c)])
            .sum();
        for (v, c) in vc.zip(cc) {
            for l in 0..4 {
                acc[l] += v[l] * x[usize::from(c[l])];
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    /// `y = W x` for one activation row, rows split over rayon's pool.
    pub fn gemv(&self, x: &[f32], y: &mut [f32]) {
        y.par_iter_mut()
            .enumerate()
            .with_min_len(32)
            .for_each(|(r, yr)| *yr = self.row_dot(r, x));
    }

    /// `y [n, rows] = x [n, cols] Wᵀ`. Few rows: one GEMV each. Many rows: transpose `x` so
    /// each non-zero becomes one contiguous axpy over all `n` activations.
    pub fn gemm(&self, x: &[f32], n: usize, y: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        if n < MATMUL_MIN_ROWS {
            for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact_mut(rows)) {
                self.gemv(xr, yr);
            }
            return;
        }
        let mut xt = vec![0f32; cols * n];
        for (t, xr) in x.chunks_exact(cols).enumerate() {
            for (c, v) in xr.iter().enumerate() {
                xt[c * n + t] = *v;
            }
        }
        let mut yt = vec![0f32; rows * n];
        yt.par_chunks_mut(n)
            .enumerate()
            .with_min_len(8)
            .for_each(|(r, out)| {
                let (a, b) = self.span(r);
                for k in a..b {
                    let v = self.values[k];
                    let src = &xt[usize::from(self.col[k]) * n..][..n];
                    for (o, s) in out.iter_mut().zip(src) {
                        *o += v * s;
                    }
                }
            });
        for (r, yr) in yt.chunks_exact(n).enumerate() {
            for (t, v) in yr.iter().enumerate() {
                y[t * rows + r] = *v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sparse_matrix(rows: usize, cols: usize, keep_every: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| {
                if (i * 7 + i / cols).is_multiple_of(keep_every) {
                    ((i * 13) % 17) as f32 - 8.0
                } else {
                    0.0
                }
            })
            .collect()
    }

    fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f32> {
        let mut y = vec![0f32; n * rows];
        for t in 0..n {
            for r in 0..rows {
                y[t * rows + r] = (0..cols).map(|c| w[r * cols + c] * x[t * cols + c]).sum();
            }
        }
        y
    }

    #[test]
    fn round_trip_and_exact_bytes() {
        let (rows, cols) = (37, 53);
        let w = sparse_matrix(rows, cols, 3);
        let m = CsrMatrix::from_dense(&w, rows, cols).unwrap();
        assert_eq!(m.to_dense(), w);
        let nnz = w.iter().filter(|v| **v != 0.0).count();
        assert_eq!(m.nnz(), nnz);
        assert_eq!(m.size_bytes(), nnz * 6 + (rows + 1) * 4);
    }

    #[test]
    fn kernels_match_the_dense_product() {
        let (rows, cols) = (41, 67);
        let w = sparse_matrix(rows, cols, 2);
        let m = CsrMatrix::from_dense(&w, rows, cols).unwrap();
        for n in [1, 3, 4, 9] {
            let x: Vec<f32> = (0..n * cols).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
            let mut y = vec![0f32; n * rows];
            m.gemm(&x, n, &mut y);
            // Small integers: every product and partial sum is exact in f32.
            assert_eq!(y, reference(&w, &x, rows, cols, n), "n = {n}");
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(CsrMatrix::from_dense(&[0.0; 5], 2, 3).is_err());
        assert!(CsrMatrix::from_dense(&[], 0, 70_000).is_err());
    }
}
