//! Techniques and the pipeline that applies a recipe to a shared base model.
//!
//! Techniques never see the GUI, the store or threads: `apply` takes a base model, a recipe and
//! calibration tokens, reports progress through a callback (returning `false` cancels), and
//! returns a new model that shares every untouched tensor with the base.

pub mod allocate;
pub mod recipe;
pub mod shiftadd;

use std::time::Instant;

use crate::calib::{StatsCollector, calibration_ids, stats_source};
use crate::model::{LinearId, Model, NoHook};
use recipe::{LayerTechnique, Plan, Recipe};

/// Calibration settings (GPTQ-style: random windows of the calibration text).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CalibOptions {
    pub samples: usize,
    pub seq_len: usize,
}

impl Default for CalibOptions {
    fn default() -> Self {
        Self {
            samples: 32,
            seq_len: 512,
        }
    }
}

/// A recipe applied: the compressed model and what was done.
#[derive(Debug)]
pub struct CompressedModel {
    pub model: Model,
    pub plan: Plan,
    pub compress_seconds: f64,
}

impl CompressedModel {
    /// Average stored bits per weight over the compressed linears (scales included).
    pub fn avg_bits(&self) -> f64 {
        let (mut bytes, mut weights) = (0usize, 0usize);
        for id in self.plan.layers.keys() {
            if let Some(w) = self.model.transformer.linear(*id) {
                bytes += w.size_bytes() - w.bias().map_or(0, |b| b.elem_count() * 4);
                weights += w.weight_count();
            }
        }
        if weights == 0 {
            return 32.0;
        }
        8.0 * bytes as f64 / weights as f64
    }
}

/// Progress callback: `(stage, done, total)`; returning `false` cancels the job.
pub type Progress<'a> = dyn FnMut(&str, usize, usize) -> bool + 'a;

fn cancelled() -> anyhow::Error {
    anyhow::anyhow!("cancelled")
}

/// Applies `recipe` to `base`. Blocks are processed in order; each block's calibration
/// statistics come from running the calibration windows through the already-compressed
/// blocks before it (sequential, as GPTQ and ShiftAddLLM do).
pub fn apply(
    base: &Model,
    recipe: &Recipe,
    calib_tokens: &[u32],
    calib: CalibOptions,
    progress: &mut Progress<'_>,
) -> anyhow::Result<CompressedModel> {
    let start = Instant::now();
    let plan = recipe.resolve(&base.transformer)?;
    let mut model = base.clone();
    let needs_stats = plan
        .layers
        .values()
        .any(|(_, t)| matches!(t, LayerTechnique::ShiftAdd(k) if k.error_feedback));
    let total = plan.layers.len();
    let mut done = 0;
    let mut hidden = if needs_stats {
        let ids = calibration_ids(calib_tokens, calib.samples, calib.seq_len, recipe.seed)?;
        Some(model.transformer.embed(&ids)?)
    } else {
        None
    };
    let n_blocks = model.transformer.blocks.len();
    for block in 0..n_blocks {
        let layers: Vec<(LinearId, LayerTechnique)> = plan
            .layers
            .iter()
            .filter(|(id, _)| id.block == block)
            .map(|(id, (_, t))| (*id, t.clone()))
            .collect();
        let mut stats = StatsCollector::new(
            Some(
                layers
                    .iter()
                    .map(|(id, _)| LinearId::new(block, stats_source(id.kind)))
                    .collect(),
            ),
            true,
        );
        if let Some(h) = &hidden
            && !layers.is_empty()
        {
            model
                .transformer
                .run_block(block, h, calib.samples, calib.seq_len, &mut stats)?;
        }
        for (id, technique) in &layers {
            if !progress(&format!("quantizing {id}"), done, total) {
                return Err(cancelled());
            }
            let source = LinearId::new(block, stats_source(id.kind));
            let layer_stats = stats.stats.get(&source);
            let Some(weight) = model.transformer.linear(*id) else {
                anyhow::bail!("{id}: no such layer");
            };
            let new = shiftadd::compress_linear(weight, technique, layer_stats)
                .map_err(|e| anyhow::anyhow!("{id}: {e:#}"))?;
            *model.transformer.blocks[block].linear_mut(id.kind) = new;
            done += 1;
        }
        // Inputs of the next block come from this (now compressed) block.
        if let Some(h) = hidden.take()
            && plan.layers.keys().any(|id| id.block > block)
        {
            if !progress(&format!("calibrating block {block}"), done, total) {
                return Err(cancelled());
            }
            hidden = Some(model.transformer.run_block(
                block,
                &h,
                calib.samples,
                calib.seq_len,
                &mut NoHook,
            )?);
        }
    }
    progress("done", total, total);
    Ok(CompressedModel {
        model,
        plan,
        compress_seconds: start.elapsed().as_secs_f64(),
    })
}
