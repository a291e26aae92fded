//! Every loader path on tiny checkpoints the tests write: HF single-file and sharded, tied and
//! untied, Qwen2 biases, GGUF in F32 and block-quantized, and one test per malformed input
//! asserting the message a user would read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::quantized::GgmlDType;
use common::{TinySpec, max_abs_diff};
use reparam::model::{LinearId, LinearKind, Model, NoHook};

/// Logits of the whole sequence.
fn logits(model: &Model, tokens: &[u32]) -> candle_core::Tensor {
    model
        .transformer
        .forward(tokens, None, &mut NoHook, 0)
        .unwrap()
}

const TOKENS: [u32; 9] = [5, 77, 200, 3, 3, 150, 42, 255, 9];

/// GGUF F32 and HF safetensors of the same weights differ only by float reordering.
const SAME_WEIGHTS_TOL: f32 = 1e-4;

fn error_text(result: Result<Model, reparam::model::LoadError>) -> String {
    match result {
        Ok(_) => panic!("expected the load to fail"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn hf_and_gguf_of_the_same_weights_agree() {
    let dir = tempfile::tempdir().unwrap();
    for spec in [
        TinySpec::default(),
        TinySpec {
            tied: true,
            ..TinySpec::default()
        },
        TinySpec {
            arch: "Qwen2ForCausalLM",
            ..TinySpec::default()
        },
    ] {
        let hf_dir = dir.path().join(format!("hf-{}-{}", spec.arch, spec.tied));
        spec.write_hf(&hf_dir, 1);
        let gguf = dir
            .path()
            .join(format!("m-{}-{}.gguf", spec.arch, spec.tied));
        spec.write_gguf(&gguf, GgmlDType::F32);
        let a = Model::load(&hf_dir).unwrap();
        let b = Model::load(&gguf).unwrap();
        assert_eq!(a.config().tie_word_embeddings, spec.tied);
        assert_eq!(b.config().tie_word_embeddings, spec.tied);
        assert_eq!(a.config().num_kv_heads, 2);
        let diff = max_abs_diff(&logits(&a, &TOKENS), &logits(&b, &TOKENS));
        assert!(
            diff < SAME_WEIGHTS_TOL,
            "{}: HF vs GGUF logits differ by {diff}",
            spec.arch
        );
    }
}

#[test]
fn sharded_checkpoint_equals_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    spec.write_hf(&dir.path().join("one"), 1);
    spec.write_hf(&dir.path().join("three"), 3);
    let a = Model::load(&dir.path().join("one")).unwrap();
    let b = Model::load(&dir.path().join("three")).unwrap();
    assert_eq!(a.id, b.id, "content hash must not depend on sharding");
    assert_eq!(
        max_abs_diff(&logits(&a, &TOKENS), &logits(&b, &TOKENS)),
        0.0
    );
}

#[test]
fn model_id_is_stable_and_content_addressed() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    spec.write_hf(&dir.path().join("a"), 1);
    let a1 = Model::load(&dir.path().join("a")).unwrap();
    let a2 = Model::load(&dir.path().join("a")).unwrap();
    assert_eq!(a1.id, a2.id);
    assert_eq!(a1.id.len(), 64);
    TinySpec { seed: 8, ..spec }.write_hf(&dir.path().join("b"), 1);
    let b = Model::load(&dir.path().join("b")).unwrap();
    assert_ne!(a1.id, b.id);
}

#[test]
fn quantized_gguf_dequantizes_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    // Every row length a multiple of the 32-weight quantization block.
    let spec = TinySpec {
        ffn: 64,
        ..TinySpec::default()
    };
    spec.write_gguf(&dir.path().join("f32.gguf"), GgmlDType::F32);
    spec.write_gguf(&dir.path().join("q8.gguf"), GgmlDType::Q8_0);
    spec.write_gguf(&dir.path().join("q4.gguf"), GgmlDType::Q4_1);
    let f = Model::load(&dir.path().join("f32.gguf")).unwrap();
    let q8 = Model::load(&dir.path().join("q8.gguf")).unwrap();
    let q4 = Model::load(&dir.path().join("q4.gguf")).unwrap();
    let id = LinearId::new(1, LinearKind::FfnDown);
    let w = |m: &Model| m.transformer.linear(id).unwrap().to_dense().unwrap();
    let e8 = max_abs_diff(&w(&f), &w(&q8));
    let e4 = max_abs_diff(&w(&f), &w(&q4));
    // Weights span ±0.3: Q8_0's step is ~0.3/127, Q4_1's ~0.6/15.
    assert!(e8 < 0.005, "Q8_0 error {e8}");
    assert!(e4 < 0.05 && e4 > e8, "Q4_1 error {e4} (Q8_0 {e8})");
}

// ---- malformed input: each case asserts the message names the file and the problem ----

fn tiny_gguf_bytes() -> Vec<u8> {
    TinySpec::default()
        .gguf_writer("llama", GgmlDType::F32)
        .to_bytes()
}

#[test]
fn truncated_gguf_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    let bytes = tiny_gguf_bytes();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let msg = error_text(Model::load(&path));
    assert!(
        msg.contains("cut.gguf") && msg.contains("truncated file"),
        "{msg}"
    );
    assert!(
        msg.contains("tensor `output.weight`"),
        "should name the tensor that runs past the end: {msg}"
    );
    // Cut inside the header as well.
    std::fs::write(&path, &bytes[..200]).unwrap();
    let msg = error_text(Model::load(&path));
    assert!(msg.contains("truncated file"), "{msg}");
}

#[test]
fn gguf_header_lying_about_sizes_is_an_error_not_an_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("liar.gguf");
    // A metadata key whose length field claims a terabyte.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
    bytes.extend_from_slice(b"general.architecture");
    std::fs::write(&path, &bytes).unwrap();
    let msg = error_text(Model::load(&path));
    assert!(
        msg.contains("liar.gguf") && msg.contains("truncated file"),
        "{msg}"
    );
    assert!(
        msg.contains("1099511627"),
        "should give the claimed size: {msg}"
    );

    // A tensor count no file of this size could hold.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&(1u64 << 50).to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let msg = error_text(Model::load(&path));
    assert!(msg.contains("tensor infos"), "{msg}");
}

#[test]
fn not_a_gguf_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.bin");
    std::fs::write(&path, b"PK\x03\x04 this is a zip").unwrap();
    let msg = error_text(Model::load(&path));
    assert!(
        msg.contains("model.bin") && msg.contains("not a GGUF file"),
        "{msg}"
    );
}

#[test]
fn unknown_architecture_lists_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt2.gguf");
    std::fs::write(
        &path,
        TinySpec::default()
            .gguf_writer("gpt2", GgmlDType::F32)
            .to_bytes(),
    )
    .unwrap();
    let msg = error_text(Model::load(&path));
    assert!(msg.contains("unsupported architecture `gpt2`"), "{msg}");
    assert!(msg.contains("llama") && msg.contains("qwen2"), "{msg}");

    let hf = dir.path().join("hf");
    TinySpec {
        arch: "GPT2LMHeadModel",
        ..TinySpec::default()
    }
    .write_hf(&hf, 1);
    let msg = error_text(Model::load(&hf));
    assert!(
        msg.contains("config.json") && msg.contains("GPT2LMHeadModel"),
        "{msg}"
    );
    assert!(
        msg.contains("LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"),
        "{msg}"
    );
}

#[test]
fn tensor_shape_disagreeing_with_config() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    spec.write_hf(dir.path(), 1);
    // Claim a wider FFN than the tensors have.
    let mut cfg = spec.config_json();
    cfg["intermediate_size"] = 64.into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let msg = error_text(Model::load(dir.path()));
    assert!(
        msg.contains("model.safetensors") || msg.contains(&dir.path().display().to_string()),
        "{msg}"
    );
    assert!(
        msg.contains("blk.0.ffn_gate.weight")
            && msg.contains("[48, 32]")
            && msg.contains("[64, 32]"),
        "{msg}"
    );
}

#[test]
fn nan_weights_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    let mut weights = spec.weights();
    let (name, t) = weights
        .iter_mut()
        .find(|(n, _)| n == "model.layers.1.mlp.up_proj.weight")
        .unwrap();
    let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[17] = f32::NAN;
    *t = candle_core::Tensor::from_vec(v, t.dims(), t.device()).unwrap();
    let name = name.clone();
    spec.write_hf(dir.path(), 1);
    reparam::model::safetensors::write_safetensors(
        &dir.path().join("model.safetensors"),
        &weights,
        &Default::default(),
    )
    .unwrap();
    let msg = error_text(Model::load(dir.path()));
    assert!(
        msg.contains(&name) && msg.contains("non-finite") && msg.contains("index 17"),
        "{msg}"
    );
}

#[test]
fn truncated_safetensors_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    TinySpec::default().write_hf(dir.path(), 1);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = error_text(Model::load(dir.path()));
    assert!(
        msg.contains("model.safetensors") && msg.contains("truncated file"),
        "{msg}"
    );

    // A header length field larger than the file.
    std::fs::write(&path, (1u64 << 20).to_le_bytes()).unwrap();
    let msg = error_text(Model::load(dir.path()));
    assert!(
        msg.contains("truncated file") && msg.contains("JSON header"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_and_missing_weights_file() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    spec.write_hf(dir.path(), 1);
    let weights: Vec<_> = spec
        .weights()
        .into_iter()
        .filter(|(n, _)| n != "model.norm.weight")
        .collect();
    reparam::model::safetensors::write_safetensors(
        &dir.path().join("model.safetensors"),
        &weights,
        &Default::default(),
    )
    .unwrap();
    let msg = error_text(Model::load(dir.path()));
    assert!(msg.contains("missing tensor `output_norm.weight`"), "{msg}");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let msg = error_text(Model::load(dir.path()));
    assert!(msg.contains("no model.safetensors"), "{msg}");
}

/// Loading reports bytes and tensors read, monotonically, ending at the totals, for both
/// formats (what the app's progress bar shows).
#[test]
fn load_reports_progress_to_completion() {
    let dir = tempfile::tempdir().unwrap();
    // Row lengths a multiple of the 32-weight quantization block.
    let spec = TinySpec {
        ffn: 64,
        ..TinySpec::default()
    };
    spec.write_hf(&dir.path().join("hf"), 3);
    spec.write_gguf(&dir.path().join("m.gguf"), GgmlDType::Q8_0);
    for path in [dir.path().join("hf"), dir.path().join("m.gguf")] {
        let mut seen: Vec<reparam::model::LoadProgress> = Vec::new();
        Model::load_with_progress(&path, &mut |p| seen.push(p)).unwrap();
        let last = *seen.last().unwrap();
        assert!(seen.len() > 5, "{} updates", seen.len());
        assert_eq!(seen[0].bytes_read, 0);
        assert!(seen.windows(2).all(|w| w[1].bytes_read >= w[0].bytes_read));
        assert_eq!(last.bytes_read, last.bytes_total);
        assert_eq!(last.tensors_read, last.tensors_total);
        assert!(last.bytes_total > 0 && (last.fraction() - 1.0).abs() < 1e-12);
    }
}

/// A tiny HF checkpoint in a temporary directory (`base/`), and that model compressed by the
/// recipe `toml` (no calibration: RTN and magnitude pruning only).
fn compress_tiny(toml: &str) -> (tempfile::TempDir, Model, Model) {
    let dir = tempfile::tempdir().unwrap();
    TinySpec::default().write_hf(&dir.path().join("base"), 1);
    let base = Model::load(&dir.path().join("base")).unwrap();
    let recipe = reparam::technique::recipe::Recipe::from_toml(toml).unwrap();
    let compressed = reparam::technique::apply(
        &base,
        &recipe,
        &[],
        reparam::technique::CalibOptions::default(),
        &mut |_, _, _| true,
    )
    .unwrap();
    (dir, base, compressed.model)
}

/// Symmetric RTN at group 32 exports to GGUF as llama.cpp's own Q4_0/Q5_0/Q8_0, exactly: the
/// file's tensors have those types and the sizes we count, and reading the file back gives
/// every weight bit for bit; layers no type holds exactly are written dense (or, with the
/// `nearest` fallback, re-quantized and reported as approximated).
#[test]
fn rtn_exports_to_gguf_block_types_exactly() {
    use reparam::export::experiment::{GgufFallback, write_gguf};
    let (dir, base, compressed) = compress_tiny(
        "[[layers]]\nmatch = \"blk.*.attn_*\"\n[layers.rtn]\nbits = 4\ngroup = 32\nsymmetric = true\n\
         [[layers]]\nmatch = \"blk.0.ffn_*\"\n[layers.rtn]\nbits = 8\ngroup = 32\nsymmetric = true\n\
         [[layers]]\nmatch = \"blk.1.ffn_*\"\n[layers.rtn]\nbits = 5\ngroup = 32\nsymmetric = true\n\
         [[layers]]\nmatch = \"blk.1.attn_output\"\n[layers.prune]\nratio = 0.5\n\
         [[layers]]\nmatch = \"blk.1.attn_q\"\n[layers.rtn]\nbits = 4\ngroup = 32\nfloat_min = true\n\
         [[layers]]\nmatch = \"blk.1.ffn_up\"\n[layers.rtn]\nbits = 5\ngroup = 32\nfloat_min = true\n\
         [[layers]]\nmatch = \"blk.0.ffn_down\"\nf16 = true\n",
    );
    let t = &compressed.transformer;
    let out = dir.path().join("rtn.gguf");
    let meta = Default::default();
    let report = write_gguf(
        &base,
        t,
        &out,
        candle_core::DType::F32,
        GgufFallback::Dense,
        &meta,
    )
    .unwrap();
    // ffn_down's rows are 48 inputs long, not a multiple of 32: no block type holds them.
    let types: std::collections::BTreeMap<String, String> = report.exact.iter().cloned().collect();
    assert_eq!(types.len(), 2 * 4 - 1 + 2 * 2 + 1, "{report:?}");
    // An f16 layer is llama.cpp's F16, in an f32 export too.
    assert_eq!(types["blk.0.ffn_down.weight"], "F16");
    assert_eq!(types["blk.0.attn_v.weight"], "Q4_0");
    assert_eq!(types["blk.0.ffn_up.weight"], "Q8_0");
    assert_eq!(types["blk.1.ffn_gate.weight"], "Q5_0");
    assert_eq!(types["blk.1.attn_q.weight"], "Q4_1");
    assert_eq!(types["blk.1.ffn_up.weight"], "Q5_1");
    assert_eq!(
        report.dense,
        ["blk.1.attn_output.weight", "blk.1.ffn_down.weight"]
    );

    let file = reparam::model::gguf::GgufFile::open(&out).unwrap();
    let back = Model::load(&out).unwrap();
    for id in t.linear_ids() {
        let ours = t.linear(id).unwrap();
        let read = back.transformer.linear(id).unwrap();
        let (a, b) = (
            ours.to_dense()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            read.to_dense()
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
        let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{id}: weights differ after the round trip");
        let info = file.tensor_info(&format!("{id}.weight")).unwrap();
        if types.contains_key(&format!("{id}.weight")) {
            assert_eq!(info.size_bytes as usize, ours.size_bytes(), "{id}: bytes");
        }
    }

    let report = write_gguf(
        &base,
        t,
        &out,
        candle_core::DType::F32,
        GgufFallback::Nearest,
        &meta,
    )
    .unwrap();
    // The pruned layer re-quantized; no type holds a 48-long row (block 1's `ffn_down`; block
    // 0's is F16).
    assert_eq!(report.approximated.len(), 1, "{report:?}");
    assert_eq!(report.dense.len(), 1, "{report:?}");
}

/// A compressed-tensors export holds each symmetric RTN linear as `weight_packed` (codes offset
/// by 2^(bits−1), packed densely along the row into int32 words, least significant bit first),
/// f32 `weight_scale` per (row, group) and `weight_shape`, the config names the scheme, and the
/// other linears are dense and ignored; 2:4 linears are `compressed` values + `bitmask` under
/// the `sparsity_config`. Unpacked here by the format's rule, every packed and every 2:4 weight
/// equals ours (`scripts/check-compressed-tensors.py` checks the same with the package itself).
#[test]
fn compressed_tensors_export_packs_symmetric_rtn_and_2_4_exactly() {
    use reparam::export::compressed_tensors::write_compressed_tensors;
    let (dir, base, compressed) = compress_tiny(
        "[[layers]]\nmatch = \"blk.*.attn_*\"\n[layers.rtn]\nbits = 4\ngroup = 32\nsymmetric = true\n\
         [[layers]]\nmatch = \"blk.*.ffn_up\"\n[layers.rtn]\nbits = 3\ngroup = 16\nsymmetric = true\n\
         [[layers]]\nmatch = \"blk.*.ffn_down\"\n[layers.prune]\nmethod = \"nm\"\nn = 2\nm = 4\nscore = \"magnitude\"\n",
    );
    let t = &compressed.transformer;
    let out = dir.path().join("ct");
    let report = write_compressed_tensors(&base, t, &out, &Default::default()).unwrap();
    assert_eq!(report.packed.len(), 2 * 4 + 2);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let q = &config["quantization_config"];
    assert_eq!(q["format"], "pack-quantized");
    // gate of both blocks, and the untied head.
    assert_eq!(q["ignore"].as_array().unwrap().len(), 2 + 1, "{q}");
    assert_eq!(report.sparse_24.len(), 2, "{report:?}");
    assert_eq!(q["sparsity_config"]["format"], "sparse-24-bitmask");
    assert_eq!(q["sparsity_config"]["targets"].as_array().unwrap().len(), 2);
    let path = out.join("model.safetensors");
    let file = reparam::model::safetensors::SafeTensorsFile::open(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let raw = |name: &str| {
        let info = &file.tensors[name];
        &bytes[info.offset as usize..(info.offset + info.size_bytes) as usize]
    };
    for (module, bits, group) in &report.packed {
        let id = t.linear_ids().find(|id| id.hf_name() == *module).unwrap();
        let ours = t.linear(id).unwrap().to_dense().unwrap();
        let (rows, cols) = ours.dims2().unwrap();
        let ours = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let words = raw(&format!("{module}.weight_packed"));
        let scales = raw(&format!("{module}.weight_scale"));
        let per_row = (cols * bits).div_ceil(32);
        let groups = cols.div_ceil(*group);
        for r in 0..rows {
            for col in 0..cols {
                let mut code = 0u64;
                for b in 0..*bits {
                    let bit = col * bits + b;
                    let w = r * per_row + bit / 32;
                    let word = u32::from_le_bytes(words[4 * w..4 * w + 4].try_into().unwrap());
                    code |= u64::from((word >> (bit % 32)) & 1) << b;
                }
                let k = code as i64 - (1 << (bits - 1));
                let si = 4 * (r * groups + col / group);
                let s = f32::from_le_bytes(scales[si..si + 4].try_into().unwrap());
                assert_eq!(k as f32 * s, ours[r * cols + col], "{module} [{r}, {col}]");
            }
        }
    }
    for module in &report.sparse_24 {
        let id = t.linear_ids().find(|id| id.hf_name() == *module).unwrap();
        let ours = t.linear(id).unwrap().to_dense().unwrap();
        let (rows, cols) = ours.dims2().unwrap();
        let ours = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let values = raw(&format!("{module}.compressed"));
        let mask = raw(&format!("{module}.bitmask"));
        assert_eq!(
            values.len(),
            4 * rows * cols / 2,
            "{module}: two values of every four"
        );
        let mut next = values.chunks_exact(4);
        for r in 0..rows {
            for col in 0..cols {
                let kept = mask[r * cols.div_ceil(8) + col / 8] >> (col % 8) & 1 == 1;
                let v = if kept {
                    f32::from_le_bytes(next.next().unwrap().try_into().unwrap())
                } else {
                    0.0
                };
                assert_eq!(v, ours[r * cols + col], "{module} [{r}, {col}]");
            }
        }
    }
}
