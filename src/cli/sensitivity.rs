//! `reparam sensitivity`: per-layer KL divergence when only that layer is compressed at the
//! recipe's setting. Parses arguments, calls `technique::sensitivity`, prints; nothing here
//! computes.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::progress::TermProgress;
use crate::technique::recipe::{LayerPlan, Quant, Recipe, ShiftAddKnobs};
use crate::technique::sensitivity::{SensitivityOptions, recipe_sensitivity};

#[derive(Debug, Args)]
pub struct SensitivityArgs {
    /// A GGUF file, a Hugging Face directory, or `zoo:NAME`.
    pub model: String,
    /// The recipe (TOML) whose per-layer settings are measured.
    #[arg(long, required_unless_present = "default_bits")]
    pub recipe: Option<PathBuf>,
    /// Measure the layers the recipe leaves alone at shift-add with this many bits.
    #[arg(long)]
    pub default_bits: Option<usize>,
    /// Evaluation text (zoo models default to their held-out `lang` text, others to the
    /// bundled license texts).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Evaluation tokens in all.
    #[arg(long, default_value_t = 512)]
    pub tokens: usize,
    /// Tokens per evaluation window (at most the model's context).
    #[arg(long, default_value_t = 256)]
    pub ctx: usize,
    /// Calibration text for layers whose technique reads input statistics.
    #[arg(long)]
    pub calib_text: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    pub calib_samples: usize,
    #[arg(long, default_value_t = 256)]
    pub calib_len: usize,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The fallback setting of `--default-bits`: the editor's shift-add defaults.
pub fn shiftadd_plan(bits: usize) -> LayerPlan {
    LayerPlan {
        quant: Some(Quant::ShiftAdd(ShiftAddKnobs::with_bits(bits))),
        ..LayerPlan::default()
    }
}

pub fn sensitivity(args: &SensitivityArgs) -> anyhow::Result<()> {
    let recipe = match &args.recipe {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Recipe::from_toml(&text).with_context(|| p.display().to_string())?
        }
        None => Recipe::default(),
    };
    if let Some(b) = args.default_bits {
        anyhow::ensure!((2..=8).contains(&b), "--default-bits {b}: must be 2..=8");
    }
    let fallback = args.default_bits.map(shiftadd_plan);
    let text = args
        .text
        .as_ref()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let base = crate::model::load_spec(&args.model)?.to_device(&args.device.device.open()?)?;
    let opts = SensitivityOptions {
        calib: crate::technique::CalibOptions {
            samples: args.calib_samples.max(1),
            seq_len: args.calib_len.max(8),
        },
        ctx: args.ctx,
        max_tokens: args.tokens,
        seed: 0,
    };
    let bar = TermProgress::new("sensitivity");
    let report = recipe_sensitivity(
        &base,
        &recipe,
        fallback.as_ref(),
        text.as_deref(),
        args.calib_text.as_ref(),
        opts,
        &mut |stage, d, t| bar.report(stage, d, t),
    )
    .with_context(|| match &args.recipe {
        Some(p) => p.display().to_string(),
        None => args.model.clone(),
    })?;
    bar.finish();
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for note in &report.notes {
        crate::outln!("note: {note}");
    }
    crate::outln!(
        "{} layers measured alone on {} tokens (base NLL {:.4}) in {:.1}s",
        report.layers.len(),
        report.tokens,
        report.base_nll,
        report.seconds
    );
    let max = report.layers.iter().map(|l| l.kld).fold(0.0, f64::max);
    crate::outln!(
        "{:<18} {:<22} {:>10} {:>10}  bar (KLD)",
        "layer",
        "setting",
        "kld",
        "Δnll"
    );
    for l in &report.layers {
        let n = if max > 0.0 {
            (30.0 * l.kld / max).round() as usize
        } else {
            0
        };
        crate::outln!(
            "{:<18} {:<22} {:>10.6} {:>+10.5}  {}",
            l.layer,
            l.setting,
            l.kld,
            l.nll_delta,
            "#".repeat(n)
        );
    }
    Ok(())
}
