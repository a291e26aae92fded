//! Techniques and the pipeline that applies a recipe to a shared base model.
//!
//! Techniques never see the GUI, the store or threads: `apply` takes a base model, a recipe and
//! calibration tokens, reports progress through a callback (returning `false` cancels), and
//! returns a new model that shares every untouched tensor with the base.

pub mod allocate;
pub mod flatten;
pub mod measure;
pub mod merge;
pub mod prune;
pub mod recipe;
pub mod rps;
pub mod sensitivity;
pub mod shiftadd;
pub mod svd;

use std::time::Instant;

use candle_core::Device;
use rayon::prelude::*;

use crate::calib::{InputStats, StatsCollector, calibration_ids, stats_source};
use crate::model::{LinearId, LinearWeight, Model, NoHook};
use recipe::{LayerPlan, Plan, Recipe};

/// Calibration settings (GPTQ-style: random windows of the calibration text).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CalibOptions {
    pub samples: usize,
    pub seq_len: usize,
}

impl CalibOptions {
    /// These windows as a run with evaluation context `ctx` uses them: never longer than the
    /// context. A run and the export that re-applies it must both go through here, or the
    /// exported weights differ from the measured ones.
    pub fn within_ctx(self, ctx: usize) -> Self {
        Self {
            seq_len: self.seq_len.min(ctx),
            ..self
        }
    }
}

impl Default for CalibOptions {
    fn default() -> Self {
        Self {
            samples: 32,
            seq_len: 512,
        }
    }
}

/// What a recipe did to the model, in the store's technique-summary columns.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TechniqueSummary {
    /// Fraction (0–1) of all linear weights set to zero by pruning.
    pub sparsity: f64,
    /// Blocks removed by flattening or dropping.
    pub flattened_blocks: usize,
    /// Weights per stored value over the RPS-shared layers (1 when none are shared).
    pub rps_ratio: f64,
    /// Fine-tuned models merged into the base.
    pub merged_models: usize,
}

/// A recipe applied: the compressed model and what was done.
#[derive(Debug)]
pub struct CompressedModel {
    pub model: Model,
    pub plan: Plan,
    pub summary: TechniqueSummary,
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

pub(crate) fn cancelled() -> anyhow::Error {
    anyhow::anyhow!("cancelled")
}

/// Applies `recipe` to `base`: model-level steps first (merge, then flatten), then each
/// block's linears in order (prune then quantize, or RPS). Each block's calibration statistics
/// come from running the calibration windows through the already-compressed blocks before it
/// (sequential, as GPTQ and ShiftAddLLM do).
pub fn apply(
    base: &Model,
    recipe: &Recipe,
    calib_tokens: &[u32],
    calib: CalibOptions,
    progress: &mut Progress<'_>,
) -> anyhow::Result<CompressedModel> {
    apply_with_merge_hook(base, recipe, calib_tokens, calib, progress, &mut |_, _| {
        Ok(())
    })
}

/// [`apply`], with `on_merge_step` called after each step of the recipe's merge (if any) with
/// the merged model so far: how per-step evaluations (the merge timeline) are taken.
pub fn apply_with_merge_hook(
    base: &Model,
    recipe: &Recipe,
    calib_tokens: &[u32],
    calib: CalibOptions,
    progress: &mut Progress<'_>,
    on_merge_step: &mut merge::OnStep<'_>,
) -> anyhow::Result<CompressedModel> {
    let start = Instant::now();
    // Rules are checked against the base before any work when no step changes the depth.
    if recipe.flatten.is_none() {
        recipe.resolve(&base.transformer)?;
    }
    // The device the base lives on is where statistics and products run. Merging and
    // flattening compute on the CPU (their fine-tuned models and solvers are CPU data); their
    // result moves to the device before the per-layer steps.
    let device = base.transformer.device().clone();
    let model_steps = recipe.merge.is_some() || recipe.flatten.is_some();
    let mut model = if model_steps && !device.is_cpu() {
        base.to_device(&Device::Cpu)?
    } else {
        base.clone()
    };
    let mut summary = TechniqueSummary {
        rps_ratio: 1.0,
        ..TechniqueSummary::default()
    };
    if let Some(step) = &recipe.merge {
        model = merge::apply_merge(&model, step, recipe.seed, progress, on_merge_step)?;
        summary.merged_models = step.models.len();
    }
    if let Some(step) = &recipe.flatten {
        let removed =
            flatten::apply_flatten(&mut model, step, calib_tokens, calib, recipe.seed, progress)?;
        summary.flattened_blocks = removed;
    }
    if model_steps && !device.is_cpu() {
        model = model.to_device(&device)?;
    }
    if let Some(step) = &recipe.embedding {
        quantize_embedding(&mut model, step)?;
    }
    let plan = recipe.resolve(&model.transformer)?;
    let needs_stats = plan.layers.values().any(|(_, t)| t.needs_stats());
    let total = plan.layers.len();
    let mut done = 0;
    let mut hidden = if needs_stats {
        let ids = calibration_ids(calib_tokens, calib.samples, calib.seq_len, recipe.seed)?;
        Some(model.transformer.embed(&ids)?)
    } else {
        None
    };
    let n_blocks = model.transformer.blocks.len();
    let mut timings = PhaseTimes::default();
    for block in 0..n_blocks {
        let layers: Vec<(LinearId, LayerPlan)> = plan
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
        )
        .statistics_only();
        let t = Instant::now();
        if let Some(h) = &hidden
            && !layers.is_empty()
        {
            model
                .transformer
                .run_block(block, h, calib.samples, calib.seq_len, &mut stats)?;
        }
        timings.statistics += t.elapsed();
        let t = Instant::now();
        if !layers.is_empty() && !progress(&format!("compressing block {block}"), done, total) {
            return Err(cancelled());
        }
        // Every layer of the block reads the same pre-compression statistics and none reads
        // another's result, so they are compressed concurrently (each is deterministic, so the
        // result does not depend on the schedule); nested rayon work inside each layer keeps
        // both cores busy where one layer alone would leave them waiting on small steps.
        let compressed: Vec<anyhow::Result<LinearWeight>> = layers
            .par_iter()
            .map(|(id, layer)| {
                let source = LinearId::new(block, stats_source(id.kind));
                let Some(weight) = model.transformer.linear(*id) else {
                    anyhow::bail!("{id}: no such layer");
                };
                let seed = recipe.seed ^ layer_seed(*id);
                compress_layer(weight, layer, stats.stats.get(&source), seed)
                    .map_err(|e| anyhow::anyhow!("{id}: {e:#}"))
            })
            .collect();
        for ((id, _), new) in layers.iter().zip(compressed) {
            *model.transformer.blocks[block].linear_mut(id.kind) = new?;
            done += 1;
            if !progress(&format!("compressed {id}"), done, total) {
                return Err(cancelled());
            }
        }
        timings.quantize += t.elapsed();
        // Inputs of the next block come from this (now compressed) block.
        if let Some(h) = hidden.take()
            && plan.layers.keys().any(|id| id.block > block)
        {
            if !progress(&format!("calibrating block {block}"), done, total) {
                return Err(cancelled());
            }
            let t = Instant::now();
            hidden = Some(model.transformer.run_block(
                block,
                &h,
                calib.samples,
                calib.seq_len,
                &mut NoHook,
            )?);
            timings.propagate += t.elapsed();
        }
    }
    tracing::info!(
        "compress: statistics pass {:.1} s, layer compression {:.1} s, compressed-block pass {:.1} s",
        timings.statistics.as_secs_f64(),
        timings.quantize.as_secs_f64(),
        timings.propagate.as_secs_f64()
    );
    summary.sparsity = prune::model_sparsity(&model, |id| {
        plan.layers.get(&id).is_some_and(|(_, p)| p.prune.is_some())
    });
    summary.rps_ratio = rps::model_rps_ratio(&model);
    progress("done", total, total);
    Ok(CompressedModel {
        model,
        plan,
        summary,
        compress_seconds: start.elapsed().as_secs_f64(),
    })
}

/// The `[embedding]` step: per-row RTN of the token embedding (or f16 at 16 bits), which the
/// tied LM head shares. The embedding keeps the dequantized (f16-rounded) values in f32 for its
/// lookups; the head holds the stored form (RTN over the same tensor, or an f16 matrix), and
/// the byte count is the head's, counted once (see [`crate::model::Transformer::size_bytes`]).
pub(crate) fn quantize_embedding(
    model: &mut Model,
    step: &recipe::EmbeddingStep,
) -> anyhow::Result<()> {
    let t = &mut model.transformer;
    step.validate(t)
        .map_err(|e| anyhow::anyhow!("[embedding]: {e}"))?;
    if step.bits == 16 {
        let half = t.token_embd.to_dtype(candle_core::DType::F16)?;
        t.token_embd = half.to_dtype(candle_core::DType::F32)?;
        t.output = LinearWeight::dense(half, None);
        return Ok(());
    }
    let (rows, cols) = t.token_embd.dims2()?;
    let w = t
        .token_embd
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let group = if step.group == 0 { cols } else { step.group };
    let q = crate::quant::rtn::rtn_quantize(
        &w,
        rows,
        cols,
        step.bits,
        group,
        crate::quant::rtn::RtnRule::of(step.symmetric, step.float_min),
    );
    let dq = candle_core::Tensor::from_vec(q, (rows, cols), t.token_embd.device())?;
    t.token_embd = dq.clone();
    t.output = LinearWeight::Rtn {
        dequantized: dq,
        bits: step.bits,
        group,
        symmetric: step.symmetric,
        float_min: step.float_min,
        int8_activations: step.int8_activations,
        bias: None,
    };
    Ok(())
}

/// Where the per-block compression loop spends its time (logged at `REPARAM_LOG=info`).
#[derive(Default)]
struct PhaseTimes {
    /// Forward passes that gather input statistics (Gram matrices included).
    statistics: std::time::Duration,
    /// Compressing the linears.
    quantize: std::time::Duration,
    /// Forward passes through the compressed blocks that produce the next block's inputs.
    propagate: std::time::Duration,
}

/// A per-layer seed, so each layer's randomised choices differ but are reproducible.
pub(crate) fn layer_seed(id: LinearId) -> u64 {
    let h = blake3::hash(id.to_string().as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// The bytes a `rows × cols` linear holds after [`compress_layer`] with `plan` (bias
/// excluded; `dense_bytes` is its size untouched), without compressing it: what the editor's
/// estimate shows. Exact for every form but unstructured pruning, which counts the weights the
/// ratio zeroes and not those that were zero already.
pub fn estimated_layer_bytes(
    plan: &LayerPlan,
    rows: usize,
    cols: usize,
    dense_bytes: usize,
) -> usize {
    use crate::model::hashed::HashedWeight;
    use crate::model::nm::NmPacked;
    use crate::quant::lut::BcqPacked;
    use recipe::Quant;
    let n = rows * cols;
    if let Some(r) = &plan.rps {
        return HashedWeight::size_for(rps::slots_for(n, r.ratio));
    }
    match &plan.quant {
        Some(Quant::ShiftAdd(k)) => {
            let apot = (1..=crate::quant::apot::CODE_TERMS).contains(&k.apot_terms);
            return BcqPacked::size_for(rows, cols, k.bits, shiftadd::scale_layout(k), apot);
        }
        Some(Quant::Rtn(k)) => {
            return LinearWeight::rtn_size_for(rows, cols, k.bits, k.group, k.symmetric);
        }
        Some(Quant::F16) => return n * 2,
        None => {}
    }
    let Some(p) = &plan.prune else {
        return dense_bytes;
    };
    if prune::stores_as_nm(p) {
        return NmPacked::size_for(rows, cols, p.n, p.m);
    }
    let kept = prune::kept_after(p, rows, cols);
    match prune::sparse_storage(p.form, rows, cols, kept) {
        _ if p.ratio == 0.0 => dense_bytes,
        prune::SparseStorage::Dense => dense_bytes,
        s => s.bytes(rows, cols, kept),
    }
}

/// One linear through its plan: RPS alone, or prune then quantize. The techniques build their
/// results on the CPU; the result moves to the layer's device (see [`LinearWeight::to_device`]).
pub(crate) fn compress_layer(
    weight: &LinearWeight,
    layer: &LayerPlan,
    stats: Option<&InputStats>,
    seed: u64,
) -> anyhow::Result<LinearWeight> {
    let device = weight.device();
    if let Some(knobs) = &layer.rps {
        return Ok(rps::share_linear(weight, knobs, stats, seed)?.to_device(&device)?);
    }
    let mut w = weight.clone();
    if let Some(knobs) = &layer.prune {
        w = prune::prune_linear(&w, knobs, stats)?;
    }
    if let Some(quant) = &layer.quant {
        w = shiftadd::compress_linear(&w, quant, stats)?;
    }
    Ok(w.to_device(&device)?)
}
