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
    /// Whether the forward pass must still produce the block output (see
    /// [`ForwardHook::wants_output`]).
    output_needed: bool,
    pub stats: BTreeMap<LinearId, InputStats>,
}

impl StatsCollector {
    /// Collects for `layers` (all layers when `None`); `with_xtx` adds the full Gram matrix.
    pub fn new(layers: Option<Vec<LinearId>>, with_xtx: bool) -> Self {
        Self {
            selected: layers,
            with_xtx,
            output_needed: true,
            stats: BTreeMap::new(),
        }
    }

    /// Declares that the forward pass this collector observes is run for its statistics only,
    /// so the block may skip work whose result nobody reads.
    pub fn statistics_only(mut self) -> Self {
        self.output_needed = false;
        self
    }
}

impl ForwardHook for StatsCollector {
    fn wants_output(&self) -> bool {
        self.output_needed
    }

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
        if self.with_xtx {
            // Per-batch Gram in f32 through GEMM (fast), accumulated across batches in f64. Its
            // diagonal is the per-column sum of squares, so that needs no separate pass.
            let gram = gram_f32(&x)?;
            for (acc, g) in entry.xtx.iter_mut().zip(&gram) {
                *acc += f64::from(*g);
            }
            for (c, acc) in entry.col_sq_norms.iter_mut().enumerate() {
                *acc += f64::from(gram[c * cols + c]);
            }
        } else {
            let sq = x.sqr()?.sum(0)?.to_vec1::<f32>()?;
            for (acc, s) in entry.col_sq_norms.iter_mut().zip(sq) {
                *acc += f64::from(s);
            }
        }
        entry.tokens += n;
        Ok(())
    }
}

/// Column strip width of [`gram_f32`]: narrow enough that the skipped lower triangle is most of
/// the saving, wide enough that each GEMM still runs at full speed.
const GRAM_STRIP: usize = 96;

/// `XᵀX` (row-major `cols × cols`, f32) of a `[tokens, cols]` matrix, computing only the upper
/// triangle: one GEMM per strip of [`GRAM_STRIP`] columns against the columns from the strip's
/// start on, then mirrored. About half the flops of the full product (0.58× at 576 columns,
/// 0.53× at 1536) for the same dot products.
/// On a GPU the whole product is one GEMM there and one copy back: the strips would save
/// flops the GPU has in plenty and cost a copy each.
pub fn gram_f32(x: &Tensor) -> Result<Vec<f32>> {
    let (_, cols) = x.dims2()?;
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    if !x.device().is_cpu() {
        return x.t()?.matmul(&x)?.flatten_all()?.to_vec1::<f32>();
    }
    let mut g = vec![0.0f32; cols * cols];
    let mut i0 = 0;
    while i0 < cols {
        let w = GRAM_STRIP.min(cols - i0);
        let lhs = x.narrow(1, i0, w)?.t()?;
        let rhs = x.narrow(1, i0, cols - i0)?;
        let strip = lhs.matmul(&rhs)?.to_vec2::<f32>()?;
        for (r, row) in strip.iter().enumerate() {
            let i = i0 + r;
            // Row i from column i on; the part left of the diagonal inside the strip is the
            // same product computed twice, so only the upper triangle is taken.
            for (j, &v) in row.iter().enumerate().skip(r) {
                let c = i0 + j;
                g[i * cols + c] = v;
                g[c * cols + i] = v;
            }
        }
        i0 += w;
    }
    Ok(g)
}

/// Calibration text for models that are not zoo models: a mixture of prose, dialogue,
/// technical text, code, tables and legal text (`assets/text/calib-mix.txt`, its sources in
/// `assets/text/SOURCES.md`), sharing no document with the held-out evaluation suite.
const DEFAULT_CALIB_TEXT: &str = include_str!("../assets/text/calib-mix.txt");

/// The calibration text: from `path`, else the zoo's training mix for zoo models, else the
/// bundled calibration mixture.
pub fn calibration_text(
    base: &crate::model::Model,
    path: Option<&std::path::PathBuf>,
) -> anyhow::Result<String> {
    use crate::zoo::{MEMBERS, corpus::training_text, is_zoo_model};
    Ok(match path {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?,
        None if is_zoo_model(&base.path) => {
            let multi = MEMBERS
                .iter()
                .find(|m| m.name == "multi")
                .map_or(&[][..], |m| m.mix);
            training_text(multi, 0xca11b, 4000)
        }
        None => DEFAULT_CALIB_TEXT.to_string(),
    })
}

/// Calibration tokens of [`calibration_text`].
pub fn calibration_tokens(
    base: &crate::model::Model,
    path: Option<&std::path::PathBuf>,
) -> anyhow::Result<Vec<u32>> {
    base.tokenizer.encode(&calibration_text(base, path)?, true)
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
    // Every calibrated step draws its windows here, so this is where empty settings are caught
    // (zero windows would leave the statistics empty and the compressed model destroyed).
    anyhow::ensure!(
        samples >= 1 && seq_len >= 2,
        "calibration needs at least 1 window of at least 2 tokens (got {samples} windows of \
         {seq_len}): check --calib-samples and --calib-len"
    );
    anyhow::ensure!(
        tokens.len() > seq_len,
        "calibration text has {} tokens, fewer than one window of {seq_len}",
        tokens.len()
    );
    let mut rng = crate::rng::Rng::new(seed);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The strip-wise upper-triangle Gram equals the plain product, is exactly symmetric, and
    /// covers widths that are not multiples of the strip.
    #[test]
    fn gram_matches_plain_product() {
        for (n, cols) in [(1, 1), (37, 5), (50, 96), (33, 97), (70, 203)] {
            let data: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1.0 + (i % 3) as f32))
                .collect();
            let x = Tensor::from_vec(data.clone(), (n, cols), &candle_core::Device::Cpu).unwrap();
            let g = gram_f32(&x).unwrap();
            for i in 0..cols {
                for j in 0..cols {
                    let want: f64 = (0..n)
                        .map(|t| f64::from(data[t * cols + i]) * f64::from(data[t * cols + j]))
                        .sum();
                    let got = f64::from(g[i * cols + j]);
                    assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{i},{j}");
                    assert_eq!(g[i * cols + j].to_bits(), g[j * cols + i].to_bits());
                }
            }
        }
    }
}
