//! The CUDA path computes what the CPU path computes. Built only with `--features cuda` and run
//! on a machine with an NVIDIA GPU (`scripts/gpu-check.sh` builds this binary here and runs it
//! there; see docs/gpu.md). The SmolLM2 checks need the model (`REPARAM_SMOLLM2` or
//! `scripts/fetch-models.sh`); without it they say so and pass, unless `REPARAM_REQUIRE_MODELS=1`.
//!
//! Tolerances: both devices compute in f32 (candle keeps cuBLAS off TF32 unless asked), so the
//! GPU differs from the CPU only in summation order: about 1e-6 relative per product, which
//! after 30 blocks moves a perplexity by well under 0.1 % and a KL divergence between the two
//! by well under 1e-4 nats. A compressed run's statistics (XᵀX) inherit that; a rounding
//! decision of the quantizer can flip on a tie, so its KLD may move by a few percent, never
//! more.
#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Instant;

use candle_core::Device;
use reparam::calib::StatsCollector;
use reparam::device::DeviceChoice;
use reparam::eval::{PerplexityOptions, PerplexityReport, perplexity};
use reparam::model::{Model, load_spec};
use reparam::run::{EvalSettings, RunReport, run};
use reparam::technique::CalibOptions;
use reparam::technique::recipe::Recipe;

/// Relative perplexity difference allowed between devices.
const PPL_REL_TOL: f64 = 1e-3;
/// KL divergence allowed between the same model on the two devices (nats per token).
const SAME_MODEL_KLD_TOL: f64 = 1e-4;

fn gpu() -> Device {
    DeviceChoice::Cuda(0).open().expect("a CUDA GPU")
}

fn smollm2() -> Option<Model> {
    common::smollm2_file().map(|path| Model::load(&path).unwrap())
}

fn licenses() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/text/licenses.txt"
    ))
    .unwrap()
}

/// Perplexity on the CPU and on the GPU, and the KL divergence of the GPU's distribution from
/// the CPU's on the same positions.
fn compare_devices(cpu: &Model, text: &str, opts: PerplexityOptions) -> (f64, f64, f64) {
    let on_gpu = cpu.to_device(&gpu()).unwrap();
    assert!(on_gpu.transformer.device().is_cuda());
    let tokens = cpu.tokenizer.encode(text, true).unwrap();
    let c = perplexity(cpu, &tokens, opts, None, &mut |_, _| true).unwrap();
    let g = perplexity(&on_gpu, &tokens, opts, Some(cpu), &mut |_, _| true).unwrap();
    let kld = g.kld.as_ref().unwrap().kld_mean;
    eprintln!(
        "ppl cpu {:.6} gpu {:.6}  kld(gpu‖cpu) {kld:.3e}",
        c.ppl, g.ppl
    );
    (c.ppl, g.ppl, kld)
}

fn assert_same(cpu: f64, gpu: f64, kld: f64) {
    assert!(
        ((gpu - cpu) / cpu).abs() < PPL_REL_TOL,
        "perplexity cpu {cpu} vs gpu {gpu}"
    );
    assert!(kld < SAME_MODEL_KLD_TOL, "kld between devices {kld}");
}

#[test]
fn zoo_perplexity_matches_the_cpu() {
    let m = load_spec("zoo:multi").unwrap();
    let text = reparam::zoo::corpus::lang_eval_text(reparam::zoo::LANG_EVAL_SENTENCES);
    let (c, g, kld) = compare_devices(
        &m,
        &text,
        PerplexityOptions {
            ctx: 128,
            chunks: Some(8),
        },
    );
    assert_same(c, g, kld);
}

#[test]
fn smollm2_perplexity_matches_the_cpu() {
    let Some(m) = smollm2() else { return };
    let (c, g, kld) = compare_devices(
        &m,
        &licenses(),
        PerplexityOptions {
            ctx: 512,
            chunks: Some(4),
        },
    );
    assert_same(c, g, kld);
}

/// Calibration statistics gathered on the GPU equal the CPU's.
#[test]
fn calibration_statistics_match_the_cpu() {
    let m = load_spec("zoo:multi").unwrap();
    let on_gpu = m.to_device(&gpu()).unwrap();
    let tokens = reparam::calib::calibration_tokens(&m, None).unwrap();
    let ids = reparam::calib::calibration_ids(&tokens, 4, 64, 0).unwrap();
    let stats = |model: &Model| {
        let mut s = StatsCollector::new(None, true).statistics_only();
        let h = model.transformer.embed(&ids).unwrap();
        model.transformer.run_block(0, &h, 4, 64, &mut s).unwrap();
        s.stats
    };
    let (c, g) = (stats(&m), stats(&on_gpu));
    assert_eq!(c.len(), g.len());
    for ((id, a), (_, b)) in c.iter().zip(&g) {
        let scale = a.xtx.iter().fold(0f64, |m, v| m.max(v.abs()));
        let worst = a
            .xtx
            .iter()
            .zip(&b.xtx)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst <= 1e-5 * scale,
            "{id}: XᵀX differs by {worst} (scale {scale})"
        );
        assert_eq!(a.tokens, b.tokens);
    }
}

fn shiftadd_recipe() -> Recipe {
    Recipe::from_toml(
        "seed = 0\n[[layers]]\nmatch = \"blk.*.*\"\n[layers.shiftadd]\nbits = 3\nlayout = \"block\"\n",
    )
    .unwrap()
}

fn run_on(base: &Model, device: DeviceChoice, eval: &EvalSettings) -> RunReport {
    let eval = EvalSettings {
        device,
        ..eval.clone()
    };
    run(base, &shiftadd_recipe(), &eval, &mut |_, _, _| true).unwrap()
}

/// A shift-add run on the GPU stores what the CPU run stores: the same bytes and bits, a KLD
/// within tolerance, and no latency (not measured on a GPU).
fn check_shiftadd_run(base: &Model, req: &EvalSettings) {
    let c = run_on(base, DeviceChoice::Cpu, req);
    let g = run_on(base, DeviceChoice::Cuda(0), req);
    eprintln!(
        "shift-add 3-bit: kld cpu {:.5} gpu {:.5}, ppl cpu {:.4} gpu {:.4}, bytes {} / {}",
        c.kld_mean, g.kld_mean, c.ppl, g.ppl, c.bytes, g.bytes
    );
    assert_eq!(c.bytes, g.bytes);
    assert_eq!(c.avg_bits, g.avg_bits);
    assert!(
        ((g.base_ppl - c.base_ppl) / c.base_ppl).abs() < PPL_REL_TOL,
        "base ppl cpu {} gpu {}",
        c.base_ppl,
        g.base_ppl
    );
    assert!(
        (g.kld_mean - c.kld_mean).abs() <= 0.05 * c.kld_mean + 1e-4,
        "kld cpu {} gpu {}",
        c.kld_mean,
        g.kld_mean
    );
    assert!(c.decode_tok_s.is_some() && g.decode_tok_s.is_none());
    assert_eq!(g.device, DeviceChoice::Cuda(0));
}

#[test]
fn zoo_shiftadd_run_matches_the_cpu() {
    let base = load_spec("zoo:multi").unwrap();
    let req = EvalSettings {
        text: None,
        ctx: Some(128),
        chunks: Some(8),
        calib_text: None,
        calib: CalibOptions {
            samples: 16,
            seq_len: 128,
        },
        task_prompts: 20,
        device: DeviceChoice::Cpu,
    };
    check_shiftadd_run(&base, &req);
}

#[test]
fn smollm2_shiftadd_run_matches_the_cpu() {
    let Some(base) = smollm2() else { return };
    let req = EvalSettings {
        text: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/text/licenses.txt").into()),
        ctx: Some(512),
        chunks: Some(4),
        calib_text: None,
        calib: CalibOptions {
            samples: 8,
            seq_len: 512,
        },
        task_prompts: 0,
        device: DeviceChoice::Cpu,
    };
    check_shiftadd_run(&base, &req);
}

fn seconds(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// Not a check: the CPU-vs-GPU timings RESULTS reports, on SmolLM2 (run with `--ignored
/// --nocapture`; `scripts/gpu-check.sh` does). Each phase once warm: calibration statistics
/// (XᵀX of every linear over 32 windows of 512 tokens), evaluation (perplexity and KLD, 16
/// windows of 512 on the license text), and a whole shift-add 3-bit run's compression.
#[test]
#[ignore = "timings, not a check; run explicitly"]
fn measure_cpu_vs_gpu_on_smollm2() {
    let Some(cpu) = smollm2() else { return };
    let gpu_model = cpu.to_device(&gpu()).unwrap();
    let calib_tokens = reparam::calib::calibration_tokens(&cpu, None).unwrap();
    let ids = reparam::calib::calibration_ids(&calib_tokens, 32, 512, 0).unwrap();
    let eval_tokens = cpu.tokenizer.encode(&licenses(), true).unwrap();
    let opts = PerplexityOptions {
        ctx: 512,
        chunks: Some(16),
    };
    let threads = rayon::current_num_threads();
    for (name, model) in [("cpu", &cpu), ("cuda", &gpu_model)] {
        let statistics = |model: &Model| {
            let t = &model.transformer;
            let mut h = t.embed(&ids).unwrap();
            for b in 0..t.blocks.len() {
                let mut s = StatsCollector::new(None, true);
                h = t.run_block(b, &h, 32, 512, &mut s).unwrap();
            }
        };
        statistics(model);
        let calib_s = seconds(|| statistics(model));
        let eval = |model: &Model| -> PerplexityReport {
            perplexity(model, &eval_tokens, opts, Some(model), &mut |_, _| true).unwrap()
        };
        eval(model);
        let eval_s = seconds(|| {
            eval(model);
        });
        let req = EvalSettings {
            text: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/text/licenses.txt").into()),
            ctx: Some(512),
            chunks: Some(16),
            calib_text: None,
            calib: CalibOptions::default(),
            task_prompts: 0,
            device: name.parse().unwrap(),
        };
        let report = run(&cpu, &shiftadd_recipe(), &req, &mut |_, _, _| true).unwrap();
        println!(
            "TIMING device={name} cpu_threads={threads} calib_stats_s={calib_s:.3} eval_ppl_kld_s={eval_s:.3} shiftadd3_compress_s={:.2} shiftadd3_kld={:.5}",
            report.compress_seconds, report.kld_mean
        );
    }
}
