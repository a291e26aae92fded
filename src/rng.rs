//! The one seeded random-number generator of the crate (SplitMix64) and its mixer: the zoo's
//! corpus and initialisation, calibration windows, sweep sampling, benchmark data and the tests
//! all draw from it, so a seed means the same numbers everywhere and on every platform.

/// The SplitMix64 finaliser: a cheap bijective 64-bit mixer with good avalanche (seeding,
/// hashing).
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// SplitMix64's state increment (the golden-ratio gamma).
pub const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Small deterministic PRNG (SplitMix64). Not cryptographic; chosen because it is tiny, has no
/// bad seeds (0 is fine) and is identical on every platform.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// Next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix64(self.state)
    }

    /// Uniform integer in `0..n`; returns 0 when `n == 0`.
    ///
    /// Uses the multiply-high trick; its bias is below 2^-40 for the small `n` drawn here.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform integer in `lo..=hi` (`lo` when `hi < lo`).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// `true` with probability `p` (clamped to `[0, 1]` in effect).
    pub fn chance(&mut self, p: f64) -> bool {
        // 53 random bits give every representable f64 in [0, 1) a fair shot.
        let u = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        u < p
    }

    /// A uniformly chosen element. Panics on an empty slice; every call site passes a
    /// non-empty constant table.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Fisher-Yates shuffle in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    /// `n` samples of N(0, std²) by Box–Muller, two per pair of draws (the zoo's weight
    /// initialisation: changing this changes every trained member).
    pub fn normals(&mut self, n: usize, std: f64) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let theta = std::f64::consts::TAU * u2;
            out.push((r * theta.cos()) as f32);
            out.push((r * theta.sin()) as f32);
        }
        out.truncate(n);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64's published first outputs for seed 0 (the stream every stored seed names).
    #[test]
    fn splitmix64_reference_stream() {
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn normals_have_the_asked_spread() {
        let v = Rng::new(3).normals(20_001, 2.0);
        assert_eq!(v.len(), 20_001);
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / v.len() as f64;
        assert!(
            mean.abs() < 0.05 && (var.sqrt() - 2.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
