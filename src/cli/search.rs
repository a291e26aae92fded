//! `reparam measure` and `reparam search`: parse arguments, call `search`, print. The
//! measurement table, the predictor and the front are computed in `crate::search`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};

use anyhow::Context as _;
use clap::Args;

use super::experiments::StoreArg;
use super::{CalibArgs, TextArgs};
use crate::jobs::{JobSpec, ModelCache, execute};
use crate::model::Model;
use crate::progress::TermProgress;
use crate::run::EvalSettings;
use crate::search::{
    CandidateFile, Goal, MeasureOutcome, MeasureRequest, SearchOutcome, ensure_measured,
    measured_ratio, search_model, spearman, spread,
};
use crate::store::Status;
use crate::sweep::Shard;

/// What the measurement pass measures and on what.
#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// The candidates file (TOML): `[[candidate]]` tables with a layer rule's knobs
    /// (`shiftadd`, `rtn`, `prune`, `rps`; optional `match`/`blocks`), `embedding = [6, 8]`,
    /// and `depth = "drop"` or `"flatten"` (each block dropped, or flattened with the next).
    #[arg(long)]
    candidates: PathBuf,
    /// Text the layer-alone KLDs are measured on (default: the calibration text, so the
    /// evaluation texts stay unseen by the search).
    #[arg(long)]
    measure_text: Option<PathBuf>,
    /// Tokens of it scored per measurement.
    #[arg(long, default_value_t = 512)]
    measure_tokens: usize,
    /// Tokens per scoring window.
    #[arg(long, default_value_t = 256)]
    measure_ctx: usize,
    /// Threads the layer products are timed on (default: all).
    #[arg(long)]
    threads: Option<usize>,
    /// Do not time the products (no decode-speed prediction).
    #[arg(long)]
    no_timing: bool,
    #[command(flatten)]
    calib: CalibArgs,
    #[command(flatten)]
    store: StoreArg,
}

#[derive(Debug, Args)]
pub struct MeasureCmd {
    /// A GGUF file, a Hugging Face directory, or `zoo:NAME`.
    model: String,
    #[command(flatten)]
    measure: MeasureArgs,
    /// Measure only blocks `b` with `b % N == I` (the embedding and fixed cost in shard 0):
    /// one process per shard fills one table (e.g. a Slurm array), then `search` reads it.
    #[arg(long)]
    shard: Option<Shard>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// A GGUF file, a Hugging Face directory, or `zoo:NAME`.
    model: String,
    #[command(flatten)]
    measure: MeasureArgs,
    /// `bytes,kld_mean` (exact knapsack front) or `bytes,kld_mean,decode_tok_s` (NSGA-II).
    #[arg(long, value_delimiter = ',', default_value = "bytes,kld_mean")]
    objectives: Vec<String>,
    #[arg(long)]
    max_bytes: Option<u64>,
    #[arg(long)]
    max_kld: Option<f64>,
    #[arg(long)]
    min_tok_s: Option<f64>,
    /// Run this many recipes spread along the predicted front as real jobs into the store.
    #[arg(long = "measure", default_value_t = 0)]
    measure_k: usize,
    /// Evaluation of the measured recipes (as in `run`).
    #[command(flatten)]
    text: TextArgs,
    /// Held-out prompts per task on zoo models (as in `run`).
    #[arg(long, default_value_t = crate::eval::tasks::EVAL_PROMPTS_PER_TASK)]
    prompts: usize,
    /// Tag the measured runs (besides `search`).
    #[arg(long)]
    tag: Vec<String>,
    /// Write every front recipe here as `front-NNN.toml`, smallest first.
    #[arg(long)]
    out: Option<PathBuf>,
    /// NSGA-II population and generations (three objectives).
    #[arg(long, default_value_t = 120)]
    population: usize,
    #[arg(long, default_value_t = 300)]
    generations: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn read_candidates(path: &PathBuf) -> anyhow::Result<CandidateFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    CandidateFile::from_toml(&text).with_context(|| path.display().to_string())
}

impl MeasureArgs {
    fn request(&self, seed: u64) -> MeasureRequest {
        MeasureRequest {
            text: self.measure_text.clone(),
            tokens: self.measure_tokens,
            ctx: self.measure_ctx,
            calib_text: self.calib.calib_text.clone(),
            calib: self.calib.options(),
            seed,
            threads: (!self.no_timing)
                .then(|| self.threads.unwrap_or_else(rayon::current_num_threads)),
        }
    }
}

fn load_checked(model: &str, args: &MeasureArgs) -> anyhow::Result<(Model, CandidateFile)> {
    let file = read_candidates(&args.candidates)?;
    let base = crate::model::load_spec(model)?;
    // Fail on a bad rule before anything is measured.
    file.work(&base.transformer)
        .with_context(|| args.candidates.display().to_string())?;
    Ok((base, file))
}

fn warn_skipped(outcome: &MeasureOutcome) {
    for (p, why) in &outcome.skipped {
        eprintln!(
            "warning: {} could not be read ({why}); left alone",
            p.display()
        );
    }
}

pub fn measure(args: &MeasureCmd) -> anyhow::Result<()> {
    let (base, file) = load_checked(&args.model, &args.measure)?;
    let inputs = args.measure.request(0).inputs(&base)?;
    let bar = TermProgress::new("measure");
    let outcome = ensure_measured(
        &args.measure.store.dir,
        &base,
        &file,
        &inputs,
        args.shard,
        &mut |stage, d, t| bar.report(stage, d, t),
    )?;
    bar.finish();
    warn_skipped(&outcome);
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        crate::outln!(
            "{} rows measured now, {} found in {}",
            outcome.measured,
            outcome.reused,
            outcome.table.display()
        );
    }
    Ok(())
}

pub fn search(args: &SearchArgs) -> anyhow::Result<()> {
    let objectives: Vec<&str> = args.objectives.iter().map(String::as_str).collect();
    let speed = match objectives.as_slice() {
        ["bytes", "kld_mean"] => false,
        ["bytes", "kld_mean", "decode_tok_s"] => true,
        _ => anyhow::bail!(
            "--objectives {}: use bytes,kld_mean or bytes,kld_mean,decode_tok_s",
            args.objectives.join(",")
        ),
    };
    for tag in &args.tag {
        crate::store::check_tag(tag)?;
    }
    let (base, file) = load_checked(&args.model, &args.measure)?;
    let goal = Goal {
        speed: speed || args.min_tok_s.is_some(),
        max_bytes: args.max_bytes,
        max_kld: args.max_kld,
        min_tok_s: args.min_tok_s,
        nsga: crate::search::nsga::NsgaOptions {
            population: args.population,
            generations: args.generations,
            seed: args.seed,
        },
    };
    let bar = TermProgress::new("search");
    let SearchOutcome {
        table: outcome,
        front,
        recipes,
        summaries,
        ..
    } = search_model(
        &args.measure.store.dir,
        &base,
        &file,
        &args.measure.request(args.seed),
        &goal,
        &mut |stage, d, t| bar.report(stage, d, t),
    )?;
    bar.finish();
    warn_skipped(&outcome);
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        // Zero-padded to the count, so the files sort in front order (by size).
        let width = recipes.len().to_string().len();
        for (i, r) in recipes.iter().enumerate() {
            let path = dir.join(format!("front-{i:0width$}.toml"));
            std::fs::write(&path, r.to_toml()?).with_context(|| path.display().to_string())?;
        }
    }
    // Real runs of points spread along the front.
    let mut measured = Vec::new();
    // Points whose record the store could not take: measured, printed, and a failure at the end.
    let mut not_stored = 0;
    if args.measure_k > 0 {
        let store = crate::store::Store::open(&args.measure.store.dir)?;
        let models = ModelCache::default();
        models.insert(&args.model, std::sync::Arc::new(base.clone()));
        let eval = EvalSettings {
            text: args.text.text.clone(),
            suite: args.text.suite.clone(),
            ctx: args.text.ctx,
            chunks: args.text.chunks,
            calib_text: args.measure.calib.calib_text.clone(),
            calib: args.measure.calib.options(),
            task_prompts: args.prompts,
            ..EvalSettings::default()
        };
        let mut tags = vec!["search".to_string()];
        tags.extend(args.tag.iter().cloned());
        let chosen = spread(front.len(), args.measure_k);
        for (n, &i) in chosen.iter().enumerate() {
            let (point, recipe) = (&front[i], recipes[i].clone());
            let spec = JobSpec {
                label: format!("search point {}", n + 1),
                model: args.model.clone(),
                recipe,
                tags: tags.clone(),
                force: false,
                eval: eval.clone(),
            };
            let bar = TermProgress::new(&format!("point {}/{}", n + 1, chosen.len()));
            let out = execute(
                &store,
                &models,
                &spec,
                &AtomicBool::new(false),
                &AtomicU64::new(0),
                &mut |stage, d, t| {
                    bar.report(stage, d, t);
                },
            )?;
            bar.finish();
            if let Some(why) = &out.unstored {
                not_stored += 1;
                eprintln!("search point {}: not stored: {why}", n + 1);
            }
            let rec = out.record;
            anyhow::ensure!(
                rec.status == Status::Ok,
                "search point {}: run {} {}: {}",
                n + 1,
                rec.id,
                rec.status,
                rec.error.clone().unwrap_or_default()
            );
            let metric = |k: &str| rec.metrics.get(k).copied().unwrap_or(f64::NAN);
            measured.push(serde_json::json!({
                "run_id": rec.id,
                "cached": out.cached,
                "stored": out.unstored.is_none(),
                "predicted_kld": point.predicted.kld_mean,
                "predicted_bytes": point.predicted.bytes,
                "predicted_tok_s": finite(point.predicted.decode_tok_s),
                "kld_mean": metric("kld_mean"),
                "bytes": metric("bytes"),
                "decode_tok_s": finite(metric("decode_tok_s")),
            }));
        }
    }
    let pairs = |k: &str| -> Vec<f64> {
        measured
            .iter()
            .map(|m| m[k].as_f64().unwrap_or(f64::NAN))
            .collect()
    };
    let (predicted_kld, measured_kld) = (pairs("predicted_kld"), pairs("kld_mean"));
    let rho = spearman(&predicted_kld, &measured_kld);
    let ratio = measured_ratio(&predicted_kld, &measured_kld);
    if args.json {
        let front_json: Vec<_> = front
            .iter()
            .zip(&recipes)
            .zip(&summaries)
            .map(|((f, r), s)| {
                serde_json::json!({
                    "recipe": serde_json::to_value(r).unwrap_or_default(),
                    "summary": s,
                    "bytes": f.predicted.bytes,
                    "kld_mean": f.predicted.kld_mean,
                    "decode_tok_s": finite(f.predicted.decode_tok_s),
                })
            })
            .collect();
        let obj = serde_json::json!({
            "front": front_json,
            "measured": measured,
            "spearman": finite(rho),
            "kld_ratio": finite(ratio),
            "table": {
                "path": outcome.table,
                "measured_now": outcome.measured,
                "reused": outcome.reused,
            },
        });
        crate::outln!("{}", serde_json::to_string_pretty(&obj)?);
        return all_stored(not_stored);
    }
    crate::outln!(
        "measurement table {}: {} rows measured now, {} reused",
        outcome.table.display(),
        outcome.measured,
        outcome.reused
    );
    crate::outln!(
        "predicted front: {} points{}",
        front.len(),
        if front.len() > PRINTED {
            format!(", {PRINTED} of them spread along it (all with --json)")
        } else {
            String::new()
        }
    );
    crate::outln!(
        "{:>4} {:>14} {:>10} {:>10}  recipe",
        "#",
        "bytes",
        "kld_mean",
        "tok/s"
    );
    for i in spread(front.len(), PRINTED) {
        let f = &front[i];
        crate::outln!(
            "{i:>4} {:>14} {:>10.4} {:>10.1}  {}",
            f.predicted.bytes,
            f.predicted.kld_mean,
            f.predicted.decode_tok_s,
            summaries[i]
        );
    }
    if !measured.is_empty() {
        crate::outln!("measured:");
        for m in &measured {
            crate::outln!(
                "  run {}  predicted kld {:.4} → measured {:.4}  bytes {} → {}  tok/s {} → {}",
                m["run_id"].as_str().unwrap_or(""),
                m["predicted_kld"].as_f64().unwrap_or(f64::NAN),
                m["kld_mean"].as_f64().unwrap_or(f64::NAN),
                m["predicted_bytes"],
                m["bytes"],
                m["predicted_tok_s"],
                m["decode_tok_s"]
            );
        }
        crate::outln!(
            "Spearman (predicted vs measured KLD): {rho:.3}; measured / predicted KLD: {ratio:.2}× \
             (geometric mean; the predictor scores the measurement text, the runs their own)"
        );
    }
    all_stored(not_stored)
}

/// A search whose measured points could not all be stored fails, after printing them.
fn all_stored(not_stored: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        not_stored == 0,
        "{not_stored} measured search points could not be stored; each record was kept in the \
         file named above"
    );
    Ok(())
}

/// Front points a table shows.
const PRINTED: usize = 25;

/// JSON has no NaN: unmeasured values are `null`.
fn finite(v: f64) -> serde_json::Value {
    if v.is_finite() {
        v.into()
    } else {
        serde_json::Value::Null
    }
}
