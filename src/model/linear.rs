//! `LinearWeight`: the one type every linear layer of the forward pass goes through.
//!
//! Each variant owns its representation, knows its exact byte size, and multiplies by its own
//! kernel, so memory and latency are measured on what actually runs.
//!
//! Devices: dense and RTN weights live wherever the model was moved ([`LinearWeight::to_device`]).
//! The packed forms (BCQ, CSR, n:m, hashed) are CPU data with CPU kernels; given activations on a
//! GPU they copy them in and their result back, which is correct but slow, so an evaluation on a
//! GPU first densifies them there ([`LinearWeight::densified_on`]).

use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor};

use crate::model::hashed::HashedWeight;
use crate::quant::lut::BcqPacked;

use super::bitmask::BitmaskMatrix;
use super::nm::NmPacked;
use super::sparse::CsrMatrix;

/// Activation rows at or above which a binary-coded layer multiplies through a dense GEMM on
/// weights dequantized on the fly (prefill); below it, the LUT kernel runs row by row (decode).
/// The LUT kernel reads the packed planes once per row, so its cost grows with the batch while
/// a GEMM's per-row cost shrinks.
const BCQ_GEMM_MIN_ROWS: usize = 8;

/// The weight of one linear layer, `y = x Wᵀ + b` with `W` of shape `[out, in]`.
#[derive(Debug, Clone)]
pub enum LinearWeight {
    /// A plain matrix (f32, or f16 from the recipe's `f16` knob), multiplied with candle's
    /// GEMM (an f16 matrix widened to the activations' type for the product).
    Dense {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    /// Binary-coded planes with power-of-two scales (ShiftAddLLM), multiplied by the LUT kernel.
    Bcq {
        packed: Arc<BcqPacked>,
        bias: Option<Tensor>,
    },
    /// Round-to-nearest group quantization (the baseline). Held dequantized and multiplied with
    /// the dense GEMM; its byte count is that of the packed storage it stands for (`bits` per
    /// weight plus an f16 scale and zero per `group` inputs of a row), so only its measured
    /// latency is that of a dense layer.
    Rtn {
        dequantized: Tensor,
        bits: usize,
        group: usize,
        /// No zero point (see [`crate::quant::rtn::rtn_quantize`]): one f16 scale per group.
        symmetric: bool,
        /// The zero offset is an f16 minimum (`w = scale·q + min`; see
        /// [`crate::quant::rtn::RtnRule::FloatMin`]).
        float_min: bool,
        /// Inputs rounded to int8 in blocks of 32 before the product, as llama.cpp's CPU
        /// backend does for quantized weights ([`crate::quant::act8`]).
        int8_activations: bool,
        bias: Option<Tensor>,
    },
    /// Unstructured-pruned weights in compressed sparse rows, multiplied by the CSR kernel.
    Csr {
        csr: Arc<CsrMatrix>,
        bias: Option<Tensor>,
    },
    /// Unstructured-pruned weights as kept values plus one bit per weight.
    Bitmask {
        mask: Arc<BitmaskMatrix>,
        bias: Option<Tensor>,
    },
    /// n:m-pruned weights (kept values + 4-bit positions), multiplied by the n:m kernel.
    Nm {
        packed: Arc<NmPacked>,
        bias: Option<Tensor>,
    },
    /// Randomized parameter sharing: a compact array rebuilt tile by tile inside the kernel.
    Hashed {
        hashed: Arc<HashedWeight>,
        bias: Option<Tensor>,
    },
}

impl LinearWeight {
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self::Dense { weight, bias }
    }

    /// `(out_features, in_features)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Self::Dense { weight, .. }
            | Self::Rtn {
                dequantized: weight,
                ..
            } => {
                let dims = weight.dims();
                (dims[0], dims[1])
            }
            Self::Bcq { packed, .. } => (packed.rows, packed.cols),
            Self::Csr { csr, .. } => (csr.rows, csr.cols),
            Self::Bitmask { mask, .. } => (mask.rows, mask.cols),
            Self::Nm { packed, .. } => (packed.rows, packed.cols),
            Self::Hashed { hashed, .. } => (hashed.rows, hashed.cols),
        }
    }

    /// Exact bytes this representation occupies, bias included.
    pub fn size_bytes(&self) -> usize {
        let bias_bytes = self
            .bias()
            .map_or(0, |b| b.elem_count() * b.dtype().size_in_bytes());
        let (rows, cols) = self.shape();
        let weight_bytes = match self {
            Self::Dense { weight, .. } => weight.elem_count() * weight.dtype().size_in_bytes(),
            Self::Bcq { packed, .. } => packed.size_bytes(),
            Self::Rtn {
                bits,
                group,
                symmetric,
                ..
            } => Self::rtn_size_for(rows, cols, *bits, *group, *symmetric),
            Self::Csr { csr, .. } => csr.size_bytes(),
            Self::Bitmask { mask, .. } => mask.size_bytes(),
            Self::Nm { packed, .. } => packed.size_bytes(),
            Self::Hashed { hashed, .. } => hashed.size_bytes(),
        };
        weight_bytes + bias_bytes
    }

    /// The bytes an RTN layer stands for: `bits` per weight plus an f16 scale and zero per
    /// `group` inputs of a row.
    pub fn rtn_size_for(
        rows: usize,
        cols: usize,
        bits: usize,
        group: usize,
        symmetric: bool,
    ) -> usize {
        let per_group = if symmetric { 2 } else { 2 * 2 };
        (rows * cols * bits).div_ceil(8) + rows * cols.div_ceil(group.max(1)) * per_group
    }

    /// Number of weights (bias excluded), for bits-per-weight figures.
    pub fn weight_count(&self) -> usize {
        let (o, i) = self.shape();
        o * i
    }

    /// The dense `[out, in]` matrix this layer computes with, in f32.
    pub fn to_dense(&self) -> Result<Tensor> {
        match self {
            Self::Dense { weight, .. }
            | Self::Rtn {
                dequantized: weight,
                ..
            } => weight.to_dtype(DType::F32),
            Self::Bcq { packed, .. } => Tensor::from_vec(
                packed.dequantize(),
                (packed.rows, packed.cols),
                &Device::Cpu,
            ),
            Self::Csr { csr, .. } => {
                Tensor::from_vec(csr.to_dense(), (csr.rows, csr.cols), &Device::Cpu)
            }
            Self::Bitmask { mask, .. } => {
                Tensor::from_vec(mask.to_dense(), (mask.rows, mask.cols), &Device::Cpu)
            }
            Self::Nm { packed, .. } => {
                Tensor::from_vec(packed.to_dense(), (packed.rows, packed.cols), &Device::Cpu)
            }
            Self::Hashed { hashed, .. } => Tensor::from_vec(
                hashed.reconstruct(),
                (hashed.rows, hashed.cols),
                &Device::Cpu,
            ),
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        match self {
            Self::Dense { bias, .. }
            | Self::Bcq { bias, .. }
            | Self::Rtn { bias, .. }
            | Self::Csr { bias, .. }
            | Self::Bitmask { bias, .. }
            | Self::Nm { bias, .. }
            | Self::Hashed { bias, .. } => bias.as_ref(),
        }
    }

    /// The device the layer's products run on: its weight's for dense and RTN layers, else
    /// (packed CPU forms) its bias's, or the CPU.
    pub fn device(&self) -> Device {
        match self {
            Self::Dense { weight, .. }
            | Self::Rtn {
                dequantized: weight,
                ..
            } => weight.device().clone(),
            _ => self.bias().map_or(Device::Cpu, |b| b.device().clone()),
        }
    }

    /// This layer with its tensors on `device`. Packed forms keep their CPU data (their
    /// kernels are CPU code) and move only their bias, so their output lands on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let bias = self.bias().map(|b| b.to_device(device)).transpose()?;
        Ok(match self {
            Self::Dense { weight, .. } => Self::Dense {
                weight: weight.to_device(device)?,
                bias,
            },
            Self::Rtn {
                dequantized,
                bits,
                group,
                symmetric,
                float_min,
                int8_activations,
                ..
            } => Self::Rtn {
                dequantized: dequantized.to_device(device)?,
                bits: *bits,
                group: *group,
                symmetric: *symmetric,
                float_min: *float_min,
                int8_activations: *int8_activations,
                bias,
            },
            Self::Bcq { packed, .. } => Self::Bcq {
                packed: Arc::clone(packed),
                bias,
            },
            Self::Csr { csr, .. } => Self::Csr {
                csr: Arc::clone(csr),
                bias,
            },
            Self::Bitmask { mask, .. } => Self::Bitmask {
                mask: Arc::clone(mask),
                bias,
            },
            Self::Nm { packed, .. } => Self::Nm {
                packed: Arc::clone(packed),
                bias,
            },
            Self::Hashed { hashed, .. } => Self::Hashed {
                hashed: Arc::clone(hashed),
                bias,
            },
        })
    }

    /// For evaluation on `device`: on the CPU the layer as it is; on a GPU, where the packed
    /// forms have no kernel yet, the same weights as a dense matrix on the GPU. Only the
    /// products change place: the numbers the layer computes are those of its stored form.
    pub fn densified_on(&self, device: &Device) -> Result<Self> {
        match self {
            Self::Dense { .. } | Self::Rtn { .. } => self.to_device(device),
            _ if device.is_cpu() => Ok(self.clone()),
            _ => Ok(Self::Dense {
                weight: self.to_dense()?.to_device(device)?,
                bias: self.bias().map(|b| b.to_device(device)).transpose()?,
            }),
        }
    }

    /// A short name of the stored form, for tables.
    pub fn form(&self) -> &'static str {
        match self {
            Self::Dense { weight, .. } if weight.dtype() == DType::F16 => "f16",
            Self::Dense { .. } => "dense",
            Self::Bcq { .. } => "shiftadd",
            Self::Rtn { .. } => "rtn",
            Self::Csr { .. } => "csr",
            Self::Bitmask { .. } => "bitmask",
            Self::Nm { .. } => "nm",
            Self::Hashed { .. } => "rps",
        }
    }
}

/// `x [rows, in]` times the packed matrix, by the LUT kernel (few rows) or a GEMM over weights
/// dequantized for this call only (many rows).
fn bcq_forward(packed: &BcqPacked, x: &Tensor) -> Result<Tensor> {
    let (n, k) = x.dims2()?;
    if n >= BCQ_GEMM_MIN_ROWS {
        let w = Tensor::from_vec(packed.dequantize(), (packed.rows, k), x.device())?;
        return x.matmul(&w.t()?);
    }
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut y = vec![0f32; n * packed.rows];
    packed.gemm(&xs, n, &mut y);
    Tensor::from_vec(y, (n, packed.rows), x.device())
}

/// Activation rows at or above which a sparse layer (CSR, n:m) multiplies through a dense GEMM
/// on weights densified for this call only (prefill), as [`BCQ_GEMM_MIN_ROWS`] does for BCQ:
/// measured with `reparam bench kernels --sparse`, the AVX-512 GEMM on the densified matrix beats
/// the sparse kernels by a wide margin at 512 rows, while at one row the sparse kernels win.
const SPARSE_GEMM_MIN_ROWS: usize = 8;

/// `x [rows, in]` times a sparse matrix: its own kernel for few rows, a GEMM on the densified
/// matrix for many.
fn sparse_forward(
    x: &Tensor,
    (out, k): (usize, usize),
    dense: impl Fn() -> Vec<f32>,
    kernel: impl Fn(&[f32], usize, &mut [f32]),
) -> Result<Tensor> {
    let (n, cols) = x.dims2()?;
    if cols != k {
        candle_core::bail!("sparse linear: input width {cols}, weight takes {k}");
    }
    if n >= SPARSE_GEMM_MIN_ROWS {
        let w = Tensor::from_vec(dense(), (out, k), x.device())?;
        return x.matmul(&w.t()?);
    }
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut y = vec![0f32; n * out];
    kernel(&xs, n, &mut y);
    Tensor::from_vec(y, (n, out), x.device())
}

/// `x [rows, in]` times the hashed matrix: the tile kernel for few rows, a GEMM on the matrix
/// rebuilt for this call only for many.
fn hashed_forward(hashed: &HashedWeight, x: &Tensor) -> Result<Tensor> {
    let (n, k) = x.dims2()?;
    if HashedWeight::prefers_gemm(n) {
        let w = Tensor::from_vec(hashed.reconstruct(), (hashed.rows, k), x.device())?;
        return x.matmul(&w.t()?);
    }
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut y = vec![0f32; n * hashed.rows];
    hashed.gemm(&xs, n, &mut y);
    Tensor::from_vec(y, (n, hashed.rows), x.device())
}

/// `x [rows, in]` with each row rounded to int8 blocks ([`crate::quant::act8::round_rows`]).
fn int8_rows(x: &Tensor) -> Result<Tensor> {
    let (_, k) = x.dims2()?;
    let mut xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    crate::quant::act8::round_rows(&mut xs, k);
    Tensor::from_vec(xs, x.dims(), x.device())?.to_dtype(x.dtype())
}

impl Module for LinearWeight {
    /// `x` is `[tokens, in]`; returns `[tokens, out]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match self {
            Self::Rtn {
                dequantized: weight,
                int8_activations: true,
                ..
            } => int8_rows(x)?.matmul(&weight.t()?)?,
            Self::Dense { weight, .. } if weight.dtype() != x.dtype() => {
                x.matmul(&weight.to_dtype(x.dtype())?.t()?)?
            }
            Self::Dense { weight, .. }
            | Self::Rtn {
                dequantized: weight,
                ..
            } => x.matmul(&weight.t()?)?,
            Self::Bcq { packed, .. } => bcq_forward(packed, x)?,
            Self::Csr { csr, .. } => sparse_forward(
                x,
                (csr.rows, csr.cols),
                || csr.to_dense(),
                |xs, n, y| csr.gemm(xs, n, y),
            )?,
            Self::Bitmask { mask, .. } => sparse_forward(
                x,
                (mask.rows, mask.cols),
                || mask.to_dense(),
                |xs, n, y| mask.gemm(xs, n, y),
            )?,
            Self::Nm { packed, .. } => sparse_forward(
                x,
                (packed.rows, packed.cols),
                || packed.to_dense(),
                |xs, n, y| packed.gemm(xs, n, y),
            )?,
            Self::Hashed { hashed, .. } => hashed_forward(hashed, x)?,
        };
        match self.bias() {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}
