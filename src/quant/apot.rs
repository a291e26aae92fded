//! Additive power-of-two (APoT) scales: the greedy log2-domain decomposition of a scale into a
//! short sum of signed powers of two (ShiftAddLLM Eq. 2), its compact `(sign, exponent)`
//! encoding, and the bit-exact decoding back to `f32`.
//!
//! Rounding is in the log2 domain, `POT(r) = sign(r)·2^round(log2|r|)`, so the decision
//! threshold between 2^e and 2^(e+1) is √2·2^e (not 1.5·2^e). Each greedy term leaves a relative
//! residual of at most √2−1, hence `|x − APoT_k(x)| ≤ (√2−1)^k·|x|`.
//!
//! Every value produced here is *exactly* `Σ s_j·2^(e_j)` in `f32`: terms are only added while
//! their exponent lies within 15 binades of the leading term, which keeps every partial sum an
//! integer multiple of the smallest term below 2^24 of it, i.e. representable without rounding
//! (and lets [`ScaleCodes`] store each gap between terms in 4 bits).
//!
//! [`ScaleCodes`] is the stored form of a matrix's scales: 16 bits per scale of up to three
//! terms (exponent offset from a per-matrix base, two gaps, two signs) plus one base byte,
//! decoded bit-exactly back to `f32`.

/// Most terms a code may hold; larger requests are clamped. Eight terms already give a relative
/// error below 1e-3, far beyond anything a shift-and-add kernel would spend.
pub const MAX_TERMS: usize = 8;

/// Smallest exponent kept. Terms below the normal `f32` range are dropped so that applying a term
/// as an exponent adjustment (or a multiply by an exact power of two) is always exact.
const MIN_EXP: i32 = -126;
/// Largest exponent allowed: 2^127 is the biggest power of two an `f32` can hold.
const MAX_EXP: i32 = 127;
/// Terms more than this many binades below the leading one are dropped (they would change the
/// scale by less than 2^-15 relative). 23 would still keep the `f32` sum exact; 15 also makes
/// every gap between terms fit the 4-bit fields of [`ScaleCodes`].
const EXP_WINDOW: i32 = 15;

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

/// Terms a [`ScaleCodes`] entry holds.
pub const CODE_TERMS: usize = 3;
/// Exponent-offset value that marks a zero scale.
const ZERO_OFFSET: u16 = 63;

/// A matrix's non-negative APoT scales (at most [`CODE_TERMS`] terms each) in 16 bits apiece:
/// bits 0–5 the leading exponent minus `base` (63 = the scale is 0), bits 6–9 the gap `d1` to the
/// second term's exponent (0 = no second term), bit 10 its sign (set = minus), bits 11–14 the gap
/// `d2` from the second to the third term (0 = none), bit 15 its sign. The value is
/// `2^e0 ± 2^(e0−d1) ± 2^(e0−d1−d2)`, exactly the `f32` the quantizer produced.
///
/// Stored bytes: `2·len + 1` (the codes and the base exponent as one `i8`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleCodes {
    /// Smallest leading exponent of the matrix.
    pub base: i8,
    /// One code per scale, in the caller's order.
    pub codes: Vec<u16>,
}

/// `2^e` as an `f32`, for `e` in the normal range `-126..=127`.
#[inline]
fn pow2f(e: i32) -> f32 {
    f32::from_bits(((e + 127) as u32) << 23)
}

impl ScaleCodes {
    /// Encodes `values`, or returns `None` when some value is not a non-negative sum of at most
    /// three powers of two that the fields can hold (float scales, more APoT terms, a gap over
    /// 15 binades, or leading exponents spread over more than 62 binades). Every encoded value
    /// decodes to the same `f32` bits.
    pub fn encode(values: &[f32]) -> Option<Self> {
        // (leading exponent, rest of the code) per value; None for zero.
        let mut parts: Vec<Option<(i32, u16)>> = Vec::with_capacity(values.len());
        for &v in values {
            if v == 0.0 {
                parts.push(None);
                continue;
            }
            if v.is_nan() || v < 0.0 {
                return None;
            }
            let code = ApotCode::encode(v, CODE_TERMS)?;
            if code.decode().to_bits() != v.to_bits() {
                return None;
            }
            let t = &code.terms;
            let (s0, e0) = (t[0].0, i32::from(t[0].1));
            if s0 != 1 {
                return None;
            }
            let mut rest = 0u16;
            let mut prev = e0;
            for (j, &(s, e)) in t.iter().enumerate().skip(1) {
                let gap = prev - i32::from(e);
                if !(1..=15).contains(&gap) {
                    return None;
                }
                let shift = if j == 1 { 6 } else { 11 };
                rest |= (gap as u16) << shift;
                if s < 0 {
                    rest |= 1 << (shift + 4);
                }
                prev = i32::from(e);
            }
            parts.push(Some((e0, rest)));
        }
        let base = parts.iter().flatten().map(|p| p.0).min().unwrap_or(0);
        let top = parts.iter().flatten().map(|p| p.0).max().unwrap_or(0);
        if top - base >= i32::from(ZERO_OFFSET) {
            return None;
        }
        let codes = parts
            .iter()
            .map(|p| match p {
                None => ZERO_OFFSET,
                Some((e0, rest)) => (e0 - base) as u16 | rest,
            })
            .collect();
        Some(Self {
            base: i8::try_from(base).ok()?,
            codes,
        })
    }

    /// Number of scales.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// Whether there are no scales.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// Stored bytes: two per code plus the base exponent.
    pub fn size_bytes(&self) -> usize {
        2 * self.codes.len() + 1
    }

    /// The scale at `i`, bit-exactly the encoded `f32` (three exact powers of two summed in an
    /// order whose partial sums are all representable).
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        decode_code(self.codes[i], i32::from(self.base))
    }

    /// Decodes `out.len()` scales starting at `start`.
    #[inline]
    pub fn decode_into(&self, start: usize, out: &mut [f32]) {
        let base = i32::from(self.base);
        for (o, &c) in out.iter_mut().zip(&self.codes[start..]) {
            *o = decode_code(c, base);
        }
    }
}

/// One code of [`ScaleCodes`] back to `f32` (branch-light: absent terms add a signed zero, so
/// the sum is unchanged).
#[inline]
fn decode_code(c: u16, base: i32) -> f32 {
    let off = i32::from(c & 63);
    if off == i32::from(ZERO_OFFSET) {
        return 0.0;
    }
    let e0 = base + off;
    let d1 = i32::from((c >> 6) & 15);
    let d2 = i32::from((c >> 11) & 15);
    let sign = |bit: u16| if c & (1 << bit) != 0 { -1.0f32 } else { 1.0 };
    let t1 = if d1 == 0 {
        0.0
    } else {
        sign(10) * pow2f(e0 - d1)
    };
    let t2 = if d1 == 0 || d2 == 0 {
        0.0
    } else {
        sign(15) * pow2f(e0 - d1 - d2)
    };
    pow2f(e0) + t1 + t2
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
        // Sampled worst cases sit close to Shift-add §3's 0.414 / 0.108 / 0.027.
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

    /// Compact codes: every APoT-3 value (the quantizer's scales) round-trips bit-exactly,
    /// zeros included, and the byte count is two per scale plus the base.
    #[test]
    fn scale_codes_round_trip() {
        let mut rng = Rng(0x5eed_cafe_f00d_0001);
        for k in 0..=CODE_TERMS {
            let values: Vec<f32> = (0..5000)
                .map(|i| {
                    if i % 97 == 0 {
                        0.0
                    } else {
                        // Magnitudes over 30 binades, as weight scales of one matrix span.
                        let m = 2f32.powf(rng.next_f32() * 30.0 - 25.0);
                        apot_round(m, k.max(1))
                    }
                })
                .collect();
            let codes = ScaleCodes::encode(&values).unwrap();
            assert_eq!(codes.len(), values.len());
            assert_eq!(codes.size_bytes(), 2 * values.len() + 1);
            let mut out = vec![f32::NAN; values.len()];
            codes.decode_into(0, &mut out);
            for (i, (&v, &o)) in values.iter().zip(&out).enumerate() {
                assert_eq!(v.to_bits(), o.to_bits(), "k={k} i={i}: {v} vs {o}");
                assert_eq!(codes.get(i).to_bits(), v.to_bits());
            }
        }
        // Extremes of the fields: a 15-binade gap, negative later terms, the exponent spread.
        let v = [
            1.0 - 2f32.powi(-15),
            0.75,
            1.25,
            2f32.powi(-60),
            2f32.powi(-39),
        ];
        let c = ScaleCodes::encode(&v).unwrap();
        for (i, &x) in v.iter().enumerate() {
            assert_eq!(c.get(i), x);
        }
    }

    /// Values the 16-bit form cannot hold are refused (the caller then stores f32).
    #[test]
    fn scale_codes_refuse_what_they_cannot_hold() {
        // Float scale needing more than three terms.
        assert!(ScaleCodes::encode(&[0.7312]).is_none());
        // Four terms.
        assert!(ScaleCodes::encode(&[1.0 + 0.25 + 1.0 / 16.0 + 1.0 / 256.0]).is_none());
        // A gap of 16 binades.
        assert!(ScaleCodes::encode(&[1.0 + 2f32.powi(-16)]).is_none());
        // Negative and non-finite scales.
        assert!(ScaleCodes::encode(&[-0.5]).is_none());
        assert!(ScaleCodes::encode(&[f32::NAN]).is_none());
        // Leading exponents 63 binades apart.
        assert!(ScaleCodes::encode(&[1.0, 2f32.powi(-63)]).is_none());
        assert!(ScaleCodes::encode(&[1.0, 2f32.powi(-62)]).is_some());
        // APoT rounding itself never produces a gap over 15 binades.
        assert_eq!(apot_round(1.0 + 2f32.powi(-16), 3), 1.0);
    }
}
