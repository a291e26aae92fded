//! Hugging Face directories: `config.json`, `model.safetensors` and `tokenizer.json`, loadable
//! by our loader and by `transformers`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use candle_core::{DType, Tensor};

use crate::model::safetensors::write_safetensors;
use crate::model::{LinearKind, LlamaConfig, Transformer};

/// The `config.json` Hugging Face expects for this configuration.
pub fn hf_config_json(
    config: &LlamaConfig,
    dtype: DType,
    bos: Option<u32>,
    eos: Option<u32>,
) -> serde_json::Value {
    let model_type = match config.architecture {
        crate::model::Architecture::Llama => "llama",
        crate::model::Architecture::Mistral => "mistral",
        crate::model::Architecture::Qwen2 => "qwen2",
    };
    let mut json = serde_json::json!({
        "architectures": [config.architecture.hf_name()],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "torch_dtype": match dtype {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            _ => "float32",
        },
        "bos_token_id": bos,
        "eos_token_id": eos,
    });
    if let Some(s) = config.rope_scaling {
        json["rope_scaling"] = serde_json::json!({
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        });
    }
    json
}

/// Every weight under its Hugging Face name, converted to `dtype`.
pub fn hf_tensors(t: &Transformer, dtype: DType) -> anyhow::Result<Vec<(String, Tensor)>> {
    let conv = |x: &Tensor| x.to_dtype(dtype);
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        conv(&t.token_embd)?,
    )];
    for (i, b) in t.blocks.iter().enumerate() {
        out.push((
            format!("model.layers.{i}.input_layernorm.weight"),
            conv(&b.attn_norm)?,
        ));
        out.push((
            format!("model.layers.{i}.post_attention_layernorm.weight"),
            conv(&b.ffn_norm)?,
        ));
        for kind in LinearKind::ALL {
            let w = b.linear(kind);
            let name = format!("model.layers.{i}.{}", kind.hf_name());
            out.push((format!("{name}.weight"), conv(&w.to_dense()?)?));
            if let Some(bias) = w.bias() {
                out.push((format!("{name}.bias"), conv(bias)?));
            }
        }
    }
    out.push(("model.norm.weight".into(), conv(&t.output_norm)?));
    if !t.config.tie_word_embeddings {
        out.push(("lm_head.weight".into(), conv(&t.output.to_dense()?)?));
    }
    Ok(out)
}

/// The tokenizer files of an HF directory.
pub struct TokenizerFiles<'a> {
    /// `tokenizer.json` text.
    pub json: &'a str,
    /// BOS token `(id, text)`, and whether sequences start with it.
    pub bos: Option<(u32, &'a str)>,
    pub add_bos: bool,
    pub eos: Option<(u32, &'a str)>,
}

/// Saves `t` as an HF directory with weights in `dtype` (f16/bf16/f32); `metadata` goes into
/// the safetensors header.
pub fn save_hf_dir(
    t: &Transformer,
    tokenizer: &TokenizerFiles<'_>,
    dir: &Path,
    dtype: DType,
    metadata: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = hf_config_json(
        &t.config,
        dtype,
        tokenizer.bos.map(|b| b.0),
        tokenizer.eos.map(|e| e.0),
    );
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    std::fs::write(dir.join("tokenizer.json"), tokenizer.json)?;
    let tok_cfg = serde_json::json!({
        "add_bos_token": tokenizer.add_bos,
        "bos_token": tokenizer.bos.map(|b| b.1),
        "eos_token": tokenizer.eos.map(|e| e.1),
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&tok_cfg)?,
    )?;
    write_safetensors(
        &dir.join("model.safetensors"),
        &hf_tensors(t, dtype)?,
        metadata,
    )
    .with_context(|| format!("writing {}", dir.join("model.safetensors").display()))
}
