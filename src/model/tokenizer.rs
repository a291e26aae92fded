//! Text ↔ token ids. HF directories bring a `tokenizer.json`; GGUF files carry the vocabulary
//! and merges in their metadata, from which we build the same byte-level BPE llama.cpp runs.
//!
//! We do not use candle's `Tokenizer::from_gguf`: it ignores `tokenizer.ggml.pre` and adds a
//! prefix space (see `docs/techniques.md`, "Tokenizer note"), which changes every token id.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use super::error::LoadError;
use super::gguf::{GgufFile, MetaValue};

/// GGUF token types that are matched whole before pre-tokenization (control, user-defined).
const SPECIAL_TOKEN_TYPES: [u64; 2] = [3, 4];

/// A tokenizer plus the special-token facts evaluation needs.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// Whether the model expects a BOS token at the start of a sequence.
    pub add_bos: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl TextTokenizer {
    /// Tokenizes text; special tokens written in the text (`<|im_start|>`) are recognised,
    /// and a BOS is prepended when the model expects one and `with_bos` is set.
    pub fn encode(&self, text: &str, with_bos: bool) -> anyhow::Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing failed: {e}"))?;
        let mut ids = Vec::with_capacity(enc.get_ids().len() + 1);
        if with_bos && self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| anyhow::anyhow!("detokenizing failed: {e}"))
    }

    /// The `tokenizer.json` text of this tokenizer (for exports).
    pub fn to_json(&self) -> anyhow::Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| anyhow::anyhow!("serializing the tokenizer: {e}"))
    }

    /// The text of token `id`, if it exists.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Loads `tokenizer.json` from an HF directory, with BOS/EOS facts from
    /// `tokenizer_config.json` when present.
    pub fn from_hf_dir(dir: &Path) -> Result<Self, LoadError> {
        let path = dir.join("tokenizer.json");
        let inner = Tokenizer::from_file(&path).map_err(|e| LoadError::Tokenizer {
            path: path.clone(),
            what: e.to_string(),
        })?;
        let token_id = |v: Option<&serde_json::Value>| -> Option<u32> {
            let v = v?;
            let content = v.as_str().or_else(|| v.get("content")?.as_str())?;
            inner.token_to_id(content)
        };
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| LoadError::Tokenizer {
                path: cfg_path.clone(),
                what: e.to_string(),
            })?,
            Err(_) => serde_json::Value::Null,
        };
        let bos_id = token_id(cfg.get("bos_token"));
        let eos_id = token_id(cfg.get("eos_token"));
        let add_bos = cfg
            .get("add_bos_token")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
            && bos_id.is_some();
        Ok(Self {
            inner,
            bos_id,
            eos_id,
            add_bos,
        })
    }

    /// Builds the tokenizer a GGUF file describes (`tokenizer.ggml.model = gpt2`).
    pub fn from_gguf(file: &GgufFile) -> Result<Self, LoadError> {
        let err = |what: String| LoadError::Tokenizer {
            path: file.path.clone(),
            what,
        };
        let model = file.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(err(format!(
                "tokenizer model `{model}` is not supported (supported: gpt2 byte-level BPE)"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>, LoadError> {
            file.get(key)?
                .as_array()
                .ok_or_else(|| err(format!("`{key}` is not an array")))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| err(format!("`{key}` holds a non-string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| err(format!("merge `{m}` has no space")))
            })
            .collect::<Result<_, _>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| err(format!("building BPE: {e}")))?;
        let mut inner = Tokenizer::new(bpe);
        let pre = file
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(MetaValue::as_str)
            .unwrap_or("default");
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            // SmolLM splits every digit on its own before the GPT-2 byte-level split.
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            "gpt2" | "default" => byte_level.into(),
            other => {
                tracing::warn!(
                    "{}: pre-tokenizer `{other}` is approximated by GPT-2's; token ids may differ from llama.cpp",
                    file.path.display()
                );
                byte_level.into()
            }
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        if let Some(types) = file
            .metadata
            .get("tokenizer.ggml.token_type")
            .and_then(MetaValue::as_array)
        {
            let special: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(t, _)| t.as_u64().is_some_and(|t| SPECIAL_TOKEN_TYPES.contains(&t)))
                .map(|(_, tok)| AddedToken::from(tok.clone(), true))
                .collect();
            inner
                .add_special_tokens(special)
                .map_err(|e| err(format!("adding special tokens: {e}")))?;
        }
        let id = |key: &str| {
            file.metadata
                .get(key)
                .and_then(MetaValue::as_u64)
                .map(|v| v as u32)
        };
        let bos_id = id("tokenizer.ggml.bos_token_id");
        let add_bos = file
            .metadata
            .get("tokenizer.ggml.add_bos_token")
            .and_then(MetaValue::as_bool)
            .unwrap_or(false)
            && bos_id.is_some();
        Ok(Self {
            inner,
            bos_id,
            eos_id: id("tokenizer.ggml.eos_token_id"),
            add_bos,
        })
    }
}
