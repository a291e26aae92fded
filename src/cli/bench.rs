//! Side-by-side benchmarks, each measured in one run against its baseline so machine load
//! affects both alike: our perplexity eval (the engine's many-row pass, and with `--tensor`
//! the tensor forward) against llama.cpp's `llama-perplexity`, and the
//! shift-add LUT kernel against dense f32 GEMV (candle's and a plain loop).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

use crate::eval::{Forward, PerplexityOptions, perplexity, perplexity_with};
use crate::model::load_spec;

#[derive(Debug, Args)]
pub struct EvalBenchArgs {
    /// The model we evaluate (GGUF, HF directory or `zoo:NAME`).
    pub model: String,
    /// Text file to score.
    #[arg(long)]
    pub text: PathBuf,
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    #[arg(long, default_value_t = 16)]
    pub chunks: usize,
    /// The GGUF llama.cpp should run (e.g. the F32 requantization of MODEL); defaults to MODEL.
    #[arg(long)]
    pub peer_model: Option<PathBuf>,
    /// Directory holding `llama-perplexity`; default `~/.cache/reparam/llamacpp/build/bin`
    /// (what `scripts/llamacpp-peer.sh` builds). Without it only our side is measured.
    #[arg(long)]
    pub peer_bin: Option<PathBuf>,
    /// Also time the tensor forward (the reference the engine is checked against), as a
    /// baseline in the same run.
    #[arg(long)]
    pub tensor: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One of our evaluations: perplexity and throughput.
#[derive(Debug, serde::Serialize)]
struct OurResult {
    chunks: usize,
    ppl: f64,
    tok_s: f64,
    seconds: f64,
}

impl OurResult {
    fn of(r: &crate::eval::PerplexityReport) -> Self {
        Self {
            chunks: r.chunks,
            ppl: r.ppl,
            tok_s: (r.chunks * r.ctx) as f64 / r.seconds,
            seconds: r.seconds,
        }
    }
}

/// What `llama-perplexity` reported.
#[derive(Debug, serde::Serialize)]
struct PeerResult {
    ppl: Option<f64>,
    tok_s: f64,
    seconds: f64,
}

/// Runs the evaluation both ways and prints throughput and the ratio.
pub fn eval_bench(args: &EvalBenchArgs) -> anyhow::Result<()> {
    let threads = candle_core::utils::get_num_threads();
    let model = load_spec(&args.model)?;
    let text = std::fs::read_to_string(&args.text)
        .with_context(|| format!("reading {}", args.text.display()))?;
    let tokens = model.tokenizer.encode(&text, true)?;
    let opts = PerplexityOptions {
        ctx: args.ctx,
        chunks: Some(args.chunks),
    };
    let ours = OurResult::of(&perplexity(&model, &tokens, opts, None, &mut |_, _| true)?);
    let tensor = if args.tensor {
        let r = perplexity_with(&model, &tokens, opts, None, Forward::Tensor, &mut |_, _| {
            true
        })?;
        Some(OurResult::of(&r))
    } else {
        None
    };

    let peer_bin = args
        .peer_bin
        .clone()
        .or_else(crate::export::deployed::default_llamacpp_dir);
    let peer_exe = peer_bin
        .map(|b| b.join("llama-perplexity"))
        .filter(|p| p.is_file());
    let peer = match &peer_exe {
        Some(exe) => {
            let peer_model = args
                .peer_model
                .clone()
                .unwrap_or_else(|| PathBuf::from(&args.model));
            Some(run_peer(
                exe,
                &peer_model,
                &args.text,
                args.ctx,
                args.chunks,
                threads,
            )?)
        }
        None => None,
    };
    let ratio = peer.as_ref().map(|p| ours.tok_s / p.tok_s);
    if args.json {
        let obj = serde_json::json!({
            "threads": threads,
            "ours": ours,
            "tensor_forward": tensor,
            "llama_cpp": peer,
            "ratio": ratio,
        });
        crate::outln!("{}", serde_json::to_string_pretty(&obj)?);
        return Ok(());
    }
    crate::outln!(
        "threads {threads}, ctx {}, {} chunks",
        args.ctx,
        ours.chunks
    );
    crate::outln!(
        "reparam           {:>9.1} tok/s  ppl {:.4}  ({:.2}s)",
        ours.tok_s,
        ours.ppl,
        ours.seconds
    );
    if let Some(t) = &tensor {
        crate::outln!(
            "tensor forward    {:>9.1} tok/s  ppl {:.4}  ({:.2}s)",
            t.tok_s,
            t.ppl,
            t.seconds
        );
    }
    match (&peer, ratio) {
        (Some(p), Some(r)) => {
            crate::outln!(
                "llama-perplexity  {:>9.1} tok/s  ppl {}  ({:.2}s)",
                p.tok_s,
                p.ppl.map_or("?".into(), |v| format!("{v:.4}")),
                p.seconds
            );
            crate::outln!("ratio (ours / llama.cpp) {r:.2}×");
        }
        _ => crate::outln!(
            "llama-perplexity not found: build it with scripts/llamacpp-peer.sh or pass --peer-bin"
        ),
    }
    Ok(())
}

fn run_peer(
    exe: &Path,
    model: &Path,
    text: &Path,
    ctx: usize,
    chunks: usize,
    threads: usize,
) -> anyhow::Result<PeerResult> {
    let (c, n, t) = (ctx.to_string(), chunks.to_string(), threads.to_string());
    let log = crate::export::deployed::run_tool(
        exe,
        [
            "-m".as_ref(),
            model.as_os_str(),
            "-f".as_ref(),
            text.as_os_str(),
        ]
        .into_iter()
        .chain(["-c", &c, "--chunks", &n, "-t", &t, "-b", &c].map(std::ffi::OsStr::new)),
    )?;
    let eval_seconds = parse_eval_seconds(&log).with_context(|| {
        format!(
            "no timestamped start and final estimate in the output of {}",
            exe.display()
        )
    })?;
    Ok(PeerResult {
        ppl: parse_final_ppl(&log),
        tok_s: (chunks * ctx) as f64 / eval_seconds,
        seconds: eval_seconds,
    })
}

/// Seconds of the llama.cpp log timestamp (`M.SS.mmm.uuu`, e.g. `0.09.848.721`) written just
/// before `marker`. Progress output carries no newlines when not on a terminal, so log entries
/// share lines and the timestamp is found by position, not by line.
fn timestamp_before(log: &str, marker: &str) -> Option<f64> {
    let at = log.find(marker)?;
    let stamp = log[..at].split_whitespace().last()?;
    let parts: Vec<f64> = stamp
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    match parts[..] {
        [m, s, ms, us] => Some(m * 60.0 + s + ms / 1e3 + us / 1e6),
        _ => None,
    }
}

/// Evaluation seconds of a `llama-perplexity` run: from the entry announcing the calculation
/// to the final estimate (model loading and tokenization excluded, as on our side).
fn parse_eval_seconds(log: &str) -> Option<f64> {
    let start = timestamp_before(log, "I perplexity: calculating perplexity over")?;
    let end = timestamp_before(log, "I Final estimate: PPL =")?;
    (end > start).then_some(end - start)
}

/// The perplexity from `Final estimate: PPL = 12.3456 +/- 0.1234`.
fn parse_final_ppl(log: &str) -> Option<f64> {
    let (_, rest) = log.split_once("Final estimate: PPL =")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_llama_cpp_log_lines() {
        // As written to a pipe: the ETA entry and the final estimate share a line.
        let log = "0.00.253.084 I perplexity: calculating perplexity over 16 chunks, n_ctx=512\n\
                   0.00.889.877 I perplexity: 0.64 seconds per pass - ETA 1.09.848.721 I Final estimate: PPL = 17.6779 +/- 0.77538\n";
        let secs = parse_eval_seconds(log).unwrap();
        assert!((secs - (69.848_721 - 0.253_084)).abs() < 1e-9, "{secs}");
        assert_eq!(parse_final_ppl(log), Some(17.6779));
        assert_eq!(parse_eval_seconds("nothing"), None);
    }
}

#[derive(Debug, Args)]
pub struct KernelBenchArgs {
    /// Bit widths to measure.
    #[arg(long, value_delimiter = ',', default_value = "2,3,4")]
    pub bits: Vec<usize>,
    /// Thread counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Only the SmolLM2 shapes (skip the 7B ones).
    #[arg(long)]
    pub small: bool,
    /// RPS compression ratios to measure as well (the hashed tile kernel against the same dense
    /// baselines), e.g. `1,2,4`; none by default.
    #[arg(long, value_delimiter = ',')]
    pub rps_ratios: Vec<f64>,
    /// Print a JSON array of `{rows, cols, bits, threads, lut_us, dense_us, dense_loop_us}`
    /// (RPS rows: `{kind: "rps", rows, cols, ratio, threads, rps_us, dense_us, dense_loop_us}`;
    /// with `--sparse`: `{rows, cols, threads, batch, form, sparsity, us, dense_us}`).
    #[arg(long)]
    pub json: bool,
    /// Measure the pruned forms instead (CSR at each `--sparsity`, compressed 2:4) against
    /// dense f32, at batch 1 (decode) and at `--prefill-rows` (prefill).
    #[arg(long)]
    pub sparse: bool,
    /// Sparsities (fraction pruned) for the CSR rows of `--sparse`.
    #[arg(long, value_delimiter = ',', default_value = "0.3,0.4,0.5,0.7,0.9")]
    pub sparsity: Vec<f64>,
    /// Activation rows of the prefill measurement of `--sparse`.
    #[arg(long, default_value_t = 128)]
    pub prefill_rows: usize,
}

/// One measured RPS configuration.
#[derive(Debug, serde::Serialize)]
struct RpsRow {
    kind: &'static str,
    rows: usize,
    cols: usize,
    ratio: f64,
    threads: usize,
    /// Batch-1 GEMV of the hashed layer, rebuilding 16-row tiles from the array and seed.
    rps_us: f64,
    dense_us: f64,
    dense_loop_us: f64,
}

/// Measures the hashed tile kernel against dense f32 GEMV at each ratio and thread count.
fn rps_rows(
    shapes: &[(usize, usize)],
    ratios: &[f64],
    threads: &[usize],
) -> anyhow::Result<Vec<RpsRow>> {
    use crate::model::LinearWeight;
    use crate::technique::recipe::{RpsKnobs, RpsMapping};
    let mut out = Vec::new();
    for &(rows, cols) in shapes {
        let (w, x) = bench_inputs(rows, cols, 1);
        let wt = candle_core::Tensor::from_slice(&w, (rows, cols), &candle_core::Device::Cpu)?;
        let xt = candle_core::Tensor::from_slice(&x, (1, cols), &candle_core::Device::Cpu)?;
        let dense = LinearWeight::dense(wt.clone(), None);
        for &ratio in ratios {
            let knobs = RpsKnobs {
                ratio,
                mapping: RpsMapping::Fold,
                refit: false,
                refit_iters: 0,
            };
            knobs.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            let LinearWeight::Hashed { hashed, .. } =
                crate::technique::rps::share_linear(&dense, &knobs, None, 1)?
            else {
                anyhow::bail!("RPS did not produce a hashed layer");
            };
            for &t in threads {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
                let (rps_us, dense_us, dense_loop_us) = pool.install(|| -> anyhow::Result<_> {
                    let mut y = vec![0f32; rows];
                    let rps_us = time_us(|| hashed.gemm(&x, 1, &mut y));
                    let wt_t = wt.t()?;
                    let dense_us = time_us(|| {
                        let _ = xt.matmul(&wt_t);
                    });
                    let dense_loop_us = time_us(|| dense_loop(&w, &x, &mut y));
                    Ok((rps_us, dense_us, dense_loop_us))
                })?;
                out.push(RpsRow {
                    kind: "rps",
                    rows,
                    cols,
                    ratio,
                    threads: t,
                    rps_us,
                    dense_us,
                    dense_loop_us,
                });
            }
        }
    }
    Ok(out)
}

/// `(rows, cols)` of SmolLM2-135M's linears and of a 7B model's.
const SMOLLM2_SHAPES: [(usize, usize); 4] = [(576, 576), (192, 576), (1536, 576), (576, 1536)];
const LARGE_SHAPES: [(usize, usize); 2] = [(4096, 4096), (11008, 4096)];

/// One measured configuration.
#[derive(Debug, serde::Serialize)]
struct KernelRow {
    rows: usize,
    cols: usize,
    bits: usize,
    threads: usize,
    /// Batch-1 LUT GEMV, microseconds (median of repeats).
    lut_us: f64,
    /// Batch-1 dense f32 GEMV through candle's matmul.
    dense_us: f64,
    /// Batch-1 dense f32 GEMV as a plain row-parallel dot-product loop.
    dense_loop_us: f64,
}

/// Median wall time of `f` in microseconds over enough repeats to fill ~0.2 s.
/// A reproducible `rows × cols` weight matrix (uniform in [-0.5, 0.5), seeded by the shape) and
/// `batch` rows of activations in [-1, 1), the inputs every kernel benchmark measures on.
fn bench_inputs(rows: usize, cols: usize, batch: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = crate::rng::Rng::new((rows * 31 + cols) as u64);
    let w = (0..rows * cols)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect();
    let x = (0..cols * batch)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    (w, x)
}

fn time_us(mut f: impl FnMut()) -> f64 {
    f();
    let probe = std::time::Instant::now();
    f();
    let once = probe.elapsed().as_secs_f64().max(1e-7);
    let reps = ((0.2 / once) as usize).clamp(3, 2000);
    let mut samples: Vec<f64> = (0..reps)
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Dense f32 `y = W x` as rows of dot products, split over rayon's pool.
fn dense_loop(w: &[f32], x: &[f32], y: &mut [f32]) {
    use rayon::prelude::*;
    let cols = x.len();
    y.par_iter_mut()
        .enumerate()
        .with_min_len(16)
        .for_each(|(r, yr)| {
            let row = &w[r * cols..(r + 1) * cols];
            let mut acc = [0f32; 8];
            for (wc, xc) in row.chunks_exact(8).zip(x.chunks_exact(8)) {
                for l in 0..8 {
                    acc[l] += wc[l] * xc[l];
                }
            }
            let tail: f32 = row[cols / 8 * 8..]
                .iter()
                .zip(&x[cols / 8 * 8..])
                .map(|(a, b)| a * b)
                .sum();
            *yr = acc.iter().sum::<f32>() + tail;
        });
}

/// Measures the LUT kernel against dense f32 on every shape, bit width and thread count.
pub fn kernel_bench(args: &KernelBenchArgs) -> anyhow::Result<()> {
    use crate::quant::bcq::BcqOptions;
    use crate::quant::gptq::{ScaleLayout, SweepOptions, quantize_matrix};
    use crate::quant::lut::BcqPacked;

    if args.sparse {
        return sparse_kernel_bench(args);
    }
    let mut shapes = SMOLLM2_SHAPES.to_vec();
    if !args.small {
        shapes.extend_from_slice(&LARGE_SHAPES);
    }
    let mut rows_out = Vec::new();
    for &(rows, cols) in &shapes {
        let (w, x) = bench_inputs(rows, cols, 1);
        let wt = candle_core::Tensor::from_slice(&w, (rows, cols), &candle_core::Device::Cpu)?;
        let xt = candle_core::Tensor::from_slice(&x, (1, cols), &candle_core::Device::Cpu)?;
        for &bits in &args.bits {
            // Kernel speed does not depend on how well the codes fit: no Hessian, 1 round.
            let opts = SweepOptions {
                bcq: BcqOptions {
                    bits,
                    rounds: 1,
                    apot_terms: 3,
                },
                layout: ScaleLayout::Block { group: 128 },
                error_feedback: false,
                damp: 0.01,
                act_order: false,
                block_size: 128,
            };
            let q =
                quantize_matrix(&w, rows, cols, None, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
            let packed = BcqPacked::from_quantized(&q);
            for &threads in &args.threads {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()?;
                let (lut_us, dense_us, dense_loop_us) = pool.install(|| -> anyhow::Result<_> {
                    let mut y = vec![0f32; rows];
                    let lut_us = time_us(|| packed.gemv(&x, &mut y));
                    let wt_t = wt.t()?;
                    let dense_us = time_us(|| {
                        let _ = xt.matmul(&wt_t);
                    });
                    let dense_loop_us = time_us(|| dense_loop(&w, &x, &mut y));
                    Ok((lut_us, dense_us, dense_loop_us))
                })?;
                rows_out.push(KernelRow {
                    rows,
                    cols,
                    bits,
                    threads,
                    lut_us,
                    dense_us,
                    dense_loop_us,
                });
            }
        }
    }
    let rps = rps_rows(&shapes, &args.rps_ratios, &args.threads)?;
    if args.json {
        let mut all: Vec<serde_json::Value> = rows_out
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?;
        for r in &rps {
            all.push(serde_json::to_value(r)?);
        }
        crate::outln!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if !rps.is_empty() {
        crate::outln!(
            "{:>6} {:>6} {:>6} {:>7} {:>10} {:>10} {:>10} {:>8}",
            "rows",
            "cols",
            "rps c",
            "threads",
            "rps µs",
            "candle µs",
            "loop µs",
            "speedup"
        );
        for r in &rps {
            crate::outln!(
                "{:>6} {:>6} {:>6.2} {:>7} {:>10.1} {:>10.1} {:>10.1} {:>7.2}×",
                r.rows,
                r.cols,
                r.ratio,
                r.threads,
                r.rps_us,
                r.dense_us,
                r.dense_loop_us,
                r.dense_us.min(r.dense_loop_us) / r.rps_us
            );
        }
    }
    if rows_out.is_empty() {
        return Ok(());
    }
    crate::outln!(
        "{:>6} {:>6} {:>4} {:>7} {:>10} {:>10} {:>10} {:>8}",
        "rows",
        "cols",
        "bits",
        "threads",
        "lut µs",
        "candle µs",
        "loop µs",
        "speedup"
    );
    for r in &rows_out {
        crate::outln!(
            "{:>6} {:>6} {:>4} {:>7} {:>10.1} {:>10.1} {:>10.1} {:>7.2}×",
            r.rows,
            r.cols,
            r.bits,
            r.threads,
            r.lut_us,
            r.dense_us,
            r.dense_loop_us,
            r.dense_us.min(r.dense_loop_us) / r.lut_us
        );
    }
    Ok(())
}

/// One measured configuration of a pruned form.
#[derive(Debug, serde::Serialize)]
struct SparseRow {
    rows: usize,
    cols: usize,
    threads: usize,
    /// Activation rows multiplied at once (1 = decode).
    batch: usize,
    /// `csr`, `nm-2:4`, or at batch > 1 also `csr-densify` (the forward's prefill path:
    /// densify the CSR matrix for the call, then candle's GEMM).
    form: String,
    sparsity: f64,
    /// Microseconds per product (median of repeats).
    us: f64,
    /// The same product on the dense f32 matrix through candle's matmul.
    dense_us: f64,
    /// Batch 1 only: the plain row-parallel dense loop; 0 at batch > 1.
    dense_loop_us: f64,
}

/// Pruned forms against dense f32, side by side in one run on the SmolLM2 (and 7B) shapes.
fn sparse_kernel_bench(args: &KernelBenchArgs) -> anyhow::Result<()> {
    use crate::model::nm::NmPacked;
    use crate::model::sparse::CsrMatrix;
    use crate::technique::prune::prune_weights;
    use crate::technique::recipe::{NmScore, PruneKnobs, PruneMethod};
    use candle_core::{Device, Tensor};

    let mut shapes = SMOLLM2_SHAPES.to_vec();
    if !args.small {
        shapes.extend_from_slice(&LARGE_SHAPES);
    }
    let knobs = |method, ratio| PruneKnobs {
        ratio,
        method,
        n: 2,
        m: 4,
        score: NmScore::Magnitude,
        form: crate::technique::recipe::SparseForm::Auto,
    };
    let mut out = Vec::new();
    for &(rows, cols) in &shapes {
        let batch = args.prefill_rows.max(1);
        let (w, x) = bench_inputs(rows, cols, batch);
        let wt = Tensor::from_slice(&w, (rows, cols), &Device::Cpu)?;
        let x1 = Tensor::from_slice(&x[..cols], (1, cols), &Device::Cpu)?;
        let xb = Tensor::from_slice(&x, (batch, cols), &Device::Cpu)?;
        let mut forms: Vec<(String, f64, Vec<f32>)> = Vec::new();
        for &s in &args.sparsity {
            let mut p = w.clone();
            prune_weights(&mut p, rows, cols, &knobs(PruneMethod::Magnitude, s), None)?;
            forms.push(("csr".into(), s, p));
        }
        let mut p = w.clone();
        prune_weights(&mut p, rows, cols, &knobs(PruneMethod::Nm, 0.5), None)?;
        forms.push(("nm-2:4".into(), 0.5, p));
        for &threads in &args.threads {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?;
            pool.install(|| -> anyhow::Result<()> {
                let wt_t = wt.t()?;
                let mut y = vec![0f32; rows * batch];
                let dense_us = time_us(|| {
                    let _ = x1.matmul(&wt_t);
                });
                let dense_loop_us = time_us(|| dense_loop(&w, &x[..cols], &mut y[..rows]));
                let dense_b_us = time_us(|| {
                    let _ = xb.matmul(&wt_t);
                });
                for (form, sparsity, p) in &forms {
                    let row = |batch, form: &str, us, dense_us, dense_loop_us| SparseRow {
                        rows,
                        cols,
                        threads,
                        batch,
                        form: form.to_string(),
                        sparsity: *sparsity,
                        us,
                        dense_us,
                        dense_loop_us,
                    };
                    if form == "csr" {
                        let m = CsrMatrix::from_dense(p, rows, cols)?;
                        let us = time_us(|| m.gemv(&x[..cols], &mut y[..rows]));
                        out.push(row(1, form, us, dense_us, dense_loop_us));
                        let us = time_us(|| m.gemm(&x, batch, &mut y));
                        out.push(row(batch, form, us, dense_b_us, 0.0));
                        let us = time_us(|| {
                            let d = Tensor::from_vec(m.to_dense(), (rows, cols), &Device::Cpu);
                            if let Ok(d) = d.and_then(|d| d.t()) {
                                let _ = xb.matmul(&d);
                            }
                        });
                        out.push(row(batch, "csr-densify", us, dense_b_us, 0.0));
                    } else {
                        let m = NmPacked::from_dense(p, rows, cols, 2, 4)?;
                        let us = time_us(|| m.gemv(&x[..cols], &mut y[..rows]));
                        out.push(row(1, form, us, dense_us, dense_loop_us));
                        let us = time_us(|| {
                            let d = Tensor::from_vec(m.to_dense(), (rows, cols), &Device::Cpu);
                            if let Ok(d) = d.and_then(|d| d.t()) {
                                let _ = xb.matmul(&d);
                            }
                        });
                        out.push(row(batch, "nm-densify", us, dense_b_us, 0.0));
                    }
                }
                Ok(())
            })?;
        }
    }
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    crate::outln!(
        "{:>6} {:>6} {:>7} {:>5} {:>12} {:>8} {:>10} {:>10} {:>10} {:>8}",
        "rows",
        "cols",
        "threads",
        "batch",
        "form",
        "sparsity",
        "µs",
        "candle µs",
        "loop µs",
        "speedup"
    );
    for r in &out {
        let best = if r.dense_loop_us > 0.0 {
            r.dense_us.min(r.dense_loop_us)
        } else {
            r.dense_us
        };
        crate::outln!(
            "{:>6} {:>6} {:>7} {:>5} {:>12} {:>8.2} {:>10.1} {:>10.1} {:>10.1} {:>7.2}×",
            r.rows,
            r.cols,
            r.threads,
            r.batch,
            r.form,
            r.sparsity,
            r.us,
            r.dense_us,
            r.dense_loop_us,
            best / r.us
        );
    }
    Ok(())
}
