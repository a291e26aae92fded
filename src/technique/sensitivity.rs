//! Per-layer sensitivity: how much the model's output moves when only one linear is
//! compressed, at the setting a recipe gives it. For each linear we compress that layer alone
//! (the pipeline's own per-layer step, with calibration statistics from the uncompressed
//! model, which is exactly what that layer sees when nothing else is compressed) and measure
//! the KL divergence of the next-token distribution from the base model's on a short held-out
//! text, plus the increase in the text's mean negative log-likelihood.
//!
//! The base model's log-probabilities and block inputs are computed once and reused for every
//! layer, so a pass costs one compression and a forward from the layer's block on per linear
//! ([`super::measure`]). Model-level steps (merge,
//! flatten) are not part of a per-layer measurement and are ignored (with a note).
//! This module owns the computation only; the CLI (`reparam sensitivity`) and the GUI's
//! model panel call it and draw the result.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::model::{LinearId, Model};

use super::measure::{Candidate, MeasureOptions, Scorer, measure_layers};
use super::recipe::{LayerPlan, Recipe};
use super::{CalibOptions, Progress};

/// How the pass measures.
#[derive(Debug, Clone, Copy)]
pub struct SensitivityOptions {
    /// Calibration windows for the layers whose technique reads input statistics.
    pub calib: CalibOptions,
    /// Tokens per evaluation window (capped at the model's context).
    pub ctx: usize,
    /// At most this many evaluation tokens in all ("a few hundred" keeps a pass quick).
    pub max_tokens: usize,
    /// Seed of the calibration sampling and of each layer's randomised choices.
    pub seed: u64,
}

impl Default for SensitivityOptions {
    fn default() -> Self {
        Self {
            calib: CalibOptions {
                samples: 16,
                seq_len: 256,
            },
            ctx: 256,
            max_tokens: 512,
            seed: 0,
        }
    }
}

/// One linear's sensitivity.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LayerSensitivity {
    /// The layer (`blk.3.ffn_down`).
    pub layer: String,
    /// Parsed from `layer` ([`SensitivityReport::from_json`]).
    #[serde(skip, default = "unparsed_id")]
    pub id: LinearId,
    /// The setting it was compressed with (`shiftadd 3b g128`, `dense`).
    pub setting: String,
    /// Mean KL divergence (nats) of the next-token distribution from the base model's.
    pub kld: f64,
    /// Increase of the text's mean negative log-likelihood (nats per token); can be
    /// slightly negative when compression happens to help on this text.
    pub nll_delta: f64,
    /// Bytes of the layer before and after.
    pub base_bytes: usize,
    pub bytes: usize,
}

/// Stands in for a deserialized layer's id until its name is parsed.
fn unparsed_id() -> LinearId {
    LinearId::new(0, crate::model::LinearKind::AttnQ)
}

/// The result of a pass.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SensitivityReport {
    pub model_id: String,
    pub model_name: String,
    /// Evaluation tokens scored per layer.
    pub tokens: usize,
    /// The base model's mean negative log-likelihood on them.
    pub base_nll: f64,
    pub seconds: f64,
    pub layers: Vec<LayerSensitivity>,
    pub notes: Vec<String>,
}

impl SensitivityReport {
    /// A report saved as JSON (by the app's store of passes), with every layer name checked.
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let mut r: Self = serde_json::from_str(text)?;
        for l in &mut r.layers {
            l.id = l
                .layer
                .parse()
                .map_err(|e| anyhow::anyhow!("layer {:?}: {e}", l.layer))?;
        }
        Ok(r)
    }

    /// The layer's result, if it was measured.
    pub fn get(&self, id: LinearId) -> Option<&LayerSensitivity> {
        self.layers.iter().find(|l| l.id == id)
    }
}

/// The setting of every linear for a pass: the recipe's plan where a rule covers the layer,
/// else `fallback` (layers the recipe leaves alone are skipped when `fallback` is `None`).
/// Returns the settings and notes for the user.
pub fn sensitivity_plan(
    base: &Model,
    recipe: &Recipe,
    fallback: Option<&LayerPlan>,
) -> anyhow::Result<(BTreeMap<LinearId, LayerPlan>, Vec<String>)> {
    let plan = recipe.resolve(&base.transformer)?;
    let mut notes = Vec::new();
    if recipe.merge.is_some() || recipe.flatten.is_some() {
        notes.push(
            "the recipe's model-level steps (merge, flatten) are not applied: each layer is \
             measured alone on the base model"
                .to_string(),
        );
    }
    let mut out = BTreeMap::new();
    for id in base.transformer.linear_ids() {
        match (plan.layers.get(&id), fallback) {
            (Some((_, p)), _) => {
                out.insert(id, p.clone());
            }
            (None, Some(f)) => {
                out.insert(id, f.clone());
            }
            (None, None) => {}
        }
    }
    anyhow::ensure!(
        !out.is_empty(),
        "the recipe compresses no layer and no default setting was given: nothing to measure"
    );
    Ok((out, notes))
}

/// Evaluation tokens: `text` if given, else the zoo's held-out text for zoo models, else the
/// bundled evaluation text; at most `max_tokens`.
pub fn eval_tokens(
    base: &Model,
    text: Option<&str>,
    max_tokens: usize,
) -> anyhow::Result<Vec<u32>> {
    let owned;
    let text = match text {
        Some(t) => t,
        None => {
            owned = crate::eval::default_evaluation_text(base)?;
            &owned
        }
    };
    let mut tokens = base.tokenizer.encode(text, true)?;
    tokens.truncate(max_tokens);
    anyhow::ensure!(
        tokens.len() >= 8,
        "the evaluation text has {} tokens; a sensitivity pass needs at least 8",
        tokens.len()
    );
    Ok(tokens)
}

/// Measures every layer of `plan` alone (one [`measure_layers`] candidate per layer).
/// `progress(stage, done, total)` after each layer; returning `false` cancels (an error
/// saying so).
pub fn layer_sensitivity(
    base: &Model,
    plan: &BTreeMap<LinearId, LayerPlan>,
    calib_tokens: &[u32],
    eval_tokens: &[u32],
    opts: SensitivityOptions,
    progress: &mut Progress<'_>,
) -> anyhow::Result<SensitivityReport> {
    let start = Instant::now();
    if !progress("scoring the base model", 0, plan.len()) {
        return Err(super::cancelled());
    }
    let scorer = Scorer::new(base, eval_tokens, opts.ctx)?;
    let work: BTreeMap<LinearId, Vec<Candidate>> = plan
        .iter()
        .map(|(id, p)| {
            let c = Candidate {
                key: p.describe(),
                plan: p.clone(),
            };
            (*id, vec![c])
        })
        .collect();
    let measure = MeasureOptions {
        calib: opts.calib,
        seed: opts.seed,
        timing: None,
    };
    let mut layers = Vec::with_capacity(plan.len());
    measure_layers(
        base,
        &scorer,
        &work,
        calib_tokens,
        measure,
        &mut |_, rows| {
            for r in rows {
                layers.push(LayerSensitivity {
                    id: r.layer.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
                    layer: r.layer,
                    setting: r.candidate,
                    kld: r.kld,
                    nll_delta: r.nll_delta,
                    base_bytes: r.base_bytes,
                    bytes: r.bytes,
                });
            }
            Ok(())
        },
        progress,
    )?;
    Ok(SensitivityReport {
        model_id: base.id.clone(),
        model_name: base.name.clone(),
        tokens: scorer.tokens(),
        base_nll: scorer.base_nll(),
        seconds: start.elapsed().as_secs_f64(),
        layers,
        notes: Vec::new(),
    })
}

/// A whole pass from a recipe: the plan ([`sensitivity_plan`]), calibration tokens (the
/// pipeline's defaults), evaluation tokens ([`eval_tokens`]), then [`layer_sensitivity`].
pub fn recipe_sensitivity(
    base: &Model,
    recipe: &Recipe,
    fallback: Option<&LayerPlan>,
    text: Option<&str>,
    calib_text: Option<&std::path::PathBuf>,
    opts: SensitivityOptions,
    progress: &mut Progress<'_>,
) -> anyhow::Result<SensitivityReport> {
    let (plan, notes) = sensitivity_plan(base, recipe, fallback)?;
    let calib_tokens = if plan.values().any(LayerPlan::needs_stats) {
        crate::calib::calibration_tokens(base, calib_text)?
    } else {
        Vec::new()
    };
    let tokens = eval_tokens(base, text, opts.max_tokens)?;
    let opts = SensitivityOptions {
        seed: recipe.seed,
        ..opts
    };
    let mut report = layer_sensitivity(base, &plan, &calib_tokens, &tokens, opts, progress)?;
    report.notes = notes;
    Ok(report)
}
