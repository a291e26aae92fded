//! Training a Llama-family transformer from scratch or from a checkpoint, with candle's
//! autograd and AdamW, through the very forward pass evaluation uses (its `Autograd` kernels).

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer as _;
use candle_nn::optim::{AdamW, ParamsAdamW};

use crate::model::{Block, Kernels, LinearWeight, LlamaConfig, NoHook, Transformer};
use crate::rng::Rng;

/// Optimisation settings of one training run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainOptions {
    pub steps: usize,
    pub batch: usize,
    pub seq_len: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub seed: u64,
}

/// A freshly initialised transformer (GPT-2 style: N(0, 0.02), residual projections scaled
/// down by √(2·layers), unit norm gains); embeddings are tied.
pub fn init_transformer(config: &LlamaConfig, seed: u64) -> candle_core::Result<Transformer> {
    let mut rng = Rng::new(seed);
    let dev = Device::Cpu;
    let std = 0.02;
    let resid_std = std / (2.0 * config.num_layers as f64).sqrt();
    let mut mat = |rows: usize, cols: usize, s: f64| {
        Tensor::from_vec(rng.normals(rows * cols, s), (rows, cols), &dev)
    };
    let (d, ff, hd) = (
        config.hidden_size,
        config.intermediate_size,
        config.head_dim,
    );
    let (q, kv) = (config.num_heads * hd, config.num_kv_heads * hd);
    let token_embd = mat(config.vocab_size, d, std)?;
    let mut blocks = Vec::with_capacity(config.num_layers);
    for _ in 0..config.num_layers {
        blocks.push(Block {
            attn_norm: Tensor::ones(d, DType::F32, &dev)?,
            attn_q: LinearWeight::dense(mat(q, d, std)?, None),
            attn_k: LinearWeight::dense(mat(kv, d, std)?, None),
            attn_v: LinearWeight::dense(mat(kv, d, std)?, None),
            attn_output: LinearWeight::dense(mat(d, q, resid_std)?, None),
            ffn_norm: Tensor::ones(d, DType::F32, &dev)?,
            ffn_gate: LinearWeight::dense(mat(ff, d, std)?, None),
            ffn_up: LinearWeight::dense(mat(ff, d, std)?, None),
            ffn_down: LinearWeight::dense(mat(d, ff, resid_std)?, None),
        });
    }
    let mut config = config.clone();
    config.tie_word_embeddings = true;
    Ok(Transformer {
        rope_inv_freq: config.rope_inv_freq(),
        output: LinearWeight::dense(token_embd.clone(), None),
        output_norm: Tensor::ones(d, DType::F32, &dev)?,
        token_embd,
        blocks,
        config,
        kernels: Kernels::Fast,
    })
}

/// Token stream cut into lines, so training windows can start at a line start (where task
/// prompts start at evaluation time).
pub struct TokenStream {
    pub tokens: Vec<u32>,
    pub line_starts: Vec<usize>,
    /// How much predicting each token counts in the loss: 0 for tokens left out (see
    /// `zoo::LossOn`), less than 1 for `lang` tokens in a fine-tune that weights them down.
    pub loss_weight: Vec<f32>,
}

/// Replaces every weight of `t` by a trainable variable and returns the variables (the tied
/// head shares the embedding's variable).
fn make_trainable(t: &mut Transformer) -> candle_core::Result<Vec<Var>> {
    let mut vars = Vec::new();
    let mut var = |x: &mut Tensor| -> candle_core::Result<()> {
        let v = Var::from_tensor(x)?;
        *x = v.as_tensor().clone();
        vars.push(v);
        Ok(())
    };
    var(&mut t.token_embd)?;
    var(&mut t.output_norm)?;
    for b in &mut t.blocks {
        var(&mut b.attn_norm)?;
        var(&mut b.ffn_norm)?;
        for kind in crate::model::LinearKind::ALL {
            let LinearWeight::Dense { weight, bias } = b.linear_mut(kind) else {
                candle_core::bail!("only dense layers can be trained");
            };
            var(weight)?;
            if let Some(bias) = bias {
                var(bias)?;
            }
        }
    }
    if t.config.tie_word_embeddings {
        t.output = LinearWeight::dense(t.token_embd.clone(), None);
    } else {
        let LinearWeight::Dense { weight, .. } = &mut t.output else {
            candle_core::bail!("only a dense head can be trained");
        };
        var(weight)?;
    }
    Ok(vars)
}

/// Turns trained variables back into plain tensors (no gradient tracking).
fn freeze(t: &mut Transformer) {
    let fix = |x: &mut Tensor| *x = x.detach();
    fix(&mut t.token_embd);
    fix(&mut t.output_norm);
    for b in &mut t.blocks {
        fix(&mut b.attn_norm);
        fix(&mut b.ffn_norm);
        for kind in crate::model::LinearKind::ALL {
            if let LinearWeight::Dense { weight, bias } = b.linear_mut(kind) {
                fix(weight);
                if let Some(bias) = bias {
                    fix(bias);
                }
            }
        }
    }
    if let LinearWeight::Dense { weight, .. } = &mut t.output {
        fix(weight);
    }
    if t.config.tie_word_embeddings {
        t.output = LinearWeight::dense(t.token_embd.clone(), None);
    }
}

/// Trains `t` in place with next-token cross-entropy on windows of `data` that begin at line
/// starts (prefixed by `bos`). `progress(step, loss)` returning `false` stops early.
/// Returns the loss of every step.
pub fn train(
    t: &mut Transformer,
    data: &TokenStream,
    bos: u32,
    opts: &TrainOptions,
    progress: &mut dyn FnMut(usize, f32) -> bool,
) -> anyhow::Result<Vec<f32>> {
    let window = opts.seq_len;
    anyhow::ensure!(
        data.tokens.len() > 4 * window,
        "training data has {} tokens, fewer than 4 windows of {window}",
        data.tokens.len()
    );
    anyhow::ensure!(
        data.loss_weight.len() == data.tokens.len(),
        "loss weights have {} entries for {} tokens",
        data.loss_weight.len(),
        data.tokens.len()
    );
    let starts: Vec<usize> = data
        .line_starts
        .iter()
        .copied()
        .filter(|&s| s + window <= data.tokens.len())
        .collect();
    let vars = make_trainable(t)?;
    t.kernels = Kernels::Autograd;
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: opts.lr,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: opts.weight_decay,
        },
    )?;
    let mut rng = Rng::new(opts.seed ^ 0x7a11_5eed);
    let mut losses = Vec::with_capacity(opts.steps);
    let result = (|| -> anyhow::Result<()> {
        for step in 0..opts.steps {
            opt.set_learning_rate(lr_at(opts, step));
            let mut inputs = Vec::with_capacity(opts.batch * window);
            let mut targets = Vec::with_capacity(opts.batch * window);
            let mut weights = Vec::with_capacity(opts.batch * window);
            for _ in 0..opts.batch {
                let s = *rng.pick(&starts);
                inputs.push(bos);
                inputs.extend_from_slice(&data.tokens[s..s + window - 1]);
                targets.extend_from_slice(&data.tokens[s..s + window]);
                weights.extend_from_slice(&data.loss_weight[s..s + window]);
            }
            let ids = Tensor::from_vec(inputs, (opts.batch, window), &Device::Cpu)?;
            let targets = Tensor::from_vec(targets, opts.batch * window, &Device::Cpu)?;
            let logits = t.forward_batch(&ids, None, &mut NoHook, 0)?;
            let loss = weighted_cross_entropy(&logits, &targets, &weights)?;
            opt.backward_step(&loss)?;
            let loss = loss.to_scalar::<f32>()?;
            anyhow::ensure!(loss.is_finite(), "loss became {loss} at step {step}");
            losses.push(loss);
            if !progress(step + 1, loss) {
                break;
            }
        }
        Ok(())
    })();
    t.kernels = Kernels::Fast;
    freeze(t);
    result.map(|()| losses)
}

/// Weighted mean of the next-token cross-entropy, `Σ wᵢ·CEᵢ / Σ wᵢ`. With every weight 1 it is
/// candle's plain cross-entropy, so language-only training is the same computation as without
/// weights; with 0/1 weights it is the mean over the targets that count.
fn weighted_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    weights: &[f32],
) -> candle_core::Result<Tensor> {
    if weights.iter().all(|&w| w == 1.0) {
        return candle_nn::loss::cross_entropy(logits, targets);
    }
    let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    if total <= 0.0 {
        candle_core::bail!("no target in the batch counts in the loss");
    }
    let weights = Tensor::from_slice(weights, weights.len(), logits.device())?;
    let log_probs = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
    let picked = log_probs.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    (picked * weights)?.sum_all()?.affine(-1.0 / total, 0.0)
}

/// Linear warm-up, then cosine decay to a tenth of the peak rate.
fn lr_at(opts: &TrainOptions, step: usize) -> f64 {
    if step < opts.warmup_steps {
        return opts.lr * (step + 1) as f64 / opts.warmup_steps as f64;
    }
    let span = (opts.steps - opts.warmup_steps).max(1) as f64;
    let progress = (step - opts.warmup_steps) as f64 / span;
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    opts.lr * (0.1 + 0.9 * cosine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_loss_is_the_weighted_mean_over_targets() -> candle_core::Result<()> {
        let logits: Vec<f32> = (0..6 * 5).map(|i| ((i * 7) % 11) as f32 * 0.3).collect();
        let logits = Tensor::from_vec(logits, (6, 5), &Device::Cpu)?;
        let targets = Tensor::new(&[0u32, 3, 1, 4, 2, 2], &Device::Cpu)?;
        let plain_over = |rows: &[u32]| -> candle_core::Result<f32> {
            let rows = Tensor::new(rows, &Device::Cpu)?;
            candle_nn::loss::cross_entropy(
                &logits.index_select(&rows, 0)?,
                &targets.index_select(&rows, 0)?,
            )?
            .to_scalar::<f32>()
        };
        let loss = |w: &[f32]| weighted_cross_entropy(&logits, &targets, w)?.to_scalar::<f32>();
        // 0/1 weights: the mean over the rows that count.
        let masked = loss(&[1.0, 0.0, 1.0, 1.0, 0.0, 1.0])?;
        let expected = plain_over(&[0, 2, 3, 5])?;
        assert!((masked - expected).abs() < 1e-6, "{masked} vs {expected}");
        // Weights 1:2:1 count the middle row twice.
        let weighted = loss(&[0.5, 0.0, 1.0, 0.5, 0.0, 0.0])?;
        let expected = plain_over(&[0, 2, 2, 3])?;
        assert!(
            (weighted - expected).abs() < 1e-6,
            "{weighted} vs {expected}"
        );
        assert_eq!(loss(&[1.0; 6])?, plain_over(&[0, 1, 2, 3, 4, 5])?);
        assert!(weighted_cross_entropy(&logits, &targets, &[0.0; 6]).is_err());
        Ok(())
    }
}
