//! The KV cache's element types, and one query head's attention over the cache. Past the
//! first few hundred positions a decode step reads more cache than weights on a small model
//! (SmolLM2-135M at 2 048 positions: 94 MB of f32 keys and values against 73 MB of 3-bit
//! weights), so the cache can be held in f16, which halves that stream for a rounding of each
//! key and value to 11 significant bits; and the attention runs in AVX-512 (the query and the
//! output in registers, the softmax's exponentials 16 at a time), so it costs about what its
//! bytes do.

use half::f16;

/// Which element type the KV cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    #[default]
    F32,
    F16,
}

impl std::str::FromStr for KvType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            _ => Err(format!("`{s}` is not a KV cache type: f32 or f16")),
        }
    }
}

/// An element of the KV cache: appended from f32, read back by the attention.
#[allow(unsafe_code)]
pub trait KvElem: Copy + Send + Sync + 'static {
    /// 16 elements at `p` as f32 lanes.
    ///
    /// # Safety
    /// AVX-512F is present and `p` is valid for 16 reads.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
    /// Appends `src` to `dst`.
    fn extend(dst: &mut Vec<Self>, src: &[f32]);
    /// `q · k`.
    fn dot(q: &[f32], k: &[Self]) -> f32;
    /// `out += w · v`.
    fn add_scaled(out: &mut [f32], w: f32, v: &[Self]);
}

#[allow(unsafe_code)]
impl KvElem for f32 {
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }

    fn extend(dst: &mut Vec<Self>, src: &[f32]) {
        dst.extend_from_slice(src);
    }

    fn dot(q: &[f32], k: &[Self]) -> f32 {
        super::linear::dot(q, k)
    }

    fn add_scaled(out: &mut [f32], w: f32, v: &[Self]) {
        for (o, x) in out.iter_mut().zip(v) {
            *o += w * x;
        }
    }
}

#[allow(unsafe_code)]
impl KvElem for f16 {
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }

    fn extend(dst: &mut Vec<Self>, src: &[f32]) {
        dst.extend(src.iter().map(|&x| f16::from_f32(x)));
    }

    fn dot(q: &[f32], k: &[Self]) -> f32 {
        if simd::available() {
            return simd::dot_f16(q, k);
        }
        q.iter().zip(k).map(|(a, b)| a * b.to_f32()).sum()
    }

    fn add_scaled(out: &mut [f32], w: f32, v: &[Self]) {
        if simd::available() {
            return simd::add_scaled_f16(out, w, v);
        }
        for (o, x) in out.iter_mut().zip(v) {
            *o += w * x.to_f32();
        }
    }
}

/// `row = softmax(scale · row)` in place (`scale > 0`), the exponentials 16 at a time where
/// AVX-512 is there: one query's attention weights in the many-row pass.
pub fn softmax_scaled(row: &mut [f32], scale: f32) {
    if row.is_empty() {
        return;
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = if simd::available() {
        simd::exp_shifted(row, max, scale)
    } else {
        let mut sum = 0f32;
        for v in row.iter_mut() {
            *v = ((*v - max) * scale).exp();
            sum += *v;
        }
        sum
    };
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// One query head `q` (`head_dim` values) attending over the first `n` positions of a block's
/// cache, whose keys and values for this head's KV group sit at `t · stride + offset`:
/// `out = softmax(scale · q·kₜ) · vₜ`. `scores` is working memory.
#[allow(clippy::too_many_arguments)]
pub fn attend<T: KvElem>(
    q: &[f32],
    (keys, values): (&[T], &[T]),
    (stride, offset): (usize, usize),
    n: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = q.len();
    assert_eq!(out.len(), hd, "one head's output");
    if n == 0 {
        out.fill(0.0);
        return;
    }
    assert!(
        (n - 1) * stride + offset + hd <= keys.len().min(values.len()),
        "position {} of the cache is not there",
        n - 1
    );
    scores.clear();
    scores.resize(n, 0.0);
    if simd::available() && hd.is_multiple_of(16) && hd <= simd::MAX_HEAD_DIM {
        return simd::attend(q, (keys, values), (stride, offset), scale, scores, out);
    }
    for (t, s) in scores.iter_mut().enumerate() {
        *s = T::dot(q, &keys[t * stride + offset..][..hd]) * scale;
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    for (t, p) in scores.iter().enumerate() {
        T::add_scaled(out, p / sum, &values[t * stride + offset..][..hd]);
    }
}

#[allow(unsafe_code)]
mod simd {
    use super::KvElem;
    use half::f16;

    pub fn available() -> bool {
        crate::cpu::has_avx512f()
    }

    /// The longest head the vector attention keeps in registers (16 vectors of 16 lanes).
    pub const MAX_HEAD_DIM: usize = 256;

    /// [`super::attend`] for `head_dim` a multiple of 16 up to [`MAX_HEAD_DIM`]; `scores` is
    /// `n` long, the bounds checked by the caller.
    pub fn attend<T: KvElem>(
        q: &[f32],
        kv: (&[T], &[T]),
        layout: (usize, usize),
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            assert!(available() && q.len().is_multiple_of(16) && q.len() <= MAX_HEAD_DIM);
            assert_eq!(out.len(), q.len());
            // SAFETY: AVX-512F is present; `attend` checked that every position's key and
            // value rows lie inside the cache slices, and `q`/`out` are `head_dim` long.
            unsafe { attend_avx512(q, kv, layout, scale, scores, out) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (q, kv, layout, scale, scores, out);
            unreachable!("the AVX-512 kernel is only dispatched on x86_64");
        }
    }

    /// `row[i] = e^(scale·(row[i] − max))`, returning their sum.
    pub fn exp_shifted(row: &mut [f32], max: f32, scale: f32) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            assert!(available());
            // SAFETY: AVX-512F is present; every access is masked to the row.
            unsafe { exp_shifted_avx512(row, max, scale) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (row, max, scale);
            unreachable!("the AVX-512 kernel is only dispatched on x86_64");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn exp_shifted_avx512(row: &mut [f32], max: f32, scale: f32) -> f32 {
        use std::arch::x86_64::*;
        let (maxv, scalev) = (_mm512_set1_ps(max), _mm512_set1_ps(scale));
        let mut sum = _mm512_setzero_ps();
        for chunk in row.chunks_mut(16) {
            let m: __mmask16 = if chunk.len() == 16 {
                !0
            } else {
                (1u16 << chunk.len()) - 1
            };
            // SAFETY: the mask covers only the chunk's elements.
            unsafe {
                let x = _mm512_maskz_loadu_ps(m, chunk.as_ptr());
                let e = exp_nonpositive(_mm512_mul_ps(_mm512_sub_ps(x, maxv), scalev));
                let e = _mm512_maskz_mov_ps(m, e);
                sum = _mm512_add_ps(sum, e);
                _mm512_mask_storeu_ps(chunk.as_mut_ptr(), m, e);
            }
        }
        _mm512_reduce_add_ps(sum)
    }

    /// `e^x` for `x ≤ 0`, 16 lanes: `x = n·ln2 + r` with `|r| ≤ ln2/2`, `e^r` by its degree-6
    /// Taylor polynomial (relative error under 2·10⁻⁷), scaled by `2^n`. Below −87 it is 0 or
    /// a denormal, as `f32::exp` gives.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp_nonpositive(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
        let n = _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        // ln 2 in two parts, so `n · ln2_hi` is exact.
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm512_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    /// The query and the output accumulators live in (at most 16) vector registers; each
    /// position's key and value rows are read once.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn attend_avx512<T: KvElem>(
        q: &[f32],
        (keys, values): (&[T], &[T]),
        (stride, offset): (usize, usize),
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        let vectors = q.len() / 16;
        let mut qv = [_mm512_setzero_ps(); MAX_HEAD_DIM / 16];
        for (i, v) in qv.iter_mut().take(vectors).enumerate() {
            // SAFETY: `q` holds `16 · vectors` values.
            *v = unsafe { _mm512_loadu_ps(q.as_ptr().add(16 * i)) };
        }
        let mut max = f32::NEG_INFINITY;
        for (t, s) in scores.iter_mut().enumerate() {
            let k = keys[t * stride + offset..].as_ptr();
            let mut acc = _mm512_setzero_ps();
            for (i, v) in qv.iter().take(vectors).enumerate() {
                // SAFETY: the key row holds `16 · vectors` elements (checked by `attend`).
                acc = _mm512_fmadd_ps(*v, unsafe { T::load16(k.add(16 * i)) }, acc);
            }
            *s = _mm512_reduce_add_ps(acc) * scale;
            max = max.max(*s);
        }
        let (mut sum, maxv) = (_mm512_setzero_ps(), _mm512_set1_ps(max));
        for chunk in scores.chunks_mut(16) {
            let m: __mmask16 = if chunk.len() == 16 {
                !0
            } else {
                (1u16 << chunk.len()) - 1
            };
            // SAFETY: the mask covers only the chunk's elements.
            unsafe {
                let e = exp_nonpositive(_mm512_sub_ps(
                    _mm512_maskz_loadu_ps(m, chunk.as_ptr()),
                    maxv,
                ));
                let e = _mm512_maskz_mov_ps(m, e);
                sum = _mm512_add_ps(sum, e);
                _mm512_mask_storeu_ps(chunk.as_mut_ptr(), m, e);
            }
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
        let mut ov = [_mm512_setzero_ps(); MAX_HEAD_DIM / 16];
        for (t, &p) in scores.iter().enumerate() {
            let v = values[t * stride + offset..].as_ptr();
            let w = _mm512_set1_ps(p);
            for (i, o) in ov.iter_mut().take(vectors).enumerate() {
                // SAFETY: the value row holds `16 · vectors` elements (checked by `attend`).
                *o = _mm512_fmadd_ps(w, unsafe { T::load16(v.add(16 * i)) }, *o);
            }
        }
        for (i, o) in ov.iter().take(vectors).enumerate() {
            // SAFETY: `out` holds `16 · vectors` values.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(16 * i), _mm512_mul_ps(*o, inv)) };
        }
    }

    pub fn dot_f16(q: &[f32], k: &[f16]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            assert!(available());
            let n = q.len().min(k.len());
            // SAFETY: AVX-512F is present; the kernel reads the first `n` of both slices.
            unsafe { dot_avx512(&q[..n], &k[..n]) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (q, k);
            unreachable!("the AVX-512 kernel is only dispatched on x86_64");
        }
    }

    pub fn add_scaled_f16(out: &mut [f32], w: f32, v: &[f16]) {
        #[cfg(target_arch = "x86_64")]
        {
            assert!(available());
            let n = out.len().min(v.len());
            // SAFETY: AVX-512F is present; the kernel touches the first `n` of both slices.
            unsafe { add_scaled_avx512(&mut out[..n], w, &v[..n]) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (out, w, v);
            unreachable!("the AVX-512 kernel is only dispatched on x86_64");
        }
    }

    /// The last `len < 16` halves at `p`, zero-padded (a masked 16-bit load would need
    /// AVX-512BW).
    ///
    /// # Safety
    /// `p` is valid for `len` reads.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn tail(p: *const u16, len: usize) -> std::arch::x86_64::__m256i {
        let mut buf = [0u16; 16];
        // SAFETY: the caller's contract; `len < 16` fits the buffer.
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), len) };
        // SAFETY: the buffer holds 16 halves.
        unsafe { std::arch::x86_64::_mm256_loadu_si256(buf.as_ptr().cast()) }
    }

    /// 16 halves converted per step (`vcvtph2ps`), then a zero-padded tail.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn dot_avx512(q: &[f32], k: &[f16]) -> f32 {
        use std::arch::x86_64::*;
        let n = q.len();
        let (pq, pk) = (q.as_ptr(), k.as_ptr().cast::<u16>());
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY (every load): `i + 16 <= n`, or a mask covering only indices below `n`.
        while i + 16 <= n {
            let (x, h) = unsafe {
                (
                    _mm512_loadu_ps(pq.add(i)),
                    _mm256_loadu_si256(pk.add(i).cast()),
                )
            };
            acc = _mm512_fmadd_ps(x, _mm512_cvtph_ps(h), acc);
            i += 16;
        }
        if i < n {
            let m: __mmask16 = (1u16 << (n - i)) - 1;
            let (x, h) = unsafe { (_mm512_maskz_loadu_ps(m, pq.add(i)), tail(pk.add(i), n - i)) };
            acc = _mm512_fmadd_ps(x, _mm512_cvtph_ps(h), acc);
        }
        _mm512_reduce_add_ps(acc)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn add_scaled_avx512(out: &mut [f32], w: f32, v: &[f16]) {
        use std::arch::x86_64::*;
        let n = out.len();
        let (po, pv) = (out.as_mut_ptr(), v.as_ptr().cast::<u16>());
        let wv = _mm512_set1_ps(w);
        let mut i = 0;
        // SAFETY (every access): `i + 16 <= n`, or a mask covering only indices below `n`.
        while i + 16 <= n {
            unsafe {
                let h = _mm256_loadu_si256(pv.add(i).cast());
                let o = _mm512_loadu_ps(po.add(i));
                _mm512_storeu_ps(po.add(i), _mm512_fmadd_ps(wv, _mm512_cvtph_ps(h), o));
            }
            i += 16;
        }
        if i < n {
            let m: __mmask16 = (1u16 << (n - i)) - 1;
            unsafe {
                let h = tail(pv.add(i), n - i);
                let o = _mm512_maskz_loadu_ps(m, po.add(i));
                _mm512_mask_storeu_ps(po.add(i), m, _mm512_fmadd_ps(wv, _mm512_cvtph_ps(h), o));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `softmax(scale · q·kₜ) · vₜ` in f64 over the cache as stored.
    fn reference<T: KvElem>(
        q: &[f32],
        (keys, values): (&[f32], &[f32]),
        (stride, offset): (usize, usize),
        n: usize,
        scale: f32,
    ) -> Vec<f64> {
        let hd = q.len();
        let row = |c: &[f32], t: usize| -> Vec<f64> {
            let mut stored = Vec::new();
            T::extend(&mut stored, &c[t * stride + offset..][..hd]);
            let mut back = vec![0.0f32; hd];
            T::add_scaled(&mut back, 1.0, &stored);
            back.iter().map(|&x| f64::from(x)).collect()
        };
        let s: Vec<f64> = (0..n)
            .map(|t| {
                let k = row(keys, t);
                q.iter()
                    .zip(&k)
                    .map(|(a, b)| f64::from(*a) * b)
                    .sum::<f64>()
                    * f64::from(scale)
            })
            .collect();
        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        let mut out = vec![0.0; hd];
        for (t, w) in e.iter().enumerate() {
            for (o, v) in out.iter_mut().zip(row(values, t)) {
                *o += w / sum * v;
            }
        }
        out
    }

    #[test]
    fn attention_matches_an_f64_softmax_for_both_caches_and_every_head_size() {
        // 64 and 48 take the vector path (multiples of 16), 20 the scalar one; 300 positions
        // put the exponentials' inputs far below 0 and a partial last chunk of 16.
        for hd in [64, 48, 20] {
            for n in [1, 5, 33, 300] {
                let (stride, offset) = (3 * hd, hd);
                let cache = |salt: usize| -> Vec<f32> {
                    (0..n * stride)
                        .map(|i| (((i * 31 + salt) % 97) as f32 - 48.0) / 12.0)
                        .collect()
                };
                let (keys, values) = (cache(5), cache(11));
                let q: Vec<f32> = (0..hd).map(|i| ((i * 7 % 13) as f32 - 6.0) / 4.0).collect();
                let scale = 1.0 / (hd as f32).sqrt();
                let mut scores = Vec::new();
                let mut out = vec![0.0f32; hd];
                let want = reference::<f32>(&q, (&keys, &values), (stride, offset), n, scale);
                attend::<f32>(
                    &q,
                    (&keys, &values),
                    (stride, offset),
                    n,
                    scale,
                    &mut scores,
                    &mut out,
                );
                let close = |got: &[f32], want: &[f64], what: &str| {
                    for (g, w) in got.iter().zip(want) {
                        assert!(
                            (f64::from(*g) - w).abs() <= 1e-5 * w.abs().max(1.0),
                            "{what} hd {hd} n {n}: {g} vs {w}"
                        );
                    }
                };
                close(&out, &want, "f32");
                let (mut k16, mut v16) = (Vec::new(), Vec::new());
                f16::extend(&mut k16, &keys);
                f16::extend(&mut v16, &values);
                let want = reference::<f16>(&q, (&keys, &values), (stride, offset), n, scale);
                attend::<f16>(
                    &q,
                    (&k16, &v16),
                    (stride, offset),
                    n,
                    scale,
                    &mut scores,
                    &mut out,
                );
                close(&out, &want, "f16");
            }
        }
    }

    #[test]
    fn f16_kernels_match_the_scalar_sums_at_every_length() {
        for n in [1, 7, 16, 31, 64, 100] {
            let q: Vec<f32> = (0..n).map(|i| ((i * 13 % 17) as f32 - 8.0) / 3.0).collect();
            let mut k = Vec::new();
            f16::extend(&mut k, &q.iter().map(|x| x * 0.7 + 0.1).collect::<Vec<_>>());
            let want: f32 = q.iter().zip(&k).map(|(a, b)| a * b.to_f32()).sum();
            let got = <f16 as KvElem>::dot(&q, &k);
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{n}: {got} vs {want}"
            );
            let mut out: Vec<f32> = (0..n).map(|i| i as f32).collect();
            <f16 as KvElem>::add_scaled(&mut out, -0.5, &k);
            for (i, (o, v)) in out.iter().zip(&k).enumerate() {
                let want = i as f32 - 0.5 * v.to_f32();
                assert!(
                    (o - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{n}/{i}: {o} vs {want}"
                );
            }
        }
    }
}
