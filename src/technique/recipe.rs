//! The recipe: the plan a user edits. Per-layer rules select linears by pattern and set each
//! technique's knobs; model-level steps come first. TOML for people, JSON for the store, and a
//! content hash that (with the model id) identifies a run.
//!
//! Validation happens here, before any work: unknown knobs (serde), out-of-range values, rules
//! that match no layer, and layers named that the model does not have are errors with the
//! rule's index and pattern in the message.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{LinearId, LinearKind, Transformer};

/// Shift-add (ShiftAddLLM) knobs of one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShiftAddKnobs {
    /// Binary planes per weight, 2..=8.
    pub bits: usize,
    /// `block` (8-column blocks; the LUT kernel's layout) or `column` (per-column scales).
    #[serde(default)]
    pub layout: ScaleLayoutKnob,
    /// Weights sharing one scale set (128 = 8 columns × 16 rows for `block`; rows for `column`);
    /// 0 = whole column / all rows.
    #[serde(default = "default_group")]
    pub group: usize,
    /// Power-of-two terms per scale, 1..=3.
    #[serde(default = "default_apot_terms")]
    pub apot_terms: usize,
    /// Alternating BCQ rounds, 0..=50.
    #[serde(default = "default_rounds")]
    pub rounds: usize,
    /// GPTQ-style error feedback through the calibration Hessian (the activation objective).
    #[serde(default = "default_true")]
    pub error_feedback: bool,
    /// Quantize columns in order of decreasing activation energy.
    #[serde(default = "default_true")]
    pub act_order: bool,
}

/// Plain round-to-nearest group quantization, the baseline users compare against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtnKnobs {
    /// 2..=8.
    pub bits: usize,
    /// Inputs per (scale, zero) pair.
    #[serde(default = "default_group")]
    pub group: usize,
    /// Symmetric around zero: an f16 scale per group and no zero point (llama.cpp's Q4_0 rule:
    /// the weight of largest magnitude maps to level −2^(bits−1)), so 4, 5 and 8 bits at group
    /// 32 are exactly llama.cpp's Q4_0, Q5_0 and Q8_0 and export to GGUF without requantizing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub symmetric: bool,
    /// The zero offset as the group's minimum in f16 (`w = scale·q + min`, the group's own
    /// range) instead of an integer zero point: llama.cpp's Q4_1 rule, so 4 and 5 bits at group
    /// 32 are exactly its Q4_1 and Q5_1. Not with `symmetric`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub float_min: bool,
    /// Round each input vector to int8 in blocks of 32 (an f16 scale each) before the
    /// product: how llama.cpp's CPU backend multiplies its quantized types, so the measured
    /// accuracy is the deployed one, and the engine's kernel multiplies in integers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub int8_activations: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleLayoutKnob {
    #[default]
    Block,
    Column,
}

fn default_group() -> usize {
    128
}
fn default_apot_terms() -> usize {
    3
}
fn default_rounds() -> usize {
    20
}
fn default_true() -> bool {
    true
}

/// Pruning knobs of one layer (`docs/techniques.md`, Pruning §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneKnobs {
    /// Fraction of weights set to zero, 0..=0.95 (ignored by `nm`, whose ratio is `1 - n/m`).
    #[serde(default)]
    pub ratio: f64,
    #[serde(default)]
    pub method: PruneMethod,
    /// `n:m` pattern: keep `n` of every `m` consecutive inputs.
    #[serde(default = "default_n")]
    pub n: usize,
    #[serde(default = "default_m")]
    pub m: usize,
    /// Which score picks the kept values of an `nm` group: `wanda` (|W|·‖X_j‖, needs
    /// calibration) or `magnitude`.
    #[serde(default)]
    pub score: NmScore,
    /// Stored form of an unstructured-pruned layer: `auto` (the smallest of bitmask, CSR and
    /// dense: bitmask from ~3 % to ~94 % sparsity, CSR above), `bitmask`, `csr` or `dense`.
    /// `nm` layers are always stored compressed when `m <= 16`.
    #[serde(default)]
    pub form: SparseForm,
}

/// The knobs' values when a rule does not set them (what the GUI starts an edit from).
impl Default for PruneKnobs {
    fn default() -> Self {
        Self {
            ratio: 0.5,
            method: PruneMethod::default(),
            n: default_n(),
            m: default_m(),
            score: NmScore::default(),
            form: SparseForm::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SparseForm {
    #[default]
    Auto,
    Bitmask,
    Csr,
    Dense,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NmScore {
    #[default]
    Wanda,
    Magnitude,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PruneMethod {
    #[default]
    Magnitude,
    Wanda,
    Nm,
}

fn default_n() -> usize {
    2
}
fn default_m() -> usize {
    4
}

/// Randomized parameter sharing knobs of one layer (`docs/techniques.md`, RPS §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpsKnobs {
    /// Compression ratio c ≥ 1: the layer's weights share `ceil(n / c)` slots.
    pub ratio: f64,
    #[serde(default)]
    pub mapping: RpsMapping,
    /// Output-aware refit of the array on calibration inputs (conjugate gradient on `XᵀX`),
    /// after the data-free projection.
    #[serde(default)]
    pub refit: bool,
    /// Conjugate-gradient steps of the refit.
    #[serde(default = "default_refit_iters")]
    pub refit_iters: usize,
}

fn default_refit_iters() -> usize {
    20
}

/// The knobs' values when a rule does not set them (what the GUI starts an edit from).
impl Default for RpsKnobs {
    fn default() -> Self {
        Self {
            ratio: 2.0,
            mapping: RpsMapping::default(),
            refit: false,
            refit_iters: default_refit_iters(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RpsMapping {
    #[default]
    Fold,
    Uniform,
}

/// Model-level step: merge fine-tuned variants into the base, one at a time
/// (`docs/techniques.md`, Merge §4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeStep {
    /// Fine-tuned models (paths or `zoo:NAME`), folded in this order.
    pub models: Vec<String>,
    #[serde(default)]
    pub method: MergeMethod,
    /// OPCM's α; the λ that scales the merged task vector of task arithmetic, TIES and DARE.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// TIES: the fraction of each task vector kept, its largest magnitudes (default 0.2);
    /// DARE: the fraction kept at random, the survivors scaled by its inverse (default 0.5).
    /// mergekit's `density`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub density: Option<f64>,
}

impl MergeStep {
    /// The density the method uses (see [`Self::density`]).
    pub fn density(&self) -> f64 {
        self.density.unwrap_or(match self.method {
            MergeMethod::Ties => 0.2,
            _ => 0.5,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeMethod {
    #[default]
    Opcm,
    TaskArithmetic,
    Average,
    /// TIES-merging: trim each task vector to its largest entries, elect each parameter's sign
    /// by the sum, average the entries that agree with it.
    Ties,
    /// DARE: drop task-vector entries at random and rescale the rest, then task arithmetic.
    Dare,
}

fn default_alpha() -> f64 {
    0.5
}

/// Model-level step: remove depth by flattening adjacent block pairs (`docs/techniques.md`,
/// Flatten §5), or by dropping blocks (the ShortGPT baseline).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlattenStep {
    /// Explicit adjacent pairs `[i, i + 1]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<[usize; 2]>,
    /// Pick this many of the most redundant pairs by calibration similarity instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<usize>,
    #[serde(default)]
    pub method: FlattenMethod,
    /// The MLP prune-back's ridge `λ`, as a multiple of the mean eigenvalue of the channels'
    /// second moment (default 10, FlattenGPT's setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ridge: Option<f64>,
    /// How the prune-back ranks MLP channels.
    #[serde(default, skip_serializing_if = "ChannelScore::is_default")]
    pub channels: ChannelScore,
    /// How the prune-back ranks the KV groups (with their query heads).
    #[serde(default, skip_serializing_if = "HeadScore::is_default")]
    pub heads: HeadScore,
    /// Refit the kept heads' o_proj to carry what the dropped heads wrote (Nyström
    /// compensation on the heads' outputs, as the MLP channels get).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refit_heads: bool,
    /// Which similarity scores a candidate group when `auto` picks the groups to flatten.
    #[serde(default, skip_serializing_if = "GroupPick::is_default")]
    pub pick: GroupPick,
}

impl FlattenStep {
    /// A step with only the blocks chosen (`pairs` or `auto`) and the method set.
    pub fn new(pairs: Vec<[usize; 2]>, auto: Option<usize>, method: FlattenMethod) -> Self {
        Self {
            pairs,
            auto,
            method,
            ridge: None,
            channels: ChannelScore::default(),
            heads: HeadScore::default(),
            refit_heads: false,
            pick: GroupPick::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlattenMethod {
    #[default]
    Flatten,
    Drop,
}

/// How the flatten prune-back ranks the wide block's MLP channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelScore {
    /// Ridge leverage of the channels' calibration activations (FlattenGPT).
    #[default]
    Leverage,
    /// The channel's output energy: its mean squared activation times its down_proj column's
    /// squared norm.
    Energy,
}

impl ChannelScore {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// How the flatten prune-back ranks the wide block's KV groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadScore {
    /// The summed norm of the group's heads' contributions to the residual (FlattenGPT).
    #[default]
    Contribution,
    /// The summed ridge leverage of the group's heads' output features (as `channels` ranks
    /// the MLP channels).
    Leverage,
}

impl HeadScore {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// How `auto` scores merging adjacent groups of blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupPick {
    /// The input of the span's first block against the input of its last (FlattenGPT).
    #[default]
    Inputs,
    /// The input of the span's first block against the output of its last: how little the
    /// whole span changes the residual stream (ShortGPT's block influence, for spans).
    Span,
}

impl GroupPick {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// One rule: which linears, and what to do with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerRule {
    /// Glob over layer names (`blk.*.ffn_*`, `*` and `?`), `re:REGEX`, or an exact name (GGUF-
    /// or HF-style).
    #[serde(rename = "match")]
    pub pattern: String,
    /// Optional block range `A-B` (inclusive) or list `1,3,5` restricting the pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shiftadd: Option<ShiftAddKnobs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtn: Option<RtnKnobs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<PruneKnobs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rps: Option<RpsKnobs>,
    /// Store the weight dense in f16 (half the bytes of f32; each weight rounded to the
    /// nearest f16, as llama.cpp's F16 type holds it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub f16: bool,
}

/// A whole compression plan; the default changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The model it was made for (a path, `zoo:NAME`, or a model id); informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Seed for every randomised step.
    #[serde(default)]
    pub seed: u64,
    /// Model-level steps run first, in this order: merge, then flatten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<MergeStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flatten: Option<FlattenStep>,
    /// Model-level step after flattening: quantize the token embedding (and the LM head tied
    /// to it). Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbeddingStep>,
    #[serde(default)]
    pub layers: Vec<LayerRule>,
}

/// Round-to-nearest quantization of the token embedding matrix, one asymmetric (f16 scale, f16
/// zero) pair per row, which the tied LM head shares: at 8 bits 8.06 bits per weight on a
/// 576-wide embedding, against 32 for f32. At 16 bits each weight is rounded to f16 instead
/// (no scales): half the bytes of f32, what llama.cpp's F16 files hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingStep {
    /// Bits per weight: 2–8 (RTN), or 16 (f16).
    pub bits: usize,
    /// Inputs per scale (0, the default: the whole row).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub group: usize,
    /// Symmetric RTN (see [`RtnKnobs::symmetric`]): at 8 bits and group 32 exactly llama.cpp's
    /// Q8_0, the type its own files give the embedding.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub symmetric: bool,
    /// The zero offset as an f16 minimum (see [`RtnKnobs::float_min`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub float_min: bool,
    /// The tied LM head's inputs rounded to int8 (see [`RtnKnobs::int8_activations`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub int8_activations: bool,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

impl EmbeddingStep {
    /// Checks the bit-width and that the model's head is tied to its embedding (an untied head
    /// would need its own step; not supported yet).
    pub fn validate(&self, model: &Transformer) -> Result<(), String> {
        if !(2..=8).contains(&self.bits) && self.bits != 16 {
            return Err(format!(
                "embedding.bits = {} is neither in 2..=8 (RTN) nor 16 (f16)",
                self.bits
            ));
        }
        if self.bits == 16
            && (self.group != 0 || self.symmetric || self.float_min || self.int8_activations)
        {
            return Err(
                "embedding: at 16 bits (f16) there are no scales: `group`, `symmetric`, \
                 `float_min` and `int8_activations` do not apply"
                    .into(),
            );
        }
        if self.symmetric && self.float_min {
            return Err("embedding: `symmetric` and `float_min` exclude each other".into());
        }
        if !model.config.tie_word_embeddings {
            return Err(
                "[embedding] needs a model whose LM head is tied to its token embedding; \
                 this one has a separate head"
                    .into(),
            );
        }
        Ok(())
    }
}

/// How one linear's weight is quantized.
#[derive(Debug, Clone, PartialEq)]
pub enum Quant {
    ShiftAdd(ShiftAddKnobs),
    Rtn(RtnKnobs),
    /// Dense, each weight rounded to f16.
    F16,
}

/// What one linear gets, applied in this order: prune, then quantize; or RPS alone.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LayerPlan {
    pub prune: Option<PruneKnobs>,
    pub quant: Option<Quant>,
    pub rps: Option<RpsKnobs>,
}

impl LayerPlan {
    /// Whether this layer's technique reads its input statistics (XᵀX or column norms).
    pub fn needs_stats(&self) -> bool {
        matches!(&self.quant, Some(Quant::ShiftAdd(k)) if k.error_feedback)
            || matches!(&self.prune, Some(p) if p.method == PruneMethod::Wanda
                || (p.method == PruneMethod::Nm && p.score == NmScore::Wanda))
            || matches!(&self.rps, Some(r) if r.refit)
    }
}

/// The recipe resolved against a model: one plan per selected linear.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub layers: BTreeMap<LinearId, (usize, LayerPlan)>,
    /// Overlaps between rules, for the user to see (which rule won where).
    pub notes: Vec<String>,
}

/// Why a recipe cannot run.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot parse recipe: {0}")]
    Parse(String),
    #[error("rule {index} (`{pattern}`): {what}")]
    Rule {
        index: usize,
        pattern: String,
        what: String,
    },
}

/// How a rule selects layer names.
enum Matcher {
    Regex(regex::Regex),
    Glob(String),
}

impl Matcher {
    fn new(pattern: &str) -> Result<Self, String> {
        if let Some(re) = pattern.strip_prefix("re:") {
            return regex::Regex::new(&format!("^(?:{re})$"))
                .map(Matcher::Regex)
                .map_err(|e| format!("bad regex: {e}"));
        }
        // Exact HF names are accepted and mapped to our GGUF-style names.
        if let Ok(id) = pattern.parse::<LinearId>() {
            return Ok(Matcher::Glob(id.to_string()));
        }
        Ok(Matcher::Glob(pattern.to_string()))
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Matcher::Regex(re) => re.is_match(name),
            Matcher::Glob(g) => glob_match(g.as_bytes(), name.as_bytes()),
        }
    }

    /// Literal characters in the pattern: more literal = more specific. Regexes rank lowest.
    fn specificity(&self) -> usize {
        match self {
            Matcher::Regex(_) => 0,
            Matcher::Glob(g) => g.chars().filter(|c| *c != '*' && *c != '?').count(),
        }
    }
}

/// `*` matches any run of characters, `?` any one character.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], name) || (!name.is_empty() && glob_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Parses `3`, `0-5`, `1,3,7-9` into block indices.
fn parse_blocks(spec: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("block range `{part}` is not N or A-B");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                if a > b {
                    return Err(format!("block range `{part}` runs backwards"));
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(out)
}

impl ShiftAddKnobs {
    /// The knobs a layer gets when only its bits are chosen (the editor's new cells, the
    /// sensitivity pass's `--default-bits`): block layout, group 128, three APoT terms, 20
    /// rounds, error feedback with act-order.
    pub fn with_bits(bits: usize) -> Self {
        Self {
            bits,
            layout: ScaleLayoutKnob::Block,
            group: 128,
            apot_terms: 3,
            rounds: 20,
            error_feedback: true,
            act_order: true,
        }
    }

    fn validate(&self) -> Result<(), String> {
        if !(2..=8).contains(&self.bits) {
            return Err(format!("shiftadd.bits = {} is outside 2..=8", self.bits));
        }
        if !(1..=3).contains(&self.apot_terms) {
            return Err(format!(
                "shiftadd.apot_terms = {} is outside 1..=3",
                self.apot_terms
            ));
        }
        if self.rounds > 50 {
            return Err(format!("shiftadd.rounds = {} is above 50", self.rounds));
        }
        if self.layout == ScaleLayoutKnob::Block && !self.group.is_multiple_of(8) {
            return Err(format!(
                "shiftadd.group = {} must be a multiple of 8 for the block layout (8 columns per block)",
                self.group
            ));
        }
        Ok(())
    }
}

impl RtnKnobs {
    /// The quantizer's rule for the zero offset.
    pub fn rule(&self) -> crate::quant::rtn::RtnRule {
        crate::quant::rtn::RtnRule::of(self.symmetric, self.float_min)
    }

    /// The llama.cpp type this layer is, as llama.cpp computes it (group 32, int8
    /// activations): `Q4_0`/`Q5_0`/`Q8_0` symmetric, `Q4_1`/`Q5_1` with an f16 minimum.
    pub fn llama_cpp_type(&self) -> Option<&'static str> {
        if self.group != 32 || !self.int8_activations {
            return None;
        }
        match (self.bits, self.symmetric, self.float_min) {
            (4, true, _) => Some("Q4_0"),
            (5, true, _) => Some("Q5_0"),
            (8, true, _) => Some("Q8_0"),
            (4, false, true) => Some("Q4_1"),
            (5, false, true) => Some("Q5_1"),
            _ => None,
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.symmetric && self.float_min {
            return Err("rtn: `symmetric` and `float_min` exclude each other".into());
        }
        if !(2..=8).contains(&self.bits) {
            return Err(format!("rtn.bits = {} is outside 2..=8", self.bits));
        }
        if self.group == 0 {
            return Err("rtn.group must be positive".into());
        }
        Ok(())
    }
}

impl PruneKnobs {
    fn validate(&self) -> Result<(), String> {
        if self.method == PruneMethod::Nm {
            if self.n == 0 || self.n >= self.m || self.m > 64 {
                return Err(format!(
                    "prune n:m = {}:{} must keep 0 < n < m <= 64",
                    self.n, self.m
                ));
            }
        } else if !(0.0..=0.95).contains(&self.ratio) {
            return Err(format!("prune.ratio = {} is outside 0..=0.95", self.ratio));
        }
        Ok(())
    }

    /// The fraction of weights this pruning removes.
    pub fn sparsity(&self) -> f64 {
        match self.method {
            PruneMethod::Nm => 1.0 - self.n as f64 / self.m as f64,
            _ => self.ratio,
        }
    }
}

impl RpsKnobs {
    /// Checks the ratio and refit settings.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.ratio >= 1.0 && self.ratio <= 1024.0) {
            return Err(format!("rps.ratio = {} is outside 1..=1024", self.ratio));
        }
        if self.refit_iters > 1000 {
            return Err(format!(
                "rps.refit_iters = {} is outside 0..=1000",
                self.refit_iters
            ));
        }
        Ok(())
    }
}

impl LayerRule {
    /// The rule's knobs as one layer plan, with invalid combinations rejected.
    pub fn layer_plan(&self) -> Result<LayerPlan, String> {
        let quant = match (&self.shiftadd, &self.rtn, self.f16) {
            (Some(s), None, false) => {
                s.validate()?;
                Some(Quant::ShiftAdd(s.clone()))
            }
            (None, Some(r), false) => {
                r.validate()?;
                Some(Quant::Rtn(r.clone()))
            }
            (None, None, true) => Some(Quant::F16),
            (None, None, false) => None,
            _ => {
                return Err(
                    "sets more than one of `shiftadd`, `rtn` and `f16`: a weight has one stored \
                     form"
                        .into(),
                );
            }
        };
        if let Some(p) = &self.prune {
            p.validate()?;
            // Prune then quantize would not keep the mask: neither quantized form can hold a
            // zero at a pruned position, so the zeros would come back as quantization values.
            match &quant {
                Some(Quant::ShiftAdd(_)) => {
                    return Err(
                        "combines `prune` with `shiftadd`: binary coding writes every \
                                weight as a sum of ±α planes, which has no zero, so the pruned \
                                weights would come back and the LUT kernel cannot skip them"
                            .into(),
                    );
                }
                Some(Quant::Rtn(_)) => {
                    return Err(
                        "combines `prune` with `rtn`: the asymmetric RTN grid does not \
                                hold 0 exactly and the RTN form stores no mask, so the pruned \
                                weights would come back as small values"
                            .into(),
                    );
                }
                Some(Quant::F16) => {
                    return Err(
                        "combines `prune` with `f16`: the sparse forms keep their values in \
                         f32"
                        .into(),
                    );
                }
                None => {}
            }
        }
        if let Some(r) = &self.rps {
            r.validate()?;
            if quant.is_some() || self.prune.is_some() {
                return Err(
                    "combines `rps` with pruning or quantization: RPS replaces the weight \
                     by a hashed shared array, which has no per-weight values to prune or quantize"
                        .into(),
                );
            }
        }
        let plan = LayerPlan {
            prune: self.prune.clone(),
            quant,
            rps: self.rps.clone(),
        };
        if plan == LayerPlan::default() {
            return Err(
                "sets no technique (e.g. `[layers.shiftadd]`, `[layers.prune]`, `[layers.rps]`)"
                    .into(),
            );
        }
        Ok(plan)
    }
}

impl Recipe {
    pub fn from_toml(text: &str) -> Result<Self, RecipeError> {
        toml::from_str(text).map_err(|e| RecipeError::Parse(e.to_string()))
    }

    pub fn to_toml(&self) -> Result<String, RecipeError> {
        toml::to_string_pretty(self).map_err(|e| RecipeError::Parse(format!("writing TOML: {e}")))
    }

    pub fn from_json(text: &str) -> Result<Self, RecipeError> {
        serde_json::from_str(text).map_err(|e| RecipeError::Parse(e.to_string()))
    }

    /// Compact JSON (the store's form). Plain structs with string keys always serialize, so
    /// the fallback is unreachable.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Content hash (blake3 hex of the canonical JSON): equal recipes hash equally however
    /// their TOML was formatted; the `model` note does not count.
    pub fn hash(&self) -> String {
        let canonical = Recipe {
            model: None,
            ..self.clone()
        };
        blake3::hash(canonical.to_json().as_bytes())
            .to_hex()
            .to_string()
    }

    /// Checks every rule and resolves it against `model`'s layers.
    pub fn resolve(&self, model: &Transformer) -> Result<Plan, RecipeError> {
        if let Some(step) = &self.embedding {
            step.validate(model).map_err(|what| RecipeError::Rule {
                index: 0,
                pattern: "[embedding]".into(),
                what,
            })?;
        }
        let names: Vec<(LinearId, String)> =
            model.linear_ids().map(|id| (id, id.to_string())).collect();
        let mut plan = Plan::default();
        let mut winner: BTreeMap<LinearId, (usize, usize)> = BTreeMap::new();
        for (index, rule) in self.layers.iter().enumerate() {
            let err = |what: String| RecipeError::Rule {
                index,
                pattern: rule.pattern.clone(),
                what,
            };
            let technique = rule.layer_plan().map_err(err)?;
            let matcher = Matcher::new(&rule.pattern).map_err(err)?;
            let blocks = rule
                .blocks
                .as_deref()
                .map(parse_blocks)
                .transpose()
                .map_err(err)?;
            if let Some(blocks) = &blocks
                && let Some(b) = blocks.iter().find(|&&b| b >= model.blocks.len())
            {
                return Err(err(format!(
                    "block {b} does not exist (the model has {} blocks)",
                    model.blocks.len()
                )));
            }
            // A block restriction makes a rule more specific than any pattern alone.
            let specificity = matcher.specificity() + if blocks.is_some() { 1000 } else { 0 };
            let mut matched = 0;
            for (id, name) in &names {
                if !matcher.matches(name) || blocks.as_ref().is_some_and(|b| !b.contains(&id.block))
                {
                    continue;
                }
                matched += 1;
                if let Some(&(prev, prev_spec)) = winner.get(id) {
                    let wins = specificity >= prev_spec;
                    plan.notes.push(format!(
                        "{name}: rules {prev} and {index} overlap; rule {} applies ({})",
                        if wins { index } else { prev },
                        if specificity == prev_spec {
                            "equally specific, the later one wins"
                        } else {
                            "the more specific one wins"
                        }
                    ));
                    if !wins {
                        continue;
                    }
                }
                winner.insert(*id, (index, specificity));
                plan.layers.insert(*id, (index, technique.clone()));
            }
            if matched == 0 {
                return Err(err(format!(
                    "matches no layer of this model (layers look like `{}`)",
                    LinearId::new(0, LinearKind::FfnDown)
                )));
            }
        }
        Ok(plan)
    }
}

impl LayerPlan {
    /// A short description (`prune wanda 0.50 → shiftadd 3b g128`, `rps 4.0x`, `dense`): the one
    /// wording of a layer's plan in the CLI's diffs and sensitivity tables and in the app.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(pr) = &self.prune {
            parts.push(format!("prune {:?} {:.2}", pr.method, pr.sparsity()).to_lowercase());
        }
        match &self.quant {
            Some(Quant::ShiftAdd(k)) => parts.push(format!("shiftadd {}b g{}", k.bits, k.group)),
            Some(Quant::Rtn(k)) => parts.push(format!(
                "rtn {}b g{}{}{}",
                k.bits,
                k.group,
                if k.symmetric {
                    " sym"
                } else if k.float_min {
                    " min"
                } else {
                    ""
                },
                if k.int8_activations { " a8" } else { "" }
            )),
            Some(Quant::F16) => parts.push("f16".into()),
            None => {}
        }
        if let Some(r) = &self.rps {
            parts.push(format!("rps {:.1}x", r.ratio));
        }
        if parts.is_empty() {
            "dense".into()
        } else {
            parts.join(" → ")
        }
    }
}

/// One row where two recipes differ: a layer's plan, or (`model-level steps`) their merge and
/// flatten steps.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerDiff {
    pub layer: String,
    pub a: String,
    pub b: String,
}

/// Where recipes `a` and `b` differ, both resolved against `model`: their model-level steps
/// first (when those differ), then every layer whose plan differs, in forward order. What
/// `reparam compare` prints and the app's Compare view shows.
pub fn plan_diff(
    model: &Transformer,
    a: &Recipe,
    b: &Recipe,
) -> Result<Vec<LayerDiff>, RecipeError> {
    let steps = |r: &Recipe| {
        format!(
            "merge {:?} · flatten {:?}",
            r.merge.as_ref().map(|m| (&m.models, m.method, m.alpha)),
            r.flatten.as_ref().map(|f| &f.pairs)
        )
    };
    let mut out = Vec::new();
    if steps(a) != steps(b) {
        out.push(LayerDiff {
            layer: "model-level steps".into(),
            a: steps(a),
            b: steps(b),
        });
    }
    let (pa, pb) = (a.resolve(model)?, b.resolve(model)?);
    let describe = |plan: &Plan, id: &LinearId| {
        plan.layers
            .get(id)
            .map_or_else(|| "dense".to_string(), |(_, p)| p.describe())
    };
    for id in model.linear_ids() {
        let (x, y) = (describe(&pa, &id), describe(&pb, &id));
        if x != y {
            out.push(LayerDiff {
                layer: id.to_string(),
                a: x,
                b: y,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"blk.*.ffn_*", b"blk.12.ffn_down"));
        assert!(!glob_match(b"blk.*.ffn_*", b"blk.12.attn_q"));
        assert!(glob_match(b"blk.?.attn_q", b"blk.3.attn_q"));
        assert!(!glob_match(b"blk.?.attn_q", b"blk.13.attn_q"));
    }

    #[test]
    fn block_ranges() {
        assert_eq!(parse_blocks("1,3-5").unwrap(), vec![1, 3, 4, 5]);
        assert!(parse_blocks("5-3").is_err());
        assert!(parse_blocks("x").is_err());
    }
}
