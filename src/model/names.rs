//! Layer names. Inside the app every linear is addressed GGUF-style (`blk.3.ffn_down`), the
//! names llama.cpp tools print; Hugging Face names (`model.layers.3.mlp.down_proj`) are accepted
//! wherever a user types a layer and mapped here, in one place.

use std::fmt;
use std::str::FromStr;

/// The seven linear layers of a Llama-family block.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum LinearKind {
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    FfnGate,
    FfnUp,
    FfnDown,
}

impl LinearKind {
    pub const ALL: [Self; 7] = [
        Self::AttnQ,
        Self::AttnK,
        Self::AttnV,
        Self::AttnOutput,
        Self::FfnGate,
        Self::FfnUp,
        Self::FfnDown,
    ];

    /// The GGUF suffix, e.g. `ffn_down`.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::AttnQ => "attn_q",
            Self::AttnK => "attn_k",
            Self::AttnV => "attn_v",
            Self::AttnOutput => "attn_output",
            Self::FfnGate => "ffn_gate",
            Self::FfnUp => "ffn_up",
            Self::FfnDown => "ffn_down",
        }
    }

    /// The Hugging Face suffix after `model.layers.N.`, e.g. `mlp.down_proj`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::AttnQ => "self_attn.q_proj",
            Self::AttnK => "self_attn.k_proj",
            Self::AttnV => "self_attn.v_proj",
            Self::AttnOutput => "self_attn.o_proj",
            Self::FfnGate => "mlp.gate_proj",
            Self::FfnUp => "mlp.up_proj",
            Self::FfnDown => "mlp.down_proj",
        }
    }
}

/// One linear layer of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinearId {
    pub block: usize,
    pub kind: LinearKind,
}

impl LinearId {
    pub fn new(block: usize, kind: LinearKind) -> Self {
        Self { block, kind }
    }

    /// The Hugging Face name, without the `.weight` suffix.
    pub fn hf_name(self) -> String {
        format!("model.layers.{}.{}", self.block, self.kind.hf_name())
    }
}

impl fmt::Display for LinearId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blk.{}.{}", self.block, self.kind.gguf_name())
    }
}

/// A layer name that is neither GGUF- nor HF-style.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "`{0}` is not a linear layer name (expected e.g. `blk.3.ffn_down` or `model.layers.3.mlp.down_proj`)"
)]
pub struct BadLayerName(pub String);

impl FromStr for LinearId {
    type Err = BadLayerName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadLayerName(s.to_string());
        let name = s.strip_suffix(".weight").unwrap_or(s);
        let (block, rest) = if let Some(rest) = name.strip_prefix("blk.") {
            rest.split_once('.').ok_or_else(bad)?
        } else if let Some(rest) = name.strip_prefix("model.layers.") {
            rest.split_once('.').ok_or_else(bad)?
        } else {
            return Err(bad());
        };
        let block = block.parse().map_err(|_| bad())?;
        let kind = LinearKind::ALL
            .into_iter()
            .find(|k| k.gguf_name() == rest || k.hf_name() == rest)
            .ok_or_else(bad)?;
        Ok(Self { block, kind })
    }
}

/// Maps a Hugging Face tensor name to its GGUF-style name, for every tensor a Llama-family
/// checkpoint holds (norms, embeddings and biases included). `None` for names we do not use.
pub fn gguf_from_hf(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (block, rest) = rest.split_once('.')?;
    let block: usize = block.parse().ok()?;
    let (stem, suffix) = rest.rsplit_once('.')?;
    let stem = match stem {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        other => LinearKind::ALL
            .into_iter()
            .find(|k| k.hf_name() == other)?
            .gguf_name(),
    };
    Some(format!("blk.{block}.{stem}.{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_styles_parse_to_the_same_layer() {
        let a: LinearId = "blk.3.ffn_down".parse().unwrap();
        let b: LinearId = "model.layers.3.mlp.down_proj.weight".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "blk.3.ffn_down");
        assert_eq!(a.hf_name(), "model.layers.3.mlp.down_proj");
        assert!("blk.x.ffn_down".parse::<LinearId>().is_err());
        assert!("blk.3.ffn_sideways".parse::<LinearId>().is_err());
    }

    #[test]
    fn hf_tensor_names_map_to_gguf() {
        assert_eq!(
            gguf_from_hf("model.layers.2.self_attn.q_proj.bias").as_deref(),
            Some("blk.2.attn_q.bias")
        );
        assert_eq!(
            gguf_from_hf("model.layers.0.post_attention_layernorm.weight").as_deref(),
            Some("blk.0.ffn_norm.weight")
        );
        assert_eq!(gguf_from_hf("model.rotary_emb.inv_freq"), None);
    }
}
