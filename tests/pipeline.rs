//! The pipeline: a recipe applied to a tiny model gives a runnable compressed model that shares
//! untouched tensors with the base, whose LUT decode path agrees with its prefill path, whose
//! bytes are the packed sizes, and which stops promptly on cancel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::Tensor;
use common::{TinySpec, max_abs_diff};
use reparam::calib::StatsCollector;
use reparam::model::{LinearId, LinearKind, LinearWeight, Model, NoHook};
use reparam::technique::recipe::Recipe;
use reparam::technique::shiftadd::sensitivity;
use reparam::technique::{CalibOptions, apply};

fn tiny() -> (tempfile::TempDir, Model) {
    tiny_with(false)
}

/// [`tiny`] with its LM head tied to the token embedding.
fn tiny_tied() -> (tempfile::TempDir, Model) {
    tiny_with(true)
}

fn tiny_with(tied: bool) -> (tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().unwrap();
    // Widths that are multiples of 8 but not of 64, and an odd FFN.
    TinySpec {
        hidden: 40,
        ffn: 72,
        heads: 4,
        kv_heads: 2,
        tied,
        ..TinySpec::default()
    }
    .write_hf(dir.path(), 1);
    let m = Model::load(dir.path()).unwrap();
    (dir, m)
}

fn calib_tokens() -> Vec<u32> {
    (0..600u32).map(|i| (i * 37 + 11) % 258).collect()
}

const CALIB: CalibOptions = CalibOptions {
    samples: 4,
    seq_len: 32,
};

fn recipe(body: &str) -> Recipe {
    Recipe::from_toml(body).unwrap()
}

#[test]
fn shiftadd_recipe_compresses_every_selected_layer() {
    let (_d, base) = tiny();
    let r = recipe("[[layers]]\nmatch = \"blk.*.*\"\n[layers.shiftadd]\nbits = 3\ngroup = 16\n");
    let c = apply(&base, &r, &calib_tokens(), CALIB, &mut |_, _, _| true).unwrap();
    for id in c.model.transformer.linear_ids() {
        assert_eq!(
            c.model.transformer.linear(id).unwrap().form(),
            "shiftadd",
            "{id}"
        );
    }
    assert!(c.model.transformer.size_bytes() < base.transformer.size_bytes());
    // 3 planes plus one 16-bit APoT-coded scale per (plane, 16 weights): 3 + 3·16/16 = 6 bits,
    // plus the padding of rows to 16-row key blocks (widths 40 and 72 pad to 48 and 80), as
    // stored.
    let bits = c.avg_bits();
    assert!(bits > 6.0 && bits < 7.0, "avg bits {bits}");
    // Untouched tensors are shared with the base, not copied.
    assert_eq!(
        c.model.transformer.token_embd.id(),
        base.transformer.token_embd.id()
    );
    // The compressed model runs, stays finite and stays close to the base at 3 bits.
    let tokens = [1u32, 50, 100, 150, 200, 7, 9, 11, 13, 250];
    let a = base
        .transformer
        .forward(&tokens, None, &mut NoHook, 0)
        .unwrap();
    let b = c
        .model
        .transformer
        .forward(&tokens, None, &mut NoHook, 0)
        .unwrap();
    let scale = a
        .abs()
        .unwrap()
        .max_keepdim(1)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let diff = max_abs_diff(&a, &b);
    assert!(
        diff.is_finite() && diff < scale,
        "3-bit logits moved by {diff} (logit scale {scale})"
    );
}

#[test]
fn lut_decode_path_matches_gemm_prefill_path() {
    let (_d, base) = tiny();
    let r = recipe(
        "[[layers]]\nmatch = \"blk.*.*\"\n[layers.shiftadd]\nbits = 2\nlayout = \"column\"\ngroup = 0\n",
    );
    let c = apply(&base, &r, &calib_tokens(), CALIB, &mut |_, _, _| true).unwrap();
    let layer = c
        .model
        .transformer
        .linear(LinearId::new(1, LinearKind::FfnDown))
        .unwrap();
    let (_, cols) = layer.shape();
    let x = Tensor::randn(0f32, 1.0, (3, cols), &candle_core::Device::Cpu).unwrap();
    // Three rows go through the LUT kernel; the same rows repeated past the GEMM threshold
    // go through the dequantized GEMM.
    let lut = candle_core::Module::forward(layer, &x).unwrap();
    let many = Tensor::cat(&[&x, &x, &x, &x], 0).unwrap();
    let gemm = candle_core::Module::forward(layer, &many)
        .unwrap()
        .narrow(0, 0, 3)
        .unwrap();
    let diff = max_abs_diff(&lut, &gemm);
    assert!(diff < 1e-4, "LUT and GEMM paths differ by {diff}");
}

#[test]
fn rtn_and_partial_recipes() {
    let (_d, base) = tiny();
    let r = recipe("[[layers]]\nmatch = \"blk.1.ffn_*\"\n[layers.rtn]\nbits = 4\ngroup = 8\n");
    let c = apply(&base, &r, &calib_tokens(), CALIB, &mut |_, _, _| true).unwrap();
    let t = &c.model.transformer;
    assert_eq!(
        t.linear(LinearId::new(1, LinearKind::FfnUp))
            .unwrap()
            .form(),
        "rtn"
    );
    assert_eq!(
        t.linear(LinearId::new(0, LinearKind::FfnUp))
            .unwrap()
            .form(),
        "dense"
    );
    let LinearWeight::Dense { weight, .. } = t.linear(LinearId::new(0, LinearKind::AttnQ)).unwrap()
    else {
        panic!("untouched layer changed form");
    };
    let LinearWeight::Dense { weight: w0, .. } = base
        .transformer
        .linear(LinearId::new(0, LinearKind::AttnQ))
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(weight.id(), w0.id());
    // 4 bits + (f16 scale + f16 zero) per 8 inputs = 8 bits per weight.
    assert!((c.avg_bits() - 8.0).abs() < 1e-9, "{}", c.avg_bits());
    // The RTN grid has zero codes, but nothing was pruned.
    let zeros = reparam::technique::prune::model_sparsity(&c.model, |_| true);
    assert!(zeros > 0.0, "the check needs quantization zeros to ignore");
    assert_eq!(c.summary.sparsity, 0.0);
}

/// The `[embedding]` step: the tied embedding/head becomes per-row RTN, counted once at its
/// packed size; an untied model or a bad bit-width is refused before any work.
#[test]
fn embedding_step_quantizes_the_tied_head_once() {
    let (_dir, base) = tiny_tied();
    let r = recipe(
        "[embedding]\nbits = 8\n[[layers]]\nmatch = \"blk.*.*\"\n[layers.rtn]\nbits = 4\ngroup = 8\n",
    );
    let c = apply(&base, &r, &calib_tokens(), CALIB, &mut |_, _, _| true).unwrap();
    let t = &c.model.transformer;
    let (vocab, d) = t.token_embd.dims2().unwrap();
    assert_eq!(t.output.form(), "rtn");
    // One tensor for both uses, and the bytes count it once: 8-bit codes + an f16 scale and zero
    // per row, instead of the f32 matrix.
    assert_eq!(t.token_embd.id(), {
        let LinearWeight::Rtn { dequantized, .. } = &t.output else {
            unreachable!()
        };
        dequantized.id()
    });
    let embd_f32 = vocab * d * 4;
    let embd_q8 = vocab * d + vocab * 4;
    let linears = |m: &reparam::model::Transformer| -> usize {
        m.linear_ids()
            .map(|id| m.linear(id).unwrap().size_bytes())
            .sum()
    };
    assert_eq!(
        base.transformer.size_bytes() - linears(&base.transformer) - embd_f32,
        t.size_bytes() - linears(t) - embd_q8
    );
    // Rows are within half a step of the original, plus what rounding the stored scale to f16
    // (relative error ≤ 2⁻¹¹) moves a value up to 255 steps from the zero point.
    let a = base.transformer.token_embd.to_vec2::<f32>().unwrap();
    let b = t.token_embd.to_vec2::<f32>().unwrap();
    for (ra, rb) in a.iter().zip(&b) {
        let (lo, hi) = ra
            .iter()
            .fold((0f32, 0f32), |(l, h), &x| (l.min(x), h.max(x)));
        let step = (hi - lo) / 255.0;
        for (x, y) in ra.iter().zip(rb) {
            assert!((x - y).abs() <= 0.5 * step + 255.0 * step / 2048.0 + 1e-7);
        }
    }
    // Refusals.
    let (_d, untied) = tiny();
    let e = apply(&untied, &r, &calib_tokens(), CALIB, &mut |_, _, _| true).unwrap_err();
    assert!(format!("{e:#}").contains("tied"), "{e:#}");
    let bad =
        recipe("[embedding]\nbits = 12\n[[layers]]\nmatch = \"blk.*.*\"\n[layers.rtn]\nbits = 4\n");
    let e = apply(&base, &bad, &calib_tokens(), CALIB, &mut |_, _, _| true).unwrap_err();
    assert!(format!("{e:#}").contains("2..=8"), "{e:#}");
}

/// At 16 bits the step rounds the embedding to f16: the head is an f16 matrix of exactly the
/// embedding's values, counted once at 2 bytes a weight, and a GGUF export writes it as
/// llama.cpp's F16 that reads back bit for bit; RTN knobs beside 16 bits are refused.
#[test]
fn embedding_step_at_16_bits_is_f16() {
    let (dir, base) = tiny_tied();
    let r = recipe("[embedding]\nbits = 16\n");
    let c = apply(&base, &r, &calib_tokens(), CALIB, &mut |_, _, _| true).unwrap();
    let t = &c.model.transformer;
    assert_eq!(t.output.form(), "f16");
    let (vocab, d) = t.token_embd.dims2().unwrap();
    assert_eq!(
        base.transformer.size_bytes() - t.size_bytes(),
        vocab * d * 2,
        "half of the f32 embedding's bytes saved, nothing else changed"
    );
    let a = base.transformer.token_embd.to_vec2::<f32>().unwrap();
    let rows = t.token_embd.to_vec2::<f32>().unwrap();
    let head = t
        .output
        .to_dense()
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for ((ra, rb), rh) in a.iter().zip(&rows).zip(&head) {
        for ((x, y), h) in ra.iter().zip(rb).zip(rh) {
            assert_eq!(y.to_bits(), half::f16::from_f32(*x).to_f32().to_bits());
            assert_eq!(
                h.to_bits(),
                y.to_bits(),
                "the head holds the embedding's values"
            );
        }
    }

    use reparam::export::experiment::{GgufFallback, write_gguf};
    let out = dir.path().join("f16-embedding.gguf");
    let report = write_gguf(
        &base,
        t,
        &out,
        candle_core::DType::F32,
        GgufFallback::Dense,
        &Default::default(),
    )
    .unwrap();
    assert!(
        report
            .exact
            .contains(&("token_embd.weight".to_string(), "F16".to_string())),
        "{report:?}"
    );
    let back = Model::load(&out).unwrap();
    let read = back
        .transformer
        .token_embd
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(read, rows);

    let bad = recipe("[embedding]\nbits = 16\ngroup = 32\n");
    let e = apply(&base, &bad, &calib_tokens(), CALIB, &mut |_, _, _| true).unwrap_err();
    assert!(format!("{e:#}").contains("no scales"), "{e:#}");
}

#[test]
fn cancel_stops_the_job() {
    let (_d, base) = tiny();
    let r = recipe("[[layers]]\nmatch = \"blk.*.*\"\n[layers.shiftadd]\nbits = 3\ngroup = 16\n");
    let mut calls = 0;
    let err = apply(&base, &r, &calib_tokens(), CALIB, &mut |_, done, _| {
        calls += 1;
        done < 3
    })
    .unwrap_err();
    assert!(err.to_string().contains("cancelled"), "{err}");
    assert!(
        calls <= 4,
        "kept working after cancel: {calls} progress calls"
    );
}

#[test]
fn sensitivity_is_positive_and_grows_with_input_energy() {
    let (_d, base) = tiny();
    let ids = Tensor::new(&calib_tokens()[..64], &candle_core::Device::Cpu)
        .unwrap()
        .reshape((2, 32))
        .unwrap();
    let id = LinearId::new(0, LinearKind::AttnQ);
    let mut stats = StatsCollector::new(Some(vec![id]), true);
    base.transformer
        .forward_batch(&ids, None, &mut stats, 31)
        .unwrap();
    let s = &stats.stats[&id];
    let layer = base.transformer.linear(id).unwrap();
    let a = sensitivity(layer, s).unwrap();
    assert!(a.is_finite() && a > 0.0, "{a}");
    // Scaling the inputs by 2 scales H by 4: U_kk halves, IS doubles, the score grows 8×.
    let mut louder = s.clone();
    louder.xtx.iter_mut().for_each(|v| *v *= 4.0);
    let b = sensitivity(layer, &louder).unwrap();
    assert!((b / a - 8.0).abs() < 1e-6, "{}", b / a);
}

/// The editor's byte estimate is the pipeline's: for every form, the bytes
/// `estimated_layer_bytes` predicts from the plan alone equal what the compressed layer holds.
#[test]
fn byte_estimates_equal_the_compressed_sizes() {
    let base = reparam::model::load_spec("zoo:multi").unwrap();
    let tokens = reparam::calib::calibration_tokens(&base, None).unwrap();
    let calib = CalibOptions {
        samples: 2,
        seq_len: 32,
    };
    let recipes = [
        "[layers.shiftadd]\nbits = 3\nlayout = \"block\"\ngroup = 128\n",
        "[layers.shiftadd]\nbits = 2\nlayout = \"column\"\ngroup = 0\nerror_feedback = false\n",
        "[layers.shiftadd]\nbits = 4\nlayout = \"column\"\ngroup = 64\napot_terms = 1\nerror_feedback = false\n",
        "[layers.rtn]\nbits = 4\ngroup = 32\n",
        "[layers.rps]\nratio = 3.0\n",
        "[layers.prune]\nmethod = \"nm\"\nn = 2\nm = 4\n",
        "[layers.prune]\nmethod = \"wanda\"\nratio = 0.7\n",
        "[layers.prune]\nmethod = \"magnitude\"\nratio = 0.8\n",
        "[layers.prune]\nmethod = \"magnitude\"\nratio = 0.3\n",
    ];
    for body in recipes {
        let text = format!("[[layers]]\nmatch = \"blk.*.*\"\n{body}");
        let recipe = match Recipe::from_toml(&text) {
            Ok(r) => r,
            Err(e) => panic!("{body}: {e}"),
        };
        let plan = recipe.resolve(&base.transformer).unwrap();
        let out = apply(&base, &recipe, &tokens, calib, &mut |_, _, _| true).unwrap();
        for (id, (_, layer)) in &plan.layers {
            let before = base.transformer.linear(*id).unwrap();
            let after = out.model.transformer.linear(*id).unwrap();
            let (rows, cols) = before.shape();
            let bias = after.bias().map_or(0, |b| b.elem_count() * 4);
            let estimate =
                reparam::technique::estimated_layer_bytes(layer, rows, cols, before.size_bytes());
            assert_eq!(
                estimate,
                after.size_bytes() - bias,
                "{body}{id} ({rows}×{cols}, {})",
                after.form()
            );
        }
    }
}
