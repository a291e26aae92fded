//! Opening models: GGUF files and Hugging Face directories, into one [`Model`] whose forward
//! pass we control layer by layer. Loading never panics on bad input: every failure is a
//! [`LoadError`] that names the file and the problem.

pub mod bitmask;
pub mod config;
pub mod error;
pub mod gguf;
pub mod hashed;
pub mod hf_writer;
pub mod kernels;
pub mod linear;
pub mod llama;
pub mod names;
pub mod nm;
pub mod packed;
pub mod params;
pub mod safetensors;
pub mod sparse;
pub mod tokenizer;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

pub use config::{Architecture, LlamaConfig};
pub use error::LoadError;
pub use hf_writer::{TokenizerFiles, save_hf_dir};
pub use linear::LinearWeight;
pub use llama::{Block, ForwardHook, Kernels, KvCache, NoHook, Transformer};
pub use names::{LinearId, LinearKind};
pub use tokenizer::TextTokenizer;

use gguf::GgufFile;
use safetensors::SafeTensorsFile;

/// The on-disk form a model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ModelFormat {
    Gguf,
    HfDirectory,
}

/// A loaded model: weights in f32, tokenizer, and where it came from.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub path: PathBuf,
    pub format: ModelFormat,
    /// Content hash (blake3, hex) of the stored weights: stable across runs and renames.
    pub id: String,
    pub transformer: Transformer,
    pub tokenizer: TextTokenizer,
}

impl Model {
    /// Opens a GGUF file or an HF directory (`config.json` + safetensors + `tokenizer.json`).
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        Self::load_with_progress(path, &mut |_| {})
    }

    /// [`Self::load`], calling `progress` after each tensor is read and converted (the GUI's
    /// progress bar).
    pub fn load_with_progress(
        path: &Path,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self, LoadError> {
        if path.is_dir() {
            load_hf_dir(path, progress)
        } else {
            load_gguf(path, progress)
        }
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.transformer.config
    }

    /// This model with its weights on `device` (see [`Transformer::to_device`]).
    pub fn to_device(&self, device: &Device) -> Result<Self, candle_core::Error> {
        Ok(Self {
            transformer: self.transformer.to_device(device)?,
            ..self.clone()
        })
    }

    /// This model as an evaluation on `device` runs it (see [`Transformer::densified_on`]).
    pub fn densified_on(&self, device: &Device) -> Result<Self, candle_core::Error> {
        Ok(Self {
            transformer: self.transformer.densified_on(device)?,
            ..self.clone()
        })
    }
}

/// How far a load is: tensor payload bytes and tensors read so far, of the totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadProgress {
    pub bytes_read: u64,
    pub bytes_total: u64,
    pub tensors_read: usize,
    pub tensors_total: usize,
}

impl LoadProgress {
    /// Fraction (0–1) of the payload bytes read.
    pub fn fraction(&self) -> f64 {
        if self.bytes_total == 0 {
            0.0
        } else {
            self.bytes_read as f64 / self.bytes_total as f64
        }
    }
}

/// Hashes tensors in name order so the id does not depend on file layout.
#[derive(Default)]
struct WeightHasher {
    parts: BTreeMap<String, blake3::Hash>,
}

impl WeightHasher {
    fn add(&mut self, name: &str, dtype: &str, shape: &[usize], raw: &[u8]) {
        let mut h = blake3::Hasher::new();
        h.update(dtype.as_bytes());
        for d in shape {
            h.update(&(*d as u64).to_le_bytes());
        }
        h.update(raw);
        self.parts.insert(name.to_string(), h.finalize());
    }

    fn finish(self) -> String {
        let mut h = blake3::Hasher::new();
        for (name, part) in self.parts {
            h.update(name.as_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().to_hex().to_string()
    }
}

fn check_finite(path: &Path, name: &str, t: &Tensor) -> Result<(), LoadError> {
    let values = t
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| LoadError::candle(path, format!("tensor `{name}`"), e))?;
    if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(LoadError::NonFinite {
            path: path.to_path_buf(),
            name: name.to_string(),
            index,
            value,
        });
    }
    Ok(())
}

fn load_gguf(path: &Path, progress: &mut dyn FnMut(LoadProgress)) -> Result<Model, LoadError> {
    let file = GgufFile::open(path)?;
    let tied = file.tensor_info("output.weight").is_none();
    let Some(embd) = file.tensor_info("token_embd.weight") else {
        return Err(LoadError::MissingTensor {
            path: path.to_path_buf(),
            name: "token_embd.weight".into(),
        });
    };
    let config = LlamaConfig::from_gguf(&file, embd.shape[0], tied)?;
    let tokenizer = TextTokenizer::from_gguf(&file)?;
    let mut reader = File::open(path).map_err(|e| LoadError::io(path, e))?;
    let mut hasher = WeightHasher::default();
    let mut tensors = HashMap::new();
    let mut done = LoadProgress {
        bytes_total: file.tensors.iter().map(|t| t.size_bytes).sum(),
        tensors_total: file.tensors.len(),
        ..LoadProgress::default()
    };
    progress(done);
    for info in &file.tensors {
        let raw = file.read_raw(&mut reader, info)?;
        hasher.add(&info.name, &format!("{:?}", info.dtype), &info.shape, &raw);
        let t = candle_core::quantized::ggml_file::qtensor_from_ggml(
            info.dtype,
            &raw,
            info.shape.clone(),
            &Device::Cpu,
        )
        .and_then(|q| q.dequantize(&Device::Cpu))
        .map_err(|e| LoadError::candle(path, format!("dequantizing `{}`", info.name), e))?;
        drop(raw);
        check_finite(path, &info.name, &t)?;
        tensors.insert(info.name.clone(), t);
        done.bytes_read += info.size_bytes;
        done.tensors_read += 1;
        progress(done);
    }
    // GGUF llama files store Q/K rows permuted for interleaved RoPE; we run rotate-half.
    let permuted = config.architecture == Architecture::Llama;
    let rope_freqs = tensors.remove("rope_freqs.weight");
    let mut transformer = assemble(path, config, tensors, permuted)?;
    if let Some(factors) = rope_freqs {
        let factors = factors
            .to_vec1::<f32>()
            .map_err(|e| LoadError::candle(path, "rope_freqs.weight", e))?;
        if factors.len() != transformer.rope_inv_freq.len() {
            return Err(LoadError::ShapeMismatch {
                path: path.to_path_buf(),
                name: "rope_freqs.weight".into(),
                expected: vec![transformer.rope_inv_freq.len()],
                found: vec![factors.len()],
            });
        }
        for (f, s) in transformer.rope_inv_freq.iter_mut().zip(factors) {
            *f /= s;
        }
    }
    let name = file
        .metadata
        .get("general.name")
        .and_then(gguf::MetaValue::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| file_stem(path));
    Ok(Model {
        name,
        path: path.to_path_buf(),
        format: ModelFormat::Gguf,
        id: hasher.finish(),
        transformer,
        tokenizer,
    })
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .or_else(|| path.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

/// The safetensors files of an HF directory: one file, or the shards an index names.
fn hf_weight_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|_| {
        LoadError::config(
            dir,
            "no model.safetensors or model.safetensors.index.json in the directory",
        )
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| LoadError::malformed(&index, format!("JSON: {e}")))?;
    let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(LoadError::malformed(&index, "no `weight_map` object"));
    };
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(|v| v.as_str())
        .map(|f| dir.join(f))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

fn load_hf_dir(dir: &Path, progress: &mut dyn FnMut(LoadProgress)) -> Result<Model, LoadError> {
    let config = LlamaConfig::from_hf_json(&dir.join("config.json"))?;
    let tokenizer = TextTokenizer::from_hf_dir(dir)?;
    let mut hasher = WeightHasher::default();
    let mut tensors = HashMap::new();
    // Headers first, so the totals are known before the first payload is read.
    let files = hf_weight_files(dir)?
        .into_iter()
        .map(|p| SafeTensorsFile::open(&p).map(|st| (p, st)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut done = LoadProgress::default();
    for (_, st) in &files {
        done.bytes_total += st.tensors.values().map(|t| t.size_bytes).sum::<u64>();
        done.tensors_total += st.tensors.len();
    }
    progress(done);
    for (path, st) in files {
        let mut reader = File::open(&path).map_err(|e| LoadError::io(&path, e))?;
        for (hf_name, info) in &st.tensors {
            done.bytes_read += info.size_bytes;
            done.tensors_read += 1;
            let Some(name) = names::gguf_from_hf(hf_name) else {
                progress(done);
                continue;
            };
            let raw = st.read_raw(&mut reader, info)?;
            hasher.add(hf_name, &format!("{:?}", info.dtype), &info.shape, &raw);
            let t = st.to_f32(hf_name, info, &raw)?;
            drop(raw);
            check_finite(&path, hf_name, &t)?;
            tensors.insert(name, t);
            progress(done);
        }
    }
    let mut transformer = assemble(dir, config, tensors, false)?;
    // An export of a compressed run: its linears in their own inference forms replace the
    // dense copies (and count towards the model id, as the weights the model runs with).
    let packed = dir.join(packed::PACKED_FILE);
    if packed.is_file() {
        packed::apply_packed(&mut transformer, &packed)
            .map_err(|e| LoadError::malformed(&packed, e))?;
        let bytes = std::fs::read(&packed).map_err(|e| LoadError::io(&packed, e))?;
        hasher.add(packed::PACKED_FILE, "packed", &[bytes.len()], &bytes);
    }
    Ok(Model {
        name: file_stem(dir),
        path: dir.to_path_buf(),
        format: ModelFormat::HfDirectory,
        id: hasher.finish(),
        transformer,
        tokenizer,
    })
}

/// Builds the transformer from GGUF-named f32 tensors, checking every shape against the config.
fn assemble(
    path: &Path,
    config: LlamaConfig,
    mut tensors: HashMap<String, Tensor>,
    qk_permuted: bool,
) -> Result<Transformer, LoadError> {
    let mut take = |name: &str, expected: &[usize]| -> Result<Tensor, LoadError> {
        let t = tensors
            .remove(name)
            .ok_or_else(|| LoadError::MissingTensor {
                path: path.to_path_buf(),
                name: name.to_string(),
            })?;
        if t.dims() != expected {
            return Err(LoadError::ShapeMismatch {
                path: path.to_path_buf(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        Ok(t)
    };
    let c = &config;
    let (d, ff, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (q_rows, kv_rows) = (c.num_heads * hd, c.num_kv_heads * hd);
    let token_embd = take("token_embd.weight", &[c.vocab_size, d])?;
    let output_norm = take("output_norm.weight", &[d])?;
    let output = if c.tie_word_embeddings {
        LinearWeight::dense(token_embd.clone(), None)
    } else {
        LinearWeight::dense(take("output.weight", &[c.vocab_size, d])?, None)
    };
    let unpermute = |t: Tensor, heads: usize, name: &str| -> Result<Tensor, LoadError> {
        if qk_permuted {
            llama::unpermute_qk(&t, heads).map_err(|e| LoadError::candle(path, name.to_string(), e))
        } else {
            Ok(t)
        }
    };
    // Grown block by block: a config claiming absurdly many layers fails on the first missing
    // tensor, not on an allocation.
    let mut blocks = Vec::new();
    for i in 0..c.num_layers {
        let p = |s: &str| format!("blk.{i}.{s}");
        let mut bias = |s: &str, n: usize| -> Result<Option<Tensor>, LoadError> {
            if c.architecture.has_qkv_bias() {
                Ok(Some(take(&p(s), &[n])?))
            } else {
                Ok(None)
            }
        };
        let (bq, bk, bv) = (
            bias("attn_q.bias", q_rows)?,
            bias("attn_k.bias", kv_rows)?,
            bias("attn_v.bias", kv_rows)?,
        );
        let wq = unpermute(
            take(&p("attn_q.weight"), &[q_rows, d])?,
            c.num_heads,
            &p("attn_q"),
        )?;
        let wk = unpermute(
            take(&p("attn_k.weight"), &[kv_rows, d])?,
            c.num_kv_heads,
            &p("attn_k"),
        )?;
        blocks.push(Block {
            attn_norm: take(&p("attn_norm.weight"), &[d])?,
            attn_q: LinearWeight::dense(wq, bq),
            attn_k: LinearWeight::dense(wk, bk),
            attn_v: LinearWeight::dense(take(&p("attn_v.weight"), &[kv_rows, d])?, bv),
            attn_output: LinearWeight::dense(take(&p("attn_output.weight"), &[d, q_rows])?, None),
            ffn_norm: take(&p("ffn_norm.weight"), &[d])?,
            ffn_gate: LinearWeight::dense(take(&p("ffn_gate.weight"), &[ff, d])?, None),
            ffn_up: LinearWeight::dense(take(&p("ffn_up.weight"), &[ff, d])?, None),
            ffn_down: LinearWeight::dense(take(&p("ffn_down.weight"), &[d, ff])?, None),
        });
    }
    if let Some(extra) = tensors
        .keys()
        .find(|k| k.starts_with(&format!("blk.{}.", c.num_layers)))
    {
        return Err(LoadError::config(
            path,
            format!(
                "tensor `{extra}` belongs to a block beyond the configured {} layers",
                c.num_layers
            ),
        ));
    }
    let rope_inv_freq = config.rope_inv_freq();
    Ok(Transformer {
        config,
        token_embd,
        blocks,
        output_norm,
        output,
        rope_inv_freq,
        kernels: Kernels::Fast,
    })
}

/// Where `zoo:NAME` models may live: next to the executable, then the source tree this binary
/// was built from (so `cargo run` works from anywhere).
fn zoo_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        roots.push(dir.join("assets/zoo"));
    }
    roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/zoo"));
    roots
}

/// Turns what a user typed (`zoo:multi`, a GGUF path, an HF directory) into a path.
pub fn resolve_model_spec(spec: &str) -> Result<PathBuf, LoadError> {
    let Some(name) = spec.strip_prefix("zoo:") else {
        return Ok(PathBuf::from(spec));
    };
    // A zoo name is a member's name, never a path: `zoo:../x` or `zoo:/any/dir` would otherwise
    // load any directory as a bundled model (and evaluate it on the zoo's built-in text).
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(LoadError::config(
            Path::new(spec),
            format!("`{name}` is not a zoo model name (letters, digits, `-` and `_` only)"),
        ));
    }
    let roots = zoo_roots();
    roots
        .iter()
        .map(|r| r.join(name))
        .find(|p| p.join("config.json").is_file())
        .ok_or_else(|| {
            LoadError::config(
                Path::new(spec),
                format!(
                    "no bundled zoo model `{name}` (looked in {})",
                    roots
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
}

/// Loads a model from what a user typed (see [`resolve_model_spec`]).
pub fn load_spec(spec: &str) -> Result<Model, LoadError> {
    Model::load(&resolve_model_spec(spec)?)
}

/// [`load_spec`] with progress (see [`Model::load_with_progress`]).
pub fn load_spec_with_progress(
    spec: &str,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<Model, LoadError> {
    Model::load_with_progress(&resolve_model_spec(spec)?, progress)
}
