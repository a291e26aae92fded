//! `LinearWeight`: the one type every linear layer of the forward pass goes through.
//!
//! Each variant owns its representation, knows its exact byte size, and multiplies by its own
//! kernel, so memory and latency are measured on what actually runs. Only `Dense` exists so
//! far; compressed variants (binary-coded, sparse, hashed) slot in as further variants.

use candle_core::{DType, Module, Result, Tensor};

/// The weight of one linear layer, `y = x Wᵀ + b` with `W` of shape `[out, in]`.
#[derive(Debug, Clone)]
pub enum LinearWeight {
    /// A plain matrix (f32 on CPU), multiplied with candle's GEMM.
    Dense {
        weight: Tensor,
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
            Self::Dense { weight, .. } => {
                let dims = weight.dims();
                (dims[0], dims[1])
            }
        }
    }

    /// Exact bytes this representation occupies, bias included.
    pub fn size_bytes(&self) -> usize {
        fn bytes(t: &Tensor) -> usize {
            t.elem_count() * t.dtype().size_in_bytes()
        }
        match self {
            Self::Dense { weight, bias } => bytes(weight) + bias.as_ref().map_or(0, bytes),
        }
    }

    /// Number of weights (bias excluded), for bits-per-weight figures.
    pub fn weight_count(&self) -> usize {
        let (o, i) = self.shape();
        o * i
    }

    /// The dense `[out, in]` matrix this layer computes with, in f32.
    pub fn to_dense(&self) -> Result<Tensor> {
        match self {
            Self::Dense { weight, .. } => weight.to_dtype(DType::F32),
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        match self {
            Self::Dense { bias, .. } => bias.as_ref(),
        }
    }
}

impl Module for LinearWeight {
    /// `x` is `[tokens, in]`; returns `[tokens, out]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense { weight, bias } => {
                let y = x.matmul(&weight.t()?)?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
    }
}
