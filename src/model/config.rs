//! Model hyper-parameters. The on-disk forms (HF `config.json`, GGUF metadata) are read into
//! one validated runtime [`LlamaConfig`]; nothing downstream looks at the raw forms.

use std::path::Path;

use serde::Deserialize;

use super::error::LoadError;
use super::gguf::GgufFile;

/// The Llama-family variants we run. They share one forward pass; they differ in biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
}

impl Architecture {
    pub const HF_NAMES: [&'static str; 3] =
        ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"];
    pub const GGUF_NAMES: [&'static str; 2] = ["llama", "qwen2"];

    fn from_hf(name: &str) -> Option<Self> {
        match name {
            "LlamaForCausalLM" => Some(Self::Llama),
            "MistralForCausalLM" => Some(Self::Mistral),
            "Qwen2ForCausalLM" => Some(Self::Qwen2),
            _ => None,
        }
    }

    /// Qwen2 adds biases to the q/k/v projections.
    pub fn has_qkv_bias(self) -> bool {
        self == Self::Qwen2
    }

    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// Llama 3 style frequency-dependent RoPE scaling.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

/// Validated hyper-parameters of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LlamaConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// Checks the relations the forward pass relies on.
    pub fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let bad = |what: String| Err(LoadError::config(path, what));
        if self.num_layers == 0 || self.hidden_size == 0 || self.vocab_size == 0 {
            return bad("layers, hidden size and vocabulary must be non-zero".into());
        }
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return bad(format!(
                "{} attention heads cannot be grouped over {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head dimension {} must be even for RoPE",
                self.head_dim
            ));
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.rms_norm_eps) || !positive(f64::from(self.rope_theta)) {
            return bad("rms_norm_eps and rope_theta must be positive".into());
        }
        Ok(())
    }

    /// RoPE inverse frequencies, Llama 3 scaling applied where configured.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        let base: Vec<f32> = (0..half)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f32 / self.head_dim as f32))
            .collect();
        let Some(s) = self.rope_scaling else {
            return base;
        };
        let old = s.original_max_position_embeddings as f32;
        let low_wavelen = old / s.low_freq_factor;
        let high_wavelen = old / s.high_freq_factor;
        base.into_iter()
            .map(|f| {
                let wavelen = 2.0 * std::f32::consts::PI / f;
                if wavelen < high_wavelen {
                    f
                } else if wavelen > low_wavelen {
                    f / s.factor
                } else {
                    let smooth = (old / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * f / s.factor + smooth * f
                }
            })
            .collect()
    }

    /// Number of weights in the transformer (embeddings, blocks, norms, untied head).
    pub fn param_count(&self) -> usize {
        let d = self.hidden_size;
        let kv = self.num_kv_heads * self.head_dim;
        let q = self.num_heads * self.head_dim;
        let attn = d * q + 2 * d * kv + q * d;
        let bias = if self.architecture.has_qkv_bias() {
            q + 2 * kv
        } else {
            0
        };
        let mlp = 3 * d * self.intermediate_size;
        let block = attn + bias + mlp + 2 * d;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + self.num_layers * block + d + head
    }
}

/// The subset of Hugging Face `config.json` we read.
#[derive(Debug, Deserialize)]
struct HfConfig {
    architectures: Option<Vec<String>>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f32>,
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
}

impl LlamaConfig {
    /// Reads and validates a Hugging Face `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))?;
        let raw: HfConfig = serde_json::from_str(&text)
            .map_err(|e| LoadError::config(path, format!("cannot parse: {e}")))?;
        let arch_name = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first())
            .cloned()
            .unwrap_or_default();
        let architecture =
            Architecture::from_hf(&arch_name).ok_or_else(|| LoadError::UnknownArchitecture {
                path: path.to_path_buf(),
                arch: arch_name.clone(),
                supported: Architecture::HF_NAMES.join(", "),
            })?;
        let rope_scaling = match &raw.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let kind = v
                    .get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("");
                if kind != "llama3" {
                    return Err(LoadError::config(
                        path,
                        format!("rope_scaling type `{kind}` is not supported (supported: llama3)"),
                    ));
                }
                Some(
                    serde_json::from_value(v.clone())
                        .map_err(|e| LoadError::config(path, format!("rope_scaling: {e}")))?,
                )
            }
        };
        let config = Self {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1)),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: raw.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Reads and validates GGUF metadata. Tied embeddings are decided by the caller from the
    /// presence of `output.weight`, and the vocabulary size from the token list or embedding.
    pub fn from_gguf(file: &GgufFile, vocab_size: usize, tied: bool) -> Result<Self, LoadError> {
        let arch = file.get_str("general.architecture")?.to_string();
        let architecture = match arch.as_str() {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            _ => {
                return Err(LoadError::UnknownArchitecture {
                    path: file.path.clone(),
                    arch,
                    supported: Architecture::GGUF_NAMES.join(", "),
                });
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let hidden_size = file.get_usize(&key("embedding_length"))?;
        let num_heads = file.get_usize(&key("attention.head_count"))?;
        let num_kv_heads = match file.get_usize(&key("attention.head_count_kv")) {
            Ok(n) => n,
            Err(LoadError::MissingKey { .. }) => num_heads,
            Err(e) => return Err(e),
        };
        let head_dim = match file.get_usize(&key("attention.key_length")) {
            Ok(n) => n,
            Err(LoadError::MissingKey { .. }) => hidden_size / num_heads.max(1),
            Err(e) => return Err(e),
        };
        let optional_f64 = |k: &str, default: f64| match file.get_f64(k) {
            Ok(v) => Ok(v),
            Err(LoadError::MissingKey { .. }) => Ok(default),
            Err(e) => Err(e),
        };
        let config = Self {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: file.get_usize(&key("feed_forward_length"))?,
            num_layers: file.get_usize(&key("block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: optional_f64(&key("attention.layer_norm_rms_epsilon"), 1e-5)?,
            rope_theta: optional_f64(&key("rope.freq_base"), 10_000.0)? as f32,
            // GGUF bakes Llama 3 scaling into the `rope_freqs.weight` tensor instead.
            rope_scaling: None,
            max_position_embeddings: file.get_usize(&key("context_length")).unwrap_or(4096),
            tie_word_embeddings: tied,
        };
        config.validate(&file.path)?;
        Ok(config)
    }
}
