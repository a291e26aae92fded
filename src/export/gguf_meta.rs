//! GGUF metadata for a model that did not come from a GGUF file (an HF directory or a zoo
//! model): the architecture keys llama.cpp reads, from the model's config, and the tokenizer
//! keys (`tokenizer.ggml.*`), from its `tokenizer.json`.
//!
//! Only byte-level BPE tokenizers translate: llama.cpp's `gpt2` tokenizer model is exactly
//! that, with the pre-tokenizer named by `tokenizer.ggml.pre`. We map the two pre-tokenizer
//! shapes we can name without guessing: GPT-2's byte-level split alone (`gpt2`) and SmolLM's
//! individual digits before it (`smollm`; the zoo's tokenizer is built the same way). Anything
//! else (SentencePiece/Unigram models, byte-fallback BPE, regex splits) is refused with the
//! reason, since a wrong `tokenizer.ggml.pre` would silently change every token id.

use anyhow::Context as _;
use serde_json::Value;

use crate::model::gguf::MetaValue;
use crate::model::{Architecture, Model, Transformer};

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

/// The GGUF architecture name `t` is written under, and whether its q/k rows are permuted into
/// llama.cpp's interleaved RoPE order.
pub fn gguf_arch(t: &Transformer) -> (&'static str, bool) {
    match t.config.architecture {
        Architecture::Llama | Architecture::Mistral => ("llama", true),
        Architecture::Qwen2 => ("qwen2", false),
    }
}

/// The `tokenizer.ggml.pre` name of a `tokenizer.json` pre-tokenizer, or why there is none.
fn pre_tokenizer_name(pre: &Value) -> Result<&'static str, String> {
    let is_byte_level = |v: &Value| v["type"] == "ByteLevel" && v["add_prefix_space"] != true;
    let is_digits = |v: &Value| v["type"] == "Digits" && v["individual_digits"] == true;
    if is_byte_level(pre) {
        return Ok("gpt2");
    }
    if pre["type"] == "Sequence"
        && let Some([a, b]) = pre["pretokenizers"].as_array().map(Vec::as_slice)
        && is_digits(a)
        && is_byte_level(b)
    {
        return Ok("smollm");
    }
    Err(format!(
        "its pre-tokenizer ({}) has no llama.cpp name we can map exactly (supported: GPT-2 \
         byte-level, or single digits then byte-level as SmolLM)",
        serde_json::to_string(pre).unwrap_or_default()
    ))
}

/// `tokenizer.ggml.*` keys for `base`'s tokenizer.
pub fn tokenizer_meta(base: &Model) -> anyhow::Result<Vec<(String, MetaValue)>> {
    let tok = &base.tokenizer;
    let json: Value = serde_json::from_str(&tok.to_json()?).context("tokenizer.json")?;
    let refuse = |why: String| {
        anyhow::anyhow!(
            "cannot write a GGUF tokenizer for {}: {why}. Export with --format safetensors \
             instead",
            base.name
        )
    };
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(refuse(format!(
            "its tokenizer model is `{}`, and llama.cpp's byte-level BPE (`gpt2`) is the only \
             one we translate",
            model["type"].as_str().unwrap_or("unknown")
        )));
    }
    if model["byte_fallback"] == true {
        return Err(refuse(
            "it is a byte-fallback (SentencePiece-style) BPE, not byte-level".into(),
        ));
    }
    let pre = pre_tokenizer_name(&json["pre_tokenizer"]).map_err(refuse)?;
    let n = tok.vocab_size();
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![TOKEN_NORMAL; n];
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| refuse("tokenizer.json has no vocab".into()))?;
    for (text, id) in vocab {
        let id = id.as_u64().unwrap_or(u64::MAX) as usize;
        if id < n {
            tokens[id] = Some(text.clone());
        }
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(text)) = (added["id"].as_u64(), added["content"].as_str()) else {
            continue;
        };
        let id = id as usize;
        if id < n {
            tokens[id] = Some(text.to_string());
            types[id] = if added["special"] == true {
                TOKEN_CONTROL
            } else {
                TOKEN_USER_DEFINED
            };
        }
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.ok_or_else(|| refuse(format!("token id {i} has no text"))))
        .collect::<anyhow::Result<_>>()?;
    // Merges are "a b" strings in older tokenizer.json files and [a, b] pairs in newer ones.
    let merges: Vec<MetaValue> = model["merges"]
        .as_array()
        .ok_or_else(|| refuse("tokenizer.json has no merges".into()))?
        .iter()
        .map(|m| match m {
            Value::String(s) => Ok(MetaValue::String(s.clone())),
            Value::Array(p) if p.len() == 2 => Ok(MetaValue::String(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p[1].as_str().unwrap_or_default()
            ))),
            other => Err(refuse(format!("merge {other} is neither `a b` nor [a, b]"))),
        })
        .collect::<anyhow::Result<_>>()?;
    let mut out = vec![
        (
            "tokenizer.ggml.model".to_string(),
            MetaValue::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".into(), MetaValue::String(pre.into())),
        (
            "tokenizer.ggml.tokens".into(),
            MetaValue::Array(tokens.into_iter().map(MetaValue::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), MetaValue::Array(merges)),
        (
            "tokenizer.ggml.add_bos_token".into(),
            MetaValue::Bool(tok.add_bos),
        ),
        (
            "tokenizer.ggml.add_eos_token".into(),
            MetaValue::Bool(false),
        ),
    ];
    if let Some(b) = tok.bos_id {
        out.push(("tokenizer.ggml.bos_token_id".into(), MetaValue::U32(b)));
    }
    if let Some(e) = tok.eos_id {
        out.push(("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(e)));
    }
    Ok(out)
}

/// `general.*` and architecture keys for `t`, from its config.
pub fn architecture_meta(
    base: &Model,
    t: &Transformer,
) -> anyhow::Result<Vec<(String, MetaValue)>> {
    let c = &t.config;
    anyhow::ensure!(
        c.rope_scaling.is_none(),
        "GGUF export of a model with Llama 3 RoPE scaling from a non-GGUF base is not supported \
         (llama.cpp wants a rope_freqs tensor); export with --format safetensors"
    );
    let (arch, _) = gguf_arch(t);
    let key = |k: &str| format!("{arch}.{k}");
    let u = |v: usize| MetaValue::U32(v as u32);
    Ok(vec![
        (
            "general.architecture".into(),
            MetaValue::String(arch.into()),
        ),
        ("general.name".into(), MetaValue::String(base.name.clone())),
        (key("context_length"), u(c.max_position_embeddings)),
        (key("embedding_length"), u(c.hidden_size)),
        (key("block_count"), u(t.blocks.len())),
        (key("feed_forward_length"), u(c.intermediate_size)),
        (key("attention.head_count"), u(c.num_heads)),
        (key("attention.head_count_kv"), u(c.num_kv_heads)),
        (key("attention.key_length"), u(c.head_dim)),
        (key("attention.value_length"), u(c.head_dim)),
        (key("rope.dimension_count"), u(c.head_dim)),
        (key("rope.freq_base"), MetaValue::F32(c.rope_theta)),
        (
            key("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(c.rms_norm_eps as f32),
        ),
        (key("vocab_size"), u(c.vocab_size)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_tokenizers_map_exactly_or_not_at_all() {
        let bl = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false});
        assert_eq!(pre_tokenizer_name(&bl), Ok("gpt2"));
        let smol = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, bl]});
        assert_eq!(pre_tokenizer_name(&smol), Ok("smollm"));
        let spaced = serde_json::json!({"type": "ByteLevel", "add_prefix_space": true});
        assert!(pre_tokenizer_name(&spaced).is_err());
        let split = serde_json::json!({"type": "Split", "pattern": {"Regex": "x"}});
        let err = pre_tokenizer_name(&split).unwrap_err();
        assert!(err.contains("no llama.cpp name"), "{err}");
    }
}
