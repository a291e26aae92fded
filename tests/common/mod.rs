//! Tiny synthetic Llama checkpoints written by the tests themselves (random weights, GQA), in
//! Hugging Face layout and as GGUF, so every loader path runs without downloads.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use reparam::model::gguf::{GgufWriter, MetaValue};
use reparam::model::safetensors::write_safetensors;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

/// Shape of a tiny test model.
#[derive(Debug, Clone)]
pub struct TinySpec {
    pub arch: &'static str,
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub tied: bool,
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            arch: "LlamaForCausalLM",
            hidden: 32,
            ffn: 48,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            tied: false,
            seed: 7,
        }
    }
}

/// The byte-level alphabet (256 symbols) in a fixed order, then two special tokens.
pub fn vocab_tokens() -> Vec<String> {
    let mut chars: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    chars.sort_unstable();
    let mut tokens: Vec<String> = chars.into_iter().map(String::from).collect();
    tokens.push("<s>".into());
    tokens.push("</s>".into());
    tokens
}

impl TinySpec {
    pub fn vocab(&self) -> usize {
        vocab_tokens().len()
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    fn qwen(&self) -> bool {
        self.arch == "Qwen2ForCausalLM"
    }

    /// Deterministic pseudo-random weights, HF names, row-major `[out, in]`.
    pub fn weights(&self) -> Vec<(String, Tensor)> {
        let mut state = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut rand = |shape: &[usize], scale: f32, offset: f32| -> Tensor {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    offset + scale * ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                })
                .collect();
            Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
        };
        let (d, ff, hd) = (self.hidden, self.ffn, self.head_dim());
        let (q, kv) = (self.heads * hd, self.kv_heads * hd);
        let mut w = vec![(
            "model.embed_tokens.weight".to_string(),
            rand(&[self.vocab(), d], 1.0, 0.0),
        )];
        for i in 0..self.layers {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            w.push((p("input_layernorm.weight"), rand(&[d], 0.2, 1.0)));
            w.push((p("self_attn.q_proj.weight"), rand(&[q, d], 0.6, 0.0)));
            w.push((p("self_attn.k_proj.weight"), rand(&[kv, d], 0.6, 0.0)));
            w.push((p("self_attn.v_proj.weight"), rand(&[kv, d], 0.6, 0.0)));
            if self.qwen() {
                w.push((p("self_attn.q_proj.bias"), rand(&[q], 0.2, 0.0)));
                w.push((p("self_attn.k_proj.bias"), rand(&[kv], 0.2, 0.0)));
                w.push((p("self_attn.v_proj.bias"), rand(&[kv], 0.2, 0.0)));
            }
            w.push((p("self_attn.o_proj.weight"), rand(&[d, q], 0.6, 0.0)));
            w.push((p("post_attention_layernorm.weight"), rand(&[d], 0.2, 1.0)));
            w.push((p("mlp.gate_proj.weight"), rand(&[ff, d], 0.6, 0.0)));
            w.push((p("mlp.up_proj.weight"), rand(&[ff, d], 0.6, 0.0)));
            w.push((p("mlp.down_proj.weight"), rand(&[d, ff], 0.6, 0.0)));
        }
        w.push(("model.norm.weight".into(), rand(&[d], 0.2, 1.0)));
        if !self.tied {
            w.push(("lm_head.weight".into(), rand(&[self.vocab(), d], 0.6, 0.0)));
        }
        w
    }

    pub fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": [self.arch],
            "vocab_size": self.vocab(),
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "max_position_embeddings": 256,
            "tie_word_embeddings": self.tied,
        })
    }

    fn tokenizer_json(&self) -> String {
        let vocab: Vocab = vocab_tokens()
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, vec![])
            .build()
            .unwrap();
        let mut tok = tokenizers::Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        tok.to_string(false).unwrap()
    }

    /// Writes `config.json`, `model.safetensors` (or shards with an index) and `tokenizer.json`.
    pub fn write_hf(&self, dir: &Path, shards: usize) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), self.config_json().to_string()).unwrap();
        std::fs::write(dir.join("tokenizer.json"), self.tokenizer_json()).unwrap();
        let weights = self.weights();
        if shards <= 1 {
            write_safetensors(&dir.join("model.safetensors"), &weights, &BTreeMap::new()).unwrap();
            return;
        }
        let per = weights.len().div_ceil(shards);
        let mut map = serde_json::Map::new();
        for (i, chunk) in weights.chunks(per).enumerate() {
            let file = format!("model-{:05}-of-{shards:05}.safetensors", i + 1);
            write_safetensors(&dir.join(&file), chunk, &BTreeMap::new()).unwrap();
            for (name, _) in chunk {
                map.insert(name.clone(), file.clone().into());
            }
        }
        let index = serde_json::json!({ "metadata": {}, "weight_map": map });
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }

    /// Writes the same model as a GGUF file, Q/K permuted as llama.cpp's converter does.
    pub fn write_gguf(&self, path: &Path, dtype: GgmlDType) {
        let arch = if self.qwen() { "qwen2" } else { "llama" };
        std::fs::write(path, self.gguf_writer(arch, dtype).to_bytes()).unwrap();
    }

    pub fn gguf_writer(&self, arch: &str, dtype: GgmlDType) -> GgufWriter {
        let mut w = GgufWriter::default();
        let key = |k: &str| format!("{arch}.{k}");
        w.meta("general.architecture", MetaValue::String(arch.into()))
            .meta("general.name", MetaValue::String("tiny".into()))
            .meta(&key("block_count"), MetaValue::U32(self.layers as u32))
            .meta(&key("context_length"), MetaValue::U32(256))
            .meta(&key("embedding_length"), MetaValue::U32(self.hidden as u32))
            .meta(&key("feed_forward_length"), MetaValue::U32(self.ffn as u32))
            .meta(
                &key("attention.head_count"),
                MetaValue::U32(self.heads as u32),
            )
            .meta(
                &key("attention.head_count_kv"),
                MetaValue::U32(self.kv_heads as u32),
            )
            .meta(&key("rope.freq_base"), MetaValue::F32(10000.0))
            .meta(
                &key("attention.layer_norm_rms_epsilon"),
                MetaValue::F32(1e-5),
            )
            .meta("tokenizer.ggml.model", MetaValue::String("gpt2".into()))
            .meta("tokenizer.ggml.pre", MetaValue::String("gpt2".into()))
            .meta(
                "tokenizer.ggml.tokens",
                MetaValue::Array(vocab_tokens().into_iter().map(MetaValue::String).collect()),
            )
            .meta("tokenizer.ggml.merges", MetaValue::Array(vec![]))
            .meta("tokenizer.ggml.bos_token_id", MetaValue::U32(256))
            .meta("tokenizer.ggml.eos_token_id", MetaValue::U32(257));
        let permute = !self.qwen();
        for (hf, t) in self.weights() {
            let name = reparam::model::names::gguf_from_hf(&hf).unwrap();
            let t = if permute && name.ends_with("attn_q.weight") {
                permute_qk(&t, self.heads)
            } else if permute && name.ends_with("attn_k.weight") {
                permute_qk(&t, self.kv_heads)
            } else {
                t
            };
            // Norms and biases stay F32, as llama.cpp keeps them.
            let dt = if t.rank() == 1 { GgmlDType::F32 } else { dtype };
            let q = QTensor::quantize(&t, dt).unwrap();
            w.tensor(&name, t.dims(), dt, q.data().unwrap().into_owned());
        }
        w
    }
}

/// HF rotate-half row order → GGUF interleaved order (what `convert_hf_to_gguf.py` does).
pub fn permute_qk(w: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    w.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// Max absolute difference of two same-shaped tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Where the real test model, SmolLM2-135M-Instruct (Q4_1 GGUF), is: `REPARAM_SMOLLM2`, else
/// `scripts/fetch-models.sh`'s directory (`REPARAM_MODELS` or `~/.cache/reparam/models`).
/// `None`, with a loud note, when it is missing, unless `REPARAM_REQUIRE_MODELS=1` (set by CI,
/// which always fetches it first) makes that a failure.
pub fn smollm2_file() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let path = match std::env::var_os("REPARAM_SMOLLM2") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("REPARAM_MODELS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default())
                    .join(".cache/reparam/models")
            })
            .join("SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("REPARAM_REQUIRE_MODELS").as_deref() != Ok("1"),
        "REPARAM_REQUIRE_MODELS=1 but {} is missing: run scripts/fetch-models.sh",
        path.display()
    );
    eprintln!(
        "\n*** SKIPPED: SmolLM2 not found at {} — run scripts/fetch-models.sh ***\n",
        path.display()
    );
    None
}

/// The JSON a successful command printed; a failed one fails the test with its stderr.
pub fn ok_json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The smallest evaluation that still measures everything (ctx 64, 2 chunks, 2 task prompts,
/// 2 calibration windows of 64 tokens).
pub fn tiny_eval() -> reparam::run::EvalSettings {
    let mut e = reparam::run::EvalSettings {
        ctx: Some(64),
        chunks: Some(2),
        task_prompts: 2,
        ..reparam::run::EvalSettings::default()
    };
    e.calib.samples = 2;
    e.calib.seq_len = 64;
    e
}

/// The `reparam` binary the tests built.
pub fn reparam() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_reparam"))
}

/// `reparam sweep zoo:multi --space SPACE --store STORE EXTRA…`, its stderr (the progress and
/// the summary) captured and its stdout dropped.
pub fn sweep(space: &Path, store: &Path, extra: &[&str]) -> std::process::Command {
    let mut c = reparam();
    c.args(["sweep", "zoo:multi", "--space"])
        .arg(space)
        .arg("--store")
        .arg(store)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    c
}
