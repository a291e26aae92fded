//! Latency measured by running the model's own inference form: batch-1 decode on the decode
//! engine (every layer in its packed kernel, the head included), and prefill of a full window
//! through the engine's many-row pass. Nothing is estimated.

use std::time::Instant;

use crate::engine::{Engine, EngineOptions, Prefill};
use crate::model::Model;

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

/// Prefill throughput on the engine: `prompt` as one window from position 0 through to the
/// last position's logits, each packed layer decoded as the window reaches it (the model
/// stays in its stored form). The median of `rounds` timed passes after an untimed one, with
/// the slowest and fastest.
pub fn measure_prefill(
    engine: &Engine,
    prompt: &[u32],
    rounds: usize,
) -> anyhow::Result<(f64, [f64; 2])> {
    let pass = || -> anyhow::Result<()> {
        let p = Prefill::on_the_fly(engine);
        let last = p.hidden(prompt, prompt.len().saturating_sub(1))?;
        p.logits(&last, &mut Vec::new());
        Ok(())
    };
    pass()?;
    let mut rates = Vec::with_capacity(rounds.max(1));
    for _ in 0..rounds.max(1) {
        let start = Instant::now();
        pass()?;
        rates.push(prompt.len() as f64 / start.elapsed().as_secs_f64());
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
    let engine = Engine::new(&model.transformer, EngineOptions::default())?;
    let (prefill_tok_s, prefill_range) =
        measure_prefill(&engine, &tokens[..prefill_tokens], ROUNDS)?;
    let (decode_tok_s, decode_range) =
        measure_decode(&engine, tokens, DECODE_PROMPT, DECODE_STEPS, ROUNDS)?;
    Ok(Latency {
        decode_tok_s,
        decode_range,
        prefill_tok_s,
        prefill_range,
    })
}
