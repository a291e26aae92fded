//! Round-to-nearest layers in the form they are counted in: `bits`-bit codes plus an f16 scale
//! and an f16 zero offset per (row, group), multiplied straight from the codes.
//!
//! The model holds an RTN layer dequantized (the reference forward multiplies it densely);
//! [`RtnPacked::from_dequantized`] recovers the codes exactly from those values. That works
//! because the quantizer rounds each scale to f16 before using it, so every value is
//! `f32(scale) · k` for an integer `k`.

use half::f16;
use half::slice::HalfFloatSliceExt as _;

use crate::quant::act8::{BLOCK, Int8Blocks};
use crate::quant::rtn::{RtnRule, float_min_value};

use super::linear::Prepared;

/// An RTN matrix as codes: `w[r, c] = scale[r, g] · (code[r, c] + offset[r, g])`, or with an
/// f16 minimum `w[r, c] = scale[r, g] · code[r, c] + offset[r, g]`.
#[derive(Debug, Clone)]
pub struct RtnPacked {
    pub rows: usize,
    pub cols: usize,
    pub bits: usize,
    pub group: usize,
    /// Bytes per (row, group); each group's codes start on a byte, least significant bit first.
    group_bytes: usize,
    codes: Vec<u8>,
    scale: Vec<f16>,
    /// The integer the smallest code stands for (`−zero` of the quantizer), in f16.
    offset: Vec<f16>,
    /// Symmetric layers: every offset is `−2^(bits−1)`, implied rather than stored.
    symmetric: bool,
    /// The offset is the group's f16 minimum, added after the scale.
    float_min: bool,
    /// Inputs rounded to int8 blocks first ([`crate::quant::act8`]); products in integers.
    int8_activations: bool,
}

impl RtnPacked {
    /// Groups per row.
    pub fn groups(&self) -> usize {
        self.cols.div_ceil(self.group)
    }

    /// Bytes as stored: codes, scales and (asymmetric layers) offsets.
    pub fn size_bytes(&self) -> usize {
        let offsets = if self.symmetric { 0 } else { self.offset.len() };
        self.codes.len() + 2 * (self.scale.len() + offsets)
    }

    /// Recovers the codes of an RTN matrix from its dequantized values, or `None` when some
    /// group is not `f16 scale × integer` with at most `2^bits` levels (a matrix quantized
    /// before scales were f16, or not RTN at all). [`RtnRule::Symmetric`]: every group is
    /// `scale·k` with `k ∈ [−2^(bits−1), 2^(bits−1) − 1]` (the scale may be negative) and its
    /// codes are `k + 2^(bits−1)`, the offset implied. [`RtnRule::FloatMin`]: every group is
    /// `scale·q + min` with its f16 minimum at `q = 0`.
    pub fn from_dequantized(
        w: &[f32],
        rows: usize,
        cols: usize,
        bits: usize,
        group: usize,
        rule: RtnRule,
    ) -> Option<Self> {
        let symmetric = rule == RtnRule::Symmetric;
        let float_min = rule == RtnRule::FloatMin;
        if bits == 0 || bits > 8 || w.len() != rows * cols {
            return None;
        }
        let group = if group == 0 { cols.max(1) } else { group };
        let groups = cols.div_ceil(group);
        let group_bytes = (group * bits).div_ceil(8);
        let mut codes = vec![0u8; rows * groups * group_bytes];
        let mut scale = Vec::with_capacity(rows * groups);
        let mut offset = Vec::with_capacity(rows * groups);
        let mut ks = Vec::with_capacity(group);
        for r in 0..rows {
            for g in 0..groups {
                let vals = &w[r * cols + g * group..r * cols + ((g + 1) * group).min(cols)];
                let (mut s, min) = if float_min {
                    group_scale_min(vals, bits, &mut ks)?
                } else {
                    (group_scale(vals, bits, &mut ks)?, 0.0)
                };
                let kmin = if float_min {
                    0
                } else if symmetric {
                    let half = 1i32 << (bits - 1);
                    // The level without a positive twin is −half: a group reaching +half has
                    // a negative scale.
                    if ks.contains(&half) {
                        s = -s;
                        ks.iter_mut().for_each(|k| *k = -*k);
                    }
                    if ks.iter().any(|&k| k < -half || k >= half) {
                        return None;
                    }
                    -half
                } else {
                    ks.iter().copied().min().unwrap_or(0)
                };
                let out = &mut codes[(r * groups + g) * group_bytes..][..group_bytes];
                for (i, &k) in ks.iter().enumerate() {
                    let code = (k - kmin) as u32;
                    for b in 0..bits {
                        if (code >> b) & 1 == 1 {
                            let bit = i * bits + b;
                            out[bit / 8] |= 1 << (bit % 8);
                        }
                    }
                }
                scale.push(f16::from_f32(s));
                offset.push(f16::from_f32(if float_min { min } else { kmin as f32 }));
            }
        }
        Some(Self {
            rows,
            cols,
            bits,
            group,
            group_bytes,
            codes,
            scale,
            offset,
            symmetric,
            float_min,
            int8_activations: false,
        })
    }

    /// The same layer multiplying int8-rounded inputs (`on`) or the inputs as they are.
    pub fn with_int8_activations(mut self, on: bool) -> Self {
        self.int8_activations = on;
        self
    }

    /// Whether products round their inputs to int8 blocks first.
    pub fn int8_activations(&self) -> bool {
        self.int8_activations
    }

    /// The codes (`bits` each, least significant bit first, each (row, group) starting on a
    /// byte) and the f16 scale of every (row, group), row-major: what an exporter writes.
    pub fn parts(&self) -> (&[u8], &[f16], &[f16]) {
        (&self.codes, &self.scale, &self.offset)
    }

    /// The code of weight `j` of (row, group) `i`.
    pub fn code(&self, i: usize, j: usize) -> u32 {
        code_at(
            &self.codes[i * self.group_bytes..][..self.group_bytes],
            j,
            self.bits,
        )
    }

    /// Row `r`, dequantized into `out` (`cols` values): the embedding lookup of a tied,
    /// quantized head.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        for g in 0..self.groups() {
            let i = r * self.groups() + g;
            let (s, k0) = (self.scale[i].to_f32(), self.offset[i].to_f32());
            let codes = &self.codes[i * self.group_bytes..][..self.group_bytes];
            let lo = g * self.group;
            for (j, o) in out[lo..(lo + self.group).min(self.cols)]
                .iter_mut()
                .enumerate()
            {
                *o = self.value(code_at(codes, j, self.bits), s, k0);
            }
        }
    }

    /// The weight that `code` stands for in a group with scale `s` and offset `k0`.
    #[inline]
    fn value(&self, code: u32, s: f32, k0: f32) -> f32 {
        if self.float_min {
            float_min_value(code, s, k0)
        } else {
            s * (code as f32 + k0)
        }
    }

    /// Per-group sums of `x`, which the offsets multiply (`shared.f32s[g]`), or with int8
    /// activations `x` as int8 blocks.
    pub fn prepare(&self, x: &[f32], shared: &mut Prepared) {
        if self.int8_activations {
            self.prepare_int8(x, &mut shared.int8);
            return;
        }
        let sums = &mut shared.f32s;
        sums.clear();
        sums.extend(x.chunks(self.group).map(|c| c.iter().sum::<f32>()));
    }

    /// Rows `r0..r0 + y.len()` of `W·x`; `scratch` holds a row's decoded scales and offsets.
    pub fn rows_into(
        &self,
        x: &[f32],
        shared: &Prepared,
        r0: usize,
        y: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        if self.int8_activations {
            self.int8_rows_into(&shared.int8, r0, y, scratch);
            return;
        }
        let sums = &shared.f32s[..];
        let groups = self.groups();
        scratch.resize(2 * groups, 0.0);
        let (scales, offsets) = scratch.split_at_mut(groups);
        // The AVX-512 kernel takes groups of whole 16-code steps (32 at 4 bits; a shorter last
        // group included), every width from the packed codes.
        let step = if self.bits == 4 { 32 } else { 16 };
        if simd::available() && self.group.is_multiple_of(step) && self.cols.is_multiple_of(step) {
            self.matrix().rows_into(r0, y, sums, x, scales);
            return;
        }
        for (i, yr) in y.iter_mut().enumerate() {
            let r = r0 + i;
            let (scale, offset, codes) = self.row_parts(r);
            scale.convert_to_f32_slice(scales);
            offset.convert_to_f32_slice(offsets);
            // Σ_g s_g·k0_g·Σx_g (or Σ_g min_g·Σx_g): the offsets' share, one multiply-add a group.
            let mut base = 0.0f32;
            for ((s, k0), sx) in scales.iter().zip(offsets.iter()).zip(sums) {
                base += if self.float_min { *k0 } else { s * k0 } * sx;
            }
            let codes_dot = {
                let mut acc = 0.0f32;
                for (g, s) in scales.iter().enumerate() {
                    let gc = &codes[g * self.group_bytes..][..self.group_bytes];
                    let xs = &x[g * self.group..((g + 1) * self.group).min(self.cols)];
                    let part: f32 = xs
                        .iter()
                        .enumerate()
                        .map(|(j, xv)| code_at(gc, j, self.bits) as f32 * xv)
                        .sum();
                    acc += s * part;
                }
                acc
            };
            *yr = codes_dot + base;
        }
    }
}

/// How many rows ahead the int8 kernel prefetches a row's scales.
const PREFETCH_ROWS: usize = 4;

impl RtnPacked {
    /// Row `r`'s scales, offsets and codes.
    fn row_parts(&self, r: usize) -> (&[f16], &[f16], &[u8]) {
        let groups = self.groups();
        (
            &self.scale[r * groups..][..groups],
            &self.offset[r * groups..][..groups],
            &self.codes[r * groups * self.group_bytes..][..groups * self.group_bytes],
        )
    }

    /// The matrix in the vector kernels' terms.
    fn matrix(&self) -> simd::Matrix<'_> {
        simd::Matrix {
            codes: &self.codes,
            bits: self.bits,
            gbytes: self.group_bytes,
            group: self.group,
            groups: self.groups(),
            scale: self.scale.reinterpret_cast(),
            offset: self.offset.reinterpret_cast(),
            symmetric: self.symmetric,
            float_min: self.float_min,
        }
    }

    /// Whether products on int8 activations run the VNNI kernel (4- and 8-bit codes, groups
    /// of whole activation blocks).
    fn int8_direct(&self) -> bool {
        simd::int8_available()
            && matches!(self.bits, 4 | 8)
            && self.group.is_multiple_of(BLOCK)
            && self.cols.is_multiple_of(BLOCK)
    }

    /// Whether [`Self::prepare`] makes the same work of one input for both layers.
    pub fn prepares_alike(&self, other: &Self) -> bool {
        let reordered = |p: &Self| p.bits == 4 && p.int8_direct();
        self.cols == other.cols
            && self.int8_activations == other.int8_activations
            && if self.int8_activations {
                reordered(self) == reordered(other)
            } else {
                self.group == other.group
            }
    }

    /// `x` as int8 blocks; for the 4-bit VNNI kernel reordered the way its codes come out of
    /// their nibbles (low nibbles hold the even positions, high nibbles the odd ones). A pair
    /// of blocks becomes `[even₀, even₁, odd₀, odd₁]` (16 values each), a lone last block
    /// `[even, odd]`.
    fn prepare_int8(&self, x: &[f32], xq: &mut Int8Blocks) {
        xq.quantize(x);
        if self.bits == 4 && self.int8_direct() {
            const HALF: usize = BLOCK / 2;
            for pair in xq.q.chunks_mut(2 * BLOCK) {
                let blocks = pair.len() / BLOCK;
                let mut b = [0i8; 2 * BLOCK];
                for (i, v) in pair.iter().enumerate() {
                    let (block, j) = (i / BLOCK, i % BLOCK);
                    b[(j % 2) * blocks * HALF + block * HALF + j / 2] = *v;
                }
                pair.copy_from_slice(&b[..pair.len()]);
            }
        }
    }

    /// [`Self::rows_into`] on int8 activations: `Σ_b s_g·d_b·(Σ_j code_j·q_j + k0_g·Σ_j q_j)`
    /// over the activation blocks `b` of each group `g`, the inner sums in integers.
    fn int8_rows_into(&self, xq: &Int8Blocks, r0: usize, y: &mut [f32], scratch: &mut Vec<f32>) {
        let groups = self.groups();
        let direct = self.int8_direct();
        scratch.resize(if direct { xq.scales.len() } else { 2 * groups }, 0.0);
        if direct {
            self.matrix().int8_rows_into(r0, y, xq, scratch);
            return;
        }
        for (i, yr) in y.iter_mut().enumerate() {
            let r = r0 + i;
            let (scale, offset, codes) = self.row_parts(r);
            let (scales, offsets) = scratch.split_at_mut(groups);
            scale.convert_to_f32_slice(scales);
            offset.convert_to_f32_slice(offsets);
            let mut acc = 0.0f32;
            for (g, (s, k0)) in scales.iter().zip(offsets.iter()).enumerate() {
                let gc = &codes[g * self.group_bytes..][..self.group_bytes];
                let lo = g * self.group;
                for c in lo..(lo + self.group).min(self.cols) {
                    acc += self.value(code_at(gc, c - lo, self.bits), *s, *k0) * xq.value(c);
                }
            }
            *yr = acc;
        }
    }
}

/// The `bits`-bit code (`bits ≤ 8`) at position `i` of a group's bytes, least significant bit
/// first: it spans at most two bytes, read as one little-endian word.
fn code_at(bytes: &[u8], i: usize, bits: usize) -> u32 {
    debug_assert!((1..=8).contains(&bits));
    let bit = i * bits;
    let lo = u32::from(bytes[bit / 8]);
    let hi = bytes.get(bit / 8 + 1).map_or(0, |&b| u32::from(b));
    ((lo | hi << 8) >> (bit % 8)) & ((1 << bits) - 1)
}

/// The f16 scale and minimum of one [`RtnRule::FloatMin`] group and its codes (`ks`), or
/// `None` when the values are not `scale·q + min` with `q ∈ [0, 2^bits)` and `min` an f16 at
/// `q = 0`. Like [`group_scale`], the first divisor of the smallest gap that reproduces every
/// value bit for bit wins.
fn group_scale_min(vals: &[f32], bits: usize, ks: &mut Vec<i32>) -> Option<(f32, f32)> {
    ks.clear();
    let min = vals.iter().copied().fold(f32::INFINITY, f32::min);
    if !min.is_finite() || f16::from_f32(min).to_f32() != min {
        return None;
    }
    let mut sorted: Vec<f32> = vals.to_vec();
    sorted.sort_by(f32::total_cmp);
    sorted.dedup();
    let gap = sorted
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(f32::INFINITY, f32::min);
    if !gap.is_finite() {
        ks.extend(vals.iter().map(|_| 0));
        return Some((0.0, min));
    }
    let levels = 1i32 << bits;
    for d in 1..levels {
        let s = f16::from_f32(gap / d as f32).to_f32();
        if s <= 0.0 || !s.is_finite() {
            continue;
        }
        ks.clear();
        let exact = vals.iter().all(|&v| {
            let q = ((v - min) / s).round();
            ks.push(q as i32);
            (0.0..levels as f32).contains(&q)
                && float_min_value(q as u32, s, min).to_bits() == v.to_bits()
        });
        if exact {
            return Some((s, min));
        }
    }
    None
}

/// The f16 scale of one group and its values' integers (`ks`), or `None` when the values are
/// not `scale × integer` within `2^bits` levels. The smallest gap between distinct values is a
/// small multiple of the scale; the first divisor that reproduces every value bit for bit wins.
fn group_scale(vals: &[f32], bits: usize, ks: &mut Vec<i32>) -> Option<f32> {
    ks.clear();
    let mut sorted: Vec<f32> = vals.to_vec();
    sorted.sort_by(f32::total_cmp);
    sorted.dedup();
    let gap = sorted
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(f32::INFINITY, f32::min);
    if !gap.is_finite() {
        // One distinct value: zero (an all-zero group), or any value as scale × 1.
        let v = sorted.first().copied().unwrap_or(0.0);
        let s = if v == 0.0 { 0.0 } else { v.abs() };
        if f16::from_f32(s).to_f32() != s {
            return None;
        }
        ks.extend(
            vals.iter()
                .map(|_| if v < 0.0 { -1 } else { i32::from(v != 0.0) }),
        );
        return Some(s);
    }
    let levels = 1i32 << bits;
    for d in 1..levels {
        let s = f16::from_f32(gap / d as f32).to_f32();
        if s <= 0.0 || !s.is_finite() {
            continue;
        }
        ks.clear();
        let exact = vals.iter().all(|&v| {
            let k = (v / s).round();
            ks.push(k as i32);
            (s * k).to_bits() == v.to_bits() || (v == 0.0 && k == 0.0)
        });
        let span = ks.iter().max().zip(ks.iter().min()).map(|(a, b)| a - b);
        if exact && span.is_some_and(|d| d < levels) {
            return Some(s);
        }
    }
    None
}

/// AVX-512 code dots: 16 codes widened to f32 lanes and multiplied with the activations, each
/// group's partial vector scaled once, one horizontal sum per row.
#[allow(unsafe_code)]
mod simd {
    use crate::quant::act8::{BLOCK, Int8Blocks};

    pub fn available() -> bool {
        crate::cpu::has_avx512_bw_vl()
    }

    /// Asks for the cache line at `p` ahead of its use; nothing else happens.
    pub fn prefetch(p: *const i8) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint; it never faults, whatever the address.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = p;
    }

    /// The integer dot products of [`Int8Row`]: AVX-512 VNNI on 256-bit vectors.
    pub fn int8_available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            crate::cpu::has_avx512_bw_vl() && std::arch::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    impl Matrix<'_> {
        /// Rows `r0..r0 + y.len()` of the product with int8 activations `xq` (4- or 8-bit
        /// codes, groups of whole activation blocks; 4-bit rows take `xq` in the kernel's
        /// order, see `RtnPacked::prepare_int8`); `buf` holds one factor per activation block.
        pub fn int8_rows_into(&self, r0: usize, y: &mut [f32], xq: &Int8Blocks, buf: &mut [f32]) {
            #[cfg(target_arch = "x86_64")]
            {
                let (cols, blocks) = (xq.q.len(), xq.scales.len());
                let end = r0 + y.len();
                assert!(int8_available() && matches!(self.bits, 4 | 8));
                assert!(self.group.is_multiple_of(BLOCK) && cols == blocks * BLOCK);
                assert!(self.groups == cols.div_ceil(self.group));
                assert!(self.gbytes == self.group * self.bits / 8);
                assert!(self.codes.len() >= end * self.groups * self.gbytes);
                assert!(self.scale.len() >= end * self.groups);
                assert!(self.offset.len() >= end * self.groups);
                assert!(xq.sums.len() == blocks && buf.len() >= blocks);
                // SAFETY: AVX-512 VNNI/VL and F16C are present; every load stays within the
                // lengths asserted above.
                unsafe { int8_rows(self, r0, y, xq, buf) }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (r0, y, xq, buf);
                unreachable!("the VNNI kernel is only dispatched on x86_64");
            }
        }
    }

    /// [`Matrix::int8_rows_into`] row by row; the scales, a stream of their own and a few bytes
    /// a row, are fetched a few rows ahead.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn int8_rows(
        m: &Matrix<'_>,
        r0: usize,
        y: &mut [f32],
        xq: &Int8Blocks,
        buf: &mut [f32],
    ) {
        for (i, yr) in y.iter_mut().enumerate() {
            let r = r0 + i;
            if let Some(ahead) = m.scale.get((r + super::PREFETCH_ROWS) * m.groups) {
                prefetch(std::ptr::from_ref(ahead).cast());
            }
            // SAFETY: as asserted by `int8_rows_into`, and the features are this function's.
            *yr = unsafe { int8_row_dot(&m.row(r), xq, buf) };
        }
    }

    /// Two passes. First, per activation block `b`, the factor `f_b = s_g·d_b` into `buf` and
    /// the offsets' share `Σ_b f_b·k0_g·Σq_b` (16 blocks at a time when a group is one block).
    /// Then per block: 32 codes widened to bytes, one `vpdpbusd` against the int8 activations,
    /// the eight lanes scaled by `f_b` into a float accumulator; one horizontal sum per row.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn int8_row_dot(row: &Row<'_>, xq: &Int8Blocks, buf: &mut [f32]) -> f32 {
        use std::arch::x86_64::*;
        let per_group = row.group / BLOCK;
        let blocks = xq.scales.len();
        let symmetric_k0 = -((1i32 << (row.bits - 1)) as f32);
        let base = if per_group == 1 {
            let mut acc = _mm512_setzero_ps();
            for b in (0..blocks).step_by(16) {
                let n = (blocks - b).min(16);
                let m: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
                // SAFETY: masked to the `n` blocks that exist.
                unsafe {
                    let s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                        m,
                        row.scale.as_ptr().add(b).cast(),
                    ));
                    let d = _mm512_maskz_loadu_ps(m, xq.scales.as_ptr().add(b));
                    let sq =
                        _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(m, xq.sums.as_ptr().add(b)));
                    let f = _mm512_mul_ps(s, d);
                    _mm512_mask_storeu_ps(buf.as_mut_ptr().add(b), m, f);
                    let fk = if row.symmetric {
                        f
                    } else {
                        let o = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                            m,
                            row.offset.as_ptr().add(b).cast(),
                        ));
                        // A minimum multiplies the block's activation scale, not the scale.
                        _mm512_mul_ps(if row.float_min { d } else { f }, o)
                    };
                    acc = _mm512_fmadd_ps(fk, sq, acc);
                }
            }
            let sum = _mm512_reduce_add_ps(acc);
            if row.symmetric {
                symmetric_k0 * sum
            } else {
                sum
            }
        } else {
            let f16_to_f32 = |h: u16| _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))));
            let mut base = 0.0f32;
            let per_block = buf[..blocks]
                .chunks_mut(per_group)
                .zip(xq.scales.chunks(per_group))
                .zip(xq.sums.chunks(per_group));
            for ((&s, &k0), ((fs, ds), sums)) in row.scale.iter().zip(row.offset).zip(per_block) {
                let (s, k0) = (f16_to_f32(s), f16_to_f32(k0));
                for ((f, &d), &sq) in fs.iter_mut().zip(ds).zip(sums) {
                    *f = s * d;
                    let share = if row.float_min { d } else { *f };
                    base += share * k0 * sq as f32;
                }
            }
            base
        };
        // Groups are whole blocks, so block `b`'s codes start at byte `b·block_bytes`.
        let block_bytes = BLOCK * row.bits / 8;
        let (c, q) = (row.codes.as_ptr(), xq.q.as_ptr());
        let low = _mm_set1_epi8(0x0f);
        // SAFETY (both loops): block `b` lies within the row's codes and the activations
        // (asserted by the caller).
        let codes4 = |b: usize| unsafe {
            // Low nibbles are the even positions, high nibbles the odd ones: the order
            // `prepare_int8` put the activations in.
            let k = _mm_loadu_si128(c.add(b * block_bytes).cast::<__m128i>());
            let lo = _mm_and_si128(k, low);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(k), low);
            _mm256_set_m128i(hi, lo)
        };
        let codes8 =
            |b: usize| unsafe { _mm256_loadu_si256(c.add(b * block_bytes).cast::<__m256i>()) };
        // Two blocks per 512-bit step: their 64 codes against their 64 activations (4-bit: in
        // the pair order of `prepare_int8`), the lanes of each block scaled by its factor.
        let pairs = blocks / 2;
        let low512 = _mm256_set1_epi8(0x0f);
        // 4-bit lanes: [block 0, block 1, block 0, block 1] by quarter; 8-bit: by half.
        let (f4, f8) = (
            _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1),
            _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
        );
        let mut wide = _mm512_setzero_ps();
        for p in 0..pairs {
            let b = 2 * p;
            // SAFETY: blocks b and b + 1 lie within the codes, activations and factors.
            unsafe {
                let (w, spread) = if row.bits == 4 {
                    let k = _mm256_loadu_si256(c.add(b * block_bytes).cast::<__m256i>());
                    let lo = _mm256_and_si256(k, low512);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(k), low512);
                    (_mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi), f4)
                } else {
                    (_mm512_loadu_si512(c.add(b * block_bytes).cast()), f8)
                };
                let a = _mm512_loadu_si512(q.add(b * BLOCK).cast());
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, a);
                let f2 = _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd(
                    buf.as_ptr().add(b).cast::<f64>(),
                )));
                let f = _mm512_permutexvar_ps(spread, f2);
                wide = _mm512_fmadd_ps(f, _mm512_cvtepi32_ps(dot), wide);
            }
        }
        let mut acc = _mm256_add_ps(
            _mm512_castps512_ps256(wide),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(wide))),
        );
        if blocks % 2 == 1 {
            let b = blocks - 1;
            let w = if row.bits == 4 { codes4(b) } else { codes8(b) };
            // SAFETY: block `b` lies within the activations.
            let a = unsafe { _mm256_loadu_si256(q.add(b * BLOCK).cast::<__m256i>()) };
            let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(buf[b]), _mm256_cvtepi32_ps(dot), acc);
        }
        let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(quad, _mm_movehdup_ps(quad))) + base
    }

    /// A matrix in the kernels' terms: rows of `groups` groups of `group` codes of `bits` (1–8)
    /// bits (`gbytes` bytes apart; the last may be shorter); f16 scales and offsets as bits
    /// (offsets are integers, or minima).
    pub struct Matrix<'a> {
        pub codes: &'a [u8],
        pub bits: usize,
        pub gbytes: usize,
        pub group: usize,
        pub groups: usize,
        pub scale: &'a [u16],
        pub offset: &'a [u16],
        /// Every offset is `−2^(bits−1)`: the int8 kernel does not read them.
        pub symmetric: bool,
        /// Offsets are f16 minima, added after the scale.
        pub float_min: bool,
    }

    impl<'a> Matrix<'a> {
        /// Row `r`'s view.
        fn row(&self, r: usize) -> Row<'a> {
            let (groups, row_bytes) = (self.groups, self.groups * self.gbytes);
            Row {
                codes: &self.codes[r * row_bytes..][..row_bytes],
                bits: self.bits,
                gbytes: self.gbytes,
                group: self.group,
                scale: &self.scale[r * groups..][..groups],
                offset: &self.offset[r * groups..][..groups],
                symmetric: self.symmetric,
                float_min: self.float_min,
            }
        }
    }

    impl Matrix<'_> {
        /// Rows `r0..r0 + y.len()` of `W·x`, each `Σ_g s_g·(Σ_j code_{g,j}·x_{g,j} +
        /// k0_g·Σx_g)`, every group a multiple of 16 codes (32 at 4 bits); `buf` holds a row's
        /// decoded scales.
        pub fn rows_into(
            &self,
            r0: usize,
            y: &mut [f32],
            sums: &[f32],
            x: &[f32],
            buf: &mut [f32],
        ) {
            #[cfg(target_arch = "x86_64")]
            {
                let (bits, group, groups) = (self.bits, self.group, self.groups);
                let end = r0 + y.len();
                assert!(available() && (1..=8).contains(&bits));
                let step = if bits == 4 { 32 } else { 16 };
                assert!(group.is_multiple_of(step) && x.len().is_multiple_of(step));
                assert!(x.len().div_ceil(group) == groups && groups > 0);
                assert!(self.gbytes == (group * bits).div_ceil(8));
                assert!(self.scale.len() >= end * groups && self.offset.len() >= end * groups);
                assert!(sums.len() >= groups && buf.len() >= groups);
                assert!(self.codes.len() >= end * groups * self.gbytes);
                // SAFETY: AVX-512F/BW are present; the loads stay within the lengths asserted
                // above.
                unsafe { rows_avx512(self, r0, y, sums, x, buf) }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (r0, y, sums, x, buf);
                unreachable!("the AVX-512 kernel is only dispatched on x86_64");
            }
        }
    }

    /// One row's view of a [`Matrix`].
    struct Row<'a> {
        codes: &'a [u8],
        bits: usize,
        gbytes: usize,
        group: usize,
        scale: &'a [u16],
        offset: &'a [u16],
        symmetric: bool,
        float_min: bool,
    }

    /// [`Matrix::rows_into`] row by row, in one call (per-row checks cost as much as a short
    /// row's products).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn rows_avx512(
        m: &Matrix<'_>,
        r0: usize,
        y: &mut [f32],
        sums: &[f32],
        x: &[f32],
        buf: &mut [f32],
    ) {
        for (i, yr) in y.iter_mut().enumerate() {
            // SAFETY: as asserted by `rows_into`, and the features are this function's.
            *yr = unsafe { row_dot_avx512(&m.row(r0 + i), sums, x, buf) };
        }
    }

    /// Scales and offsets converted 16 groups at a time (with the offsets' share summed on
    /// the way), then the codes' dot products group by group.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn row_dot_avx512(row: &Row<'_>, sums: &[f32], x: &[f32], buf: &mut [f32]) -> f32 {
        use std::arch::x86_64::*;
        let groups = row.scale.len();
        let mut base = _mm512_setzero_ps();
        for g in (0..groups).step_by(16) {
            let n = (groups - g).min(16);
            let m: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
            // SAFETY: masked to the `n` groups that exist.
            unsafe {
                let s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                    m,
                    row.scale.as_ptr().add(g).cast(),
                ));
                let o = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
                    m,
                    row.offset.as_ptr().add(g).cast(),
                ));
                let sx = _mm512_maskz_loadu_ps(m, sums.as_ptr().add(g));
                let share = if row.float_min {
                    o
                } else {
                    _mm512_mul_ps(s, o)
                };
                base = _mm512_fmadd_ps(share, sx, base);
                _mm512_mask_storeu_ps(buf.as_mut_ptr().add(g), m, s);
            }
        }
        let codes = unsafe {
            codes_dot_avx512(
                row.codes,
                row.bits,
                row.gbytes,
                row.group,
                &buf[..groups],
                x,
            )
        };
        codes + _mm512_reduce_add_ps(base)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn codes_dot_avx512(
        codes: &[u8],
        bits: usize,
        gbytes: usize,
        group: usize,
        scales: &[f32],
        x: &[f32],
    ) -> f32 {
        use std::arch::x86_64::*;
        let mut acc = _mm512_setzero_ps();
        let low = _mm_set1_epi8(0x0f);
        // Other widths: 16 codes span 2·bits bytes; code i's two bytes go to its own 32-bit
        // lane (a byte shuffle of the 16 bytes repeated in every 128-bit lane), which is then
        // shifted right by the code's bit offset and masked.
        let (spread, shifts) = {
            let (mut idx, mut sh) = ([0x80u8; 64], [0i32; 16]);
            for (i, shift) in sh.iter_mut().enumerate() {
                // Code i sits in 128-bit lane i / 4, dword i % 4: byte 4·i of the index.
                let byte = i * bits / 8;
                idx[i * 4] = byte as u8;
                idx[i * 4 + 1] = if byte + 1 < 16 { byte as u8 + 1 } else { 0x80 };
                *shift = (i * bits % 8) as i32;
            }
            // SAFETY: 64 bytes and 16 ints, read unaligned.
            unsafe {
                (
                    _mm512_loadu_si512(idx.as_ptr().cast()),
                    _mm512_loadu_si512(sh.as_ptr().cast()),
                )
            }
        };
        let code_mask = _mm512_set1_epi32(((1u32 << bits) - 1) as i32);
        let step_bytes = 2 * bits;
        let load_mask: __mmask16 = ((1u32 << step_bytes.min(16)) - 1) as u16;
        for (g, &s) in scales.iter().enumerate() {
            let c = codes.as_ptr().wrapping_add(g * gbytes);
            let xs = x.as_ptr().wrapping_add(g * group);
            let len = group.min(x.len() - g * group);
            let (mut part0, mut part1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            if bits == 8 {
                for j in 0..len / 16 {
                    // SAFETY: byte and float indices below the group's length.
                    let (k, xv) = unsafe {
                        (
                            _mm_loadu_si128(c.add(j * 16).cast::<__m128i>()),
                            _mm512_loadu_ps(xs.add(j * 16)),
                        )
                    };
                    let w = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(k));
                    if j & 1 == 0 {
                        part0 = _mm512_fmadd_ps(w, xv, part0);
                    } else {
                        part1 = _mm512_fmadd_ps(w, xv, part1);
                    }
                }
            } else if bits != 4 {
                for j in 0..len / 16 {
                    // SAFETY: the masked load reads the 2·bits bytes of these 16 codes, all
                    // within the group; float indices below its length.
                    let (k, xv) = unsafe {
                        (
                            _mm_maskz_loadu_epi8(load_mask, c.add(j * step_bytes).cast()),
                            _mm512_loadu_ps(xs.add(j * 16)),
                        )
                    };
                    let lanes = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(k), spread);
                    let v = _mm512_and_si512(_mm512_srlv_epi32(lanes, shifts), code_mask);
                    let w = _mm512_cvtepi32_ps(v);
                    if j & 1 == 0 {
                        part0 = _mm512_fmadd_ps(w, xv, part0);
                    } else {
                        part1 = _mm512_fmadd_ps(w, xv, part1);
                    }
                }
            } else {
                for j in 0..len / 32 {
                    // SAFETY: as above; 16 bytes hold 32 codes.
                    let (k, x0, x1) = unsafe {
                        (
                            _mm_loadu_si128(c.add(j * 16).cast::<__m128i>()),
                            _mm512_loadu_ps(xs.add(j * 32)),
                            _mm512_loadu_ps(xs.add(j * 32 + 16)),
                        )
                    };
                    let lo = _mm_and_si128(k, low);
                    let hi = _mm_and_si128(_mm_srli_epi16::<4>(k), low);
                    // Byte i holds codes 2i (low nibble) and 2i + 1 (high nibble).
                    let w0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));
                    let w1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(lo, hi)));
                    part0 = _mm512_fmadd_ps(w0, x0, part0);
                    part1 = _mm512_fmadd_ps(w1, x1, part1);
                }
            }
            acc = _mm512_fmadd_ps(_mm512_set1_ps(s), _mm512_add_ps(part0, part1), acc);
        }
        _mm512_reduce_add_ps(acc)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::quant::rtn::rtn_quantize;

    /// Codes read as one two-byte word equal the codes read bit by bit, every width, every
    /// position of a group (those ending in its last byte included).
    #[test]
    fn codes_read_by_word_equal_codes_read_by_bit() {
        let bytes: Vec<u8> = (0..13u32).map(|i| (i * 97 + 41) as u8).collect();
        for bits in 1..=8 {
            for i in 0..bytes.len() * 8 / bits {
                let by_bit = (0..bits).fold(0u32, |c, b| {
                    let at = i * bits + b;
                    c | u32::from((bytes[at / 8] >> (at % 8)) & 1) << b
                });
                assert_eq!(code_at(&bytes, i, bits), by_bit, "bits {bits} code {i}");
            }
        }
    }

    #[test]
    fn codes_recovered_exactly_and_products_match() {
        for (bits, group, rows, cols) in [
            (4, 32, 5, 96),
            (4, 32, 4, 96),
            (5, 32, 4, 64),
            (8, 32, 4, 128),
            (4, 64, 4, 160),
            (8, 32, 5, 64),
            (8, 64, 3, 128),
            (8, 0, 4, 40),
            (3, 16, 6, 50),
            (2, 8, 2, 24),
            (4, 0, 3, 33),
            (4, 128, 2, 576),
            (3, 128, 2, 192),
            (6, 32, 2, 64),
            // Every width through the AVX-512 kernel: groups of 16-code steps, a short last
            // group, and a whole-row group as the embedding step uses.
            (1, 16, 3, 48),
            (2, 32, 3, 80),
            (3, 48, 2, 96),
            (5, 64, 2, 160),
            (6, 576, 3, 576),
            (6, 64, 2, 176),
            (7, 16, 2, 64),
        ] {
            let w: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.4) * 0.3)
                .collect();
            // Symmetric layers (bits ≥ 2) pack with the implied offset and count no offsets;
            // every fourth case holds an f16 minimum.
            let symmetric = bits >= 2 && rows % 2 == 1;
            let rule = match (symmetric, (rows + cols) % 4 == 0) {
                (true, _) => RtnRule::Symmetric,
                (false, true) => RtnRule::FloatMin,
                (false, false) => RtnRule::IntegerZero,
            };
            let dq = rtn_quantize(&w, rows, cols, bits, group, rule);
            let p = RtnPacked::from_dequantized(&dq, rows, cols, bits, group, rule)
                .unwrap_or_else(|| panic!("{bits}b g{group} {rule:?}"));
            let mut row = vec![0.0f32; cols];
            for r in 0..rows {
                p.row_into(r, &mut row);
                assert_eq!(
                    row,
                    dq[r * cols..(r + 1) * cols],
                    "{bits}b g{group} row {r}"
                );
            }
            let x: Vec<f32> = (0..cols).map(|i| (i % 11) as f32 / 5.0 - 1.0).collect();
            let mut shared = Prepared::default();
            p.prepare(&x, &mut shared);
            let mut y = vec![0.0f32; rows];
            p.rows_into(&x, &shared, 0, &mut y, &mut Vec::new());
            for r in 0..rows {
                let want: f32 = (0..cols).map(|c| dq[r * cols + c] * x[c]).sum();
                assert!(
                    (y[r] - want).abs() < 1e-4,
                    "{bits}b g{group} row {r}: {} vs {want}",
                    y[r]
                );
            }
            // With int8 activations (the VNNI kernel at 4 and 8 bits on whole blocks, else
            // the scalar loop): the product of the weights with the rounded inputs.
            let p = p.with_int8_activations(true);
            let mut shared = Prepared::default();
            p.prepare(&x, &mut shared);
            let mut rounded = x.clone();
            crate::quant::act8::round_rows(&mut rounded, cols);
            p.rows_into(&x, &shared, 0, &mut y, &mut Vec::new());
            for r in 0..rows {
                let want: f64 = (0..cols)
                    .map(|c| f64::from(dq[r * cols + c]) * f64::from(rounded[c]))
                    .sum();
                assert!(
                    (f64::from(y[r]) - want).abs() < 1e-4,
                    "int8 activations, {bits}b g{group} row {r}: {} vs {want}",
                    y[r]
                );
            }
            let groups = cols.div_ceil(if group == 0 { cols } else { group });
            assert_eq!(
                p.size_bytes(),
                rows * groups * (if group == 0 { cols } else { group } * bits).div_ceil(8)
                    + rows * groups * if symmetric { 2 } else { 4 }
            );
        }
    }

    #[test]
    fn values_that_are_not_rtn_are_refused() {
        let w = [0.1f32, 0.2, 0.30001, 0.7];
        assert!(RtnPacked::from_dequantized(&w, 1, 4, 2, 4, RtnRule::IntegerZero).is_none());
    }
}
