//! Per-layer sensitivity: how much the model's output moves when only one linear is
//! compressed, at the setting a recipe gives it. For each linear we compress that layer alone
//! (the pipeline's own per-layer step, with calibration statistics from the uncompressed
//! model, which is exactly what that layer sees when nothing else is compressed) and measure
//! the KL divergence of the next-token distribution from the base model's on a short held-out
//! text, plus the increase in the text's mean negative log-likelihood.
//!
//! The base model's log-probabilities are computed once and reused for every layer, so a pass
//! costs one compression and one forward over the text per linear. Model-level steps (merge,
//! flatten) are not part of a per-layer measurement and are ignored (with a note).
//! This module owns the computation only; the CLI (`reparam sensitivity`) and the GUI's
//! model panel call it and draw the result.

use std::collections::BTreeMap;
use std::time::Instant;

use rayon::prelude::*;

use crate::calib::{StatsCollector, calibration_ids, stats_source};
use crate::model::{LinearId, Model, NoHook};

use super::recipe::{LayerPlan, Recipe};
use super::{CalibOptions, Progress, cancelled, compress_layer, layer_seed};

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

/// Log-probabilities and next-token NLL of one model over the evaluation windows.
struct Scored {
    /// Per window, `n × vocab` log-probabilities.
    logp: Vec<Vec<f32>>,
    nll_mean: f64,
}

fn windows(tokens: &[u32], ctx: usize, bos: Option<u32>) -> Vec<Vec<u32>> {
    tokens
        .chunks(ctx)
        .filter(|w| w.len() >= 2)
        .map(|w| {
            let mut w = w.to_vec();
            if let Some(b) = bos {
                w[0] = b;
            }
            w
        })
        .collect()
}

fn score(model: &Model, windows: &[Vec<u32>], vocab: usize) -> anyhow::Result<Scored> {
    let mut logp = Vec::with_capacity(windows.len());
    let (mut nll, mut n) = (0.0f64, 0usize);
    for w in windows {
        let logits = model.transformer.forward(w, None, &mut NoHook, 0)?;
        let mut v = logits.flatten_all()?.to_vec1::<f32>()?;
        anyhow::ensure!(
            v.len() == w.len() * vocab,
            "forward returned {} logits for {} tokens × vocab {vocab}",
            v.len(),
            w.len()
        );
        v.par_chunks_mut(vocab).for_each(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&x| f64::from((x - max).exp())).sum();
            let lse = max + sum.ln() as f32;
            for x in row.iter_mut() {
                *x -= lse;
            }
        });
        for (row, &next) in v.chunks(vocab).zip(&w[1..]) {
            nll -= f64::from(row[next as usize]);
            n += 1;
        }
        logp.push(v);
    }
    Ok(Scored {
        logp,
        nll_mean: nll / n.max(1) as f64,
    })
}

/// Mean KL(base ‖ model) over every scored position.
fn mean_kld(base: &Scored, model: &Scored, vocab: usize) -> f64 {
    let (sum, rows) = base
        .logp
        .iter()
        .zip(&model.logp)
        .map(|(b, m)| {
            let per_row: f64 = b
                .par_chunks(vocab)
                .zip(m.par_chunks(vocab))
                .map(|(lb, lm)| {
                    let k: f64 = lb
                        .iter()
                        .zip(lm)
                        .map(|(&pb, &pm)| f64::from(pb.exp() * (pb - pm)))
                        .sum();
                    k.max(0.0)
                })
                .sum();
            (per_row, b.len() / vocab)
        })
        .fold((0.0, 0usize), |(s, n), (x, r)| (s + x, n + r));
    sum / rows.max(1) as f64
}

/// Measures every layer of `plan` alone. `progress(stage, done, total)` after each layer;
/// returning `false` cancels (an error saying so).
pub fn layer_sensitivity(
    base: &Model,
    plan: &BTreeMap<LinearId, LayerPlan>,
    calib_tokens: &[u32],
    eval_tokens: &[u32],
    opts: SensitivityOptions,
    progress: &mut Progress<'_>,
) -> anyhow::Result<SensitivityReport> {
    let start = Instant::now();
    let cfg = base.config();
    let vocab = cfg.vocab_size;
    let ctx = opts.ctx.clamp(2, cfg.max_position_embeddings.max(2));
    let bos = base
        .tokenizer
        .add_bos
        .then_some(base.tokenizer.bos_id)
        .flatten();
    let windows = windows(eval_tokens, ctx, bos);
    anyhow::ensure!(
        !windows.is_empty(),
        "no evaluation window of at least 2 tokens"
    );
    let total = plan.len();
    if !progress("scoring the base model", 0, total) {
        return Err(cancelled());
    }
    let base_scored = score(base, &windows, vocab)?;
    let needs_stats = plan.values().any(LayerPlan::needs_stats);
    let calib = CalibOptions {
        seq_len: opts.calib.seq_len.min(cfg.max_position_embeddings),
        ..opts.calib
    };
    // Calibration inputs of block 0; each block's output (of the base) feeds the next.
    let mut hidden = if needs_stats {
        let ids = calibration_ids(calib_tokens, calib.samples, calib.seq_len, opts.seed)?;
        Some(base.transformer.embed(&ids)?)
    } else {
        None
    };
    let mut layers = Vec::with_capacity(total);
    let mut done = 0;
    for block in 0..base.transformer.blocks.len() {
        let in_block: Vec<(LinearId, &LayerPlan)> = plan
            .iter()
            .filter(|(id, _)| id.block == block)
            .map(|(id, p)| (*id, p))
            .collect();
        let mut stats = StatsCollector::new(
            Some(
                in_block
                    .iter()
                    .map(|(id, _)| LinearId::new(block, stats_source(id.kind)))
                    .collect(),
            ),
            true,
        );
        if let Some(h) = hidden.take() {
            let more = plan.keys().any(|id| id.block > block);
            if in_block.iter().any(|(_, p)| p.needs_stats()) || more {
                if !progress(&format!("calibrating block {block}"), done, total) {
                    return Err(cancelled());
                }
                let out = base.transformer.run_block(
                    block,
                    &h,
                    calib.samples,
                    calib.seq_len,
                    &mut stats,
                )?;
                hidden = more.then_some(out);
            }
        }
        for (id, layer) in in_block {
            if !progress(&format!("measuring {id}"), done, total) {
                return Err(cancelled());
            }
            let Some(weight) = base.transformer.linear(id) else {
                anyhow::bail!("{id}: no such layer");
            };
            let source = LinearId::new(block, stats_source(id.kind));
            let new = compress_layer(
                weight,
                layer,
                stats.stats.get(&source),
                opts.seed ^ layer_seed(id),
            )
            .map_err(|e| anyhow::anyhow!("{id}: {e:#}"))?;
            let bytes = new.size_bytes();
            // The clone shares every tensor with the base; only this layer differs.
            let mut model = base.clone();
            *model.transformer.blocks[block].linear_mut(id.kind) = new;
            let scored = score(&model, &windows, vocab)?;
            layers.push(LayerSensitivity {
                layer: id.to_string(),
                id,
                setting: layer.describe(),
                kld: mean_kld(&base_scored, &scored, vocab),
                nll_delta: scored.nll_mean - base_scored.nll_mean,
                base_bytes: weight.size_bytes(),
                bytes,
            });
            done += 1;
        }
    }
    progress("done", total, total);
    Ok(SensitivityReport {
        model_id: base.id.clone(),
        model_name: base.name.clone(),
        tokens: windows.iter().map(|w| w.len() - 1).sum(),
        base_nll: base_scored.nll_mean,
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
