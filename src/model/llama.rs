//! The Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2), following the Hugging Face
//! `modeling_llama.py` reference: RMSNorm, rotate-half RoPE, grouped-query attention with a
//! causal mask and a KV cache, SwiGLU MLP.
//!
//! Every linear goes through [`LinearWeight`], and every linear input is offered to a
//! [`ForwardHook`], so calibration statistics come from this same code path.

use candle_core::{Device, Module, Result, Tensor};

use super::config::LlamaConfig;
use super::kernels;
use super::linear::LinearWeight;
use super::names::{LinearId, LinearKind};

/// Observes the forward pass. Both methods default to doing nothing.
pub trait ForwardHook {
    /// Called with the `[tokens, in]` input of every linear layer before it is applied.
    fn linear_input(&mut self, _id: LinearId, _x: &Tensor) -> Result<()> {
        Ok(())
    }

    /// Whether the caller uses the block's output. A hook that only gathers linear inputs
    /// returns `false`, and the block then skips its last product (the MLP down projection,
    /// whose input the hook has already seen) and returns a tensor that is *not* the block
    /// output.
    fn wants_output(&self) -> bool {
        true
    }
}

/// The hook that observes nothing.
pub struct NoHook;

impl ForwardHook for NoHook {}

/// One transformer block.
#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: Tensor,
    pub attn_q: LinearWeight,
    pub attn_k: LinearWeight,
    pub attn_v: LinearWeight,
    pub attn_output: LinearWeight,
    pub ffn_norm: Tensor,
    pub ffn_gate: LinearWeight,
    pub ffn_up: LinearWeight,
    pub ffn_down: LinearWeight,
}

impl Block {
    pub fn linear(&self, kind: LinearKind) -> &LinearWeight {
        match kind {
            LinearKind::AttnQ => &self.attn_q,
            LinearKind::AttnK => &self.attn_k,
            LinearKind::AttnV => &self.attn_v,
            LinearKind::AttnOutput => &self.attn_output,
            LinearKind::FfnGate => &self.ffn_gate,
            LinearKind::FfnUp => &self.ffn_up,
            LinearKind::FfnDown => &self.ffn_down,
        }
    }

    pub fn linear_mut(&mut self, kind: LinearKind) -> &mut LinearWeight {
        match kind {
            LinearKind::AttnQ => &mut self.attn_q,
            LinearKind::AttnK => &mut self.attn_k,
            LinearKind::AttnV => &mut self.attn_v,
            LinearKind::AttnOutput => &mut self.attn_output,
            LinearKind::FfnGate => &mut self.ffn_gate,
            LinearKind::FfnUp => &mut self.ffn_up,
            LinearKind::FfnDown => &mut self.ffn_down,
        }
    }
}

/// Keys and values of the tokens seen so far, per block, as `[batch, kv_heads, seq, head_dim]`.
#[derive(Debug, Default, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// Number of positions already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The weights of a Llama-family decoder plus its configuration.
#[derive(Debug, Clone)]
pub struct Transformer {
    pub config: LlamaConfig,
    pub token_embd: Tensor,
    pub blocks: Vec<Block>,
    pub output_norm: Tensor,
    /// The LM head; shares its tensor with `token_embd` when embeddings are tied.
    pub output: LinearWeight,
    /// RoPE inverse frequencies (`head_dim / 2`), scaling already applied.
    pub rope_inv_freq: Vec<f32>,
    pub kernels: Kernels,
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    batch: usize,
    seq: usize,
}

/// What every block of one forward call shares.
struct BlockCtx<'a> {
    index: usize,
    shape: Shape,
    cos: &'a Tensor,
    sin: &'a Tensor,
}

/// Which kernels the forward pass uses for norms, RoPE and softmax.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kernels {
    /// candle's fused CPU kernels (no gradients): evaluation and inference.
    #[default]
    Fast,
    /// The same maths from primitive ops that candle can differentiate: training.
    Autograd,
}

impl Transformer {
    /// Runs `tokens` (continuing after whatever `cache` holds) and returns the logits
    /// `[tokens.len() - logits_from, vocab]` of positions `logits_from..`. Skipping the head
    /// for positions nobody scores saves a large share of the work in perplexity runs.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: Option<&mut KvCache>,
        hook: &mut dyn ForwardHook,
        logits_from: usize,
    ) -> Result<Tensor> {
        let ids = Tensor::new(tokens, self.token_embd.device())?.unsqueeze(0)?;
        self.forward_batch(&ids, cache, hook, logits_from)
    }

    /// Batched form of [`Self::forward`]: `ids` is `[batch, seq]`; returns
    /// `[batch * (seq - logits_from), vocab]`, sequence-major.
    pub fn forward_batch(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        hook: &mut dyn ForwardHook,
        logits_from: usize,
    ) -> Result<Tensor> {
        let h = self.forward_hidden(ids, cache, hook, logits_from)?;
        self.head(&h)
    }

    /// The LM head: final hidden states `[rows, hidden]` to logits `[rows, vocab]`. Callers
    /// that only reduce the logits (perplexity) apply it a few rows at a time, so the
    /// `rows × vocab` matrix never exists at once.
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.output.forward(hidden)
    }

    /// Everything but the head: the final-normed hidden states
    /// `[batch * (seq - from), hidden]` of positions `from..`.
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        hook: &mut dyn ForwardHook,
        logits_from: usize,
    ) -> Result<Tensor> {
        let (b, n) = ids.dims2()?;
        if n == 0 || logits_from >= n {
            candle_core::bail!("forward: {n} tokens, logits requested from {logits_from}");
        }
        let device = self.token_embd.device();
        let pos0 = cache.as_ref().map_or(0, |c| c.len);
        let mut h = self.embed(ids)?;
        let (cos, sin) = self.rope_tables(pos0, n, device)?;
        if let Some(c) = cache.as_deref_mut() {
            c.layers.resize(self.blocks.len(), None);
        }
        let shape = Shape { batch: b, seq: n };
        for (i, block) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let ctx = BlockCtx {
                index: i,
                shape,
                cos: &cos,
                sin: &sin,
            };
            h = self.block_forward(block, &h, &ctx, layer_cache, hook)?;
        }
        if let Some(c) = cache {
            c.len += n;
        }
        let d = self.config.hidden_size;
        let h = h
            .reshape((b, n, d))?
            .narrow(1, logits_from, n - logits_from)?
            .reshape((b * (n - logits_from), d))?;
        self.final_norm(&h)
    }

    /// The norm between the last block and the head: with [`Self::run_block`] and
    /// [`Self::head`], the forward pass in pieces (what re-scoring from a cached block input
    /// uses).
    pub fn final_norm(&self, h: &Tensor) -> Result<Tensor> {
        self.rms_norm(h, &self.output_norm)
    }

    /// Token embeddings `[batch * seq, hidden]` of `ids` `[batch, seq]`: the input of block 0.
    /// The ids may live on any device; they are looked up where the embedding lives.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let ids = ids.flatten_all()?.to_device(self.token_embd.device())?;
        self.token_embd.index_select(&ids, 0)
    }

    /// The device the forward pass runs on (the embedding's).
    pub fn device(&self) -> &Device {
        self.token_embd.device()
    }

    /// This transformer with every tensor on `device` (packed layers: see
    /// [`LinearWeight::to_device`]). Tensors already there are shared, not copied.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        self.map_weights(device, LinearWeight::to_device)
    }

    /// This transformer as an evaluation on `device` runs it: on a GPU every packed layer
    /// densified there (see [`LinearWeight::densified_on`]). Its `size_bytes` is then that of
    /// the dense copies; sizes are taken from the stored form before this.
    pub fn densified_on(&self, device: &Device) -> Result<Self> {
        self.map_weights(device, LinearWeight::densified_on)
    }

    fn map_weights(
        &self,
        device: &Device,
        linear: fn(&LinearWeight, &Device) -> Result<LinearWeight>,
    ) -> Result<Self> {
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                Ok(Block {
                    attn_norm: b.attn_norm.to_device(device)?,
                    attn_q: linear(&b.attn_q, device)?,
                    attn_k: linear(&b.attn_k, device)?,
                    attn_v: linear(&b.attn_v, device)?,
                    attn_output: linear(&b.attn_output, device)?,
                    ffn_norm: b.ffn_norm.to_device(device)?,
                    ffn_gate: linear(&b.ffn_gate, device)?,
                    ffn_up: linear(&b.ffn_up, device)?,
                    ffn_down: linear(&b.ffn_down, device)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: self.config.clone(),
            token_embd: self.token_embd.to_device(device)?,
            blocks,
            output_norm: self.output_norm.to_device(device)?,
            output: linear(&self.output, device)?,
            rope_inv_freq: self.rope_inv_freq.clone(),
            kernels: self.kernels,
        })
    }

    /// Runs block `index` alone on hidden states `[batch * seq, hidden]` of sequences that
    /// start at position 0, as calibration does: block by block, over the outputs of the
    /// (already compressed) blocks before it.
    pub fn run_block(
        &self,
        index: usize,
        h: &Tensor,
        batch: usize,
        seq: usize,
        hook: &mut dyn ForwardHook,
    ) -> Result<Tensor> {
        let Some(block) = self.blocks.get(index) else {
            candle_core::bail!("block {index} of {}", self.blocks.len());
        };
        let (cos, sin) = self.rope_tables(0, seq, h.device())?;
        let ctx = BlockCtx {
            index,
            shape: Shape { batch, seq },
            cos: &cos,
            sin: &sin,
        };
        self.block_forward(block, h, &ctx, None, hook)
    }

    fn rms_norm(&self, x: &Tensor, gain: &Tensor) -> Result<Tensor> {
        let eps = self.config.rms_norm_eps as f32;
        match self.kernels {
            Kernels::Fast => candle_nn::ops::rms_norm(x, gain, eps),
            Kernels::Autograd => candle_nn::ops::rms_norm_slow(x, gain, eps),
        }
    }

    /// Rotate-half RoPE on `[batch, seq, heads, head_dim]`.
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        match self.kernels {
            Kernels::Fast => candle_nn::rotary_emb::rope_thd(&x.contiguous()?, cos, sin),
            Kernels::Autograd => {
                let (_, n, _, hd) = x.dims4()?;
                let half = hd / 2;
                let cos = cos.reshape((1, n, 1, half))?;
                let sin = sin.reshape((1, n, 1, half))?;
                let x1 = x.narrow(3, 0, half)?;
                let x2 = x.narrow(3, half, half)?;
                let a = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
                let b = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
                Tensor::cat(&[a, b], 3)
            }
        }
    }

    fn block_forward(
        &self,
        block: &Block,
        h: &Tensor,
        ctx: &BlockCtx<'_>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        hook: &mut dyn ForwardHook,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let Shape { batch: b, seq: n } = ctx.shape;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let wants_output = hook.wants_output();
        let mut linear = |kind: LinearKind, x: &Tensor| -> Result<Tensor> {
            hook.linear_input(LinearId::new(ctx.index, kind), x)?;
            block.linear(kind).forward(x)
        };

        let x = self.rms_norm(h, &block.attn_norm)?;
        let q = linear(LinearKind::AttnQ, &x)?.reshape((b, n, nh, hd))?;
        let k = linear(LinearKind::AttnK, &x)?.reshape((b, n, nkv, hd))?;
        let v = linear(LinearKind::AttnV, &x)?.reshape((b, n, nkv, hd))?;
        let q = self.rope(&q, ctx.cos, ctx.sin)?;
        let k = self.rope(&k, ctx.cos, ctx.sin)?;
        // [batch, heads, seq, head_dim] layouts for batched matmuls over heads.
        let q = q.transpose(1, 2)?.contiguous()?;
        let mut k = k.transpose(1, 2)?.contiguous()?;
        let mut v = v.transpose(1, 2)?.contiguous()?;
        if let Some(slot) = cache {
            if let Some((k_old, v_old)) = slot.as_ref() {
                k = Tensor::cat(&[k_old, &k], 2)?;
                v = Tensor::cat(&[v_old, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let s = k.dim(2)?;
        let rep = nh / nkv;
        // Query heads that share a KV head are stacked along the sequence axis.
        let q = q.reshape((b, nkv, rep * n, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = q.matmul(&k.t()?)?;
        // The fused kernels are CPU code; other devices take the composed ops.
        let fused = self.kernels == Kernels::Fast && q.device().is_cpu();
        let probs = if fused {
            kernels::causal_softmax(&scores, n, s - n, scale as f32)?
        } else {
            let masked = (scores * scale)?
                .reshape((b, nkv, rep, n, s))?
                .broadcast_add(&causal_mask(s - n, n, q.device())?)?;
            candle_nn::ops::softmax(&masked, candle_core::D::Minus1)?.reshape((
                b,
                nkv,
                rep * n,
                s,
            ))?
        };
        let attn = probs
            .matmul(&v)?
            .reshape((b, nh, n, hd))?
            .transpose(1, 2)?
            .reshape((b * n, nh * hd))?;
        let h = (h + linear(LinearKind::AttnOutput, &attn)?)?;

        let x = self.rms_norm(&h, &block.ffn_norm)?;
        let gate = linear(LinearKind::FfnGate, &x)?;
        let up = linear(LinearKind::FfnUp, &x)?;
        let act = if fused {
            kernels::silu_mul(&gate, &up)?
        } else {
            (candle_nn::ops::silu(&gate)? * up)?
        };
        if !wants_output {
            // Statistics only: the down projection's input is all the hook needs.
            hook.linear_input(LinearId::new(ctx.index, LinearKind::FfnDown), &act)?;
            return Ok(h);
        }
        h + linear(LinearKind::FfnDown, &act)?
    }

    /// `cos`/`sin` tables `[n, head_dim / 2]` for positions `pos0..pos0 + n`.
    fn rope_tables(&self, pos0: usize, n: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.rope_inv_freq.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in pos0..pos0 + n {
            for &f in &self.rope_inv_freq {
                // Angles in f64: f32 loses precision at positions in the thousands.
                let a = p as f64 * f64::from(f);
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok((
            Tensor::from_vec(cos, (n, half), device)?,
            Tensor::from_vec(sin, (n, half), device)?,
        ))
    }

    /// Bytes of every weight: embeddings, norms, linears, and the head when untied. A tied head
    /// that was quantized (the recipe's `[embedding]` step) counts in its stored form instead of
    /// the f32 embedding: the embedding's rows are the head's rows, dequantized.
    pub fn size_bytes(&self) -> usize {
        let t = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                t(&b.attn_norm)
                    + t(&b.ffn_norm)
                    + LinearKind::ALL
                        .iter()
                        .map(|&k| b.linear(k).size_bytes())
                        .sum::<usize>()
            })
            .sum();
        // A tied head is the embedding matrix itself: counted once, in the head's stored form
        // (quantized or f16 by the `[embedding]` step, whose embedding looks its rows up in
        // the same values).
        let (embd, head) = if self.config.tie_word_embeddings {
            (self.output.size_bytes(), 0)
        } else {
            (t(&self.token_embd), self.output.size_bytes())
        };
        embd + blocks + t(&self.output_norm) + head
    }

    /// Every linear of every block, in forward order.
    pub fn linear_ids(&self) -> impl Iterator<Item = LinearId> + '_ {
        (0..self.blocks.len()).flat_map(|b| {
            LinearKind::ALL
                .into_iter()
                .map(move |k| LinearId::new(b, k))
        })
    }

    pub fn linear(&self, id: LinearId) -> Option<&LinearWeight> {
        self.blocks.get(id.block).map(|b| b.linear(id.kind))
    }
}

/// Additive mask `[n, pos0 + n]`: 0 where query `i` may see key `j`, `-inf` after it.
fn causal_mask(pos0: usize, n: usize, device: &Device) -> Result<Tensor> {
    let s = pos0 + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| (0..s).map(move |j| if j > pos0 + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (n, s), device)
}

/// Converts a Q/K projection from GGUF's interleaved-RoPE row order to HF's rotate-half order
/// (the inverse of the permutation `convert_hf_to_gguf.py` applies to llama models).
pub fn unpermute_qk(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let hd = rows / heads;
    w.reshape((heads, hd / 2, 2, cols))?
        .transpose(1, 2)?
        .reshape((rows, cols))?
        .contiguous()
}
