//! Latency measured by running the model's own inference form: batch-1 decode with the KV
//! cache, and prefill of a full window. Nothing is estimated.

use std::time::Instant;

use crate::model::{KvCache, Model, NoHook};

/// Measured throughput.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latency {
    /// Tokens per second generating one token at a time after a short prompt.
    pub decode_tok_s: f64,
    /// Tokens per second processing a `prefill_tokens`-token prompt in one pass.
    pub prefill_tok_s: f64,
}

/// Decode steps timed (after one untimed step that warms caches and thread pools).
const DECODE_STEPS: usize = 32;

/// Measures decode and prefill on `tokens` (at least `prefill_tokens + 1` long).
pub fn measure_latency(
    model: &Model,
    tokens: &[u32],
    prefill_tokens: usize,
) -> anyhow::Result<Latency> {
    anyhow::ensure!(
        tokens.len() > prefill_tokens.max(16),
        "latency needs more than {prefill_tokens} tokens of text"
    );
    let t = &model.transformer;
    // Prefill: one untimed warm-up pass, then the timed one.
    let prompt = &tokens[..prefill_tokens];
    t.forward(prompt, None, &mut NoHook, prefill_tokens - 1)?;
    let start = Instant::now();
    t.forward(prompt, None, &mut NoHook, prefill_tokens - 1)?;
    let prefill_tok_s = prefill_tokens as f64 / start.elapsed().as_secs_f64();

    let mut cache = KvCache::default();
    t.forward(&tokens[..16], Some(&mut cache), &mut NoHook, 15)?;
    t.forward(&tokens[16..17], Some(&mut cache), &mut NoHook, 0)?;
    let start = Instant::now();
    for &tok in tokens[17..].iter().cycle().take(DECODE_STEPS) {
        t.forward(&[tok], Some(&mut cache), &mut NoHook, 0)?;
    }
    let decode_tok_s = DECODE_STEPS as f64 / start.elapsed().as_secs_f64();
    Ok(Latency {
        decode_tok_s,
        prefill_tok_s,
    })
}
