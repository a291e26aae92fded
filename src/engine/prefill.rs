//! Many positions in one pass: a window of tokens through every block with one matrix product
//! per linear, as a prompt's prefill and a perplexity evaluation meet them.
//!
//! At hundreds of rows a product is compute-bound, so each layer multiplies as an f32 GEMM
//! (the `gemm` crate's AVX-512 kernels): dense layers in place, every packed form decoded to
//! f32 — once for an evaluation's many windows ([`Prefill::kept`]), or as a prompt reaches
//! each layer ([`Prefill::on_the_fly`]). Norms, RoPE and SwiGLU run on plain row-major
//! buffers. Causal attention runs per head and run of 64 positions as two products, scores
//! against only the keys up to the run's last position, each row's softmax over the keys its
//! position sees; no masked `n × n` score matrix is built.

use std::borrow::Cow;

use anyhow::ensure;
use rayon::prelude::*;

use super::{Block, Engine, Linear, OutPtr, SCRATCH, kv, rms_norm, rope, rope_angles};

/// An engine's layers ready for many-row products; see the module docs.
pub struct Prefill<'e> {
    engine: &'e Engine,
    /// The f32 matrices, decoded once; `None`: each packed layer is decoded when a window
    /// reaches it and dropped after its product.
    kept: Option<Kept<'e>>,
    threads: usize,
}

/// Every linear's f32 matrix: per block its seven in `Block` order (q, k, v, o, gate, up,
/// down), then the head.
struct Kept<'e> {
    blocks: Vec<[Cow<'e, [f32]>; 7]>,
    head: Cow<'e, [f32]>,
}

/// Working buffers of one window, row-major `[positions, width]`.
struct Buffers {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
}

impl<'e> Prefill<'e> {
    /// Every packed layer of `engine` decoded to f32 once and kept (memory: the dense model's
    /// size, for as long as this lives; dense layers are borrowed): for evaluations that run
    /// many windows.
    pub fn kept(engine: &'e Engine) -> Self {
        let blocks = engine
            .blocks
            .iter()
            .map(|b| decode_in_parallel(block_linears(b)))
            .collect();
        Self {
            engine,
            kept: Some(Kept {
                blocks,
                head: engine.head.dense_weight(),
            }),
            threads: engine.threads(),
        }
    }

    /// Packed layers decoded when a window reaches them, one at a time: what a prompt costs
    /// a model held in its stored form.
    pub fn on_the_fly(engine: &'e Engine) -> Self {
        Self {
            engine,
            kept: None,
            threads: engine.threads(),
        }
    }

    pub fn engine(&self) -> &Engine {
        self.engine
    }

    /// The final-normed hidden states `[(n − from) × hidden]` of positions `from..n` of
    /// `tokens`, run as one sequence from position 0 (the input of [`Self::logits`]).
    pub fn hidden(&self, tokens: &[u32], from: usize) -> anyhow::Result<Vec<f32>> {
        let e = self.engine;
        let n = tokens.len();
        ensure!(
            n > 0 && from < n,
            "a window of {n} tokens has no positions from {from} on"
        );
        ensure!(
            n <= e.ctx,
            "a window of {n} tokens exceeds the model's context length of {} positions",
            e.ctx
        );
        let (d, qd, kvd) = (e.hidden, e.heads * e.head_dim, e.kv_heads * e.head_dim);
        let inter = e.blocks.first().map_or(0, |b| b.gate.rows);
        let mut buf = Buffers {
            x: vec![0.0; n * d],
            xn: vec![0.0; n * d],
            q: vec![0.0; n * qd],
            k: vec![0.0; n * kvd],
            v: vec![0.0; n * kvd],
            attn: vec![0.0; n * qd],
            proj: vec![0.0; n * d],
            gate: vec![0.0; n * inter],
            up: vec![0.0; n * inter],
        };
        for (row, &t) in buf.x.chunks_exact_mut(d).zip(tokens) {
            e.embed_into(t, row)?;
        }
        let half = e.rope_inv_freq.len();
        let (mut sin, mut cos) = (vec![0.0f32; n * half], vec![0.0f32; n * half]);
        let (mut s, mut c) = (Vec::new(), Vec::new());
        for p in 0..n {
            rope_angles(&e.rope_inv_freq, p, &mut s, &mut c);
            sin[p * half..(p + 1) * half].copy_from_slice(&s);
            cos[p * half..(p + 1) * half].copy_from_slice(&c);
        }
        for (i, b) in e.blocks.iter().enumerate() {
            self.block(i, b, &mut buf, n, (&sin, &cos));
        }
        let rows = n - from;
        let mut out = vec![0.0f32; rows * d];
        for (o, x) in out
            .chunks_exact_mut(d)
            .zip(buf.x[from * d..].chunks_exact(d))
        {
            rms_norm(x, &e.output_norm, e.eps, o);
        }
        Ok(out)
    }

    /// Logits `[rows × vocab]` of final hidden rows (`hidden`: `rows × hidden`), into `out`.
    pub fn logits(&self, hidden: &[f32], out: &mut Vec<f32>) {
        let e = self.engine;
        let rows = hidden.len() / e.hidden.max(1);
        out.resize(rows * e.vocab, 0.0);
        let head = match &self.kept {
            Some(k) => Cow::Borrowed(&*k.head),
            None => e.head.dense_weight(),
        };
        self.product(&e.head, &head, hidden, rows, out);
    }

    fn block(
        &self,
        index: usize,
        b: &Block,
        buf: &mut Buffers,
        n: usize,
        (sin, cos): (&[f32], &[f32]),
    ) {
        let e = self.engine;
        let (d, hd) = (e.hidden, e.head_dim);
        let half = e.rope_inv_freq.len();
        let w: [Cow<'_, [f32]>; 7] = match &self.kept {
            Some(k) => std::array::from_fn(|i| Cow::Borrowed(&*k.blocks[index][i])),
            None => decode_in_parallel(block_linears(b)),
        };
        norm_rows(&buf.x, &b.attn_norm, e.eps, &mut buf.xn);
        self.product(&b.q, &w[0], &buf.xn, n, &mut buf.q);
        self.product(&b.k, &w[1], &buf.xn, n, &mut buf.k);
        self.product(&b.v, &w[2], &buf.xn, n, &mut buf.v);
        for (p, (qr, kr)) in buf
            .q
            .chunks_exact_mut(e.heads * hd)
            .zip(buf.k.chunks_exact_mut(e.kv_heads * hd))
            .enumerate()
        {
            let (s, c) = (
                &sin[p * half..(p + 1) * half],
                &cos[p * half..(p + 1) * half],
            );
            for head in qr.chunks_exact_mut(hd).chain(kr.chunks_exact_mut(hd)) {
                rope(head, s, c);
            }
        }
        self.attention(&buf.q, &buf.k, &buf.v, &mut buf.attn, n);
        self.product(&b.o, &w[3], &buf.attn, n, &mut buf.proj);
        add_into(&mut buf.x, &buf.proj);
        norm_rows(&buf.x, &b.ffn_norm, e.eps, &mut buf.xn);
        self.product(&b.gate, &w[4], &buf.xn, n, &mut buf.gate);
        self.product(&b.up, &w[5], &buf.xn, n, &mut buf.up);
        buf.gate
            .par_chunks_mut(4096)
            .zip(buf.up.par_chunks(4096))
            .for_each(|(g, u)| {
                for (g, u) in g.iter_mut().zip(u) {
                    *g = *g / (1.0 + (-*g).exp()) * u;
                }
            });
        self.product(&b.down, &w[6], &buf.gate, n, &mut buf.proj);
        add_into(&mut buf.x, &buf.proj);
        debug_assert_eq!(buf.x.len(), n * d);
    }

    /// `y = x Wᵀ + b` for `n` rows of `x`, with `weight` the layer's f32 matrix.
    fn product(&self, layer: &Linear, weight: &[f32], x: &[f32], n: usize, y: &mut [f32]) {
        let rounded;
        let x = if layer.int8_inputs() {
            let mut r = x[..n * layer.cols].to_vec();
            crate::quant::act8::round_rows(&mut r, layer.cols);
            rounded = r;
            &rounded
        } else {
            x
        };
        matmul_t(x, n, (weight, layer.rows, layer.cols), y, self.threads);
        if let Some(bias) = &layer.bias {
            for row in y.chunks_exact_mut(layer.rows) {
                add_into(row, bias);
            }
        }
    }

    /// Causal attention of every position over the keys and values up to it. One task per
    /// head and run of [`RUN`] positions (the later, costlier runs first): the run's scores
    /// against every key up to its last position as one product, each row's softmax over
    /// the keys its position sees (the rest zeroed), then the weighted values as a second.
    #[allow(unsafe_code)]
    fn attention(&self, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], n: usize) {
        let e = self.engine;
        let (hd, kvd, qd) = (e.head_dim, e.kv_heads * e.head_dim, e.heads * e.head_dim);
        let rep = e.heads / e.kv_heads.max(1);
        let scale = 1.0 / (hd as f32).sqrt();
        assert!(q.len() >= n * qd && k.len() >= n * kvd && v.len() >= n * kvd);
        let runs = n.div_ceil(RUN);
        let out = OutPtr::of(out);
        (0..e.heads * runs).into_par_iter().for_each(|t| {
            let (h, run) = (t % e.heads, runs - 1 - t / e.heads);
            let (p0, end) = (run * RUN, ((run + 1) * RUN).min(n));
            let (rows, kv_at) = (end - p0, (h / rep) * hd);
            SCRATCH.with_borrow_mut(|scores| {
                scores.clear();
                scores.resize(rows * end, 0.0);
                // SAFETY (both products): the extents are within `q`, `k`, `v` (`n` rows of
                // `qd` or `kvd`), `scores` (`rows × end`) and `out` (`n × qd`), and the
                // output rows `p0..end` of head `h` belong to this task alone.
                unsafe {
                    gemm_into(
                        (rows, end, hd),
                        (scores.as_mut_ptr(), end),
                        Strided::rows(q.as_ptr().add(p0 * qd + h * hd), qd),
                        Strided::columns(k.as_ptr().add(kv_at), kvd),
                        gemm::Parallelism::None,
                    );
                }
                for (i, row) in scores.chunks_exact_mut(end).enumerate() {
                    let (seen, masked) = row.split_at_mut(p0 + i + 1);
                    kv::softmax_scaled(seen, scale);
                    masked.fill(0.0);
                }
                let dst = out.at(p0 * qd + h * hd, (rows - 1) * qd + hd);
                unsafe {
                    gemm_into(
                        (rows, hd, end),
                        (dst, qd),
                        Strided::rows(scores.as_ptr(), end),
                        Strided::rows(v.as_ptr().add(kv_at), kvd),
                        gemm::Parallelism::None,
                    );
                }
            });
        });
    }
}

/// Query positions one attention task covers.
const RUN: usize = 64;

/// A block's linears in the order [`Kept`] holds them.
fn block_linears(b: &Block) -> [&Linear; 7] {
    [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down]
}

/// The f32 matrices of `layers`, decoded on all threads (one layer a task).
fn decode_in_parallel<const N: usize>(layers: [&Linear; N]) -> [Cow<'_, [f32]>; N] {
    let mut out: [Cow<'_, [f32]>; N] = std::array::from_fn(|_| Cow::Borrowed(&[][..]));
    out.par_iter_mut()
        .zip(layers.par_iter())
        .for_each(|(w, l)| *w = l.dense_weight());
    out
}

/// `y[n × rows] = x[n × cols] · wᵀ` for row-major `w` `[rows × cols]`.
#[allow(unsafe_code)]
fn matmul_t(
    x: &[f32],
    n: usize,
    (w, rows, cols): (&[f32], usize, usize),
    y: &mut [f32],
    threads: usize,
) {
    assert!(x.len() >= n * cols && w.len() >= rows * cols && y.len() >= n * rows);
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let (x, wt) = (
        Strided::rows(x.as_ptr(), cols),
        Strided::columns(w.as_ptr(), cols),
    );
    // SAFETY: the extents are asserted above; `w` is read as its transpose.
    unsafe { gemm_into((n, rows, cols), (y.as_mut_ptr(), rows), x, wt, parallelism) };
}

/// A matrix operand of [`gemm_into`]: its first element and the strides between its rows and
/// between its columns.
#[derive(Clone, Copy)]
struct Strided {
    at: *const f32,
    row: usize,
    col: usize,
}

impl Strided {
    /// Row-major rows `stride` apart.
    fn rows(at: *const f32, stride: usize) -> Self {
        Self {
            at,
            row: stride,
            col: 1,
        }
    }

    /// The transpose of row-major rows `stride` apart: column `j` is stored row `j`.
    fn columns(at: *const f32, stride: usize) -> Self {
        Self {
            at,
            row: 1,
            col: stride,
        }
    }
}

/// `dst[m × n] = lhs[m × k] · rhs[k × n]`, `dst` row-major with rows `dst_row` apart.
///
/// # Safety
/// Every element the shapes and strides address lies inside its buffer, and nothing else
/// reads or writes `dst`'s elements meanwhile.
#[allow(unsafe_code)]
unsafe fn gemm_into(
    (m, n, k): (usize, usize, usize),
    (dst, dst_row): (*mut f32, usize),
    lhs: Strided,
    rhs: Strided,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_row as isize,
            false,
            lhs.at,
            lhs.col as isize,
            lhs.row as isize,
            rhs.at,
            rhs.col as isize,
            rhs.row as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// RMSNorm of every row of `x` into `out`.
fn norm_rows(x: &[f32], gain: &[f32], eps: f32, out: &mut [f32]) {
    let d = gain.len();
    out.par_chunks_mut(d * 16)
        .zip(x.par_chunks(d * 16))
        .for_each(|(o, x)| {
            for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                rms_norm(x, gain, eps, o);
            }
        });
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
