//! The inference form of a BCQ matrix and its lookup-table (LUT) kernel (ShiftAddLLM /
//! LUT-GEMM; `docs/techniques.md`, Shift-add §6): bit-planes packed along the input dimension, one
//! byte per (row, plane, 8-input chunk), and a GEMV that replaces multiplications by table lookups
//! of ± partial sums.
//!
//! Keys are stored for blocks of 16 rows side by side (see [`BcqPacked`]): the 16 keys one
//! lookup step needs for 16 rows are one 16-byte load, so on CPUs with AVX-512 the kernel looks
//! up 16 rows at once with register permutes (two 16-entry half tables per 8-input chunk,
//! T-MAC style) instead of 16 scalar gathers.
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

use super::apot::ScaleCodes;
use super::gptq::{QuantizedMatrix, ScaleLayout};

/// Inputs per LUT key.
pub const CHUNK: usize = 8;
/// Entries per table.
pub const TABLE: usize = 1 << CHUNK;
/// Row groups past the current one whose scales the column kernel prefetches, one cache line
/// per (chunk, plane) step of the current group: two groups' `f32` scales are as many lines as
/// a group has steps. With one task per group, the next groups are the ones this thread or
/// another takes next.
const PREFETCH_GROUPS: usize = 2;

/// Rows whose keys are stored side by side (one AVX-512 register of f32 lanes).
pub const ROW_BLOCK: usize = 16;

/// A BCQ matrix packed for the LUT kernel.
///
/// * `planes`: `⌈rows/16⌉·16 × bits × ⌈cols/8⌉` bytes, index
///   `((rb·n_chunks + c)·bits + b)·16 + r % 16` with `rb = r / 16` (see [`Self::key_index`]);
///   each byte is the LUT key of plane `b`, row `r`, inputs `8c..8c+8`. Rows past `rows` (the
///   padding of the last block) hold zero keys that no output reads.
/// * `scales`: exactly the quantizer's values, as 16-bit APoT codes ([`ScaleCodes`]) when every
///   scale is a sum of at most three powers of two (the default `apot_terms = 3` or fewer), else
///   as `f32` (float scales); re-ordered for the kernel:
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
    /// Scales in kernel order, as stored; see the type docs.
    pub scales: Scales,
    /// The scales expanded once to `f32` for the kernels, which cannot afford a decode per
    /// product: the block layout applies one per 16-row lookup, the column layout multiplies a
    /// row group's into the inputs (decoding the 16-bit codes there took about a fifth of the
    /// fused column kernel's time). The block layout's are reordered to `[group][chunk][plane]`
    /// (see [`Self::block_scale_index`]), the order its kernel meets them, so each row block's
    /// scales are one forward stream it can prefetch. A working copy, not part of the stored
    /// form: counted by [`Self::kernel_bytes`], not [`Self::size_bytes`].
    scales_f32: Vec<f32>,
}

/// How a packed matrix stores its scales.
#[derive(Clone, Debug, PartialEq)]
pub enum Scales {
    /// 16-bit APoT codes (2 bytes per scale + 1).
    Apot(ScaleCodes),
    /// Plain `f32` (4 bytes per scale), for scales that are not short APoT sums.
    F32(Vec<f32>),
}

impl Scales {
    /// The compact form when every value fits it, else `f32`.
    pub fn new(values: Vec<f32>) -> Self {
        match ScaleCodes::encode(&values) {
            Some(codes) => Self::Apot(codes),
            None => Self::F32(values),
        }
    }

    /// Number of scales.
    pub fn len(&self) -> usize {
        match self {
            Self::Apot(c) => c.len(),
            Self::F32(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stored bytes.
    pub fn size_bytes(&self) -> usize {
        match self {
            Self::Apot(c) => c.size_bytes(),
            Self::F32(v) => v.len() * size_of::<f32>(),
        }
    }

    /// The scale at `i`.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Self::Apot(c) => c.get(i),
            Self::F32(v) => v[i],
        }
    }

    /// All scales as `f32`.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Self::Apot(c) => {
                let mut out = vec![0.0f32; c.len()];
                c.decode_into(0, &mut out);
                out
            }
            Self::F32(v) => v.clone(),
        }
    }
}

/// The kernels' `f32` scales from the stored order ([`BcqPacked`]'s `scales`): the column
/// layout's as they are, the block layout's `[group][plane][chunk]` reordered to
/// `[group][chunk][plane]`.
fn kernel_scales(stored: Vec<f32>, layout: ScaleLayout, q: usize, n_chunks: usize) -> Vec<f32> {
    match layout {
        ScaleLayout::Column { .. } => stored,
        ScaleLayout::Block { .. } => {
            let mut out = vec![0.0f32; stored.len()];
            for (g, set) in stored.chunks_exact(q * n_chunks).enumerate() {
                for (b, plane) in set.chunks_exact(n_chunks).enumerate() {
                    for (c, &a) in plane.iter().enumerate() {
                        out[(g * n_chunks + c) * q + b] = a;
                    }
                }
            }
            out
        }
    }
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

/// The 16-entry tables of ± partial sums of the first and last four of up to 8 inputs
/// (`out[..16]`, `out[16..]`; missing inputs are 0): `lo[n] + hi[m]` is the full 256-entry
/// table at key `n | m << 4`, what the AVX-512 kernels hold in two registers.
#[inline]
pub fn half_table(x: &[f32], out: &mut [f32]) {
    let mut v = [0.0f32; CHUNK];
    for (d, &s) in v.iter_mut().zip(x) {
        *d = s;
    }
    for (half, table) in out[..32].chunks_exact_mut(16).enumerate() {
        let xs = &v[half * 4..half * 4 + 4];
        // Key 0 is all minus; setting bit t adds 2·x_t.
        table[0] = -(xs[0] + xs[1] + xs[2] + xs[3]);
        for (t, &xt) in xs.iter().enumerate() {
            let step = 1usize << t;
            let (src, dst) = table[..2 * step].split_at_mut(step);
            for (d, &a) in dst.iter_mut().zip(src.iter()) {
                *d = a + 2.0 * xt;
            }
        }
    }
}

impl BcqPacked {
    /// Packs a quantized matrix.
    pub fn from_quantized(qm: &QuantizedMatrix) -> Self {
        let (rows, cols, q) = (qm.rows, qm.cols, qm.bits);
        let n_chunks = cols.div_ceil(CHUNK);
        let n_rg = qm.n_row_groups();
        let padded_rows = rows.div_ceil(ROW_BLOCK) * ROW_BLOCK;
        let block_len = ROW_BLOCK * q * n_chunks;
        let mut planes = vec![0u8; padded_rows * q * n_chunks];
        planes
            .par_chunks_mut(block_len)
            .enumerate()
            .for_each(|(rb, dst)| {
                for lane in 0..ROW_BLOCK {
                    let r = rb * ROW_BLOCK + lane;
                    if r >= rows {
                        break;
                    }
                    let codes = &qm.codes[r * cols..(r + 1) * cols];
                    for (c, chunk) in codes.chunks(CHUNK).enumerate() {
                        for b in 0..q {
                            let mut key = 0u8;
                            for (t, &code) in chunk.iter().enumerate() {
                                key |= ((code >> b) & 1) << t;
                            }
                            dst[(c * q + b) * ROW_BLOCK + lane] = key;
                        }
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
        let scales_f32 = kernel_scales(scales.clone(), qm.layout, q, n_chunks);
        let scales = Scales::new(scales);
        Self {
            rows,
            cols,
            bits: q,
            layout: qm.layout,
            rows_per_group: qm.rows_per_group(),
            planes,
            scales,
            scales_f32,
        }
    }

    /// Rebuilds a packed matrix from its stored parts (as a packed file holds them); the caller
    /// checks that the lengths fit the shape.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        bits: usize,
        layout: ScaleLayout,
        rows_per_group: usize,
        planes: Vec<u8>,
        scales: Scales,
    ) -> Self {
        let scales_f32 = kernel_scales(scales.to_f32(), layout, bits, cols.div_ceil(CHUNK));
        Self {
            rows,
            cols,
            bits,
            layout,
            rows_per_group,
            planes,
            scales,
            scales_f32,
        }
    }

    /// Position in `planes` of the key of row `r`, plane `b`, chunk `c`.
    pub fn key_index(&self, r: usize, b: usize, c: usize) -> usize {
        ((r / ROW_BLOCK * self.n_chunks() + c) * self.bits + b) * ROW_BLOCK + r % ROW_BLOCK
    }

    /// Position in the block layout's `f32` working scales of row group `g`'s scale for plane
    /// `b`, chunk `c`.
    fn block_scale_index(&self, g: usize, b: usize, c: usize) -> usize {
        (g * self.n_chunks() + c) * self.bits + b
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

    /// Bytes as stored: `bits·⌈rows/16⌉·16·⌈cols/8⌉` plane bytes plus the scales (2 bytes per
    /// APoT-coded scale and one base byte, or 4 per `f32` scale), i.e. Shift-add §6's
    /// `⌈q·N·K/8⌉ + (#scale sets)·q·s/8` with `s = 16` (+1 byte) or `s = 32` (equal when
    /// `cols % 8 == 0` and `rows % 16 == 0`; padding to whole chunks and row blocks adds the
    /// rest).
    pub fn size_bytes(&self) -> usize {
        self.planes.len() + self.scales.size_bytes()
    }

    /// Bytes one product reads: the planes and the `f32` working copy of the scales.
    pub fn kernel_bytes(&self) -> usize {
        self.planes.len() + self.scales_f32.len() * size_of::<f32>()
    }

    /// The bytes [`Self::size_bytes`] reports for a `rows × cols` matrix of `bits` planes in
    /// `layout`, computed without quantizing: planes padded to whole row blocks, one scale per
    /// plane and set, as 16-bit APoT codes (`apot`) or `f32`.
    pub fn size_for(
        rows: usize,
        cols: usize,
        bits: usize,
        layout: ScaleLayout,
        apot: bool,
    ) -> usize {
        let planes = rows.div_ceil(ROW_BLOCK) * ROW_BLOCK * bits * cols.div_ceil(CHUNK);
        let (row_groups, col_groups) = super::gptq::scale_sets(rows, cols, layout);
        let scales = row_groups * col_groups * bits;
        planes + if apot { 2 * scales + 1 } else { 4 * scales }
    }

    /// Dense `rows × cols` reconstruction from the packed form, bit-identical to
    /// [`QuantizedMatrix::dequantize`] (same [`super::bcq::codeword`] summation order).
    pub fn dequantize(&self) -> Vec<f32> {
        let (q, cols, n_chunks) = (self.bits, self.cols, self.n_chunks());
        let rpg = self.rows_per_group.max(1);
        let mut out = vec![0.0f32; self.rows * cols];
        // Plane by plane in ascending order from 0.0, exactly as `bcq::codeword` sums; the
        // prefill path calls this for every window, so 16 weights a step where AVX-512 runs.
        out.par_chunks_mut(cols.max(1)).enumerate().for_each_init(
            || (usize::MAX, Vec::new(), Vec::new()),
            |(group, alphas, keys), (r, row)| {
                let g = r / rpg;
                if *group != g {
                    self.column_scales_into(g, alphas);
                    *group = g;
                }
                // The row's keys, `[plane][chunk]`: every 16th byte of its block's
                // `[chunk][plane]` steps.
                keys.resize(q * n_chunks, 0);
                let from_row = &self.planes[self.key_index(r, 0, 0)..];
                for (i, step) in from_row.chunks(ROW_BLOCK).take(q * n_chunks).enumerate() {
                    keys[(i % q) * n_chunks + i / q] = step[0];
                }
                let done = if simd::available() {
                    simd::dequantize_row(keys, alphas, q, row)
                } else {
                    0
                };
                for (k, w) in row.iter_mut().enumerate().skip(done) {
                    for b in 0..q {
                        let a = alphas[b * cols + k];
                        let bit = (keys[b * n_chunks + k / CHUNK] >> (k % CHUNK)) & 1;
                        *w += if bit == 1 { a } else { -a };
                    }
                }
            },
        );
        out
    }

    /// Row group `g`'s scale of every (plane, input column), `[plane][column]`: the column
    /// layout's as stored, the block layout's repeated over each chunk's 8 columns.
    fn column_scales_into(&self, g: usize, out: &mut Vec<f32>) {
        let (q, cols) = (self.bits, self.cols);
        out.clear();
        match self.layout {
            ScaleLayout::Column { .. } => {
                out.extend_from_slice(&self.scales_f32[g * q * cols..(g + 1) * q * cols]);
            }
            ScaleLayout::Block { .. } => {
                for b in 0..q {
                    for c in 0..self.n_chunks() {
                        let a = self.scales_f32[self.block_scale_index(g, b, c)];
                        out.extend_from_slice(&[a; CHUNK]);
                    }
                    out.truncate((b + 1) * cols);
                }
            }
        }
    }

    /// `y = W_q·x` by table lookup (`x.len() == cols`, `y.len() == rows`).
    ///
    /// Block layout: one table set per call shared by all rows and planes; each lookup is
    /// multiplied by its (chunk, plane, row-group) scale: `q·⌈cols/8⌉` lookups + multiply-adds
    /// per row.
    ///
    /// Column layout: the scale changes with every input column, so activations are pre-scaled
    /// per (plane, row group), `x'_k = α[k,b,g]·x_k`, and each gets its own table set: `q` sets
    /// per row group, then `q·⌈cols/8⌉` lookups + adds per row without multiplies. This is
    /// ShiftAddLLM's "column-wise scales do not fully use the LUT" cost.
    ///
    /// Rows are split into rayon tasks of [`Self::task_rows`] rows; the caller controls the
    /// thread count through rayon's global pool. The decode engine splits the same
    /// [`Self::prepare`]/[`Self::rows_into`] work over its own threads.
    ///
    /// # Panics
    /// If `x.len() != cols` or `y.len() != rows`.
    pub fn gemv(&self, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), self.cols, "gemv: x has the wrong length");
        assert_eq!(y.len(), self.rows, "gemv: y has the wrong length");
        let mut shared = Vec::new();
        self.prepare(x, &mut shared);
        let step = self.task_rows();
        y.par_chunks_mut(step)
            .enumerate()
            .for_each_init(Vec::new, |scratch, (t, ys)| {
                self.rows_into(x, &shared, t * step, ys, scratch);
            });
    }

    /// Whether the AVX-512 kernels apply: the CPU has them and no 16-row block straddles two
    /// row groups.
    fn simd_rows(&self) -> bool {
        simd::available() && self.rows_per_group.max(1).is_multiple_of(ROW_BLOCK)
    }

    /// Rows one task of a row split covers: a multiple of 16, and for the column layout whole
    /// row groups (each task builds its groups' tables itself).
    pub fn task_rows(&self) -> usize {
        match self.layout {
            ScaleLayout::Column { .. } if self.simd_rows() => self.rows_per_group.max(ROW_BLOCK),
            ScaleLayout::Column { .. } => self.rows.max(1).next_multiple_of(ROW_BLOCK),
            ScaleLayout::Block { .. } => 4 * ROW_BLOCK,
        }
    }

    /// The per-call work every row shares, into `shared`: the Block layout's tables of `x`
    /// (half tables for the AVX-512 kernel, full 256-entry ones otherwise). The column layout
    /// has none: its tables depend on the row group.
    pub fn prepare(&self, x: &[f32], shared: &mut Vec<f32>) {
        shared.clear();
        if let ScaleLayout::Column { .. } = self.layout {
            return;
        }
        if self.simd_rows() {
            shared.resize(self.n_chunks() * 32, 0.0);
            for (xc, out) in x.chunks(CHUNK).zip(shared.chunks_exact_mut(32)) {
                half_table(xc, out);
            }
        } else {
            shared.resize(self.n_chunks() * TABLE, 0.0);
            for (t, xc) in shared.chunks_exact_mut(TABLE).zip(x.chunks(CHUNK)) {
                build_table(xc, t);
            }
        }
    }

    /// Whether [`Self::prepare`] makes the same tables of one input for both matrices (block
    /// layouts of one width and kernel).
    pub fn prepares_alike(&self, other: &Self) -> bool {
        let block = |p: &Self| matches!(p.layout, ScaleLayout::Block { .. });
        block(self)
            && block(other)
            && self.cols == other.cols
            && self.simd_rows() == other.simd_rows()
    }

    /// Rows `r0..r0 + y.len()` of `W_q·x` (`r0` a multiple of 16), given [`Self::prepare`]'s
    /// `shared`; `scratch` holds the column layout's scaled inputs of the current row group.
    pub fn rows_into(
        &self,
        x: &[f32],
        shared: &[f32],
        r0: usize,
        y: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        debug_assert!(r0.is_multiple_of(ROW_BLOCK));
        let (q, n_chunks) = (self.bits, self.n_chunks());
        let rpg = self.rows_per_group.max(1);
        let block_len = ROW_BLOCK * q * n_chunks;
        let simd = self.simd_rows();
        let blocks = y
            .chunks_mut(ROW_BLOCK)
            .zip(self.planes[r0 / ROW_BLOCK * block_len..].chunks(block_len))
            .enumerate()
            .map(|(i, (ys, keys))| (r0 / ROW_BLOCK + i, ys, keys));
        match self.layout {
            ScaleLayout::Block { .. } if simd => {
                let (rb0, n_blocks) = (r0 / ROW_BLOCK, y.len().div_ceil(ROW_BLOCK));
                let set = q * n_chunks;
                for rb in (0..n_blocks).step_by(simd::GROUP_BLOCKS) {
                    let count = (n_blocks - rb).min(simd::GROUP_BLOCKS);
                    let alpha_at = std::array::from_fn(|k| (rb0 + rb + k) * ROW_BLOCK / rpg * set);
                    let end = ((rb + count) * ROW_BLOCK).min(y.len());
                    let keys = &self.planes[(rb0 + rb) * block_len..];
                    simd::block_rows(
                        shared,
                        keys,
                        &self.scales_f32,
                        alpha_at,
                        q,
                        count,
                        &mut y[rb * ROW_BLOCK..end],
                    );
                }
            }
            ScaleLayout::Block { .. } => {
                for (rb, ys, keys) in blocks {
                    let mut acc = [0.0f32; ROW_BLOCK];
                    for (c, (t, chunk_keys)) in shared
                        .chunks_exact(TABLE)
                        .zip(keys.chunks_exact(q * ROW_BLOCK))
                        .enumerate()
                    {
                        for (b, lane_keys) in chunk_keys.chunks_exact(ROW_BLOCK).enumerate() {
                            for (lane, (a, &k)) in acc.iter_mut().zip(lane_keys).enumerate() {
                                let g = (rb * ROW_BLOCK + lane) / rpg;
                                let alpha = self
                                    .scales_f32
                                    .get(self.block_scale_index(g, b, c))
                                    .copied()
                                    .unwrap_or(0.0);
                                *a += alpha * t[usize::from(k)];
                            }
                        }
                    }
                    ys.copy_from_slice(&acc[..ys.len()]);
                }
            }
            ScaleLayout::Column { .. } if simd => {
                let (rb0, n_blocks) = (r0 / ROW_BLOCK, y.len().div_ceil(ROW_BLOCK));
                let mut rb = 0;
                let set = q * self.cols;
                let n_sets = self.n_row_groups();
                while rb < n_blocks {
                    let g = (rb0 + rb) * ROW_BLOCK / rpg;
                    let group_end = ((g + 1) * rpg / ROW_BLOCK).min(rb0 + n_blocks) - rb0;
                    self.column_scaled_inputs(x, g, scratch);
                    // The scales of the groups after this one, fetched while its lookups run
                    // (a group's scales are a stream of their own that decode reads cold).
                    let mut ahead = &self.scales_f32
                        [(g + 1).min(n_sets) * set..(g + 1 + PREFETCH_GROUPS).min(n_sets) * set];
                    // The group's row blocks, up to GROUP_BLOCKS at a time over one table pass.
                    while rb < group_end {
                        let count = (group_end - rb).min(simd::GROUP_BLOCKS);
                        let end = ((rb + count) * ROW_BLOCK).min(y.len());
                        let ys = &mut y[rb * ROW_BLOCK..end];
                        let keys = &self.planes[(rb0 + rb) * block_len..];
                        simd::column_group_rows(scratch, keys, q, count, ys, ahead);
                        ahead = &[];
                        rb += count;
                    }
                }
            }
            ScaleLayout::Column { .. } => {
                let set_len = n_chunks * TABLE;
                let mut group = usize::MAX;
                for (rb, ys, keys) in blocks {
                    for (lane, yr) in ys.iter_mut().enumerate() {
                        let g = (rb * ROW_BLOCK + lane) / rpg;
                        if g != group {
                            // One table set per plane, from activations pre-scaled for group g.
                            scratch.resize(q * set_len, 0.0);
                            for (b, set) in scratch.chunks_exact_mut(set_len).enumerate() {
                                let start = (g * q + b) * self.cols;
                                let alpha = &self.scales_f32[start..start + self.cols];
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
                            }
                            group = g;
                        }
                        let mut acc = 0.0f32;
                        for (b, set) in scratch.chunks_exact(set_len).enumerate() {
                            for (c, t) in set.chunks_exact(TABLE).enumerate() {
                                acc += t[usize::from(keys[(c * q + b) * ROW_BLOCK + lane])];
                            }
                        }
                        *yr = acc;
                    }
                }
            }
        }
    }

    /// Row group `g`'s activations times its per-column scales, `[plane][8·⌈cols/8⌉]` (zero
    /// past `cols`): what the fused column kernel builds its tables from.
    fn column_scaled_inputs(&self, x: &[f32], g: usize, out: &mut Vec<f32>) {
        let (q, cols, stride) = (self.bits, self.cols, CHUNK * self.n_chunks());
        out.clear();
        out.resize(q * stride, 0.0);
        for (b, plane) in out.chunks_exact_mut(stride).enumerate() {
            let alpha = &self.scales_f32[(g * q + b) * cols..][..cols];
            if simd::available() {
                simd::column_scaled(alpha, x, plane);
            } else {
                for ((z, &a), &xv) in plane.iter_mut().zip(alpha).zip(x) {
                    *z = a * xv;
                }
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

/// The AVX-512 kernels: 16 rows per step, each 8-bit key split into two nibbles that index two
/// 16-entry half tables held in registers (`vpermps`), so a lookup for 16 rows is one 16-byte
/// load, two permutes, an add and (Block layout) a multiply-add. The Column layout builds each
/// row group's half tables in registers from its scaled inputs and uses them for all the
/// group's row blocks before moving on.
#[allow(unsafe_code)]
mod simd {
    use super::ROW_BLOCK;

    /// Whether this CPU runs the AVX-512 kernel.
    pub fn available() -> bool {
        crate::cpu::has_avx512f()
    }

    /// Computes `count` (≤ [`GROUP_BLOCKS`]) row blocks into `ys`, over one pass of the shared
    /// half tables: `keys` starts at the first block's `[chunk][plane][16 lanes]` key bytes
    /// (blocks `block_len` apart), and block `k`'s `[chunk][plane]` scales start at
    /// `alpha[alpha_at[k]]`. Each block has its own accumulator, so the multiply-adds of a step
    /// do not wait on each other.
    pub fn block_rows(
        halves: &[f32],
        keys: &[u8],
        alpha: &[f32],
        alpha_at: [usize; GROUP_BLOCKS],
        q: usize,
        count: usize,
        ys: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            assert!(
                available(),
                "AVX-512 kernel called on a CPU without AVX-512"
            );
            let n_chunks = halves.len() / 32;
            assert!((1..=GROUP_BLOCKS).contains(&count) && ys.len() <= count * ROW_BLOCK);
            assert!(keys.len() >= count * n_chunks * q * ROW_BLOCK);
            assert!(
                alpha_at[..count]
                    .iter()
                    .all(|&a| a + n_chunks * q <= alpha.len())
            );
            let mut out = [[0.0f32; ROW_BLOCK]; GROUP_BLOCKS];
            // SAFETY: AVX-512F is present (checked above); all loads stay inside the slices,
            // whose lengths are asserted above.
            unsafe {
                match count {
                    1 => block_rows_avx512::<1>(halves, keys, alpha, alpha_at, q, &mut out),
                    2 => block_rows_avx512::<2>(halves, keys, alpha, alpha_at, q, &mut out),
                    3 => block_rows_avx512::<3>(halves, keys, alpha, alpha_at, q, &mut out),
                    _ => block_rows_avx512::<4>(halves, keys, alpha, alpha_at, q, &mut out),
                }
            }
            for (y, o) in ys.iter_mut().zip(out.iter().flatten()) {
                *y = *o;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (halves, keys, alpha, alpha_at, q, count, ys);
            unreachable!("the AVX-512 kernel is only dispatched on x86_64");
        }
    }

    /// Chunks ahead of the current one whose keys and scales the block kernel prefetches: a
    /// few hundred bytes of each block's stream (measured: 4 to 12 all help alike).
    const PREFETCH_CHUNKS: usize = 8;

    /// One row of [`super::BcqPacked::dequantize`], 16 weights a step: `keys` are the row's
    /// `[plane][chunk]` key bytes, `alphas` its `[plane][column]` scales. Each weight is
    /// `0 ± α₀ ± α₁ …` in plane order, as the scalar loop sums it. Returns the columns done (a
    /// multiple of 16); the caller finishes the rest.
    pub fn dequantize_row(keys: &[u8], alphas: &[f32], q: usize, row: &mut [f32]) -> usize {
        #[cfg(target_arch = "x86_64")]
        {
            assert!(
                available(),
                "AVX-512 kernel called on a CPU without AVX-512"
            );
            let cols = row.len();
            let n_chunks = cols.div_ceil(8);
            assert!(keys.len() >= q * n_chunks && alphas.len() >= q * cols);
            // SAFETY: AVX-512F is present (checked above); the lengths are asserted above.
            unsafe { dequantize_row_avx512(keys, alphas, q, row) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (keys, alphas, q, row);
            unreachable!("the AVX-512 kernel is only dispatched on x86_64");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn dequantize_row_avx512(
        keys: &[u8],
        alphas: &[f32],
        q: usize,
        row: &mut [f32],
    ) -> usize {
        use std::arch::x86_64::*;
        let cols = row.len();
        let n_chunks = cols.div_ceil(8);
        let steps = cols / 16;
        for s in 0..steps {
            let mut acc = _mm512_setzero_ps();
            for b in 0..q {
                // Two chunks' keys: bit t of the mask is column 16s + t, set = +α.
                let at = b * n_chunks + 2 * s;
                let m = u16::from(keys[at]) | u16::from(keys[at + 1]) << 8;
                // SAFETY: `b·cols + 16s + 16 ≤ q·cols`, within `alphas`.
                let a = unsafe { _mm512_loadu_ps(alphas.as_ptr().add(b * cols + 16 * s)) };
                let signed = _mm512_mask_blend_ps(m, _mm512_sub_ps(_mm512_setzero_ps(), a), a);
                acc = _mm512_add_ps(acc, signed);
            }
            // SAFETY: `16s + 16 ≤ cols`.
            unsafe { _mm512_storeu_ps(row.as_mut_ptr().add(16 * s), acc) };
        }
        16 * steps
    }

    /// Row blocks [`block_rows`] and [`column_group_rows`] serve in one pass over the tables
    /// (their accumulators stay in registers).
    pub const GROUP_BLOCKS: usize = 4;

    /// One plane's scaled inputs of a row group into `out` (`8·⌈cols/8⌉` values, zero past
    /// `cols`): its scales `alpha` times `x`.
    pub fn column_scaled(alpha: &[f32], x: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            assert!(
                available(),
                "AVX-512 kernel called on a CPU without AVX-512"
            );
            assert!(out.len() >= x.len() && alpha.len() == x.len());
            // SAFETY: AVX-512F is present (checked above); loads are masked to the `x.len()`
            // columns, stores to `out`'s length.
            unsafe { column_scaled_avx512(alpha, x, out) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (alpha, x, out);
            unreachable!("the AVX-512 kernel is only dispatched on x86_64");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn column_scaled_avx512(alpha: &[f32], x: &[f32], out: &mut [f32]) {
        use std::arch::x86_64::*;
        let lanes_mask = |n: usize| -> __mmask16 { if n >= 16 { 0xffff } else { (1u16 << n) - 1 } };
        for k in (0..out.len()).step_by(16) {
            let m = lanes_mask(x.len().saturating_sub(k));
            // SAFETY: masked to the columns that exist, and the stores to `out`'s length.
            unsafe {
                let xv = _mm512_maskz_loadu_ps(m, x.as_ptr().add(k));
                let av = _mm512_maskz_loadu_ps(m, alpha.as_ptr().add(k));
                _mm512_mask_storeu_ps(
                    out.as_mut_ptr().add(k),
                    lanes_mask(out.len() - k),
                    _mm512_mul_ps(av, xv),
                );
            }
        }
    }

    /// Column layout, fused: `count` (≤ [`GROUP_BLOCKS`]) row blocks of one row group into
    /// `ys`, with `keys` starting at the first block's keys and `z` the group's scaled inputs
    /// `[plane][8·n_chunks]`. Each (chunk, plane)'s two half tables are built in registers and
    /// used by every block at once, so tables never go through memory. One cache line of
    /// `ahead` is prefetched per (chunk, plane) step.
    pub fn column_group_rows(
        z: &[f32],
        keys: &[u8],
        q: usize,
        count: usize,
        ys: &mut [f32],
        ahead: &[f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            assert!(
                available(),
                "AVX-512 kernel called on a CPU without AVX-512"
            );
            let n_chunks = z.len() / (8 * q.max(1));
            assert!((1..=GROUP_BLOCKS).contains(&count) && ys.len() <= count * ROW_BLOCK);
            assert!(keys.len() >= count * n_chunks * q * ROW_BLOCK && z.len() >= q * 8 * n_chunks);
            let mut out = [[0.0f32; ROW_BLOCK]; GROUP_BLOCKS];
            // SAFETY: AVX-512F is present (checked above); loads stay inside the slices, whose
            // lengths are asserted above.
            unsafe {
                match count {
                    1 => column_group_avx512::<1>(z, keys, q, n_chunks, ahead, &mut out),
                    2 => column_group_avx512::<2>(z, keys, q, n_chunks, ahead, &mut out),
                    3 => column_group_avx512::<3>(z, keys, q, n_chunks, ahead, &mut out),
                    _ => column_group_avx512::<4>(z, keys, q, n_chunks, ahead, &mut out),
                }
            }
            for (y, o) in ys.iter_mut().zip(out.iter().flatten()) {
                *y = *o;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (z, keys, q, count, ys, ahead);
            unreachable!("the AVX-512 kernel is only dispatched on x86_64");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn column_group_avx512<const N: usize>(
        z: &[f32],
        keys: &[u8],
        q: usize,
        n_chunks: usize,
        ahead: &[f32],
        out: &mut [[f32; ROW_BLOCK]; GROUP_BLOCKS],
    ) {
        use std::arch::x86_64::*;
        // Sign patterns: lane n of `sign[t]` is +1 when bit t of n is set, else −1.
        let sign: [__m512; 4] = std::array::from_fn(|t| {
            let v: [f32; 16] = std::array::from_fn(|n| if (n >> t) & 1 == 1 { 1.0 } else { -1.0 });
            // SAFETY: 16 floats.
            unsafe { _mm512_loadu_ps(v.as_ptr()) }
        });
        let block_len = ROW_BLOCK * q * n_chunks;
        let stride = 8 * n_chunks;
        let mut acc = [_mm512_setzero_ps(); N];
        for c in 0..n_chunks {
            for b in 0..q {
                // One 64-byte line: 16 floats.
                let line = (c * q + b) * 16;
                if line < ahead.len() {
                    // SAFETY: within `ahead`.
                    _mm_prefetch::<_MM_HINT_T0>(unsafe { ahead.as_ptr().add(line).cast() });
                }
                // SAFETY (all): `c < n_chunks`, `b < q` and `r < N ≤ count`, within the
                // lengths the caller asserted.
                let zc = unsafe { z.as_ptr().add(b * stride + 8 * c) };
                let (lo, hi) = unsafe { (half_table(&sign, zc), half_table(&sign, zc.add(4))) };
                let at = (c * q + b) * ROW_BLOCK;
                for (r, a) in acc.iter_mut().enumerate() {
                    let k = unsafe {
                        _mm_loadu_si128(keys.as_ptr().add(r * block_len + at).cast::<__m128i>())
                    };
                    let idx = _mm512_cvtepu8_epi32(k);
                    // `vpermps` reads only bits 3:0 of each index: the low nibble needs no mask.
                    let v = _mm512_add_ps(
                        _mm512_permutexvar_ps(idx, lo),
                        _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(idx), hi),
                    );
                    *a = _mm512_add_ps(*a, v);
                }
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), a) };
        }
    }

    /// The 16 sums `±z₀±z₁±z₂±z₃` of the four values at `p` (lane `n` takes `+z_t` where bit
    /// `t` of `n` is set); broadcasts from memory run on the load ports, leaving the shuffle
    /// port to the lookups.
    ///
    /// # Safety
    /// `p` points at four readable `f32`s.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn half_table(
        sign: &[std::arch::x86_64::__m512; 4],
        p: *const f32,
    ) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        unsafe {
            let mut t = _mm512_mul_ps(sign[0], _mm512_set1_ps(*p));
            t = _mm512_fmadd_ps(sign[1], _mm512_set1_ps(*p.add(1)), t);
            t = _mm512_fmadd_ps(sign[2], _mm512_set1_ps(*p.add(2)), t);
            _mm512_fmadd_ps(sign[3], _mm512_set1_ps(*p.add(3)), t)
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn block_rows_avx512<const N: usize>(
        halves: &[f32],
        keys: &[u8],
        alpha: &[f32],
        alpha_at: [usize; GROUP_BLOCKS],
        q: usize,
        out: &mut [[f32; ROW_BLOCK]; GROUP_BLOCKS],
    ) {
        use std::arch::x86_64::*;
        let n_chunks = halves.len() / 32;
        let block_len = ROW_BLOCK * q * n_chunks;
        // `vpermps` reads only bits 3:0 of each index, so the low nibble needs no mask.
        let mut acc = [_mm512_setzero_ps(); N];
        for c in 0..n_chunks {
            // Each block's keys and scales, `PREFETCH_CHUNKS` chunks ahead: `2·N` short
            // streams at once, more than the hardware prefetchers follow.
            if c + PREFETCH_CHUNKS < n_chunks {
                let ahead = c + PREFETCH_CHUNKS;
                for (r, &s) in alpha_at[..N].iter().enumerate() {
                    // SAFETY: `ahead < n_chunks`, within the asserted lengths.
                    unsafe {
                        let k = keys.as_ptr().add(r * block_len + ahead * q * ROW_BLOCK);
                        _mm_prefetch::<_MM_HINT_T0>(k.cast());
                        _mm_prefetch::<_MM_HINT_T0>(alpha.as_ptr().add(s + ahead * q).cast());
                    }
                }
            }
            // SAFETY (all unsafe blocks): indices are within the asserted slice lengths.
            let lo = unsafe { _mm512_loadu_ps(halves.as_ptr().add(c * 32)) };
            let hi = unsafe { _mm512_loadu_ps(halves.as_ptr().add(c * 32 + 16)) };
            for b in 0..q {
                let at = (c * q + b) * ROW_BLOCK;
                for (r, a) in acc.iter_mut().enumerate() {
                    let k = unsafe {
                        _mm_loadu_si128(keys.as_ptr().add(r * block_len + at).cast::<__m128i>())
                    };
                    let idx = _mm512_cvtepu8_epi32(k);
                    let v = _mm512_add_ps(
                        _mm512_permutexvar_ps(idx, lo),
                        _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(idx), hi),
                    );
                    let s =
                        _mm512_set1_ps(unsafe { *alpha.get_unchecked(alpha_at[r] + c * q + b) });
                    *a = _mm512_fmadd_ps(s, v, *a);
                }
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), a) };
        }
    }
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

    const LAYOUTS: [ScaleLayout; 6] = [
        ScaleLayout::Column { group_rows: 0 },
        ScaleLayout::Column { group_rows: 7 },
        ScaleLayout::Column { group_rows: 32 },
        ScaleLayout::Block { group: 0 },
        ScaleLayout::Block { group: 32 },
        ScaleLayout::Block { group: 128 },
    ];

    /// Shift-add property 10: LUT GEMV/GEMM = dense(dequantize)·x on odd shapes, bits 1–4, both
    /// layouts.
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
                let at = packed.key_index(r, b, nc - 1);
                packed.planes[at] |= 0b1110_0000;
            }
        }
        let mut y1 = vec![0.0; rows];
        packed.gemv(&x, &mut y1);
        assert_eq!(y0, y1);
    }

    /// Shift-add property 11: LUT[0] = −Σx, LUT[255] = Σx, LUT[255−p] = −LUT[p], DP fill = direct
    /// sum.
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

    /// Shift-add property 16: packed bytes = ⌈q·N·K/8⌉ + (#scale sets)·q·16/8 + 1 for APoT-coded
    /// scales, with the padding of rows to whole 16-row blocks and of K to whole 8-input chunks;
    /// float scales (no APoT) are stored as f32.
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
                    assert!(matches!(p.scales, Scales::Apot(_)));
                    let scale_bytes = sets * bits * 16 / 8 + 1;
                    let padded_rows = rows.div_ceil(ROW_BLOCK) * ROW_BLOCK;
                    assert_eq!(
                        p.size_bytes(),
                        bits * padded_rows * cols.div_ceil(8) + scale_bytes
                    );
                    if cols % 8 == 0 && rows % ROW_BLOCK == 0 {
                        assert_eq!(
                            p.size_bytes(),
                            (bits * rows * cols).div_ceil(8) + scale_bytes
                        );
                    }
                }
            }
        }
        // Shift-add §6's example: q = 3, G = 128 weights per set, 16-bit scales → 3.375 bits/weight
        // (plus the one base byte).
        let qm = quantized(&mut rng, 256, 128, 3, ScaleLayout::Block { group: 128 });
        let p = BcqPacked::from_quantized(&qm);
        let bpw = (p.size_bytes() - 1) as f64 * 8.0 / (256.0 * 128.0);
        assert!((bpw - 3.375).abs() < 1e-12, "{bpw}");
        // Float scales cannot be coded: 4 bytes each, and the kernel still equals dense.
        let w = rng.normals(40 * 24);
        let o = SweepOptions {
            bcq: BcqOptions {
                bits: 3,
                rounds: 3,
                apot_terms: 0,
            },
            layout: ScaleLayout::Column { group_rows: 16 },
            error_feedback: false,
            ..SweepOptions::default()
        };
        let qm = quantize_matrix(&w, 40, 24, None, &o).unwrap();
        let p = BcqPacked::from_quantized(&qm);
        assert!(matches!(p.scales, Scales::F32(_)));
        assert_eq!(p.size_bytes(), 3 * 48 * 3 + qm.n_scale_sets() * 3 * 4);
        assert_eq!(p.dequantize(), qm.dequantize());
    }
}
