//! Layer flattening (FlattenGPT) and the block-dropping baseline (ShortGPT); see
//! `docs/techniques.md`, "Layer flattening (FlattenGPT) and block dropping".
//!
//! Owns: the cosine similarity of block inputs on calibration data, the choice of which blocks
//! to merge (greedy, first-to-last similarity of the merged span) or drop (highest
//! input/output similarity), the flatten operator for our Llama blocks (norm gains folded into
//! the projections, heads and MLP channels concatenated so the group runs in parallel on one
//! input), and the prune back to the original width (whole KV groups by the norm of their heads'
//! residual contribution; MLP channels by ridge leverage with Nyström compensation into
//! down_proj). The result is a standard model with fewer blocks; `config.num_layers` follows.
//!
//! It must not touch per-linear techniques: those run after it, on the resulting model.

use candle_core::{DType, Device, Tensor};
use faer::linalg::solvers::{DenseSolveCore, Llt, LltError, Solve};
use faer::{Mat, MatMut, Side};
use rayon::prelude::*;

use crate::calib::calibration_ids;
use crate::model::{Block, ForwardHook, LinearId, LinearKind, LinearWeight, Model, Transformer};
use crate::technique::recipe::{ChannelScore, FlattenMethod, FlattenStep, GroupPick, HeadScore};
use crate::technique::{CalibOptions, Progress};

/// Calibration windows run through a block at once while gathering statistics (bounds the
/// attention scores' memory on wide blocks).
const SAMPLES_PER_BATCH: usize = 4;

/// Ridge intensity as a multiple of the mean eigenvalue of `C = ψᵀψ` (FlattenGPT's "10 × the
/// mean singular value"; `docs/techniques.md`, Flatten §4), unless the recipe sets `ridge`.
const RIDGE_FACTOR: f64 = 10.0;

/// Removes blocks from `model` as `step` says (flatten groups, or drop blocks); returns how
/// many blocks were removed.
pub fn apply_flatten(
    model: &mut Model,
    step: &FlattenStep,
    calib_tokens: &[u32],
    calib: CalibOptions,
    seed: u64,
    progress: &mut Progress<'_>,
) -> anyhow::Result<usize> {
    let t = &mut model.transformer;
    let n_blocks = t.blocks.len();
    anyhow::ensure!(
        step.pick == GroupPick::default()
            || (step.auto.is_some() && step.method == FlattenMethod::Flatten),
        "flatten: `pick` scores the groups `auto` flattens; it does not apply to explicit pairs or to drop"
    );
    let groups = match (step.auto, step.pairs.is_empty()) {
        (Some(_), false) => anyhow::bail!("flatten: set either `pairs` or `auto`, not both"),
        (None, true) => anyhow::bail!("flatten: set `pairs = [[i, i + 1], …]` or `auto = N`"),
        (None, false) => explicit_groups(&step.pairs, n_blocks, step.method)?,
        (Some(n), true) => {
            anyhow::ensure!(
                n >= 1 && n < n_blocks,
                "flatten: auto = {n} must remove between 1 and {} of the model's {n_blocks} blocks",
                n_blocks - 1
            );
            if !progress("block similarity", 0, 1) {
                anyhow::bail!("cancelled");
            }
            let ids = calibration_ids(calib_tokens, calib.samples, calib.seq_len, seed)?;
            let s = input_similarity(t, &ids)?;
            match step.method {
                FlattenMethod::Flatten => greedy_groups(&s, n_blocks, n, step.pick),
                FlattenMethod::Drop => drop_choice(&s, n_blocks, n)
                    .into_iter()
                    .map(|b| (b, b + 1))
                    .collect(),
            }
        }
    };
    tracing::info!("{:?}: blocks {:?} (half-open ranges)", step.method, groups);
    match step.method {
        FlattenMethod::Drop => {
            // A pair (i, i + 1) drops block i: the pair's similarity is block i's input
            // against its output (ShortGPT's criterion).
            let dropped: Vec<usize> = groups.iter().map(|(a, _)| *a).collect();
            let mut kept = Vec::with_capacity(n_blocks - dropped.len());
            for (i, b) in std::mem::take(&mut t.blocks).into_iter().enumerate() {
                if !dropped.contains(&i) {
                    kept.push(b);
                }
            }
            t.blocks = kept;
        }
        FlattenMethod::Flatten => {
            let ids = calibration_ids(calib_tokens, calib.samples, calib.seq_len, seed)?;
            let ridge = step.ridge.unwrap_or(RIDGE_FACTOR);
            anyhow::ensure!(
                ridge.is_finite() && ridge > 0.0,
                "flatten: ridge = {ridge} must be a positive number"
            );
            let prune = PruneBack {
                ridge,
                channels: step.channels,
                heads: step.heads,
                refit_heads: step.refit_heads,
            };
            flatten_groups(t, &groups, &ids, prune, progress)?;
        }
    }
    t.config.num_layers = t.blocks.len();
    Ok(n_blocks - t.blocks.len())
}

/// Explicit pairs as half-open groups, checked: adjacent, in range, disjoint. Flattening
/// `[i, i + 1]` replaces `(i, i + 2)`; dropping it removes block `i` alone, `(i, i + 1)`, so
/// the pairs of two neighbouring dropped blocks may share a block.
fn explicit_groups(
    pairs: &[[usize; 2]],
    n_blocks: usize,
    method: FlattenMethod,
) -> anyhow::Result<Vec<(usize, usize)>> {
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for &[a, b] in pairs {
        anyhow::ensure!(
            b == a + 1,
            "flatten: pair [{a}, {b}] is not two adjacent blocks"
        );
        anyhow::ensure!(
            b < n_blocks,
            "flatten: pair [{a}, {b}] names block {b}, but the model has {n_blocks} blocks"
        );
        groups.push(match method {
            FlattenMethod::Flatten => (a, b + 1),
            FlattenMethod::Drop => (a, b),
        });
    }
    groups.sort_unstable();
    for w in groups.windows(2) {
        anyhow::ensure!(
            w[0].1 <= w[1].0,
            "flatten: pairs [{}, {}] and [{}, {}] overlap",
            w[0].0,
            w[0].0 + 1,
            w[1].0,
            w[1].0 + 1
        );
    }
    anyhow::ensure!(
        groups.len() < n_blocks,
        "flatten: {} pairs would leave no block",
        groups.len()
    );
    Ok(groups)
}

/// `S[i][j]`: mean over calibration tokens of the cosine similarity between the residual
/// stream entering block `i` and entering block `j` (`j = L` is the last block's output), for
/// all `0 ≤ i, j ≤ L`, computed one window at a time so only one window's states are held.
pub fn input_similarity(t: &Transformer, ids: &Tensor) -> anyhow::Result<Vec<Vec<f64>>> {
    let (samples, seq) = ids.dims2()?;
    let states = t.blocks.len() + 1;
    let mut s = vec![vec![0.0f64; states]; states];
    for w in 0..samples {
        let mut h = t.embed(&ids.narrow(0, w, 1)?)?;
        let mut normed = Vec::with_capacity(states);
        for b in 0..t.blocks.len() {
            normed.push(unit_rows(&h)?);
            h = t.run_block(b, &h, 1, seq, &mut crate::model::NoHook)?;
        }
        normed.push(unit_rows(&h)?);
        // [seq, states, d] × [seq, d, states]: every pair's per-token cosine in one product.
        let stacked = Tensor::stack(&normed, 1)?;
        let gram = stacked.matmul(&stacked.transpose(1, 2)?.contiguous()?)?;
        let mean = gram.mean(0)?.to_vec2::<f32>()?;
        for (i, row) in mean.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                s[i][j] += f64::from(*v) / samples as f64;
            }
        }
    }
    Ok(s)
}

/// Rows scaled to unit length (zero rows stay zero).
fn unit_rows(h: &Tensor) -> candle_core::Result<Tensor> {
    let norm = h.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    h.broadcast_div(&norm)
}

/// FlattenGPT's greedy merging: start from single blocks; `merges` times, merge the adjacent
/// pair of groups `[a₁..b₁] [b₁+1..b₂]` with the highest `S[a₁][b₂]` (input of the union's
/// first block against input of its last; ties to the lowest index), or with `GroupPick::Span`
/// the highest `S[a₁][b₂ + 1]` (against the last block's output). Returns half-open groups of
/// two or more blocks, in depth order.
pub fn greedy_groups(
    s: &[Vec<f64>],
    n_blocks: usize,
    merges: usize,
    pick: GroupPick,
) -> Vec<(usize, usize)> {
    let past_last = match pick {
        GroupPick::Inputs => 0,
        GroupPick::Span => 1,
    };
    let mut groups: Vec<(usize, usize)> = (0..n_blocks).map(|b| (b, b + 1)).collect();
    for _ in 0..merges {
        let mut best: Option<(usize, f64)> = None;
        for g in 0..groups.len().saturating_sub(1) {
            let score = s[groups[g].0][groups[g + 1].1 - 1 + past_last];
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((g, score));
            }
        }
        let Some((g, _)) = best else { break };
        groups[g].1 = groups[g + 1].1;
        groups.remove(g + 1);
    }
    groups.into_iter().filter(|(a, b)| b - a > 1).collect()
}

/// ShortGPT: the `n` blocks whose input and output are most similar (`S[ℓ][ℓ + 1]`; ties to
/// the lowest index), in depth order.
pub fn drop_choice(s: &[Vec<f64>], n_blocks: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n_blocks).collect();
    order.sort_by(|&a, &b| s[b][b + 1].total_cmp(&s[a][a + 1]).then(a.cmp(&b)));
    let mut chosen: Vec<usize> = order.into_iter().take(n).collect();
    chosen.sort_unstable();
    chosen
}

fn dense(w: &LinearWeight) -> candle_core::Result<Tensor> {
    w.to_dense()
}

/// Concatenates optional biases; `None` unless every block has one.
fn cat_bias(bs: &[Option<&Tensor>]) -> candle_core::Result<Option<Tensor>> {
    if bs.iter().any(Option::is_none) {
        return Ok(None);
    }
    let v: Vec<&Tensor> = bs.iter().filter_map(|b| *b).collect();
    Tensor::cat(&v, 0).map(Some)
}

/// Sums optional output biases (the parallel branches add their outputs).
fn sum_bias(bs: &[Option<&Tensor>]) -> candle_core::Result<Option<Tensor>> {
    let mut acc: Option<Tensor> = None;
    for b in bs.iter().flatten() {
        acc = Some(match acc {
            Some(a) => (a + *b)?,
            None => (*b).clone(),
        });
    }
    Ok(acc)
}

/// The flatten operator: `blocks` (consecutive, same shapes) as one wide block that runs them
/// in parallel on the same input. Norm gains are folded into q/k/v (γ₁) and gate/up (γ₂), the
/// wide block's norms are 1; heads (and KV heads) and MLP channels are concatenated in block
/// order, o_proj and down_proj side by side. One block alone is just the gain folding.
pub fn flatten_blocks(blocks: &[Block]) -> candle_core::Result<Block> {
    let Some(first) = blocks.first() else {
        candle_core::bail!("flatten: no blocks");
    };
    let d = first.attn_norm.elem_count();
    let fold = |w: &LinearWeight, g: &Tensor| dense(w)?.broadcast_mul(&g.reshape((1, d))?);
    let rows = |kind: LinearKind, norm: fn(&Block) -> &Tensor| -> candle_core::Result<_> {
        let ws = blocks
            .iter()
            .map(|b| fold(b.linear(kind), norm(b)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let bias = cat_bias(
            &blocks
                .iter()
                .map(|b| b.linear(kind).bias())
                .collect::<Vec<_>>(),
        )?;
        Ok(LinearWeight::dense(Tensor::cat(&ws, 0)?, bias))
    };
    let cols = |kind: LinearKind| -> candle_core::Result<_> {
        let ws = blocks
            .iter()
            .map(|b| dense(b.linear(kind)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let bias = sum_bias(
            &blocks
                .iter()
                .map(|b| b.linear(kind).bias())
                .collect::<Vec<_>>(),
        )?;
        Ok(LinearWeight::dense(Tensor::cat(&ws, 1)?, bias))
    };
    fn attn(b: &Block) -> &Tensor {
        &b.attn_norm
    }
    fn ffn(b: &Block) -> &Tensor {
        &b.ffn_norm
    }
    Ok(Block {
        attn_norm: Tensor::ones(d, DType::F32, &Device::Cpu)?,
        attn_q: rows(LinearKind::AttnQ, attn)?,
        attn_k: rows(LinearKind::AttnK, attn)?,
        attn_v: rows(LinearKind::AttnV, attn)?,
        attn_output: cols(LinearKind::AttnOutput)?,
        ffn_norm: Tensor::ones(d, DType::F32, &Device::Cpu)?,
        ffn_gate: rows(LinearKind::FfnGate, ffn)?,
        ffn_up: rows(LinearKind::FfnUp, ffn)?,
        ffn_down: cols(LinearKind::FfnDown)?,
    })
}

/// Calibration statistics of a wide block: each head's summed residual contribution
/// `Σ_t ‖a_{i,t} W_{O,i}ᵀ‖₂`, `C = ψᵀψ` of the MLP channels (down_proj's input), and when the
/// heads are refit or ranked by leverage, `aᵀa` of the heads' outputs (o_proj's input).
struct WideStats {
    heads: usize,
    head_dim: usize,
    /// o_proj as `[heads, head_dim, hidden]`.
    w_o: Tensor,
    head_score: Vec<f64>,
    head_gram: Option<Vec<f64>>,
    channels: usize,
    c: Vec<f64>,
    tokens: usize,
}

/// Adds `xᵀx` of a `[tokens, n]` activation to a row-major `n × n` sum.
fn add_gram(acc: &mut [f64], x: &Tensor) -> candle_core::Result<()> {
    let gram = x.t()?.matmul(x)?.flatten_all()?.to_vec1::<f32>()?;
    for (a, g) in acc.iter_mut().zip(gram) {
        *a += f64::from(g);
    }
    Ok(())
}

impl ForwardHook for WideStats {
    fn linear_input(&mut self, id: LinearId, x: &Tensor) -> candle_core::Result<()> {
        match id.kind {
            LinearKind::AttnOutput => {
                let (n, _) = x.dims2()?;
                let a = x
                    .reshape((n, self.heads, self.head_dim))?
                    .transpose(0, 1)?
                    .contiguous()?;
                let norms = a
                    .matmul(&self.w_o)?
                    .sqr()?
                    .sum(2)?
                    .sqrt()?
                    .sum(1)?
                    .to_vec1::<f32>()?;
                for (acc, v) in self.head_score.iter_mut().zip(norms) {
                    *acc += f64::from(v);
                }
                if let Some(gram) = &mut self.head_gram {
                    add_gram(gram, x)?;
                }
            }
            LinearKind::FfnDown => {
                add_gram(&mut self.c, x)?;
                self.tokens += x.dim(0)?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Runs `block` (with head counts `heads`/`kv_heads`) on `h` `[samples·seq, d]` in batches of
/// windows, offering every linear input to `hook`; returns the block's output.
fn run_wide(
    t: &Transformer,
    block: &Block,
    (heads, kv_heads): (usize, usize),
    h: &Tensor,
    seq: usize,
    hook: &mut dyn ForwardHook,
) -> candle_core::Result<Tensor> {
    let mut cfg = t.config.clone();
    cfg.num_heads = heads;
    cfg.num_kv_heads = kv_heads;
    cfg.num_layers = 1;
    let one = Transformer {
        config: cfg,
        token_embd: t.token_embd.clone(),
        blocks: vec![block.clone()],
        output_norm: t.output_norm.clone(),
        output: t.output.clone(),
        rope_inv_freq: t.rope_inv_freq.clone(),
        kernels: t.kernels,
    };
    let samples = h.dim(0)? / seq;
    let mut outs = Vec::new();
    for w0 in (0..samples).step_by(SAMPLES_PER_BATCH) {
        let n = SAMPLES_PER_BATCH.min(samples - w0);
        let part = h.narrow(0, w0 * seq, n * seq)?;
        outs.push(one.run_block(0, &part, n, seq, hook)?);
    }
    Tensor::cat(&outs, 0)
}

/// The prune-back's knobs.
#[derive(Debug, Clone, Copy)]
struct PruneBack {
    /// The ridge factor (× the mean eigenvalue of a second moment).
    ridge: f64,
    channels: ChannelScore,
    heads: HeadScore,
    refit_heads: bool,
}

/// Flattens each group (half-open block ranges, disjoint) and prunes it back to the original
/// width, in depth order; each group's statistics come from the calibration windows run through
/// the model as compressed so far.
fn flatten_groups(
    t: &mut Transformer,
    groups: &[(usize, usize)],
    ids: &Tensor,
    prune: PruneBack,
    progress: &mut Progress<'_>,
) -> anyhow::Result<()> {
    let (_, seq) = ids.dims2()?;
    let cfg = t.config.clone();
    let mut h = t.embed(ids)?;
    let old = std::mem::take(&mut t.blocks);
    let mut new_blocks: Vec<Block> = Vec::with_capacity(old.len());
    let last_end = groups.iter().map(|g| g.1).max().unwrap_or(0);
    let mut b = 0;
    while b < old.len() {
        if b >= last_end {
            new_blocks.push(old[b].clone());
            b += 1;
            continue;
        }
        let group = groups.iter().find(|g| g.0 == b).copied();
        let block = match group {
            Some((a, e)) => {
                if !progress(&format!("flattening blocks {a}–{}", e - 1), a, old.len()) {
                    anyhow::bail!("cancelled");
                }
                let g = e - a;
                let wide = flatten_blocks(&old[a..e])?;
                let mut stats = WideStats {
                    heads: g * cfg.num_heads,
                    head_dim: cfg.head_dim,
                    w_o: dense(&wide.attn_output)?
                        .reshape((cfg.hidden_size, g * cfg.num_heads, cfg.head_dim))?
                        .permute((1, 2, 0))?
                        .contiguous()?,
                    head_score: vec![0.0; g * cfg.num_heads],
                    head_gram: (prune.refit_heads || prune.heads == HeadScore::Leverage)
                        .then(|| vec![0.0; (g * cfg.num_heads * cfg.head_dim).pow(2)]),
                    channels: g * cfg.intermediate_size,
                    c: vec![0.0; (g * cfg.intermediate_size).pow(2)],
                    tokens: 0,
                };
                let heads = (g * cfg.num_heads, g * cfg.num_kv_heads);
                run_wide(t, &wide, heads, &h, seq, &mut stats)?;
                let scale = 1.0 / stats.tokens.max(1) as f64;
                let head_gram = stats.head_gram.map(|gram| {
                    let gram: Vec<f64> = gram.iter().map(|v| v * scale).collect();
                    let lambda = ridge_lambda(&gram, stats.heads * stats.head_dim, prune.ridge);
                    (gram, lambda)
                });
                let head_score = match (prune.heads, &head_gram) {
                    (HeadScore::Leverage, Some((gram, l))) => {
                        // A head whose o_proj columns are zero writes nothing, whatever its
                        // outputs' leverage (as `select_channels` treats channels).
                        let writes = stats.w_o.sqr()?.sum((1, 2))?.to_vec1::<f32>()?;
                        let features = stats.heads * stats.head_dim;
                        ridge_leverage(gram, features, *l)?
                            .chunks(stats.head_dim)
                            .zip(writes)
                            .map(|(head, w)| if w > 0.0 { head.iter().sum() } else { 0.0 })
                            .collect()
                    }
                    _ => stats.head_score,
                };
                let kv = select_kv_groups(
                    &head_score,
                    cfg.num_heads / cfg.num_kv_heads,
                    cfg.num_kv_heads,
                );
                let down = dense(&wide.ffn_down)?;
                let c: Vec<f64> = stats.c.iter().map(|v| v * scale).collect();
                let lambda = ridge_lambda(&c, stats.channels, prune.ridge);
                let rank = match prune.channels {
                    ChannelScore::Leverage => ridge_leverage(&c, stats.channels, lambda)?,
                    ChannelScore::Energy => channel_energy(&c, stats.channels, &down)?,
                };
                let channels = select_channels(&rank, &down, cfg.intermediate_size)?;
                let heads = head_gram
                    .as_ref()
                    .filter(|_| prune.refit_heads)
                    .map(|(gram, l)| (gram.as_slice(), *l));
                b = e;
                prune_back(&wide, &cfg, &kv, heads, &channels, &c, lambda)?
            }
            None => {
                b += 1;
                old[b - 1].clone()
            }
        };
        if b < last_end {
            let (heads, kv) = (cfg.num_heads, cfg.num_kv_heads);
            h = run_wide(t, &block, (heads, kv), &h, seq, &mut crate::model::NoHook)?;
        }
        new_blocks.push(block);
    }
    t.blocks = new_blocks;
    Ok(())
}

/// Keeps the `keep` KV groups (each with its `rep` query heads) whose heads' summed importance
/// is highest (ties to the lower index), returned in ascending order so the kept heads keep
/// their relative order.
pub fn select_kv_groups(head_score: &[f64], rep: usize, keep: usize) -> Vec<usize> {
    let groups = head_score.len() / rep.max(1);
    let score: Vec<f64> = (0..groups)
        .map(|k| head_score[k * rep..(k + 1) * rep].iter().sum())
        .collect();
    let mut order: Vec<usize> = (0..groups).collect();
    order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    let mut kept: Vec<usize> = order.into_iter().take(keep).collect();
    kept.sort_unstable();
    kept
}

/// Each MLP channel's output energy `C_ii · ‖W_down[:, i]‖²`: its mean squared activation
/// times the squared norm of the column it writes through.
fn channel_energy(c: &[f64], n: usize, down: &Tensor) -> anyhow::Result<Vec<f64>> {
    let (d, cols) = down.dims2()?;
    anyhow::ensure!(cols == n, "down_proj has {cols} columns for {n} channels");
    let w = down.flatten_all()?.to_vec1::<f32>()?;
    Ok((0..n)
        .map(|i| {
            let col: f64 = (0..d).map(|r| f64::from(w[r * n + i]).powi(2)).sum();
            c[i * n + i] * col
        })
        .collect())
}

/// The `keep` MLP channels with the highest score (ties to the lower index), in ascending
/// order. A channel whose down_proj column is all zero contributes nothing and is dropped
/// first, whatever its score.
fn select_channels(leverage: &[f64], down: &Tensor, keep: usize) -> anyhow::Result<Vec<usize>> {
    let (d, n) = down.dims2()?;
    let w = down.flatten_all()?.to_vec1::<f32>()?;
    let dead: Vec<bool> = (0..n)
        .map(|c| (0..d).all(|r| w[r * n + c] == 0.0))
        .collect();
    let score: Vec<f64> = (0..n)
        .map(|c| {
            if dead[c] {
                f64::NEG_INFINITY
            } else {
                leverage[c]
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    let mut kept: Vec<usize> = order.into_iter().take(keep).collect();
    kept.sort_unstable();
    Ok(kept)
}

/// `factor ×` the mean eigenvalue of `C` (its trace over its size); 1 if `C` is zero.
pub fn ridge_lambda(c: &[f64], n: usize, factor: f64) -> f64 {
    let trace: f64 = (0..n).map(|i| c[i * n + i]).sum();
    let l = factor * trace / n.max(1) as f64;
    if l > 0.0 && l.is_finite() { l } else { 1.0 }
}

/// The Cholesky factorization of `C + λI` (row-major `n × n`).
fn factor(c: &[f64], n: usize, lambda: f64) -> anyhow::Result<Llt<f64>> {
    Mat::from_fn(n, n, |i, j| {
        c[i * n + j] + if i == j { lambda } else { 0.0 }
    })
    .llt(Side::Lower)
    .map_err(|LltError::NonPositivePivot { index }| {
        anyhow::anyhow!("C + λI is not positive definite at pivot {index}")
    })
}

/// Ridge leverage scores `s_i = [C (C + λI)⁻¹]_ii = 1 − λ [(C + λI)⁻¹]_ii`.
pub fn ridge_leverage(c: &[f64], n: usize, lambda: f64) -> anyhow::Result<Vec<f64>> {
    let inv = factor(c, n, lambda)?.inverse();
    Ok((0..n).map(|i| 1.0 - lambda * inv[(i, i)]).collect())
}

/// Nyström compensation of a linear's inputs, e.g. the down projection (math layout `W_D`:
/// channels × hidden, i.e. down_projᵀ): `W' = W_D[K] + (C_KK + λI)⁻¹ C_KD W_D[D]`, the
/// minimiser of `‖ψW_D − ψ_K W'‖² + λ‖W' − W_D[K]‖²` over the kept channels `K` (dropped `D`).
/// Returns `|K| × hidden`; with nothing dropped it is `W_D[K]` exactly.
pub fn nystrom(
    w_d: &[f32],
    hidden: usize,
    c: &[f64],
    n: usize,
    keep: &[usize],
    lambda: f64,
) -> anyhow::Result<Vec<f32>> {
    let k = keep.len();
    let mut out: Vec<f32> = keep
        .iter()
        .flat_map(|&i| w_d[i * hidden..(i + 1) * hidden].iter().copied())
        .collect();
    let mut kept = vec![false; n];
    for &i in keep {
        kept[i] = true;
    }
    let dropped: Vec<usize> = (0..n).filter(|i| !kept[*i]).collect();
    if dropped.is_empty() {
        return Ok(out);
    }
    // R = C_KD W_D[D], k × hidden.
    let mut r = vec![0.0f64; k * hidden];
    r.par_chunks_mut(hidden)
        .zip(keep.par_iter())
        .for_each(|(row, &i)| {
            for &j in &dropped {
                let cij = c[i * n + j];
                if cij == 0.0 {
                    continue;
                }
                for (o, w) in row.iter_mut().zip(&w_d[j * hidden..(j + 1) * hidden]) {
                    *o += cij * f64::from(*w);
                }
            }
        });
    let ckk: Vec<f64> = keep
        .iter()
        .flat_map(|&i| keep.iter().map(move |&j| c[i * n + j]))
        .collect();
    factor(&ckk, k, lambda)?.solve_in_place(MatMut::from_row_major_slice_mut(&mut r, k, hidden));
    for (o, x) in out.iter_mut().zip(&r) {
        *o += *x as f32;
    }
    Ok(out)
}

/// A linear `[out, n]` reading only the `keep` inputs, compensated for the others by
/// `nystrom` with the inputs' second moment `c` (`n × n`) and ridge `lambda`.
fn nystrom_linear(w: &Tensor, c: &[f64], keep: &[usize], lambda: f64) -> anyhow::Result<Tensor> {
    let (out, n) = w.dims2()?;
    let w_t = w.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let refit = nystrom(&w_t, out, c, n, keep, lambda)?;
    Ok(Tensor::from_vec(refit, (keep.len(), out), &Device::Cpu)?
        .t()?
        .contiguous()?)
}

fn index(ix: &[usize]) -> candle_core::Result<Tensor> {
    let v: Vec<u32> = ix.iter().map(|&i| i as u32).collect();
    Tensor::from_vec(v, ix.len(), &Device::Cpu)
}

/// Selects rows of a linear (and its bias).
fn take_rows(w: &LinearWeight, rows: &Tensor) -> candle_core::Result<LinearWeight> {
    let bias = w.bias().map(|b| b.index_select(rows, 0)).transpose()?;
    Ok(LinearWeight::dense(
        dense(w)?.index_select(rows, 0)?.contiguous()?,
        bias,
    ))
}

/// The wide block pruned back to the original width: the kept KV groups with their query
/// heads (with `head_gram = Some((aᵀa/N, λ))`, o_proj compensated for the dropped heads the
/// same way), the kept MLP channels with down_proj compensated (Nyström, ridge `lambda` on
/// `c = ψᵀψ/N`). Keeping everything returns the wide block's weights unchanged.
pub fn prune_back(
    wide: &Block,
    cfg: &crate::model::LlamaConfig,
    kv_groups: &[usize],
    head_gram: Option<(&[f64], f64)>,
    channels: &[usize],
    c: &[f64],
    lambda: f64,
) -> anyhow::Result<Block> {
    let (hd, rep) = (cfg.head_dim, cfg.num_heads / cfg.num_kv_heads);
    let kv_rows: Vec<usize> = kv_groups
        .iter()
        .flat_map(|&k| k * hd..(k + 1) * hd)
        .collect();
    let q_rows: Vec<usize> = kv_groups
        .iter()
        .flat_map(|&k| k * rep * hd..(k + 1) * rep * hd)
        .collect();
    let (q_ix, kv_ix, ch_ix) = (index(&q_rows)?, index(&kv_rows)?, index(channels)?);
    let o = match head_gram {
        None => dense(&wide.attn_output)?
            .index_select(&q_ix, 1)?
            .contiguous()?,
        Some((gram, head_lambda)) => {
            nystrom_linear(&dense(&wide.attn_output)?, gram, &q_rows, head_lambda)?
        }
    };
    let new_down = nystrom_linear(&dense(&wide.ffn_down)?, c, channels, lambda)?;
    Ok(Block {
        attn_norm: wide.attn_norm.clone(),
        attn_q: take_rows(&wide.attn_q, &q_ix)?,
        attn_k: take_rows(&wide.attn_k, &kv_ix)?,
        attn_v: take_rows(&wide.attn_v, &kv_ix)?,
        attn_output: LinearWeight::dense(o, wide.attn_output.bias().cloned()),
        ffn_norm: wide.ffn_norm.clone(),
        ffn_gate: take_rows(&wide.ffn_gate, &ch_ix)?,
        ffn_up: take_rows(&wide.ffn_up, &ch_ix)?,
        ffn_down: LinearWeight::dense(new_down, wide.ffn_down.bias().cloned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NoHook;

    /// A random 3-block model with non-trivial norm gains.
    fn tiny() -> Transformer {
        let mut cfg = crate::zoo::zoo_config(40);
        cfg.hidden_size = 16;
        cfg.intermediate_size = 24;
        cfg.head_dim = 4;
        cfg.num_layers = 3;
        let mut t = crate::zoo::train::init_transformer(&cfg, 3).unwrap();
        for (i, b) in t.blocks.iter_mut().enumerate() {
            let g: Vec<f32> = (0..16)
                .map(|j| 0.5 + ((i * 7 + j) % 5) as f32 * 0.3)
                .collect();
            b.attn_norm = Tensor::new(g.as_slice(), &Device::Cpu).unwrap();
            b.ffn_norm = (b.attn_norm.clone() * 1.3).unwrap();
            // Larger residual branches than the init's, so blocks matter.
            b.attn_output =
                LinearWeight::dense((dense(&b.attn_output).unwrap() * 20.0).unwrap(), None);
            b.ffn_down = LinearWeight::dense((dense(&b.ffn_down).unwrap() * 20.0).unwrap(), None);
        }
        t
    }

    fn hidden(rows: usize) -> Tensor {
        let v: Vec<f32> = (0..rows * 16)
            .map(|i| ((i * 37 % 29) as f32 - 14.0) / 7.0)
            .collect();
        Tensor::from_vec(v, (rows, 16), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    const TOL: f32 = 1e-4;

    #[test]
    fn folding_the_gains_alone_preserves_the_block() {
        let t = tiny();
        let h = hidden(2 * 8);
        let folded = flatten_blocks(&t.blocks[1..2]).unwrap();
        let want = t.run_block(1, &h, 2, 8, &mut NoHook).unwrap();
        let heads = (t.config.num_heads, t.config.num_kv_heads);
        let got = run_wide(&t, &folded, heads, &h, 8, &mut NoHook).unwrap();
        assert!(max_diff(&want, &got) < TOL);
    }

    #[test]
    fn wide_block_is_the_parallel_sum() {
        let t = tiny();
        let h = hidden(8);
        let wide = flatten_blocks(&t.blocks[0..2]).unwrap();
        let c = &t.config;
        let got = run_wide(
            &t,
            &wide,
            (2 * c.num_heads, 2 * c.num_kv_heads),
            &h,
            8,
            &mut NoHook,
        )
        .unwrap();
        // x + A₁(x̂) + A₂(x̂), then + M₁(ĥ) + M₂(ĥ): with the MLPs zeroed, the attention sum
        // alone; with the attentions zeroed, the MLP sum alone.
        let mut only_attn = t.clone();
        for b in &mut only_attn.blocks {
            b.ffn_down =
                LinearWeight::dense(dense(&b.ffn_down).unwrap().zeros_like().unwrap(), None);
        }
        let a1 = (only_attn.run_block(0, &h, 1, 8, &mut NoHook).unwrap() - &h).unwrap();
        let a2 = (only_attn.run_block(1, &h, 1, 8, &mut NoHook).unwrap() - &h).unwrap();
        let mid = ((&h + a1).unwrap() + a2).unwrap();
        let mut only_mlp = t.clone();
        for b in &mut only_mlp.blocks {
            b.attn_output =
                LinearWeight::dense(dense(&b.attn_output).unwrap().zeros_like().unwrap(), None);
        }
        let m1 = (only_mlp.run_block(0, &mid, 1, 8, &mut NoHook).unwrap() - &mid).unwrap();
        let m2 = (only_mlp.run_block(1, &mid, 1, 8, &mut NoHook).unwrap() - &mid).unwrap();
        let want = ((mid + m1).unwrap() + m2).unwrap();
        assert!(max_diff(&want, &got) < TOL, "{}", max_diff(&want, &got));
    }

    #[test]
    fn flattening_with_a_zero_output_second_block_equals_the_first() {
        let mut t = tiny();
        let b1 = &mut t.blocks[1];
        b1.attn_output =
            LinearWeight::dense(dense(&b1.attn_output).unwrap().zeros_like().unwrap(), None);
        b1.ffn_down = LinearWeight::dense(dense(&b1.ffn_down).unwrap().zeros_like().unwrap(), None);
        let ids = Tensor::from_vec(
            (0..4 * 8).map(|i| (i * 7 % 40) as u32).collect(),
            (4, 8),
            &Device::Cpu,
        )
        .unwrap();
        let h = hidden(8);
        let want = t.run_block(0, &h, 1, 8, &mut NoHook).unwrap();
        // Whatever the channel ranking and ridge, the silent block's heads and channels go.
        for knobs in [
            PruneBack {
                ridge: RIDGE_FACTOR,
                channels: ChannelScore::Leverage,
                heads: HeadScore::Contribution,
                refit_heads: false,
            },
            PruneBack {
                ridge: 0.5,
                channels: ChannelScore::Energy,
                heads: HeadScore::Leverage,
                refit_heads: true,
            },
        ] {
            let mut flat = t.clone();
            flatten_groups(&mut flat, &[(0, 2)], &ids, knobs, &mut |_, _, _| true).unwrap();
            assert_eq!(flat.blocks.len(), 2);
            let got = flat.run_block(0, &h, 1, 8, &mut NoHook).unwrap();
            assert!(
                max_diff(&want, &got) < TOL,
                "{knobs:?}: {}",
                max_diff(&want, &got)
            );
        }
        let mut flat = t.clone();
        let knobs = PruneBack {
            ridge: RIDGE_FACTOR,
            channels: ChannelScore::Leverage,
            heads: HeadScore::Contribution,
            refit_heads: false,
        };
        flatten_groups(&mut flat, &[(0, 2)], &ids, knobs, &mut |_, _, _| true).unwrap();
        // The block after the group is untouched.
        assert_eq!(
            dense(&flat.blocks[1].attn_q)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
            dense(&t.blocks[2].attn_q)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        );
    }

    #[test]
    fn compensation_folds_duplicate_heads_into_the_kept_ones() {
        // Block 1 is block 0 with its attention output halved and no MLP: the wide block
        // computes x + 1.5·A(x̂). The prune-back keeps block 0's heads (they score higher);
        // with compensation (ridge → 0) the result must be that wide block exactly, where plain
        // selection loses a third of the branch.
        let mut t = tiny();
        let zero_mlp = |b: &mut Block| {
            b.ffn_down =
                LinearWeight::dense(dense(&b.ffn_down).unwrap().zeros_like().unwrap(), None);
        };
        zero_mlp(&mut t.blocks[0]);
        t.blocks[1] = t.blocks[0].clone();
        let half = (dense(&t.blocks[1].attn_output).unwrap() * 0.5).unwrap();
        t.blocks[1].attn_output = LinearWeight::dense(half, None);
        let ids = Tensor::from_vec(
            (0..4 * 8).map(|i| (i * 11 % 40) as u32).collect(),
            (4, 8),
            &Device::Cpu,
        )
        .unwrap();
        let h = t.embed(&ids).unwrap().reshape((32, 16)).unwrap();
        let wide = flatten_blocks(&t.blocks[0..2]).unwrap();
        let mut cfg = t.config.clone();
        cfg.num_heads *= 2;
        cfg.num_kv_heads *= 2;
        cfg.num_layers = 1;
        let wide_t = Transformer {
            config: cfg,
            blocks: vec![wide],
            ..t.clone()
        };
        let want = wide_t.run_block(0, &h, 4, 8, &mut NoHook).unwrap();
        let err = |refit_heads| {
            let mut flat = t.clone();
            let knobs = PruneBack {
                ridge: 1e-7,
                channels: ChannelScore::Leverage,
                heads: HeadScore::Contribution,
                refit_heads,
            };
            flatten_groups(&mut flat, &[(0, 2)], &ids, knobs, &mut |_, _, _| true).unwrap();
            let got = flat.run_block(0, &h, 4, 8, &mut NoHook).unwrap();
            max_diff(&want, &got) / max_diff(&want, &h)
        };
        let (compensated, selected) = (err(true), err(false));
        assert!(compensated < 1e-3, "compensated: {compensated}");
        assert!(selected > 0.1, "selected: {selected}");
    }

    #[test]
    fn prune_back_keeping_everything_is_exact() {
        let t = tiny();
        let wide = flatten_blocks(&t.blocks[0..2]).unwrap();
        let mut cfg = t.config.clone();
        cfg.num_heads *= 2;
        cfg.num_kv_heads *= 2;
        let n = 2 * cfg.intermediate_size;
        let c: Vec<f64> = (0..n * n)
            .map(|i| if i % (n + 1) == 0 { 2.0 } else { 0.1 })
            .collect();
        let kv: Vec<usize> = (0..cfg.num_kv_heads).collect();
        let channels: Vec<usize> = (0..n).collect();
        let back = prune_back(&wide, &cfg, &kv, None, &channels, &c, 0.5).unwrap();
        for kind in LinearKind::ALL {
            assert_eq!(
                dense(back.linear(kind)).unwrap().to_vec2::<f32>().unwrap(),
                dense(wide.linear(kind)).unwrap().to_vec2::<f32>().unwrap(),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn nystrom_recovers_duplicated_channels_exactly() {
        // ψ has channels 0..3 and a duplicate of each (3..6); keeping 0..3 and folding the
        // duplicates' down rows in reproduces ψ W_D (λ → 0).
        let (tokens, hidden_n) = (20, 3);
        let base: Vec<f64> = (0..tokens * 3)
            .map(|i| ((i * 13 % 11) as f64) - 5.0)
            .collect();
        let psi: Vec<f64> = (0..tokens)
            .flat_map(|t| (0..6).map(move |j| (t, j)))
            .map(|(t, j)| base[t * 3 + j % 3])
            .collect();
        let n = 6;
        let mut c = vec![0.0; n * n];
        for t in 0..tokens {
            for i in 0..n {
                for j in 0..n {
                    c[i * n + j] += psi[t * n + i] * psi[t * n + j];
                }
            }
        }
        let w_d: Vec<f32> = (0..n * hidden_n)
            .map(|i| ((i * 5 % 7) as f32) - 3.0)
            .collect();
        let w = nystrom(&w_d, hidden_n, &c, n, &[0, 1, 2], 1e-9).unwrap();
        for t in 0..tokens {
            for o in 0..hidden_n {
                let want: f64 = (0..n)
                    .map(|j| psi[t * n + j] * f64::from(w_d[j * hidden_n + o]))
                    .sum();
                let got: f64 = (0..3)
                    .map(|j| psi[t * n + j] * f64::from(w[j * hidden_n + o]))
                    .sum();
                assert!((want - got).abs() < 1e-3, "{want} vs {got}");
            }
        }
        // λ → ∞ is plain selection.
        let w = nystrom(&w_d, hidden_n, &c, n, &[0, 1, 2], 1e12).unwrap();
        for (a, b) in w.iter().zip(&w_d[..3 * hidden_n]) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn ridge_leverage_matches_its_definition() {
        // Diagonal C: s_i = c_i / (c_i + λ).
        let n = 4;
        let mut c = vec![0.0; n * n];
        for i in 0..n {
            c[i * n + i] = (i + 1) as f64;
        }
        let s = ridge_leverage(&c, n, 2.0).unwrap();
        for (i, si) in s.iter().enumerate() {
            let want = (i + 1) as f64 / (i as f64 + 3.0);
            assert!((si - want).abs() < 1e-12);
        }
    }

    #[test]
    fn greedy_groups_tie_break_and_span_score() {
        // Span scoring reads one column further: the last block's output.
        let mut s = vec![vec![0.0; 5]; 5];
        s[0][2] = 0.9; // input of 0 against output of 1: pair (0, 1) by span
        s[1][2] = 0.95; // inputs of 1 and 2: pair (1, 2) by inputs
        s[2][4] = 0.99; // input of 2 against output of 3: pair (2, 3) by span, the best
        assert_eq!(greedy_groups(&s, 4, 1, GroupPick::Inputs), vec![(1, 3)]);
        assert_eq!(greedy_groups(&s, 4, 1, GroupPick::Span), vec![(2, 4)]);
        let ones = vec![vec![1.0; 7]; 7];
        assert_eq!(greedy_groups(&ones, 6, 1, GroupPick::Inputs), vec![(0, 2)]);
        assert_eq!(greedy_groups(&ones, 6, 0, GroupPick::Inputs), vec![]);
        // Pair (2, 3) is the most similar; then merging [2..3] with 4 scores S[2][4].
        let mut s = vec![vec![0.0; 7]; 7];
        s[2][3] = 0.9;
        s[2][4] = 0.8;
        s[0][1] = 0.7;
        assert_eq!(greedy_groups(&s, 6, 2, GroupPick::Inputs), vec![(2, 5)]);
        s[2][4] = 0.1;
        assert_eq!(
            greedy_groups(&s, 6, 2, GroupPick::Inputs),
            vec![(0, 2), (2, 4)]
        );
        assert_eq!(drop_choice(&s, 6, 2), vec![0, 2]);
    }

    #[test]
    fn explicit_pairs_are_checked() {
        use FlattenMethod::{Drop, Flatten};
        assert!(explicit_groups(&[[0, 2]], 6, Flatten).is_err());
        assert!(explicit_groups(&[[5, 6]], 6, Flatten).is_err());
        assert!(explicit_groups(&[[1, 2], [2, 3]], 6, Flatten).is_err());
        assert_eq!(
            explicit_groups(&[[3, 4], [0, 1]], 6, Flatten).unwrap(),
            vec![(0, 2), (3, 5)]
        );
        // Dropping `[i, i + 1]` removes block `i`: neighbours may both go, a block only once.
        assert_eq!(
            explicit_groups(&[[2, 3], [1, 2]], 6, Drop).unwrap(),
            vec![(1, 2), (2, 3)]
        );
        assert!(explicit_groups(&[[1, 2], [1, 2]], 6, Drop).is_err());
        assert!(explicit_groups(&[[5, 6]], 6, Drop).is_err());
    }
}
