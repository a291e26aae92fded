//! Latency measured by running the model's own inference form: batch-1 decode on the decode
//! engine (every layer in its packed kernel, the head included), and prefill of a full window
//! through the tensor forward. Nothing is estimated.

use std::time::Instant;

use crate::engine::{Engine, EngineOptions};
use crate::model::{Model, NoHook};

/// Measured throughput: the median of [`ROUNDS`] timings, with their range, so a reader can
/// tell a real difference from the machine's noise.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latency {
    /// Tokens per second generating one token at a time after a short prompt (decode engine).
    pub decode_tok_s: f64,
    /// Slowest and fastest decode round.
    pub decode_range: [f64; 2],
    /// Tokens per second processing a `prefill_tokens`-token prompt in one pass.
    pub prefill_tok_s: f64,
    pub prefill_range: [f64; 2],
}

/// Timed rounds of each measurement.
pub const ROUNDS: usize = 3;
/// Decode steps per round (after one untimed step that warms caches and thread pools).
pub const DECODE_STEPS: usize = 64;
/// Prompt tokens before a timed decode round.
pub const DECODE_PROMPT: usize = 16;

/// Median and [min, max] of a few rates.
fn spread(mut v: Vec<f64>) -> (f64, [f64; 2]) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], [v[0], v[v.len() - 1]])
}

/// Decode throughput measured on the engine: the median of `rounds` runs of `steps` tokens
/// after a `prompt`-token prompt (each round a fresh sequence), with the slowest and fastest
/// round. The prompt's length is how much KV cache each timed step reads.
pub fn measure_decode(
    engine: &Engine,
    tokens: &[u32],
    prompt: usize,
    steps: usize,
    rounds: usize,
) -> anyhow::Result<(f64, [f64; 2])> {
    anyhow::ensure!(
        prompt >= 1 && tokens.len() > prompt + 1,
        "decode timing after a {prompt}-token prompt needs more than {} tokens",
        prompt + 1
    );
    anyhow::ensure!(
        prompt + 1 + steps <= engine.context_length(),
        "a {prompt}-token prompt and {steps} steps exceed the model's context of {} positions",
        engine.context_length()
    );
    let mut rates = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let mut d = engine.decoder();
        d.reserve(prompt + steps + 1);
        d.feed(&tokens[..prompt])?;
        // One untimed step warms the caches and wakes the workers.
        d.step(tokens[prompt])?;
        let start = Instant::now();
        for &t in tokens[prompt + 1..].iter().cycle().take(steps) {
            d.step(t)?;
        }
        rates.push(steps as f64 / start.elapsed().as_secs_f64());
    }
    Ok(spread(rates))
}

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
    // Prefill: one untimed warm-up pass, then the timed ones.
    let prompt = &tokens[..prefill_tokens];
    t.forward(prompt, None, &mut NoHook, prefill_tokens - 1)?;
    let mut prefill = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        t.forward(prompt, None, &mut NoHook, prefill_tokens - 1)?;
        prefill.push(prefill_tokens as f64 / start.elapsed().as_secs_f64());
    }
    let engine = Engine::new(t, EngineOptions::default())?;
    let (decode_tok_s, decode_range) =
        measure_decode(&engine, tokens, DECODE_PROMPT, DECODE_STEPS, ROUNDS)?;
    let (prefill_tok_s, prefill_range) = spread(prefill);
    Ok(Latency {
        decode_tok_s,
        decode_range,
        prefill_tok_s,
        prefill_range,
    })
}
