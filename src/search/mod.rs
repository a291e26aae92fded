//! The explorer's search: measure every linear at every candidate setting once (a table kept
//! in the store), predict any per-layer assignment by adding the measurements up, find the
//! predicted Pareto front (exact knapsack for bytes against KLD, NSGA-II when decode speed is
//! a third objective), and check predictions by running points of the front as real jobs.
//!
//! The predictor: KLD is the sum of the layer-alone KLDs; bytes are exact (the table's bytes
//! of each chosen form plus the bytes no candidate touches); decode seconds per token are the
//! sum of each chosen form's measured product time plus the measured rest of a step.

pub mod knapsack;
pub mod nsga;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::{LinearId, Model, Transformer};
use crate::store::measurements::{load_table, save_part, table_dir};
use crate::sweep::Shard;
use crate::technique::measure::{
    Candidate, DENSE, EMBEDDING_LAYER, FIXED_LAYER, MeasureOptions, Measured, Scorer, depth_key,
    depth_layer, embedding_key, measure_depth, measure_embedding, measure_fixed, measure_layers,
};
use crate::technique::recipe::{
    EmbeddingStep, FlattenMethod, FlattenStep, LayerRule, PruneKnobs, Recipe, RpsKnobs, RtnKnobs,
    ShiftAddKnobs,
};
use crate::technique::{CalibOptions, Progress};

/// One candidate setting in a candidates file: a layer rule's knobs, for the layers its
/// `match`/`blocks` select (every block linear when absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateRule {
    #[serde(rename = "match", default = "all_linears")]
    pub pattern: String,
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
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub f16: bool,
}

fn all_linears() -> String {
    "blk.*.*".into()
}

impl CandidateRule {
    /// The rule for layers `pattern` in `blocks`.
    fn rule(&self, pattern: String, blocks: Option<String>) -> LayerRule {
        LayerRule {
            pattern,
            blocks,
            shiftadd: self.shiftadd.clone(),
            rtn: self.rtn.clone(),
            prune: self.prune.clone(),
            rps: self.rps.clone(),
            f16: self.f16,
        }
    }

    /// The stable key of the setting (its knobs, every default filled in, as compact JSON):
    /// what the measurement table stores, so a layer is measured once per setting however the
    /// file selected it.
    pub fn key(&self) -> String {
        let knobs = CandidateRule {
            pattern: String::new(),
            blocks: None,
            ..self.clone()
        };
        let mut v = serde_json::to_value(knobs).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("match");
        }
        v.to_string()
    }
}

/// What a search may choose from: `reparam measure --candidates FILE`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateFile {
    /// `[embedding]` step bit widths to consider for the token embedding (and tied head),
    /// beside leaving it as it is.
    #[serde(default)]
    pub embedding: Vec<usize>,
    #[serde(default, rename = "candidate")]
    pub candidates: Vec<CandidateRule>,
    /// A depth change to consider at every block: `drop` it, or `flatten` it with the next
    /// block (the merged block then stays as it comes out or takes one of the quantization
    /// candidates that select every linear).
    #[serde(default)]
    pub depth: Option<FlattenMethod>,
}

/// The depth changes a candidates file asks to measure.
#[derive(Debug, Clone)]
pub struct DepthWork {
    pub method: FlattenMethod,
    /// Blocks a change may start at (the pair `[b, b + 1]` must be in the model).
    pub blocks: Vec<usize>,
    /// A flattened pair's settings for its merged block ([`DENSE`] first); empty for `drop`.
    pub merged: Vec<Candidate>,
}

impl DepthWork {
    /// Every `(layer, candidate)` row the changes need.
    fn keys(&self) -> Vec<(usize, String, String)> {
        let merged: Vec<&str> = match self.method {
            FlattenMethod::Drop => vec![DENSE],
            FlattenMethod::Flatten => self.merged.iter().map(|c| c.key.as_str()).collect(),
        };
        self.blocks
            .iter()
            .flat_map(|&b| {
                merged
                    .iter()
                    .map(move |k| (b, depth_layer(b, self.method), depth_key(self.method, k)))
            })
            .collect()
    }
}

impl CandidateFile {
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let f: Self = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(
            !f.candidates.is_empty() || !f.embedding.is_empty() || f.depth.is_some(),
            "the candidates file lists no `[[candidate]]`, no `embedding` bits and no `depth`"
        );
        for &b in &f.embedding {
            anyhow::ensure!((2..=8).contains(&b), "embedding bits {b} outside 2..=8");
        }
        Ok(f)
    }

    /// Every linear's candidates, resolved against `model`: [`DENSE`] first, then each rule
    /// selecting it. A rule with invalid knobs or matching no layer is an error naming it.
    pub fn work(&self, model: &Transformer) -> anyhow::Result<BTreeMap<LinearId, Vec<Candidate>>> {
        let mut out: BTreeMap<LinearId, Vec<Candidate>> = model
            .linear_ids()
            .map(|id| {
                let dense = Candidate {
                    key: DENSE.into(),
                    plan: Default::default(),
                };
                (id, vec![dense])
            })
            .collect();
        for (i, c) in self.candidates.iter().enumerate() {
            let rule = c.rule(c.pattern.clone(), c.blocks.clone());
            let plan = rule
                .layer_plan()
                .map_err(|e| anyhow::anyhow!("candidate {i} (`{}`): {e}", c.pattern))?;
            let recipe = Recipe {
                layers: vec![rule],
                ..Recipe::default()
            };
            let resolved = recipe
                .resolve(model)
                .map_err(|e| anyhow::anyhow!("candidate {i}: {e}"))?;
            let key = c.key();
            for id in resolved.layers.keys() {
                let list = out.entry(*id).or_default();
                if !list.iter().any(|x| x.key == key) {
                    list.push(Candidate {
                        key: key.clone(),
                        plan: plan.clone(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The depth changes to measure on `model` (`None` when the file asks for none).
    pub fn depth_work(&self, model: &Transformer) -> anyhow::Result<Option<DepthWork>> {
        let Some(method) = self.depth else {
            return Ok(None);
        };
        let n = model.blocks.len();
        anyhow::ensure!(
            n >= 2,
            "`depth = \"{method:?}\"` needs a model of at least 2 blocks; this one has {n}"
        );
        let mut merged = Vec::new();
        if method == FlattenMethod::Flatten {
            merged.push(Candidate {
                key: DENSE.into(),
                plan: Default::default(),
            });
            for c in &self.candidates {
                let whole = c.pattern == all_linears() && c.blocks.is_none();
                let plan = c.rule(c.pattern.clone(), None).layer_plan();
                if let Ok(plan) = plan
                    && whole
                    && plan.quant.is_some()
                    && plan.prune.is_none()
                {
                    merged.push(Candidate { key: c.key(), plan });
                }
            }
        }
        Ok(Some(DepthWork {
            method,
            blocks: (0..n - 1).collect(),
            merged,
        }))
    }

    /// The rule of each candidate key.
    fn rules(&self) -> HashMap<String, &CandidateRule> {
        self.candidates.iter().map(|c| (c.key(), c)).collect()
    }
}

/// Everything a measurement row depends on besides the model and the candidate.
#[derive(Debug, Clone, Serialize)]
pub struct MeasureSettings {
    /// Content hash of the text the KLD is measured on.
    pub text: String,
    pub tokens: usize,
    pub ctx: usize,
    /// Content hash of the calibration text.
    pub calib_text: String,
    pub calib: CalibOptions,
    pub seed: u64,
    /// Threads the products are timed on (0: not timed).
    pub threads: usize,
    /// [`crate::store::record::numerics_version`]: the code that computes the rows.
    pub code_version: String,
}

impl MeasureSettings {
    /// The table's directory name.
    pub fn hash(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        blake3::hash(json.as_bytes()).to_hex()[..16].to_string()
    }
}

/// The texts and options of one measurement pass.
pub struct MeasureInputs {
    /// Tokens the KLDs are measured on.
    pub eval_tokens: Vec<u32>,
    /// Tokens a decode step is timed on (more than 16 + the timed steps are used).
    pub timing_tokens: Vec<u32>,
    pub calib_tokens: Vec<u32>,
    pub settings: MeasureSettings,
    pub timing: Option<crate::engine::EngineOptions>,
}

/// What a measurement pass is asked to measure on, as both faces take it from the user.
#[derive(Debug, Clone)]
pub struct MeasureRequest {
    /// Text the KLDs are measured on (`None`: the calibration text, so the evaluation texts
    /// stay unseen by the search).
    pub text: Option<PathBuf>,
    /// Tokens of it scored per measurement, in windows of `ctx`.
    pub tokens: usize,
    pub ctx: usize,
    pub calib_text: Option<PathBuf>,
    pub calib: CalibOptions,
    pub seed: u64,
    /// Threads the products are timed on (`None`: not timed).
    pub threads: Option<usize>,
}

impl Default for MeasureRequest {
    fn default() -> Self {
        Self {
            text: None,
            tokens: 512,
            ctx: 256,
            calib_text: None,
            calib: CalibOptions::default(),
            seed: 0,
            threads: Some(rayon::current_num_threads()),
        }
    }
}

fn text_hash(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex()[..16].to_string()
}

impl MeasureRequest {
    /// The tokens and settings of the pass on `base`.
    pub fn inputs(&self, base: &Model) -> anyhow::Result<MeasureInputs> {
        anyhow::ensure!(
            self.calib.samples > 0 && self.calib.seq_len >= 8,
            "calibration needs at least one window of at least 8 tokens"
        );
        anyhow::ensure!(
            self.tokens >= 2 && self.ctx >= 2,
            "measure at least 2 tokens"
        );
        let calib_text = crate::calib::calibration_text(base, self.calib_text.as_ref())?;
        let eval_text = match &self.text {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?,
            None => calib_text.clone(),
        };
        let timing_tokens = base.tokenizer.encode(&eval_text, true)?;
        anyhow::ensure!(
            timing_tokens.len() >= 64,
            "the measurement text has {} tokens; at least 64 are needed",
            timing_tokens.len()
        );
        let timing = self.threads.map(|threads| crate::engine::EngineOptions {
            threads: threads.max(1),
            ..crate::engine::EngineOptions::default()
        });
        Ok(MeasureInputs {
            eval_tokens: timing_tokens[..self.tokens.min(timing_tokens.len())].to_vec(),
            calib_tokens: base.tokenizer.encode(&calib_text, true)?,
            settings: MeasureSettings {
                text: text_hash(&eval_text),
                tokens: self.tokens,
                ctx: self.ctx,
                calib_text: text_hash(&calib_text),
                calib: self.calib,
                seed: self.seed,
                threads: timing.map_or(0, |t| t.threads),
                code_version: crate::store::record::numerics_version().to_string(),
            },
            timing_tokens,
            timing,
        })
    }
}

/// How a measurement pass went.
#[derive(Debug, Clone, Serialize)]
pub struct MeasureOutcome {
    pub table: PathBuf,
    /// Rows measured by this call, and rows found in the table.
    pub measured: usize,
    pub reused: usize,
    /// Table parts that could not be read (path, reason); left on disk.
    pub skipped: Vec<(PathBuf, String)>,
    #[serde(skip)]
    pub rows: Vec<Measured>,
}

fn short_hash(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex()[..12].to_string()
}

/// Stores `rows` as one table part named by `prefix` and the rows it holds (so parts of a
/// resumed or sharded pass never overwrite each other); the number of rows stored.
fn save_rows(dir: &Path, prefix: &str, rows: &[Measured]) -> anyhow::Result<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    let keys: Vec<String> = rows
        .iter()
        .map(|r| format!("{}|{}", r.layer, r.candidate))
        .collect();
    save_part(
        dir,
        &format!("{prefix}-{}", short_hash(&keys.join("\n"))),
        rows,
    )?;
    Ok(rows.len())
}

/// Measures whatever of `file`'s candidates the table in `store` lacks for `base` (in this
/// shard's blocks; the embedding and the fixed cost in shard 0), storing each block as it is
/// done, and returns the whole table.
pub fn ensure_measured(
    store: &Path,
    base: &Model,
    file: &CandidateFile,
    inputs: &MeasureInputs,
    shard: Option<Shard>,
    progress: &mut Progress<'_>,
) -> anyhow::Result<MeasureOutcome> {
    let dir = table_dir(store, &base.id, &inputs.settings.hash());
    let (rows, _) = load_table(&dir)?;
    let have: std::collections::HashSet<(String, String)> = rows
        .iter()
        .map(|r| (r.layer.clone(), r.candidate.clone()))
        .collect();
    let reused = rows.len();
    let in_shard = |block: usize| shard.is_none_or(|s| block % s.count == s.index);
    let mut work = file.work(&base.transformer)?;
    for (id, list) in &mut work {
        let name = id.to_string();
        list.retain(|c| in_shard(id.block) && !have.contains(&(name.clone(), c.key.clone())));
    }
    work.retain(|_, l| !l.is_empty());
    let tied = base.config().tie_word_embeddings;
    let first_shard = shard.is_none_or(|s| s.index == 0);
    let mut embedding: Vec<usize> = if first_shard && tied {
        file.embedding.clone()
    } else {
        Vec::new()
    };
    embedding.retain(|&b| !have.contains(&(EMBEDDING_LAYER.into(), embedding_key(b))));
    let embedding_dense = first_shard && !have.contains(&(EMBEDDING_LAYER.into(), DENSE.into()));
    let fixed = first_shard && !have.contains(&(FIXED_LAYER.into(), DENSE.into()));
    // Depth changes: the blocks (in this shard) with a row missing.
    let depth = file.depth_work(&base.transformer)?.map(|mut d| {
        let missing: std::collections::BTreeSet<usize> = d
            .keys()
            .into_iter()
            .filter(|(b, layer, key)| in_shard(*b) && !have.contains(&(layer.clone(), key.clone())))
            .map(|(b, _, _)| b)
            .collect();
        d.blocks.retain(|b| missing.contains(b));
        d
    });
    let depth = depth.filter(|d| !d.blocks.is_empty());
    let mut measured = 0;
    if !work.is_empty() || !embedding.is_empty() || embedding_dense || depth.is_some() {
        if !progress("scoring the base model", 0, 1) {
            return Err(crate::technique::cancelled());
        }
        let scorer = Scorer::new(base, &inputs.eval_tokens, inputs.settings.ctx)?;
        let opts = MeasureOptions {
            calib: inputs.settings.calib,
            seed: inputs.settings.seed,
            timing: inputs.timing,
        };
        measure_layers(
            base,
            &scorer,
            &work,
            &inputs.calib_tokens,
            opts,
            &mut |block, rows| {
                measured += save_rows(&dir, &format!("blk{block}"), &rows)?;
                Ok(())
            },
            progress,
        )?;
        if !embedding.is_empty() || embedding_dense {
            progress("measuring the embedding", 0, 1);
            let mut rows = measure_embedding(base, &scorer, &embedding, inputs.timing)?;
            if !embedding_dense {
                rows.retain(|r| r.candidate != DENSE);
            }
            measured += save_rows(&dir, "embedding", &rows)?;
        }
        if let Some(d) = &depth {
            measure_depth(
                base,
                &scorer,
                d.method,
                &d.blocks,
                &d.merged,
                &inputs.calib_tokens,
                opts,
                &mut |block, mut rows| {
                    rows.retain(|r| !have.contains(&(r.layer.clone(), r.candidate.clone())));
                    measured += save_rows(&dir, &format!("depth{block}"), &rows)?;
                    Ok(())
                },
                progress,
            )?;
        }
    }
    if fixed {
        progress("timing a decode step", 0, 1);
        let row = measure_fixed(base, &inputs.timing_tokens, inputs.timing)?;
        save_part(&dir, "fixed", &[row])?;
        measured += 1;
    }
    let (rows, skipped) = load_table(&dir)?;
    Ok(MeasureOutcome {
        table: dir,
        measured,
        reused,
        skipped,
        rows,
    })
}

/// One option of one gene.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The candidate key ([`DENSE`], an embedding key, a layer candidate's, or a depth key).
    pub key: String,
    pub kld: f64,
    /// Bytes the option adds to the model (a depth change: what is left of its blocks less
    /// the norms it removes, so it can be negative).
    pub bytes: i64,
    pub seconds: f64,
    /// Blocks a depth change replaces from its gene's block on (0 for every other option).
    pub span: usize,
}

/// What a gene chooses for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Linear(LinearId),
    Embedding,
    /// A depth change starting at this block; option 0 keeps the block.
    Depth(usize),
}

/// One thing the search chooses for: a linear, the embedding, or a block's depth. Linear and
/// embedding options are sorted by bytes, largest first (so neighbouring options are small
/// steps); a depth gene's option 0 leaves the block as it is.
#[derive(Debug, Clone)]
pub struct Gene {
    pub layer: String,
    pub role: Role,
    pub choices: Vec<Choice>,
}

/// What a per-layer assignment is predicted to give.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prediction {
    pub bytes: u64,
    pub kld_mean: f64,
    /// `NaN` when the table has no timings.
    pub decode_tok_s: f64,
}

/// The option key of a depth gene's "leave the block as it is".
const KEEP: &str = "keep";

/// Sums the measurement table over an assignment. Genes are every linear in forward order,
/// then the embedding, then (when the candidates ask for depth) one gene per block a change
/// may start at. A depth change replaces the genes of the linears of the blocks it covers;
/// where two would overlap, the earlier block's is taken and the later one's is ignored.
#[derive(Debug, Clone)]
pub struct Predictor {
    pub genes: Vec<Gene>,
    depth: Option<FlattenMethod>,
    fixed_bytes: u64,
    fixed_seconds: f64,
}

/// The depth changes an assignment takes: (block, option of its gene, blocks covered).
type DepthChanges = Vec<(usize, usize, usize)>;

impl Predictor {
    /// A predictor for `file`'s candidates on `model` from the table's `rows`; a pair the
    /// table lacks is an error saying to measure first.
    pub fn new(
        rows: &[Measured],
        file: &CandidateFile,
        model: &Transformer,
    ) -> anyhow::Result<Self> {
        let work = file.work(model)?;
        let embedding_bits: &[usize] = if model.config.tie_word_embeddings {
            &file.embedding
        } else {
            &[]
        };
        let index: HashMap<(&str, &str), &Measured> = rows
            .iter()
            .map(|r| ((r.layer.as_str(), r.candidate.as_str()), r))
            .collect();
        let find = |layer: &str, key: &str| {
            index.get(&(layer, key)).copied().ok_or_else(|| {
                anyhow::anyhow!(
                    "the measurement table has no row for {layer} at {key}: run `reparam measure` \
                     with the same candidates and settings first"
                )
            })
        };
        let choice = |r: &Measured| Choice {
            key: r.candidate.clone(),
            kld: r.kld,
            bytes: r.bytes as i64,
            seconds: r.seconds,
            span: 0,
        };
        let mut genes = Vec::new();
        for (id, candidates) in &work {
            let layer = id.to_string();
            let mut choices = candidates
                .iter()
                .map(|c| find(&layer, &c.key).map(choice))
                .collect::<anyhow::Result<Vec<_>>>()?;
            choices.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.kld.total_cmp(&b.kld)));
            genes.push(Gene {
                layer,
                role: Role::Linear(*id),
                choices,
            });
        }
        let mut embedding = vec![choice(find(EMBEDDING_LAYER, DENSE)?)];
        for &b in embedding_bits {
            embedding.push(choice(find(EMBEDDING_LAYER, &embedding_key(b))?));
        }
        embedding.sort_by_key(|c| std::cmp::Reverse(c.bytes));
        genes.push(Gene {
            layer: EMBEDDING_LAYER.into(),
            role: Role::Embedding,
            choices: embedding,
        });
        let fixed = index.get(&(FIXED_LAYER, DENSE));
        let fixed_bytes = match fixed {
            Some(r) => r.bytes as u64,
            None => anyhow::bail!(
                "the measurement table has no `{FIXED_LAYER}` row: run `reparam measure` first"
            ),
        };
        let fixed_seconds = fixed.map_or(f64::NAN, |r| r.seconds);
        let depth = file.depth_work(model)?;
        if let Some(d) = &depth {
            // Either change leaves one block fewer, which takes its share of the step's
            // non-product time with it.
            let per_block = fixed_seconds / model.blocks.len() as f64;
            let span = match d.method {
                FlattenMethod::Drop => 1,
                FlattenMethod::Flatten => 2,
            };
            let keys = d.keys();
            for &b in &d.blocks {
                let mut choices = vec![Choice {
                    key: KEEP.into(),
                    kld: 0.0,
                    bytes: 0,
                    seconds: 0.0,
                    span: 0,
                }];
                let mut options = keys
                    .iter()
                    .filter(|(k, _, _)| *k == b)
                    .map(|(_, layer, key)| {
                        find(layer, key).map(|r| Choice {
                            bytes: r.bytes as i64 - r.base_bytes as i64,
                            seconds: r.seconds - per_block,
                            span,
                            ..choice(r)
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                options.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.kld.total_cmp(&b.kld)));
                choices.extend(options);
                genes.push(Gene {
                    layer: depth_layer(b, d.method),
                    role: Role::Depth(b),
                    choices,
                });
            }
        }
        Ok(Self {
            genes,
            depth: depth.map(|d| d.method),
            fixed_bytes,
            fixed_seconds,
        })
    }

    /// Options per gene.
    pub fn options(&self) -> Vec<usize> {
        self.genes.iter().map(|g| g.choices.len()).collect()
    }

    /// The depth changes `genes` take, by block: a change is taken unless an earlier one
    /// already covers its block.
    fn depth_changes(&self, genes: &[usize]) -> DepthChanges {
        let mut out: DepthChanges = Vec::new();
        for (g, &j) in self.genes.iter().zip(genes) {
            if let Role::Depth(b) = g.role
                && j > 0
                && out.last().is_none_or(|&(a, _, span)| a + span <= b)
            {
                out.push((b, j, g.choices[j].span));
            }
        }
        out
    }

    /// Whether a gene counts under `changes`: a linear not in a replaced block, the
    /// embedding, or a taken depth change.
    fn counts(g: &Gene, j: usize, changes: &DepthChanges) -> bool {
        match g.role {
            Role::Linear(id) => !changes
                .iter()
                .any(|&(b, _, span)| (b..b + span).contains(&id.block)),
            Role::Embedding => true,
            Role::Depth(b) => changes.iter().any(|&(a, k, _)| a == b && k == j),
        }
    }

    /// The prediction of an assignment (an option index per gene).
    pub fn predict(&self, genes: &[usize]) -> Prediction {
        let changes = self.depth_changes(genes);
        let (mut bytes, mut kld, mut seconds) = (self.fixed_bytes as i64, 0.0, self.fixed_seconds);
        for (g, &j) in self.genes.iter().zip(genes) {
            if !Self::counts(g, j, &changes) {
                continue;
            }
            let c = &g.choices[j];
            bytes += c.bytes;
            kld += c.kld;
            seconds += c.seconds;
        }
        Prediction {
            bytes: bytes.max(0) as u64,
            kld_mean: kld,
            decode_tok_s: 1.0 / seconds,
        }
    }

    /// The merged block's candidate key of a `flatten …` depth option ([`DENSE`]: as it is).
    fn merged_key(key: &str) -> &str {
        key.strip_prefix("flatten ").unwrap_or(DENSE)
    }

    /// One line: how many layers each setting got and the depth changes (`120× shiftadd 3b
    /// g64, 90× dense, embedding 8b, drop 3, 7`).
    pub fn summary(&self, genes: &[usize], file: &CandidateFile) -> String {
        let rules = file.rules();
        let describe = |key: &str| {
            rules
                .get(key)
                .and_then(|r| r.rule(String::new(), None).layer_plan().ok())
                .map_or_else(|| key.to_string(), |p| p.describe())
        };
        let changes = self.depth_changes(genes);
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut embedding = None;
        let mut depth = Vec::new();
        for (g, &j) in self.genes.iter().zip(genes) {
            if !Self::counts(g, j, &changes) {
                continue;
            }
            let key = &g.choices[j].key;
            match g.role {
                Role::Embedding => embedding = (key != DENSE).then(|| key.clone()),
                Role::Linear(_) => *counts.entry(describe(key)).or_default() += 1,
                Role::Depth(b) => depth.push(match self.depth {
                    Some(FlattenMethod::Flatten) => match Self::merged_key(key) {
                        DENSE => format!("flatten {b}-{}", b + 1),
                        k => format!("flatten {b}-{} ({})", b + 1, describe(k)),
                    },
                    _ => format!("drop {b}"),
                }),
            }
        }
        let mut parts: Vec<String> = counts
            .into_iter()
            .map(|(k, n)| format!("{n}× {k}"))
            .collect();
        parts.extend(embedding);
        parts.extend(depth);
        parts.join(", ")
    }

    /// The recipe of an assignment: the depth changes as a `[flatten]` step, then per
    /// candidate and layer kind one rule naming its blocks (numbered as after the depth
    /// step, since layer rules apply to the model it leaves); the embedding step when one was
    /// chosen.
    pub fn recipe(&self, genes: &[usize], file: &CandidateFile, seed: u64) -> Recipe {
        let rules = file.rules();
        let changes = self.depth_changes(genes);
        // Blocks removed before block `b` (each change leaves one block when flattening).
        let left = usize::from(self.depth == Some(FlattenMethod::Flatten));
        let renumber = |b: usize| {
            b - changes
                .iter()
                .filter(|&&(a, _, span)| a + span <= b)
                .map(|&(_, _, span)| span - left)
                .sum::<usize>()
        };
        let mut groups: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        let mut embedding = None;
        for (g, &j) in self.genes.iter().zip(genes) {
            let key = &g.choices[j].key;
            if !Self::counts(g, j, &changes) || key == DENSE {
                continue;
            }
            match g.role {
                Role::Embedding => {
                    embedding = file
                        .embedding
                        .iter()
                        .find(|&&b| embedding_key(b) == *key)
                        .map(|&bits| EmbeddingStep {
                            bits,
                            group: 0,
                            symmetric: false,
                            float_min: false,
                            int8_activations: false,
                        });
                }
                Role::Linear(id) => groups
                    .entry((key.clone(), id.kind.gguf_name().to_string()))
                    .or_default()
                    .push(renumber(id.block)),
                Role::Depth(b) => {
                    let merged = Self::merged_key(key);
                    if self.depth == Some(FlattenMethod::Flatten) && merged != DENSE {
                        for kind in crate::model::LinearKind::ALL {
                            groups
                                .entry((merged.to_string(), kind.gguf_name().to_string()))
                                .or_default()
                                .push(renumber(b));
                        }
                    }
                }
            }
        }
        let layers = groups
            .into_iter()
            .filter_map(|((key, kind), mut blocks)| {
                let rule = rules.get(&key)?;
                blocks.sort_unstable();
                Some(rule.rule(format!("blk.*.{kind}"), Some(block_list(&blocks))))
            })
            .collect();
        let flatten = match (self.depth, changes.is_empty()) {
            (Some(method), false) => Some(FlattenStep::new(
                changes.iter().map(|&(b, _, _)| [b, b + 1]).collect(),
                None,
                method,
            )),
            _ => None,
        };
        Recipe {
            seed,
            embedding,
            flatten,
            layers,
            ..Recipe::default()
        }
    }
}

/// `1,3,5-7` for blocks `[1, 3, 5, 6, 7]`.
fn block_list(blocks: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < blocks.len() {
        let mut j = i;
        while j + 1 < blocks.len() && blocks[j + 1] == blocks[j] + 1 {
            j += 1;
        }
        parts.push(if j == i {
            blocks[i].to_string()
        } else {
            format!("{}-{}", blocks[i], blocks[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// What the search optimises and within which limits.
#[derive(Debug, Clone, Default)]
pub struct Goal {
    /// Also maximise predicted decode speed (three objectives: NSGA-II).
    pub speed: bool,
    pub max_bytes: Option<u64>,
    pub max_kld: Option<f64>,
    pub min_tok_s: Option<f64>,
    pub nsga: nsga::NsgaOptions,
}

/// One point of the predicted front.
#[derive(Debug, Clone)]
pub struct FrontPoint {
    pub genes: Vec<usize>,
    pub predicted: Prediction,
}

/// Points of the exact bytes-against-KLD front at `steps` budgets between the smallest
/// possible model and `max_bytes` (or the largest). Linears and the embedding are the
/// knapsack's groups; a depth option is a shortcut over the linears of the blocks it covers.
fn knapsack_front(
    p: &Predictor,
    max_bytes: u64,
    max_kld: Option<f64>,
    steps: usize,
) -> Vec<Vec<usize>> {
    let groups: Vec<Vec<knapsack::Item>> = p
        .genes
        .iter()
        .take_while(|g| !matches!(g.role, Role::Depth(_)))
        .map(|g| {
            g.choices
                .iter()
                .map(|c| knapsack::Item {
                    cost: c.bytes.max(0) as u64,
                    value: c.kld,
                })
                .collect()
        })
        .collect();
    // Each block's linears are consecutive groups (`work` is in forward order).
    let mut range: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    for (i, g) in p.genes.iter().enumerate() {
        if let Role::Linear(id) = g.role {
            let r = range.entry(id.block).or_insert((i, i));
            r.1 = i + 1;
        }
    }
    let mut shortcuts = Vec::new();
    let mut taken_by = Vec::new();
    for (i, g) in p.genes.iter().enumerate() {
        let Role::Depth(b) = g.role else { continue };
        for (j, c) in g.choices.iter().enumerate().skip(1) {
            if let (Some(from), Some(to)) = (range.get(&b), range.get(&(b + c.span - 1))) {
                shortcuts.push(knapsack::Shortcut {
                    from: from.0,
                    to: to.1,
                    cost: c.bytes,
                    value: c.kld,
                });
                taken_by.push((i, j));
            }
        }
    }
    let budget = max_bytes.saturating_sub(p.fixed_bytes);
    let Some(table) = knapsack::Table::build(&groups, &shortcuts, budget) else {
        return Vec::new();
    };
    let genes_of = |sol: knapsack::Solution| {
        let mut genes = vec![0; p.genes.len()];
        for (g, o) in sol.options.iter().enumerate() {
            genes[g] = o.unwrap_or(0);
        }
        for s in sol.shortcuts {
            let (i, j) = taken_by[s];
            genes[i] = j;
        }
        genes
    };
    let cap = table.capacity();
    let mut out: Vec<Vec<usize>> = (0..=steps)
        .filter_map(|s| table.solution(cap * s / steps.max(1)))
        .map(genes_of)
        .collect();
    // The smallest model within a KLD budget, exactly (not only the nearest sampled budget).
    if let Some(c) = max_kld.and_then(|k| table.cheapest_within(k))
        && let Some(sol) = table.solution(c)
    {
        out.push(genes_of(sol));
    }
    out.dedup();
    out
}

/// The predicted front under `goal`, sorted by bytes. Two objectives (bytes, KLD) are solved
/// exactly by the knapsack at many budgets; with speed, NSGA-II starts from those solutions.
pub fn predicted_front(p: &Predictor, goal: &Goal) -> Vec<FrontPoint> {
    let all_dense: u64 = p.predict(&vec![0; p.genes.len()]).bytes;
    let max_bytes = goal.max_bytes.unwrap_or(all_dense);
    let exact = knapsack_front(p, max_bytes, goal.max_kld, 200);
    let candidates: Vec<Vec<usize>> = if goal.speed {
        let evaluate = |g: &[usize]| {
            let pr = p.predict(g);
            let over = goal.max_bytes.is_some_and(|m| pr.bytes > m)
                || goal.max_kld.is_some_and(|m| pr.kld_mean > m)
                || goal
                    .min_tok_s
                    .is_some_and(|m| pr.decode_tok_s.is_nan() || pr.decode_tok_s < m);
            if over {
                vec![f64::INFINITY; 3]
            } else {
                vec![pr.bytes as f64, pr.kld_mean, -pr.decode_tok_s]
            }
        };
        nsga::nsga2(&p.options(), &evaluate, exact, goal.nsga)
            .into_iter()
            .map(|i| i.genes)
            .collect()
    } else {
        exact
    };
    let mut points: Vec<FrontPoint> = candidates
        .into_iter()
        .map(|genes| FrontPoint {
            predicted: p.predict(&genes),
            genes,
        })
        .filter(|f| {
            goal.max_bytes.is_none_or(|m| f.predicted.bytes <= m)
                && goal.max_kld.is_none_or(|m| f.predicted.kld_mean <= m)
                && goal.min_tok_s.is_none_or(|m| f.predicted.decode_tok_s >= m)
        })
        .collect();
    // Keep only non-dominated points.
    let objectives = |f: &FrontPoint| {
        let mut v = vec![f.predicted.bytes as f64, f.predicted.kld_mean];
        if goal.speed {
            v.push(-f.predicted.decode_tok_s);
        }
        v
    };
    let all: Vec<Vec<f64>> = points.iter().map(objectives).collect();
    let keep: Vec<bool> = all
        .iter()
        .map(|a| {
            !all.iter()
                .any(|b| crate::store::pareto::dominates_min(b, a))
        })
        .collect();
    let mut k = keep.into_iter();
    points.retain(|_| k.next().unwrap_or(false));
    points.sort_by_key(|a| a.predicted.bytes);
    points.dedup_by(|a, b| a.genes == b.genes);
    points
}

/// A search's result: the table it used, the predictor, and the predicted front with each
/// point's recipe.
pub struct SearchOutcome {
    pub table: MeasureOutcome,
    pub predictor: Predictor,
    pub front: Vec<FrontPoint>,
    pub recipes: Vec<Recipe>,
    /// [`Predictor::summary`] of each point.
    pub summaries: Vec<String>,
}

/// Measures what the table lacks, then predicts the front under `goal`.
pub fn search_model(
    store: &Path,
    base: &Model,
    file: &CandidateFile,
    request: &MeasureRequest,
    goal: &Goal,
    progress: &mut Progress<'_>,
) -> anyhow::Result<SearchOutcome> {
    anyhow::ensure!(
        !goal.speed || request.threads.is_some(),
        "decode speed needs the products timed"
    );
    let inputs = request.inputs(base)?;
    let table = ensure_measured(store, base, file, &inputs, None, progress)?;
    let predictor = Predictor::new(&table.rows, file, &base.transformer)?;
    let front = predicted_front(&predictor, goal);
    anyhow::ensure!(
        !front.is_empty(),
        "no assignment of the candidates meets the budget"
    );
    let recipes = front
        .iter()
        .map(|f| predictor.recipe(&f.genes, file, request.seed))
        .collect();
    let summaries = front
        .iter()
        .map(|f| predictor.summary(&f.genes, file))
        .collect();
    Ok(SearchOutcome {
        table,
        predictor,
        front,
        recipes,
        summaries,
    })
}

/// The candidates file the app searches when none is given: every family.
pub const DEFAULT_CANDIDATES: &str = include_str!("../../experiments/candidates/all-families.toml");

/// Indices of `k` points spread evenly along a front of `len` sorted by size (both ends
/// included; one point: the largest, which has the least KLD within the budget).
pub fn spread(len: usize, k: usize) -> Vec<usize> {
    if k == 0 || len == 0 {
        return Vec::new();
    }
    if k >= len {
        return (0..len).collect();
    }
    if k == 1 {
        // The point with the least KLD within the budget.
        return vec![len - 1];
    }
    let mut idx: Vec<usize> = (0..k)
        .map(|i| (i * (len - 1) + (k - 1) / 2) / (k - 1))
        .collect();
    idx.dedup();
    idx
}

/// Geometric mean of measured / predicted over the pairs where both are positive: how far
/// the predictions are from the measurements, as one factor (`NaN` without such a pair).
pub fn measured_ratio(predicted: &[f64], measured: &[f64]) -> f64 {
    let logs: Vec<f64> = predicted
        .iter()
        .zip(measured)
        .filter(|(p, m)| **p > 0.0 && **m > 0.0)
        .map(|(p, m)| (m / p).ln())
        .collect();
    if logs.is_empty() {
        return f64::NAN;
    }
    (logs.iter().sum::<f64>() / logs.len() as f64).exp()
}

/// Spearman rank correlation (ties get their mean rank); `NaN` under 3 pairs.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    fn ranks(v: &[f64]) -> Vec<f64> {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < order.len() {
            let mut j = i;
            while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
                j += 1;
            }
            let mean = (i + j) as f64 / 2.0;
            for &o in &order[i..=j] {
                r[o] = mean;
            }
            i = j + 1;
        }
        r
    }
    if a.len() != b.len() || a.len() < 3 {
        return f64::NAN;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let mean = (a.len() - 1) as f64 / 2.0;
    let (mut num, mut da, mut db) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        num += (x - mean) * (y - mean);
        da += (x - mean).powi(2);
        db += (y - mean).powi(2);
    }
    num / (da * db).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_lists_compress_runs() {
        assert_eq!(block_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(block_list(&[3]), "3");
    }

    #[test]
    fn measured_ratio_is_the_geometric_mean() {
        let r = measured_ratio(&[1.0, 2.0, 0.0], &[2.0, 8.0, 5.0]);
        assert!((r - 8f64.sqrt()).abs() < 1e-12);
        assert!(measured_ratio(&[0.0], &[1.0]).is_nan());
    }

    #[test]
    fn spread_takes_both_ends_and_even_steps() {
        assert_eq!(spread(10, 4), vec![0, 3, 6, 9]);
        assert_eq!(spread(3, 5), vec![0, 1, 2]);
        assert_eq!(spread(7, 1), vec![6]);
        assert!(spread(0, 3).is_empty());
    }

    #[test]
    fn spearman_of_monotone_and_reversed() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((spearman(&a, &[10.0, 20.0, 25.0, 100.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert!(spearman(&a[..2], &a[..2]).is_nan());
    }

    #[test]
    fn candidate_keys_ignore_the_selection_and_fill_defaults() {
        let a: CandidateFile = toml::from_str(
            "[[candidate]]\nshiftadd = { bits = 3 }\n[[candidate]]\nmatch = \"blk.*.ffn_*\"\nshiftadd = { bits = 3, group = 128 }",
        )
        .unwrap();
        assert_eq!(a.candidates[0].key(), a.candidates[1].key());
        assert!(a.candidates[0].key().contains("\"bits\":3"));
    }
}
