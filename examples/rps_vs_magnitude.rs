//! The baseline for RPS in `experiments/RESULTS.md`: per-layer magnitude pruning of every block
//! linear at the same bytes as RPS at ratio `c`, measured with the same perplexity/KLD protocol
//! as `reparam run`. Pruning is stored (for this count) as kept f32 values plus a one-bit mask
//! per weight, so at `c` it keeps a fraction `1/c − 1/32` of each layer; the pruned model runs
//! as dense-with-zeros (its latency is not what is compared here).
//!
//! `cargo run --release --example rps_vs_magnitude -- MODEL TEXT|zoo CTX CHUNKS C1,C2,...`
//! prints one JSON object per ratio.

use anyhow::Context as _;
use candle_core::{Device, Tensor};
use reparam::eval::{PerplexityOptions, perplexity};
use reparam::model::{LinearKind, LinearWeight, load_spec};

fn prune_magnitude(w: &LinearWeight, keep: f64) -> anyhow::Result<LinearWeight> {
    let (rows, cols) = w.shape();
    let mut v = w.to_dense()?.flatten_all()?.to_vec1::<f32>()?;
    let n = v.len();
    let kept = ((n as f64 * keep).round() as usize).min(n);
    // Exact count: sort indices by |w| and zero all but the `kept` largest.
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| v[b].abs().total_cmp(&v[a].abs()));
    for &i in &idx[kept..] {
        v[i] = 0.0;
    }
    Ok(LinearWeight::dense(
        Tensor::from_vec(v, (rows, cols), &Device::Cpu)?,
        w.bias().cloned(),
    ))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, text, ctx, chunks, ratios] = &args[..] else {
        anyhow::bail!("usage: rps_vs_magnitude MODEL TEXT CTX CHUNKS C1,C2,...");
    };
    let base = load_spec(model)?;
    // `zoo`: the zoo's held-out language text, as `reparam run` scores zoo models.
    let text = if text == "zoo" {
        reparam::zoo::corpus::lang_eval_text(reparam::zoo::LANG_EVAL_SENTENCES)
    } else {
        std::fs::read_to_string(text).with_context(|| format!("reading {text}"))?
    };
    let tokens = base.tokenizer.encode(&text, true)?;
    let opts = PerplexityOptions {
        ctx: ctx.parse()?,
        chunks: Some(chunks.parse()?),
    };
    for c in ratios.split(',') {
        let c: f64 = c.parse()?;
        let keep = (1.0 / c - 1.0 / 32.0).max(0.0);
        let mut m = base.clone();
        for block in &mut m.transformer.blocks {
            for kind in LinearKind::ALL {
                let w = block.linear_mut(kind);
                *w = prune_magnitude(w, keep)?;
            }
        }
        let r = perplexity(&m, &tokens, opts, Some(&base), &mut |_, _| true)?;
        let kld = r.kld.context("no KLD")?;
        println!(
            "{}",
            serde_json::json!({
                "method": "magnitude",
                "ratio": c,
                "keep": keep,
                "ppl": r.ppl,
                "kld_mean": kld.kld_mean,
                "top1_agree": kld.top1_agree,
            })
        );
    }
    Ok(())
}
