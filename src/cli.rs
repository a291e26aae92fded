//! The headless command line: every subcommand parses raw arguments, builds a validated
//! request, hands it to the library and prints the result. No model maths lives here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::device::DeviceChoice;
use crate::eval::PerplexityOptions;
use crate::eval::generate::argmax;
use crate::eval::tasks::task_accuracy;
use crate::model::{LinearKind, Model, load_spec};
use crate::progress::TermProgress;
use crate::run::EvalSettings;
use crate::technique::CalibOptions;
use crate::technique::allocate::allocate_recipe;
use crate::technique::recipe::{Recipe, ScaleLayoutKnob, ShiftAddKnobs};
use crate::zoo::tasks::Task;
use crate::zoo::{ZooOptions, build_zoo};

mod bench;
mod bench_decode;
mod experiments;
mod search;
mod sensitivity;

#[derive(Debug, Parser)]
#[command(
    name = "reparam",
    version,
    about = "Reparam Studio: compress transformer models layer by layer and measure the trade-offs",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Without a subcommand, the desktop app opens.
    #[command(subcommand)]
    command: Option<Command>,
    /// The app's options when no subcommand is given (`reparam --store DIR` is
    /// `reparam gui --store DIR`).
    #[command(flatten)]
    gui: GuiArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open the desktop app (also what `reparam` alone does).
    Gui(GuiArgs),
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
        /// The KV cache's element type: `f32`, or `f16` (half the cache's memory and reads).
        #[arg(long, default_value = "f32")]
        kv: crate::engine::KvType,
    },
    /// Apply a recipe and measure the result against the uncompressed model.
    Run(RunArgs),
    /// Write a recipe: shift-add bits per layer under an average-bits budget (`--avg-bits`), or
    /// pruning ratios at a global sparsity (`--prune`, uniform or `--owl`).
    Allocate(AllocateArgs),
    /// Benchmarks, side by side with a baseline.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The bundled model zoo.
    #[command(subcommand)]
    Zoo(ZooCommand),
    /// Run every point of a search space into the store (resumable, shardable).
    Sweep(experiments::SweepArgs),
    /// Print the Pareto front of stored runs over two or three metrics.
    Pareto(experiments::ParetoArgs),
    /// List stored runs.
    History(experiments::HistoryArgs),
    /// Compare two groups of runs: fronts, hypervolumes, and the per-layer plan diff of the
    /// closest pair.
    Compare(experiments::CompareArgs),
    /// Maintain the experiment store.
    #[command(subcommand)]
    Store(experiments::StoreCommand),
    /// Tag a stored run.
    Tag(experiments::TagArgs),
    /// Export a stored run: its recipe, the compressed model, llama.cpp tensor types.
    Export(experiments::ExportArgs),
    /// Per-layer sensitivity: KL divergence from the base when only that layer is compressed
    /// at the recipe's setting (or `--default-bits`).
    Sensitivity(sensitivity::SensitivityArgs),
    /// Measure every linear at every candidate setting of a candidates file, alone (KLD,
    /// bytes, product time), into the store's measurement table; resumable and shardable.
    Measure(search::MeasureCmd),
    /// Search per-layer assignments of the candidates: the predicted Pareto front of bytes,
    /// KLD (and decode speed) from the measurement table, and `--measure K` of its points run
    /// as real jobs to check the prediction.
    Search(search::SearchArgs),
    /// A recipe from what another tool was given: a llama.cpp `--tensor-type` list
    /// (PATTERN=TYPE lines; RTN rules, exact for Q4_0/Q5_0/Q8_0, approximate and noted for the
    /// others), or a mergekit config (YAML; linear and task_arithmetic).
    Import {
        /// The tensor-type list.
        #[arg(
            long,
            conflicts_with = "mergekit",
            required_unless_present = "mergekit"
        )]
        tensor_types: Option<PathBuf>,
        /// The mergekit config.
        #[arg(long)]
        mergekit: Option<PathBuf>,
        /// Where the recipe goes (TOML).
        #[arg(long)]
        out: PathBuf,
        /// Check the recipe against this model (every rule must match a layer).
        #[arg(long)]
        model: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ZooCommand {
    /// Train the zoo from scratch: tokenizer, `base`, the task fine-tunes, `multi`, and the
    /// merge family (`pre` and its four specialists).
    Train {
        /// Where to write the models.
        #[arg(long, default_value = "assets/zoo")]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Multiply every model's training steps (1.0 reproduces the shipped zoo).
        #[arg(long, default_value_t = 1.0)]
        steps_scale: f64,
        /// Train only these members (comma separated); their parents are read from OUT.
        #[arg(long, value_delimiter = ',')]
        only: Option<Vec<String>>,
        /// Members trained at once, sharing the cores (default: one per core).
        #[arg(long)]
        jobs: Option<usize>,
    },
}

/// `reparam gui`.
#[derive(Debug, Args)]
struct GuiArgs {
    /// Experiment store directory (default `experiments/store`).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Open this model instead of the one from the last session.
    #[arg(long)]
    model: Option<String>,
    /// Drive the app from a script (screenshots, demos); see `src/ui/demo.rs`.
    #[arg(long)]
    demo_script: Option<PathBuf>,
    /// Experiment jobs run at once.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

impl GuiArgs {
    fn options(self) -> crate::ui::GuiOptions {
        crate::ui::GuiOptions {
            store_dir: self.store,
            model: self.model,
            demo_script: self.demo_script,
            workers: self.workers,
        }
    }
}

/// How the evaluation text is read and windowed (shared by `eval` and `run`).
#[derive(Debug, Args)]
struct TextArgs {
    /// Text file to score (default: a zoo model's held-out `lang` text, else the suite
    /// `held-out`).
    #[arg(long, conflicts_with = "suite")]
    text: Option<PathBuf>,
    /// Evaluation suite: `held-out` (six domains the calibration never saw: prose, dialogue,
    /// technical, code, tables, legal) or a directory of `.txt` files, one per domain. The
    /// headline metrics are token-weighted over the domains; each domain's are reported too.
    #[arg(long)]
    suite: Option<String>,
    /// Tokens per chunk (default 512, or the model's context if shorter).
    #[arg(long)]
    ctx: Option<usize>,
    /// Evaluate at most this many chunks.
    #[arg(long)]
    chunks: Option<usize>,
}

/// Where a command computes (shared by every subcommand that does).
#[derive(Debug, Args)]
pub(crate) struct DeviceArgs {
    /// `cpu`, or `cuda` / `cuda:N` in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu", env = "REPARAM_DEVICE")]
    pub(crate) device: DeviceChoice,
}

/// Calibration data (shared by `run` and `allocate`).
#[derive(Debug, Args)]
struct CalibArgs {
    /// Calibration text (default: the bundled one, or the zoo's training mix).
    #[arg(long)]
    calib_text: Option<PathBuf>,
    /// Calibration windows.
    #[arg(long, default_value_t = 32)]
    calib_samples: usize,
    /// Tokens per calibration window (at most the context).
    #[arg(long, default_value_t = 512)]
    calib_len: usize,
}

impl CalibArgs {
    fn options(&self) -> CalibOptions {
        CalibOptions {
            samples: self.calib_samples,
            seq_len: self.calib_len,
        }
    }
}

#[derive(Debug, Args)]
struct EvalArgs {
    /// A GGUF file, a Hugging Face directory, or `zoo:NAME`.
    model: String,
    #[command(flatten)]
    text: TextArgs,
    /// Reference model for KL divergence, top-1 agreement and RMS Δp.
    #[arg(long)]
    base: Option<String>,
    /// Also measure exact-match accuracy on the zoo tasks (held-out prompts).
    #[arg(long)]
    tasks: bool,
    /// Held-out prompts per task for `--tasks`.
    #[arg(long, default_value_t = crate::eval::tasks::EVAL_PROMPTS_PER_TASK)]
    prompts: usize,
    #[command(flatten)]
    device: DeviceArgs,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// A GGUF file, a Hugging Face directory, or `zoo:NAME`.
    model: String,
    /// The recipe (TOML).
    #[arg(long)]
    recipe: PathBuf,
    #[command(flatten)]
    text: TextArgs,
    #[command(flatten)]
    calib: CalibArgs,
    /// Held-out prompts per task on zoo models.
    #[arg(long, default_value_t = crate::eval::tasks::EVAL_PROMPTS_PER_TASK)]
    prompts: usize,
    #[command(flatten)]
    device: DeviceArgs,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: experiments::RunStoreArgs,
}

#[derive(Debug, Args)]
struct AllocateArgs {
    /// A GGUF file, a Hugging Face directory, or `zoo:NAME`.
    model: String,
    /// Parameter-weighted average bits per weight (planes only, scales not counted).
    #[arg(long, required_unless_present = "prune", conflicts_with = "prune")]
    avg_bits: Option<f64>,
    /// Write a pruning recipe at this global sparsity (0–0.95) instead of a bits allocation.
    #[arg(long)]
    prune: Option<f64>,
    /// With `--prune`: OWL outlier-weighted per-block ratios instead of one uniform ratio.
    #[arg(long, requires = "prune")]
    owl: bool,
    /// With `--prune`: `wanda` or `magnitude`.
    #[arg(long, default_value = "wanda", requires = "prune")]
    method: String,
    /// With `--owl`: half-spread λ of the per-block ratios.
    #[arg(long, default_value_t = 0.08)]
    owl_lambda: f64,
    /// With `--owl`: a score is an outlier above this multiple of its block's mean.
    #[arg(long, default_value_t = 5.0)]
    owl_m: f64,
    /// Bit widths a layer may get.
    #[arg(long, value_delimiter = ',', default_value = "2,3,4")]
    bits: Vec<usize>,
    /// Scale layout of every layer (`block` or `column`).
    #[arg(long, default_value = "block")]
    layout: String,
    #[command(flatten)]
    calib: CalibArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Write the recipe here (TOML) instead of to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Perplexity-eval throughput (tokens/s), ours and llama.cpp's `llama-perplexity` side by side.
    Eval(bench::EvalBenchArgs),
    /// Shift-add LUT GEMV against dense f32 GEMV on SmolLM2 and 7B shapes.
    Kernels(bench::KernelBenchArgs),
    /// Batch-1 decode on the engine (both thread pools) next to llama.cpp's `llama-bench`,
    /// with bytes per token and the fraction of a measured read-bandwidth bound.
    Decode(bench_decode::DecodeBenchArgs),
}

/// Parses `std::env::args` and runs the chosen subcommand.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Gui(cli.gui));
    match command {
        Command::Gui(args) => crate::ui::run_gui(args.options()),
        Command::Info { model, json } => info(&model, json),
        Command::Eval(args) => eval(&args),
        Command::Generate {
            model,
            prompt,
            n,
            kv,
        } => generate(&model, &prompt, n, kv),
        Command::Run(args) => run_recipe(&args),
        Command::Allocate(args) => allocate(&args),
        Command::Bench(BenchCommand::Eval(args)) => bench::eval_bench(&args),
        Command::Bench(BenchCommand::Kernels(args)) => bench::kernel_bench(&args),
        Command::Bench(BenchCommand::Decode(args)) => bench_decode::decode_bench(&args),
        Command::Sweep(args) => experiments::sweep(&args),
        Command::Pareto(args) => experiments::pareto(&args),
        Command::History(args) => experiments::history(&args),
        Command::Compare(args) => experiments::compare_cmd(&args),
        Command::Store(cmd) => experiments::store_cmd(&cmd),
        Command::Tag(args) => experiments::tag(&args),
        Command::Export(args) => experiments::export(&args),
        Command::Sensitivity(args) => sensitivity::sensitivity(&args),
        Command::Measure(args) => search::measure(&args),
        Command::Search(args) => search::search(&args),
        Command::Import {
            tensor_types,
            mergekit,
            out,
            model,
        } => import(
            tensor_types.as_deref(),
            mergekit.as_deref(),
            &out,
            model.as_deref(),
        ),
        Command::Zoo(ZooCommand::Train {
            out,
            seed,
            steps_scale,
            only,
            jobs,
        }) => zoo_train(&ZooOptions {
            out,
            seed,
            steps_scale,
            only,
            jobs: jobs
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        }),
    }
}

fn load(spec: &str) -> anyhow::Result<Model> {
    let start = std::time::Instant::now();
    let model = load_spec(spec)?;
    tracing::info!(
        "loaded {} in {:.2}s",
        model.name,
        start.elapsed().as_secs_f64()
    );
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
        crate::outln!("{}", serde_json::to_string_pretty(&obj)?);
        return Ok(());
    }
    crate::outln!(
        "{} ({:?}, {:?})",
        model.name,
        cfg.architecture,
        model.format
    );
    crate::outln!("id        {}", model.id);
    crate::outln!(
        "dims      {} blocks, width {}, ffn {}, {} heads / {} kv heads × {}, vocab {}",
        cfg.num_layers,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.vocab_size
    );
    crate::outln!(
        "rope      base {}, {}tied embeddings",
        cfg.rope_theta,
        if cfg.tie_word_embeddings { "" } else { "un" }
    );
    crate::outln!("params    {}", cfg.param_count());
    crate::outln!("bytes     {} (f32 in memory)", t.size_bytes());
    crate::outln!();
    crate::outln!("{:<20} {:>12} {:>12}", "layer", "shape", "bytes");
    for block in 0..t.blocks.len() {
        for kind in LinearKind::ALL {
            let w = t.blocks[block].linear(kind);
            let (o, i) = w.shape();
            crate::outln!(
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
    let device = args.device.device.open()?;
    let model = load(&args.model)?.densified_on(&device)?;
    let base = args
        .base
        .as_deref()
        .map(|spec| anyhow::Ok(load(spec)?.densified_on(&device)?))
        .transpose()?;
    let texts = crate::eval::evaluation_texts(
        &model,
        args.text.text.as_deref(),
        args.text.suite.as_deref(),
    )?;
    let domains = texts.tokenize(&model)?;
    let opts = PerplexityOptions {
        ctx: PerplexityOptions::ctx_or_default(
            args.text.ctx,
            model.config().max_position_embeddings,
        ),
        chunks: args.text.chunks,
    };
    let bar = TermProgress::new("perplexity");
    let (report, table) =
        crate::eval::suite::score(&model, &domains, opts, base.as_ref(), &mut |d, t| {
            bar.update(d, t)
        })?;
    bar.finish();
    anyhow::ensure!(
        !args.tasks || args.prompts > 0,
        "--tasks with --prompts 0 measures nothing; give at least 1 prompt per task"
    );
    let tasks = if args.tasks {
        let bar = TermProgress::new("tasks");
        let acc = task_accuracy(&model, &Task::SKILLS, args.prompts, &mut |d, t| {
            bar.update(d, t)
        })?;
        bar.finish();
        Some(acc)
    } else {
        None
    };
    if args.json {
        let mut obj = serde_json::to_value(&report)?;
        obj["evaluated_on"] = texts.label.clone().into();
        if texts.is_suite() {
            obj["domains"] = serde_json::to_value(&table)?;
        }
        if let Some(tasks) = &tasks {
            obj["tasks"] = serde_json::to_value(tasks)?;
            obj["task_acc_mean"] = (tasks.values().sum::<f64>() / tasks.len().max(1) as f64).into();
        }
        crate::outln!("{}", serde_json::to_string_pretty(&obj)?);
        return Ok(());
    }
    crate::outln!("evaluated on {}", texts.label);
    if texts.is_suite() {
        for (name, d) in &table {
            let kld = d
                .kld_mean
                .map_or(String::new(), |k| format!("  kld {k:.6}"));
            let top1 = d
                .top1_agree
                .map_or(String::new(), |a| format!("  top-1 {:.2}%", 100.0 * a));
            crate::outln!(
                "  {name:<10} ppl {:>9.4}{kld}{top1}  ({} tokens)",
                d.ppl,
                d.tokens
            );
        }
        crate::outln!("suite (token-weighted):");
    }
    crate::outln!(
        "ppl {:.4} ± {:.4}  ({} tokens scored in {} chunks of {}, {:.1}s)",
        report.ppl,
        report.ppl_stderr,
        report.tokens,
        report.chunks,
        report.ctx,
        report.seconds
    );
    if let Some(k) = &report.kld {
        crate::outln!(
            "kld mean {:.6} ± {:.6}  median {:.6}  p99 {:.6}  top-1 agree {:.2}%  rms Δp {:.3}%",
            k.kld_mean,
            k.kld_stderr,
            k.kld_median,
            k.kld_p99,
            100.0 * k.top1_agree,
            100.0 * k.rms_dp
        );
    }
    if let Some(tasks) = &tasks {
        for (task, acc) in tasks {
            crate::outln!("{task:<10} {:.1}%", 100.0 * acc);
        }
    }
    Ok(())
}

fn run_recipe(args: &RunArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.recipe)
        .with_context(|| format!("reading {}", args.recipe.display()))?;
    let recipe = Recipe::from_toml(&text).with_context(|| args.recipe.display().to_string())?;
    let base = load(&args.model)?;
    // Validate against the model before any work starts (and before anything is stored).
    recipe
        .resolve(&base.transformer)
        .with_context(|| args.recipe.display().to_string())?;
    let eval = EvalSettings {
        text: args.text.text.clone(),
        suite: args.text.suite.clone(),
        ctx: args.text.ctx,
        chunks: args.text.chunks,
        calib_text: args.calib.calib_text.clone(),
        calib: args.calib.options(),
        task_prompts: args.prompts,
        device: args.device.device,
    };
    if !args.store.no_store {
        let models = crate::jobs::ModelCache::default();
        models.insert(&args.model, std::sync::Arc::new(base));
        let (rec, cached) =
            experiments::run_stored(&models, &args.model, eval, recipe, &args.store)
                .with_context(|| args.recipe.display().to_string())?;
        let obj = experiments::record_report_json(&rec, cached);
        if args.json {
            crate::outln!("{}", serde_json::to_string_pretty(&obj)?);
            return Ok(());
        }
        for note in &rec.notes {
            crate::outln!("note: {note}");
        }
        for (k, v) in &rec.metrics {
            crate::outln!("{k:<18} {v}");
        }
        return Ok(());
    }
    // The check every stored job gets, before any work (an absurd --calib-samples would
    // otherwise abort on its allocation).
    let spec = crate::jobs::JobSpec {
        label: String::new(),
        model: args.model.clone(),
        recipe: recipe.clone(),
        tags: Vec::new(),
        force: true,
        eval: eval.clone(),
    };
    let check = crate::jobs::memory_check(&base, &spec, 0);
    anyhow::ensure!(check.fits(), "{}", check.message());
    let bar = TermProgress::new("run");
    let report = crate::run::run(&base, &recipe, &eval, &mut |stage, d, t| {
        bar.report(stage, d, t)
    })?;
    bar.finish();
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for note in &report.notes {
        crate::outln!("note: {note}");
    }
    crate::outln!(
        "ppl {:.4} ± {:.4} (base {:.4})  kld {:.5} (p99 {:.4})  top-1 {:.2}%",
        report.ppl,
        report.ppl_stderr,
        report.base_ppl,
        report.kld_mean,
        report.kld_p99,
        100.0 * report.top1_agree
    );
    let tok_s = |v: Option<f64>| {
        v.map_or_else(|| "not measured on GPU".into(), |v| format!("{v:.1} tok/s"))
    };
    crate::outln!(
        "bytes {} (base {}, {:.2}×)  avg bits {:.3}  decode {}  prefill {}  compress {:.1}s  on {}",
        report.bytes,
        report.base_bytes,
        report.base_bytes as f64 / report.bytes.max(1) as f64,
        report.avg_bits,
        tok_s(report.decode_tok_s),
        tok_s(report.prefill_tok_s),
        report.compress_seconds,
        report.device
    );
    if let Some(tasks) = &report.tasks {
        for (task, acc) in tasks {
            crate::outln!("{task:<10} {:.1}%", 100.0 * acc);
        }
    }
    Ok(())
}

fn import(
    tensor_types: Option<&Path>,
    mergekit: Option<&Path>,
    out: &Path,
    model: Option<&str>,
) -> anyhow::Result<()> {
    let (path, parse): (&Path, fn(&str) -> anyhow::Result<_>) = match (tensor_types, mergekit) {
        (Some(p), _) => (p, crate::export::import::recipe_from_tensor_types),
        (None, Some(p)) => (p, crate::export::import::recipe_from_mergekit),
        (None, None) => anyhow::bail!("give --tensor-types LIST or --mergekit CONFIG"),
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (recipe, notes) = parse(&text).with_context(|| path.display().to_string())?;
    if let Some(spec) = model
        && recipe.merge.is_none()
    {
        let base = load(spec)?;
        let plan = recipe.resolve(&base.transformer)?;
        eprintln!(
            "{} of {} linears set",
            plan.layers.len(),
            base.transformer.linear_ids().count()
        );
    }
    for note in &notes {
        eprintln!("note: {note}");
    }
    std::fs::write(out, recipe.to_toml()?).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("recipe written to {}", out.display());
    Ok(())
}

fn allocate(args: &AllocateArgs) -> anyhow::Result<()> {
    let Some(avg_bits) = args.avg_bits else {
        return allocate_prune(args);
    };
    let base = load(&args.model)?.to_device(&args.device.device.open()?)?;
    let layout = match args.layout.as_str() {
        "block" => ScaleLayoutKnob::Block,
        "column" => ScaleLayoutKnob::Column,
        other => anyhow::bail!("--layout `{other}`: expected `block` or `column`"),
    };
    let template = ShiftAddKnobs {
        bits: args.bits.iter().copied().min().unwrap_or(2),
        layout,
        group: 128,
        apot_terms: 3,
        rounds: 20,
        error_feedback: true,
        act_order: true,
    };
    let calib_tokens = crate::calib::calibration_tokens(&base, args.calib.calib_text.as_ref())?;
    let calib = CalibOptions {
        seq_len: args
            .calib
            .calib_len
            .min(base.config().max_position_embeddings),
        ..args.calib.options()
    };
    let bar = TermProgress::new("allocate");
    let (mut recipe, table) = allocate_recipe(
        &base,
        &calib_tokens,
        calib,
        &args.bits,
        avg_bits,
        &template,
        &mut |stage, d, t| bar.report(stage, d, t),
    )?;
    bar.finish();
    recipe.model = Some(args.model.clone());
    let items: Vec<_> = table
        .iter()
        .map(|l| crate::technique::allocate::LayerItem {
            params: l.params,
            score: l.score,
        })
        .collect();
    let bits: Vec<usize> = table.iter().map(|l| l.bits).collect();
    eprintln!(
        "{} layers, parameter-weighted average {:.3} bits (budget {})",
        table.len(),
        crate::technique::allocate::average_bits(&items, &bits),
        avg_bits
    );
    for b in &args.bits {
        let n = table.iter().filter(|l| l.bits == *b).count();
        eprintln!("  {b} bits: {n} layers");
    }
    let text = format!(
        "# Allocated by `reparam allocate {} --avg-bits {}`: ShiftAddLLM sensitivity scores, exact\n# multiple-choice knapsack over bits {:?}.\n{}",
        args.model,
        avg_bits,
        args.bits,
        recipe.to_toml()?
    );
    write_recipe(args.out.as_deref(), &text)
}

/// Writes an allocated recipe to `out`, or prints it.
fn write_recipe(out: Option<&Path>, text: &str) -> anyhow::Result<()> {
    match out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        None => crate::outln!("{}", text.trim_end()),
    }
    Ok(())
}

/// `allocate --prune RATIO [--owl]`: a uniform or OWL pruning recipe.
fn allocate_prune(args: &AllocateArgs) -> anyhow::Result<()> {
    use crate::technique::prune::{OwlOptions, allocate_prune_recipe};
    use crate::technique::recipe::PruneMethod;
    let Some(target) = args.prune else {
        anyhow::bail!("give --avg-bits or --prune");
    };
    let method = match args.method.as_str() {
        "wanda" => PruneMethod::Wanda,
        "magnitude" => PruneMethod::Magnitude,
        other => anyhow::bail!("--method `{other}`: expected `wanda` or `magnitude`"),
    };
    let base = load(&args.model)?.to_device(&args.device.device.open()?)?;
    let calib_tokens = crate::calib::calibration_tokens(&base, args.calib.calib_text.as_ref())?;
    let calib = CalibOptions {
        seq_len: args
            .calib
            .calib_len
            .min(base.config().max_position_embeddings),
        ..args.calib.options()
    };
    let owl = args.owl.then_some(OwlOptions {
        lambda: args.owl_lambda,
        m: args.owl_m,
    });
    let bar = TermProgress::new("allocate");
    let (mut recipe, table) = allocate_prune_recipe(
        &base,
        &calib_tokens,
        calib,
        target,
        method,
        owl,
        &mut |stage, d, t| bar.report(stage, d, t),
    )?;
    bar.finish();
    recipe.model = Some(args.model.clone());
    if args.owl {
        for b in &table {
            eprintln!(
                "  block {:>3}: outlier ratio {:.4}%  sparsity {:.4}",
                b.block,
                100.0 * b.outlier_ratio,
                b.ratio
            );
        }
    }
    let how = if args.owl {
        format!(
            "OWL per-block ratios (λ = {}, M = {}) from {} Wanda-score outlier ratios",
            args.owl_lambda, args.owl_m, args.method
        )
    } else {
        "one uniform ratio".to_string()
    };
    let text = format!(
        "# Allocated by `reparam allocate {} --prune {}{}`: {how}.\n{}",
        args.model,
        target,
        if args.owl { " --owl" } else { "" },
        recipe.to_toml()?
    );
    write_recipe(args.out.as_deref(), &text)
}

fn zoo_train(opts: &ZooOptions) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    // Members train side by side; each reports every 10 s and at its end.
    let mut last_report: BTreeMap<String, std::time::Instant> = BTreeMap::new();
    build_zoo(opts, &mut |member, step, steps, loss| {
        let last = last_report.entry(member.to_string()).or_insert(start);
        if step == steps || last.elapsed().as_secs() >= 10 {
            *last = std::time::Instant::now();
            eprintln!(
                "[{:>6.0}s] {member:<9} step {step:>5}/{steps}  loss {loss:.4}",
                start.elapsed().as_secs_f64()
            );
        }
    })?;
    eprintln!(
        "zoo written to {} in {:.0}s",
        opts.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Greedy continuation on the decode engine (the tensor forward is the reference it is
/// tested against).
fn generate(spec: &str, prompt: &str, n: usize, kv: crate::engine::KvType) -> anyhow::Result<()> {
    let model = load(spec)?;
    let ids = model.tokenizer.encode(prompt, true)?;
    anyhow::ensure!(!ids.is_empty(), "generation needs a non-empty prompt");
    let opts = crate::engine::EngineOptions {
        kv,
        ..Default::default()
    };
    let engine = crate::engine::Engine::new(&model.transformer, opts)?;
    let mut decoder = engine.decoder();
    decoder.reserve(ids.len() + n);
    let mut next = argmax(decoder.feed(&ids)?);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next);
        if Some(next) == model.tokenizer.eos_id || out.len() == n {
            break;
        }
        next = argmax(decoder.step(next)?);
    }
    crate::outln!("{}{}", prompt, model.tokenizer.decode(&out)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_options_work_without_the_gui_subcommand() {
        let cli = Cli::try_parse_from(["reparam", "--store", "runs", "--workers", "2"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.gui.store.as_deref(), Some(Path::new("runs")));
        assert_eq!(cli.gui.workers, 2);
        let cli = Cli::try_parse_from(["reparam", "gui", "--store", "runs"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Gui(g)) if g.store.is_some()));
        // App options do not mix with another subcommand.
        assert!(Cli::try_parse_from(["reparam", "--store", "runs", "info", "zoo:multi"]).is_err());
    }
}
