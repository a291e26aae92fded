//! Bitmask sparse rows: the kept values of an unstructured-pruned layer plus one bit per
//! weight saying where they go. At the ratios people prune to (30–70 %) it is the smallest
//! form: `4·kept + ⌈cols/16⌉·2` bytes a row against CSR's `6·kept`, and below dense from 3 %
//! sparsity on. Its kernel expands 16 weights at a time from the values with the mask
//! (AVX-512 `vexpandps`), so it reads only the stored bytes.

use rayon::prelude::*;

use super::sparse::SparseError;

/// A `rows × cols` matrix as kept values and per-row masks.
#[derive(Debug, Clone)]
pub struct BitmaskMatrix {
    pub rows: usize,
    pub cols: usize,
    /// Offset of each row's first value; `rows + 1` entries.
    row_start: Vec<u32>,
    /// `⌈cols/16⌉` words per row; bit `j` of word `w` is column `16·w + j`.
    mask: Vec<u16>,
    values: Vec<f32>,
}

impl BitmaskMatrix {
    /// Words per row.
    fn words(cols: usize) -> usize {
        cols.div_ceil(16)
    }

    /// Keeps the non-zero entries of the row-major `rows × cols` matrix `dense`.
    pub fn from_dense(dense: &[f32], rows: usize, cols: usize) -> Result<Self, SparseError> {
        if dense.len() != rows * cols {
            return Err(SparseError::Shape {
                rows,
                cols,
                got: dense.len(),
            });
        }
        let nnz = dense.iter().filter(|v| **v != 0.0).count();
        if u32::try_from(nnz).is_err() {
            return Err(SparseError::TooManyValues { nnz });
        }
        let words = Self::words(cols);
        let mut mask = vec![0u16; rows * words];
        let mut values = Vec::with_capacity(nnz);
        let mut row_start = Vec::with_capacity(rows + 1);
        row_start.push(0);
        for (r, row) in dense.chunks_exact(cols.max(1)).take(rows).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                if v != 0.0 {
                    mask[r * words + c / 16] |= 1 << (c % 16);
                    values.push(v);
                }
            }
            row_start.push(values.len() as u32);
        }
        Ok(Self {
            rows,
            cols,
            row_start,
            mask,
            values,
        })
    }

    /// The stored parts: row starts, masks, values.
    pub fn parts(&self) -> (&[u32], &[u16], &[f32]) {
        (&self.row_start, &self.mask, &self.values)
    }

    /// Rebuilds a matrix from [`Self::parts`], checking that the masks and row starts agree
    /// with the values and no bit lies past the last column.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        row_start: Vec<u32>,
        mask: Vec<u16>,
        values: Vec<f32>,
    ) -> Result<Self, SparseError> {
        let bad = |why: String| Err(SparseError::Parts(why));
        let words = Self::words(cols);
        if row_start.len() != rows + 1 || mask.len() != rows * words {
            return bad(format!(
                "{} row starts and {} mask words for {rows}×{cols}",
                row_start.len(),
                mask.len()
            ));
        }
        let tail_bits = cols % 16;
        for r in 0..rows {
            let m = &mask[r * words..(r + 1) * words];
            let count: u32 = m.iter().map(|w| w.count_ones()).sum();
            if row_start[r + 1].checked_sub(row_start[r]) != Some(count) {
                return bad(format!("row {r}: the mask and the row starts disagree"));
            }
            if tail_bits != 0 && m.last().is_some_and(|w| w >> tail_bits != 0) {
                return bad(format!("row {r}: a mask bit lies past column {cols}"));
            }
        }
        if row_start[0] != 0 || row_start[rows] as usize != values.len() {
            return bad(format!(
                "row starts do not end at the {} values",
                values.len()
            ));
        }
        Ok(Self {
            rows,
            cols,
            row_start,
            mask,
            values,
        })
    }

    /// Stored non-zeros.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Bytes as stored.
    pub fn size_bytes(&self) -> usize {
        Self::size_for(self.rows, self.cols, self.nnz())
    }

    /// The bytes of a `rows × cols` matrix keeping `nnz` values.
    pub fn size_for(rows: usize, cols: usize, nnz: usize) -> usize {
        nnz * 4 + rows * Self::words(cols) * 2 + (rows + 1) * 4
    }

    /// The dense row-major matrix.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            let mut k = self.row_start[r] as usize;
            for (c, o) in row.iter_mut().enumerate() {
                if self.bit(r, c) {
                    *o = self.values[k];
                    k += 1;
                }
            }
        }
        out
    }

    fn bit(&self, r: usize, c: usize) -> bool {
        (self.mask[r * Self::words(self.cols) + c / 16] >> (c % 16)) & 1 == 1
    }

    /// Row `r` times `x`.
    pub fn row_dot(&self, r: usize, x: &[f32]) -> f32 {
        let words = Self::words(self.cols);
        let mask = &self.mask[r * words..(r + 1) * words];
        let values = &self.values[self.row_start[r] as usize..self.row_start[r + 1] as usize];
        if simd::available() {
            return simd::row_dot(mask, values, x);
        }
        let mut acc = 0f32;
        let mut k = 0;
        for (w, &m) in mask.iter().enumerate() {
            let mut bits = m;
            while bits != 0 {
                let j = bits.trailing_zeros() as usize;
                acc += values[k] * x[w * 16 + j];
                k += 1;
                bits &= bits - 1;
            }
        }
        acc
    }

    /// `y [n, rows] = x [n, cols] Wᵀ`, rows split over rayon's pool.
    pub fn gemm(&self, x: &[f32], n: usize, y: &mut [f32]) {
        for (xr, yr) in x
            .chunks_exact(self.cols.max(1))
            .zip(y.chunks_exact_mut(self.rows.max(1)))
            .take(n)
        {
            yr.par_iter_mut()
                .enumerate()
                .with_min_len(32)
                .for_each(|(r, o)| *o = self.row_dot(r, xr));
        }
    }
}

#[allow(unsafe_code)]
mod simd {
    pub fn available() -> bool {
        crate::cpu::has_avx512f()
    }

    /// One row: per mask word, the next `popcount` values expanded into the set lanes.
    pub fn row_dot(mask: &[u16], values: &[f32], x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            assert!(available());
            assert!(x.len() <= mask.len() * 16);
            assert!(mask.len().saturating_sub(1) * 16 <= x.len());
            // SAFETY: AVX-512F is present; value loads read `popcount` values (bounds checked
            // word by word in the kernel) and x loads are masked to the columns below
            // `x.len()`.
            unsafe { row_dot_avx512(mask, values, x) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (mask, values, x);
            unreachable!("the AVX-512 kernel is only dispatched on x86_64");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,popcnt")]
    unsafe fn row_dot_avx512(mask: &[u16], values: &[f32], x: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        // One accumulator: indexing an array of them by the loop counter keeps them in memory.
        let mut acc = _mm512_setzero_ps();
        let mut k = 0usize;
        for (w, &m) in mask.iter().enumerate() {
            let c = w * 16;
            let in_range: __mmask16 = if c + 16 <= x.len() {
                0xffff
            } else {
                (1u16 << (x.len() - c)) - 1
            };
            let n = m.count_ones();
            // The hardware popcount the loop needs anyway doubles as the bounds check.
            assert!(
                k + n as usize <= values.len(),
                "bitmask row: more bits than values"
            );
            // The value stream's position depends on every mask before it, which keeps the
            // out-of-order core from running ahead; prefetch it explicitly.
            _mm_prefetch::<_MM_HINT_T0>(values.as_ptr().wrapping_add(k + 512).cast());
            let kept: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
            // SAFETY: the value load is masked to the popcount(m) values from `k` (in bounds);
            // the x load to columns below `x.len()`. The expand is the register form: the
            // memory form is microcoded and several times slower.
            let (v, xv) = unsafe {
                (
                    _mm512_maskz_expand_ps(m, _mm512_maskz_loadu_ps(kept, values.as_ptr().add(k))),
                    _mm512_maskz_loadu_ps(in_range, x.as_ptr().add(c)),
                )
            };
            acc = _mm512_fmadd_ps(v, xv, acc);
            k += n as usize;
        }
        _mm512_reduce_add_ps(acc)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_kernels_and_bytes() {
        for (rows, cols) in [(7, 50), (16, 64), (3, 1), (5, 17)] {
            let w: Vec<f32> = (0..rows * cols)
                .map(|i| {
                    if (i * 7 + i / 3) % 5 < 2 {
                        0.0
                    } else {
                        i as f32 / 9.0 - 3.0
                    }
                })
                .collect();
            let m = BitmaskMatrix::from_dense(&w, rows, cols).unwrap();
            assert_eq!(m.to_dense(), w);
            let nnz = w.iter().filter(|v| **v != 0.0).count();
            assert_eq!(
                m.size_bytes(),
                nnz * 4 + rows * cols.div_ceil(16) * 2 + (rows + 1) * 4
            );
            let x: Vec<f32> = (0..2 * cols).map(|i| (i % 13) as f32 / 4.0 - 1.5).collect();
            let mut y = vec![0f32; 2 * rows];
            m.gemm(&x, 2, &mut y);
            for t in 0..2 {
                for r in 0..rows {
                    let want: f32 = (0..cols).map(|c| w[r * cols + c] * x[t * cols + c]).sum();
                    assert!((y[t * rows + r] - want).abs() < 1e-4, "{rows}x{cols} r {r}");
                }
            }
            let (s, mk, v) = m.parts();
            let back =
                BitmaskMatrix::from_parts(rows, cols, s.to_vec(), mk.to_vec(), v.to_vec()).unwrap();
            assert_eq!(back.to_dense(), w);
        }
    }

    #[test]
    fn inconsistent_parts_are_refused() {
        let w = [1.0f32, 0.0, 2.0, 0.0, 0.0, 3.0];
        let m = BitmaskMatrix::from_dense(&w, 2, 3).unwrap();
        let (s, mk, v) = m.parts();
        assert!(BitmaskMatrix::from_parts(2, 3, s.to_vec(), mk.to_vec(), v[..2].to_vec()).is_err());
        assert!(
            BitmaskMatrix::from_parts(2, 3, s.to_vec(), vec![0b1000, 0b100], v.to_vec()).is_err()
        );
        assert!(BitmaskMatrix::from_parts(2, 3, vec![0, 1, 3], mk.to_vec(), v.to_vec()).is_err());
    }
}
