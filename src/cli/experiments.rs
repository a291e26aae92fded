//! The experiment commands: `sweep`, `pareto`, `history`, `compare`, `store`, `tag`, `export`,
//! and the store side of `run`. Each parses arguments, calls the store/jobs/export library and
//! prints; nothing here computes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use polars::prelude::{col, lit};

use crate::export::experiment::{
    ExportFormat, GgufFallback, export_metadata, llama_quantize_types, reapply, recipe_toml,
    write_gguf, write_hf,
};
use crate::jobs::{JobEventKind, JobRunner, JobSpec, ModelCache, execute};
use crate::progress::TermProgress;
use crate::run::EvalSettings;
use crate::store::query::{
    CompareReport, FrontReport, Objective, Selection, compare, front_from_store, plan_diff, select,
    select_records,
};
use crate::store::record::code_version;
use crate::store::{DEFAULT_DIR, ExperimentRecord, Status, Store, run_key};
use crate::sweep::{SearchSpace, Shard};

/// `--store DIR`, shared by every experiment command.
#[derive(Debug, Args)]
pub struct StoreArg {
    /// The experiment store directory.
    #[arg(long = "store", env = "REPARAM_STORE", default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
}

impl StoreArg {
    pub fn open(&self) -> anyhow::Result<Store> {
        Ok(Store::open(&self.dir)?)
    }
}

/// Prints a warning per unreadable store file (they are skipped, never touched).
fn warn(skipped: &[(PathBuf, String)]) {
    for (path, why) in skipped {
        eprintln!(
            "warning: skipping unreadable store file {}: {why}",
            path.display()
        );
    }
}

/// Warns about unreadable store files (only footers are read to find them).
fn warn_skipped(store: &Store) -> anyhow::Result<()> {
    warn(&store.scan()?.skipped);
    Ok(())
}

/// `--tag` and `--where` as a store selection.
fn selection(tag: Option<&String>, filter: Option<&String>) -> anyhow::Result<Selection> {
    Ok(Selection {
        tag: tag.cloned(),
        filter: filter.map(|w| w.parse()).transpose()?,
    })
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// A GGUF file, a Hugging Face directory, or `zoo:NAME`.
    pub model: String,
    /// The search space (TOML).
    #[arg(long)]
    pub space: PathBuf,
    /// Jobs run at once (0 = fit the machine: one per four cores).
    #[arg(long, default_value_t = 0)]
    pub jobs: usize,
    /// Run only shard I of N (`I/N`, I from 0): points I, I+N, I+2N, …
    #[arg(long)]
    pub shard: Option<Shard>,
    #[command(flatten)]
    pub store: StoreArg,
    /// Tag every run.
    #[arg(long)]
    pub tag: Vec<String>,
    /// Re-run points whose run key is already stored.
    #[arg(long)]
    pub force: bool,
    /// Evaluate at most this many chunks (overrides the space's `[eval]`).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Held-out prompts per zoo task (overrides the space's `[eval]`).
    #[arg(long)]
    pub prompts: Option<usize>,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Print the points and exit.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn sweep(args: &SweepArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.space)
        .with_context(|| format!("reading {}", args.space.display()))?;
    let space = SearchSpace::from_toml(&text).with_context(|| args.space.display().to_string())?;
    // Indices are positions in the whole space, the same in every shard.
    let mut points: Vec<(usize, crate::technique::recipe::Recipe)> = space
        .points()
        .with_context(|| args.space.display().to_string())?
        .into_iter()
        .enumerate()
        .collect();
    let total = points.len();
    if let Some(shard) = args.shard {
        points = shard.select(points);
    }
    let mut eval = space.eval.apply(EvalSettings::default());
    eval.chunks = args.chunks.or(eval.chunks);
    if let Some(p) = args.prompts {
        eval.task_prompts = p;
    }
    eval.device = args.device.device;
    if args.dry_run {
        for (i, r) in &points {
            crate::outln!("{i} {} {}", r.hash(), r.to_json());
        }
        return Ok(());
    }
    for tag in &args.tag {
        crate::store::check_tag(tag)?;
    }
    let store = args.store.open()?;
    let runner = JobRunner::new(store.clone(), args.jobs, Arc::new(|| {}));
    // Resume: skip points already stored (the runner would return them too; this says so).
    let base = runner.models().get(&args.model)?;
    let eval_json = eval.key_json()?;
    let (keys, skipped) = store
        .collect(Some(&col("status").eq(lit(Status::Ok.as_str()))), |lf| {
            lf.select([col("run_key")])
        })?;
    warn(&skipped);
    let stored: std::collections::HashSet<String> = keys
        .column("run_key")
        .and_then(|c| c.str().cloned())?
        .iter()
        .flatten()
        .map(str::to_string)
        .collect();
    let mut todo = Vec::new();
    for (i, recipe) in points {
        let key = run_key(&base.id, &recipe.hash(), &eval_json, code_version());
        if args.force || !stored.contains(&key) {
            todo.push((i, recipe));
        }
    }
    let skipped = total_in_shard(total, args.shard) - todo.len();
    // Each process starts at its own point, so two sweeps of one space into one store split
    // the work between them (a claimed point waits for the other's record) instead of one
    // trailing the other.
    let start = std::process::id() as usize % todo.len().max(1);
    todo.rotate_left(start);
    eprintln!(
        "sweep: {total} points in the space, {} in this shard, {skipped} already stored, {} to run",
        total_in_shard(total, args.shard),
        todo.len()
    );
    drop(base);
    let mut pending = std::collections::HashMap::new();
    for (i, recipe) in todo {
        let id = runner.submit(JobSpec {
            label: format!("point {i}"),
            model: args.model.clone(),
            recipe,
            tags: args.tag.clone(),
            force: args.force,
            eval: eval.clone(),
        });
        pending.insert(id, i);
    }
    let (mut ok, mut failed, mut cancelled, mut unstored_runs) = (0, 0, 0, 0);
    let n = pending.len();
    while !pending.is_empty() {
        let Some(ev) = runner.recv_event(Duration::from_secs(3600)) else {
            anyhow::bail!("no progress from the job runner for an hour");
        };
        if let JobEventKind::Finished {
            record: rec,
            unstored,
            ..
        } = ev.kind
        {
            let point = pending.remove(&ev.id).unwrap_or(usize::MAX);
            if let Some(why) = &unstored {
                unstored_runs += 1;
                eprintln!("point {point}: not stored: {why}");
            }
            match rec.status {
                Status::Ok => ok += 1,
                Status::Failed => failed += 1,
                Status::Cancelled => cancelled += 1,
            }
            eprintln!(
                "[{}/{n}] point {point}: run {} {}{}",
                n - pending.len(),
                rec.id,
                rec.status,
                match (&rec.error, rec.metric("kld_mean"), rec.metric("bytes")) {
                    (Some(e), _, _) => format!(" ({e})"),
                    (None, Some(k), Some(b)) => format!("  kld {k:.5}  bytes {b:.0}"),
                    _ => String::new(),
                }
            );
        }
    }
    eprintln!("sweep done: {ok} ok, {failed} failed, {cancelled} cancelled, {skipped} skipped");
    anyhow::ensure!(
        unstored_runs == 0,
        "{unstored_runs} of {n} finished points could not be stored; each record was kept in \
         the file named above"
    );
    // A sweep with lost points is not a success, even though every point has its record.
    anyhow::ensure!(
        failed + cancelled == 0,
        "{} of {n} points did not finish ({failed} failed, {cancelled} cancelled); their \
         records, with the reasons, are in the store (`reparam history`), and a rerun retries \
         them",
        failed + cancelled
    );
    Ok(())
}

fn total_in_shard(total: usize, shard: Option<Shard>) -> usize {
    match shard {
        // Points index, index + count, …: no arithmetic that can wrap for a huge count.
        Some(s) if s.index < total => (total - s.index).div_ceil(s.count),
        Some(_) => 0,
        None => total,
    }
}

#[derive(Debug, Args)]
pub struct ParetoArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// First objective (a metric; `max:NAME`/`min:NAME` override its direction).
    #[arg(long, default_value = "bytes")]
    pub x: String,
    #[arg(long, default_value = "kld_mean")]
    pub y: String,
    /// Optional third objective.
    #[arg(long)]
    pub z: Option<String>,
    /// Only runs matching `COLUMN OP VALUE [and …]`, e.g. `avg_bits < 3 and model_name == multi`.
    #[arg(long = "where")]
    pub filter: Option<String>,
    /// Only runs with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    #[arg(long)]
    pub json: bool,
}

fn objectives(x: &str, y: &str, z: Option<&str>) -> anyhow::Result<Vec<Objective>> {
    let mut o = vec![x.parse()?, y.parse()?];
    if let Some(z) = z {
        o.push(z.parse()?);
    }
    Ok(o)
}

fn print_front(label: &str, f: &FrontReport) -> anyhow::Result<()> {
    let names: Vec<String> = f
        .objectives
        .iter()
        .map(|o| {
            format!(
                "{}{}",
                o.metric,
                if o.sense == crate::store::pareto::Sense::Maximize {
                    " ↑"
                } else {
                    " ↓"
                }
            )
        })
        .collect();
    crate::outln!(
        "{label}front of {} runs over {} ({} considered){}",
        f.front.len(),
        names.join(", "),
        f.considered,
        f.hypervolume
            .map(|h| format!(", hypervolume {h:.6e}"))
            .unwrap_or_default()
    );
    crate::outln!(
        "  {:<14}{}  {:<20} tags",
        "run",
        names.iter().map(|n| format!("{n:>16}")).collect::<String>(),
        "techniques"
    );
    for r in &f.front {
        let knee = if f.knee.as_deref() == Some(r.id.as_str()) {
            "*"
        } else {
            " "
        };
        crate::outln!(
            " {knee}{:<14}{}  {:<20} {}",
            r.id,
            r.values
                .iter()
                .map(|v| format!("{v:>16.6}"))
                .collect::<String>(),
            r.techniques,
            r.tags.join(",")
        );
    }
    if f.knee.is_some() {
        crate::outln!("  (* = knee point)");
    }
    Ok(())
}

pub fn pareto(args: &ParetoArgs) -> anyhow::Result<()> {
    let store = args.store.open()?;
    let objs = objectives(&args.x, &args.y, args.z.as_deref())?;
    let sel = selection(args.tag.as_ref(), args.filter.as_ref())?;
    let (report, skipped) = front_from_store(&store, &sel, &objs)?;
    warn(&skipped);
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print_front("", &report)
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Only runs with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Only runs matching a filter (see `pareto --where`).
    #[arg(long = "where")]
    pub filter: Option<String>,
    /// Print every record as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn history(args: &HistoryArgs) -> anyhow::Result<()> {
    let store = args.store.open()?;
    let sel = selection(args.tag.as_ref(), args.filter.as_ref())?;
    let (recs, skipped) = select_records(&store, &sel)?;
    warn(&skipped);
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&recs)?);
        return Ok(());
    }
    crate::outln!(
        "{:<13} {:<20} {:<10} {:<9} {:<18} {:>10} {:>10} {:>9}  tags",
        "run",
        "created",
        "model",
        "status",
        "techniques",
        "bytes",
        "kld_mean",
        "ppl"
    );
    for r in &recs {
        let m = |k: &str| {
            r.metric(k)
                .map_or_else(|| "-".into(), |v| format!("{v:.4}"))
        };
        crate::outln!(
            "{:<13} {:<20} {:<10} {:<9} {:<18} {:>10} {:>10} {:>9}  {}",
            r.id,
            r.created_at.get(..19).unwrap_or(&r.created_at),
            r.model_name,
            r.status,
            r.techniques,
            r.metric("bytes")
                .map_or_else(|| "-".into(), |v| format!("{v:.0}")),
            m("kld_mean"),
            m("ppl"),
            r.tags.join(",")
        );
    }
    crate::outln!("{} runs", recs.len());
    Ok(())
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// First group: a tag, or a filter like `techniques == rtn`.
    #[arg(long)]
    pub a: String,
    /// Second group.
    #[arg(long)]
    pub b: String,
    #[arg(long, default_value = "bytes")]
    pub x: String,
    #[arg(long, default_value = "kld_mean")]
    pub y: String,
    #[arg(long)]
    pub z: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn compare_cmd(args: &CompareArgs) -> anyhow::Result<()> {
    let store = args.store.open()?;
    let (a, skipped) = select_records(&store, &Selection::tag_or_filter(&args.a)?)?;
    warn(&skipped);
    let b = select(&store, &args.b)?;
    anyhow::ensure!(!a.is_empty(), "--a `{}` selects no run", args.a);
    anyhow::ensure!(!b.is_empty(), "--b `{}` selects no run", args.b);
    let objs = objectives(&args.x, &args.y, args.z.as_deref())?;
    let mut report: CompareReport = compare(&a, &b, &objs)?;
    if let Some((ia, ib)) = report.best_match.clone() {
        let (ra, rb) = (store.get(&ia)?, store.get(&ib)?);
        let diff = (|| -> anyhow::Result<_> {
            anyhow::ensure!(
                !ra.model_spec.is_empty(),
                "run {} does not name its model",
                ra.id
            );
            let model = crate::model::load_spec(&ra.model_spec)?;
            Ok(plan_diff(&model.transformer, &ra.recipe()?, &rb.recipe()?)?)
        })();
        match diff {
            Ok(d) => report.plan_diff = d,
            Err(e) => report.plan_note = Some(format!("no per-layer diff: {e:#}")),
        }
    }
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print_front(&format!("A ({}): ", args.a), &report.a)?;
    print_front(&format!("B ({}): ", args.b), &report.b)?;
    crate::outln!("reference point {:?}", report.a.reference);
    if let Some(d) = report.hypervolume_diff {
        crate::outln!(
            "hypervolume A − B = {d:.6e} ({})",
            if d > 0.0 {
                "A dominates more"
            } else if d < 0.0 {
                "B dominates more"
            } else {
                "equal"
            }
        );
    }
    if let Some((ia, ib)) = &report.best_match {
        crate::outln!("closest pair: {ia} (A) ↔ {ib} (B)");
        if let Some(note) = &report.plan_note {
            crate::outln!("  {note}");
        } else if report.plan_diff.is_empty() {
            crate::outln!("  same plan on every layer");
        }
        for d in &report.plan_diff {
            crate::outln!("  {:<18} {:<28} | {}", d.layer, d.a, d.b);
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Merge all run files into one (atomically; unreadable files are left alone).
    Compact {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Write every run as CSV.
    Export {
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        csv: PathBuf,
    },
}

pub fn store_cmd(cmd: &StoreCommand) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Compact { store } => {
            let store = store.open()?;
            warn_skipped(&store)?;
            let (files, runs) = store.compact()?;
            eprintln!("compacted {files} files holding {runs} runs");
        }
        StoreCommand::Export { store, csv } => {
            let store = store.open()?;
            warn_skipped(&store)?;
            let n = store.export_csv(csv)?;
            eprintln!("wrote {n} runs to {}", csv.display());
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct TagArgs {
    /// A run id (or a unique prefix).
    pub run_id: String,
    pub tag: String,
    /// Remove the tag instead.
    #[arg(long)]
    pub remove: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

pub fn tag(args: &TagArgs) -> anyhow::Result<()> {
    let store = args.store.open()?;
    if args.remove {
        store.remove_tag(&args.run_id, &args.tag)?;
    } else {
        store.add_tag(&args.run_id, &args.tag)?;
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run id (or a unique prefix).
    pub run_id: String,
    /// Write the run's exact recipe (TOML, with its hash and model id).
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Write the compressed model (the recipe re-applied to the base).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// `safetensors` (an HF directory), `gguf` (a file, from any base) or
    /// `compressed-tensors` (an HF directory in llm-compressor's layout, for vLLM).
    #[arg(long, default_value = "safetensors")]
    pub format: String,
    /// Weights dtype of the exported model: `f32` (exact) or `f16`.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Write llama.cpp per-tensor types (`--tensor-type` arguments of llama-quantize).
    #[arg(long)]
    pub llama_quantize_types: Option<PathBuf>,
    /// The base model, when the run's own model spec no longer resolves.
    #[arg(long)]
    pub base: Option<String>,
    /// The calibration text, when the run used its own.
    #[arg(long)]
    pub calib_text: Option<PathBuf>,
    /// GGUF: how compressed linears without an exact llama.cpp type are written — `dense`
    /// (exact values, dense size) or `nearest` (re-quantized to the nearest llama.cpp type:
    /// deployable size, approximate weights). Symmetric RTN at group 32 and 4, 5 or 8 bits is
    /// always written exactly as Q4_0/Q5_0/Q8_0.
    #[arg(long, default_value = "dense")]
    pub gguf_fallback: String,
    /// GGUF: print what each linear was written as (and, with --verify, what llama.cpp
    /// measured), as JSON.
    #[arg(long)]
    pub json: bool,
    /// GGUF: measure the file as deployed — llama.cpp's llama-perplexity against the base with
    /// --kl-divergence on the same texts and positions as our evaluation, llama-bench for
    /// decode speed — and store it as a run tagged `deployed`.
    #[arg(long)]
    pub verify: bool,
    /// --verify on this text (else the suite).
    #[arg(long)]
    pub verify_text: Option<PathBuf>,
    /// --verify on this suite (`held-out` or a directory of .txt files).
    #[arg(long, default_value = "held-out")]
    pub verify_suite: String,
    #[arg(long, default_value_t = 512)]
    pub verify_ctx: usize,
    #[arg(long, default_value_t = 16)]
    pub verify_chunks: usize,
    /// Directory holding llama.cpp's tools; default `~/.cache/reparam/llamacpp/build/bin`
    /// (what `scripts/llamacpp-peer.sh` builds).
    #[arg(long)]
    pub peer_bin: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArg,
}

pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.recipe.is_some() || args.model.is_some() || args.llama_quantize_types.is_some(),
        "nothing to export: give --recipe OUT.toml, --model OUT and/or --llama-quantize-types OUT.txt"
    );
    let store = args.store.open()?;
    let rec = store.get(&args.run_id)?;
    if let Some(path) = &args.recipe {
        std::fs::write(path, recipe_toml(&rec)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("recipe of run {} written to {}", rec.id, path.display());
    }
    if args.model.is_none() && args.llama_quantize_types.is_none() {
        return Ok(());
    }
    let spec = args.base.clone().unwrap_or_else(|| rec.model_spec.clone());
    anyhow::ensure!(
        !spec.is_empty(),
        "run {} does not name its model; pass --base",
        rec.id
    );
    let base = crate::model::load_spec(&spec)?;
    if let Some(path) = &args.llama_quantize_types {
        let plan = rec.recipe()?.resolve(&base.transformer)?;
        std::fs::write(path, llama_quantize_types(&plan))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("llama.cpp tensor types written to {}", path.display());
    }
    if let Some(out) = &args.model {
        let format: ExportFormat = args.format.parse().map_err(anyhow::Error::msg)?;
        let dtype = match args.dtype.as_str() {
            "f32" => candle_core::DType::F32,
            "f16" => candle_core::DType::F16,
            other => anyhow::bail!("--dtype `{other}`: expected f32 or f16"),
        };
        let bar = TermProgress::new("export");
        let (t, plan) = reapply(
            &base,
            &rec,
            args.calib_text.as_deref(),
            &mut |stage, d, n| bar.report(stage, d, n),
        )?;
        bar.finish();
        let meta = export_metadata(&rec, &plan);
        match format {
            ExportFormat::Safetensors => write_hf(&base, &t, out, dtype, &meta)?,
            ExportFormat::CompressedTensors => {
                let report = crate::export::compressed_tensors::write_compressed_tensors(
                    &base, &t, out, &meta,
                )?;
                eprintln!(
                    "compressed-tensors: {} linears packed (pack-quantized), {} 2:4 sparse \
                     (sparse-24-bitmask), {} dense",
                    report.packed.len(),
                    report.sparse_24.len(),
                    report.dense.len()
                );
                if args.json {
                    crate::outln!("{}", serde_json::to_string_pretty(&report)?);
                }
            }
            ExportFormat::Gguf => {
                let fallback: GgufFallback =
                    args.gguf_fallback.parse().map_err(anyhow::Error::msg)?;
                // Checked before the export, so a missing tool costs no work.
                let tools = args
                    .verify
                    .then(|| crate::export::deployed::LlamaCpp::find(args.peer_bin.as_deref()))
                    .transpose()?;
                let report = write_gguf(&base, &t, out, dtype, fallback, &meta)?;
                let mut types: BTreeMap<&str, usize> = BTreeMap::new();
                for (_, ty) in report.exact.iter().chain(&report.approximated) {
                    *types.entry(ty.as_str()).or_default() += 1;
                }
                eprintln!(
                    "GGUF: {} bytes; {} linears exact in llama.cpp types, {} re-quantized to the \
                     nearest type, {} dense; types {types:?}",
                    report.file_bytes,
                    report.exact.len(),
                    report.approximated.len(),
                    report.dense.len()
                );
                let deployed = match tools {
                    Some(tools) => Some(verify_deployed(
                        args, &store, &rec, &base, &report, out, &tools,
                    )?),
                    None => None,
                };
                if args.json {
                    let obj = serde_json::json!({ "gguf": report, "deployed": deployed });
                    crate::outln!("{}", serde_json::to_string_pretty(&obj)?);
                }
            }
        }
        eprintln!("model of run {} written to {}", rec.id, out.display());
    }
    Ok(())
}

/// `export --verify`: llama.cpp measures the exported file against an F32 GGUF of the base on
/// the chosen texts; the result is stored as a run tagged `deployed` and returned.
fn verify_deployed(
    args: &ExportArgs,
    store: &Store,
    run: &ExperimentRecord,
    base: &crate::model::Model,
    report: &crate::export::experiment::GgufReport,
    exported: &std::path::Path,
    tools: &crate::export::deployed::LlamaCpp,
) -> anyhow::Result<crate::export::deployed::Deployed> {
    let started = std::time::Instant::now();
    let work = tempfile_dir()?;
    let result = (|| {
        // The base as llama.cpp reads it, in F32: the reference our KLD is taken against.
        let base_gguf = work.join("base-f32.gguf");
        write_gguf(
            base,
            &base.transformer,
            &base_gguf,
            candle_core::DType::F32,
            GgufFallback::Dense,
            &BTreeMap::new(),
        )?;
        let texts = crate::eval::text::evaluation_texts(
            base,
            args.verify_text.as_deref(),
            args.verify_text
                .is_none()
                .then_some(args.verify_suite.as_str()),
        )?;
        let mut files = Vec::new();
        for d in &texts.domains {
            let f = work.join(format!("{}.txt", d.name));
            std::fs::write(&f, &d.text).with_context(|| format!("writing {}", f.display()))?;
            files.push((d.name.clone(), f));
        }
        eprintln!("measuring the export in llama.cpp on {} …", texts.label);
        let deployed = crate::export::deployed::measure(
            tools,
            &base_gguf,
            exported,
            &files,
            crate::export::deployed::Positions {
                ctx: args.verify_ctx,
                chunks: args.verify_chunks,
                threads: rayon::current_num_threads(),
            },
            &work,
        )?;
        let on = format!(
            "{} (ctx {}, {} chunks)",
            texts.label, args.verify_ctx, args.verify_chunks
        );
        let rec = crate::export::experiment::deployed_record(
            run,
            report,
            &deployed,
            &on,
            started.elapsed().as_secs_f64(),
        );
        store.append(&rec)?;
        eprintln!(
            "as deployed: {} bytes, ppl {:.4}, KLD {:.5}, top-1 {:.1} %{}; stored as run {} \
             (tagged deployed)",
            report.file_bytes,
            deployed.ppl,
            deployed.kld_mean,
            100.0 * deployed.top1_agree,
            deployed
                .decode_tok_s
                .map_or(String::new(), |t| format!(", llama-bench {t:.1} tok/s")),
            rec.id
        );
        Ok(deployed)
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "reparam-verify-{}-{}",
        std::process::id(),
        crate::store::record::new_id("verify")
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The store side of `reparam run`.
#[derive(Debug, Args)]
pub struct RunStoreArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Do not read or write the store.
    #[arg(long)]
    pub no_store: bool,
    /// Tag the stored run.
    #[arg(long)]
    pub tag: Vec<String>,
    /// Run even if this run key is already stored.
    #[arg(long)]
    pub force: bool,
}

/// Integer metrics print as integers, as in `RunReport`.
const INTEGER_METRICS: [&str; 4] = ["bytes", "base_bytes", "flattened_blocks", "merged_models"];

/// A stored record in the shape of `run --json`'s report, plus the run's id and key.
pub fn record_report_json(rec: &ExperimentRecord, cached: bool) -> serde_json::Value {
    let mut obj = serde_json::Map::new();
    obj.insert("model_id".into(), rec.model_id.clone().into());
    obj.insert("model_name".into(), rec.model_name.clone().into());
    obj.insert("recipe_hash".into(), rec.recipe_hash.clone().into());
    let mut tasks = serde_json::Map::new();
    for (k, v) in &rec.metrics {
        if let Some(task) = k.strip_prefix("task_").filter(|t| *t != "acc_mean") {
            tasks.insert(task.to_string(), (*v).into());
        } else if INTEGER_METRICS.contains(&k.as_str()) && v.fract() == 0.0 && *v >= 0.0 {
            obj.insert(k.clone(), (*v as u64).into());
        } else {
            obj.insert(k.clone(), (*v).into());
        }
    }
    if !tasks.is_empty() {
        obj.insert("tasks".into(), tasks.into());
    }
    if let Some(steps) = rec
        .steps_json
        .as_deref()
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
    {
        obj.insert("steps".into(), steps);
    }
    obj.insert("notes".into(), rec.notes.clone().into());
    obj.insert("run_id".into(), rec.id.clone().into());
    obj.insert("run_key".into(), rec.run_key.clone().into());
    obj.insert("status".into(), rec.status.as_str().into());
    obj.insert("cached".into(), cached.into());
    serde_json::Value::Object(obj)
}

/// Runs one recipe through the store: a stored run key returns the stored record.
pub fn run_stored(
    models: &ModelCache,
    model: &str,
    spec_eval: EvalSettings,
    recipe: crate::technique::recipe::Recipe,
    args: &RunStoreArgs,
) -> anyhow::Result<(ExperimentRecord, bool)> {
    for tag in &args.tag {
        crate::store::check_tag(tag)?;
    }
    let store = args.store.open()?;
    let spec = JobSpec {
        label: "run".into(),
        model: model.to_string(),
        recipe,
        tags: args.tag.clone(),
        force: args.force,
        eval: spec_eval,
    };
    let bar = TermProgress::new("run");
    let outcome = execute(
        &store,
        models,
        &spec,
        &AtomicBool::new(false),
        &AtomicU64::new(0),
        &mut |stage, d, t| {
            bar.report(stage, d, t);
        },
    )?;
    bar.finish();
    let rec = outcome.record;
    if let Some(why) = outcome.unstored {
        // The result is printed before the failure, so it is never lost with the store.
        for (k, v) in &rec.metrics {
            crate::outln!("{k:<18} {v}");
        }
        anyhow::bail!("run {} {} but was not stored: {why}", rec.id, rec.status);
    }
    if rec.status != Status::Ok {
        anyhow::bail!(
            "run {} {}: {}",
            rec.id,
            rec.status,
            rec.error.clone().unwrap_or_default()
        );
    }
    if outcome.cached {
        eprintln!(
            "run key already stored as run {} ({}); use --force to run again",
            rec.id, rec.created_at
        );
    } else {
        eprintln!("stored as run {} in {}", rec.id, store.dir().display());
    }
    Ok((rec, outcome.cached))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Shard sizes for any count, the largest included, without wrapping.
    #[test]
    fn shard_sizes_never_wrap() {
        let shard = |s: &str| Some(s.parse::<Shard>().unwrap());
        assert_eq!(total_in_shard(10, shard("0/3")), 4);
        assert_eq!(total_in_shard(10, shard("2/3")), 3);
        assert_eq!(total_in_shard(10, shard("0/18446744073709551615")), 1);
        assert_eq!(total_in_shard(10, shard("11/18446744073709551615")), 0);
        assert_eq!(total_in_shard(10, None), 10);
    }
}
