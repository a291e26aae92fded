//! Side-by-side benchmarks: our perplexity eval against llama.cpp's `llama-perplexity` on the
//! same text, context and thread count, in one run, so machine load affects both alike.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;

use crate::eval::{PerplexityOptions, perplexity};
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
    /// (what `shared/tools/llamacpp-peer.sh` builds). Without it only our side is measured.
    #[arg(long)]
    pub peer_bin: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What `llama-perplexity` reported.
#[derive(Debug, serde::Serialize)]
struct PeerResult {
    ppl: Option<f64>,
    tok_s: f64,
    seconds: f64,
}

fn default_peer_bin() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(Path::new(&home).join(".cache/reparam/llamacpp/build/bin"))
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
    let ours = perplexity(&model, &tokens, opts, None, &mut |_, _| true)?;
    let our_tok_s = (ours.chunks * ours.ctx) as f64 / ours.seconds;

    let peer_bin = args.peer_bin.clone().or_else(default_peer_bin);
    let peer_exe = peer_bin.map(|b| b.join("llama-perplexity")).filter(|p| p.is_file());
    let peer = match &peer_exe {
        Some(exe) => {
            let peer_model = args
                .peer_model
                .clone()
                .unwrap_or_else(|| PathBuf::from(&args.model));
            Some(run_peer(exe, &peer_model, &args.text, args.ctx, args.chunks, threads)?)
        }
        None => None,
    };
    let ratio = peer.as_ref().map(|p| our_tok_s / p.tok_s);
    if args.json {
        let obj = serde_json::json!({
            "threads": threads,
            "ours": { "ppl": ours.ppl, "tok_s": our_tok_s, "seconds": ours.seconds },
            "llama_cpp": peer,
            "ratio": ratio,
        });
        println!("{}", serde_json::to_string_pretty(&obj)?);
        return Ok(());
    }
    println!("threads {threads}, ctx {}, {} chunks", args.ctx, ours.chunks);
    println!(
        "reparam           {:>9.1} tok/s  ppl {:.4}  ({:.2}s)",
        our_tok_s, ours.ppl, ours.seconds
    );
    match (&peer, ratio) {
        (Some(p), Some(r)) => {
            println!(
                "llama-perplexity  {:>9.1} tok/s  ppl {}  ({:.2}s)",
                p.tok_s,
                p.ppl.map_or("?".into(), |v| format!("{v:.4}")),
                p.seconds
            );
            println!("ratio (ours / llama.cpp) {r:.2}×");
        }
        _ => println!("llama-perplexity not found: build it with shared/tools/llamacpp-peer.sh or pass --peer-bin"),
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
    let start = Instant::now();
    let out = Command::new(exe)
        .arg("-m")
        .arg(model)
        .arg("-f")
        .arg(text)
        .args(["-c", &ctx.to_string(), "--chunks", &chunks.to_string()])
        .args(["-t", &threads.to_string(), "-b", &ctx.to_string()])
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    let seconds = start.elapsed().as_secs_f64();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "{} failed:\n{log}", exe.display());
    let tok_s = parse_prompt_tok_s(&log).with_context(|| {
        format!("no `prompt eval time` line in the output of {}", exe.display())
    })?;
    Ok(PeerResult {
        ppl: parse_final_ppl(&log),
        tok_s,
        seconds,
    })
}

/// Tokens/s from llama.cpp's `prompt eval time = … ( … tokens per second)` line.
fn parse_prompt_tok_s(log: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains("prompt eval time"))?;
    let before = line.split("tokens per second").next()?;
    before.rsplit([',', '(']).next()?.trim().parse().ok()
}

/// The perplexity from `Final estimate: PPL = 12.3456 +/- 0.1234`.
fn parse_final_ppl(log: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains("Final estimate: PPL ="))?;
    line.split("PPL =").nth(1)?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_llama_cpp_log_lines() {
        let log = "llama_perf_context_print: prompt eval time =    9182.35 ms /  8192 tokens (    1.12 ms per token,   892.14 tokens per second)\nFinal estimate: PPL = 12.3456 +/- 0.12345\n";
        assert_eq!(parse_prompt_tok_s(log), Some(892.14));
        assert_eq!(parse_final_ppl(log), Some(12.3456));
        assert_eq!(parse_prompt_tok_s("nothing"), None);
    }
}
