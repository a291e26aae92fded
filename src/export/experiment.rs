//! Exporting a stored run: its exact recipe (TOML, with hash and model id), the compressed
//! model (the recipe re-applied to the base, deterministically, then written as an HF
//! directory or a GGUF file), and llama.cpp's per-tensor quantization types.
//!
//! Every compressed form is written dense (f32 or f16) for other tools: shift-add, RPS and
//! pruned layers are dequantized, which the file's metadata says. An HF directory also gets our
//! own packed file (see [`crate::model::packed`]) holding those layers in their inference forms, which
//! our loader reads back bit-exactly. The recipe hash, run id and model id go into the metadata
//! of every file written.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};

use crate::device::DeviceChoice;
use crate::eval::PerplexityOptions;
use crate::model::gguf::{GgufFile, GgufWriter, MetaValue};
use crate::model::{LinearKind, LinearWeight, Model, ModelFormat, Transformer};
use crate::quant::rtn::RtnRule;
use crate::store::ExperimentRecord;
use crate::technique::recipe::{Plan, Quant, Recipe};
use crate::technique::{CalibOptions, Progress, apply};

use crate::model::packed;
use crate::model::{TokenizerFiles, save_hf_dir};

/// The model file formats `export --model` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Safetensors,
    Gguf,
    /// An HF directory in the compressed-tensors layout (llm-compressor, vLLM).
    CompressedTensors,
}

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "safetensors" | "hf" => Ok(Self::Safetensors),
            "gguf" => Ok(Self::Gguf),
            "compressed-tensors" => Ok(Self::CompressedTensors),
            other => Err(format!(
                "format `{other}`: expected `safetensors`, `gguf` or `compressed-tensors`"
            )),
        }
    }
}

/// The run's recipe as TOML, with a header naming its hash, run and model.
pub fn recipe_toml(rec: &ExperimentRecord) -> anyhow::Result<String> {
    let recipe = rec.recipe().context("the stored recipe does not parse")?;
    anyhow::ensure!(
        recipe.hash() == rec.recipe_hash,
        "the stored recipe hashes to {} but the run says {}: the record is inconsistent",
        recipe.hash(),
        rec.recipe_hash
    );
    let mut recipe = recipe;
    if recipe.model.is_none() && !rec.model_spec.is_empty() {
        recipe.model = Some(rec.model_spec.clone());
    }
    Ok(format!(
        "# Exported from run {} ({}).\n# recipe_hash = \"{}\"\n# model_id = \"{}\"\n# model = \"{}\"\n# eval = {}\n{}",
        rec.id,
        rec.created_at,
        rec.recipe_hash,
        rec.model_id,
        rec.model_name,
        rec.eval_json,
        recipe.to_toml()?
    ))
}

/// Metadata written into exported files.
pub fn export_metadata(rec: &ExperimentRecord, plan: &Plan) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("reparam.recipe_hash".into(), rec.recipe_hash.clone());
    m.insert("reparam.run_id".into(), rec.id.clone());
    m.insert("reparam.run_key".into(), rec.run_key.clone());
    m.insert("reparam.model_id".into(), rec.model_id.clone());
    m.insert("reparam.recipe_json".into(), rec.recipe_json.clone());
    let dequantized = plan
        .layers
        .values()
        .filter(|(_, p)| p.quant.is_some() || p.rps.is_some() || p.prune.is_some())
        .count();
    if dequantized > 0 {
        m.insert(
            "reparam.note".into(),
            format!(
                "{dequantized} compressed linears (shift-add, RTN, RPS or pruned) are stored \
                 dequantized; the values are exactly the compressed ones"
            ),
        );
    }
    m
}

/// What a run's `eval_json` says about its calibration: the windows, the evaluation context
/// they were cut to, and the calibration text's hash when the run brought its own.
struct StoredCalib {
    calib: CalibOptions,
    ctx: Option<usize>,
    text_hash: Option<String>,
}

/// Calibration settings stored in the run's `eval_json`.
fn calib_from_eval(eval_json: &str) -> anyhow::Result<StoredCalib> {
    let v: serde_json::Value = if eval_json.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(eval_json).context("the run's eval settings do not parse")?
    };
    let d = CalibOptions::default();
    let get = |k: &str, def: usize| {
        v.get(k)
            .and_then(serde_json::Value::as_u64)
            .map_or(def, |x| x as usize)
    };
    Ok(StoredCalib {
        calib: CalibOptions {
            samples: get("calib_samples", d.samples),
            seq_len: get("calib_len", d.seq_len),
        },
        ctx: v
            .get("ctx")
            .and_then(serde_json::Value::as_u64)
            .map(|c| c as usize),
        text_hash: v
            .get("calib_text")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string),
    })
}

/// Re-applies the run's recipe to `base` with exactly the run's calibration (the same text,
/// windows, context cut and seed) on the run's device, so the weights are the measured ones.
/// `calib_text` must be given when the run used its own calibration text.
pub fn reapply(
    base: &Model,
    rec: &ExperimentRecord,
    calib_text: Option<&Path>,
    progress: &mut Progress<'_>,
) -> anyhow::Result<(Transformer, Plan)> {
    anyhow::ensure!(
        base.id == rec.model_id,
        "model {} has id {}, but run {} was made on {}",
        base.name,
        base.id,
        rec.id,
        rec.model_id
    );
    let recipe: Recipe = rec.recipe()?;
    let StoredCalib {
        calib,
        ctx,
        text_hash,
    } = calib_from_eval(&rec.eval_json)?;
    match (&text_hash, calib_text) {
        (Some(_), None) => anyhow::bail!(
            "run {} used its own calibration text; pass it with --calib-text",
            rec.id
        ),
        (Some(h), Some(p)) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            let got = blake3::hash(&bytes).to_hex()[..16].to_string();
            anyhow::ensure!(
                &got == h,
                "{} is not the calibration text run {} used",
                p.display(),
                rec.id
            );
        }
        _ => {}
    }
    let path = calib_text.map(Path::to_path_buf);
    let tokens = crate::calib::calibration_tokens(base, path.as_ref())?;
    let ctx = PerplexityOptions::ctx_or_default(ctx, base.config().max_position_embeddings);
    let device: DeviceChoice = rec.device.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let on_device = base.to_device(&device.open().with_context(|| {
        format!(
            "run {} computed on {device}; its export re-applies it there",
            rec.id
        )
    })?)?;
    let compressed = apply(
        &on_device,
        &recipe,
        &tokens,
        calib.within_ctx(ctx),
        progress,
    )?;
    let t = compressed.model.transformer.to_device(&Device::Cpu)?;
    Ok((t, compressed.plan))
}

/// Writes `t` (from `base`'s tokenizer) as an HF directory in `dtype`, plus
/// [`packed::PACKED_FILE`] with every compressed linear in its inference form (which our
/// loader prefers over the dense copy). Zoo models keep their zoo marker so the export evaluates
/// on the same built-in text and tasks.
pub fn write_hf(
    base: &Model,
    t: &Transformer,
    out: &Path,
    dtype: DType,
    metadata: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let json = base.tokenizer.to_json()?;
    let tok = &base.tokenizer;
    let bos_text = tok.bos_id.and_then(|id| tok.token_text(id));
    let eos_text = tok.eos_id.and_then(|id| tok.token_text(id));
    let files = TokenizerFiles {
        json: &json,
        bos: tok.bos_id.zip(bos_text.as_deref()),
        add_bos: tok.add_bos,
        eos: tok.eos_id.zip(eos_text.as_deref()),
    };
    save_hf_dir(t, &files, out, dtype, metadata)?;
    // The compressed linears once more, in their own inference forms (none: no file).
    let packed = out.join(packed::PACKED_FILE);
    if t.linear_ids()
        .any(|id| t.linear(id).is_some_and(|l| l.form() != "dense"))
    {
        packed::write_packed(t, &packed, metadata)?;
    } else if packed.is_file() {
        // A stale packed file from an earlier export into this directory would override the
        // dense weights just written.
        std::fs::remove_file(&packed).with_context(|| format!("removing {}", packed.display()))?;
    }
    let zoo_meta = base.path.join(crate::zoo::ZOO_META_FILE);
    if zoo_meta.is_file() {
        std::fs::copy(&zoo_meta, out.join(crate::zoo::ZOO_META_FILE))
            .with_context(|| format!("copying {}", zoo_meta.display()))?;
    }
    Ok(())
}

/// HF rotate-half row order → GGUF's interleaved order (inverse of the loader's unpermute).
fn permute_qk(w: &candle_core::Tensor, heads: usize) -> anyhow::Result<candle_core::Tensor> {
    let (rows, cols) = w.dims2()?;
    Ok(w.reshape((heads, 2, rows / heads / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// How a GGUF export stores a compressed linear that no llama.cpp type holds exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GgufFallback {
    /// Dense, in the export's float type: the weights exactly, at a dense size.
    #[default]
    Dense,
    /// Re-quantized from our weights to the nearest llama.cpp type by bits (K types where the
    /// row length allows, else Q4_0/Q5_0/Q8_0): deployable size, approximate weights.
    Nearest,
}

impl std::str::FromStr for GgufFallback {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dense" => Ok(Self::Dense),
            "nearest" => Ok(Self::Nearest),
            other => Err(format!("unknown GGUF fallback `{other}` (dense, nearest)")),
        }
    }
}

/// How each linear of a GGUF export was stored.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GgufReport {
    /// (tensor, llama.cpp type) held exactly: RTN at group 32 as Q4_0/Q5_0/Q8_0 (symmetric) or
    /// Q4_1/Q5_1 (f16 minimum).
    pub exact: Vec<(String, String)>,
    /// (tensor, llama.cpp type) re-quantized from our weights (`--gguf-fallback nearest`).
    pub approximated: Vec<(String, String)>,
    /// Compressed tensors written dense (exact values, dense size).
    pub dense: Vec<String>,
    /// Bytes of the file.
    pub file_bytes: u64,
}

/// The llama.cpp block type that holds an RTN layer of `bits` bits at group 32 exactly, with
/// `q − code` (llama.cpp's offset minus ours): Q4_0/Q5_0/Q8_0 symmetric, Q4_1/Q5_1 with an f16
/// minimum.
fn exact_block_type(bits: usize, rule: RtnRule) -> Option<(GgmlDType, i32)> {
    match (rule, bits) {
        (RtnRule::Symmetric, 4) => Some((GgmlDType::Q4_0, 0)),
        (RtnRule::Symmetric, 5) => Some((GgmlDType::Q5_0, 0)),
        (RtnRule::Symmetric, 8) => Some((GgmlDType::Q8_0, -128)),
        (RtnRule::FloatMin, 4) => Some((GgmlDType::Q4_1, 0)),
        (RtnRule::FloatMin, 5) => Some((GgmlDType::Q5_1, 0)),
        _ => None,
    }
}

/// The rule of an RTN layer at group 32, the only group llama.cpp's types hold.
fn group32_rule(lw: &LinearWeight) -> Option<(usize, RtnRule)> {
    match lw {
        LinearWeight::Rtn {
            bits,
            group: 32,
            symmetric,
            float_min,
            ..
        } => Some((*bits, RtnRule::of(*symmetric, *float_min))),
        _ => None,
    }
}

/// An RTN matrix (rows already in GGUF order) as llama.cpp blocks, or `None` when no block type
/// holds its form or its values are not codes of that form. Each block: the f16 scale, then
/// (Q4_1/Q5_1) the f16 minimum, (Q5_x) the fifth bits, then the codes (Q4/Q5: weight `j` in
/// the low nibble of byte `j`, weight `j + 16` in the high one).
fn rtn_blocks(
    w: &[f32],
    rows: usize,
    cols: usize,
    bits: usize,
    rule: RtnRule,
) -> Option<(GgmlDType, Vec<u8>)> {
    let (dtype, shift) = exact_block_type(bits, rule)?;
    if !cols.is_multiple_of(32) {
        return None;
    }
    let packed = crate::engine::rtn::RtnPacked::from_dequantized(w, rows, cols, bits, 32, rule)?;
    let (_, scales, offsets) = packed.parts();
    let mut out = Vec::new();
    for (i, d) in scales.iter().enumerate() {
        out.extend_from_slice(&d.to_le_bytes());
        if rule == RtnRule::FloatMin {
            out.extend_from_slice(&offsets[i].to_le_bytes());
        }
        let q = |j: usize| (packed.code(i, j) as i32 + shift) as u32;
        match dtype {
            GgmlDType::Q8_0 => out.extend((0..32).map(|j| q(j) as i32 as i8 as u8)),
            GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
                let qh: u32 = (0..16)
                    .map(|j| ((q(j) >> 4) & 1) << j | ((q(j + 16) >> 4) & 1) << (j + 16))
                    .sum();
                out.extend_from_slice(&qh.to_le_bytes());
                out.extend((0..16).map(|j| ((q(j) & 0xf) | (q(j + 16) & 0xf) << 4) as u8));
            }
            _ => out.extend((0..16).map(|j| (q(j) | q(j + 16) << 4) as u8)),
        }
    }
    Some((dtype, out))
}

/// The nearest llama.cpp type for a layer stored at `bits_per_weight`, and its quantized bytes.
/// `None` when no llama.cpp type fits the row length (a multiple of 32 at least).
fn nearest_blocks(
    dense: &candle_core::Tensor,
    bits_per_weight: f64,
) -> anyhow::Result<Option<(GgmlDType, Vec<u8>)>> {
    let cols = dense.dims2()?.1;
    if !cols.is_multiple_of(32) {
        return Ok(None);
    }
    let k = cols.is_multiple_of(256);
    let dtype = match bits_per_weight.round() as usize {
        0..=2 if k => GgmlDType::Q2K,
        3 if k => GgmlDType::Q3K,
        4 if k => GgmlDType::Q4K,
        5 if k => GgmlDType::Q5K,
        6 | 7 if k => GgmlDType::Q6K,
        0..=4 => GgmlDType::Q4_0,
        5 => GgmlDType::Q5_0,
        _ => GgmlDType::Q8_0,
    };
    let q = candle_core::quantized::QTensor::quantize(&dense.to_dtype(DType::F32)?, dtype)?;
    Ok(Some((dtype, q.data()?.to_vec())))
}

fn type_name(d: GgmlDType) -> String {
    format!("{d:?}").to_uppercase()
}

/// `tensor` as llama.cpp's F16 type (its values are f16 already), reported exact.
fn put_f16(
    w: &mut GgufWriter,
    report: &mut GgufReport,
    name: &str,
    tensor: &candle_core::Tensor,
) -> anyhow::Result<()> {
    let bytes: Vec<u8> = tensor
        .to_dtype(DType::F16)?
        .flatten_all()?
        .to_vec1::<half::f16>()?
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    report.exact.push((name.into(), type_name(GgmlDType::F16)));
    w.tensor(name, tensor.dims(), GgmlDType::F16, bytes);
    Ok(())
}

/// Writes `t` as a GGUF file. From a GGUF base, the tokenizer and architecture metadata are
/// copied (block count rewritten); from an HF or zoo base they are built from the config and
/// `tokenizer.json` (see [`super::gguf_meta`], which refuses tokenizers llama.cpp cannot run
/// the same way). RTN linears at group 32 are written as llama.cpp's own types, exactly:
/// Q4_0/Q5_0/Q8_0 (symmetric) and Q4_1/Q5_1 (f16 minimum); other compressed linears dense in
/// `dtype` or, with
/// [`GgufFallback::Nearest`], re-quantized to the nearest llama.cpp type. The report says which.
pub fn write_gguf(
    base: &Model,
    t: &Transformer,
    out: &Path,
    dtype: DType,
    fallback: GgufFallback,
    metadata: &BTreeMap<String, String>,
) -> anyhow::Result<GgufReport> {
    let mut w = GgufWriter::default();
    let mut report = GgufReport::default();
    if base.format == ModelFormat::Gguf {
        let src = GgufFile::open(&base.path)?;
        let arch = src.get_str("general.architecture")?.to_string();
        for (key, value) in &src.metadata {
            // Depth may have changed; block_count is rewritten below. File type no longer applies.
            if key == &format!("{arch}.block_count") || key == "general.file_type" {
                continue;
            }
            w.meta(key, value.clone());
        }
        w.meta(
            &format!("{arch}.block_count"),
            MetaValue::U32(t.blocks.len() as u32),
        );
    } else {
        let tokenizer = super::gguf_meta::tokenizer_meta(base)?;
        for (k, v) in super::gguf_meta::architecture_meta(base, t)?
            .into_iter()
            .chain(tokenizer)
        {
            w.meta(&k, v);
        }
    }
    for (k, v) in metadata {
        w.meta(k, MetaValue::String(v.clone()));
    }
    let (ggml, dt) = match dtype {
        DType::F16 => (GgmlDType::F16, DType::F16),
        _ => (GgmlDType::F32, DType::F32),
    };
    let put = |w: &mut GgufWriter,
               name: &str,
               tensor: &candle_core::Tensor,
               keep_f32: bool|
     -> anyhow::Result<()> {
        let (g, d) = if keep_f32 {
            (GgmlDType::F32, DType::F32)
        } else {
            (ggml, dt)
        };
        let x = tensor.to_dtype(d)?.flatten_all()?;
        let bytes: Vec<u8> = match d {
            DType::F16 => x
                .to_vec1::<half::f16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            _ => x
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        };
        w.tensor(name, tensor.dims(), g, bytes);
        Ok(())
    };
    let (_, permuted) = super::gguf_meta::gguf_arch(t);
    // A tied head quantized by the embedding step holds the embedding's values.
    let embedding_blocks = match group32_rule(&t.output) {
        Some((bits, rule)) if t.config.tie_word_embeddings => {
            let (rows, cols) = t.token_embd.dims2()?;
            let values = t
                .token_embd
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            rtn_blocks(&values, rows, cols, bits, rule)
        }
        _ => None,
    };
    match embedding_blocks {
        Some((g, bytes)) => {
            report
                .exact
                .push(("token_embd.weight".into(), type_name(g)));
            w.tensor("token_embd.weight", t.token_embd.dims(), g, bytes);
        }
        // An f16 head (the step at 16 bits) holds the embedding's values: F16 exactly.
        None if t.config.tie_word_embeddings && t.output.form() == "f16" => {
            put_f16(&mut w, &mut report, "token_embd.weight", &t.token_embd)?;
        }
        None => put(&mut w, "token_embd.weight", &t.token_embd, false)?,
    }
    for (i, b) in t.blocks.iter().enumerate() {
        put(
            &mut w,
            &format!("blk.{i}.attn_norm.weight"),
            &b.attn_norm,
            true,
        )?;
        put(
            &mut w,
            &format!("blk.{i}.ffn_norm.weight"),
            &b.ffn_norm,
            true,
        )?;
        for kind in LinearKind::ALL {
            let lw = b.linear(kind);
            let name = format!("blk.{i}.{}.weight", kind.gguf_name());
            let mut dense = lw.to_dense()?;
            if permuted && kind == LinearKind::AttnQ {
                dense = permute_qk(&dense, t.config.num_heads)?;
            } else if permuted && kind == LinearKind::AttnK {
                dense = permute_qk(&dense, t.config.num_kv_heads)?;
            }
            let (rows, cols) = dense.dims2()?;
            let exact = match group32_rule(lw) {
                Some((bits, rule)) => {
                    let values = dense
                        .to_dtype(DType::F32)?
                        .flatten_all()?
                        .to_vec1::<f32>()?;
                    rtn_blocks(&values, rows, cols, bits, rule)
                }
                None => None,
            };
            if let Some((g, bytes)) = exact {
                report.exact.push((name.clone(), type_name(g)));
                w.tensor(&name, dense.dims(), g, bytes);
            } else if lw.form() == "f16" {
                // An f16 layer is llama.cpp's F16 type exactly, whatever the export's float type.
                put_f16(&mut w, &mut report, &name, &dense)?;
            } else if matches!(lw, LinearWeight::Dense { .. }) {
                put(&mut w, &name, &dense, false)?;
            } else if fallback == GgufFallback::Nearest
                && let Some((g, bytes)) = nearest_blocks(
                    &dense,
                    lw.size_bytes() as f64 * 8.0 / lw.weight_count().max(1) as f64,
                )?
            {
                report.approximated.push((name.clone(), type_name(g)));
                w.tensor(&name, dense.dims(), g, bytes);
            } else {
                report.dense.push(name.clone());
                put(&mut w, &name, &dense, false)?;
            }
            if let Some(bias) = lw.bias() {
                put(
                    &mut w,
                    &format!("blk.{i}.{}.bias", kind.gguf_name()),
                    bias,
                    true,
                )?;
            }
        }
    }
    put(&mut w, "output_norm.weight", &t.output_norm, true)?;
    if !t.config.tie_word_embeddings {
        put(&mut w, "output.weight", &t.output.to_dense()?, false)?;
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let bytes = w.to_bytes();
    report.file_bytes = bytes.len() as u64;
    std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(report)
}

/// The closest llama.cpp type for `bits` bits per weight.
fn llama_type(bits: usize) -> &'static str {
    match bits {
        0..=2 => "q2_k",
        3 => "q3_k",
        4 => "q4_k",
        5 => "q5_k",
        6 | 7 => "q6_k",
        _ => "q8_0",
    }
}

/// llama.cpp per-tensor types for the layers it can express, one `NAME=TYPE` per line (the
/// argument of `llama-quantize --tensor-type`); `#` lines explain the layers it cannot.
pub fn llama_quantize_types(plan: &Plan) -> String {
    let mut out = String::from(
        "# Per-tensor types for llama-quantize: pass each line as `--tensor-type LINE`.\n",
    );
    for (id, (_, p)) in &plan.layers {
        let name = format!("{id}.weight");
        if p.rps.is_some() {
            out.push_str(&format!(
                "# {name}: RPS parameter sharing has no llama.cpp type (exported dense)\n"
            ));
            continue;
        }
        if p.prune.is_some() {
            out.push_str(&format!(
                "# {name}: pruned; llama.cpp types do not keep sparsity (zeros stay zeros in the dense export)\n"
            ));
        }
        match &p.quant {
            Some(Quant::Rtn(k)) => {
                let ty = k
                    .llama_cpp_type()
                    .map_or_else(|| llama_type(k.bits).to_string(), str::to_lowercase);
                out.push_str(&format!("{name}={ty}\n"));
            }
            Some(Quant::ShiftAdd(k)) => out.push_str(&format!(
                "# {name}: shift-add {}b; nearest llama.cpp type by bits\n{name}={}\n",
                k.bits,
                llama_type(k.bits)
            )),
            Some(Quant::F16) => out.push_str(&format!("{name}=f16\n")),
            None => {}
        }
    }
    out
}

/// The store row of an export measured as deployed: the run's recipe and model, the file's
/// bytes and llama.cpp's numbers as its metrics, tagged `deployed` and linked to the run by a
/// note, so the Pareto plot and History show the run as measured here and as shipped.
pub fn deployed_record(
    run: &ExperimentRecord,
    report: &GgufReport,
    deployed: &super::deployed::Deployed,
    measured_on: &str,
    seconds: f64,
) -> ExperimentRecord {
    let mut rec = run.clone();
    let what = format!(
        "{} gguf {} {} {}",
        run.id,
        report.file_bytes,
        report.approximated.len(),
        measured_on
    );
    rec.id = crate::store::record::new_id(&what);
    rec.run_key = blake3::hash(format!("deployed {what}").as_bytes())
        .to_hex()
        .to_string();
    rec.created_at = crate::store::record::rfc3339(std::time::SystemTime::now());
    rec.duration_s = seconds;
    rec.status = crate::store::Status::Ok;
    rec.error = None;
    rec.steps_json = None;
    rec.tags
        .retain(|t| t != DEPLOYED_TAG && !t.starts_with(EXPORT_OF_TAG));
    rec.tags.push(DEPLOYED_TAG.into());
    rec.tags.push(format!("{EXPORT_OF_TAG}{}", run.id));
    rec.notes = vec![format!(
        "as deployed: GGUF export of run {} measured by llama.cpp on {measured_on} ({} linears \
         in llama.cpp types exactly, {} re-quantized to the nearest type, {} dense)",
        run.id,
        report.exact.len(),
        report.approximated.len(),
        report.dense.len()
    )];
    rec.metrics = BTreeMap::from([
        ("bytes".to_string(), report.file_bytes as f64),
        ("ppl".to_string(), deployed.ppl),
        ("kld_mean".to_string(), deployed.kld_mean),
        ("top1_agree".to_string(), deployed.top1_agree),
    ]);
    if let Some(v) = deployed.decode_tok_s {
        rec.metrics.insert("decode_tok_s".into(), v);
    }
    if deployed.domains.len() > 1 {
        for d in &deployed.domains {
            rec.metrics.insert(format!("ppl@{}", d.name), d.ppl);
            rec.metrics
                .insert(format!("kld_mean@{}", d.name), d.kld_mean);
        }
    }
    rec
}

/// The tag of export rows measured as deployed.
pub const DEPLOYED_TAG: &str = "deployed";
/// The tag that links an export row to its run: `export-of-<run id>`.
pub const EXPORT_OF_TAG: &str = "export-of-";
