//! Greedy decoding with the KV cache.

use crate::model::{KvCache, Model, NoHook};

/// Greedily extends `prompt` by up to `max_new` tokens, stopping early at the model's EOS or
/// when `stop` says the tokens generated so far are complete. Returns only the new tokens.
pub fn generate_greedy(
    model: &Model,
    prompt: &[u32],
    max_new: usize,
    mut stop: impl FnMut(&[u32]) -> bool,
) -> anyhow::Result<Vec<u32>> {
    anyhow::ensure!(!prompt.is_empty(), "generation needs a non-empty prompt");
    let t = &model.transformer;
    let mut cache = KvCache::default();
    let mut out = Vec::with_capacity(max_new);
    let mut logits = t.forward(prompt, Some(&mut cache), &mut NoHook, prompt.len() - 1)?;
    for _ in 0..max_new {
        let row = logits.squeeze(0)?.to_vec1::<f32>()?;
        let next = argmax(&row);
        out.push(next);
        if Some(next) == model.tokenizer.eos_id || stop(&out) {
            break;
        }
        logits = t.forward(&[next], Some(&mut cache), &mut NoHook, 0)?;
    }
    Ok(out)
}

/// Index of the largest value (the first one on ties).
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}
