//! What the model panel and the recipe editor show about a loaded model, computed once off the
//! UI thread so drawing never touches tensors.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::{LinearId, LinearWeight, Model};
use crate::technique::sensitivity::{LayerSensitivity, SensitivityReport};

/// One linear layer as the panels show it.
#[derive(Debug, Clone)]
pub struct LinearInfo {
    pub id: LinearId,
    /// `(out_features, in_features)`.
    pub rows: usize,
    pub cols: usize,
    /// Bytes of its current stored form.
    pub size_bytes: usize,
    /// The current form (`dense f32`, `shift-add 3-bit`, …).
    pub form: String,
}

impl LinearInfo {
    pub fn weight_count(&self) -> usize {
        self.rows * self.cols
    }
}

/// A loaded model, summarised.
#[derive(Debug, Clone)]
pub struct ModelSummary {
    /// What the user opened (`zoo:multi`, a path): also what jobs are given.
    pub spec: String,
    pub name: String,
    pub id: String,
    pub architecture: String,
    pub format: String,
    pub n_blocks: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub vocab_size: usize,
    pub params: usize,
    pub size_bytes: usize,
    pub linears: Vec<LinearInfo>,
}

impl ModelSummary {
    pub fn from_model(spec: &str, model: &Model) -> Self {
        let t = &model.transformer;
        let cfg = model.config();
        let linears = t
            .linear_ids()
            .filter_map(|id| {
                let w = t.linear(id)?;
                let (rows, cols) = w.shape();
                Some(LinearInfo {
                    id,
                    rows,
                    cols,
                    size_bytes: w.size_bytes(),
                    form: form_name(w),
                })
            })
            .collect();
        Self {
            spec: spec.to_string(),
            name: model.name.clone(),
            id: model.id.clone(),
            architecture: format!("{:?}", cfg.architecture),
            format: format!("{:?}", model.format),
            n_blocks: t.blocks.len(),
            hidden_size: cfg.hidden_size,
            intermediate_size: cfg.intermediate_size,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            vocab_size: cfg.vocab_size,
            params: cfg.param_count(),
            size_bytes: t.size_bytes(),
            linears,
        }
    }

    /// The linears of one block, in the order of [`crate::model::LinearKind::ALL`].
    pub fn block_linears(&self, block: usize) -> impl Iterator<Item = &LinearInfo> {
        self.linears.iter().filter(move |l| l.id.block == block)
    }

    pub fn linear(&self, id: LinearId) -> Option<&LinearInfo> {
        self.linears.iter().find(|l| l.id == id)
    }
}

fn form_name(w: &LinearWeight) -> String {
    match w {
        LinearWeight::Dense { weight, .. } => format!("dense {:?}", weight.dtype()).to_lowercase(),
        LinearWeight::Rtn {
            bits,
            group,
            symmetric,
            int8_activations,
            ..
        } => format!(
            "RTN {bits}-bit g{group}{}{}",
            if *symmetric { " symmetric" } else { "" },
            if *int8_activations {
                ", int8 activations"
            } else {
                ""
            }
        ),
        LinearWeight::Bcq { packed, .. } => format!("shift-add {}-bit", packed.bits),
        LinearWeight::Csr { csr, .. } => format!(
            "CSR {:.0}% zero",
            100.0 * (1.0 - csr.nnz() as f64 / (csr.rows * csr.cols).max(1) as f64)
        ),
        LinearWeight::Bitmask { mask, .. } => format!(
            "bitmask {:.0}% zero",
            100.0 * (1.0 - mask.nnz() as f64 / (mask.rows * mask.cols).max(1) as f64)
        ),
        LinearWeight::Nm { packed, .. } => format!("{}:{} sparse", packed.n, packed.m),
        LinearWeight::Hashed { hashed, .. } => format!(
            "RPS ×{:.1}",
            (hashed.rows * hashed.cols) as f64 / hashed.z.len().max(1) as f64
        ),
    }
}

/// A loaded model shared with the editor (which resolves recipes against it).
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub model: Arc<Model>,
    pub summary: Arc<ModelSummary>,
}

/// The result of a sensitivity pass: per linear, the KL divergence from the base model (and
/// the loss increase) when only that layer is compressed at the setting the editor gave it.
#[derive(Debug, Clone)]
pub struct Sensitivity {
    /// Which model (id) the pass measured.
    pub model_id: String,
    /// The hash of the edited recipe it measured (the bars go stale when the recipe changes).
    pub recipe_hash: String,
    pub layers: BTreeMap<LinearId, LayerSensitivity>,
    /// Evaluation tokens per layer.
    pub tokens: usize,
    pub seconds: f64,
    pub notes: Vec<String>,
}

impl Sensitivity {
    pub fn from_report(recipe_hash: String, r: SensitivityReport) -> Self {
        Self {
            model_id: r.model_id,
            recipe_hash,
            tokens: r.tokens,
            seconds: r.seconds,
            notes: r.notes,
            layers: r.layers.into_iter().map(|l| (l.id, l)).collect(),
        }
    }

    /// The `n` layers with the largest KL divergence, most sensitive first.
    pub fn ranked(&self, n: usize) -> Vec<&LayerSensitivity> {
        let mut v: Vec<&LayerSensitivity> = self.layers.values().collect();
        v.sort_by(|a, b| b.kld.total_cmp(&a.kld));
        v.truncate(n);
        v
    }

    /// The largest KL divergence (the full-width bar).
    pub fn max_kld(&self) -> f64 {
        self.layers.values().map(|l| l.kld).fold(0.0, f64::max)
    }
}
