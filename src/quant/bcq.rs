//! Per-group binary-coding quantization (BCQ): approximates a weight group `w ∈ Rⁿ` by
//! `Σ_b α_b·B_b` with `B_b ∈ {−1,+1}ⁿ` and `q` scales `α_b` shared by the group.
//!
//! This module owns the group solver (greedy initialisation, then alternating rounds of
//! least-squares scales, |α| + descending sort, optional APoT rounding and exact nearest-codeword
//! assignment, keeping the best iterate), the sorted codebook used for assignment, and the
//! canonical dequantisation of a `(alphas, code)` pair.
//!
//! Conventions shared with the sweep and the kernel:
//! * a code is one `u8` per weight; bit `b` set means `+1` for plane `b`, clear means `−1`
//!   (entries of B are never 0);
//! * planes are ordered by descending scale (`alphas[0]` is the largest);
//! * the dequantised value of a code is [`codeword`]: an `f32` sum over planes in index order
//!   starting from `0.0`. Every path that reconstructs weights uses this function, so
//!   reconstruction is bit-exact.

use super::apot::apot_round;

/// Largest supported number of bit-planes (codes are stored in a `u8`).
pub const MAX_BITS: usize = 8;

/// Knobs of the per-group solver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BcqOptions {
    /// Number of binary planes `q`, `1..=8`.
    pub bits: usize,
    /// Alternating refinement rounds after the greedy initialisation (ShiftAddLLM uses 50; 20 is
    /// usually enough). The loop also stops early once the codes reach a fixed point or a 2-cycle.
    pub rounds: usize,
    /// APoT terms per scale; `0` keeps float scales.
    pub apot_terms: usize,
}

impl Default for BcqOptions {
    fn default() -> Self {
        Self {
            bits: 3,
            rounds: 20,
            apot_terms: 3,
        }
    }
}

/// Result of [`solve_group`].
#[derive(Clone, Debug, PartialEq)]
pub struct BcqSolution {
    /// The `q` scales, non-negative and descending; exact APoT values when `apot_terms > 0`.
    pub alphas: Vec<f32>,
    /// One code per element (bit `b` set = `+1` for plane `b`).
    pub codes: Vec<u8>,
    /// `Σ (w − dequant)²` of the returned pair, accumulated in `f64`.
    pub sq_error: f64,
}

/// Dequantised value of one code: `Σ_b ±α_b` summed in `f32` in plane order from `0.0`.
///
/// This fixed summation order is the definition of the reconstruction; see the module docs.
#[inline]
pub fn codeword(alphas: &[f32], code: u8) -> f32 {
    let mut v = 0.0f32;
    for (b, &a) in alphas.iter().enumerate() {
        if (code >> b) & 1 == 1 {
            v += a;
        } else {
            v -= a;
        }
    }
    v
}

/// All `2^q` codeword values indexed by code.
pub fn codeword_table(alphas: &[f32]) -> Vec<f32> {
    (0..1usize << alphas.len())
        .map(|c| codeword(alphas, c as u8))
        .collect()
}

/// Reconstructs a group: `out[j] = codeword(alphas, codes[j])`.
pub fn dequant(alphas: &[f32], codes: &[u8]) -> Vec<f32> {
    let table = codeword_table(alphas);
    let mask = table.len() - 1;
    codes
        .iter()
        .map(|&c| table[usize::from(c) & mask])
        .collect()
}

/// The sorted, de-duplicated codebook `{Σ ±α_b}` for exact nearest-codeword search.
///
/// Tie rule (deterministic, shared with brute force): the nearest value wins; at an exact
/// midpoint the *larger* value wins; among codes with the same value the *smallest* code wins.
#[derive(Clone, Debug, Default)]
pub struct Codebook {
    /// Distinct codeword values, ascending.
    values: Vec<f32>,
    /// Smallest code producing each value.
    codes: Vec<u8>,
    /// Midpoints between consecutive values, in f64 (exact for f32 neighbours).
    mids: Vec<f64>,
}

impl Codebook {
    /// Builds the codebook for `alphas` (`1..=8` planes).
    pub fn new(alphas: &[f32]) -> Self {
        let mut book = Self::default();
        book.rebuild(alphas);
        book
    }

    /// Rebuilds in place, reusing the buffers (the solver does this every round).
    pub fn rebuild(&mut self, alphas: &[f32]) {
        let q = alphas.len().min(MAX_BITS);
        let mut pairs: Vec<(f32, u8)> = (0..1usize << q)
            .map(|c| (codeword(&alphas[..q], c as u8), c as u8))
            .collect();
        pairs.sort_by(|a, b| {
            a.0.partial_cmp(&b.0)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.1.cmp(&b.1))
        });
        self.values.clear();
        self.codes.clear();
        self.mids.clear();
        for (v, c) in pairs {
            // `==` treats −0 and +0 as one value, matching the partial_cmp sort above.
            if self.values.last().is_some_and(|&last| last == v) {
                continue;
            }
            if let Some(&last) = self.values.last() {
                self.mids.push((f64::from(last) + f64::from(v)) * 0.5);
            }
            self.values.push(v);
            self.codes.push(c);
        }
    }

    /// Index into the distinct values of the codeword nearest to `w`.
    #[inline]
    fn index(&self, w: f32) -> usize {
        let x = f64::from(w);
        // `#mids ≤ x` is the nearest index with ties going up. A branch-free count is faster for
        // the small books of q ≤ 4; larger books use binary search (q steps).
        if self.mids.len() <= 16 {
            self.mids.iter().map(|&m| usize::from(m <= x)).sum()
        } else {
            self.mids.partition_point(|&m| m <= x)
        }
    }

    /// Code of the nearest codeword to `w` (tie rule in the type docs).
    #[inline]
    pub fn nearest(&self, w: f32) -> u8 {
        self.codes[self.index(w)]
    }

    /// Code and value of the nearest codeword to `w`.
    #[inline]
    pub fn nearest_with_value(&self, w: f32) -> (u8, f32) {
        let i = self.index(w);
        (self.codes[i], self.values[i])
    }

    /// Assigns every element of `w` into `codes` and returns the squared error in `f64`.
    pub fn assign_into(&self, w: &[f32], codes: &mut [u8]) -> f64 {
        let mut err = 0.0f64;
        for (c, &x) in codes.iter_mut().zip(w) {
            let (code, v) = self.nearest_with_value(x);
            *c = code;
            let d = f64::from(x) - f64::from(v);
            err += d * d;
        }
        err
    }
}

/// Exact nearest-codeword assignment of every element of `w` for fixed `alphas`.
pub fn assign(w: &[f32], alphas: &[f32]) -> Vec<u8> {
    let book = Codebook::new(alphas);
    w.iter().map(|&x| book.nearest(x)).collect()
}

/// `Σ (w − dequant)²` in `f64` for a group.
pub fn sq_error(w: &[f32], alphas: &[f32], codes: &[u8]) -> f64 {
    let table = codeword_table(alphas);
    let mask = table.len() - 1;
    w.iter()
        .zip(codes)
        .map(|(&x, &c)| {
            let d = f64::from(x) - f64::from(table[usize::from(c) & mask]);
            d * d
        })
        .sum()
}

/// Least-squares scales for fixed codes: solves `(BᵀB + λI) α = Bᵀw` in `f64`.
///
/// `BᵀB` and `Bᵀw` are accumulated through per-code counts and sums (O(n + 4^q)), and the q×q
/// system is solved by Cholesky with a ridge `λ = 1e-9·n`. The ridge keeps the solve defined when
/// planes coincide (`BᵀB` singular), where it picks the minimum-norm split, and perturbs
/// well-conditioned solutions by only ~1e-9 relative.
pub fn least_squares_alphas(w: &[f32], codes: &[u8], bits: usize) -> Vec<f64> {
    let q = bits.clamp(1, MAX_BITS);
    let mut count = vec![0.0f64; 1 << q];
    let mut sum = vec![0.0f64; 1 << q];
    let mask = (1usize << q) - 1;
    for (&x, &c) in w.iter().zip(codes) {
        let c = usize::from(c) & mask;
        count[c] += 1.0;
        sum[c] += f64::from(x);
    }
    ls_from_stats(&count, &sum, q, w.len())
}

/// Solves the ridge normal equations from per-code statistics.
fn ls_from_stats(count: &[f64], sum: &[f64], q: usize, n: usize) -> Vec<f64> {
    let mut g = [[0.0f64; MAX_BITS]; MAX_BITS];
    let mut rhs = [0.0f64; MAX_BITS];
    for (c, (&cnt, &s)) in count.iter().zip(sum).enumerate() {
        if cnt == 0.0 {
            continue;
        }
        let sign = |b: usize| if (c >> b) & 1 == 1 { 1.0 } else { -1.0 };
        for (i, (gi, ri)) in g.iter_mut().zip(rhs.iter_mut()).take(q).enumerate() {
            let si = sign(i);
            *ri += si * s;
            for (j, gij) in gi[..=i].iter_mut().enumerate() {
                *gij += si * sign(j) * cnt;
            }
        }
    }
    let ridge = 1e-9 * (n.max(1) as f64);
    // In-place Cholesky of the lower triangle: G + λI = L Lᵀ.
    for i in 0..q {
        g[i][i] += ridge;
        for j in 0..=i {
            let s = g[i][j]
                - g[i][..j]
                    .iter()
                    .zip(&g[j][..j])
                    .map(|(a, b)| a * b)
                    .sum::<f64>();
            if i == j {
                // λ > 0 keeps the pivot positive up to rounding; clamp so a pathological
                // cancellation can never produce NaN.
                g[i][i] = s.max(ridge * 1e-3).sqrt();
            } else {
                g[i][j] = s / g[j][j];
            }
        }
    }
    // Forward then backward substitution.
    let mut y = [0.0f64; MAX_BITS];
    for i in 0..q {
        let mut s = rhs[i];
        for k in 0..i {
            s -= g[i][k] * y[k];
        }
        y[i] = s / g[i][i];
    }
    let mut a = vec![0.0f64; q];
    for i in (0..q).rev() {
        let mut s = y[i];
        for k in i + 1..q {
            s -= g[k][i] * a[k];
        }
        a[i] = s / g[i][i];
    }
    a
}

/// Sorts `alphas` descending and remaps the code bits the same way (if `codes` is given).
fn sort_planes(alphas: &mut [f32], codes: Option<&mut [u8]>) {
    let q = alphas.len();
    let mut order: Vec<usize> = (0..q).collect();
    // Stable: equal scales keep their relative order, so the permutation is deterministic.
    order.sort_by(|&a, &b| {
        alphas[b]
            .partial_cmp(&alphas[a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let sorted: Vec<f32> = order.iter().map(|&i| alphas[i]).collect();
    alphas.copy_from_slice(&sorted);
    if let Some(codes) = codes {
        // remap[old] = new, with new bit k taken from old bit order[k].
        let remap: Vec<u8> = (0..1usize << q)
            .map(|old| {
                order.iter().enumerate().fold(0u8, |acc, (k, &src)| {
                    acc | ((((old >> src) & 1) as u8) << k)
                })
            })
            .collect();
        for c in codes.iter_mut() {
            *c = remap[usize::from(*c)];
        }
    }
}

/// Greedy initialisation: plane by plane, `b = sign(r)` (with sign(0) = +1) and `α = mean|r|`,
/// the closed-form 1-bit optimum on the residual. Returns unsorted alphas and codes.
fn greedy(w: &[f32], q: usize) -> (Vec<f32>, Vec<u8>) {
    let n = w.len();
    let mut r: Vec<f64> = w.iter().map(|&x| f64::from(x)).collect();
    let mut codes = vec![0u8; n];
    let mut alphas = vec![0.0f32; q];
    for (b, alpha) in alphas.iter_mut().enumerate() {
        let mean = r.iter().map(|x| x.abs()).sum::<f64>() / n.max(1) as f64;
        let a = mean as f32;
        *alpha = a;
        let a = f64::from(a);
        for (rj, cj) in r.iter_mut().zip(codes.iter_mut()) {
            if *rj >= 0.0 {
                *cj |= 1 << b;
                *rj -= a;
            } else {
                *rj += a;
            }
        }
    }
    (alphas, codes)
}

/// Solves one group: greedy init, then up to `opts.rounds` alternating rounds, returning the best
/// iterate seen (see the module docs for the conventions of the result).
///
/// `opts.bits` is clamped to `1..=8`. With `apot_terms > 0` the greedy candidate is APoT-rounded
/// and re-assigned before it competes, so the returned scales are always exact APoT values.
pub fn solve_group(w: &[f32], opts: &BcqOptions) -> BcqSolution {
    solve_impl(w, opts, None)
}

/// The solver; `trace` receives the error after every refinement round (for tests).
fn solve_impl(w: &[f32], opts: &BcqOptions, mut trace: Option<&mut Vec<f64>>) -> BcqSolution {
    let q = opts.bits.clamp(1, MAX_BITS);
    let n = w.len();
    let (mut g_alphas, mut g_codes) = greedy(w, q);
    sort_planes(&mut g_alphas, Some(&mut g_codes));

    let mut book = Codebook::default();
    let mut best_alphas;
    let mut best_codes;
    let best_err;
    if opts.apot_terms == 0 {
        best_err = sq_error(w, &g_alphas, &g_codes);
        best_alphas = g_alphas;
        best_codes = g_codes.clone();
    } else {
        // The greedy scales are floats; round them so the kept-best candidate is always APoT.
        let mut a: Vec<f32> = g_alphas
            .iter()
            .map(|&x| apot_round(x, opts.apot_terms).abs())
            .collect();
        sort_planes(&mut a, None);
        book.rebuild(&a);
        best_codes = vec![0u8; n];
        best_err = book.assign_into(w, &mut best_codes);
        best_alphas = a;
    }
    let mut best_err = best_err;

    // The first LS step starts from the greedy codes, as in the reference method.
    let mut cur = g_codes;
    let mut prev = vec![0u8; n];
    let mut next = vec![0u8; n];
    let mask = (1usize << q) - 1;
    let mut count = vec![0.0f64; 1 << q];
    let mut sum = vec![0.0f64; 1 << q];
    let mut alphas = vec![0.0f32; q];
    for round in 0..opts.rounds {
        count.iter_mut().for_each(|v| *v = 0.0);
        sum.iter_mut().for_each(|v| *v = 0.0);
        for (&x, &c) in w.iter().zip(&cur) {
            let c = usize::from(c) & mask;
            count[c] += 1.0;
            sum[c] += f64::from(x);
        }
        let ls = ls_from_stats(&count, &sum, q, n);
        // Sign flips are absorbed by the (symmetric) codebook, so only |α| matters.
        for (a, v) in alphas.iter_mut().zip(&ls) {
            *a = apot_round(v.abs() as f32, opts.apot_terms).abs();
        }
        sort_planes(&mut alphas, None);
        book.rebuild(&alphas);
        let err = book.assign_into(w, &mut next);
        if let Some(t) = trace.as_deref_mut() {
            t.push(err);
        }
        if err < best_err {
            best_err = err;
            best_alphas.copy_from_slice(&alphas);
            best_codes.copy_from_slice(&next);
        }
        // The round is a deterministic map codes → codes: a fixed point or a 2-cycle repeats
        // forever, and its states have already competed for the best.
        if next == cur || (round > 0 && next == prev) {
            break;
        }
        std::mem::swap(&mut prev, &mut cur);
        std::mem::swap(&mut cur, &mut next);
    }
    BcqSolution {
        alphas: best_alphas,
        codes: best_codes,
        sq_error: best_err,
    }
}

/// Reproducible random numbers for the tests of this module and its siblings.
#[cfg(test)]
pub(super) mod test_rng {
    /// Small xorshift generator with a Box–Muller normal, for reproducible tests.
    pub struct Rng(u64);
    impl Rng {
        /// Seeded generator (any seed, including 0).
        pub fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        /// Uniform in (0, 1).
        pub fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        /// Standard normal.
        pub fn normal(&mut self) -> f32 {
            let (u, v) = (self.uniform(), self.uniform());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        }
        /// `n` standard normals.
        pub fn normals(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.normal()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::apot::ApotCode;
    use super::test_rng::Rng;
    use super::*;

    fn norm2(w: &[f32]) -> f64 {
        w.iter().map(|&x| f64::from(x) * f64::from(x)).sum()
    }

    fn opts(bits: usize, rounds: usize, apot_terms: usize) -> BcqOptions {
        BcqOptions {
            bits,
            rounds,
            apot_terms,
        }
    }

    /// Brute-force nearest code with the documented tie rule.
    fn brute_nearest(x: f32, alphas: &[f32]) -> u8 {
        let mut best: Option<(f64, f32, u8)> = None;
        for c in 0..1usize << alphas.len() {
            let v = codeword(alphas, c as u8);
            let d = (f64::from(x) - f64::from(v)).abs();
            let better = match best {
                None => true,
                Some((bd, bv, _)) => d < bd || (d == bd && v > bv),
            };
            if better {
                best = Some((d, v, c as u8));
            }
        }
        best.unwrap().2
    }

    /// Shift-add property 1: dequantising (B, α) reproduces the quantizer's reconstruction bit for
    /// bit, and every code bit means ±1 (never 0).
    #[test]
    fn exact_reconstruction() {
        let mut rng = Rng::new(1);
        for bits in 1..=MAX_BITS {
            for apot in [0, 1, 3] {
                let w = rng.normals(97);
                let s = solve_group(&w, &opts(bits, 10, apot));
                assert_eq!(s.alphas.len(), bits);
                let deq = dequant(&s.alphas, &s.codes);
                let book = Codebook::new(&s.alphas);
                let mut err = 0.0;
                for ((&x, &c), &d) in w.iter().zip(&s.codes).zip(&deq) {
                    assert!(usize::from(c) < 1 << bits);
                    // Explicit ±1 planes reproduce the same f32.
                    let mut v = 0.0f32;
                    for (b, &a) in s.alphas.iter().enumerate() {
                        let sign: f32 = if (c >> b) & 1 == 1 { 1.0 } else { -1.0 };
                        assert!(sign == 1.0 || sign == -1.0);
                        v += sign * a;
                    }
                    assert_eq!(v.to_bits(), d.to_bits());
                    assert_eq!(
                        book.nearest(x),
                        c,
                        "returned codes are optimal for the scales"
                    );
                    err += (f64::from(x) - f64::from(d)).powi(2);
                }
                assert_eq!(err, s.sq_error);
            }
        }
    }

    /// Shift-add property 2: q = 1 has the closed form α = ‖w‖₁/n, b = sign(w),
    /// err = ‖w‖² − ‖w‖₁²/n, and no other (α, b) does better.
    #[test]
    fn one_bit_closed_form() {
        let mut rng = Rng::new(2);
        for n in [1, 2, 7, 64, 128] {
            let mut w = rng.normals(n);
            w[0] = 0.0; // sign(0) must be +1, never 0
            let s = solve_group(&w, &opts(1, 20, 0));
            let l1: f64 = w.iter().map(|&x| f64::from(x).abs()).sum();
            let alpha = l1 / n as f64;
            assert!((f64::from(s.alphas[0]) - alpha).abs() <= 1e-6 * alpha.max(1e-30));
            for (&x, &c) in w.iter().zip(&s.codes) {
                assert_eq!(c, u8::from(x >= 0.0));
            }
            let closed = norm2(&w) - l1 * l1 / n as f64;
            assert!((s.sq_error - closed).abs() <= 1e-5 * norm2(&w));
            // Perturbing α or flipping a sign never helps.
            for f in [0.9f32, 0.99, 1.01, 1.1] {
                let a = [s.alphas[0] * f];
                assert!(sq_error(&w, &a, &s.codes) >= s.sq_error - 1e-9);
            }
            let mut flipped = s.codes.clone();
            flipped[n / 2] ^= 1;
            let a = least_squares_alphas(&w, &flipped, 1);
            assert!(sq_error(&w, &[a[0].abs() as f32], &flipped) >= s.sq_error - 1e-9);
        }
    }

    /// Shift-add property 3: greedy-only error is non-increasing in q.
    #[test]
    fn greedy_monotone_in_bits() {
        let mut rng = Rng::new(3);
        let trials = 40;
        let mut rel = [0.0f64; MAX_BITS];
        for _ in 0..trials {
            let w = rng.normals(128);
            let mut last = f64::INFINITY;
            for bits in 1..=MAX_BITS {
                let e = solve_group(&w, &opts(bits, 0, 0)).sq_error;
                assert!(e <= last * (1.0 + 1e-9), "bits={bits}: {e} > {last}");
                last = e;
                rel[bits - 1] += e / norm2(&w) / f64::from(trials);
            }
        }
        // Same ballpark as Shift-add property 3's 0.39, 0.13, 0.063 … (1 − 2/π ≈ 0.36 for q = 1).
        assert!(rel[0] > 0.3 && rel[0] < 0.42, "{rel:?}");
        assert!(rel[1] > 0.07 && rel[1] < 0.16, "{rel:?}");
        assert!(rel[2] < 0.08, "{rel:?}");
    }

    /// Shift-add property 4: after the LS step, Bᵀ(w − Bα) ≈ 0, also with duplicate (singular)
    /// planes.
    #[test]
    fn least_squares_optimality() {
        let mut rng = Rng::new(4);
        for bits in 1..=6 {
            for trial in 0..10 {
                let n = 64 + trial * 13;
                let w = rng.normals(n);
                let mut codes: Vec<u8> = (0..n)
                    .map(|_| (rng.uniform() * 256.0) as u8 & ((1 << bits) - 1) as u8)
                    .collect();
                if trial % 3 == 0 && bits >= 2 {
                    // Make plane 1 a copy of plane 0 (trial%2: its negation): BᵀB singular.
                    for c in codes.iter_mut() {
                        let b0 = *c & 1;
                        let b1 = if trial % 2 == 0 { b0 } else { b0 ^ 1 };
                        *c = (*c & !2) | (b1 << 1);
                    }
                }
                let a = least_squares_alphas(&w, &codes, bits);
                let scale: f64 = w.iter().map(|&x| f64::from(x).abs()).sum();
                for i in 0..bits {
                    let mut g = 0.0f64;
                    for (&x, &c) in w.iter().zip(&codes) {
                        let row: f64 = (0..bits)
                            .map(|b| if (c >> b) & 1 == 1 { a[b] } else { -a[b] })
                            .sum();
                        let si = if (c >> i) & 1 == 1 { 1.0 } else { -1.0 };
                        g += si * (f64::from(x) - row);
                    }
                    assert!(g.abs() <= 1e-5 * scale, "bits={bits} trial={trial} g={g}");
                }
                assert!(a.iter().all(|v| v.is_finite()));
            }
        }
    }

    /// Shift-add property 5: sorted-codebook search equals brute force, ties included.
    #[test]
    fn assignment_matches_brute_force() {
        let mut rng = Rng::new(5);
        for bits in 1..=MAX_BITS {
            for trial in 0..6 {
                let mut alphas: Vec<f32> = (0..bits).map(|_| rng.normal().abs()).collect();
                if trial % 2 == 1 {
                    // PoT scales create duplicate codewords (4 = 4+2−2 = 4−2+2) and exact ties.
                    for a in alphas.iter_mut() {
                        *a = 2f32.powi((rng.uniform() * 4.0) as i32 - 2);
                    }
                }
                if trial == 2 {
                    alphas[0] = 0.0;
                }
                sort_planes(&mut alphas, None);
                let mut xs = rng.normals(400);
                // Probe exact codewords and exact midpoints, where the tie rule matters.
                let table = codeword_table(&alphas);
                for (i, &v) in table.iter().enumerate() {
                    xs.push(v);
                    let u = table[(i * 7 + 3) % table.len()];
                    let mid = (f64::from(u) + f64::from(v)) * 0.5;
                    if f64::from(mid as f32) == mid {
                        xs.push(mid as f32);
                    }
                }
                let codes = assign(&xs, &alphas);
                for (&x, &c) in xs.iter().zip(&codes) {
                    assert_eq!(c, brute_nearest(x, &alphas), "x={x} alphas={alphas:?}");
                }
            }
        }
    }

    /// Shift-add property 6: without PoT the alternation never increases the error; with PoT the
    /// kept-best error is still ≤ the (PoT-rounded) greedy error and ≤ every round's error.
    #[test]
    fn alternation_monotone_and_keep_best() {
        let mut rng = Rng::new(6);
        for bits in 2..=5 {
            for _ in 0..15 {
                let w = rng.normals(128);
                let mut trace = vec![];
                let s = solve_impl(&w, &opts(bits, 30, 0), Some(&mut trace));
                let greedy_err = solve_group(&w, &opts(bits, 0, 0)).sq_error;
                let mut last = greedy_err;
                for &e in &trace {
                    assert!(e <= last * (1.0 + 1e-6), "increase {last} -> {e}");
                    last = e;
                }
                assert!(s.sq_error <= greedy_err);
                for k in [1, 3] {
                    let mut trace = vec![];
                    let s = solve_impl(&w, &opts(bits, 30, k), Some(&mut trace));
                    let g = solve_group(&w, &opts(bits, 0, k)).sq_error;
                    assert!(s.sq_error <= g);
                    assert!(trace.iter().all(|&e| s.sq_error <= e));
                }
            }
        }
    }

    /// Shift-add property 7: final scales are exact APoT values that re-encode bit-exactly.
    #[test]
    fn pot_exactness() {
        let mut rng = Rng::new(7);
        for bits in 1..=MAX_BITS {
            for k in 1..=3 {
                for rounds in [0, 1, 20] {
                    let w: Vec<f32> = rng.normals(128).iter().map(|x| x * 0.02).collect();
                    let s = solve_group(&w, &opts(bits, rounds, k));
                    for &a in &s.alphas {
                        let code = ApotCode::encode(a, k).unwrap();
                        assert!(code.terms.len() <= k);
                        assert_eq!(code.decode().to_bits(), a.to_bits(), "a={a} k={k}");
                        assert!(a >= 0.0);
                    }
                    assert!(s.alphas.windows(2).all(|p| p[0] >= p[1]));
                }
            }
        }
    }

    /// Shift-add property 9: error falls with bits; q = 8 stalls near 1e-3 relative, not 0.
    #[test]
    fn error_falls_with_bits() {
        let mut rng = Rng::new(9);
        let mut rel_sum = [0.0f64; MAX_BITS + 1];
        let trials = 10;
        for _ in 0..trials {
            let w = rng.normals(128);
            let n2 = norm2(&w);
            for bits in 1..MAX_BITS {
                let greedy_q = solve_group(&w, &opts(bits, 0, 0)).sq_error;
                let final_q1 = solve_group(&w, &opts(bits + 1, 10, 0)).sq_error;
                assert!(final_q1 <= greedy_q, "bits={bits}");
            }
            for (bits, acc) in rel_sum.iter_mut().enumerate().skip(1) {
                *acc += solve_group(&w, &opts(bits, 10, 0)).sq_error / n2;
            }
        }
        let rel: Vec<f64> = rel_sum.iter().map(|v| v / f64::from(trials)).collect();
        for bits in 2..MAX_BITS {
            assert!(rel[bits + 1] < rel[bits], "{rel:?}");
        }
        assert!(rel[2] < 0.15 && rel[8] < 5e-3, "{rel:?}");
    }

    #[test]
    fn degenerate_groups() {
        let s = solve_group(&[], &opts(3, 5, 3));
        assert!(s.codes.is_empty() && s.sq_error == 0.0);
        let s = solve_group(&[0.0; 16], &opts(3, 5, 3));
        assert_eq!(s.sq_error, 0.0);
        assert!(s.alphas.iter().all(|&a| a == 0.0));
        let s = solve_group(&[0.5; 16], &opts(2, 5, 0));
        assert!(s.sq_error < 1e-10);
        // Two-value group with q ≥ 2: exactly representable.
        let w: Vec<f32> = (0..32)
            .map(|i| if i % 3 == 0 { 0.75 } else { -0.25 })
            .collect();
        let s = solve_group(&w, &opts(2, 10, 0));
        assert!(s.sq_error < 1e-10, "{s:?}");
    }
}
