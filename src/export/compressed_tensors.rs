//! The compressed-tensors layout (what llm-compressor writes and vLLM loads) for RTN layers: an
//! HF directory whose `model.safetensors` holds each symmetric RTN linear as
//! `weight_packed` (its integer codes, `bits` each, packed densely into int32 words along the
//! row, least significant bit first, offset by `2^(bits−1)`), `weight_scale` (one scale per row
//! and group, in f32 so that `code · scale` is exactly our weight) and `weight_shape`, and a
//! `quantization_config` in `config.json` (format `pack-quantized`, one config group per bit
//! width and group size, every other linear in `ignore` and written dense). 2:4-pruned linears
//! go in its `sparsity_config` (format `sparse-24-bitmask`): `compressed` (the two kept values
//! of every four, f32, `[rows, cols/2]`), `bitmask` (one bit per weight, least significant bit
//! first, `[rows, ⌈cols/8⌉]`) and `shape`. compressed-tensors reads that format up to 0.14 (it
//! and vLLM's 2:4 kernels were retired after); the check script decompresses it with 0.14.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use candle_core::DType;

use crate::engine::rtn::RtnPacked;
use crate::model::safetensors::{RawTensor, StDType, write_raw};
use crate::model::{LinearWeight, Model, Transformer};
use crate::quant::rtn::RtnRule;

/// What a compressed-tensors export did with each linear.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CompressedTensorsReport {
    /// (module, bits, group) written packed: exact.
    pub packed: Vec<(String, usize, usize)>,
    /// Modules written as 2:4 sparse (values + bitmask): exact.
    pub sparse_24: Vec<String>,
    /// Modules written dense (listed in `ignore`).
    pub dense: Vec<String>,
}

/// Codes (`k + 2^(bits−1)`) of a symmetric RTN layer packed as compressed-tensors does: each
/// row a stream of `bits`-bit values, least significant bit first, in int32 words.
fn pack_rows(p: &RtnPacked, rows: usize, cols: usize, bits: usize, group: usize) -> Vec<u8> {
    let words_per_row = (cols * bits).div_ceil(32);
    let groups = cols.div_ceil(group);
    let mut out = vec![0u32; rows * words_per_row];
    for r in 0..rows {
        let row = &mut out[r * words_per_row..][..words_per_row];
        for c in 0..cols {
            let code = p.code(r * groups + c / group, c % group);
            let bit = c * bits;
            row[bit / 32] |= code << (bit % 32);
            if bit % 32 + bits > 32 {
                row[bit / 32 + 1] |= code >> (32 - bit % 32);
            }
        }
    }
    out.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// A 2:4 layer's parts: the two kept values of every four (a group with fewer non-zeros keeps
/// zeros at its first free positions) and the bitmask of kept positions, or `None` when some
/// group of four has more than two non-zeros.
fn sparse_24_parts(w: &[f32], rows: usize, cols: usize) -> Option<(Vec<u8>, Vec<u8>)> {
    if !cols.is_multiple_of(4) {
        return None;
    }
    let mask_row = cols.div_ceil(8);
    let (mut values, mut mask) = (
        Vec::with_capacity(rows * cols / 2 * 4),
        vec![0u8; rows * mask_row],
    );
    for (r, row) in w.chunks_exact(cols).enumerate() {
        for (g, four) in row.chunks_exact(4).enumerate() {
            let mut keep: Vec<usize> = (0..4).filter(|&j| four[j] != 0.0).collect();
            if keep.len() > 2 {
                return None;
            }
            keep.extend((0..4).filter(|j| four[*j] == 0.0).take(2 - keep.len()));
            keep.sort_unstable();
            for j in keep {
                values.extend_from_slice(&four[j].to_le_bytes());
                let c = 4 * g + j;
                mask[r * mask_row + c / 8] |= 1 << (c % 8);
            }
        }
    }
    Some((values, mask))
}

/// Writes `t` (from `base`) as a compressed-tensors HF directory at `out`.
pub fn write_compressed_tensors(
    base: &Model,
    t: &Transformer,
    out: &Path,
    metadata: &BTreeMap<String, String>,
) -> anyhow::Result<CompressedTensorsReport> {
    // Config, tokenizer and the dense tensors first; the quantized linears replace theirs.
    super::experiment::write_hf(base, t, out, DType::F32, metadata)?;
    let _ = std::fs::remove_file(out.join(crate::model::packed::PACKED_FILE));
    let mut report = CompressedTensorsReport::default();
    let mut packed: BTreeMap<String, Vec<RawTensor>> = BTreeMap::new();
    let mut groups: BTreeMap<(usize, usize), Vec<String>> = BTreeMap::new();
    for id in t.linear_ids() {
        let module = id.hf_name();
        let Some(lw) = t.linear(id) else { continue };
        let form = match lw {
            LinearWeight::Rtn {
                dequantized,
                bits,
                group,
                symmetric: true,
                ..
            } => {
                let (rows, cols) = dequantized.dims2()?;
                let w = dequantized
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                RtnPacked::from_dequantized(&w, rows, cols, *bits, *group, RtnRule::Symmetric)
                    .map(|p| (p, rows, cols, *bits, *group))
            }
            _ => None,
        };
        let Some((p, rows, cols, bits, group)) = form else {
            if let LinearWeight::Nm { packed: nm, .. } = lw
                && (nm.n, nm.m) == (2, 4)
                && let Some((values, mask)) = sparse_24_parts(&nm.to_dense(), nm.rows, nm.cols)
            {
                let (rows, cols) = (nm.rows, nm.cols);
                let shape: Vec<u8> = [rows as i32, cols as i32]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                let part = |name: &str, dtype, shape: Vec<usize>, bytes| RawTensor {
                    name: format!("{module}.{name}"),
                    dtype,
                    shape,
                    bytes,
                };
                packed.insert(
                    format!("{module}.weight"),
                    vec![
                        part("compressed", StDType::F32, vec![rows, cols / 2], values),
                        part("bitmask", StDType::U8, vec![rows, cols.div_ceil(8)], mask),
                        part("shape", StDType::I32, vec![2, 1], shape),
                    ],
                );
                report.sparse_24.push(module);
                continue;
            }
            report.dense.push(module);
            continue;
        };
        let (_, scales, _) = p.parts();
        let scale_bytes: Vec<u8> = scales
            .iter()
            .flat_map(|s| s.to_f32().to_le_bytes())
            .collect();
        let shape: Vec<u8> = [rows as i32, cols as i32]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        packed.insert(
            format!("{module}.weight"),
            vec![
                RawTensor {
                    name: format!("{module}.weight_packed"),
                    dtype: StDType::I32,
                    shape: vec![rows, (cols * bits).div_ceil(32)],
                    bytes: pack_rows(&p, rows, cols, bits, group),
                },
                RawTensor {
                    name: format!("{module}.weight_scale"),
                    dtype: StDType::F32,
                    shape: vec![rows, cols.div_ceil(group)],
                    bytes: scale_bytes,
                },
                RawTensor {
                    name: format!("{module}.weight_shape"),
                    dtype: StDType::I32,
                    shape: vec![2],
                    bytes: shape,
                },
            ],
        );
        report.packed.push((module.clone(), bits, group));
        groups.entry((bits, group)).or_default().push(module);
    }
    let mut raw = Vec::new();
    for (name, tensor) in crate::model::hf_writer::hf_tensors(t, DType::F32)? {
        match packed.remove(&name) {
            Some(parts) => raw.extend(parts),
            None => raw.push(RawTensor {
                dtype: StDType::F32,
                shape: tensor.dims().to_vec(),
                bytes: tensor
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                name,
            }),
        }
    }
    write_raw(&out.join("model.safetensors"), &raw, metadata)?;

    let config_groups: serde_json::Map<String, serde_json::Value> = groups
        .into_iter()
        .enumerate()
        .map(|(i, ((bits, group), targets))| {
            let weights = serde_json::json!({
                "num_bits": bits, "type": "int", "symmetric": true, "strategy": "group",
                "group_size": group, "dynamic": false, "actorder": null, "observer": "minmax",
            });
            let g = serde_json::json!({
                "targets": targets, "weights": weights,
                "input_activations": null, "output_activations": null,
            });
            (format!("group_{i}"), g)
        })
        .collect();
    let mut ignore = report.dense.clone();
    if !t.config.tie_word_embeddings {
        ignore.push("lm_head".into());
    }
    let config_path = out.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?,
    )?;
    let mut quantization = serde_json::json!({
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": ignore,
    });
    if !report.sparse_24.is_empty() {
        // Quantized and dense linears are the sparsity compressor's `ignore`.
        let sparse_ignore: Vec<String> = t
            .linear_ids()
            .map(|id| id.hf_name())
            .filter(|m| !report.sparse_24.contains(m))
            .collect();
        quantization["sparsity_config"] = serde_json::json!({
            "format": "sparse-24-bitmask",
            "sparsity_structure": "2:4",
            "targets": report.sparse_24,
            "ignore": sparse_ignore,
            "global_sparsity": null,
            "registry_requires_subclass": false,
        });
    }
    config["quantization_config"] = quantization;
    std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", config_path.display()))?;
    Ok(report)
}
