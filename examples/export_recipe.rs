//! Applies a recipe to a model and writes the result as a Hugging Face directory, e.g. to check
//! that a flattened model is a normal Llama checkpoint for `transformers`:
//!
//! ```text
//! cargo run --release --example export_recipe -- zoo:multi experiments/recipes/flatten-2.toml /tmp/flat2
//! scripts/check-zoo-transformers.py /tmp/flat2
//! cargo run --release -- generate /tmp/flat2 --prompt "brackets: ( [ ->" -n 12
//! ```
//!
//! Weights are written dense (f32), whatever form the recipe left them in.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use candle_core::DType;
use reparam::model::load_spec;
use reparam::model::{TokenizerFiles, save_hf_dir};
use reparam::technique::recipe::Recipe;
use reparam::technique::{CalibOptions, apply};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, recipe, out] = args.as_slice() else {
        anyhow::bail!("usage: export_recipe MODEL RECIPE.toml OUT_DIR");
    };
    let base = load_spec(model)?;
    let recipe = Recipe::from_toml(&std::fs::read_to_string(recipe).context("reading recipe")?)?;
    let calib_tokens = reparam::calib::calibration_tokens(&base, None)?;
    let calib = CalibOptions {
        samples: 32,
        seq_len: 512.min(base.config().max_position_embeddings),
    };
    let c = apply(&base, &recipe, &calib_tokens, calib, &mut |_, _, _| true)?;
    // Zoo and HF models carry their tokenizer files next to the weights.
    let dir = reparam::model::resolve_model_spec(model)?;
    anyhow::ensure!(
        dir.is_dir(),
        "{model}: only HF directories and zoo models are exported"
    );
    let json = std::fs::read_to_string(dir.join("tokenizer.json")).context("tokenizer.json")?;
    let cfg: serde_json::Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let (bos_text, eos_text) = (
        cfg["bos_token"].as_str().unwrap_or_default().to_string(),
        cfg["eos_token"].as_str().unwrap_or_default().to_string(),
    );
    let t = &base.tokenizer;
    let files = TokenizerFiles {
        json: &json,
        bos: t.bos_id.map(|b| (b, bos_text.as_str())),
        add_bos: t.add_bos,
        eos: t.eos_id.map(|e| (e, eos_text.as_str())),
    };
    let out = PathBuf::from(out);
    save_hf_dir(
        &c.model.transformer,
        &files,
        &out,
        DType::F32,
        &BTreeMap::new(),
    )?;
    eprintln!(
        "{} blocks ({} removed) written to {}",
        c.model.transformer.blocks.len(),
        c.summary.flattened_blocks,
        out.display()
    );
    Ok(())
}
