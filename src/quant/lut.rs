//! The inference form of a BCQ matrix and its lookup-table (LUT) kernel (ShiftAddLLM §3 /
//! LUT-GEMM): bit-planes packed along the input dimension, one byte per (row, plane, 8-input
//! chunk), and a GEMV that replaces multiplications by table lookups of ± partial sums.
//!
//! This module owns [`BcqPacked`]: its packing, its byte accounting, its dense reconstruction,
//! the 256-entry table construction and the GEMV/GEMM kernels.
//!
//! Key convention: bit `t` of the byte for chunk `c` is input `8c + t`; bit set = `+1`. Inputs
//! past `cols` (the last chunk when `cols % 8 != 0`) are padded with bit 0 in the planes and with
//! `x = 0` in the activations, so they contribute nothing.
//!
//! Table: `T_c[p] = Σ_t (2·bit_t(p) − 1)·x_{8c+t}`. Only the 128 entries with bit 7 set are built
//! (one add each by dynamic programming); the other half is their negation,
//! `T_c[255 − p] = −T_c[p]`, which therefore holds exactly.

use rayon::prelude::*;

use super::bcq;
use super::gptq::{QuantizedMatrix, ScaleLayout};

/// Inputs per LUT key.
pub const CHUNK: usize = 8;
/// Entries per table.
pub const TABLE: usize = 1 << CHUNK;
/// Output rows per rayon task: large enough to amortise scheduling, small enough to balance.
const ROW_TASK: usize = 16;

/// A BCQ matrix packed for the LUT kernel.
///
/// * `planes`: `rows × bits × ⌈cols/8⌉` bytes, index `(row·bits + b)·n_chunks + c`; each byte is
///   the LUT key of plane `b`, row `row`, inputs `8c..8c+8`.
/// * `scales`: `f32`, exactly the quantizer's values (APoT sums of powers of two when it used
///   `apot_terms > 0`), re-ordered for the kernel:
///   - Block layout: index `(g·bits + b)·n_chunks + c` (row group `g`, plane `b`, 8-column
///     chunk `c`), applied once per lookup;
///   - Column layout: index `(g·bits + b)·cols + k` (input column `k`), used to pre-scale the
///     activations before building tables.
#[derive(Clone, Debug, PartialEq)]
pub struct BcqPacked {
    /// Output rows.
    pub rows: usize,
    /// Input columns (before padding to a multiple of 8).
    pub cols: usize,
    /// Bit-planes `q`.
    pub bits: usize,
    /// Scale layout of the source matrix.
    pub layout: ScaleLayout,
    /// Rows sharing one scale set (the last group may be shorter).
    pub rows_per_group: usize,
    /// Packed keys; see the type docs.
    pub planes: Vec<u8>,
    /// Scales in kernel order; see the type docs.
    pub scales: Vec<f32>,
}

/// Fills `t` (256 entries) with the ± partial sums of `x` (up to 8 values, missing ones = 0).
///
/// DP over the 128 keys with bit 7 set: start from `x7 − Σ_{t<7} x_t` and flip one input at a
/// time (`+2·x_s`), then mirror with negation for the keys with bit 7 clear.
#[inline]
pub fn build_table(x: &[f32], t: &mut [f32]) {
    let mut v = [0.0f32; CHUNK];
    for (d, &s) in v.iter_mut().zip(x) {
        *d = s;
    }
    let (lo, hi) = t[..TABLE].split_at_mut(TABLE / 2);
    hi[0] = v[7] - (v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6]);
    for (s, &vs) in v.iter().enumerate().take(CHUNK - 1) {
        let step = 1usize << s;
        let two = 2.0 * vs;
        let (src, dst) = hi[..2 * step].split_at_mut(step);
        for (d, &a) in dst.iter_mut().zip(src.iter()) {
            *d = a + two;
        }
    }
    // T[127 − i] = −T[128 + i].
    for (d, &a) in lo.iter_mut().rev().zip(hi.iter()) {
        *d = -a;
    }
}

impl BcqPacked {
    /// Packs a quantized matrix.
    pub fn from_quantized(qm: &QuantizedMatrix) -> Self {
        let (rows, cols, q) = (qm.rows, qm.cols, qm.bits);
        let n_chunks = cols.div_ceil(CHUNK);
        let n_rg = qm.n_row_groups();
        let mut planes = vec![0u8; rows * q * n_chunks];
        planes
            .par_chunks_mut(q * n_chunks)
            .zip(qm.codes.par_chunks(cols))
            .for_each(|(dst, codes)| {
                for (c, chunk) in codes.chunks(CHUNK).enumerate() {
                    for b in 0..q {
                        let mut key = 0u8;
                        for (t, &code) in chunk.iter().enumerate() {
                            key |= ((code >> b) & 1) << t;
                        }
                        dst[b * n_chunks + c] = key;
                    }
                }
            });
        let scales = match qm.layout {
            ScaleLayout::Block { .. } => {
                let mut s = vec![0.0f32; n_rg * q * n_chunks];
                for g in 0..n_rg {
                    for b in 0..q {
                        for c in 0..n_chunks {
                            s[(g * q + b) * n_chunks + c] = qm.alphas[(c * n_rg + g) * q + b];
                        }
                    }
                }
                s
            }
            ScaleLayout::Column { .. } => {
                let mut s = vec![0.0f32; n_rg * q * cols];
                for g in 0..n_rg {
                    for b in 0..q {
                        for k in 0..cols {
                            s[(g * q + b) * cols + k] = qm.alphas[(k * n_rg + g) * q + b];
                        }
                    }
                }
                s
            }
        };
        Self {
            rows,
            cols,
            bits: q,
            layout: qm.layout,
            rows_per_group: qm.rows_per_group(),
            planes,
            scales,
        }
    }

    /// Number of 8-input chunks (`⌈cols/8⌉`).
    pub fn n_chunks(&self) -> usize {
        self.cols.div_ceil(CHUNK)
    }

    /// Number of row groups.
    pub fn n_row_groups(&self) -> usize {
        self.rows.div_ceil(self.rows_per_group.max(1))
    }

    /// Number of scale sets (each holds `bits` scales).
    pub fn n_scale_sets(&self) -> usize {
        self.scales.len() / self.bits.max(1)
    }

    /// Bytes as stored: `bits·rows·⌈cols/8⌉` plane bytes plus 4 bytes per `f32` scale, i.e. the
    /// spec's `⌈q·N·K/8⌉ + (#scale sets)·q·s/8` with `s = 32` (equal when `cols % 8 == 0`; the
    /// per-row padding of the last chunk adds up to 7 bits per row and plane otherwise).
    pub fn size_bytes(&self) -> usize {
        self.planes.len() + self.scales.len() * size_of::<f32>()
    }

    /// Scale of plane `b` for the weight at (`row`, `col`).
    fn scale(&self, row: usize, b: usize, col: usize) -> f32 {
        let g = row / self.rows_per_group.max(1);
        match self.layout {
            ScaleLayout::Block { .. } => {
                self.scales[(g * self.bits + b) * self.n_chunks() + col / CHUNK]
            }
            ScaleLayout::Column { .. } => self.scales[(g * self.bits + b) * self.cols + col],
        }
    }

    /// Dense `rows × cols` reconstruction from the packed form, bit-identical to
    /// [`QuantizedMatrix::dequantize`] (same [`bcq::codeword`] summation order).
    pub fn dequantize(&self) -> Vec<f32> {
        let (q, n_chunks) = (self.bits, self.n_chunks());
        let mut out = vec![0.0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                let keys = &self.planes[r * q * n_chunks..(r + 1) * q * n_chunks];
                let mut alphas = [0.0f32; bcq::MAX_BITS];
                for (k, v) in row.iter_mut().enumerate() {
                    let mut code = 0u8;
                    for (b, a) in alphas.iter_mut().enumerate().take(q) {
                        code |= ((keys[b * n_chunks + k / CHUNK] >> (k % CHUNK)) & 1) << b;
                        *a = self.scale(r, b, k);
                    }
                    *v = bcq::codeword(&alphas[..q], code);
                }
            });
        out
    }

    /// `y = W_q·x` by table lookup (`x.len() == cols`, `y.len() == rows`).
    ///
    /// Block layout: one table set per call (`256·⌈cols/8⌉` entries, built with ~1 add per entry)
    /// shared by all rows and planes; each lookup is multiplied by its (chunk, plane, row-group)
    /// scale: `q·⌈cols/8⌉` lookups + multiply-adds per row.
    ///
    /// Column layout: the scale changes with every input column, so activations are pre-scaled
    /// per (plane, row group), `x'_k = α[k,b,g]·x_k`, and each gets its own table set:
    /// `q·n_row_groups` times the table-building work and memory of the Block layout (e.g. 15
    /// table sets for q = 3 and 5 row groups), then `q·⌈cols/8⌉` lookups + adds per row without
    /// multiplies. This is ShiftAddLLM's "column-wise scales do not fully use the LUT" cost.
    ///
    /// Rows are split into rayon tasks of 16 rows; the caller controls the thread count through
    /// rayon's global pool.
    ///
    /// # Panics
    /// If `x.len() != cols` or `y.len() != rows`.
    pub fn gemv(&self, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), self.cols, "gemv: x has the wrong length");
        assert_eq!(y.len(), self.rows, "gemv: y has the wrong length");
        let (q, n_chunks) = (self.bits, self.n_chunks());
        let rpg = self.rows_per_group.max(1);
        let set_len = n_chunks * TABLE;
        match self.layout {
            ScaleLayout::Block { .. } => {
                let mut tables = vec![0.0f32; set_len];
                tables
                    .par_chunks_mut(TABLE)
                    .zip(x.par_chunks(CHUNK))
                    .with_min_len(16)
                    .for_each(|(t, xc)| build_table(xc, t));
                let tables: &[f32] = &tables;
                y.par_chunks_mut(ROW_TASK)
                    .enumerate()
                    .for_each(|(task, ys)| {
                        for (i, yr) in ys.iter_mut().enumerate() {
                            let r = task * ROW_TASK + i;
                            let g = r / rpg;
                            let mut acc = 0.0f32;
                            for b in 0..q {
                                let keys = &self.planes
                                    [(r * q + b) * n_chunks..(r * q + b + 1) * n_chunks];
                                let alpha = &self.scales
                                    [(g * q + b) * n_chunks..(g * q + b + 1) * n_chunks];
                                acc += lookup_scaled(tables, keys, alpha);
                            }
                            *yr = acc;
                        }
                    });
            }
            ScaleLayout::Column { .. } => {
                let n_rg = self.n_row_groups();
                // One table set per (row group, plane), from pre-scaled activations.
                let mut tables = vec![0.0f32; n_rg * q * set_len];
                tables
                    .par_chunks_mut(set_len)
                    .enumerate()
                    .for_each(|(gb, set)| {
                        let alpha = &self.scales[gb * self.cols..(gb + 1) * self.cols];
                        let mut xs = [0.0f32; CHUNK];
                        for ((t, xc), ac) in set
                            .chunks_mut(TABLE)
                            .zip(x.chunks(CHUNK))
                            .zip(alpha.chunks(CHUNK))
                        {
                            for ((d, &xv), &a) in xs.iter_mut().zip(xc).zip(ac) {
                                *d = a * xv;
                            }
                            build_table(&xs[..xc.len()], t);
                        }
                    });
                let tables: &[f32] = &tables;
                y.par_chunks_mut(ROW_TASK)
                    .enumerate()
                    .for_each(|(task, ys)| {
                        for (i, yr) in ys.iter_mut().enumerate() {
                            let r = task * ROW_TASK + i;
                            let g = r / rpg;
                            let mut acc = 0.0f32;
                            for b in 0..q {
                                let keys = &self.planes
                                    [(r * q + b) * n_chunks..(r * q + b + 1) * n_chunks];
                                let set = &tables[(g * q + b) * set_len..(g * q + b + 1) * set_len];
                                acc += lookup(set, keys);
                            }
                            *yr = acc;
                        }
                    });
            }
        }
    }

    /// `y = x·W_qᵀ` for `n` activation rows (`x`: `n × cols`, `y`: `n × rows`, row-major), as
    /// in prefill. Implemented as one [`Self::gemv`] per activation row (each parallel over
    /// output rows): tables are per activation row anyway, so this only forgoes re-using each
    /// loaded key byte across several tokens.
    ///
    /// # Panics
    /// If `x.len() != n·cols` or `y.len() != n·rows`.
    pub fn gemm(&self, x: &[f32], n: usize, y: &mut [f32]) {
        assert_eq!(x.len(), n * self.cols, "gemm: x has the wrong length");
        assert_eq!(y.len(), n * self.rows, "gemm: y has the wrong length");
        if self.cols == 0 || self.rows == 0 {
            y.iter_mut().for_each(|v| *v = 0.0);
            return;
        }
        for (xr, yr) in x.chunks(self.cols).zip(y.chunks_mut(self.rows)) {
            self.gemv(xr, yr);
        }
    }
}

/// `Σ_c α_c·T_c[key_c]` with four independent accumulators (the gathers cannot vectorise, but
/// the multiply-adds can overlap).
#[inline]
fn lookup_scaled(tables: &[f32], keys: &[u8], alpha: &[f32]) -> f32 {
    let mut acc = [0.0f32; 4];
    let kc = keys.chunks_exact(4);
    let ac = alpha.chunks_exact(4);
    let tc = tables.chunks_exact(4 * TABLE);
    let (kr, ar) = (kc.remainder(), ac.remainder());
    let tr = &tables[(keys.len() / 4) * 4 * TABLE..];
    for ((k, a), t) in kc.zip(ac).zip(tc) {
        for l in 0..4 {
            acc[l] += a[l] * t[l * TABLE + usize::from(k[l])];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (l, (&k, &a)) in kr.iter().zip(ar).enumerate() {
        s += a * tr[l * TABLE + usize::from(k)];
    }
    s
}

/// `Σ_c T_c[key_c]` with four independent accumulators.
#[inline]
fn lookup(tables: &[f32], keys: &[u8]) -> f32 {
    let mut acc = [0.0f32; 4];
    let kc = keys.chunks_exact(4);
    let kr = kc.remainder();
    let tc = tables.chunks_exact(4 * TABLE);
    let tr = &tables[(keys.len() / 4) * 4 * TABLE..];
    for (k, t) in kc.zip(tc) {
        for l in 0..4 {
            acc[l] += t[l * TABLE + usize::from(k[l])];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (l, &k) in kr.iter().enumerate() {
        s += tr[l * TABLE + usize::from(k)];
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::bcq::BcqOptions;
    use super::super::bcq::test_rng::Rng;
    use super::super::gptq::{SweepOptions, quantize_matrix};
    use super::*;

    fn quantized(
        rng: &mut Rng,
        rows: usize,
        cols: usize,
        bits: usize,
        layout: ScaleLayout,
    ) -> QuantizedMatrix {
        let w = rng.normals(rows * cols);
        let o = SweepOptions {
            bcq: BcqOptions {
                bits,
                rounds: 5,
                apot_terms: 3,
            },
            layout,
            error_feedback: false,
            ..SweepOptions::default()
        };
        quantize_matrix(&w, rows, cols, None, &o).unwrap()
    }

    fn dense_gemv(w: &[f32], rows: usize, cols: usize, x: &[f32]) -> Vec<f64> {
        (0..rows)
            .map(|r| {
                (0..cols)
                    .map(|c| f64::from(w[r * cols + c]) * f64::from(x[c]))
                    .sum()
            })
            .collect()
    }

    const LAYOUTS: [ScaleLayout; 5] = [
        ScaleLayout::Column { group_rows: 0 },
        ScaleLayout::Column { group_rows: 7 },
        ScaleLayout::Block { group: 0 },
        ScaleLayout::Block { group: 32 },
        ScaleLayout::Block { group: 128 },
    ];

    /// §5.1.10: LUT GEMV/GEMM = dense(dequantize)·x on odd shapes, bits 1–4, both layouts.
    #[test]
    fn lut_equals_dense() {
        let mut rng = Rng::new(21);
        for (rows, cols) in [(37, 53), (5, 130), (1, 1), (9, 8), (64, 64), (17, 200)] {
            for bits in 1..=4 {
                for layout in LAYOUTS {
                    let qm = quantized(&mut rng, rows, cols, bits, layout);
                    let packed = BcqPacked::from_quantized(&qm);
                    let wq = qm.dequantize();
                    // Packed reconstruction is bit-identical.
                    assert_eq!(packed.dequantize(), wq);
                    let n = 3;
                    let x = rng.normals(n * cols);
                    let mut y = vec![f32::NAN; n * rows];
                    packed.gemm(&x, n, &mut y);
                    for t in 0..n {
                        let xr = &x[t * cols..(t + 1) * cols];
                        let want = dense_gemv(&wq, rows, cols, xr);
                        let mut y1 = vec![f32::NAN; rows];
                        packed.gemv(xr, &mut y1);
                        // Scale of the terms being summed, for a relative tolerance.
                        let mag: f64 = (0..rows)
                            .flat_map(|r| (0..cols).map(move |c| (r, c)))
                            .map(|(r, c)| (f64::from(wq[r * cols + c]) * f64::from(xr[c])).abs())
                            .fold(0.0, f64::max)
                            * (cols as f64).sqrt();
                        for r in 0..rows {
                            let got = f64::from(y1[r]);
                            assert_eq!(y1[r].to_bits(), y[t * rows + r].to_bits());
                            assert!(
                                (got - want[r]).abs() <= 1e-4 * mag.max(1e-12),
                                "{rows}x{cols} bits={bits} {layout:?}: {got} vs {}",
                                want[r]
                            );
                        }
                    }
                }
            }
        }
    }

    /// Padding: planes of the last chunk may carry any bit past `cols`; x is padded with 0.
    #[test]
    fn padding_bits_are_inert() {
        let mut rng = Rng::new(22);
        let (rows, cols) = (6, 13);
        let qm = quantized(&mut rng, rows, cols, 3, ScaleLayout::Block { group: 16 });
        let mut packed = BcqPacked::from_quantized(&qm);
        let x = rng.normals(cols);
        let mut y0 = vec![0.0; rows];
        packed.gemv(&x, &mut y0);
        let nc = packed.n_chunks();
        for r in 0..rows {
            for b in 0..3 {
                packed.planes[(r * 3 + b) * nc + nc - 1] |= 0b1110_0000;
            }
        }
        let mut y1 = vec![0.0; rows];
        packed.gemv(&x, &mut y1);
        assert_eq!(y0, y1);
    }

    /// §5.1.11: LUT[0] = −Σx, LUT[255] = Σx, LUT[255−p] = −LUT[p], DP fill = direct sum.
    #[test]
    fn lut_identities() {
        let mut rng = Rng::new(23);
        for len in [8, 5, 1] {
            for _ in 0..50 {
                let x = rng.normals(len);
                let mut t = vec![0.0f32; TABLE];
                build_table(&x, &mut t);
                let sum: f64 = x.iter().map(|&v| f64::from(v)).sum();
                let abs: f64 = x.iter().map(|&v| f64::from(v).abs()).sum();
                let tol = 1e-6 * abs.max(1e-30);
                assert!((f64::from(t[255]) - sum).abs() <= tol);
                assert!((f64::from(t[0]) + sum).abs() <= tol);
                for p in 0..TABLE {
                    assert_eq!(t[255 - p].to_bits(), (-t[p]).to_bits());
                    let direct: f64 = x
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| {
                            if (p >> i) & 1 == 1 {
                                f64::from(v)
                            } else {
                                -f64::from(v)
                            }
                        })
                        .sum();
                    assert!((f64::from(t[p]) - direct).abs() <= tol, "p={p}");
                }
            }
        }
    }

    /// Kernel timing against a plain dense f32 GEMV; run with `--ignored --nocapture`.
    #[test]
    #[ignore]
    fn gemv_timing() {
        let mut rng = Rng::new(25);
        let (rows, cols) = (576, 1536);
        for layout in [
            ScaleLayout::Column { group_rows: 128 },
            ScaleLayout::Block { group: 128 },
        ] {
            let qm = quantized(&mut rng, rows, cols, 3, layout);
            let p = BcqPacked::from_quantized(&qm);
            let wq = qm.dequantize();
            let x = rng.normals(cols);
            let mut y = vec![0.0; rows];
            let reps = 200;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                p.gemv(&x, &mut y);
            }
            let lut = t.elapsed() / reps;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                y.par_iter_mut().enumerate().for_each(|(r, v)| {
                    *v = wq[r * cols..(r + 1) * cols]
                        .iter()
                        .zip(&x)
                        .map(|(a, b)| a * b)
                        .sum();
                });
            }
            let dense = t.elapsed() / reps;
            println!("{rows}x{cols} {layout:?}: LUT gemv {lut:?}, dense f32 gemv {dense:?}");
        }
    }

    /// §5.1.16: packed bytes = ⌈q·N·K/8⌉ + (#scale sets)·q·32/8, with the per-row padding when
    /// K is not a multiple of 8.
    #[test]
    fn footprint_accounting() {
        let mut rng = Rng::new(24);
        for (rows, cols) in [(64, 64), (128, 256), (37, 53)] {
            for bits in [2, 3, 4] {
                for layout in LAYOUTS {
                    let qm = quantized(&mut rng, rows, cols, bits, layout);
                    let p = BcqPacked::from_quantized(&qm);
                    let sets = qm.n_scale_sets();
                    assert_eq!(p.n_scale_sets(), sets);
                    let scale_bytes = sets * bits * 32 / 8;
                    assert_eq!(p.size_bytes(), bits * rows * cols.div_ceil(8) + scale_bytes);
                    if cols % 8 == 0 {
                        assert_eq!(
                            p.size_bytes(),
                            (bits * rows * cols).div_ceil(8) + scale_bytes
                        );
                    }
                }
            }
        }
        // The spec's example: q = 3, G = 128 weights per set, 16-bit scales → 3.375 bits/weight;
        // stored as f32 here, 3 + 3·32/128 = 3.75.
        let qm = quantized(&mut rng, 256, 128, 3, ScaleLayout::Block { group: 128 });
        let p = BcqPacked::from_quantized(&qm);
        let bpw = p.size_bytes() as f64 * 8.0 / (256.0 * 128.0);
        assert!((bpw - 3.75).abs() < 1e-12, "{bpw}");
    }
}
