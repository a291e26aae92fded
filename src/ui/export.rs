//! Exports of a finished run, run on a background thread: its compressed model (re-applied
//! from the stored recipe, then written as an HF directory) or its llama.cpp tensor-type file.
//! The heavy lifting is the library's (`crate::export::experiment`); this reports progress.

use std::path::Path;

use crate::export::experiment::{export_metadata, llama_quantize_types, reapply, write_hf};
use crate::model::load_spec;
use crate::store::ExperimentRecord;

use super::tasks::{TaskEvent, TaskSender};

/// Writes `rec`'s compressed model into the directory `out` (or only its tensor-type file to
/// the file `out`); returns a message for the status bar.
pub fn export_run(
    rec: &ExperimentRecord,
    model_spec: &str,
    out: &Path,
    types_only: bool,
    tx: &TaskSender,
) -> anyhow::Result<String> {
    let progress = |stage: &str, done: usize, total: usize| {
        tx.send(TaskEvent::ExportProgress {
            stage: stage.to_string(),
            done,
            total,
        });
    };
    progress("loading the base model", 0, 0);
    let base = load_spec(model_spec)?;
    if types_only {
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
    write_hf(
        &base,
        &t,
        out,
        candle_core::DType::F32,
        &export_metadata(rec, &plan),
    )?;
    Ok(format!("saved the compressed model to {}", out.display()))
}
