//! The inference engine: the model's own compressed forms run at the speed their bytes
//! allow, and where every latency the product reports comes from. Batch-1 decode is here;
//! many positions at once (prefill, perplexity and KL evaluation) are in `prefill.rs`.
//!
//! Plain buffers instead of tensors: activations, scratch and the KV cache are allocated once
//! per [`Decoder`], and a token is one pass of ~5 parallel sections per block (Q/K/V together,
//! attention over heads, the output projection, gate and up together, down), each split over
//! the threads by output rows. Every [`crate::model::LinearWeight`] form multiplies through its
//! own kernel on its packed storage (`linear.rs`), the LM head included, so a quantized head
//! runs quantized. The tensor forward (`model::llama`) stays the reference: calibration and
//! training use it, and the tests hold the engine's logits to it.

mod kv;
mod linear;
pub mod pool;
mod prefill;
pub mod rtn;

use std::cell::RefCell;

use anyhow::{Context as _, bail};

use crate::model::{LinearWeight, Transformer};

use kv::KvElem;
pub use kv::KvType;
pub use linear::{Kernel, Linear, Prepared};
pub use pool::{Pool, PoolKind};
pub use prefill::Prefill;

/// How the engine runs.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Threads a step is split over (the caller's included).
    pub threads: usize,
    pub pool: PoolKind,
    /// The KV cache's element type.
    pub kv: KvType,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            threads: rayon::current_num_threads(),
            pool: PoolKind::default(),
            kv: KvType::default(),
        }
    }
}

/// One block's weights in engine form.
struct Block {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Where a token's embedding row comes from.
enum Embedding {
    /// Its own f32 rows.
    Rows(Vec<f32>),
    /// The rows of the tied LM head, in the head's stored form.
    TiedHead,
}

/// A model ready for batch-1 decode.
pub struct Engine {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    /// Positions the model was trained for; the KV cache holds at most this many.
    ctx: usize,
    eps: f32,
    rope_inv_freq: Vec<f32>,
    embedding: Embedding,
    blocks: Vec<Block>,
    output_norm: Vec<f32>,
    head: Linear,
    pool: Pool,
    kv: KvType,
}

fn f32s(t: &candle_core::Tensor) -> anyhow::Result<Vec<f32>> {
    Ok(t.to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

impl Engine {
    /// The engine form of `t` (its packed layers are shared, dense ones copied to plain
    /// buffers). Needs every tensor on the CPU.
    pub fn new(t: &Transformer, opts: EngineOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(
            t.device().is_cpu(),
            "the decode engine runs on the CPU; the model is on {:?}",
            t.device()
        );
        let cfg = &t.config;
        let linear = |lw: &LinearWeight, what: &str| {
            Linear::new(lw).with_context(|| format!("preparing {what} for the decode engine"))
        };
        let blocks = t
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let name = |k: &str| format!("blk.{i}.{k}");
                Ok(Block {
                    attn_norm: f32s(&b.attn_norm)?,
                    ffn_norm: f32s(&b.ffn_norm)?,
                    q: linear(&b.attn_q, &name("attn_q"))?,
                    k: linear(&b.attn_k, &name("attn_k"))?,
                    v: linear(&b.attn_v, &name("attn_v"))?,
                    o: linear(&b.attn_output, &name("attn_output"))?,
                    gate: linear(&b.ffn_gate, &name("ffn_gate"))?,
                    up: linear(&b.ffn_up, &name("ffn_up"))?,
                    down: linear(&b.ffn_down, &name("ffn_down"))?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let head = linear(&t.output, "the LM head")?;
        // The head is the embedding when both are one tensor (tied weights, quantized or not)
        // and its form can hand out rows.
        let head_tensor = match &t.output {
            LinearWeight::Dense { weight, .. }
            | LinearWeight::Rtn {
                dequantized: weight,
                ..
            } => Some(weight.id()),
            _ => None,
        };
        let rows_from_head = matches!(
            head.kernel,
            Kernel::Dense(_) | Kernel::DenseF16(_) | Kernel::Rtn(_)
        );
        let embedding = if head_tensor == Some(t.token_embd.id()) && rows_from_head {
            Embedding::TiedHead
        } else {
            Embedding::Rows(f32s(&t.token_embd)?)
        };
        Ok(Self {
            hidden: cfg.hidden_size,
            heads: cfg.num_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            vocab: head.rows,
            ctx: cfg.max_position_embeddings.max(1),
            eps: cfg.rms_norm_eps as f32,
            rope_inv_freq: t.rope_inv_freq.clone(),
            embedding,
            blocks,
            output_norm: f32s(&t.output_norm)?,
            head,
            pool: Pool::new(opts.pool, opts.threads),
            kv: opts.kv,
        })
    }

    /// Threads a step runs on.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Width of the hidden state.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// The longest sequence the KV cache takes.
    pub fn context_length(&self) -> usize {
        self.ctx
    }

    /// Every linear layer with its block (`None`: the head), for tables.
    pub fn linears(&self) -> impl Iterator<Item = (Option<usize>, &Linear)> {
        self.blocks
            .iter()
            .enumerate()
            .flat_map(|(i, b)| {
                [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down].map(move |l| (Some(i), l))
            })
            .chain(std::iter::once((None, &self.head)))
    }

    /// Weight bytes one decode step reads: every linear, the norms and one embedding row
    /// (the KV cache comes on top and grows with the position).
    pub fn weight_bytes_per_token(&self) -> usize {
        let norms: usize = self
            .blocks
            .iter()
            .map(|b| (b.attn_norm.len() + b.ffn_norm.len()) * 4)
            .sum::<usize>()
            + self.output_norm.len() * 4;
        let embedding_row = match &self.embedding {
            Embedding::Rows(_) => self.hidden * 4,
            Embedding::TiedHead => self.head.bytes() / self.head.rows.max(1),
        };
        self.linears().map(|(_, l)| l.bytes()).sum::<usize>() + norms + embedding_row
    }

    /// Token `token`'s embedding row into `out` (`hidden` values).
    fn embed_into(&self, token: u32, out: &mut [f32]) -> anyhow::Result<()> {
        let row = token as usize;
        if row >= self.vocab {
            bail!("token {token} is outside the vocabulary of {}", self.vocab);
        }
        let d = self.hidden;
        match &self.embedding {
            Embedding::Rows(w) => out.copy_from_slice(&w[row * d..(row + 1) * d]),
            Embedding::TiedHead => match &self.head.kernel {
                Kernel::Dense(w) => out.copy_from_slice(&w[row * d..(row + 1) * d]),
                Kernel::DenseF16(w) => {
                    for (o, &h) in out.iter_mut().zip(&w[row * d..(row + 1) * d]) {
                        *o = linear::f16_to_f32(h);
                    }
                }
                Kernel::Rtn(p) => p.row_into(row, out),
                _ => unreachable!("a tied head is dense or RTN (checked in Engine::new)"),
            },
        }
        Ok(())
    }

    /// A fresh sequence.
    pub fn decoder(&self) -> Decoder<'_> {
        Decoder::new(self)
    }

    /// Runs the linears' row ranges as one parallel section: `y_i = W_i x_i` for each part.
    fn section(&self, parts: &mut [Part<'_>], tasks: &mut Vec<(usize, usize, usize)>) {
        section(&self.pool, parts, tasks);
    }
}

/// The most linears one section runs (q, k and v).
const MAX_PARTS: usize = 3;

/// [`Engine::section`] on any pool.
#[allow(unsafe_code)]
fn section(pool: &Pool, parts: &mut [Part<'_>], tasks: &mut Vec<(usize, usize, usize)>) {
    let threads = pool.threads();
    tasks.clear();
    // Which part's preparation each part reads: the first one with the same input and an
    // alike kernel (the main thread prepares while the other threads wait).
    let mut prepared_by = [0usize; MAX_PARTS];
    assert!(
        parts.len() <= MAX_PARTS,
        "a section has at most {MAX_PARTS} parts"
    );
    for (i, by) in prepared_by.iter_mut().enumerate().take(parts.len()) {
        let (earlier, rest) = parts.split_at_mut(i);
        let p = &mut rest[0];
        *by = match earlier
            .iter()
            .position(|e| std::ptr::eq(e.x, p.x) && e.linear.prepares_alike(p.linear))
        {
            Some(j) => j,
            None => {
                p.linear.prepare(p.x, p.shared);
                i
            }
        };
    }
    for (i, p) in parts.iter().enumerate() {
        let step = p.linear.task_rows(threads);
        for r0 in (0..p.linear.rows).step_by(step.max(1)) {
            tasks.push((i, r0, (r0 + step).min(p.linear.rows)));
        }
    }
    // A last round with fewer tasks than threads leaves threads idle (a shift-add layer's task
    // is a whole 64-row group, and 576 rows are 9 of them): split the last task over them.
    if threads > 1
        && !tasks.len().is_multiple_of(threads)
        && let Some(&(i, r0, r1)) = tasks.last()
    {
        let piece = (r1 - r0).div_ceil(threads).next_multiple_of(16);
        if piece < r1 - r0 {
            tasks.pop();
            for a in (r0..r1).step_by(piece) {
                tasks.push((i, a, (a + piece).min(r1)));
            }
        }
    }
    let parts = &*parts;
    let tasks = &*tasks;
    pool.run(tasks.len(), &|t| {
        let (i, r0, r1) = tasks[t];
        let p = &parts[i];
        let shared = &*parts[prepared_by[i]].shared;
        // SAFETY: tasks cover disjoint row ranges of each output, all within its length,
        // and the outputs outlive the section.
        let y = unsafe { p.y.range(r0, r1) };
        SCRATCH.with_borrow_mut(|scratch| p.linear.rows_into(p.x, shared, r0, y, scratch));
    });
}

/// Times single products `y = W x` the way decode meets them: with the layer's bytes out of
/// the caches (a decode step streams every layer from memory once), split over the same pool.
/// What the search's latency predictor adds up, layer by layer.
pub struct ProductTimer {
    pool: Pool,
    /// Read before each timed product, to push the layer out of the last-level cache.
    evict: Vec<f32>,
    tasks: Vec<(usize, usize, usize)>,
}

/// Bytes read to evict: beyond the last-level caches of the machines we run on.
const EVICT_BYTES: usize = 96 << 20;

impl ProductTimer {
    pub fn new(opts: EngineOptions) -> Self {
        Self {
            pool: Pool::new(opts.pool, opts.threads.max(1)),
            evict: vec![1.0; EVICT_BYTES / 4],
            tasks: Vec::new(),
        }
    }

    /// Reads the eviction buffer on every thread of the pool, in small parallel sections, so
    /// the workers are busy (not parked) right up to the timed product, as in decode.
    fn evict_caches(&self) {
        const CHUNK: usize = 1 << 16;
        let evict = &self.evict;
        for part in evict.chunks(CHUNK * 64) {
            self.pool.run(part.len().div_ceil(CHUNK), &|i| {
                let end = ((i + 1) * CHUNK).min(part.len());
                let sum: f32 = part[i * CHUNK..end].iter().step_by(16).sum();
                std::hint::black_box(sum);
            });
        }
    }

    /// Median seconds of `reps` cold products with `linear`.
    pub fn cold_seconds(&mut self, linear: &Linear, reps: usize) -> f64 {
        let x: Vec<f32> = (0..linear.cols)
            .map(|i| ((i % 7) as f32 - 3.0) * 0.1)
            .collect();
        let mut y = vec![0.0f32; linear.rows];
        let mut shared = Prepared::default();
        let mut times = Vec::with_capacity(reps.max(1));
        for _ in 0..reps.max(1) {
            self.evict_caches();
            let start = std::time::Instant::now();
            let mut parts = [Part {
                linear,
                x: &x,
                y: OutPtr::of(&mut y),
                shared: &mut shared,
            }];
            section(&self.pool, &mut parts, &mut self.tasks);
            times.push(start.elapsed().as_secs_f64());
        }
        std::hint::black_box(&y);
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    }
}

thread_local! {
    /// Per-thread working memory of the kernels (tables, rebuilt rows, decoded scales).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One linear of a parallel section, with its input, output and shared per-call work.
struct Part<'a> {
    linear: &'a Linear,
    x: &'a [f32],
    y: OutPtr,
    shared: &'a mut Prepared,
}

/// An output buffer several tasks write disjoint ranges of.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32, usize);

// SAFETY: only used to hand disjoint ranges to the tasks of one section (see `Engine::section`).
#[allow(unsafe_code)]
unsafe impl Send for OutPtr {}
#[allow(unsafe_code)]
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn of(y: &mut [f32]) -> Self {
        Self(y.as_mut_ptr(), y.len())
    }

    /// The element pointer at `offset` (`offset + len <= self.1` asserted), for products
    /// that write a strided part of the buffer.
    fn at(self, offset: usize, len: usize) -> *mut f32 {
        assert!(offset + len <= self.1);
        self.0.wrapping_add(offset)
    }

    /// # Safety
    /// `r0 <= r1 <= len`, and no two live ranges overlap.
    #[allow(unsafe_code)]
    unsafe fn range<'a>(self, r0: usize, r1: usize) -> &'a mut [f32] {
        assert!(r0 <= r1 && r1 <= self.1);
        // SAFETY: in bounds (asserted); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(r0), r1 - r0) }
    }
}

/// Per block, `[position][kv_heads · head_dim]` keys and values.
struct Cache<T> {
    keys: Vec<Vec<T>>,
    values: Vec<Vec<T>>,
}

impl<T: KvElem> Cache<T> {
    fn new(blocks: usize) -> Self {
        Self {
            keys: vec![Vec::new(); blocks],
            values: vec![Vec::new(); blocks],
        }
    }

    fn reserve(&mut self, n: usize) {
        for c in self.keys.iter_mut().chain(self.values.iter_mut()) {
            c.reserve(n.saturating_sub(c.len()));
        }
    }

    fn push(&mut self, block: usize, k: &[f32], v: &[f32]) {
        T::extend(&mut self.keys[block], k);
        T::extend(&mut self.values[block], v);
    }
}

/// The KV cache in the element type the engine was asked for.
enum KvCache {
    F32(Cache<f32>),
    F16(Cache<half::f16>),
}

/// One sequence being decoded: its KV cache and working buffers.
pub struct Decoder<'e> {
    engine: &'e Engine,
    pos: usize,
    cache: KvCache,
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    logits: Vec<f32>,
    sin: Vec<f32>,
    cos: Vec<f32>,
    shared: [Prepared; 3],
    tasks: Vec<(usize, usize, usize)>,
}

impl<'e> Decoder<'e> {
    fn new(e: &'e Engine) -> Self {
        let kv = e.kv_heads * e.head_dim;
        let inter = e.blocks.first().map_or(0, |b| b.gate.rows);
        Self {
            engine: e,
            pos: 0,
            cache: match e.kv {
                KvType::F32 => KvCache::F32(Cache::new(e.blocks.len())),
                KvType::F16 => KvCache::F16(Cache::new(e.blocks.len())),
            },
            x: vec![0.0; e.hidden],
            xn: vec![0.0; e.hidden],
            q: vec![0.0; e.heads * e.head_dim],
            k: vec![0.0; kv],
            v: vec![0.0; kv],
            attn: vec![0.0; e.heads * e.head_dim],
            proj: vec![0.0; e.hidden],
            gate: vec![0.0; inter],
            up: vec![0.0; inter],
            logits: vec![0.0; e.vocab],
            sin: Vec::new(),
            cos: Vec::new(),
            shared: Default::default(),
            tasks: Vec::new(),
        }
    }

    /// Positions already in the cache.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Reserves the KV cache for `positions` in all, so decoding that far allocates nothing.
    pub fn reserve(&mut self, positions: usize) {
        let kv = self.engine.kv_heads * self.engine.head_dim;
        let n = positions.min(self.engine.ctx) * kv;
        match &mut self.cache {
            KvCache::F32(c) => c.reserve(n),
            KvCache::F16(c) => c.reserve(n),
        }
    }

    /// Feeds `tokens` one at a time and returns the logits after the last.
    pub fn feed(&mut self, tokens: &[u32]) -> anyhow::Result<&[f32]> {
        anyhow::ensure!(!tokens.is_empty(), "no tokens to feed");
        for &t in tokens {
            self.step(t)?;
        }
        Ok(&self.logits)
    }

    /// Runs one token at the next position and returns its logits over the vocabulary.
    pub fn step(&mut self, token: u32) -> anyhow::Result<&[f32]> {
        let e = self.engine;
        if self.pos >= e.ctx {
            bail!(
                "the sequence reached the model's context length of {} positions",
                e.ctx
            );
        }
        e.embed_into(token, &mut self.x)?;
        let (mut sin, mut cos) = (std::mem::take(&mut self.sin), std::mem::take(&mut self.cos));
        rope_angles(&e.rope_inv_freq, self.pos, &mut sin, &mut cos);
        for (i, b) in e.blocks.iter().enumerate() {
            self.block(i, b, &sin, &cos);
        }
        (self.sin, self.cos) = (sin, cos);
        rms_norm(&self.x, &e.output_norm, e.eps, &mut self.xn);
        let [s0, ..] = &mut self.shared;
        e.section(
            &mut [Part {
                linear: &e.head,
                x: &self.xn,
                y: OutPtr::of(&mut self.logits),
                shared: s0,
            }],
            &mut self.tasks,
        );
        self.pos += 1;
        Ok(&self.logits)
    }

    fn block(&mut self, index: usize, b: &Block, sin: &[f32], cos: &[f32]) {
        let e = self.engine;
        let hd = e.head_dim;
        rms_norm(&self.x, &b.attn_norm, e.eps, &mut self.xn);
        {
            let [s0, s1, s2] = &mut self.shared;
            e.section(
                &mut [
                    Part {
                        linear: &b.q,
                        x: &self.xn,
                        y: OutPtr::of(&mut self.q),
                        shared: s0,
                    },
                    Part {
                        linear: &b.k,
                        x: &self.xn,
                        y: OutPtr::of(&mut self.k),
                        shared: s1,
                    },
                    Part {
                        linear: &b.v,
                        x: &self.xn,
                        y: OutPtr::of(&mut self.v),
                        shared: s2,
                    },
                ],
                &mut self.tasks,
            );
        }
        for head in self
            .q
            .chunks_exact_mut(hd)
            .chain(self.k.chunks_exact_mut(hd))
        {
            rope(head, sin, cos);
        }
        let out = OutPtr::of(&mut self.attn);
        let n = self.pos + 1;
        match &mut self.cache {
            KvCache::F32(c) => {
                c.push(index, &self.k, &self.v);
                attention(e, &c.keys[index], &c.values[index], &self.q, out, n);
            }
            KvCache::F16(c) => {
                c.push(index, &self.k, &self.v);
                attention(e, &c.keys[index], &c.values[index], &self.q, out, n);
            }
        }
        {
            let [s0, ..] = &mut self.shared;
            e.section(
                &mut [Part {
                    linear: &b.o,
                    x: &self.attn,
                    y: OutPtr::of(&mut self.proj),
                    shared: s0,
                }],
                &mut self.tasks,
            );
        }
        for (x, p) in self.x.iter_mut().zip(&self.proj) {
            *x += p;
        }
        rms_norm(&self.x, &b.ffn_norm, e.eps, &mut self.xn);
        {
            let [s0, s1, _] = &mut self.shared;
            e.section(
                &mut [
                    Part {
                        linear: &b.gate,
                        x: &self.xn,
                        y: OutPtr::of(&mut self.gate),
                        shared: s0,
                    },
                    Part {
                        linear: &b.up,
                        x: &self.xn,
                        y: OutPtr::of(&mut self.up),
                        shared: s1,
                    },
                ],
                &mut self.tasks,
            );
        }
        for (g, u) in self.gate.iter_mut().zip(&self.up) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
        {
            let [s0, ..] = &mut self.shared;
            e.section(
                &mut [Part {
                    linear: &b.down,
                    x: &self.gate,
                    y: OutPtr::of(&mut self.proj),
                    shared: s0,
                }],
                &mut self.tasks,
            );
        }
        for (x, p) in self.x.iter_mut().zip(&self.proj) {
            *x += p;
        }
    }
}

/// Causal attention of one position's queries `q` over a block's first `n` cached keys and
/// values, heads in parallel, into `out` (`heads · head_dim`).
#[allow(unsafe_code)]
fn attention<T: KvElem>(e: &Engine, keys: &[T], values: &[T], q: &[f32], out: OutPtr, n: usize) {
    let (hd, kv) = (e.head_dim, e.kv_heads * e.head_dim);
    let rep = e.heads / e.kv_heads.max(1);
    let scale = 1.0 / (hd as f32).sqrt();
    e.pool.run(e.heads, &|h| {
        let kvh = h / rep;
        let qh = &q[h * hd..(h + 1) * hd];
        // SAFETY: each head writes its own `head_dim` slice of the output.
        let oh = unsafe { out.range(h * hd, (h + 1) * hd) };
        SCRATCH.with_borrow_mut(|scores| {
            kv::attend(qh, (keys, values), (kv, kvh * hd), n, scale, scores, oh);
        });
    });
}

/// `out = x / rms(x) · gain`.
fn rms_norm(x: &[f32], gain: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, v), g) in out.iter_mut().zip(x).zip(gain) {
        *o = v * inv * g;
    }
}

/// `sin`/`cos` of position `pos`'s RoPE angles (computed in f64, as the reference does).
fn rope_angles(inv_freq: &[f32], pos: usize, sin: &mut Vec<f32>, cos: &mut Vec<f32>) {
    let p = pos as f64;
    sin.clear();
    cos.clear();
    for &f in inv_freq {
        let a = p * f64::from(f);
        sin.push(a.sin() as f32);
        cos.push(a.cos() as f32);
    }
}

/// Rotate-half RoPE of one head in place.
fn rope(x: &mut [f32], sin: &[f32], cos: &[f32]) {
    let half = x.len() / 2;
    let (a, b) = x.split_at_mut(half);
    for (((a, b), s), c) in a.iter_mut().zip(b.iter_mut()).zip(sin).zip(cos) {
        let (x1, x2) = (*a, *b);
        *a = x1 * c - x2 * s;
        *b = x2 * c + x1 * s;
    }
}

/// A stream-style read probe: GB/s summing a buffer far larger than the caches over the
/// engine's threads, the bound a memory-bound decode step can approach.
pub fn read_bandwidth(opts: EngineOptions) -> f64 {
    const BYTES: usize = 512 << 20;
    const TASKS: usize = 64;
    let pool = Pool::new(opts.pool, opts.threads);
    let buf: Vec<f32> = (0..BYTES / 4).map(|i| (i % 7) as f32).collect();
    let chunk = buf.len() / TASKS;
    let sink = std::sync::atomic::AtomicU32::new(0);
    let mut best = 0f64;
    for _ in 0..3 {
        let start = std::time::Instant::now();
        pool.run(TASKS, &|t| {
            let c = &buf[t * chunk..(t + 1) * chunk];
            // Both operands are one stream: each line comes from memory once.
            let s = linear::dot(c, c);
            sink.fetch_add(s.to_bits() & 1, std::sync::atomic::Ordering::Relaxed);
        });
        best = best.max(BYTES as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    best
}
