//! The headless command line: every subcommand parses raw arguments, builds a validated
//! request, hands it to the library and prints the result. No model maths lives here.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::eval::{PerplexityOptions, generate_greedy, perplexity};
use crate::model::{LinearKind, Model, load_spec};
use crate::progress::TermProgress;

#[derive(Debug, Parser)]
#[command(name = "reparam", version, about = "Reparam Studio: compress transformer models layer by layer and measure the trade-offs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show a model's architecture and every linear layer with its shape and bytes.
    Info {
        /// A GGUF file, a Hugging Face directory, or `zoo:NAME`.
        model: String,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Measure perplexity (llama.cpp windowing), and KL divergence against a base model.
    Eval(EvalArgs),
    /// Greedily continue a prompt.
    Generate {
        model: String,
        #[arg(long)]
        prompt: String,
        /// Number of tokens to generate.
        #[arg(short = 'n', long, default_value_t = 32)]
        n: usize,
    },
    /// Benchmarks, side by side with a baseline.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Args)]
struct EvalArgs {
    /// A GGUF file, a Hugging Face directory, or `zoo:NAME`.
    model: String,
    /// Text file to score.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Evaluate at most this many chunks.
    #[arg(long)]
    chunks: Option<usize>,
    /// Reference model for KL divergence, top-1 agreement and RMS Δp.
    #[arg(long)]
    base: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Perplexity-eval throughput (tokens/s), ours and llama.cpp's `llama-perplexity` side by side.
    Eval(crate::bench::EvalBenchArgs),
}

/// Parses `std::env::args` and runs the chosen subcommand.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Info { model, json } => info(&model, json),
        Command::Eval(args) => eval(&args),
        Command::Generate { model, prompt, n } => generate(&model, &prompt, n),
        Command::Bench(BenchCommand::Eval(args)) => crate::bench::eval_bench(&args),
    }
}

fn load(spec: &str) -> anyhow::Result<Model> {
    let start = std::time::Instant::now();
    let model = load_spec(spec)?;
    tracing::info!("loaded {} in {:.2}s", model.name, start.elapsed().as_secs_f64());
    Ok(model)
}

fn info(spec: &str, json: bool) -> anyhow::Result<()> {
    let model = load(spec)?;
    let t = &model.transformer;
    let layers: Vec<serde_json::Value> = t
        .linear_ids()
        .filter_map(|id| {
            let w = t.linear(id)?;
            let (out, inp) = w.shape();
            Some(serde_json::json!({
                "name": id.to_string(),
                "hf_name": id.hf_name(),
                "shape": [out, inp],
                "bytes": w.size_bytes(),
            }))
        })
        .collect();
    let cfg = model.config();
    if json {
        let obj = serde_json::json!({
            "name": model.name,
            "path": model.path,
            "format": model.format,
            "model_id": model.id,
            "config": cfg,
            "params": cfg.param_count(),
            "bytes": t.size_bytes(),
            "layers": layers,
        });
        println!("{}", serde_json::to_string_pretty(&obj)?);
        return Ok(());
    }
    println!("{} ({:?}, {:?})", model.name, cfg.architecture, model.format);
    println!("id        {}", model.id);
    println!(
        "dims      {} blocks, width {}, ffn {}, {} heads / {} kv heads × {}, vocab {}",
        cfg.num_layers,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.vocab_size
    );
    println!(
        "rope      base {}, {}tied embeddings",
        cfg.rope_theta,
        if cfg.tie_word_embeddings { "" } else { "un" }
    );
    println!("params    {}", cfg.param_count());
    println!("bytes     {} (f32 in memory)", t.size_bytes());
    println!();
    println!("{:<20} {:>12} {:>12}", "layer", "shape", "bytes");
    for block in 0..t.blocks.len() {
        for kind in LinearKind::ALL {
            let w = t.blocks[block].linear(kind);
            let (o, i) = w.shape();
            println!(
                "{:<20} {:>12} {:>12}",
                format!("blk.{block}.{}", kind.gguf_name()),
                format!("{o}×{i}"),
                w.size_bytes()
            );
        }
    }
    Ok(())
}

fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    let model = load(&args.model)?;
    let base = args.base.as_deref().map(load).transpose()?;
    let Some(text_path) = &args.text else {
        anyhow::bail!("{}: no --text given; pass the text file to score", args.model);
    };
    let text = std::fs::read_to_string(text_path)
        .with_context(|| format!("reading {}", text_path.display()))?;
    let tokens = model.tokenizer.encode(&text, true)?;
    let opts = PerplexityOptions {
        ctx: args.ctx,
        chunks: args.chunks,
    };
    let bar = TermProgress::new("perplexity");
    let report = perplexity(&model, &tokens, opts, base.as_ref(), &mut |d, t| bar.update(d, t))?;
    bar.finish();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "ppl {:.4} ± {:.4}  ({} tokens scored in {} chunks of {}, {:.1}s)",
        report.ppl, report.ppl_stderr, report.tokens, report.chunks, report.ctx, report.seconds
    );
    if let Some(k) = &report.kld {
        println!(
            "kld mean {:.6} ± {:.6}  median {:.6}  p99 {:.6}  top-1 agree {:.2}%  rms Δp {:.3}%",
            k.kld_mean,
            k.kld_stderr,
            k.kld_median,
            k.kld_p99,
            100.0 * k.top1_agree,
            100.0 * k.rms_dp
        );
    }
    Ok(())
}

fn generate(spec: &str, prompt: &str, n: usize) -> anyhow::Result<()> {
    let model = load(spec)?;
    let ids = model.tokenizer.encode(prompt, true)?;
    let out = generate_greedy(&model, &ids, n, |_| false)?;
    println!("{}{}", prompt, model.tokenizer.decode(&out)?);
    Ok(())
}
