//! Calibration statistics of linear-layer inputs, gathered through the forward pass's hook:
//! `XᵀX` (accumulated in f64, as GPTQ-style solvers need) and per-column squared norms
//! (what Wanda-style pruning scores use).

use std::collections::BTreeMap;

use candle_core::{DType, Result, Tensor};

use crate::model::{ForwardHook, LinearId};

/// Accumulated statistics of one linear layer's inputs.
#[derive(Debug, Clone)]
pub struct InputStats {
    /// Row-major `in × in` sum of `xᵀx` over all calibration tokens.
    pub xtx: Vec<f64>,
    /// Per input column, the sum of squares over all tokens (`diag(XᵀX)`, kept separately
    /// because Wanda needs only this and it is cheap).
    pub col_sq_norms: Vec<f64>,
    pub in_features: usize,
    pub tokens: usize,
}

impl InputStats {
    fn new(in_features: usize, with_xtx: bool) -> Self {
        Self {
            xtx: if with_xtx {
                vec![0.0; in_features * in_features]
            } else {
                Vec::new()
            },
            col_sq_norms: vec![0.0; in_features],
            in_features,
            tokens: 0,
        }
    }

    /// Column norms `‖X_j‖₂`.
    pub fn col_norms(&self) -> Vec<f64> {
        self.col_sq_norms.iter().map(|v| v.sqrt()).collect()
    }
}

/// A [`ForwardHook`] that accumulates [`InputStats`] for the selected layers.
#[derive(Debug, Default)]
pub struct StatsCollector {
    selected: Option<Vec<LinearId>>,
    with_xtx: bool,
    pub stats: BTreeMap<LinearId, InputStats>,
}

impl StatsCollector {
    /// Collects for `layers` (all layers when `None`); `with_xtx` adds the full Gram matrix.
    pub fn new(layers: Option<Vec<LinearId>>, with_xtx: bool) -> Self {
        Self {
            selected: layers,
            with_xtx,
            stats: BTreeMap::new(),
        }
    }
}

impl ForwardHook for StatsCollector {
    fn linear_input(&mut self, id: LinearId, x: &Tensor) -> Result<()> {
        if self.selected.as_ref().is_some_and(|s| !s.contains(&id)) {
            return Ok(());
        }
        let (n, cols) = x.dims2()?;
        let entry = self
            .stats
            .entry(id)
            .or_insert_with(|| InputStats::new(cols, self.with_xtx));
        if entry.in_features != cols {
            candle_core::bail!(
                "{id}: input width changed from {} to {cols}",
                entry.in_features
            );
        }
        let x = x.to_dtype(DType::F32)?;
        // Per-batch Gram in f32 through GEMM (fast), accumulated across batches in f64.
        if self.with_xtx {
            let gram = x.t()?.matmul(&x)?.flatten_all()?.to_vec1::<f32>()?;
            for (acc, g) in entry.xtx.iter_mut().zip(gram) {
                *acc += f64::from(g);
            }
        }
        let sq = x.sqr()?.sum(0)?.to_vec1::<f32>()?;
        for (acc, s) in entry.col_sq_norms.iter_mut().zip(sq) {
            *acc += f64::from(s);
        }
        entry.tokens += n;
        Ok(())
    }
}

/// Linears that read the same input share one set of statistics: q/k/v read the attention
/// norm's output, gate/up the MLP norm's. Returns the layer whose statistics `kind` uses.
pub fn stats_source(kind: crate::model::LinearKind) -> crate::model::LinearKind {
    use crate::model::LinearKind as K;
    match kind {
        K::AttnK | K::AttnV => K::AttnQ,
        K::FfnUp => K::FfnGate,
        other => other,
    }
}

/// `samples` windows of `seq_len` tokens at seeded random offsets of `tokens`, as a
/// `[samples, seq_len]` id tensor (GPTQ's calibration sampling).
pub fn calibration_ids(
    tokens: &[u32],
    samples: usize,
    seq_len: usize,
    seed: u64,
) -> anyhow::Result<Tensor> {
    anyhow::ensure!(
        tokens.len() > seq_len,
        "calibration text has {} tokens, fewer than one window of {seq_len}",
        tokens.len()
    );
    let mut rng = crate::zoo::corpus::Rng::new(seed);
    let span = tokens.len() - seq_len;
    let mut ids = Vec::with_capacity(samples * seq_len);
    for _ in 0..samples {
        let start = rng.below(span + 1);
        ids.extend_from_slice(&tokens[start..start + seq_len]);
    }
    Ok(Tensor::from_vec(
        ids,
        (samples, seq_len),
        &candle_core::Device::Cpu,
    )?)
}
