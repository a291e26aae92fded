//! Task accuracy on the zoo's exact-match tasks: greedy completion of held-out prompts.
//!
//! The prompt is fed without its trailing space: BPE merges a space into the following word
//! during training (`Ġd`), so ending the prompt on a bare space would show the model a token
//! boundary it never saw. The model generates the space itself.

use std::collections::BTreeMap;

use crate::eval::generate_greedy;
use crate::model::Model;
use crate::zoo::tasks::{Sample, Task, eval_set, is_correct, max_completion_chars};

/// Held-out prompts per task in the standard evaluation.
pub const EVAL_PROMPTS_PER_TASK: usize = 200;

/// The model's greedy completion of one prompt (text after the prompt, up to the line end).
pub fn complete(model: &Model, sample: &Sample) -> anyhow::Result<String> {
    let stem = sample.prompt.trim_end();
    let ids = model.tokenizer.encode(stem, true)?;
    // Every zoo token holds at least one character, so this many tokens always suffice.
    let max_new = max_completion_chars(sample.task) + 2;
    let mut text = String::new();
    let out = generate_greedy(model, &ids, max_new, |new| {
        text = model.tokenizer.decode(new).unwrap_or_default();
        text.contains('\n') || text.len() > max_new
    })?;
    let generated = model.tokenizer.decode(&out)?;
    let full = format!("{stem}{generated}");
    Ok(full.get(sample.prompt.len()..).unwrap_or("").to_string())
}

/// Exact-match accuracy (0–1) of `model` on each of `tasks`, over `n` held-out prompts each.
/// `progress(done, total)` returning `false` cancels.
pub fn task_accuracy(
    model: &Model,
    tasks: &[Task],
    n: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let total = tasks.len() * n;
    let mut done = 0;
    let mut out = BTreeMap::new();
    for &task in tasks {
        let samples = eval_set(task, n);
        let mut correct = 0usize;
        for s in &samples {
            if is_correct(s, &complete(model, s)?) {
                correct += 1;
            }
            done += 1;
            if !progress(done, total) {
                anyhow::bail!("cancelled after {done} of {total} prompts");
            }
        }
        out.insert(
            task.name().to_string(),
            correct as f64 / samples.len().max(1) as f64,
        );
    }
    Ok(out)
}
