//! Continual model merging (`docs/techniques.md`, "Continual merging"): fine-tuned variants of one
//! base, folded into a single merged model one at a time, keeping only the base, the running merge
//! and the incoming model.
//!
//! Methods: OPCM (orthogonal projection of each new task vector away from the merged one's
//! rank-one directions and dominant subspace, then adaptive rescaling to the running mean of
//! task-vector norms; FusionBench's `OPCMForCLIP` maths, with the thin-SVD form of Merge §3
//! in `docs/techniques.md`), continual task arithmetic (`θ₀ + λ Σ τ_i`), the running
//! average of the models, TIES-merging and DARE. TIES is exactly the batch method's result, kept
//! continual by holding per parameter the sums and counts of the trimmed entries of each sign
//! (the elected sign is the sign of their total, the merged entry the mean of the agreeing
//! ones). DARE drops each task-vector entry with probability `1 − density` (seeded per model
//! and parameter) and scales the rest by `1/density`, then adds as task arithmetic.
//! This module owns the maths and the model loop; evaluation per step is the caller's, through
//! the `on_step` callback.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::model::params::{Param, check_same_architecture, get, params, set, values};
use crate::model::{LinearWeight, Model, Transformer, load_spec};
use crate::technique::Progress;
use crate::technique::recipe::{MergeMethod, MergeStep};
use crate::technique::svd::{matmul, thin_svd, transpose};

/// What one merge step did, for the per-step timeline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MergeStepInfo {
    /// 1-based position of the model in the merge order.
    pub step: usize,
    /// The model folded in at this step, as the recipe names it.
    pub model: String,
    /// `‖θ_t − θ₀‖` over all parameters.
    pub task_vector_norm: f64,
    /// `‖θ̄_t − θ₀‖` after the step.
    pub merged_norm: f64,
    /// OPCM's `λ_t` (norm of the un-normalised sum over the mean norm); task arithmetic's λ;
    /// for averaging, `t`.
    pub lambda: f64,
    /// OPCM from step 2: `‖T − T'‖ / ‖T‖`, how much of the incoming task vector the projection
    /// removed as interfering with what is merged (0: nothing; 1: all of it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projected_out: Option<f64>,
}

/// Called after every step with its summary and the merged model so far.
pub type OnStep<'a> = dyn FnMut(&MergeStepInfo, &Model) -> anyhow::Result<()> + 'a;

/// Runs `f` on `t`'s values, borrowed in place when `t` is a contiguous f32 CPU tensor (every
/// dense weight is) and copied otherwise, so the merge does not copy the base and incoming
/// models parameter by parameter.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> anyhow::Result<R> {
    if t.dtype() == DType::F32 && t.is_contiguous() {
        let (storage, layout) = t.storage_and_layout();
        if let candle_core::Storage::Cpu(cpu) = &*storage {
            let all = cpu.as_slice::<f32>()?;
            let start = layout.start_offset();
            if let Some(v) = all.get(start..start + t.elem_count()) {
                return Ok(f(v));
            }
        }
    }
    Ok(f(&values(t)?))
}

/// OPCM's projection of a new task vector `t` (row-major `rows × cols`) against the merged one
/// `p`: with `p = U Σ Vᵀ` (thin) and `r` the leading singular values whose share of `Σσ` is at
/// most `alpha`, removes `t`'s block on `span(U_r) ⊗ span(V_r)` and its component along every
/// `u_i v_iᵀ` (`docs/techniques.md`, Merge §3).
pub fn opcm_project(
    p: &[f64],
    t: &[f64],
    rows: usize,
    cols: usize,
    alpha: f64,
) -> anyhow::Result<Vec<f64>> {
    let svd = thin_svd(p, rows, cols)?;
    let k = svd.k;
    if k == 0 {
        return Ok(t.to_vec());
    }
    let total: f64 = svd.s.iter().sum();
    let mut cum = 0.0;
    let r = svd
        .s
        .iter()
        .take_while(|s| {
            cum += *s;
            cum / total <= alpha
        })
        .count();
    // M = Uᵀ T V (k × k); D keeps M's top-left r × r block and its diagonal.
    let tv = matmul(t, rows, cols, &svd.v, k)?;
    let m = matmul(&transpose(&svd.u, rows, k), k, rows, &tv, k)?;
    let mut d = vec![0f64; k * k];
    for i in 0..k {
        for j in 0..k {
            if i == j || (i < r && j < r) {
                d[i * k + j] = m[i * k + j];
            }
        }
    }
    let ud = matmul(&svd.u, rows, k, &d, k)?;
    let removed = matmul(&ud, rows, k, &transpose(&svd.v, cols, k), cols)?;
    Ok(t.iter().zip(&removed).map(|(a, b)| a - b).collect())
}

/// The running merge: the state carried from one step to the next. Its size does not depend on
/// the number of models: one f32 buffer per parameter (the merged model, updated in place) and
/// a few scalars. The incoming fine-tuned model is borrowed for one step and never kept.
pub struct Merger {
    method: MergeMethod,
    alpha: f64,
    /// TIES' and DARE's density.
    density: f64,
    /// DARE's seed.
    seed: u64,
    /// TIES: per parameter, the trimmed entries' sums and counts by sign (empty otherwise).
    ties: Vec<TiesSums>,
    /// The parameters, in [`params`] order, fixed by the first step.
    list: Vec<Param>,
    /// The merged model's values per parameter (empty before the first step).
    acc: Vec<Vec<f32>>,
    steps: usize,
    norm_sum: f64,
    lambda_prev: f64,
}

/// Groups of consecutive parameters that belong to one block (or stand alone), processed in
/// parallel within a group so that the transient f64 workspace is one block's worth.
fn block_groups(list: &[Param]) -> Vec<std::ops::Range<usize>> {
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    let mut cur_block = None;
    for (i, &p) in list.iter().enumerate() {
        let blk = match p {
            Param::Linear(id) | Param::Bias(id) => Some(id.block),
            Param::AttnNorm(b) | Param::FfnNorm(b) => Some(b),
            _ => None,
        };
        match groups.last_mut() {
            Some(g) if blk.is_some() && blk == cur_block => g.end = i + 1,
            _ => groups.push(i..i + 1),
        }
        cur_block = blk;
    }
    groups
}

impl Merger {
    /// An empty merge with `method` and its knob (OPCM's α, the λ of the others).
    pub fn new(method: MergeMethod, alpha: f64) -> Self {
        Self {
            method,
            alpha,
            density: 1.0,
            seed: 0,
            ties: Vec::new(),
            list: Vec::new(),
            acc: Vec::new(),
            steps: 0,
            norm_sum: 0.0,
            lambda_prev: 1.0,
        }
    }

    /// TIES' or DARE's density (fraction of each task vector kept).
    pub fn with_density(mut self, density: f64) -> Self {
        self.density = density;
        self
    }

    /// DARE's seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Bytes of merge state held between steps: the merged parameters (one model's worth of
    /// f32; TIES adds four more), whatever the number of models merged so far.
    pub fn state_bytes(&self) -> usize {
        let ties: usize = self.ties.iter().map(TiesSums::bytes).sum();
        self.acc.iter().map(|v| v.len() * 4).sum::<usize>() + ties
    }

    /// The merged transformer so far (`None` before the first step), built on `base`'s
    /// structure from a copy of the merged values.
    pub fn merged(&self, base: &Transformer) -> anyhow::Result<Option<Transformer>> {
        if self.steps == 0 {
            return Ok(None);
        }
        let mut t = base.clone();
        for (&p, v) in self.list.iter().zip(&self.acc) {
            let dims = get(base, p)?.dims().to_vec();
            set(&mut t, p, Tensor::from_vec(v.clone(), dims, &Device::Cpu)?);
        }
        Ok(Some(t))
    }

    /// The merged transformer, moving the merged values into it (no copy).
    pub fn into_merged(self, base: &Transformer) -> anyhow::Result<Option<Transformer>> {
        if self.steps == 0 {
            return Ok(None);
        }
        let mut t = base.clone();
        for (p, v) in self.list.into_iter().zip(self.acc) {
            let dims = get(base, p)?.dims().to_vec();
            set(&mut t, p, Tensor::from_vec(v, dims, &Device::Cpu)?);
        }
        Ok(Some(t))
    }

    /// Folds `model` into the merge and returns the step's summary (its `model` field empty).
    /// `model` is only read: the caller drops it as soon as this returns.
    pub fn add(
        &mut self,
        base: &Transformer,
        model: &Transformer,
    ) -> anyhow::Result<MergeStepInfo> {
        check_same_architecture(base, model)?;
        if self.steps == 0 {
            self.list = params(base);
        }
        let t = self.steps + 1;
        let first = self.steps == 0;
        let (method, alpha) = (self.method, self.alpha);
        let ctx = StepCtx {
            method,
            first,
            t,
            alpha,
            lp: self.lambda_prev,
            density: self.density,
            seed: self.seed,
        };
        let mut acc = std::mem::take(&mut self.acc);
        if first {
            acc = vec![Vec::new(); self.list.len()];
            self.ties = (0..self.list.len()).map(|_| TiesSums::default()).collect();
        }
        let mut ties = std::mem::take(&mut self.ties);
        let mut tv_sq = 0.0;
        // OPCM: ‖λ_prev·P + T'‖², the norm of the un-rescaled merged task vector, and ‖T − T'‖².
        let mut sum_sq = 0.0;
        let mut removed_sq = 0.0;
        for group in block_groups(&self.list) {
            let out: Vec<anyhow::Result<Folded>> = acc[group.clone()]
                .par_iter_mut()
                .zip(&mut ties[group.clone()])
                .zip(&self.list[group.clone()])
                .zip(group)
                .map(|(((m, sums), &p), i)| {
                    let (xt, bt) = (get(model, p)?, get(base, p)?);
                    with_values(&xt, |x| {
                        with_values(&bt, |b| ctx.fold(p, i, base, m, sums, x, b))
                    })??
                })
                .collect();
            for r in out {
                let f = r?;
                tv_sq += f.tv_sq;
                sum_sq += f.merged_sq;
                removed_sq += f.removed_sq;
            }
        }
        let tv_norm = tv_sq.sqrt();
        self.norm_sum += tv_norm;
        self.steps = t;
        let lambda = match (method, first) {
            (MergeMethod::Opcm, true) => 1.0,
            (MergeMethod::Opcm, false) => {
                let avg = self.norm_sum / t as f64;
                let n = sum_sq.sqrt();
                if n == 0.0 || avg == 0.0 {
                    // Nothing to rescale: every task vector so far is zero.
                    self.lambda_prev = 1.0;
                } else {
                    // Rescale the merged task vector to the running mean of task-vector norms.
                    let scale = (avg / n) as f32;
                    let list = &self.list;
                    acc.par_iter_mut()
                        .zip(list)
                        .try_for_each(|(m, &p)| -> anyhow::Result<()> {
                            with_values(&get(base, p)?, |b| {
                                for (m, b) in m.iter_mut().zip(b) {
                                    *m = b + (*m - b) * scale;
                                }
                            })
                        })?;
                    self.lambda_prev = n / avg;
                }
                self.lambda_prev
            }
            (MergeMethod::TaskArithmetic | MergeMethod::Ties | MergeMethod::Dare, _) => alpha,
            (MergeMethod::Average, _) => t as f64,
        };
        self.acc = acc;
        self.ties = ties;
        let merged_norm = self.merged_norm(base)?;
        Ok(MergeStepInfo {
            step: t,
            model: String::new(),
            task_vector_norm: tv_norm,
            merged_norm,
            lambda,
            projected_out: (method == MergeMethod::Opcm && !first && tv_sq > 0.0)
                .then(|| (removed_sq / tv_sq).sqrt()),
        })
    }

    /// `‖θ̄ − θ₀‖` of the merge so far.
    fn merged_norm(&self, base: &Transformer) -> anyhow::Result<f64> {
        let parts: Vec<anyhow::Result<f64>> = self
            .acc
            .par_iter()
            .zip(&self.list)
            .map(|(m, &p)| {
                with_values(&get(base, p)?, |b| {
                    m.iter().zip(b).map(|(a, c)| f64::from(a - c).powi(2)).sum()
                })
            })
            .collect();
        let mut sq = 0.0;
        for part in parts {
            sq += part?;
        }
        Ok(sq.sqrt())
    }
}

/// Squared norms one parameter's fold reports.
#[derive(Default)]
struct Folded {
    /// `‖T‖²` of the incoming task vector.
    tv_sq: f64,
    /// OPCM: `‖λ_prev·P + T'‖²`.
    merged_sq: f64,
    /// OPCM: `‖T − T'‖²`, what the projection removed.
    removed_sq: f64,
}

/// What one step applies to every parameter.
struct StepCtx {
    method: MergeMethod,
    /// The first model of the merge.
    first: bool,
    /// 1-based step.
    t: usize,
    alpha: f64,
    /// OPCM's λ of the previous step.
    lp: f64,
    density: f64,
    seed: u64,
}

impl StepCtx {
    /// Folds parameter `p` (the `i`-th; `x` incoming, `b` base) into its merged values `m`
    /// (and, for TIES, its sums); returns the task vector's squared norm and, for OPCM, the
    /// squared norms of the step's merged and removed parts.
    #[allow(clippy::too_many_arguments)]
    fn fold(
        &self,
        p: Param,
        i: usize,
        base: &Transformer,
        m: &mut Vec<f32>,
        sums: &mut TiesSums,
        x: &[f32],
        b: &[f32],
    ) -> anyhow::Result<Folded> {
        let mut out = Folded {
            tv_sq: x.iter().zip(b).map(|(a, c)| f64::from(a - c).powi(2)).sum(),
            ..Folded::default()
        };
        let l = self.alpha as f32;
        match (self.method, self.first) {
            (MergeMethod::Ties, _) => {
                sums.add(&trimmed(x, b, self.density));
                *m = sums.merged(b, l);
            }
            (MergeMethod::Dare, first) => {
                let tau = dropped(x, b, self.density, dare_seed(self.seed, self.t, i));
                if first {
                    *m = b.to_vec();
                }
                for (m, t) in m.iter_mut().zip(&tau) {
                    *m += l * t;
                }
            }
            // The first model is the merge (OPCM, averaging).
            (MergeMethod::Opcm | MergeMethod::Average, true) => *m = x.to_vec(),
            (MergeMethod::TaskArithmetic, true) => {
                let l = self.alpha as f32;
                *m = b.iter().zip(x).map(|(b, x)| b + l * (x - b)).collect();
            }
            (MergeMethod::TaskArithmetic, false) => {
                let l = self.alpha as f32;
                for ((m, x), b) in m.iter_mut().zip(x).zip(b) {
                    *m += l * (x - b);
                }
            }
            (MergeMethod::Average, false) => {
                let w = 1.0 / self.t as f32;
                for (m, x) in m.iter_mut().zip(x) {
                    *m += w * (x - *m);
                }
            }
            (MergeMethod::Opcm, false) => {
                (out.merged_sq, out.removed_sq) = opcm_fold(p, base, m, x, b, self.alpha, self.lp)?;
            }
        }
        Ok(out)
    }
}

/// TIES' state for one parameter: the sums and counts of the trimmed task-vector entries of
/// each sign, over the models so far.
#[derive(Default)]
struct TiesSums {
    pos: Vec<f32>,
    pos_count: Vec<f32>,
    neg: Vec<f32>,
    neg_count: Vec<f32>,
}

impl TiesSums {
    fn bytes(&self) -> usize {
        4 * (self.pos.len() + self.pos_count.len() + self.neg.len() + self.neg_count.len())
    }

    /// Adds one trimmed task vector (zeros are entries it dropped).
    fn add(&mut self, tau: &[f32]) {
        if self.pos.is_empty() {
            let n = tau.len();
            (self.pos, self.pos_count) = (vec![0.0; n], vec![0.0; n]);
            (self.neg, self.neg_count) = (vec![0.0; n], vec![0.0; n]);
        }
        for (i, &t) in tau.iter().enumerate() {
            if t > 0.0 {
                self.pos[i] += t;
                self.pos_count[i] += 1.0;
            } else if t < 0.0 {
                self.neg[i] += t;
                self.neg_count[i] += 1.0;
            }
        }
    }

    /// `b + λ·τ̄`: each entry's elected sign is that of the sum of all trimmed entries (ties
    /// go positive, as mergekit's), and `τ̄` the mean of the entries of that sign.
    fn merged(&self, b: &[f32], lambda: f32) -> Vec<f32> {
        b.iter()
            .enumerate()
            .map(|(i, &b)| {
                let (sum, count) = if self.pos[i] + self.neg[i] >= 0.0 {
                    (self.pos[i], self.pos_count[i])
                } else {
                    (self.neg[i], self.neg_count[i])
                };
                if count > 0.0 {
                    b + lambda * (sum / count)
                } else {
                    b
                }
            })
            .collect()
    }
}

/// TIES' trim: `x − b` with all but its `⌊density·n⌋` largest magnitudes set to zero (mergekit's
/// `magnitude` sparsification).
fn trimmed(x: &[f32], b: &[f32], density: f64) -> Vec<f32> {
    let mut tau: Vec<f32> = x.iter().zip(b).map(|(x, b)| x - b).collect();
    let keep = ((density.clamp(0.0, 1.0) * tau.len() as f64) as usize).min(tau.len());
    if keep == tau.len() {
        return tau;
    }
    if keep == 0 {
        tau.fill(0.0);
        return tau;
    }
    let mut order: Vec<usize> = (0..tau.len()).collect();
    // The `keep` largest magnitudes first (ties by position, for a reproducible choice).
    order.select_nth_unstable_by(keep - 1, |&i, &j| {
        tau[j].abs().total_cmp(&tau[i].abs()).then(i.cmp(&j))
    });
    for &i in &order[keep..] {
        tau[i] = 0.0;
    }
    tau
}

/// DARE's seed for parameter `i` of step `t`: each model and parameter draws its own mask.
fn dare_seed(seed: u64, t: usize, i: usize) -> u64 {
    crate::rng::mix64(seed ^ crate::rng::mix64(((t as u64) << 32) ^ i as u64))
}

/// DARE's drop-and-rescale: `x − b` with each entry kept with probability `density` and
/// scaled by `1/density`, the others zero.
fn dropped(x: &[f32], b: &[f32], density: f64, seed: u64) -> Vec<f32> {
    let mut rng = crate::rng::Rng::new(seed);
    let scale = if density > 0.0 {
        (1.0 / density) as f32
    } else {
        0.0
    };
    x.iter()
        .zip(b)
        .map(|(x, b)| {
            if rng.chance(density) {
                (x - b) * scale
            } else {
                0.0
            }
        })
        .collect()
}

/// One parameter of an OPCM step (t ≥ 2), in place on the merged values `m`: with
/// `P = m − b` and `T = x − b`, `m ← b + λ_prev·P + T'` where `T'` is `T` projected away from
/// `P`'s directions (linears and an untied head only). Returns `‖λ_prev·P + T'‖²` for the
/// rescaling, and `‖T − T'‖²`.
fn opcm_fold(
    p: Param,
    base: &Transformer,
    m: &mut [f32],
    x: &[f32],
    b: &[f32],
    alpha: f64,
    lp: f64,
) -> anyhow::Result<(f64, f64)> {
    let pv: Vec<f64> = m.iter().zip(b).map(|(a, c)| f64::from(a - c)).collect();
    let tv: Vec<f64> = x.iter().zip(b).map(|(a, c)| f64::from(a - c)).collect();
    let projected_shape = match p {
        Param::Linear(id) => Some(
            base.linear(id)
                .map(LinearWeight::shape)
                .ok_or_else(|| anyhow::anyhow!("{id}: no such layer"))?,
        ),
        Param::Output => Some(base.output.shape()),
        _ => None,
    };
    let (cleaned, removed) = match projected_shape {
        Some((rows, cols)) => {
            let cleaned = opcm_project(&pv, &tv, rows, cols, alpha)?;
            let removed = tv.iter().zip(&cleaned).map(|(t, c)| (t - c).powi(2)).sum();
            (cleaned, removed)
        }
        None => (tv, 0.0),
    };
    let mut sq = 0.0;
    for ((m, b), (p, c)) in m.iter_mut().zip(b).zip(pv.iter().zip(&cleaned)) {
        let d = lp * p + c;
        sq += d * d;
        *m = b + d as f32;
    }
    Ok((sq, removed))
}

/// Loads one fine-tuned model by the name the recipe gives it.
pub type LoadModel<'a> = dyn FnMut(&str) -> anyhow::Result<Transformer> + 'a;

/// Merges `step.models` into `base`, loading each model from its file only when its turn comes
/// (see [`apply_merge_with`]).
pub fn apply_merge(
    base: &Model,
    step: &MergeStep,
    seed: u64,
    progress: &mut Progress<'_>,
    on_step: &mut OnStep<'_>,
) -> anyhow::Result<Model> {
    apply_merge_with(
        base,
        step,
        seed,
        &mut |spec| {
            load_spec(spec)
                .map(|m| m.transformer)
                .map_err(|e| anyhow::anyhow!("{e:#}"))
        },
        progress,
        on_step,
    )
}

/// Merges `step.models` into `base` in order. Each model is loaded by `load` when its step
/// starts and dropped once folded in, before the step's evaluation and before the next load:
/// at any moment the base, the merge state and one incoming model are held (during `on_step`,
/// the base, the merge state and its copy as a model), whatever the number of models. `seed`
/// (the recipe's) draws DARE's masks.
pub fn apply_merge_with(
    base: &Model,
    step: &MergeStep,
    seed: u64,
    load: &mut LoadModel<'_>,
    progress: &mut Progress<'_>,
    on_step: &mut OnStep<'_>,
) -> anyhow::Result<Model> {
    anyhow::ensure!(!step.models.is_empty(), "merge.models is empty");
    anyhow::ensure!(
        step.alpha.is_finite() && step.alpha >= 0.0,
        "merge.alpha = {} must be a finite non-negative number",
        step.alpha
    );
    let density = step.density();
    anyhow::ensure!(
        density > 0.0 && density <= 1.0,
        "merge.density = {density} must be in (0, 1]"
    );
    let mut merger = Merger::new(step.method, step.alpha)
        .with_density(density)
        .with_seed(seed);
    let total = step.models.len();
    for (i, spec) in step.models.iter().enumerate() {
        if !progress(&format!("merging {spec}"), i, total) {
            anyhow::bail!("cancelled");
        }
        let mut info = {
            let model = load(spec).map_err(|e| anyhow::anyhow!("merge: {e:#}"))?;
            merger
                .add(&base.transformer, &model)
                .map_err(|e| anyhow::anyhow!("merge: {spec}: {e:#}"))?
            // `model` is dropped here, before the evaluation and the next load.
        };
        info.model.clone_from(spec);
        let Some(merged) = merger.merged(&base.transformer)? else {
            anyhow::bail!("merge: no merged model after step {}", i + 1);
        };
        let current = Model {
            transformer: merged,
            ..base.clone()
        };
        on_step(&info, &current)?;
    }
    let Some(merged) = merger.into_merged(&base.transformer)? else {
        anyhow::bail!("merge: nothing was merged");
    };
    Ok(Model {
        transformer: merged,
        ..base.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Architecture;
    use crate::model::llama::{Block, Kernels};
    use crate::model::params::task_vector_gram;
    use crate::model::{LinearId, LinearKind, LlamaConfig};
    use crate::rng::Rng;

    fn config() -> LlamaConfig {
        LlamaConfig {
            architecture: Architecture::Llama,
            vocab_size: 20,
            hidden_size: 16,
            intermediate_size: 24,
            num_layers: 2,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
        }
    }

    fn rand(rng: &mut Rng, shape: &[usize], scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// A random transformer; `seed` 0 is the base, others are "fine-tunes" near it.
    fn model(base: Option<&Transformer>, seed: u64) -> Transformer {
        let c = config();
        let mut rng = Rng::new(seed);
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let mut lin =
            |r: usize, cc: usize| LinearWeight::dense(rand(&mut rng, &[r, cc], 1.0), None);
        let blocks: Vec<Block> = (0..c.num_layers)
            .map(|_| Block {
                attn_norm: Tensor::ones(d, DType::F32, &Device::Cpu).unwrap(),
                attn_q: lin(16, d),
                attn_k: lin(8, d),
                attn_v: lin(8, d),
                attn_output: lin(d, 16),
                ffn_norm: Tensor::ones(d, DType::F32, &Device::Cpu).unwrap(),
                ffn_gate: lin(f, d),
                ffn_up: lin(f, d),
                ffn_down: lin(d, f),
            })
            .collect();
        let embd = rand(&mut rng, &[c.vocab_size, d], 1.0);
        let mut t = Transformer {
            output: LinearWeight::dense(embd.clone(), None),
            token_embd: embd,
            blocks,
            output_norm: Tensor::ones(d, DType::F32, &Device::Cpu).unwrap(),
            rope_inv_freq: c.rope_inv_freq(),
            kernels: Kernels::Fast,
            config: c,
        };
        if let Some(b) = base {
            // base + 0.1 · random
            for p in params(b) {
                let bt = get(b, p).unwrap();
                let noise = rand(&mut rng, bt.dims(), 0.1);
                set(&mut t, p, (bt + noise).unwrap());
            }
        }
        t
    }

    fn max_diff(a: &Transformer, b: &Transformer) -> f32 {
        params(a)
            .into_iter()
            .map(|p| {
                let (x, y) = (
                    values(&get(a, p).unwrap()).unwrap(),
                    values(&get(b, p).unwrap()).unwrap(),
                );
                x.iter()
                    .zip(&y)
                    .map(|(u, v)| (u - v).abs())
                    .fold(0.0, f32::max)
            })
            .fold(0.0, f32::max)
    }

    #[test]
    fn merging_one_model_returns_it() {
        let base = model(None, 0);
        let ft = model(Some(&base), 1);
        for method in [MergeMethod::Opcm, MergeMethod::Average] {
            let mut m = Merger::new(method, 0.5);
            m.add(&base, &ft).unwrap();
            assert_eq!(
                max_diff(&m.merged(&base).unwrap().unwrap(), &ft),
                0.0,
                "{method:?}"
            );
        }
        let mut m = Merger::new(MergeMethod::TaskArithmetic, 1.0);
        m.add(&base, &ft).unwrap();
        assert!(max_diff(&m.merged(&base).unwrap().unwrap(), &ft) < 1e-6);
    }

    #[test]
    fn a_task_vector_identical_to_the_merged_one_is_fully_removed() {
        let mut rng = Rng::new(5);
        let (rows, cols) = (12, 7);
        let p: Vec<f64> = values(&rand(&mut rng, &[rows, cols], 1.0))
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        for alpha in [0.0, 0.5, 1.0] {
            let cleaned = opcm_project(&p, &p, rows, cols, alpha).unwrap();
            let rest = cleaned.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!(rest < 1e-9, "alpha {alpha}: {rest}");
        }
        // An unrelated task vector keeps most of itself at α = 0 (only the diagonal goes).
        let t: Vec<f64> = values(&rand(&mut rng, &[rows, cols], 1.0))
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        let cleaned = opcm_project(&p, &t, rows, cols, 0.0).unwrap();
        let keep =
            cleaned.iter().map(|v| v * v).sum::<f64>() / t.iter().map(|v| v * v).sum::<f64>();
        assert!(keep > 0.5 && keep < 1.0, "{keep}");
        // The cleaned vector has no component on any (u_i, v_i) and none in the top block.
        let svd = thin_svd(&p, rows, cols).unwrap();
        let proj = |i: usize, j: usize| -> f64 {
            (0..rows)
                .flat_map(|r| (0..cols).map(move |c| (r, c)))
                .map(|(r, c)| svd.u[r * svd.k + i] * cleaned[r * cols + c] * svd.v[c * svd.k + j])
                .sum()
        };
        for i in 0..svd.k {
            assert!(proj(i, i).abs() < 1e-9);
        }
    }

    #[test]
    fn the_task_vector_gram_holds_norms_and_inner_products() {
        let base = model(None, 0);
        let (a, b) = (model(Some(&base), 1), model(Some(&base), 2));
        let g = task_vector_gram(&base, &[&a, &b, &a]).unwrap();
        let tau = |m: &Transformer| -> Vec<f64> {
            params(&base)
                .into_iter()
                .flat_map(|p| {
                    let (x, y) = (
                        values(&get(m, p).unwrap()).unwrap(),
                        values(&get(&base, p).unwrap()).unwrap(),
                    );
                    x.into_iter()
                        .zip(y)
                        .map(|(x, y)| f64::from(x - y))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let (ta, tb) = (tau(&a), tau(&b));
        let dot = |u: &[f64], v: &[f64]| u.iter().zip(v).map(|(x, y)| x * y).sum::<f64>();
        for (got, want) in [
            (g[0][0], dot(&ta, &ta)),
            (g[0][1], dot(&ta, &tb)),
            (g[1][1], dot(&tb, &tb)),
        ] {
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        }
        assert_eq!(g[1][0], g[0][1]);
        assert_eq!(g[0][2], g[0][0]);
    }

    #[test]
    fn opcm_reports_the_share_of_the_task_vector_it_projected_out() {
        let base = model(None, 0);
        let ft = model(Some(&base), 1);
        let mut m = Merger::new(MergeMethod::Opcm, 0.5);
        assert_eq!(m.add(&base, &ft).unwrap().projected_out, None);
        // The same model again: each linear's task vector lies in the merged one's span and is
        // removed whole; norms and the embedding are added as they are.
        let info = m.add(&base, &ft).unwrap();
        let (mut linear, mut all) = (0.0, 0.0);
        for p in params(&base) {
            let (x, b) = (
                values(&get(&ft, p).unwrap()).unwrap(),
                values(&get(&base, p).unwrap()).unwrap(),
            );
            let sq: f64 = x
                .iter()
                .zip(&b)
                .map(|(x, b)| f64::from(x - b).powi(2))
                .sum();
            all += sq;
            if matches!(p, Param::Linear(_) | Param::Output) {
                linear += sq;
            }
        }
        let want = (linear / all).sqrt();
        let got = info.projected_out.unwrap();
        assert!(want > 0.5 && (got - want).abs() < 1e-6, "{got} vs {want}");
        let mut ta = Merger::new(MergeMethod::TaskArithmetic, 0.5);
        ta.add(&base, &ft).unwrap();
        assert_eq!(ta.add(&base, &ft).unwrap().projected_out, None);
    }

    #[test]
    fn the_merged_norm_is_the_running_mean_of_task_vector_norms() {
        let base = model(None, 0);
        let mut m = Merger::new(MergeMethod::Opcm, 0.5);
        let mut norms = Vec::new();
        for seed in 1..=4 {
            let ft = model(Some(&base), seed);
            norms.push(task_vector_gram(&base, &[&ft]).unwrap()[0][0].sqrt());
            let info = m.add(&base, &ft).unwrap();
            let mean = norms.iter().sum::<f64>() / norms.len() as f64;
            assert!((info.merged_norm - mean).abs() < 1e-4 * mean, "step {seed}");
            // Nearly orthogonal task vectors: λ_t grows like √t.
            if seed > 1 {
                assert!(info.lambda > 1.0 && info.lambda < (seed as f64).sqrt() + 0.2);
            }
        }
    }

    #[test]
    fn average_and_task_arithmetic_follow_their_formulas() {
        let base = model(None, 0);
        let fts: Vec<Transformer> = (1..=3).map(|s| model(Some(&base), s)).collect();
        let mut avg = Merger::new(MergeMethod::Average, 0.5);
        let mut ta = Merger::new(MergeMethod::TaskArithmetic, 0.3);
        for ft in &fts {
            avg.add(&base, ft).unwrap();
            ta.add(&base, ft).unwrap();
        }
        let p = Param::Linear(LinearId::new(1, LinearKind::FfnDown));
        let b = values(&get(&base, p).unwrap()).unwrap();
        let xs: Vec<Vec<f32>> = fts
            .iter()
            .map(|f| values(&get(f, p).unwrap()).unwrap())
            .collect();
        let a = values(&get(&avg.merged(&base).unwrap().unwrap(), p).unwrap()).unwrap();
        let t = values(&get(&ta.merged(&base).unwrap().unwrap(), p).unwrap()).unwrap();
        for (i, bi) in b.iter().enumerate() {
            let mean = xs.iter().map(|x| x[i]).sum::<f32>() / 3.0;
            let sum_tv: f32 = xs.iter().map(|x| x[i] - bi).sum();
            assert!((a[i] - mean).abs() < 1e-5);
            assert!((t[i] - (bi + 0.3 * sum_tv)).abs() < 1e-5);
        }
    }

    /// TIES, folded one model at a time, equals the batch method on all three task vectors at
    /// once: trim each to its largest `density` share, elect each entry's sign by the sum, and
    /// average the entries that agree (on every parameter, norms and embedding included).
    #[test]
    fn ties_equals_the_batch_method() {
        let base = model(None, 0);
        let fts: Vec<Transformer> = (1..=3).map(|s| model(Some(&base), s)).collect();
        let (density, lambda) = (0.3, 0.8);
        let mut ties = Merger::new(MergeMethod::Ties, lambda).with_density(density);
        for ft in &fts {
            ties.add(&base, ft).unwrap();
        }
        let merged = ties.merged(&base).unwrap().unwrap();
        for p in params(&base) {
            let b = values(&get(&base, p).unwrap()).unwrap();
            let taus: Vec<Vec<f32>> = fts
                .iter()
                .map(|f| {
                    let x = values(&get(f, p).unwrap()).unwrap();
                    let mut t: Vec<f32> = x.iter().zip(&b).map(|(x, b)| x - b).collect();
                    // Keep the ⌊density·n⌋ largest magnitudes (a full sort, unlike the
                    // merger's selection).
                    let mut mags: Vec<f32> = t.iter().map(|v| v.abs()).collect();
                    mags.sort_by(|a, b| b.total_cmp(a));
                    let keep = (density * t.len() as f64) as usize;
                    let cut = if keep == 0 {
                        f32::INFINITY
                    } else {
                        mags[keep - 1]
                    };
                    t.iter_mut()
                        .filter(|v| v.abs() < cut)
                        .for_each(|v| *v = 0.0);
                    t
                })
                .collect();
            let got = values(&get(&merged, p).unwrap()).unwrap();
            for i in 0..b.len() {
                let total: f32 = taus.iter().map(|t| t[i]).sum();
                let sign = if total >= 0.0 { 1.0 } else { -1.0 };
                let agree: Vec<f32> = taus
                    .iter()
                    .map(|t| t[i])
                    .filter(|v| *v != 0.0 && v.signum() == sign)
                    .collect();
                let mean = if agree.is_empty() {
                    0.0
                } else {
                    agree.iter().sum::<f32>() / agree.len() as f32
                };
                let want = b[i] + lambda as f32 * mean;
                assert!(
                    (got[i] - want).abs() < 1e-5,
                    "{p:?}[{i}]: {} vs {want}",
                    got[i]
                );
            }
        }
    }

    /// DARE keeps about `density` of each task vector, each survivor scaled by exactly
    /// `1/density`, with a mask fixed by the seed; at density 1 it is task arithmetic.
    #[test]
    fn dare_drops_and_rescales_by_its_seed() {
        let base = model(None, 0);
        let ft = model(Some(&base), 1);
        let p = Param::Linear(LinearId::new(0, LinearKind::FfnUp));
        let b = values(&get(&base, p).unwrap()).unwrap();
        let x = values(&get(&ft, p).unwrap()).unwrap();
        let run = |density: f64, seed: u64| {
            let mut m = Merger::new(MergeMethod::Dare, 1.0)
                .with_density(density)
                .with_seed(seed);
            m.add(&base, &ft).unwrap();
            values(&get(&m.merged(&base).unwrap().unwrap(), p).unwrap()).unwrap()
        };
        let d = run(0.4, 7);
        let mut kept = 0;
        for i in 0..b.len() {
            let (tau, got) = (x[i] - b[i], d[i] - b[i]);
            if got != 0.0 {
                kept += 1;
                assert!((got - tau / 0.4).abs() < 1e-5 * (1.0 + tau.abs()), "[{i}]");
            }
        }
        let share = kept as f64 / b.len() as f64;
        assert!((share - 0.4).abs() < 0.1, "kept {share}");
        assert_eq!(d, run(0.4, 7), "the same seed draws the same mask");
        assert_ne!(d, run(0.4, 8), "another seed draws another mask");
        let full = run(1.0, 7);
        for i in 0..b.len() {
            assert!((full[i] - x[i]).abs() < 1e-6);
        }
    }

    #[test]
    fn a_different_architecture_is_a_clear_error() {
        let base = model(None, 0);
        let mut other = model(Some(&base), 1);
        other.blocks.pop();
        other.config.num_layers = 1;
        let err = Merger::new(MergeMethod::Opcm, 0.5)
            .add(&base, &other)
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_layers is 1, the base has 2"), "{err}");
    }

    #[test]
    fn models_are_loaded_when_their_step_starts_and_dropped_before_the_next() {
        use crate::model::hashed::{HashMapping, HashedWeight, Hasher};
        use std::cell::RefCell;
        use std::sync::{Arc, Weak};

        let base = load_spec("zoo:base").unwrap();
        let events = RefCell::new(Vec::<String>::new());
        // Weak handles on a layer of every model handed out: a dead handle is a dropped model.
        let handed_out = RefCell::new(Vec::<Weak<HashedWeight>>::new());
        let alive = |h: &RefCell<Vec<Weak<HashedWeight>>>| {
            h.borrow().iter().filter(|w| w.strong_count() > 0).count()
        };
        let mut load = |spec: &str| -> anyhow::Result<Transformer> {
            assert_eq!(
                alive(&handed_out),
                0,
                "a previous model is still held at {spec}"
            );
            events.borrow_mut().push(format!("load {spec}"));
            let seed: u64 = spec.trim_start_matches("ft").parse()?;
            let mut t = base.transformer.clone();
            let mut rng = Rng::new(seed);
            for p in params(&base.transformer) {
                let b = get(&base.transformer, p)?;
                set(&mut t, p, (&b + rand(&mut rng, b.dims(), 0.01))?);
            }
            // One layer as an exact (c = 1, fold) hashed weight, to observe its lifetime.
            let id = LinearId::new(0, LinearKind::FfnDown);
            let w = values(&get(&t, Param::Linear(id))?)?;
            let hasher = Hasher::new(HashMapping::Fold, seed, w.len(), w.len());
            let z = crate::technique::rps::project(&w, &hasher);
            let (rows, cols) = t.blocks[0].ffn_down.shape();
            let hashed = Arc::new(HashedWeight {
                rows,
                cols,
                hasher,
                z,
            });
            handed_out.borrow_mut().push(Arc::downgrade(&hashed));
            t.blocks[0].ffn_down = LinearWeight::Hashed { hashed, bias: None };
            Ok(t)
        };
        let step = MergeStep {
            models: vec!["ft1".into(), "ft2".into(), "ft3".into()],
            method: MergeMethod::Average,
            alpha: 0.5,
            density: None,
        };
        let merged = apply_merge_with(
            &base,
            &step,
            0,
            &mut load,
            &mut |_, _, _| true,
            &mut |info, _| {
                assert_eq!(
                    alive(&handed_out),
                    0,
                    "step {} evaluates beside its model",
                    info.step
                );
                events
                    .borrow_mut()
                    .push(format!("step {} {}", info.step, info.model));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            events.into_inner(),
            [
                "load ft1",
                "step 1 ft1",
                "load ft2",
                "step 2 ft2",
                "load ft3",
                "step 3 ft3"
            ]
        );
        // The merge is a real average of three perturbed copies: close to the base, not equal.
        let d = max_diff(&merged.transformer, &base.transformer);
        assert!(d > 0.0 && d < 0.01, "{d}");

        // Cancelling after the first step never loads the second model; a failing load names it.
        let mut loads = 0;
        let err = apply_merge_with(
            &base,
            &step,
            0,
            &mut |_| {
                loads += 1;
                Ok(base.transformer.clone())
            },
            &mut |_, done, _| done < 1,
            &mut |_, _| Ok(()),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("cancelled") && loads == 1,
            "{err} {loads}"
        );
        let err = apply_merge_with(
            &base,
            &step,
            0,
            &mut |spec| anyhow::bail!("no such model: {spec}"),
            &mut |_, _, _| true,
            &mut |_, _| Ok(()),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("no such model: ft1"), "{err:#}");
    }

    #[test]
    fn the_merge_state_stays_fixed_whatever_the_number_of_models() {
        let base = model(None, 0);
        let one_model: usize = params(&base)
            .into_iter()
            .map(|p| get(&base, p).unwrap().elem_count() * 4)
            .sum();
        for method in [
            MergeMethod::Opcm,
            MergeMethod::TaskArithmetic,
            MergeMethod::Average,
            MergeMethod::Ties,
            MergeMethod::Dare,
        ] {
            let mut m = Merger::new(method, 0.5).with_density(0.5);
            // TIES also holds the sums and counts of each sign: four more models' worth.
            let held = if method == MergeMethod::Ties { 5 } else { 1 };
            for seed in 1..=4 {
                m.add(&base, &model(Some(&base), seed)).unwrap();
                assert_eq!(m.state_bytes(), held * one_model, "{method:?} step {seed}");
            }
        }
    }
}
