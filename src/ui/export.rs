//! Exports of a finished run, run on a background thread: its compressed model (re-applied
//! from the stored recipe, then written as an HF directory or one GGUF file) or its llama.cpp
//! tensor-type file. The heavy lifting is the library's (`crate::export::experiment`, the same
//! calls `reparam export` makes); this only reports progress.

use std::path::Path;

use crate::export::experiment::{
    GgufFallback, export_metadata, llama_quantize_types, reapply, write_gguf, write_hf,
};
use crate::model::load_spec_with_progress;
use crate::store::ExperimentRecord;

use super::tasks::{TaskEvent, TaskSender};

/// What to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    /// A Hugging Face directory (config, tokenizer, safetensors).
    HfDir,
    /// One GGUF file (the base model must be a GGUF file).
    Gguf,
    /// llama.cpp's `--tensor-type` file (what `reparam export --llama-quantize-types` writes).
    Types,
}

impl ExportKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::HfDir => "model",
            Self::Gguf => "GGUF",
            Self::Types => "tensor types",
        }
    }
}

/// Writes `rec`'s compressed model (or its tensor-type file) to `out`; returns a message for
/// the status bar. Progress goes to `tx` as it loads, re-applies and writes.
pub fn export_run(
    rec: &ExperimentRecord,
    model_spec: &str,
    out: &Path,
    kind: ExportKind,
    tx: &TaskSender,
) -> anyhow::Result<String> {
    let progress = |stage: &str, done: usize, total: usize| {
        tx.send(TaskEvent::ExportProgress {
            stage: stage.to_string(),
            done,
            total,
        });
    };
    let base = load_spec_with_progress(model_spec, &mut |p| {
        progress("loading the base model", p.tensors_read, p.tensors_total);
    })?;
    if kind == ExportKind::Types {
        let recipe = crate::technique::recipe::Recipe::from_json(&rec.recipe_json)?;
        let plan = recipe.resolve(&base.transformer)?;
        std::fs::write(out, llama_quantize_types(&plan))
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
        return Ok(format!("saved the tensor-type file {}", out.display()));
    }
    let (t, plan) = reapply(&base, rec, None, &mut |stage, done, total| {
        progress(stage, done, total);
        true
    })?;
    progress("writing", 0, 0);
    let meta = export_metadata(rec, &plan);
    match kind {
        ExportKind::Gguf => {
            let report = write_gguf(
                &base,
                &t,
                out,
                candle_core::DType::F32,
                GgufFallback::Dense,
                &meta,
            )?;
            Ok(format!(
                "saved the compressed model as GGUF {} ({}; {} linears in llama.cpp types \
                 exactly, {} dense)",
                out.display(),
                super::runs::human_bytes(report.file_bytes as usize),
                report.exact.len(),
                report.dense.len()
            ))
        }
        _ => {
            write_hf(&base, &t, out, candle_core::DType::F32, &meta)?;
            Ok(format!("saved the compressed model to {}", out.display()))
        }
    }
}
