//! `reparam bench decode`: batch-1 decode on our engine next to llama.cpp's `llama-bench` on
//! the same machine, thread count and run, with the bytes each token reads and how close that
//! comes to a measured memory-bandwidth bound; and prefill of a 512-token prompt next to its
//! prompt-processing test.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use clap::Args;

use crate::calib::calibration_tokens;
use crate::engine::{Engine, EngineOptions, KvType, PoolKind, read_bandwidth};
use crate::eval::latency::{measure_decode, measure_prefill};
use crate::model::load_spec;
use crate::technique::recipe::Recipe;
use crate::technique::{CalibOptions, apply};

#[derive(Debug, Args)]
pub struct DecodeBenchArgs {
    /// The model (GGUF, HF directory or `zoo:NAME`).
    pub model: String,
    /// Compress with this recipe first (calibrated on `--calib-text` or the default mix).
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    #[arg(long)]
    pub calib_text: Option<PathBuf>,
    /// Calibration windows for the recipe.
    #[arg(long, default_value_t = 32)]
    pub calib_samples: usize,
    /// The GGUF `llama-bench` runs (e.g. a Q4_0 or Q3_K_S of the same model).
    #[arg(long)]
    pub peer_model: Option<PathBuf>,
    /// Directory holding `llama-bench`; default `~/.cache/reparam/llamacpp/build/bin` (what
    /// `scripts/llamacpp-peer.sh` builds).
    #[arg(long)]
    pub peer_bin: Option<PathBuf>,
    /// Decode steps per round (three rounds, median reported).
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    /// Tokens in the KV cache before the timed steps (llama-bench's `-d`): how much cache
    /// each step reads.
    #[arg(long, default_value_t = 16)]
    pub prompt: usize,
    /// Then this many rounds of our decode (spinning pool, f32 cache) and llama-bench's tg taken
    /// in turn: the machine's speed drifts between runs, and a drift moves both sides of a
    /// round alike, so the per-round ratio is steadier than either rate.
    #[arg(long, default_value_t = 0)]
    pub alternate: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One round of [`DecodeBenchArgs::alternate`].
#[derive(Debug, serde::Serialize)]
struct AlternateRound {
    ours_tok_s: f64,
    tg_tok_s: f64,
    ratio: f64,
}

/// What `llama-bench` measured: token generation and prompt processing, tokens/s.
#[derive(Debug, serde::Serialize)]
struct PeerBench {
    model: PathBuf,
    tg_tok_s: f64,
    pp_tok_s: f64,
}

#[derive(Debug, serde::Serialize)]
struct PoolResult {
    pool: PoolKind,
    kv: KvType,
    decode_tok_s: f64,
    decode_range: [f64; 2],
    /// Weight bytes read per token × tokens/s.
    gb_s: f64,
    /// `gb_s` as a fraction of the probe's bound.
    of_bound: f64,
}

/// Our prompt processing: one window of `tokens` positions (llama-bench's `-p`).
#[derive(Debug, serde::Serialize)]
struct PrefillResult {
    tokens: usize,
    prefill_tok_s: f64,
    prefill_range: [f64; 2],
}

/// Prompt length of the prefill measurement, as llama-bench's `-p 512`.
const PREFILL_TOKENS: usize = 512;

/// Per stored form: layers and bytes read per token.
#[derive(Debug, serde::Serialize)]
struct FormBytes {
    form: &'static str,
    layers: usize,
    bytes: usize,
}

pub fn decode_bench(args: &DecodeBenchArgs) -> anyhow::Result<()> {
    let threads = rayon::current_num_threads();
    let base = load_spec(&args.model)?;
    let model = match &args.recipe {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let recipe = Recipe::from_toml(&text)?;
            let calib = calibration_tokens(&base, args.calib_text.as_ref())?;
            let opts = CalibOptions {
                samples: args.calib_samples,
                ..CalibOptions::default()
            }
            .within_ctx(base.config().max_position_embeddings);
            eprintln!("compressing with {}…", path.display());
            apply(&base, &recipe, &calib, opts, &mut |_, _, _| true)?.model
        }
        None => base,
    };
    let prompt = model.tokenizer.encode(
        "The history of the city begins with a small settlement on the river, where",
        true,
    )?;
    let tokens: Vec<u32> = prompt
        .iter()
        .copied()
        .cycle()
        .take((args.prompt + 2).max(PREFILL_TOKENS))
        .collect();
    let bound = read_bandwidth(EngineOptions {
        threads,
        ..EngineOptions::default()
    });
    let mut pools = Vec::new();
    let mut per_token = 0;
    let mut forms: Vec<FormBytes> = Vec::new();
    // Both pools with an f32 cache, and the spinning pool with an f16 one.
    let configs = [
        (PoolKind::Spin, KvType::F32),
        (PoolKind::Rayon, KvType::F32),
        (PoolKind::Spin, KvType::F16),
    ];
    for (pool, kv) in configs {
        let engine = Engine::new(&model.transformer, EngineOptions { threads, pool, kv })?;
        per_token = engine.weight_bytes_per_token();
        if forms.is_empty() {
            for (_, l) in engine.linears() {
                match forms.iter_mut().find(|f| f.form == l.form()) {
                    Some(f) => {
                        f.layers += 1;
                        f.bytes += l.bytes();
                    }
                    None => forms.push(FormBytes {
                        form: l.form(),
                        layers: 1,
                        bytes: l.bytes(),
                    }),
                }
            }
        }
        let (tok_s, range) = measure_decode(&engine, &tokens, args.prompt, args.tokens, 3)?;
        let gb_s = per_token as f64 * tok_s / 1e9;
        pools.push(PoolResult {
            pool,
            kv,
            decode_tok_s: tok_s,
            decode_range: range,
            gb_s,
            of_bound: gb_s / bound,
        });
    }
    let prefill = {
        let engine = Engine::new(&model.transformer, EngineOptions::default())?;
        let (tok_s, range) = measure_prefill(&engine, &tokens[..PREFILL_TOKENS], 3)?;
        PrefillResult {
            tokens: PREFILL_TOKENS,
            prefill_tok_s: tok_s,
            prefill_range: range,
        }
    };
    let peer_exe = args
        .peer_bin
        .clone()
        .or_else(crate::export::deployed::default_llamacpp_dir)
        .map(|b| b.join("llama-bench"))
        .filter(|p| p.is_file());
    let peer = match (&peer_exe, &args.peer_model) {
        (Some(exe), Some(m)) => Some(run_llama_bench(exe, m, threads, args.tokens, args.prompt)?),
        _ => None,
    };
    let mut rounds = Vec::new();
    if let (Some(exe), Some(m)) = (&peer_exe, &args.peer_model)
        && args.alternate > 0
    {
        let engine = Engine::new(&model.transformer, EngineOptions::default())?;
        for _ in 0..args.alternate {
            let (ours, _) = measure_decode(&engine, &tokens, args.prompt, args.tokens, 1)?;
            let rows = llama_bench_rows(exe, m, threads, args.tokens, args.prompt, 0, 1)?;
            let tg = bench_rate(&rows, true, exe)?;
            rounds.push(AlternateRound {
                ours_tok_s: ours,
                tg_tok_s: tg,
                ratio: ours / tg,
            });
        }
    }
    let median_ratio = {
        let mut r: Vec<f64> = rounds.iter().map(|r| r.ratio).collect();
        r.sort_by(f64::total_cmp);
        r.get(r.len() / 2).copied()
    };
    if args.json {
        let obj = serde_json::json!({
            "model": args.model,
            "recipe": args.recipe,
            "threads": threads,
            "prompt": args.prompt,
            "read_bandwidth_gb_s": bound,
            "weight_bytes_per_token": per_token,
            "forms": forms,
            "ours": pools,
            "prefill": prefill,
            "llama_cpp": peer,
            "alternating": rounds,
            "alternating_median_ratio": median_ratio,
        });
        crate::outln!("{}", serde_json::to_string_pretty(&obj)?);
        return Ok(());
    }
    crate::outln!(
        "threads {threads}; read bandwidth bound {bound:.1} GB/s; {:.1} MB of weights per token",
        per_token as f64 / 1e6
    );
    for f in &forms {
        crate::outln!(
            "  {:<9} {:>4} layers {:>9.2} MB",
            f.form,
            f.layers,
            f.bytes as f64 / 1e6
        );
    }
    crate::outln!("decode after a {}-token prompt:", args.prompt);
    for p in &pools {
        crate::outln!(
            "reparam decode ({:?} pool, {:?} KV) {:>7.1} tok/s  [{:.1}–{:.1}]  {:>5.1} GB/s  {:>3.0}% of bound",
            p.pool,
            p.kv,
            p.decode_tok_s,
            p.decode_range[0],
            p.decode_range[1],
            p.gb_s,
            100.0 * p.of_bound
        );
    }
    crate::outln!(
        "reparam prefill of {} tokens {:>9.1} tok/s  [{:.1}–{:.1}]",
        prefill.tokens,
        prefill.prefill_tok_s,
        prefill.prefill_range[0],
        prefill.prefill_range[1]
    );
    match &peer {
        Some(p) => crate::outln!(
            "llama-bench {}: tg {:.1} tok/s, pp {:.1} tok/s",
            p.model.display(),
            p.tg_tok_s,
            p.pp_tok_s
        ),
        None if peer_exe.is_none() => crate::outln!(
            "llama-bench not found: build it with scripts/llamacpp-peer.sh (or pass --peer-bin), \
             then pass --peer-model GGUF"
        ),
        None => crate::outln!("pass --peer-model GGUF to run llama-bench side by side"),
    }
    for (i, r) in rounds.iter().enumerate() {
        crate::outln!(
            "round {}: ours {:.1} tok/s, llama-bench tg {:.1} tok/s, ratio {:.3}",
            i + 1,
            r.ours_tok_s,
            r.tg_tok_s,
            r.ratio
        );
    }
    if let Some(m) = median_ratio {
        crate::outln!("median ratio over {} rounds: {m:.3}", rounds.len());
    }
    Ok(())
}

/// `llama-bench` with one generation test and one prompt test, both after `depth` tokens in
/// the context (its KV cache is f16 by default).
fn run_llama_bench(
    exe: &Path,
    model: &Path,
    threads: usize,
    tokens: usize,
    depth: usize,
) -> anyhow::Result<PeerBench> {
    let rows = llama_bench_rows(exe, model, threads, tokens, depth, PREFILL_TOKENS, 3)?;
    Ok(PeerBench {
        model: model.to_path_buf(),
        tg_tok_s: bench_rate(&rows, true, exe)?,
        pp_tok_s: bench_rate(&rows, false, exe)?,
    })
}

/// `llama-bench`'s JSON rows for `tokens` generated and a `prompt`-token prompt test (0: none),
/// `reps` repetitions each.
fn llama_bench_rows(
    exe: &Path,
    model: &Path,
    threads: usize,
    tokens: usize,
    depth: usize,
    prompt: usize,
    reps: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = Command::new(exe)
        .arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string()])
        .args([
            "-n",
            &tokens.to_string(),
            "-p",
            &prompt.to_string(),
            "-d",
            &depth.to_string(),
            "-r",
            &reps.to_string(),
            "-o",
            "json",
        ])
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} failed:\n{}",
        exe.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing the JSON of {}", exe.display()))
}

/// The average tokens/s of the generation (`true`) or prompt test in `rows`.
fn bench_rate(rows: &[serde_json::Value], generation: bool, exe: &Path) -> anyhow::Result<f64> {
    rows.iter()
        .find(|r| (r["n_gen"].as_u64().unwrap_or(0) > 0) == generation)
        .and_then(|r| r["avg_ts"].as_f64())
        .with_context(|| {
            format!(
                "no {} test in the output of {}",
                if generation { "tg" } else { "pp" },
                exe.display()
            )
        })
}
