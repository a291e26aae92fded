//! Additive power-of-two (APoT) scales: the greedy log2-domain decomposition of a scale into a
//! short sum of signed powers of two (ShiftAddLLM Eq. 2), its compact `(sign, exponent)`
//! encoding, and the bit-exact decoding back to `f32`.
//!
//! Rounding is in the log2 domain, `POT(r) = sign(r)·2^round(log2|r|)`, so the decision
//! threshold between 2^e and 2^(e+1) is √2·2^e (not 1.5·2^e). Each greedy term leaves a relative
//! residual of at most √2−1, hence `|x − APoT_k(x)| ≤ (√2−1)^k·|x|`.
//!
//! Every value produced here is *exactly* `Σ s_j·2^(e_j)` in `f32`: terms are only added while
//! their exponent lies within 23 binades of the leading term, which keeps every partial sum an
//! integer multiple of the smallest term below 2^24 of it, i.e. representable without rounding.

/// Most terms a code may hold; larger requests are clamped. Eight terms already give a relative
/// error below 1e-3, far beyond anything a shift-and-add kernel would spend.
pub const MAX_TERMS: usize = 8;

/// Smallest exponent kept. Terms below the normal `f32` range are dropped so that applying a term
/// as an exponent adjustment (or a multiply by an exact power of two) is always exact.
const MIN_EXP: i32 = -126;
/// Largest exponent allowed: 2^127 is the biggest power of two an `f32` can hold.
const MAX_EXP: i32 = 127;
/// Terms further than this many binades below the leading one could make the `f32` sum inexact.
const EXP_WINDOW: i32 = 23;

/// One signed power of two `sign·2^exp` as an exact `f64`.
fn pow2(sign: i8, exp: i8) -> f64 {
    // Build 2^exp from its bit pattern: exact and independent of any libm.
    let bits = ((i64::from(exp) + 1023) as u64) << 52;
    f64::from(sign) * f64::from_bits(bits)
}

/// `round(log2|r|)` for finite non-zero `r`, computed from the bit pattern so it is exact and
/// platform independent: the mantissa m ∈ [1, 2) rounds up iff m ≥ √2.
fn log2_round(r: f64) -> i32 {
    let a = r.abs();
    let bits = a.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    if biased == 0 {
        // Subnormal f64: far below anything an f32 scale can reach; normalise via a multiply.
        return log2_round(a * 2f64.powi(64)) - 64;
    }
    let exp = biased - 1023;
    let mantissa = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    if mantissa >= std::f64::consts::SQRT_2 {
        exp + 1
    } else {
        exp
    }
}

/// Runs the greedy decomposition, calling `push(sign, exp)` for each kept term. Returns `false`
/// when `x` cannot be encoded (non-finite, or its leading power of two exceeds the `f32` range).
fn greedy_terms(x: f32, terms: usize, mut push: impl FnMut(i8, i8)) -> bool {
    if !x.is_finite() {
        return false;
    }
    let target = f64::from(x);
    // The residual is exact in f64: x has 24 significant bits and every subtracted term sits in
    // a 24-binade window, so the difference never needs more than 53 bits.
    let mut residual = target;
    let mut lead: Option<i32> = None;
    for _ in 0..terms.min(MAX_TERMS) {
        if residual == 0.0 {
            break;
        }
        let e = log2_round(residual);
        match lead {
            None => {
                if e > MAX_EXP {
                    return false;
                }
                if e < MIN_EXP {
                    // Underflowing magnitude: it flushes to zero (an empty code).
                    break;
                }
                lead = Some(e);
            }
            Some(l) => {
                if e < l - EXP_WINDOW || e < MIN_EXP {
                    break;
                }
            }
        }
        let sign: i8 = if residual < 0.0 { -1 } else { 1 };
        // In range by the checks above: MIN_EXP..=MAX_EXP fits an i8.
        let exp = e as i8;
        push(sign, exp);
        residual -= pow2(sign, exp);
    }
    true
}

/// Greedy log2-domain APoT rounding of `x` to a sum of at most `terms` signed powers of two.
///
/// `terms == 0` returns `x` unchanged (float scales). Non-finite inputs and magnitudes whose
/// leading power of two would overflow `f32` are also returned unchanged; magnitudes below
/// ~2^-126.5 round to `0.0`. Equals `ApotCode::encode(x, terms)?.decode()` whenever that exists.
pub fn apot_round(x: f32, terms: usize) -> f32 {
    if terms == 0 {
        return x;
    }
    let mut sum = 0.0f64;
    if greedy_terms(x, terms, |s, e| sum += pow2(s, e)) {
        // Exact: see the module docs on the exponent window.
        sum as f32
    } else {
        x
    }
}

/// A scale stored as signed powers of two: the value is `Σ sign·2^exp` over `terms`.
///
/// `sign` is ±1 and `exp` lies in `-126..=127`, so each term is a normal `f32` power of two.
/// Terms are in greedy order (non-increasing magnitude); an empty list means 0.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ApotCode {
    /// `(sign, exponent)` pairs, leading term first.
    pub terms: Vec<(i8, i8)>,
}

impl ApotCode {
    /// Greedy APoT code of `x` with at most `k` terms (clamped to [`MAX_TERMS`]).
    ///
    /// Returns `None` for non-finite `x` or when the leading power of two exceeds 2^127.
    /// `k == 0` gives the empty code (value 0); use [`apot_round`] for the "leave floats" knob.
    pub fn encode(x: f32, k: usize) -> Option<Self> {
        let mut terms = Vec::with_capacity(k.min(MAX_TERMS));
        greedy_terms(x, k, |s, e| terms.push((s, e))).then_some(Self { terms })
    }

    /// The exact `f32` value `Σ sign·2^exp`.
    pub fn decode(&self) -> f32 {
        let sum: f64 = self.terms.iter().map(|&(s, e)| pow2(s, e)).sum();
        // Exact for codes produced by `encode` (24-binade window); hand-built codes with a wider
        // spread round here like any f64→f32 conversion.
        sum as f32
    }

    /// Multiplies `x` by the code's value term by term, as a shift-and-add kernel would: each
    /// term is an exact power-of-two scaling (no rounding unless it over/underflows), and only
    /// the final additions round.
    pub fn apply(&self, x: f32) -> f32 {
        let mut acc = 0.0f32;
        for &(s, e) in &self.terms {
            acc += x * (pow2(s, e) as f32);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Tiny xorshift generator so tests are reproducible without extra dependencies.
    struct Rng(u64);
    impl Rng {
        fn next_f32(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32
        }
        /// Log-uniform magnitude over many binades with a random sign.
        fn scale(&mut self) -> f32 {
            let m = (2.0f32).powf(self.next_f32() * 40.0 - 30.0);
            if self.next_f32() < 0.5 { -m } else { m }
        }
    }

    #[test]
    fn zero_terms_keeps_float() {
        assert_eq!(apot_round(0.7312, 0), 0.7312);
        assert_eq!(apot_round(-3.3, 0), -3.3);
    }

    #[test]
    fn log_domain_threshold() {
        // 0.72 > 2^-0.5 ≈ 0.7071, so log rounding gives 1.0 although 0.5 is nearer linearly.
        assert_eq!(apot_round(0.72, 1), 1.0);
        assert_eq!(apot_round(0.70, 1), 0.5);
        assert_eq!(apot_round(-0.72, 1), -1.0);
        assert_eq!(apot_round(0.0, 3), 0.0);
        // Later terms may be negative: 0.72 → 1 − 0.25 (0.28 rounds to 2^-2) + ...
        let c = ApotCode::encode(0.72, 2).unwrap();
        assert_eq!(c.terms, vec![(1, 0), (-1, -2)]);
        assert_eq!(c.decode(), 0.75);
    }

    #[test]
    fn exact_powers_need_one_term() {
        for e in -20..20 {
            let x = 2f32.powi(e);
            let c = ApotCode::encode(x, 3).unwrap();
            assert_eq!(c.terms, vec![(1, e as i8)]);
            assert_eq!(c.decode(), x);
        }
    }

    #[test]
    fn every_term_is_pot_and_roundtrip_is_bit_exact() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..20_000 {
            let x = rng.scale();
            for k in 1..=MAX_TERMS {
                let c = ApotCode::encode(x, k).unwrap();
                assert!(c.terms.len() <= k);
                let mut exact = 0.0f64;
                for &(s, e) in &c.terms {
                    assert!(s == 1 || s == -1);
                    assert!((MIN_EXP..=MAX_EXP).contains(&i32::from(e)));
                    exact += f64::from(s) * 2f64.powi(i32::from(e));
                }
                let d = c.decode();
                // The f32 value is exactly the sum of its powers of two.
                assert_eq!(f64::from(d), exact, "x={x} k={k}");
                assert_eq!(d.to_bits(), apot_round(x, k).to_bits());
                // Re-encoding the decoded value is stable and bit-exact.
                let c2 = ApotCode::encode(d, k).unwrap();
                assert_eq!(c2.decode().to_bits(), d.to_bits());
                // Shift-style application equals an ordinary multiply by each exact term.
                let y = rng.next_f32() * 3.0 - 1.5;
                let mut by_terms = 0.0f32;
                for &(s, e) in &c.terms {
                    by_terms += y * (f64::from(s) * 2f64.powi(i32::from(e))) as f32;
                }
                assert_eq!(c.apply(y).to_bits(), by_terms.to_bits());
            }
        }
    }

    #[test]
    fn apot_error_bound() {
        let ratio = std::f64::consts::SQRT_2 - 1.0;
        let mut rng = Rng(42);
        let mut worst = [0.0f64; MAX_TERMS + 1];
        for _ in 0..50_000 {
            let x = rng.scale();
            let mut prev_bound = f64::INFINITY;
            for (k, w) in worst.iter_mut().enumerate().skip(1) {
                let err = (f64::from(x) - f64::from(apot_round(x, k))).abs();
                let bound = ratio.powi(k as i32) * f64::from(x).abs();
                assert!(
                    err <= bound * (1.0 + 1e-12),
                    "x={x} k={k} err={err} bound={bound}"
                );
                assert!(bound <= prev_bound);
                prev_bound = bound;
                *w = w.max(err / f64::from(x).abs());
            }
        }
        // Sampled worst cases sit close to the spec's 0.414 / 0.108 / 0.027.
        assert!(worst[1] > 0.40 && worst[1] <= 0.4143);
        assert!(worst[3] <= 0.0711);
    }

    #[test]
    fn edge_cases() {
        assert!(ApotCode::encode(f32::NAN, 3).is_none());
        assert!(ApotCode::encode(f32::INFINITY, 3).is_none());
        assert!(apot_round(f32::NAN, 3).is_nan());
        // f32::MAX rounds up to 2^128 in the log domain, which does not fit: left unchanged.
        assert_eq!(apot_round(f32::MAX, 3), f32::MAX);
        // A subnormal flushes to zero.
        assert_eq!(apot_round(1e-44, 3), 0.0);
        assert_eq!(ApotCode::encode(0.0, 3).unwrap().decode(), 0.0);
        assert_eq!(ApotCode::encode(0.3, 0).unwrap().terms, vec![]);
    }
}
