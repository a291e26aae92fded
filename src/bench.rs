//! Side-by-side benchmarks: our perplexity eval against llama.cpp's `llama-perplexity` on the
//! same text, context and thread count, in one run, so machine load affects both alike.

use std::path::{Path, PathBuf};
use std::process::Command;

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
    println!(
        "threads {threads}, ctx {}, {} chunks",
        args.ctx, ours.chunks
    );
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
        _ => println!(
            "llama-perplexity not found: build it with shared/tools/llamacpp-peer.sh or pass --peer-bin"
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
    let out = Command::new(exe)
        .arg("-m")
        .arg(model)
        .arg("-f")
        .arg(text)
        .args(["-c", &ctx.to_string(), "--chunks", &chunks.to_string()])
        .args(["-t", &threads.to_string(), "-b", &ctx.to_string()])
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "{} failed:\n{log}", exe.display());
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
