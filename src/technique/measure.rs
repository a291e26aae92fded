//! Layer-alone measurements: how far the model's next-token distribution moves from the base
//! when exactly one thing is changed (one linear compressed with one candidate setting, or the
//! token embedding quantized), what that costs in bytes, and how long the changed layer's
//! product takes in the decode engine. The sensitivity pass is this with one candidate per
//! layer; the search measures every layer at every candidate and adds the results up.
//!
//! A change in block `b` leaves the activations entering blocks `0..b` as they were, so the
//! base model's input to every block is kept once ([`Scorer`]) and each measurement re-runs
//! only blocks `b..` and the head: on average half a forward pass per layer.

use std::collections::BTreeMap;

use candle_core::Tensor;
use rayon::prelude::*;

use crate::calib::{StatsCollector, calibration_ids, stats_source};
use crate::engine::{EngineOptions, Linear, ProductTimer};
use crate::model::{LinearId, LinearKind, Model, NoHook};

use super::recipe::{EmbeddingStep, FlattenMethod, FlattenStep, LayerPlan};
use super::{CalibOptions, Progress, cancelled, compress_layer, flatten, layer_seed};

/// The row name of the token embedding (and the head tied to it) in a measurement table.
pub const EMBEDDING_LAYER: &str = "token_embd";
/// The row name of the decode time that is not a linear's product (attention, norms, the
/// embedding lookup, the pool's hand-offs).
pub const FIXED_LAYER: &str = "fixed";
/// The candidate key of a layer left as it is.
pub const DENSE: &str = "dense";

/// Evaluation windows and the base model's results on them, kept for every measurement.
pub struct Scorer {
    windows: Vec<Vec<u32>>,
    /// `inputs[b][w]`: the base model's hidden states entering block `b` for window `w`.
    inputs: Vec<Vec<Tensor>>,
    /// Per window, `n × vocab` log-probabilities of the base.
    base_logp: Vec<Vec<f32>>,
    base_nll: f64,
    vocab: usize,
}

/// `tokens` cut into windows of `ctx` (the last may be shorter; those under 2 tokens are
/// dropped), each starting with BOS when the tokenizer adds one.
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

/// Log-softmax of each `vocab`-wide row of `logits`, in place; and the NLL of `next`.
fn log_softmax_nll(logits: &mut [f32], vocab: usize, next: &[u32]) -> f64 {
    logits.par_chunks_mut(vocab).for_each(|row| {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&x| f64::from((x - max).exp())).sum();
        let lse = max + sum.ln() as f32;
        for x in row.iter_mut() {
            *x -= lse;
        }
    });
    logits
        .chunks(vocab)
        .zip(next)
        .map(|(row, &t)| -f64::from(row[t as usize]))
        .sum()
}

impl Scorer {
    /// Scores the base on `tokens` in windows of `ctx` (capped at the model's context),
    /// keeping each block's input.
    pub fn new(base: &Model, tokens: &[u32], ctx: usize) -> anyhow::Result<Self> {
        let cfg = base.config();
        let vocab = cfg.vocab_size;
        let ctx = ctx.clamp(2, cfg.max_position_embeddings.max(2));
        let bos = base
            .tokenizer
            .add_bos
            .then_some(base.tokenizer.bos_id)
            .flatten();
        let windows = windows(tokens, ctx, bos);
        anyhow::ensure!(
            !windows.is_empty(),
            "no evaluation window of at least 2 tokens"
        );
        let t = &base.transformer;
        let mut inputs = vec![Vec::with_capacity(windows.len()); t.blocks.len()];
        let (mut base_logp, mut nll, mut n) = (Vec::new(), 0.0, 0usize);
        for w in &windows {
            let ids = Tensor::new(w.as_slice(), t.device())?.unsqueeze(0)?;
            let mut h = t.embed(&ids)?;
            for (b, input) in inputs.iter_mut().enumerate() {
                input.push(h.clone());
                h = t.run_block(b, &h, 1, w.len(), &mut NoHook)?;
            }
            let mut logp = Self::logits(base, &h, w.len(), vocab)?;
            nll += log_softmax_nll(&mut logp, vocab, &w[1..]);
            n += w.len() - 1;
            base_logp.push(logp);
        }
        Ok(Self {
            windows,
            inputs,
            base_logp,
            base_nll: nll / n.max(1) as f64,
            vocab,
        })
    }

    fn logits(model: &Model, h: &Tensor, n: usize, vocab: usize) -> anyhow::Result<Vec<f32>> {
        let t = &model.transformer;
        let v = t.head(&t.final_norm(h)?)?.flatten_all()?.to_vec1::<f32>()?;
        anyhow::ensure!(
            v.len() == n * vocab,
            "the head returned {} logits for {n} tokens × vocab {vocab}",
            v.len()
        );
        Ok(v)
    }

    /// Scored positions (next-token predictions) per measurement.
    pub fn tokens(&self) -> usize {
        self.windows.iter().map(|w| w.len() - 1).sum()
    }

    /// The base model's mean next-token NLL.
    pub fn base_nll(&self) -> f64 {
        self.base_nll
    }

    /// Mean KL(base ‖ model) and the change of mean NLL, for a `model` equal to the base
    /// before block `from` (`None`: it differs from the embedding on).
    pub fn score(&self, model: &Model, from: Option<usize>) -> anyhow::Result<(f64, f64)> {
        let t = &model.transformer;
        let (mut kld, mut nll, mut n) = (0.0f64, 0.0f64, 0usize);
        for (i, w) in self.windows.iter().enumerate() {
            let mut h = match from {
                Some(b) => self.inputs[b][i].clone(),
                None => t.embed(&Tensor::new(w.as_slice(), t.device())?.unsqueeze(0)?)?,
            };
            for b in from.unwrap_or(0)..t.blocks.len() {
                h = t.run_block(b, &h, 1, w.len(), &mut NoHook)?;
            }
            let mut logp = Self::logits(model, &h, w.len(), self.vocab)?;
            nll += log_softmax_nll(&mut logp, self.vocab, &w[1..]);
            n += w.len() - 1;
            kld += self.base_logp[i]
                .par_chunks(self.vocab)
                .zip(logp.par_chunks(self.vocab))
                .map(|(lb, lm)| {
                    let k: f64 = lb
                        .iter()
                        .zip(lm)
                        .map(|(&pb, &pm)| f64::from(pb.exp() * (pb - pm)))
                        .sum();
                    k.max(0.0)
                })
                .sum::<f64>();
        }
        // Positions are scored once per window row; every row of a window is a position.
        let rows: usize = self.windows.iter().map(Vec::len).sum();
        Ok((
            kld / rows.max(1) as f64,
            nll / n.max(1) as f64 - self.base_nll,
        ))
    }
}

/// One candidate setting of a linear, under a stable key (what the measurement table stores).
#[derive(Debug, Clone)]
pub struct Candidate {
    pub key: String,
    pub plan: LayerPlan,
}

/// One row of a measurement table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Measured {
    /// `blk.3.ffn_down`, [`EMBEDDING_LAYER`] or [`FIXED_LAYER`].
    pub layer: String,
    /// The candidate's key ([`DENSE`] for the layer as it is).
    pub candidate: String,
    /// Mean KL divergence (nats) from the base with only this change.
    pub kld: f64,
    /// Change of the mean next-token NLL (nats per token).
    pub nll_delta: f64,
    /// Stored bytes of the layer before and after.
    pub base_bytes: usize,
    pub bytes: usize,
    /// Seconds of one decode-engine product with this layer, weights out of cache (for
    /// [`FIXED_LAYER`]: the rest of a decode step); `NaN` when not timed.
    pub seconds: f64,
}

/// How a measurement pass runs.
#[derive(Debug, Clone, Copy)]
pub struct MeasureOptions {
    /// Calibration windows for the candidates that read input statistics.
    pub calib: CalibOptions,
    /// Seed of the calibration sampling and of each layer's randomised choices (the recipe's).
    pub seed: u64,
    /// Time each layer's product on these threads (`None`: not timed).
    pub timing: Option<EngineOptions>,
}

/// Timed products per layer (the median is kept).
const TIMING_REPS: usize = 7;

fn cold_seconds(timer: Option<&mut ProductTimer>, weight: &crate::model::LinearWeight) -> f64 {
    match timer {
        Some(t) => Linear::new(weight).map_or(f64::NAN, |l| t.cold_seconds(&l, TIMING_REPS)),
        None => f64::NAN,
    }
}

/// Measures every candidate of every layer in `work`, block by block, calling `sink` with each
/// block's rows as soon as they exist (so a long pass can be stored as it goes and resumed).
/// The [`DENSE`] candidate is not scored (its KLD is 0), only timed. `progress(stage, done,
/// total)` after each measurement; returning `false` cancels.
pub fn measure_layers(
    base: &Model,
    scorer: &Scorer,
    work: &BTreeMap<LinearId, Vec<Candidate>>,
    calib_tokens: &[u32],
    opts: MeasureOptions,
    sink: &mut dyn FnMut(usize, Vec<Measured>) -> anyhow::Result<()>,
    progress: &mut Progress<'_>,
) -> anyhow::Result<()> {
    let cfg = base.config();
    let total: usize = work.values().map(Vec::len).sum();
    let needs_stats = work.values().flatten().any(|c| c.plan.needs_stats());
    let calib = CalibOptions {
        seq_len: opts.calib.seq_len.min(cfg.max_position_embeddings),
        ..opts.calib
    };
    let mut timer = opts.timing.map(ProductTimer::new);
    // Calibration inputs of block 0; each block's output (of the base) feeds the next.
    let mut hidden = if needs_stats {
        let ids = calibration_ids(calib_tokens, calib.samples, calib.seq_len, opts.seed)?;
        Some(base.transformer.embed(&ids)?)
    } else {
        None
    };
    let mut done = 0;
    for block in 0..base.transformer.blocks.len() {
        let in_block: Vec<(&LinearId, &Vec<Candidate>)> =
            work.iter().filter(|(id, _)| id.block == block).collect();
        let more = work.keys().any(|id| id.block > block);
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
            let wanted = in_block
                .iter()
                .any(|(_, cs)| cs.iter().any(|c| c.plan.needs_stats()));
            if wanted || more {
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
        let mut rows = Vec::new();
        for (&id, candidates) in in_block {
            let Some(weight) = base.transformer.linear(id) else {
                anyhow::bail!("{id}: no such layer");
            };
            let source = LinearId::new(block, stats_source(id.kind));
            for c in candidates {
                if !progress(&format!("measuring {id} at {}", c.key), done, total) {
                    return Err(cancelled());
                }
                let mut row = Measured {
                    layer: id.to_string(),
                    candidate: c.key.clone(),
                    kld: 0.0,
                    nll_delta: 0.0,
                    base_bytes: weight.size_bytes(),
                    bytes: weight.size_bytes(),
                    seconds: f64::NAN,
                };
                if c.plan == LayerPlan::default() {
                    row.seconds = cold_seconds(timer.as_mut(), weight);
                } else {
                    let new = compress_layer(
                        weight,
                        &c.plan,
                        stats.stats.get(&source),
                        opts.seed ^ layer_seed(id),
                    )
                    .map_err(|e| anyhow::anyhow!("{id} at {}: {e:#}", c.key))?;
                    row.bytes = new.size_bytes();
                    row.seconds = cold_seconds(timer.as_mut(), &new);
                    // The clone shares every tensor with the base; only this layer differs.
                    let mut model = base.clone();
                    *model.transformer.blocks[block].linear_mut(id.kind) = new;
                    (row.kld, row.nll_delta) = scorer.score(&model, Some(block))?;
                }
                rows.push(row);
                done += 1;
            }
        }
        if !rows.is_empty() {
            sink(block, rows)?;
        }
    }
    progress("done", total, total);
    Ok(())
}

/// The token embedding (and the head tied to it) at each of `bits` (the recipe's `[embedding]`
/// step), plus the [`DENSE`] row timing the head as it is.
pub fn measure_embedding(
    base: &Model,
    scorer: &Scorer,
    bits: &[usize],
    timing: Option<EngineOptions>,
) -> anyhow::Result<Vec<Measured>> {
    let mut timer = timing.map(ProductTimer::new);
    let t = &base.transformer;
    let base_bytes = embedding_bytes(base);
    let mut rows = vec![Measured {
        layer: EMBEDDING_LAYER.into(),
        candidate: DENSE.into(),
        kld: 0.0,
        nll_delta: 0.0,
        base_bytes,
        bytes: base_bytes,
        seconds: cold_seconds(timer.as_mut(), &t.output),
    }];
    for &b in bits {
        let step = EmbeddingStep {
            bits: b,
            group: 0,
            symmetric: false,
            float_min: false,
            int8_activations: false,
        };
        let mut model = base.clone();
        super::quantize_embedding(&mut model, &step)?;
        let (kld, nll_delta) = scorer.score(&model, None)?;
        rows.push(Measured {
            layer: EMBEDDING_LAYER.into(),
            candidate: embedding_key(b),
            kld,
            nll_delta,
            base_bytes,
            bytes: model.transformer.output.size_bytes(),
            seconds: cold_seconds(timer.as_mut(), &model.transformer.output),
        });
    }
    Ok(rows)
}

/// The row name of a depth change starting at `block`: `blk.3` (dropped) or `blk.3-4`
/// (flattened into one block).
pub fn depth_layer(block: usize, method: FlattenMethod) -> String {
    match method {
        FlattenMethod::Drop => format!("blk.{block}"),
        FlattenMethod::Flatten => format!("blk.{block}-{}", block + 1),
    }
}

/// The candidate key of a depth change: `drop`, `flatten` (the merged block as it comes out),
/// or `flatten <key>` (its linears then compressed with candidate `key`).
pub fn depth_key(method: FlattenMethod, merged: &str) -> String {
    match (method, merged) {
        (FlattenMethod::Drop, _) => "drop".into(),
        (FlattenMethod::Flatten, DENSE) => "flatten".into(),
        (FlattenMethod::Flatten, key) => format!("flatten {key}"),
    }
}

/// Bytes of block `b`'s norms (what a depth change removes besides the block's linears).
fn norm_bytes(model: &Model, b: usize) -> usize {
    let block = &model.transformer.blocks[b];
    [&block.attn_norm, &block.ffn_norm]
        .iter()
        .map(|t| t.elem_count() * t.dtype().size_in_bytes())
        .sum()
}

/// Depth changes, each alone: for every block in `blocks`, the model with that block dropped
/// or flattened with the next one (FlattenGPT's prune-back, fitted on the calibration
/// windows), and for a flattened pair also with the merged block's linears compressed by each
/// of `merged` (statistics from the base's input to the pair). A row's `base_bytes` are the
/// norms of the blocks it replaces (the linears are rows of their own), its `bytes` what is
/// left of them (0 dropped; the whole merged block), its `seconds` the merged block's
/// products. `sink(block, rows)` after each block.
#[allow(clippy::too_many_arguments)]
pub fn measure_depth(
    base: &Model,
    scorer: &Scorer,
    method: FlattenMethod,
    blocks: &[usize],
    merged: &[Candidate],
    calib_tokens: &[u32],
    opts: MeasureOptions,
    sink: &mut dyn FnMut(usize, Vec<Measured>) -> anyhow::Result<()>,
    progress: &mut Progress<'_>,
) -> anyhow::Result<()> {
    let cfg = base.config();
    let calib = CalibOptions {
        seq_len: opts.calib.seq_len.min(cfg.max_position_embeddings),
        ..opts.calib
    };
    let per_block = match method {
        FlattenMethod::Drop => 1,
        FlattenMethod::Flatten => merged.len(),
    };
    let total = blocks.len() * per_block;
    let mut timer = opts.timing.map(ProductTimer::new);
    let needs_stats =
        method == FlattenMethod::Flatten && merged.iter().any(|c| c.plan.needs_stats());
    let ids = if needs_stats {
        Some(calibration_ids(
            calib_tokens,
            calib.samples,
            calib.seq_len,
            opts.seed,
        )?)
    } else {
        None
    };
    // The base's calibration input to the block in hand.
    let mut hidden = match &ids {
        Some(ids) => Some(base.transformer.embed(ids)?),
        None => None,
    };
    let last = blocks.iter().copied().max().unwrap_or(0);
    let mut done = 0;
    for b in 0..=last {
        let input = hidden.clone();
        if let Some(h) = &hidden
            && b < last
        {
            hidden = Some(base.transformer.run_block(
                b,
                h,
                calib.samples,
                calib.seq_len,
                &mut NoHook,
            )?);
        }
        if !blocks.contains(&b) {
            continue;
        }
        let layer = depth_layer(b, method);
        if !progress(&format!("measuring {layer} ({method:?})"), done, total) {
            return Err(cancelled());
        }
        let mut changed = base.clone();
        let step = FlattenStep::new(vec![[b, b + 1]], None, method);
        flatten::apply_flatten(
            &mut changed,
            &step,
            calib_tokens,
            calib,
            opts.seed,
            &mut |_, _, _| true,
        )
        .map_err(|e| anyhow::anyhow!("{layer}: {e:#}"))?;
        let row = |candidate: &str, (kld, nll_delta): (f64, f64), span: usize| Measured {
            layer: layer.clone(),
            candidate: depth_key(method, candidate),
            kld,
            nll_delta,
            base_bytes: (b..b + span).map(|i| norm_bytes(base, i)).sum(),
            bytes: 0,
            seconds: 0.0,
        };
        let mut rows = Vec::new();
        if method == FlattenMethod::Drop {
            let seconds = if timer.is_some() { 0.0 } else { f64::NAN };
            rows.push(Measured {
                seconds,
                ..row(DENSE, scorer.score(&changed, Some(b))?, 1)
            });
            done += 1;
        } else {
            // The merged block's input statistics, from the base's input to the pair.
            let mut stats = StatsCollector::new(None, true).statistics_only();
            if let Some(h) = &input {
                changed
                    .transformer
                    .run_block(b, h, calib.samples, calib.seq_len, &mut stats)?;
            }
            for c in merged {
                if !progress(&format!("measuring {layer} at {}", c.key), done, total) {
                    return Err(cancelled());
                }
                let mut model = changed.clone();
                let block = &mut model.transformer.blocks[b];
                if c.plan != LayerPlan::default() {
                    for kind in LinearKind::ALL {
                        let source = LinearId::new(b, stats_source(kind));
                        let seed = opts.seed ^ layer_seed(LinearId::new(b, kind));
                        let new = compress_layer(
                            block.linear(kind),
                            &c.plan,
                            stats.stats.get(&source),
                            seed,
                        )
                        .map_err(|e| anyhow::anyhow!("{layer} at {}: {e:#}", c.key))?;
                        *block.linear_mut(kind) = new;
                    }
                }
                let linears = LinearKind::ALL.map(|k| block.linear(k).clone());
                rows.push(Measured {
                    bytes: norm_bytes(&model, b)
                        + linears.iter().map(|w| w.size_bytes()).sum::<usize>(),
                    seconds: linears
                        .iter()
                        .map(|w| cold_seconds(timer.as_mut(), w))
                        .sum(),
                    ..row(&c.key, scorer.score(&model, Some(b))?, 2)
                });
                done += 1;
            }
        }
        sink(b, rows)?;
    }
    progress("done", total, total);
    Ok(())
}

/// Bytes of the token embedding as the base stores it.
fn embedding_bytes(base: &Model) -> usize {
    let e = &base.transformer.token_embd;
    e.elem_count() * e.dtype().size_in_bytes()
}

/// The candidate key of the `[embedding]` step at `bits`.
pub fn embedding_key(bits: usize) -> String {
    format!("embedding {bits}b")
}

/// What no candidate changes: the bytes outside the block linears and the embedding (the
/// norms, an untied head), and the part of a decode step that is not a linear's product (the
/// engine's measured step time on `tokens` minus the cold product times of all its linears,
/// head included; `NaN` when not timed).
pub fn measure_fixed(
    base: &Model,
    tokens: &[u32],
    timing: Option<EngineOptions>,
) -> anyhow::Result<Measured> {
    use crate::eval::latency::{DECODE_PROMPT, DECODE_STEPS, ROUNDS, measure_decode};
    let seconds = match timing {
        Some(timing) => {
            let engine = crate::engine::Engine::new(&base.transformer, timing)?;
            let (tok_s, _) = measure_decode(&engine, tokens, DECODE_PROMPT, DECODE_STEPS, ROUNDS)?;
            let mut timer = ProductTimer::new(timing);
            let products: f64 = engine
                .linears()
                .map(|(_, l)| timer.cold_seconds(l, TIMING_REPS))
                .sum();
            (1.0 / tok_s - products).max(0.0)
        }
        None => f64::NAN,
    };
    // Bytes outside the block linears and the embedding row: the norms (and an untied head).
    let t = &base.transformer;
    let linears: usize = t
        .linear_ids()
        .filter_map(|id| t.linear(id))
        .map(crate::model::LinearWeight::size_bytes)
        .sum();
    let bytes = t.size_bytes() - linears - embedding_bytes(base);
    Ok(Measured {
        layer: FIXED_LAYER.into(),
        candidate: DENSE.into(),
        kld: 0.0,
        nll_delta: 0.0,
        base_bytes: bytes,
        bytes,
        seconds,
    })
}
