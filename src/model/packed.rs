//! Our own packed file, `reparam-packed.safetensors`, written next to an exported HF
//! directory: every compressed linear in its inference form, exactly as the run held it, so
//! the export reloads into the same [`LinearWeight`] variants (and the same kernels, bytes and
//! numbers) rather than the dense f16/f32 copy in `model.safetensors`.
//!
//! The container is plain safetensors (an 8-byte header length, a JSON header, raw
//! little-endian payloads), readable by any safetensors reader. Tensors are named
//! `<linear id>.<part>` (`blk.3.ffn_up.planes`); the header's `__metadata__` holds the format
//! tag and version, the run's metadata (recipe hash, run id, …) and `reparam.packed.layers`, a
//! JSON object giving each linear's form and parameters:
//!
//! | form       | parameters                               | parts                              |
//! |------------|------------------------------------------|------------------------------------|
//! | `shiftadd` | bits, layout, group, rows_per_group      | `planes` U8, `scales` F32          |
//! | `rtn`      | bits, group                              | `codes` U8 (bit-packed), `table` F32 |
//! | `csr`      | —                                        | `row_start` U32, `col` U16, `values` F32 |
//! | `nm`       | n, m                                     | `values` F32, `index` U8           |
//! | `rps`      | mapping, seed, slots                     | `z` F32                            |
//!
//! plus `bias` F32 when the layer has one. RTN layers are held dequantized in memory (scale
//! and zero are folded into the values), so their packed form is `bits`-bit codes into a
//! per-(row, group) table of the `2^bits` values the group can take: bit-exact, at the cost of a
//! `2^bits`-entry f32 table per group instead of an f16 scale and zero. RPS's per-layer scale is
//! folded into `z` (see [`HashedWeight`]). Dense linears are not repeated here: they are in
//! `model.safetensors` (exact when exported with `--dtype f32`, the default).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use candle_core::{Device, Tensor};
use serde_json::{Value, json};

use crate::model::bitmask::BitmaskMatrix;
use crate::model::hashed::{HashMapping, HashedWeight, Hasher};
use crate::model::nm::NmPacked;
use crate::model::sparse::CsrMatrix;
use crate::model::{LinearId, LinearWeight, Transformer};
use crate::quant::apot::ScaleCodes;
use crate::quant::gptq::ScaleLayout;
use crate::quant::lut::{BcqPacked, Scales};

use super::safetensors::{RawTensor as Part, SafeTensorsFile, StDType, write_raw};

/// The packed file's name inside an exported directory.
pub const PACKED_FILE: &str = "reparam-packed.safetensors";
/// `reparam.packed.format` in the metadata.
const FORMAT_TAG: &str = "reparam-packed";
/// The version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

fn f32_part(name: String, v: &[f32]) -> Part {
    Part {
        name,
        dtype: StDType::F32,
        shape: vec![v.len()],
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn u32_part(name: String, v: &[u32]) -> Part {
    Part {
        name,
        dtype: StDType::U32,
        shape: vec![v.len()],
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn u16_part(name: String, v: &[u16]) -> Part {
    Part {
        name,
        dtype: StDType::U16,
        shape: vec![v.len()],
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn u8_part(name: String, v: &[u8]) -> Part {
    Part {
        name,
        dtype: StDType::U8,
        shape: vec![v.len()],
        bytes: v.to_vec(),
    }
}

/// `bits`-bit codes, least significant bit first, packed into bytes.
fn pack_codes(codes: &[u32], bits: usize) -> Vec<u8> {
    let mut out = vec![0u8; (codes.len() * bits).div_ceil(8)];
    for (i, &c) in codes.iter().enumerate() {
        for b in 0..bits {
            if (c >> b) & 1 == 1 {
                let bit = i * bits + b;
                out[bit / 8] |= 1 << (bit % 8);
            }
        }
    }
    out
}

fn unpack_code(bytes: &[u8], i: usize, bits: usize) -> u32 {
    let mut c = 0u32;
    for b in 0..bits {
        let bit = i * bits + b;
        c |= u32::from((bytes[bit / 8] >> (bit % 8)) & 1) << b;
    }
    c
}

/// RTN values as codes into per-(row, group) tables; `None` when a group has more than
/// `2^bits` distinct values (not an RTN matrix) or `bits` is above 8.
fn rtn_codes(w: &[f32], rows: usize, cols: usize, bits: usize, group: usize) -> Option<Part2> {
    if bits == 0 || bits > 8 {
        return None;
    }
    let levels = 1usize << bits;
    let group = if group == 0 { cols.max(1) } else { group };
    let groups = cols.div_ceil(group);
    let mut table = vec![0f32; rows * groups * levels];
    let mut codes = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for g in 0..groups {
            let chunk = &w[r * cols + g * group..r * cols + ((g + 1) * group).min(cols)];
            let mut vals: Vec<u32> = chunk.iter().map(|x| x.to_bits()).collect();
            vals.sort_unstable();
            vals.dedup();
            if vals.len() > levels {
                return None;
            }
            let t = &mut table[(r * groups + g) * levels..][..levels];
            for (slot, v) in vals.iter().enumerate() {
                t[slot] = f32::from_bits(*v);
            }
            for x in chunk {
                let code = vals.binary_search(&x.to_bits()).ok()? as u32;
                codes.push(code);
            }
        }
    }
    Some((pack_codes(&codes, bits), table))
}

type Part2 = (Vec<u8>, Vec<f32>);

/// The parameters and payloads of one compressed linear; `None` for a dense one.
fn layer_parts(id: &str, lw: &LinearWeight) -> anyhow::Result<Option<(Value, Vec<Part>)>> {
    let (rows, cols) = lw.shape();
    let p = |part: &str| format!("{id}.{part}");
    let (mut info, mut parts) = match lw {
        LinearWeight::Dense { .. } => return Ok(None),
        LinearWeight::Bcq { packed, .. } => {
            let (layout, group) = match packed.layout {
                ScaleLayout::Block { group } => ("block", group),
                ScaleLayout::Column { group_rows } => ("column", group_rows),
            };
            // Scales as stored: 16-bit APoT codes with their base exponent, or plain f32.
            let (scale_base, scale_part) = match &packed.scales {
                Scales::Apot(c) => (Some(c.base), u16_part(p("scale_codes"), &c.codes)),
                Scales::F32(v) => (None, f32_part(p("scales"), v)),
            };
            (
                json!({"form": "shiftadd", "bits": packed.bits, "layout": layout,
                       "group": group, "rows_per_group": packed.rows_per_group,
                       "scale_base": scale_base}),
                vec![u8_part(p("planes"), &packed.planes), scale_part],
            )
        }
        LinearWeight::Rtn {
            dequantized,
            bits,
            group,
            symmetric,
            float_min,
            int8_activations,
            ..
        } => {
            let w = dequantized
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            match rtn_codes(&w, rows, cols, *bits, *group) {
                Some((codes, table)) => (
                    json!({"form": "rtn", "bits": bits, "group": group, "symmetric": symmetric,
                           "float_min": float_min, "int8_activations": int8_activations}),
                    vec![u8_part(p("codes"), &codes), f32_part(p("table"), &table)],
                ),
                None => anyhow::bail!(
                    "{id}: RTN layer has more distinct values per group than {bits} bits allow"
                ),
            }
        }
        LinearWeight::Csr { csr, .. } => {
            let (starts, col, values) = csr.parts();
            (
                json!({"form": "csr"}),
                vec![
                    u32_part(p("row_start"), starts),
                    u16_part(p("col"), col),
                    f32_part(p("values"), values),
                ],
            )
        }
        LinearWeight::Bitmask { mask, .. } => {
            let (starts, words, values) = mask.parts();
            (
                json!({"form": "bitmask"}),
                vec![
                    u32_part(p("row_start"), starts),
                    u16_part(p("mask"), words),
                    f32_part(p("values"), values),
                ],
            )
        }
        LinearWeight::Nm { packed, .. } => {
            let (values, index) = packed.parts();
            (
                json!({"form": "nm", "n": packed.n, "m": packed.m}),
                vec![f32_part(p("values"), values), u8_part(p("index"), index)],
            )
        }
        LinearWeight::Hashed { hashed, .. } => {
            let mapping = match hashed.hasher.mapping {
                HashMapping::Fold => "fold",
                HashMapping::Uniform => "uniform",
            };
            (
                // The seed as text: JSON numbers lose u64 precision in many readers.
                json!({"form": "rps", "mapping": mapping, "seed": hashed.hasher.seed.to_string(),
                       "slots": hashed.hasher.m}),
                vec![f32_part(p("z"), &hashed.z)],
            )
        }
    };
    info["rows"] = json!(rows);
    info["cols"] = json!(cols);
    if let Some(b) = lw.bias() {
        let b = b
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        parts.push(f32_part(p("bias"), &b));
        info["bias"] = json!(true);
    }
    Ok(Some((info, parts)))
}

/// Writes the compressed linears of `t` to `path`; returns how many were written.
/// `metadata` (recipe hash, run id, …) goes into the header.
pub fn write_packed(
    t: &Transformer,
    path: &Path,
    metadata: &BTreeMap<String, String>,
) -> anyhow::Result<usize> {
    let mut layers = serde_json::Map::new();
    let mut parts = Vec::new();
    for id in t.linear_ids() {
        let Some(lw) = t.linear(id) else { continue };
        let name = id.to_string();
        if let Some((info, p)) = layer_parts(&name, lw)? {
            layers.insert(name, info);
            parts.extend(p);
        }
    }
    let mut meta: BTreeMap<String, String> = metadata.clone();
    meta.insert("reparam.packed.format".into(), FORMAT_TAG.into());
    meta.insert("reparam.packed.version".into(), FORMAT_VERSION.to_string());
    meta.insert("reparam.packed.blocks".into(), t.blocks.len().to_string());
    meta.insert(
        "reparam.packed.layers".into(),
        Value::Object(layers.clone()).to_string(),
    );
    write_raw(path, &parts, &meta).with_context(|| format!("writing {}", path.display()))?;
    Ok(layers.len())
}

/// A parsed packed file: metadata, layer table and raw payloads by name.
struct PackedFile {
    meta: BTreeMap<String, String>,
    layers: serde_json::Map<String, Value>,
    payloads: BTreeMap<String, (StDType, Vec<u8>)>,
}

fn read_packed(path: &Path) -> Result<PackedFile, String> {
    let file = SafeTensorsFile::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata.clone();
    if meta.get("reparam.packed.format").map(String::as_str) != Some(FORMAT_TAG) {
        return Err("not a reparam packed file (no `reparam.packed.format` tag)".into());
    }
    let version = meta
        .get("reparam.packed.version")
        .cloned()
        .unwrap_or_default();
    if version != FORMAT_VERSION.to_string() {
        return Err(format!(
            "packed format version `{version}`; this build reads version {FORMAT_VERSION}"
        ));
    }
    let layers = match meta
        .get("reparam.packed.layers")
        .map(|t| serde_json::from_str::<Value>(t))
    {
        Some(Ok(Value::Object(m))) => m,
        _ => return Err("`reparam.packed.layers` is missing or not a JSON object".into()),
    };
    let mut reader = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut payloads = BTreeMap::new();
    for (name, info) in &file.tensors {
        let bytes = file
            .read_raw(&mut reader, info)
            .map_err(|e| format!("tensor `{name}`: {e}"))?;
        payloads.insert(name.clone(), (info.dtype, bytes));
    }
    Ok(PackedFile {
        meta,
        layers,
        payloads,
    })
}

impl PackedFile {
    fn raw(&self, name: &str, dtype: StDType) -> Result<&[u8], String> {
        let (dt, bytes) = self
            .payloads
            .get(name)
            .ok_or_else(|| format!("tensor `{name}` is missing"))?;
        if *dt != dtype || bytes.len() % dtype.size_in_bytes() != 0 {
            return Err(format!(
                "tensor `{name}` is {}, expected {}",
                dt.name(),
                dtype.name()
            ));
        }
        Ok(bytes)
    }
    fn f32s(&self, name: &str) -> Result<Vec<f32>, String> {
        Ok(self
            .raw(name, StDType::F32)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    fn u32s(&self, name: &str) -> Result<Vec<u32>, String> {
        Ok(self
            .raw(name, StDType::U32)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    fn u16s(&self, name: &str) -> Result<Vec<u16>, String> {
        Ok(self
            .raw(name, StDType::U16)?
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect())
    }
    fn u8s(&self, name: &str) -> Result<Vec<u8>, String> {
        Ok(self.raw(name, StDType::U8)?.to_vec())
    }
}

fn usize_of(info: &Value, key: &str, layer: &str) -> Result<usize, String> {
    info[key]
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| format!("layer {layer}: `{key}` is missing"))
}

/// The inference form of one layer from the file.
fn layer_from(file: &PackedFile, id: &str, info: &Value) -> Result<LinearWeight, String> {
    let rows = usize_of(info, "rows", id)?;
    let cols = usize_of(info, "cols", id)?;
    let p = |part: &str| format!("{id}.{part}");
    let bias = if info["bias"].as_bool() == Some(true) {
        let b = file.f32s(&p("bias"))?;
        if b.len() != rows {
            return Err(format!("{id}.bias has {} values for {rows} rows", b.len()));
        }
        Some(Tensor::from_vec(b, rows, &Device::Cpu).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let form = info["form"].as_str().unwrap_or_default();
    Ok(match form {
        "shiftadd" => {
            let bits = usize_of(info, "bits", id)?;
            let group = usize_of(info, "group", id)?;
            let layout = match info["layout"].as_str() {
                Some("block") => ScaleLayout::Block { group },
                Some("column") => ScaleLayout::Column { group_rows: group },
                other => return Err(format!("layer {id}: unknown scale layout {other:?}")),
            };
            let scales = match info["scale_base"].as_i64() {
                Some(base) => Scales::Apot(ScaleCodes {
                    base: i8::try_from(base)
                        .map_err(|_| format!("layer {id}: scale base {base} is out of range"))?,
                    codes: file.u16s(&p("scale_codes"))?,
                }),
                None => Scales::F32(file.f32s(&p("scales"))?),
            };
            let packed = BcqPacked::from_parts(
                rows,
                cols,
                bits,
                layout,
                usize_of(info, "rows_per_group", id)?,
                file.u8s(&p("planes"))?,
                scales,
            );
            let planes = rows.div_ceil(16) * 16 * bits * cols.div_ceil(8);
            let per_set = match layout {
                ScaleLayout::Block { .. } => cols.div_ceil(8),
                ScaleLayout::Column { .. } => cols,
            };
            let scales = packed.n_row_groups() * bits * per_set;
            if bits == 0
                || packed.rows_per_group == 0
                || packed.planes.len() != planes
                || packed.scales.len() != scales
            {
                return Err(format!(
                    "layer {id}: {} plane bytes and {} scales do not fit {rows}×{cols} at {bits} bits \
                     (expected {planes} and {scales})",
                    packed.planes.len(),
                    packed.scales.len()
                ));
            }
            LinearWeight::Bcq {
                packed: Arc::new(packed),
                bias,
            }
        }
        "rtn" => {
            let bits = usize_of(info, "bits", id)?;
            let group = usize_of(info, "group", id)?;
            // Files written before the knob existed hold asymmetric layers.
            let flag = |key: &str| info.get(key).and_then(Value::as_bool).unwrap_or(false);
            let (symmetric, float_min) = (flag("symmetric"), flag("float_min"));
            let int8_activations = flag("int8_activations");
            if bits == 0 || bits > 8 {
                return Err(format!(
                    "layer {id}: {bits}-bit RTN codes are not supported"
                ));
            }
            let levels = 1usize << bits;
            let g = if group == 0 { cols.max(1) } else { group };
            let groups = cols.div_ceil(g);
            let codes = file.u8s(&p("codes"))?;
            let table = file.f32s(&p("table"))?;
            if codes.len() != (rows * cols * bits).div_ceil(8)
                || table.len() != rows * groups * levels
            {
                return Err(format!(
                    "layer {id}: {} code bytes and {} table values do not fit {rows}×{cols}",
                    codes.len(),
                    table.len()
                ));
            }
            let mut w = vec![0f32; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    let i = r * cols + c;
                    let code = unpack_code(&codes, i, bits) as usize;
                    w[i] = table[(r * groups + c / g) * levels + code];
                }
            }
            LinearWeight::Rtn {
                dequantized: Tensor::from_vec(w, (rows, cols), &Device::Cpu)
                    .map_err(|e| e.to_string())?,
                bits,
                group,
                symmetric,
                float_min,
                int8_activations,
                bias,
            }
        }
        "csr" => {
            let csr = CsrMatrix::from_parts(
                rows,
                cols,
                file.u32s(&p("row_start"))?,
                file.u16s(&p("col"))?,
                file.f32s(&p("values"))?,
            )
            .map_err(|e| format!("layer {id}: {e}"))?;
            LinearWeight::Csr {
                csr: Arc::new(csr),
                bias,
            }
        }
        "bitmask" => {
            let mask = BitmaskMatrix::from_parts(
                rows,
                cols,
                file.u32s(&p("row_start"))?,
                file.u16s(&p("mask"))?,
                file.f32s(&p("values"))?,
            )
            .map_err(|e| format!("layer {id}: {e}"))?;
            LinearWeight::Bitmask {
                mask: Arc::new(mask),
                bias,
            }
        }
        "nm" => {
            let packed = NmPacked::from_parts(
                rows,
                cols,
                usize_of(info, "n", id)?,
                usize_of(info, "m", id)?,
                file.f32s(&p("values"))?,
                file.u8s(&p("index"))?,
            )
            .map_err(|e| format!("layer {id}: {e}"))?;
            LinearWeight::Nm {
                packed: Arc::new(packed),
                bias,
            }
        }
        "rps" => {
            let mapping = match info["mapping"].as_str() {
                Some("fold") => HashMapping::Fold,
                Some("uniform") => HashMapping::Uniform,
                other => return Err(format!("layer {id}: unknown RPS mapping {other:?}")),
            };
            let seed: u64 = info["seed"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("layer {id}: RPS seed is missing"))?;
            let slots = usize_of(info, "slots", id)?;
            let z = file.f32s(&p("z"))?;
            let hasher = Hasher::new(mapping, seed, rows * cols, slots);
            if z.len() != slots || hasher.m != slots {
                return Err(format!(
                    "layer {id}: {} shared values for {slots} slots of {rows}×{cols}",
                    z.len()
                ));
            }
            LinearWeight::Hashed {
                hashed: Arc::new(HashedWeight {
                    rows,
                    cols,
                    hasher,
                    z,
                }),
                bias,
            }
        }
        other => return Err(format!("layer {id}: unknown form `{other}`")),
    })
}

/// Replaces the linears of `t` named in the packed file at `path` with their packed forms.
/// Returns the file's metadata. Every layer must exist in `t` with the same shape; any
/// inconsistency, truncation or corruption is an error (the caller names the file).
pub fn apply_packed(t: &mut Transformer, path: &Path) -> Result<BTreeMap<String, String>, String> {
    let file = read_packed(path)?;
    let blocks = file
        .meta
        .get("reparam.packed.blocks")
        .and_then(|b| b.parse::<usize>().ok());
    if blocks.is_some_and(|b| b != t.blocks.len()) {
        return Err(format!(
            "{}: written for {} blocks, the model has {}",
            path.display(),
            blocks.unwrap_or_default(),
            t.blocks.len()
        ));
    }
    for (name, info) in &file.layers {
        let id: LinearId = name
            .parse()
            .map_err(|_| format!("`{name}` is not a linear layer"))?;
        let lw = layer_from(&file, name, info)?;
        let Some(block) = t.blocks.get_mut(id.block) else {
            return Err(format!("{name} is past the model's blocks"));
        };
        let slot = block.linear_mut(id.kind);
        if slot.shape() != lw.shape() {
            return Err(format!(
                "{name} is {:?} in the packed file but {:?} in the model",
                lw.shape(),
                slot.shape()
            ));
        }
        *slot = lw;
    }
    Ok(file.meta)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rtn_codes_round_trip_bit_exactly() {
        let (rows, cols) = (5, 70);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.3)
            .collect();
        for bits in [2, 3, 4, 8] {
            let q = crate::quant::rtn::rtn_quantize(
                &w,
                rows,
                cols,
                bits,
                32,
                crate::quant::rtn::RtnRule::IntegerZero,
            );
            let (codes, table) = rtn_codes(&q, rows, cols, bits, 32).unwrap();
            let levels = 1 << bits;
            let groups = cols.div_ceil(32);
            for (i, want) in q.iter().enumerate() {
                let (r, c) = (i / cols, i % cols);
                let code = unpack_code(&codes, i, bits) as usize;
                let got = table[(r * groups + c / 32) * levels + code];
                assert_eq!(got.to_bits(), want.to_bits(), "{bits} bits, weight {i}");
            }
        }
        // Unquantized values do not fit a 2-bit table: refused, not approximated.
        assert!(rtn_codes(&w, rows, cols, 2, 32).is_none());
    }

    #[test]
    fn files_that_are_not_packed_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(PACKED_FILE);
        std::fs::write(&p, b"abc").unwrap();
        assert!(read_packed(&p).err().unwrap().contains("truncated"));
        let mut huge = 1u64 << 40;
        std::fs::write(&p, huge.to_le_bytes()).unwrap();
        assert!(read_packed(&p).err().unwrap().contains("header claims"));
        let head = br#"{"__metadata__":{"reparam.packed.format":"reparam-packed","reparam.packed.version":"99"}}"#;
        huge = head.len() as u64;
        let mut bytes = huge.to_le_bytes().to_vec();
        bytes.extend_from_slice(head);
        std::fs::write(&p, &bytes).unwrap();
        assert!(read_packed(&p).err().unwrap().contains("version `99`"));
        let head = br#"{"__metadata__":{}}"#;
        let mut bytes = (head.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(head);
        std::fs::write(&p, &bytes).unwrap();
        assert!(
            read_packed(&p)
                .err()
                .unwrap()
                .contains("not a reparam packed file")
        );
    }
}
