//! One linear layer in the engine: the stored form's own batch-1 kernel over a range of output
//! rows, so a step can split every layer across threads by rows.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::DType;

use crate::model::LinearWeight;
use crate::model::bitmask::BitmaskMatrix;
use crate::model::hashed::HashedWeight;
use crate::model::nm::NmPacked;
use crate::model::sparse::CsrMatrix;
use crate::quant::lut::BcqPacked;

use crate::quant::act8::Int8Blocks;
use crate::quant::rtn::RtnRule;

use super::rtn::RtnPacked;

/// The weight of a linear layer as the engine multiplies it.
pub enum Kernel {
    /// Row-major `[rows, cols]` f32.
    Dense(Vec<f32>),
    /// Row-major `[rows, cols]` f16 (the bits), widened to f32 as they are read.
    DenseF16(Vec<u16>),
    Bcq(Arc<BcqPacked>),
    Rtn(RtnPacked),
    Csr(Arc<CsrMatrix>),
    Bitmask(Arc<BitmaskMatrix>),
    Nm(Arc<NmPacked>),
    Hashed(Arc<HashedWeight>),
}

/// Work every row of one product shares, computed once per input vector.
#[derive(Default)]
pub struct Prepared {
    /// Shift-add lookup tables, or an RTN layer's per-group input sums.
    pub f32s: Vec<f32>,
    /// The input as int8 blocks (RTN layers with int8 activations).
    pub int8: Int8Blocks,
}

/// `y = W x + b` for one activation row.
pub struct Linear {
    pub rows: usize,
    pub cols: usize,
    pub kernel: Kernel,
    pub bias: Option<Vec<f32>>,
}

fn to_f32(t: &candle_core::Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

impl Linear {
    /// The engine form of `lw`. RTN layers whose values do not recover as codes (quantized
    /// before scales were f16) run dense, which [`Self::form`] reports.
    pub fn new(lw: &LinearWeight) -> candle_core::Result<Self> {
        let (rows, cols) = lw.shape();
        let bias = lw.bias().map(to_f32).transpose()?;
        let kernel = match lw {
            LinearWeight::Dense { weight, .. } if weight.dtype() == DType::F16 => {
                let w = weight.flatten_all()?.to_vec1::<half::f16>()?;
                Kernel::DenseF16(w.into_iter().map(half::f16::to_bits).collect())
            }
            LinearWeight::Dense { weight, .. } => Kernel::Dense(to_f32(weight)?),
            LinearWeight::Rtn {
                dequantized,
                bits,
                group,
                symmetric,
                float_min,
                int8_activations,
                ..
            } => {
                let w = to_f32(dequantized)?;
                let rule = RtnRule::of(*symmetric, *float_min);
                match RtnPacked::from_dequantized(&w, rows, cols, *bits, *group, rule) {
                    Some(p) => Kernel::Rtn(p.with_int8_activations(*int8_activations)),
                    None => Kernel::Dense(w),
                }
            }
            LinearWeight::Bcq { packed, .. } => Kernel::Bcq(Arc::clone(packed)),
            LinearWeight::Csr { csr, .. } => Kernel::Csr(Arc::clone(csr)),
            LinearWeight::Bitmask { mask, .. } => Kernel::Bitmask(Arc::clone(mask)),
            LinearWeight::Nm { packed, .. } => Kernel::Nm(Arc::clone(packed)),
            LinearWeight::Hashed { hashed, .. } => Kernel::Hashed(Arc::clone(hashed)),
        };
        Ok(Self {
            rows,
            cols,
            kernel,
            bias,
        })
    }

    /// The stored form the kernel reads.
    pub fn form(&self) -> &'static str {
        match &self.kernel {
            Kernel::Dense(_) => "dense",
            Kernel::DenseF16(_) => "f16",
            Kernel::Bcq(_) => "shiftadd",
            Kernel::Rtn(_) => "rtn",
            Kernel::Csr(_) => "csr",
            Kernel::Bitmask(_) => "bitmask",
            Kernel::Nm(_) => "nm",
            Kernel::Hashed(_) => "rps",
        }
    }

    /// Bytes one product reads from the weight (and bias): the stored form, or the working
    /// copy a kernel reads instead (shift-add scales widened to `f32`).
    pub fn bytes(&self) -> usize {
        let bias = self.bias.as_ref().map_or(0, |b| b.len() * 4);
        bias + match &self.kernel {
            Kernel::Dense(w) => w.len() * 4,
            Kernel::DenseF16(w) => w.len() * 2,
            Kernel::Bcq(p) => p.kernel_bytes(),
            Kernel::Rtn(p) => p.size_bytes(),
            Kernel::Csr(c) => c.size_bytes(),
            Kernel::Bitmask(m) => m.size_bytes(),
            Kernel::Nm(p) => p.size_bytes(),
            Kernel::Hashed(h) => h.size_bytes(),
        }
    }

    /// The `[rows, cols]` f32 matrix the stored form stands for: a dense layer's own, every
    /// other form decoded from its packed storage. What a many-row product multiplies by
    /// (`prefill.rs`): decoding once per window costs far less than the window's products.
    pub fn dense_weight(&self) -> Cow<'_, [f32]> {
        match &self.kernel {
            Kernel::Dense(w) => Cow::Borrowed(w),
            Kernel::DenseF16(w) => Cow::Owned(w.iter().map(|&h| f16_to_f32(h)).collect()),
            Kernel::Bcq(p) => Cow::Owned(p.dequantize()),
            Kernel::Rtn(p) => {
                let mut w = vec![0.0f32; self.rows * self.cols];
                for (r, row) in w.chunks_exact_mut(self.cols).enumerate() {
                    p.row_into(r, row);
                }
                Cow::Owned(w)
            }
            Kernel::Csr(c) => Cow::Owned(c.to_dense()),
            Kernel::Bitmask(m) => Cow::Owned(m.to_dense()),
            Kernel::Nm(p) => Cow::Owned(p.to_dense()),
            Kernel::Hashed(h) => Cow::Owned(h.reconstruct()),
        }
    }

    /// Whether the inputs are rounded to int8 blocks before the product (RTN layers that
    /// model llama.cpp's quantized-activation products).
    pub fn int8_inputs(&self) -> bool {
        matches!(&self.kernel, Kernel::Rtn(p) if p.int8_activations())
    }

    /// Output rows one task of a row split covers (kernels that block rows need whole blocks).
    pub fn task_rows(&self, threads: usize) -> usize {
        match &self.kernel {
            Kernel::Bcq(p) => p.task_rows(),
            // About four tasks a thread, so a slow thread does not hold the others up.
            _ => self
                .rows
                .div_ceil(4 * threads.max(1))
                .next_multiple_of(16)
                .max(16),
        }
    }

    /// Work every row of one product shares, into `shared`.
    pub fn prepare(&self, x: &[f32], shared: &mut Prepared) {
        match &self.kernel {
            Kernel::Bcq(p) => p.prepare(x, &mut shared.f32s),
            Kernel::Rtn(p) => p.prepare(x, shared),
            _ => {}
        }
    }

    /// Whether [`Self::prepare`] makes the same work of one input for both layers, so that a
    /// section whose layers share their input (q, k and v; gate and up) prepares it once.
    pub fn prepares_alike(&self, other: &Self) -> bool {
        match (&self.kernel, &other.kernel) {
            (Kernel::Bcq(a), Kernel::Bcq(b)) => a.prepares_alike(b),
            (Kernel::Rtn(a), Kernel::Rtn(b)) => a.prepares_alike(b),
            _ => false,
        }
    }

    /// Rows `r0..r0 + y.len()` of `W x + b`.
    pub fn rows_into(
        &self,
        x: &[f32],
        shared: &Prepared,
        r0: usize,
        y: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let rows = r0..r0 + y.len();
        match &self.kernel {
            Kernel::Dense(w) => {
                for (yr, r) in y.iter_mut().zip(rows.clone()) {
                    *yr = dot(&w[r * self.cols..(r + 1) * self.cols], x);
                }
            }
            Kernel::DenseF16(w) => {
                for (yr, r) in y.iter_mut().zip(rows.clone()) {
                    *yr = dot_f16(&w[r * self.cols..(r + 1) * self.cols], x);
                }
            }
            Kernel::Bcq(p) => p.rows_into(x, &shared.f32s, r0, y, scratch),
            Kernel::Rtn(p) => p.rows_into(x, shared, r0, y, scratch),
            Kernel::Csr(c) => {
                for (yr, r) in y.iter_mut().zip(rows.clone()) {
                    *yr = c.row_dot(r, x);
                }
            }
            Kernel::Bitmask(m) => {
                for (yr, r) in y.iter_mut().zip(rows.clone()) {
                    *yr = m.row_dot(r, x);
                }
            }
            Kernel::Nm(p) => {
                for (yr, r) in y.iter_mut().zip(rows.clone()) {
                    *yr = p.row_dot(r, x);
                }
            }
            Kernel::Hashed(h) => {
                for (yr, r) in y.iter_mut().zip(rows.clone()) {
                    *yr = h.row_dot(r, x, scratch);
                }
            }
        }
        if let Some(b) = &self.bias {
            for (yr, bv) in y.iter_mut().zip(&b[rows]) {
                *yr += bv;
            }
        }
    }
}

/// `a · b`: AVX-512 where the CPU has it (the build targets baseline x86-64), else eight
/// independent lanes the compiler vectorizes.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    if simd::available() {
        return simd::dot(a, b);
    }
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// f16 bits to f32 (exact).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// `a · b` for f16 weights `a` (their bits): AVX-512 widens 16 at a time (`vcvtph2ps`).
#[inline]
pub fn dot_f16(a: &[u16], b: &[f32]) -> f32 {
    if simd::available() {
        return simd::dot_f16(a, b);
    }
    a.iter().zip(b).map(|(&h, &x)| f16_to_f32(h) * x).sum()
}

#[allow(unsafe_code)]
mod simd {
    pub fn available() -> bool {
        crate::cpu::has_avx512f()
    }

    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            assert!(available());
            let n = a.len().min(b.len());
            // SAFETY: AVX-512F is present; the kernel reads the first `n` of both slices.
            unsafe { dot_avx512(&a[..n], &b[..n]) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (a, b);
            unreachable!("the AVX-512 kernel is only dispatched on x86_64");
        }
    }

    pub fn dot_f16(a: &[u16], b: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            assert!(available());
            let n = a.len().min(b.len());
            // SAFETY: AVX-512F is present; the kernel reads the first `n` of both slices.
            unsafe { dot_f16_avx512(&a[..n], &b[..n]) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (a, b);
            unreachable!("the AVX-512 kernel is only dispatched on x86_64");
        }
    }

    /// As [`dot_avx512`], each 16 weights widened from f16 in one instruction; the tail (under
    /// 16) in scalar code.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn dot_f16_avx512(a: &[u16], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (every load): `i + 16 <= n`; 16 f16 are the 32 bytes one 256-bit load reads.
        let widened =
            |i: usize| unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(pa.add(i).cast::<__m256i>())) };
        while i + 64 <= n {
            for (l, a_l) in acc.iter_mut().enumerate() {
                let (x, y) = (widened(i + 16 * l), unsafe {
                    _mm512_loadu_ps(pb.add(i + 16 * l))
                });
                *a_l = _mm512_fmadd_ps(x, y, *a_l);
            }
            i += 64;
        }
        while i + 16 <= n {
            let (x, y) = (widened(i), unsafe { _mm512_loadu_ps(pb.add(i)) });
            acc[0] = _mm512_fmadd_ps(x, y, acc[0]);
            i += 16;
        }
        let tail: f32 = a[i..]
            .iter()
            .zip(&b[i..])
            .map(|(&h, &x)| super::f16_to_f32(h) * x)
            .sum();
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s) + tail
    }

    /// Four accumulators of 16 lanes, then a masked tail.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (every load): `i + 16 <= n` or a mask covering only indices below `n`.
        while i + 64 <= n {
            for (l, a_l) in acc.iter_mut().enumerate() {
                let (x, y) = unsafe {
                    (
                        _mm512_loadu_ps(pa.add(i + 16 * l)),
                        _mm512_loadu_ps(pb.add(i + 16 * l)),
                    )
                };
                *a_l = _mm512_fmadd_ps(x, y, *a_l);
            }
            i += 64;
        }
        while i + 16 <= n {
            let (x, y) = unsafe { (_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i))) };
            acc[0] = _mm512_fmadd_ps(x, y, acc[0]);
            i += 16;
        }
        if i < n {
            let m: __mmask16 = (1u16 << (n - i)) - 1;
            let (x, y) = unsafe {
                (
                    _mm512_maskz_loadu_ps(m, pa.add(i)),
                    _mm512_maskz_loadu_ps(m, pb.add(i)),
                )
            };
            acc[1] = _mm512_fmadd_ps(x, y, acc[1]);
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f16 dot product equals the widened scalar one on every width around the vector
    /// steps (64 and 16 lanes) and the scalar tail.
    #[test]
    fn f16_dot_matches_the_widened_scalar_product() {
        let mut rng = crate::rng::Rng::new(5);
        for n in [1, 15, 16, 17, 63, 64, 65, 80, 127, 200] {
            let a: Vec<u16> = (0..n)
                .map(|_| half::f16::from_f32(rng.below(2001) as f32 / 1000.0 - 1.0).to_bits())
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|_| rng.below(2001) as f32 / 500.0 - 2.0)
                .collect();
            let want: f64 = a
                .iter()
                .zip(&b)
                .map(|(&h, &x)| f64::from(f16_to_f32(h)) * f64::from(x))
                .sum();
            let got = dot_f16(&a, &b);
            assert!(
                (f64::from(got) - want).abs() < 1e-4 * (1.0 + want.abs()),
                "n {n}: {got} vs {want}"
            );
        }
    }
}
