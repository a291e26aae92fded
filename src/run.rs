//! One experiment: apply a recipe to a base model and measure the result against the base
//! (accuracy, latency, memory). `reparam run` and the job runner call this.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::calib::calibration_text;

use crate::device::DeviceChoice;
use crate::eval::latency::measure_latency;
use crate::eval::suite::{DomainTable, overlap_warning, score, suite_key};
use crate::eval::tasks::task_accuracy;
use crate::eval::{PerplexityOptions, evaluation_texts};
use crate::model::Model;
use crate::technique::merge::MergeStepInfo;
use crate::technique::recipe::Recipe;
use crate::technique::{CalibOptions, Progress, apply_with_merge_hook};
use crate::zoo::is_zoo_model;
use crate::zoo::tasks::Task;

/// How one experiment is calibrated and evaluated: the CLI's flags, a space's `[eval]`, the
/// app's job settings and the stored record's `eval_json` are all this; everything here is part of the run key (the
/// device only as its kind, and only when it is a GPU: see [`DeviceChoice::key_kind`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EvalSettings {
    /// Evaluation text; with neither it nor `suite`, the model's default (see
    /// [`crate::eval::evaluation_texts`]).
    pub text: Option<PathBuf>,
    /// Evaluation suite: `held-out` or a directory of `.txt` files, one per domain.
    pub suite: Option<String>,
    pub ctx: Option<usize>,
    pub chunks: Option<usize>,
    pub calib_text: Option<PathBuf>,
    pub calib: CalibOptions,
    /// Held-out prompts per zoo task.
    pub task_prompts: usize,
    /// Where the job computes.
    pub device: DeviceChoice,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self {
            text: None,
            suite: None,
            ctx: None,
            chunks: None,
            calib_text: None,
            calib: CalibOptions::default(),
            task_prompts: crate::eval::tasks::EVAL_PROMPTS_PER_TASK,
            device: DeviceChoice::Cpu,
        }
    }
}

/// Bumped when the default evaluation or calibration texts change, so runs made with the old
/// defaults are not taken for runs with the new ones.
const DEFAULT_TEXTS_VERSION: u32 = 2;

fn file_hash(path: &std::path::Path) -> anyhow::Result<String> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    Ok(blake3::hash(&bytes).to_hex()[..16].to_string())
}

impl EvalSettings {
    /// The settings as they enter the run key: text files by content hash, not by path, so
    /// the same text under another name is the same experiment. `defaults` versions what
    /// "no text given" means (2: the held-out suite and the calibration mixture).
    pub fn key_json(&self) -> anyhow::Result<String> {
        let text = self.text.as_deref().map(file_hash).transpose()?;
        let suite = self.suite.as_deref().map(suite_key).transpose()?;
        let calib_text = self.calib_text.as_deref().map(file_hash).transpose()?;
        let mut key = serde_json::json!({
            "text": text,
            "ctx": self.ctx,
            "chunks": self.chunks,
            "calib_text": calib_text,
            "calib_samples": self.calib.samples,
            "calib_len": self.calib.seq_len,
            "task_prompts": self.task_prompts,
            "suite": suite,
            "defaults": DEFAULT_TEXTS_VERSION,
        });
        if let Some(kind) = self.device.key_kind() {
            key["device"] = kind.into();
        }
        Ok(key.to_string())
    }
}

/// Every metric of one run, flat, named as the store's columns will be.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    pub model_id: String,
    pub model_name: String,
    pub recipe_hash: String,
    pub ppl: f64,
    pub ppl_stderr: f64,
    pub base_ppl: f64,
    pub kld_mean: f64,
    pub kld_p99: f64,
    pub top1_agree: f64,
    pub rms_dp: f64,
    /// What the accuracy metrics were measured on ("suite held-out", a file name, …).
    pub evaluated_on: String,
    /// Each domain's metrics when a suite was evaluated (the headline values are their
    /// token-weighted combination).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domains: Option<DomainTable>,
    /// Exact bytes of all weights in their stored form (linears, embeddings, norms).
    pub bytes: usize,
    pub base_bytes: usize,
    /// Stored bits per weight of the compressed linears, scales included.
    pub avg_bits: f64,
    /// Decode and prefill throughput of the model in its stored form, measured on the CPU
    /// kernels; `None` for GPU runs, where the packed forms have no kernel of their own yet
    /// and a number would describe the dense stand-in, not the technique.
    pub decode_tok_s: Option<f64>,
    pub prefill_tok_s: Option<f64>,
    /// The slowest and fastest of the timed rounds behind the two medians above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_range: Option<[f64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_range: Option<[f64; 2]>,
    pub compress_seconds: f64,
    /// Fraction (0–1) of linear weights pruned away.
    pub sparsity: f64,
    /// Blocks removed by flattening or dropping.
    pub flattened_blocks: usize,
    /// Weights per stored value over RPS-shared layers (1 when none).
    pub rps_ratio: f64,
    /// Fine-tuned models merged into the base.
    pub merged_models: usize,
    /// The device the run computed on.
    pub device: DeviceChoice,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<BTreeMap<String, f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_acc_mean: Option<f64>,
    /// The merge timeline: one entry per merged model, in merge order (merge recipes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<MergeTimelineStep>>,
    /// Rule overlaps and other facts the user should see.
    pub notes: Vec<String>,
}

/// The merge after one step: what was folded in, its perplexity on the evaluation text and, on
/// zoo models, every task's accuracy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MergeTimelineStep {
    #[serde(flatten)]
    pub info: MergeStepInfo,
    pub ppl: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<BTreeMap<String, f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_acc_mean: Option<f64>,
}

fn mean(t: &BTreeMap<String, f64>) -> f64 {
    t.values().sum::<f64>() / t.len().max(1) as f64
}

/// Applies the recipe and measures the result against `base` (loaded on the CPU; a GPU run
/// works on a copy on the device).
pub fn run(
    base: &Model,
    recipe: &Recipe,
    req: &EvalSettings,
    progress: &mut Progress<'_>,
) -> anyhow::Result<RunReport> {
    let device = req.device.open()?;
    let on_device;
    let base = if device.is_cpu() {
        base
    } else {
        progress("moving the model to the device", 0, 1);
        on_device = base.to_device(&device)?;
        &on_device
    };
    // Task accuracy on zoo models; with no prompts there is nothing to report (not 0 %).
    let with_tasks = is_zoo_model(&base.path) && req.task_prompts > 0;
    let texts = evaluation_texts(base, req.text.as_deref(), req.suite.as_deref())?;
    let domains = texts.tokenize(base)?;
    let calib_text = calibration_text(base, req.calib_text.as_ref())?;
    let overlap = overlap_warning(&calib_text, &texts.domains);
    let calib_tokens = base.tokenizer.encode(&calib_text, true)?;
    let ctx = PerplexityOptions::ctx_or_default(req.ctx, base.config().max_position_embeddings);
    let calib = req.calib.within_ctx(ctx);
    let opts = PerplexityOptions {
        ctx,
        chunks: req.chunks,
    };
    let mut steps = Vec::new();
    let compressed = apply_with_merge_hook(
        base,
        recipe,
        &calib_tokens,
        calib,
        progress,
        &mut |info, merged| {
            let tasks = if with_tasks {
                Some(task_accuracy(
                    merged,
                    &Task::SKILLS,
                    req.task_prompts,
                    &mut |_, _| true,
                )?)
            } else {
                None
            };
            let (step_report, _) = score(merged, &domains, opts, None, &mut |_, _| true)?;
            steps.push(MergeTimelineStep {
                info: info.clone(),
                ppl: step_report.ppl,
                task_acc_mean: tasks.as_ref().map(mean),
                tasks,
            });
            Ok(())
        },
    )?;
    let (base_report, _) = score(base, &domains, opts, None, &mut |d, t| {
        progress("evaluating base", d, t)
    })?;
    // Sizes and bits come from the stored form; the evaluation runs what the device can run.
    let evaluated = compressed.model.densified_on(&device)?;
    let (report, table) = score(&evaluated, &domains, opts, Some(base), &mut |d, t| {
        progress("evaluating", d, t)
    })?;
    let Some(kld) = report.kld.clone() else {
        anyhow::bail!("no KL divergence was computed");
    };
    let latency = if device.is_cpu() {
        let tokens = &domains[0].1;
        Some(measure_latency(
            &compressed.model,
            tokens,
            ctx.min(tokens.len().saturating_sub(1)),
        )?)
    } else {
        None
    };
    let tasks = if with_tasks {
        Some(task_accuracy(
            &evaluated,
            &Task::SKILLS,
            req.task_prompts,
            &mut |d, t| progress("tasks", d, t),
        )?)
    } else {
        None
    };
    Ok(RunReport {
        model_id: base.id.clone(),
        model_name: base.name.clone(),
        recipe_hash: recipe.hash(),
        ppl: report.ppl,
        ppl_stderr: report.ppl_stderr,
        base_ppl: base_report.ppl,
        kld_mean: kld.kld_mean,
        kld_p99: kld.kld_p99,
        top1_agree: kld.top1_agree,
        rms_dp: kld.rms_dp,
        evaluated_on: texts.label.clone(),
        domains: texts.is_suite().then_some(table),
        bytes: compressed.model.transformer.size_bytes(),
        base_bytes: base.transformer.size_bytes(),
        avg_bits: compressed.avg_bits(),
        decode_tok_s: latency.map(|l| l.decode_tok_s),
        decode_range: latency.map(|l| l.decode_range),
        prefill_range: latency.map(|l| l.prefill_range),
        prefill_tok_s: latency.map(|l| l.prefill_tok_s),
        compress_seconds: compressed.compress_seconds,
        sparsity: compressed.summary.sparsity,
        flattened_blocks: compressed.summary.flattened_blocks,
        rps_ratio: compressed.summary.rps_ratio,
        merged_models: compressed.summary.merged_models,
        device: req.device,
        task_acc_mean: tasks.as_ref().map(mean),
        tasks,
        steps: recipe.merge.as_ref().map(|_| steps),
        notes: compressed
            .plan
            .notes
            .iter()
            .cloned()
            .chain(overlap)
            .collect(),
    })
}
