//! Perplexity with the windowing of llama.cpp's `llama-perplexity`, so our numbers and theirs
//! agree on the same file: the token stream is cut into `ctx`-token chunks, each evaluated from
//! scratch with its first token replaced by BOS (when the model uses one), and only the second
//! half of each chunk is scored. With a base model, the llama.cpp `--kl-divergence` set is
//! computed on the same positions.

use std::time::Instant;

use anyhow::Context as _;

use rayon::prelude::*;

use candle_core::Tensor;

use crate::engine::{Engine, EngineOptions, PoolKind, Prefill};
use crate::eval::generate::argmax;
use crate::model::{Model, NoHook};

/// Windowing options, named as `llama-perplexity` names them.
#[derive(Debug, Clone, Copy)]
pub struct PerplexityOptions {
    /// Tokens per chunk (`--ctx-size`).
    pub ctx: usize,
    /// Evaluate at most this many chunks (`--chunks`); all when `None`.
    pub chunks: Option<usize>,
}

/// Tokens per chunk when a run, an evaluation or an export names none.
pub const DEFAULT_CTX: usize = 512;

impl PerplexityOptions {
    /// The context an evaluation uses: the one asked for, else [`DEFAULT_CTX`] or the model's
    /// whole context if that is shorter. The one rule `eval`, `run`, jobs and exports share.
    pub fn ctx_or_default(requested: Option<usize>, max_position_embeddings: usize) -> usize {
        requested.unwrap_or_else(|| DEFAULT_CTX.min(max_position_embeddings))
    }
}

/// KL divergence of the model's next-token distribution from the base model's.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct KldReport {
    pub kld_mean: f64,
    pub kld_stderr: f64,
    pub kld_median: f64,
    pub kld_p99: f64,
    /// Fraction (0–1) of positions where both models' most likely token agree.
    pub top1_agree: f64,
    /// Root mean square of the change in the probability of the correct token (0–1 scale).
    pub rms_dp: f64,
}

/// Result of a perplexity run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PerplexityReport {
    pub ppl: f64,
    /// Standard error of the perplexity, as llama.cpp prints after `±`.
    pub ppl_stderr: f64,
    pub nll_mean: f64,
    /// Scored tokens.
    pub tokens: usize,
    pub chunks: usize,
    pub ctx: usize,
    pub seconds: f64,
    #[serde(flatten)]
    pub kld: Option<KldReport>,
}

/// Per-row log-probabilities of `rows × vocab` logits, computed in f64 sums for stability.
fn log_softmax_rows(logits: &mut [f32], vocab: usize) {
    logits.par_chunks_mut(vocab).for_each(|row| {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Exponentials in f32 (shifted by the max, so in (0, 1]), summed in f64.
        let sum: f64 = row.iter().map(|&v| f64::from((v - max).exp())).sum();
        let lse = max + sum.ln() as f32;
        for v in row.iter_mut() {
            *v -= lse;
        }
    });
}

/// Mean and standard error of the mean.
fn mean_stderr(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// The `q` quantile (0–1) of sorted values, nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Which forward pass scores the windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// The engine's many-row pass on the CPU, the tensor forward on a GPU.
    Auto,
    /// Always the tensor forward (the reference; `bench eval --tensor` times it beside).
    Tensor,
}

/// Runs the perplexity evaluation. `progress(done, total)` is called after each chunk; when it
/// returns `false` the run stops with an error saying it was cancelled.
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    opts: PerplexityOptions,
    base: Option<&Model>,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> anyhow::Result<PerplexityReport> {
    perplexity_with(model, tokens, opts, base, Forward::Auto, progress)
}

/// [`perplexity`] on the forward pass `forward` names.
pub fn perplexity_with(
    model: &Model,
    tokens: &[u32],
    opts: PerplexityOptions,
    base: Option<&Model>,
    forward: Forward,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> anyhow::Result<PerplexityReport> {
    let mut reports = perplexity_each(
        model,
        &[("", tokens)],
        opts,
        base,
        forward,
        &mut |_, done, total| progress(done, total),
    )?;
    Ok(reports.remove(0))
}

/// [`perplexity_with`] on each of `texts` (`(name, tokens)`), with the engines (and a packed
/// model's weights decoded for the many-row pass) built once for all of them. `progress(text,
/// done, total)` runs over each text's chunks. A text too short for `opts` is an error before
/// any is scored; a text's error is in the context of its name (none when empty). Each
/// report's seconds are its own scoring; the first's include building the engines.
pub fn perplexity_each(
    model: &Model,
    texts: &[(&str, &[u32])],
    opts: PerplexityOptions,
    base: Option<&Model>,
    forward: Forward,
    progress: &mut dyn FnMut(usize, usize, usize) -> bool,
) -> anyhow::Result<Vec<PerplexityReport>> {
    let ctx = opts.ctx;
    anyhow::ensure!(ctx >= 4, "context size {ctx} is too small (at least 4)");
    for (name, tokens) in texts {
        anyhow::ensure!(
            tokens.len() >= 2 * ctx,
            "{} has {} tokens; perplexity with ctx {ctx} needs at least {} (2 × ctx, as \
             llama-perplexity)",
            if name.is_empty() { "the text" } else { name },
            tokens.len(),
            2 * ctx
        );
    }
    anyhow::ensure!(
        opts.chunks != Some(0),
        "--chunks 0 scores nothing; give at least 1"
    );
    let vocab = model.config().vocab_size;
    if let Some(b) = base {
        anyhow::ensure!(
            b.config().vocab_size == vocab,
            "base model vocabulary ({}) differs from the model's ({vocab})",
            b.config().vocab_size
        );
    }
    let mut start_time = Instant::now();
    let engine_for = |m: &Model| match forward {
        Forward::Auto => Scorer::engine_for(m),
        Forward::Tensor => Ok(None),
    };
    let engines = (engine_for(model)?, base.map(engine_for).transpose()?);
    let prefills = (
        engines.0.as_ref().map(Prefill::kept),
        engines
            .1
            .as_ref()
            .and_then(|e| e.as_ref().map(Prefill::kept)),
    );
    let ours = Scorer::new(model, prefills.0.as_ref());
    let theirs = base.map(|b| Scorer::new(b, prefills.1.as_ref()));
    let mut reports = Vec::with_capacity(texts.len());
    for (i, (name, tokens)) in texts.iter().enumerate() {
        let r = score_text(
            &ours,
            theirs.as_ref(),
            tokens,
            opts,
            start_time,
            &mut |d, t| progress(i, d, t),
        );
        reports.push(if name.is_empty() {
            r?
        } else {
            r.with_context(|| name.to_string())?
        });
        start_time = Instant::now();
    }
    Ok(reports)
}

/// One text's windows scored by `ours` (and `theirs`, the base, for the KL divergence), its
/// time counted from `start_time`.
fn score_text(
    ours: &Scorer<'_>,
    theirs: Option<&Scorer<'_>>,
    tokens: &[u32],
    opts: PerplexityOptions,
    start_time: Instant,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> anyhow::Result<PerplexityReport> {
    let model = ours.model();
    let (ctx, vocab) = (opts.ctx, model.config().vocab_size);
    let available = tokens.len() / ctx;
    let n_chunks = opts.chunks.map_or(available, |c| c.min(available));
    let first = ctx / 2;
    let scored_per_chunk = ctx - 1 - first;
    let bos = model
        .tokenizer
        .add_bos
        .then_some(model.tokenizer.bos_id)
        .flatten();
    let mut nll = Vec::with_capacity(n_chunks * scored_per_chunk);
    let mut kld = Vec::new();
    let mut same_top = 0usize;
    let mut dp_sq = 0.0f64;
    for chunk in 0..n_chunks {
        let mut window = tokens[chunk * ctx..(chunk + 1) * ctx].to_vec();
        if let Some(b) = bos {
            window[0] = b;
        }
        let targets = &window[first + 1..];
        let hidden = ours.hidden(&window, first, scored_per_chunk)?;
        let base_hidden = match theirs {
            Some(b) => Some(b.hidden(&window, first, scored_per_chunk)?),
            None => None,
        };
        for row0 in (0..scored_per_chunk).step_by(HEAD_ROWS) {
            let rows = HEAD_ROWS.min(scored_per_chunk - row0);
            let targets = &targets[row0..row0 + rows];
            let logp = ours.log_probs(&hidden, row0, rows)?;
            for (row, &target) in logp.chunks(vocab).zip(targets) {
                nll.push(-f64::from(row[target as usize]));
            }
            let (Some(b), Some(bh)) = (theirs, &base_hidden) else {
                continue;
            };
            let base_logp = b.log_probs(bh, row0, rows)?;
            for ((row, brow), &target) in
                logp.chunks(vocab).zip(base_logp.chunks(vocab)).zip(targets)
            {
                let mut k = 0.0f64;
                for (&lm, &lb) in row.iter().zip(brow) {
                    k += f64::from(lb.exp() * (lb - lm));
                }
                kld.push(k.max(0.0));
                if argmax(row) == argmax(brow) {
                    same_top += 1;
                }
                let t = target as usize;
                let dp = f64::from(row[t].exp()) - f64::from(brow[t].exp());
                dp_sq += dp * dp;
            }
        }
        if !progress(chunk + 1, n_chunks) {
            anyhow::bail!("cancelled after {} of {n_chunks} chunks", chunk + 1);
        }
    }
    let (nll_mean, nll_stderr) = mean_stderr(&nll);
    let ppl = nll_mean.exp();
    let kld = (!kld.is_empty()).then(|| {
        let (kld_mean, kld_stderr) = mean_stderr(&kld);
        let mut sorted = kld.clone();
        sorted.sort_by(f64::total_cmp);
        KldReport {
            kld_mean,
            kld_stderr,
            kld_median: quantile(&sorted, 0.5),
            kld_p99: quantile(&sorted, 0.99),
            top1_agree: same_top as f64 / kld.len() as f64,
            rms_dp: (dp_sq / kld.len() as f64).sqrt(),
        }
    });
    Ok(PerplexityReport {
        ppl,
        ppl_stderr: ppl * nll_stderr,
        nll_mean,
        tokens: nll.len(),
        chunks: n_chunks,
        ctx,
        seconds: start_time.elapsed().as_secs_f64(),
        kld,
    })
}

/// Rows of the LM head evaluated at once: small enough that the logits block stays in
/// cache-friendly, reused memory instead of a fresh `positions × vocab` matrix per chunk.
const HEAD_ROWS: usize = 128;

/// Where a window's log-probabilities come from: on the CPU the engine's many-row pass over
/// the model's stored forms ([`Prefill`]), elsewhere (a GPU) the tensor forward.
enum Scorer<'a> {
    Engine(&'a Model, &'a Prefill<'a>),
    Tensor(&'a Model),
}

/// A window's final hidden states at the scored positions, as the scorer holds them.
enum Hidden {
    Rows(Vec<f32>),
    Tensor(Tensor),
}

impl<'a> Scorer<'a> {
    /// The engine a CPU model is scored on (threads: rayon's, which its products run on).
    fn engine_for(model: &Model) -> anyhow::Result<Option<Engine>> {
        if !model.transformer.device().is_cpu() {
            return Ok(None);
        }
        let opts = EngineOptions {
            pool: PoolKind::Rayon,
            ..EngineOptions::default()
        };
        Ok(Some(Engine::new(&model.transformer, opts)?))
    }

    fn new(model: &'a Model, prefill: Option<&'a Prefill<'a>>) -> Self {
        match prefill {
            Some(p) => Self::Engine(model, p),
            None => Self::Tensor(model),
        }
    }

    fn model(&self) -> &Model {
        match self {
            Self::Engine(m, _) | Self::Tensor(m) => m,
        }
    }

    /// Final hidden states `[scored, hidden]` of positions `first..first + scored` of one window.
    fn hidden(&self, window: &[u32], first: usize, scored: usize) -> anyhow::Result<Hidden> {
        match self {
            Self::Engine(_, p) => {
                let mut h = p.hidden(window, first)?;
                h.truncate(scored * p.engine().hidden_size());
                Ok(Hidden::Rows(h))
            }
            Self::Tensor(model) => {
                let ids =
                    Tensor::new(window, model.transformer.token_embd.device())?.unsqueeze(0)?;
                Ok(Hidden::Tensor(
                    model
                        .transformer
                        .forward_hidden(&ids, None, &mut NoHook, first)?
                        .narrow(0, 0, scored)?,
                ))
            }
        }
    }

    /// Log-probabilities `[rows × vocab]` of hidden rows `row0..row0 + rows`.
    fn log_probs(&self, hidden: &Hidden, row0: usize, rows: usize) -> anyhow::Result<Vec<f32>> {
        let mut v = match (self, hidden) {
            (Self::Engine(_, p), Hidden::Rows(h)) => {
                let d = p.engine().hidden_size();
                let mut logits = Vec::new();
                p.logits(&h[row0 * d..(row0 + rows) * d], &mut logits);
                logits
            }
            (Self::Tensor(m), Hidden::Tensor(h)) => m
                .transformer
                .head(&h.narrow(0, row0, rows)?)?
                .flatten_all()?
                .to_vec1::<f32>()?,
            _ => unreachable!("a scorer reads the hidden states it made"),
        };
        let model = self.model();
        // Finite logits always give finite log-probabilities; anything else is a broken model,
        // and a NaN must fail the measurement, not turn into a perplexity or a KL divergence of 0.
        let vocab = model.config().vocab_size;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            anyhow::bail!(
                "{}: non-finite logit ({}) at scored position {}: the model's weights or activations \
                 overflowed, so no metric of it is meaningful",
                model.name,
                v[i],
                row0 + i / vocab
            );
        }
        log_softmax_rows(&mut v, vocab);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_rows_normalise() {
        let mut v = vec![1.0f32, 2.0, 3.0, -1.0, 0.0, 1000.0];
        log_softmax_rows(&mut v, 3);
        for row in v.chunks(3) {
            let total: f64 = row.iter().map(|&x| f64::from(x).exp()).sum();
            assert!((total - 1.0).abs() < 1e-6, "{row:?}");
        }
    }

    #[test]
    fn stderr_of_constant_is_zero() {
        assert_eq!(mean_stderr(&[2.0, 2.0, 2.0]), (2.0, 0.0));
        let (m, s) = mean_stderr(&[1.0, 3.0]);
        assert_eq!(m, 2.0);
        assert!((s - 1.0).abs() < 1e-12);
    }
}
