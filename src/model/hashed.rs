//! The hashed (RPS) inference form of a linear layer: a compact shared array plus a seed, from
//! which every virtual weight is recomputed on the fly (`docs/techniques.md`, "Randomized
//! parameter sharing (RPS)").
//!
//! Weight `i` (flat, row-major over `[out, in]`) reads `g_i · z[h(i)]`. Both the slot `h` and
//! the sign `g` are pure functions of `(seed, i)`, so no index is ever stored: the bytes are the
//! array plus the seed. This module owns the mapping and the kernels; how the array is fitted
//! to a pretrained matrix lives in `technique::rps`.

use rayon::prelude::*;

/// How flat weight indices are spread over the array's slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum HashMapping {
    /// STABLE-RPS "RANDOMFOLD": the index space is cut into chunks of `m` and each chunk is laid
    /// on the array with a seeded cyclic shift, so every slot gets `⌊n/m⌋` or `⌈n/m⌉` weights
    /// and `m = n` is a bijection.
    Fold,
    /// HashedNets-style: every index hashed independently (Poisson loads, empty slots).
    Uniform,
}

/// Weight rows per parallel task of the kernel (each rebuilt one at a time into an L1 buffer).
const TILE_ROWS: usize = 16;
/// Activation rows at or above which the forward rebuilds the dense matrix once for this call
/// and runs a GEMM (prefill); below, the tile kernel runs (decode). As for binary-coded layers.
const GEMM_MIN_ROWS: usize = 8;

/// One SplitMix64 step from `z`: the state advanced by the golden gamma, then mixed. The hash
/// of every slot, sign and shift (stored models depend on it never changing).
fn splitmix_step(z: u64) -> u64 {
    crate::rng::mix64(z.wrapping_add(crate::rng::GAMMA))
}

/// Domain separators so slots, signs and chunk shifts draw independent streams from one seed.
const SIGN_DOMAIN: u64 = 0x5349_474e;
const SHIFT_DOMAIN: u64 = 0x5348_4654;
const SLOT_DOMAIN: u64 = 0x534c_4f54;

/// A seeded map from `n` virtual weights onto `m` slots, with a ±1 sign per weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hasher {
    pub mapping: HashMapping,
    pub seed: u64,
    /// Virtual weights.
    pub n: usize,
    /// Slots in the shared array (1 ≤ m ≤ n).
    pub m: usize,
}

impl Hasher {
    /// The mapping of `n` weights onto `m` slots. `m` is clamped to `1..=n`.
    pub fn new(mapping: HashMapping, seed: u64, n: usize, m: usize) -> Self {
        Self {
            mapping,
            seed,
            n,
            m: m.clamp(1, n.max(1)),
        }
    }

    /// The sign word covering indices `64w .. 64w + 64`: one mix per 64 weights.
    fn sign_word(&self, w: u64) -> u64 {
        splitmix_step(self.seed ^ SIGN_DOMAIN.wrapping_mul(0x1000_0000_01b3) ^ splitmix_step(w))
    }

    /// `true` when weight `i` is stored negated.
    pub fn negative(&self, i: usize) -> bool {
        (self.sign_word((i >> 6) as u64) >> (i & 63)) & 1 == 1
    }

    /// The cyclic shift of fold chunk `chunk`.
    fn shift(&self, chunk: usize) -> usize {
        (splitmix_step(self.seed ^ SHIFT_DOMAIN ^ splitmix_step(chunk as u64)) % self.m as u64)
            as usize
    }

    /// The slot of weight `i`.
    pub fn slot(&self, i: usize) -> usize {
        match self.mapping {
            HashMapping::Fold => (self.shift(i / self.m) + i % self.m) % self.m,
            HashMapping::Uniform => {
                (splitmix_step(self.seed ^ SLOT_DOMAIN ^ splitmix_step(i as u64)) % self.m as u64)
                    as usize
            }
        }
    }

    /// Calls `f(i, slot, negative)` for every weight `i` in `start..start + len`, computing
    /// slots run by run for fold (consecutive indices of a chunk take consecutive slots) and
    /// signs one 64-bit word at a time.
    pub fn for_each(&self, start: usize, len: usize, mut f: impl FnMut(usize, usize, bool)) {
        let end = start + len;
        let mut i = start;
        let mut word = self.sign_word((i >> 6) as u64);
        while i < end {
            // A run: up to the end of the range, the fold chunk, or the slot wrap.
            let (run_end, first_slot) = match self.mapping {
                HashMapping::Fold => {
                    let chunk_end = (i / self.m + 1) * self.m;
                    let slot = (self.shift(i / self.m) + i % self.m) % self.m;
                    (end.min(chunk_end).min(i + (self.m - slot)), Some(slot))
                }
                HashMapping::Uniform => (end, None),
            };
            for (k, idx) in (i..run_end).enumerate() {
                if idx & 63 == 0 {
                    word = self.sign_word((idx >> 6) as u64);
                }
                let slot = match first_slot {
                    Some(s) => s + k,
                    None => self.slot(idx),
                };
                f(idx, slot, (word >> (idx & 63)) & 1 == 1);
            }
            i = run_end;
        }
    }
}

impl Hasher {
    /// Fold only: calls `f(i, first_slot, len)` for each run of `start..start + len`, a run
    /// being consecutive weights that read consecutive slots (cut at fold chunks and at the
    /// array's end).
    pub fn for_each_run(&self, start: usize, len: usize, mut f: impl FnMut(usize, usize, usize)) {
        debug_assert_eq!(self.mapping, HashMapping::Fold);
        let end = start + len;
        let mut i = start;
        while i < end {
            let chunk_end = (i / self.m + 1) * self.m;
            let slot = (self.shift(i / self.m) + i % self.m) % self.m;
            let run_end = end.min(chunk_end).min(i + (self.m - slot));
            f(i, slot, run_end - i);
            i = run_end;
        }
    }

    /// Negates `out[k]` where weight `start + k` is stored negated: one sign word per 64
    /// weights, applied eight at a time as an XOR of the float sign bits (vectorises).
    pub fn apply_signs(&self, start: usize, out: &mut [f32]) {
        let end = start + out.len();
        let mut i = start;
        while i < end {
            let word = self.sign_word((i >> 6) as u64);
            let word_end = end.min((i | 63) + 1);
            // Unaligned head and tail one by one; whole bytes of the word through the table.
            while i < word_end && (i & 7 != 0 || word_end - i < 8) {
                let o = &mut out[i - start];
                *o = f32::from_bits(o.to_bits() ^ ((((word >> (i & 63)) & 1) as u32) << 31));
                i += 1;
            }
            while word_end - i >= 8 {
                let masks = &SIGN_MASKS[((word >> (i & 63)) & 0xff) as usize];
                let o = &mut out[i - start..i - start + 8];
                for (v, m) in o.iter_mut().zip(masks) {
                    *v = f32::from_bits(v.to_bits() ^ m);
                }
                i += 8;
            }
            while i < word_end {
                let o = &mut out[i - start];
                *o = f32::from_bits(o.to_bits() ^ ((((word >> (i & 63)) & 1) as u32) << 31));
                i += 1;
            }
        }
    }
}

/// For each byte of sign bits, the eight f32 sign-bit masks it stands for (bit `l` → lane `l`).
static SIGN_MASKS: [[u32; 8]; 256] = {
    let mut t = [[0u32; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut l = 0;
        while l < 8 {
            if (b >> l) & 1 == 1 {
                t[b][l] = 1 << 31;
            }
            l += 1;
        }
        b += 1;
    }
    t
};

/// A linear weight stored as a shared array: `W[r, c] = ±z[h(r·cols + c)]`.
#[derive(Debug, Clone)]
pub struct HashedWeight {
    pub rows: usize,
    pub cols: usize,
    pub hasher: Hasher,
    /// The shared array (`hasher.m` values). The per-layer scale λ (`docs/techniques.md`,
    /// RPS §1) is folded in:
    /// with one array per layer it is a redundant degree of freedom, and keeping the raw values
    /// makes `c = 1` with fold bit-exact.
    pub z: Vec<f32>,
}

impl HashedWeight {
    /// Bytes stored: the array plus the seed (the mapping kind, `m` and the shape are
    /// architecture, not data).
    pub fn size_bytes(&self) -> usize {
        Self::size_for(self.z.len())
    }

    /// The bytes of an array of `slots` values.
    pub fn size_for(slots: usize) -> usize {
        slots * 4 + 8
    }

    /// Writes rows `r0..r0 + out.len() / cols` of the virtual matrix into `out`.
    pub fn reconstruct_rows(&self, r0: usize, out: &mut [f32]) {
        let start = r0 * self.cols;
        match self.hasher.mapping {
            // A fold run is a contiguous slice of the array: copy it, then flip the signs a
            // byte of sign bits at a time.
            HashMapping::Fold => {
                let z = &self.z;
                self.hasher.for_each_run(start, out.len(), |i, slot, len| {
                    out[i - start..i - start + len].copy_from_slice(&z[slot..slot + len]);
                });
                self.hasher.apply_signs(start, out);
            }
            HashMapping::Uniform => {
                let z = &self.z;
                self.hasher.for_each(start, out.len(), |i, slot, neg| {
                    let v = z[slot];
                    out[i - start] = if neg { -v } else { v };
                });
            }
        }
    }

    /// The whole virtual matrix, row-major, rebuilt in parallel tiles.
    pub fn reconstruct(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.rows * self.cols];
        if self.cols == 0 {
            return w;
        }
        w.par_chunks_mut(TILE_ROWS * self.cols)
            .enumerate()
            .for_each(|(t, tile)| self.reconstruct_rows(t * TILE_ROWS, tile));
        w
    }

    /// `y [n, rows] = x [n, cols] · Wᵀ`. Each row of `W` is rebuilt once into a per-task
    /// buffer that stays in L1 (never the whole matrix) and reused for all `n` activation
    /// rows; tiles of rows run on rayon's pool.
    pub fn gemm(&self, x: &[f32], n: usize, y: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        if rows == 0 || n == 0 {
            return;
        }
        let tile = |t: usize, out: &mut [f32], stride: usize| {
            let mut w = vec![0f32; cols];
            for (k, o) in out.chunks_mut(stride).enumerate() {
                self.reconstruct_rows(t * TILE_ROWS + k, &mut w);
                for (b, xb) in x.chunks_exact(cols.max(1)).take(n).enumerate() {
                    o[b] = dot(&w, xb);
                }
            }
        };
        if n == 1 && self.hasher.mapping == HashMapping::Fold {
            // Decode: y is one row, written in place; each output reads its row's array runs
            // straight into the dot product (no rebuilt row at all).
            let x = &x[..cols];
            y[..rows]
                .par_chunks_mut(TILE_ROWS)
                .enumerate()
                .for_each(|(t, out)| {
                    for (k, o) in out.iter_mut().enumerate() {
                        *o = self.fold_row_dot(t * TILE_ROWS + k, x);
                    }
                });
            return;
        }
        // Outputs row-major per weight row (`[rows, n]`), transposed into `y` at the end.
        let mut yt = vec![0f32; rows * n];
        yt.par_chunks_mut(TILE_ROWS * n)
            .enumerate()
            .for_each(|(t, out)| tile(t, out, n));
        for (r, yr) in yt.chunks_exact(n).enumerate() {
            for (b, v) in yr.iter().enumerate() {
                y[b * rows + r] = *v;
            }
        }
    }

    /// Fold only: `W[r, :] · x` without materialising the row. Each run of the row is a
    /// contiguous slice of the array; its signs come a byte at a time from the sign word, as
    /// XOR masks on the float sign bit, so the body is eight-lane load–xor–multiply–add.
    fn fold_row_dot(&self, r: usize, x: &[f32]) -> f32 {
        let start = r * self.cols;
        let z = &self.z;
        let h = &self.hasher;
        let mut acc = [0f32; 8];
        let mut rest = 0f32;
        h.for_each_run(start, self.cols, |i, slot, len| {
            let mut k = 0;
            while k < len {
                let g = i + k;
                let word = h.sign_word((g >> 6) as u64);
                let word_end = len.min(k + 64 - (g & 63));
                // Up to the next multiple of 8 of the weight index, one at a time.
                let head = ((8 - (g & 7)) & 7).min(word_end - k);
                let body = (word_end - k - head) / 8 * 8;
                let one = |k: usize| {
                    let bit = (((word >> ((i + k) & 63)) & 1) as u32) << 31;
                    f32::from_bits(z[slot + k].to_bits() ^ bit) * x[i + k - start]
                };
                for kk in k..k + head {
                    rest += one(kk);
                }
                let b0 = k + head;
                let zs = &z[slot + b0..slot + b0 + body];
                let xs = &x[i + b0 - start..i + b0 - start + body];
                for (q, (zc, xc)) in zs.chunks_exact(8).zip(xs.chunks_exact(8)).enumerate() {
                    let masks = &SIGN_MASKS[((word >> ((i + b0 + 8 * q) & 63)) & 0xff) as usize];
                    for l in 0..8 {
                        acc[l] += f32::from_bits(zc[l].to_bits() ^ masks[l]) * xc[l];
                    }
                }
                for kk in b0 + body..word_end {
                    rest += one(kk);
                }
                k = word_end;
            }
        });
        acc.iter().sum::<f32>() + rest
    }

    /// Row `r` of the virtual matrix times `x`: straight from the array runs for the fold
    /// mapping, through a rebuilt row in `scratch` for the uniform one.
    pub fn row_dot(&self, r: usize, x: &[f32], scratch: &mut Vec<f32>) -> f32 {
        if self.hasher.mapping == HashMapping::Fold {
            return self.fold_row_dot(r, x);
        }
        scratch.resize(self.cols, 0.0);
        self.reconstruct_rows(r, scratch);
        dot(scratch, x)
    }

    /// Whether a batch of `n` activation rows goes through a GEMM on the rebuilt matrix.
    pub fn prefers_gemm(n: usize) -> bool {
        n >= GEMM_MIN_ROWS
    }
}

/// A dot product in eight independent lanes so the compiler vectorises it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (ac, bc) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += ac[l] * bc[l];
        }
    }
    let tail = a.len() / 8 * 8;
    let t: f32 = a[tail..].iter().zip(&b[tail..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_loads_are_balanced_and_a_bijection_at_full_size() {
        for (n, m) in [(1000, 1000), (1000, 500), (1000, 301), (4096, 7)] {
            let h = Hasher::new(HashMapping::Fold, 42, n, m);
            let mut count = vec![0usize; m];
            h.for_each(0, n, |_, s, _| count[s] += 1);
            let (lo, hi) = (n / m, n.div_ceil(m));
            assert!(count.iter().all(|&c| c == lo || c == hi), "{n} {m}");
        }
    }

    #[test]
    fn run_iteration_matches_pointwise_slots_and_signs() {
        for mapping in [HashMapping::Fold, HashMapping::Uniform] {
            let h = Hasher::new(mapping, 7, 5000, 1234);
            // An unaligned range crossing chunk, wrap and sign-word boundaries.
            h.for_each(37, 4000, |i, s, neg| {
                assert_eq!(s, h.slot(i));
                assert_eq!(neg, h.negative(i));
            });
        }
    }

    #[test]
    fn mapping_is_pinned_across_runs_and_platforms() {
        // Golden values: a change here changes every stored RPS model.
        let h = Hasher::new(HashMapping::Fold, 1, 100, 40);
        let slots: Vec<usize> = (0..6).map(|i| h.slot(i)).collect();
        let signs: Vec<bool> = (0..6).map(|i| h.negative(i)).collect();
        let u = Hasher::new(HashMapping::Uniform, 1, 100, 40);
        let uslots: Vec<usize> = (0..6).map(|i| u.slot(i)).collect();
        assert_eq!(splitmix_step(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(
            (slots, signs, uslots),
            (
                GOLDEN_FOLD.to_vec(),
                GOLDEN_SIGNS.to_vec(),
                GOLDEN_UNIFORM.to_vec()
            )
        );
    }
    const GOLDEN_FOLD: [usize; 6] = [15, 16, 17, 18, 19, 20];
    const GOLDEN_SIGNS: [bool; 6] = [false, true, true, false, true, true];
    const GOLDEN_UNIFORM: [usize; 6] = [39, 2, 26, 38, 28, 37];

    #[test]
    fn fast_rebuild_matches_pointwise_slots_and_signs() {
        // Unaligned row starts, chunk and wrap boundaries, tiny and non-multiple-of-8 widths.
        for (rows, cols, m) in [
            (7, 13, 40),
            (5, 130, 333),
            (3, 64, 192),
            (9, 9, 81),
            (4, 1, 3),
        ] {
            let n = rows * cols;
            let h = Hasher::new(HashMapping::Fold, 11, n, m);
            let z: Vec<f32> = (0..h.m).map(|j| j as f32 + 1.0).collect();
            let hw = HashedWeight {
                rows,
                cols,
                hasher: h,
                z: z.clone(),
            };
            let w = hw.reconstruct();
            for (i, v) in w.iter().enumerate() {
                let want = if h.negative(i) {
                    -z[h.slot(i)]
                } else {
                    z[h.slot(i)]
                };
                assert_eq!(*v, want, "{rows}×{cols} m {m} weight {i}");
            }
            // A partial range starting mid-row agrees too.
            let mut part = vec![0f32; n - 3];
            h.for_each_run(3, n - 3, |i, s, len| {
                part[i - 3..i - 3 + len].copy_from_slice(&z[s..s + len]);
            });
            h.apply_signs(3, &mut part);
            assert_eq!(part, w[3..]);
        }
    }

    #[test]
    fn tile_kernel_matches_the_rebuilt_matrix() {
        for (rows, cols, m) in [(37, 53, 900), (40, 70, 2800), (3, 5, 7)] {
            let h = Hasher::new(HashMapping::Fold, 3, rows * cols, m);
            let z: Vec<f32> = (0..h.m)
                .map(|j| ((j * 37) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let hw = HashedWeight {
                rows,
                cols,
                hasher: h,
                z,
            };
            let w = hw.reconstruct();
            for n in [1, 3, 7] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 13) % 17) as f32 / 8.0 - 1.0)
                    .collect();
                let mut y = vec![0f32; n * rows];
                hw.gemm(&x, n, &mut y);
                for b in 0..n {
                    for r in 0..rows {
                        let want: f32 = (0..cols).map(|c| w[r * cols + c] * x[b * cols + c]).sum();
                        assert!(
                            (y[b * rows + r] - want).abs() < 1e-4,
                            "{rows}×{cols} n {n}: {b} {r}"
                        );
                    }
                }
            }
            assert_eq!(hw.size_bytes(), h.m * 4 + 8);
        }
    }
}
