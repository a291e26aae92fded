//! Continual model merging (spec C): fine-tuned variants of one base, folded into a single
//! merged model one at a time, keeping only the base, the running merge and the incoming model.
//!
//! Methods: OPCM (orthogonal projection of each new task vector away from the merged one's
//! rank-one directions and dominant subspace, then adaptive rescaling to the running mean of
//! task-vector norms; FusionBench's `OPCMForCLIP` maths, with the thin-SVD form of spec C.3),
//! continual task arithmetic (`θ₀ + λ Σ τ_i`), and the running average of the models.
//! This module owns the maths and the model loop; evaluation per step is the caller's, through
//! the `on_step` callback.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::model::{LinearId, LinearKind, LinearWeight, Model, Transformer, load_spec};
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
}

/// Called after every step with its summary and the merged model so far.
pub type OnStep<'a> = dyn FnMut(&MergeStepInfo, &Model) -> anyhow::Result<()> + 'a;

/// One parameter of a Llama transformer, addressed so it can be read and replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    Embedding,
    OutputNorm,
    /// The LM head when it is not tied to the embedding.
    Output,
    AttnNorm(usize),
    FfnNorm(usize),
    /// A linear's weight matrix: the only kind OPCM projects.
    Linear(LinearId),
    Bias(LinearId),
}

fn params(t: &Transformer) -> Vec<Param> {
    let mut out = vec![Param::Embedding, Param::OutputNorm];
    if !t.config.tie_word_embeddings {
        out.push(Param::Output);
    }
    for (b, block) in t.blocks.iter().enumerate() {
        out.push(Param::AttnNorm(b));
        out.push(Param::FfnNorm(b));
        for kind in LinearKind::ALL {
            let id = LinearId::new(b, kind);
            out.push(Param::Linear(id));
            if block.linear(kind).bias().is_some() {
                out.push(Param::Bias(id));
            }
        }
    }
    out
}

fn get(t: &Transformer, p: Param) -> anyhow::Result<Tensor> {
    let linear = |id: LinearId| -> anyhow::Result<&LinearWeight> {
        t.linear(id)
            .ok_or_else(|| anyhow::anyhow!("{id}: no such layer"))
    };
    Ok(match p {
        Param::Embedding => t.token_embd.clone(),
        Param::OutputNorm => t.output_norm.clone(),
        Param::Output => t.output.to_dense()?,
        Param::AttnNorm(b) => t.blocks[b].attn_norm.clone(),
        Param::FfnNorm(b) => t.blocks[b].ffn_norm.clone(),
        Param::Linear(id) => linear(id)?.to_dense()?,
        Param::Bias(id) => linear(id)?
            .bias()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{id}: no bias"))?,
    })
}

fn set(t: &mut Transformer, p: Param, v: Tensor) {
    match p {
        Param::Embedding => t.token_embd = v,
        Param::OutputNorm => t.output_norm = v,
        Param::Output => t.output = LinearWeight::dense(v, None),
        Param::AttnNorm(b) => t.blocks[b].attn_norm = v,
        Param::FfnNorm(b) => t.blocks[b].ffn_norm = v,
        Param::Linear(id) => {
            let w = t.blocks[id.block].linear_mut(id.kind);
            *w = LinearWeight::dense(v, w.bias().cloned());
        }
        Param::Bias(id) => {
            let w = t.blocks[id.block].linear_mut(id.kind);
            if let Ok(weight) = w.to_dense() {
                *w = LinearWeight::dense(weight, Some(v));
            }
        }
    }
    if t.config.tie_word_embeddings && p == Param::Embedding {
        t.output = LinearWeight::dense(t.token_embd.clone(), None);
    }
}

fn values(t: &Tensor) -> anyhow::Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

fn norm_sq(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum()
}

/// Checks that `model` can be merged with `base`: same configuration and parameter shapes.
pub fn check_same_architecture(base: &Transformer, model: &Transformer) -> anyhow::Result<()> {
    let (a, b) = (&base.config, &model.config);
    let fields = [
        ("vocab_size", a.vocab_size, b.vocab_size),
        ("hidden_size", a.hidden_size, b.hidden_size),
        (
            "intermediate_size",
            a.intermediate_size,
            b.intermediate_size,
        ),
        ("num_layers", a.num_layers, b.num_layers),
        ("num_heads", a.num_heads, b.num_heads),
        ("num_kv_heads", a.num_kv_heads, b.num_kv_heads),
        ("head_dim", a.head_dim, b.head_dim),
        (
            "tie_word_embeddings",
            usize::from(a.tie_word_embeddings),
            usize::from(b.tie_word_embeddings),
        ),
    ];
    for (name, x, y) in fields {
        anyhow::ensure!(
            x == y,
            "not the base's architecture: {name} is {y}, the base has {x}"
        );
    }
    anyhow::ensure!(
        a.architecture == b.architecture && base.blocks.len() == model.blocks.len(),
        "not the base's architecture: {:?} with {} blocks, the base is {:?} with {}",
        b.architecture,
        model.blocks.len(),
        a.architecture,
        base.blocks.len()
    );
    for p in params(base) {
        let (x, y) = (get(base, p)?, get(model, p));
        let Ok(y) = y else {
            anyhow::bail!("not the base's architecture: {p:?} is missing");
        };
        anyhow::ensure!(
            x.dims() == y.dims(),
            "not the base's architecture: {p:?} has shape {:?}, the base has {:?}",
            y.dims(),
            x.dims()
        );
    }
    Ok(())
}

/// OPCM's projection of a new task vector `t` (row-major `rows × cols`) against the merged one
/// `p`: with `p = U Σ Vᵀ` (thin) and `r` the leading singular values whose share of `Σσ` is at
/// most `alpha`, removes `t`'s block on `span(U_r) ⊗ span(V_r)` and its component along every
/// `u_i v_iᵀ` (spec C.3).
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

/// The running merge: the state carried from one step to the next (constant in the number of
/// models: the merged transformer and a few scalars).
pub struct Merger {
    method: MergeMethod,
    alpha: f64,
    merged: Option<Transformer>,
    steps: usize,
    norm_sum: f64,
    lambda_prev: f64,
}

impl Merger {
    pub fn new(method: MergeMethod, alpha: f64) -> Self {
        Self {
            method,
            alpha,
            merged: None,
            steps: 0,
            norm_sum: 0.0,
            lambda_prev: 1.0,
        }
    }

    /// The merged transformer so far (`None` before the first step).
    pub fn merged(&self) -> Option<&Transformer> {
        self.merged.as_ref()
    }

    /// Folds `model` into the merge and returns the step's summary (its `model` field empty).
    pub fn add(&mut self, base: &Transformer, model: Transformer) -> anyhow::Result<MergeStepInfo> {
        check_same_architecture(base, &model)?;
        self.steps += 1;
        let t = self.steps;
        let list = params(base);
        let mut tv_sq = 0.0;
        for &p in &list {
            let d: Vec<f32> = values(&get(&model, p)?)?
                .iter()
                .zip(values(&get(base, p)?)?)
                .map(|(x, b)| x - b)
                .collect();
            tv_sq += norm_sq(&d);
        }
        let tv_norm = tv_sq.sqrt();
        self.norm_sum += tv_norm;
        let lambda = match (self.method, self.merged.take()) {
            // The first model is the merge (OPCM, averaging); task arithmetic scales it.
            (MergeMethod::Opcm | MergeMethod::Average, None) => {
                self.merged = Some(model);
                1.0
            }
            (MergeMethod::TaskArithmetic, prev) => {
                let mut merged = prev.unwrap_or_else(|| base.clone());
                let l = self.alpha as f32;
                for &p in &list {
                    let (m, x, b) = (get(&merged, p)?, get(&model, p)?, get(base, p)?);
                    let new = combine(&[&m, &x, &b], |v| v[0] + l * (v[1] - v[2]))?;
                    set(&mut merged, p, new);
                }
                self.merged = Some(merged);
                self.alpha
            }
            (MergeMethod::Average, Some(mut merged)) => {
                let w = 1.0 / t as f32;
                for &p in &list {
                    let (m, x) = (get(&merged, p)?, get(&model, p)?);
                    let new = combine(&[&m, &x], |v| v[0] + w * (v[1] - v[0]))?;
                    set(&mut merged, p, new);
                }
                self.merged = Some(merged);
                t as f64
            }
            (MergeMethod::Opcm, Some(mut merged)) => {
                let n = self.opcm_step(base, &model, &mut merged, &list)?;
                self.merged = Some(merged);
                n
            }
        };
        let merged_norm = match &self.merged {
            Some(m) => task_vector_norm(base, m)?,
            None => 0.0,
        };
        Ok(MergeStepInfo {
            step: t,
            model: String::new(),
            task_vector_norm: tv_norm,
            merged_norm,
            lambda,
        })
    }

    /// One OPCM step (t ≥ 2) in place on `merged`; returns `λ_t`.
    fn opcm_step(
        &mut self,
        base: &Transformer,
        model: &Transformer,
        merged: &mut Transformer,
        list: &[Param],
    ) -> anyhow::Result<f64> {
        let avg = self.norm_sum / self.steps as f64;
        let lp = self.lambda_prev;
        let alpha = self.alpha;
        let mut sum_sq = 0.0;
        // Unscaled `θ₀ + λ_prev·P + T'` per parameter, a block's linears in parallel, so the
        // transient memory is one block's worth.
        let groups: Vec<Vec<Param>> = {
            let mut g: Vec<Vec<Param>> = Vec::new();
            let mut cur_block = None;
            for &p in list {
                let blk = match p {
                    Param::Linear(id) | Param::Bias(id) => Some(id.block),
                    Param::AttnNorm(b) | Param::FfnNorm(b) => Some(b),
                    _ => None,
                };
                if blk.is_none() || blk != cur_block || g.is_empty() {
                    g.push(Vec::new());
                }
                cur_block = blk;
                if let Some(last) = g.last_mut() {
                    last.push(p);
                }
            }
            g
        };
        for group in groups {
            let out: Vec<anyhow::Result<(Param, Tensor, f64)>> = group
                .par_iter()
                .map(|&p| {
                    let (m, x, b) = (get(merged, p)?, get(model, p)?, get(base, p)?);
                    let dims = b.dims().to_vec();
                    let (mv, xv, bv) = (values(&m)?, values(&x)?, values(&b)?);
                    let pv: Vec<f64> = mv.iter().zip(&bv).map(|(a, c)| f64::from(a - c)).collect();
                    let tv: Vec<f64> = xv.iter().zip(&bv).map(|(a, c)| f64::from(a - c)).collect();
                    let cleaned = match p {
                        Param::Linear(_) => opcm_project(&pv, &tv, dims[0], dims[1], alpha)?,
                        _ => tv,
                    };
                    let mut sq = 0.0;
                    let new: Vec<f32> = bv
                        .iter()
                        .zip(pv.iter().zip(&cleaned))
                        .map(|(b, (p, c))| {
                            let d = lp * p + c;
                            sq += d * d;
                            b + d as f32
                        })
                        .collect();
                    Ok((p, Tensor::from_vec(new, dims, &Device::Cpu)?, sq))
                })
                .collect();
            for r in out {
                let (p, t, sq) = r?;
                set(merged, p, t);
                sum_sq += sq;
            }
        }
        let n = sum_sq.sqrt();
        if n == 0.0 || avg == 0.0 {
            // Nothing to rescale: every task vector so far is zero.
            self.lambda_prev = 1.0;
            return Ok(1.0);
        }
        let scale = (avg / n) as f32;
        for &p in list {
            let (m, b) = (get(merged, p)?, get(base, p)?);
            let new = combine(&[&m, &b], |v| v[1] + (v[0] - v[1]) * scale)?;
            set(merged, p, new);
        }
        self.lambda_prev = n / avg;
        Ok(self.lambda_prev)
    }
}

/// Elementwise `f` over same-shaped tensors, in f32.
fn combine(ts: &[&Tensor], f: impl Fn(&[f32]) -> f32) -> anyhow::Result<Tensor> {
    let dims = ts[0].dims().to_vec();
    let vs: Vec<Vec<f32>> = ts.iter().map(|t| values(t)).collect::<Result<_, _>>()?;
    let mut buf = vec![0f32; vs.len()];
    let out: Vec<f32> = (0..vs[0].len())
        .map(|i| {
            for (b, v) in buf.iter_mut().zip(&vs) {
                *b = v[i];
            }
            f(&buf)
        })
        .collect();
    Ok(Tensor::from_vec(out, dims, &Device::Cpu)?)
}

/// `‖θ − θ₀‖` over all parameters (tied embeddings counted once).
pub fn task_vector_norm(base: &Transformer, model: &Transformer) -> anyhow::Result<f64> {
    let mut sq = 0.0;
    for p in params(base) {
        let (x, b) = (values(&get(model, p)?)?, values(&get(base, p)?)?);
        sq += x
            .iter()
            .zip(&b)
            .map(|(a, c)| f64::from(a - c).powi(2))
            .sum::<f64>();
    }
    Ok(sq.sqrt())
}

/// Merges `step.models` into `base`, loading one model at a time and dropping it once folded
/// in: at any moment the base, the merge and one incoming model are held. `on_step` sees the
/// merge after every step.
pub fn apply_merge(
    base: &Model,
    step: &MergeStep,
    progress: &mut Progress<'_>,
    on_step: &mut OnStep<'_>,
) -> anyhow::Result<Model> {
    anyhow::ensure!(!step.models.is_empty(), "merge.models is empty");
    anyhow::ensure!(
        step.alpha.is_finite() && step.alpha >= 0.0,
        "merge.alpha = {} must be a finite non-negative number",
        step.alpha
    );
    let mut merger = Merger::new(step.method, step.alpha);
    let total = step.models.len();
    for (i, spec) in step.models.iter().enumerate() {
        if !progress(&format!("merging {spec}"), i, total) {
            anyhow::bail!("cancelled");
        }
        let model = load_spec(spec).map_err(|e| anyhow::anyhow!("merge: {e:#}"))?;
        let mut info = merger
            .add(&base.transformer, model.transformer)
            .map_err(|e| anyhow::anyhow!("merge: {spec}: {e:#}"))?;
        info.model.clone_from(spec);
        let Some(merged) = merger.merged() else {
            anyhow::bail!("merge: no merged model after step {}", i + 1);
        };
        let current = Model {
            transformer: merged.clone(),
            ..base.clone()
        };
        on_step(&info, &current)?;
    }
    let Some(merged) = merger.merged else {
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
    use crate::model::LlamaConfig;
    use crate::model::config::Architecture;
    use crate::model::llama::{Block, Kernels};
    use crate::zoo::corpus::Rng;

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
            m.add(&base, ft.clone()).unwrap();
            assert_eq!(max_diff(m.merged().unwrap(), &ft), 0.0, "{method:?}");
        }
        let mut m = Merger::new(MergeMethod::TaskArithmetic, 1.0);
        m.add(&base, ft.clone()).unwrap();
        assert!(max_diff(m.merged().unwrap(), &ft) < 1e-6);
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
    fn the_merged_norm_is_the_running_mean_of_task_vector_norms() {
        let base = model(None, 0);
        let mut m = Merger::new(MergeMethod::Opcm, 0.5);
        let mut norms = Vec::new();
        for seed in 1..=4 {
            let ft = model(Some(&base), seed);
            norms.push(task_vector_norm(&base, &ft).unwrap());
            let info = m.add(&base, ft).unwrap();
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
            avg.add(&base, ft.clone()).unwrap();
            ta.add(&base, ft.clone()).unwrap();
        }
        let p = Param::Linear(LinearId::new(1, LinearKind::FfnDown));
        let b = values(&get(&base, p).unwrap()).unwrap();
        let xs: Vec<Vec<f32>> = fts
            .iter()
            .map(|f| values(&get(f, p).unwrap()).unwrap())
            .collect();
        let a = values(&get(avg.merged().unwrap(), p).unwrap()).unwrap();
        let t = values(&get(ta.merged().unwrap(), p).unwrap()).unwrap();
        for (i, bi) in b.iter().enumerate() {
            let mean = xs.iter().map(|x| x[i]).sum::<f32>() / 3.0;
            let sum_tv: f32 = xs.iter().map(|x| x[i] - bi).sum();
            assert!((a[i] - mean).abs() < 1e-5);
            assert!((t[i] - (bi + 0.3 * sum_tv)).abs() < 1e-5);
        }
    }

    #[test]
    fn a_different_architecture_is_a_clear_error() {
        let base = model(None, 0);
        let mut other = model(Some(&base), 1);
        other.blocks.pop();
        other.config.num_layers = 1;
        let err = Merger::new(MergeMethod::Opcm, 0.5)
            .add(&base, other)
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_layers is 1, the base has 2"), "{err}");
    }
}
