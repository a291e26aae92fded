//! Sweeps: a search space (TOML) of knob values per layer rule, expanded into recipes (the full
//! grid or seeded random samples), split into shards for cluster schedulers, and run through
//! the job runner into a store, skipping run keys already stored (so a killed sweep resumes).
//!
//! A space file:
//! ```toml
//! mode = "grid"          # or "random" with `samples = N` and `seed = S`
//! [eval]                 # optional; CLI flags override
//! suite = "held-out"     # what runs are scored on (default: the model's default)
//! chunks = 4
//! task_prompts = 20
//! calib_samples = 8
//! [[rules]]
//! match = "blk.*.ffn_*"
//! [rules.rtn]            # each knob: one value or a list of values
//! bits = [2, 3, 4]
//! [rules.shiftadd]       # a rule with several families: each point uses one of them
//! bits = [2, 3]
//! rounds = 5
//! ```
//! A point picks, for every rule, one family and one value per knob; the rule is then parsed
//! as a normal recipe rule, so knob names and ranges are checked as in any recipe.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::run::EvalSettings;
use crate::technique::recipe::{FlattenStep, LayerRule, MergeStep, Recipe};

/// Why a search space is invalid.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error("cannot parse search space: {0}")]
    Parse(String),
    #[error("rule {index} (`{pattern}`): {what}")]
    Rule {
        index: usize,
        pattern: String,
        what: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The families a space rule may list.
const FAMILIES: [&str; 4] = ["shiftadd", "rtn", "prune", "rps"];

/// Optional evaluation settings inside a space file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceEval {
    /// Evaluation suite (`held-out` or a directory of domain texts); default: the model's.
    pub suite: Option<String>,
    pub ctx: Option<usize>,
    pub chunks: Option<usize>,
    pub task_prompts: Option<usize>,
    pub calib_samples: Option<usize>,
    pub calib_len: Option<usize>,
}

impl SpaceEval {
    /// Applies these settings over `base`.
    pub fn apply(&self, mut base: EvalSettings) -> EvalSettings {
        if let Some(s) = &self.suite {
            base.suite = Some(s.clone());
            base.text = None;
        }
        base.ctx = self.ctx.or(base.ctx);
        base.chunks = self.chunks.or(base.chunks);
        if let Some(p) = self.task_prompts {
            base.task_prompts = p;
        }
        if let Some(s) = self.calib_samples {
            base.calib.samples = s;
        }
        if let Some(l) = self.calib_len {
            base.calib.seq_len = l;
        }
        base
    }
}

/// One rule of the space: a pattern and, per family, knob values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceRule {
    #[serde(rename = "match")]
    pub pattern: String,
    #[serde(default)]
    pub blocks: Option<String>,
    #[serde(default)]
    pub shiftadd: Option<toml::Table>,
    #[serde(default)]
    pub rtn: Option<toml::Table>,
    #[serde(default)]
    pub prune: Option<toml::Table>,
    #[serde(default)]
    pub rps: Option<toml::Table>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpaceMode {
    #[default]
    Grid,
    Random,
}

/// A search space.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSpace {
    /// The model it was written for (informational; the CLI's MODEL is used).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub mode: SpaceMode,
    /// Points drawn in `random` mode.
    #[serde(default)]
    pub samples: Option<usize>,
    /// Seed of the random draw and of every recipe.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub eval: SpaceEval,
    /// Fixed model-level steps every point shares.
    #[serde(default)]
    pub merge: Option<MergeStep>,
    #[serde(default)]
    pub flatten: Option<FlattenStep>,
    pub rules: Vec<SpaceRule>,
}

/// Cartesian product of knob value lists: each knob is one value or an array of values.
fn knob_product(table: &toml::Table) -> Vec<toml::Table> {
    let mut out = vec![toml::Table::new()];
    for (key, value) in table {
        let values: Vec<toml::Value> = match value {
            toml::Value::Array(a) => a.clone(),
            v => vec![v.clone()],
        };
        let mut next = Vec::with_capacity(out.len() * values.len());
        for partial in &out {
            for v in &values {
                let mut t = partial.clone();
                t.insert(key.clone(), v.clone());
                next.push(t);
            }
        }
        out = next;
    }
    out
}

impl SpaceRule {
    /// Every concrete rule this space rule allows, validated as recipe rules.
    fn choices(&self, index: usize) -> Result<Vec<LayerRule>, SpaceError> {
        let err = |what: String| SpaceError::Rule {
            index,
            pattern: self.pattern.clone(),
            what,
        };
        let mut out = Vec::new();
        for (family, table) in
            FAMILIES
                .iter()
                .zip([&self.shiftadd, &self.rtn, &self.prune, &self.rps])
        {
            let Some(table) = table else { continue };
            for knobs in knob_product(table) {
                let mut rule = toml::Table::new();
                rule.insert("match".into(), self.pattern.clone().into());
                if let Some(b) = &self.blocks {
                    rule.insert("blocks".into(), b.clone().into());
                }
                rule.insert((*family).into(), toml::Value::Table(knobs));
                let parsed: LayerRule = toml::Value::Table(rule)
                    .try_into()
                    .map_err(|e: toml::de::Error| err(format!("{family}: {e}")))?;
                parsed.layer_plan().map_err(err)?;
                out.push(parsed);
            }
        }
        if out.is_empty() {
            return Err(err(
                "lists no technique (`[rules.rtn]`, `[rules.shiftadd]`, …)".into(),
            ));
        }
        Ok(out)
    }
}

impl SearchSpace {
    pub fn from_toml(text: &str) -> Result<Self, SpaceError> {
        let space: SearchSpace =
            toml::from_str(text).map_err(|e| SpaceError::Parse(e.to_string()))?;
        if space.rules.is_empty() {
            return Err(SpaceError::Invalid("the space has no `[[rules]]`".into()));
        }
        if space.mode == SpaceMode::Random && space.samples.unwrap_or(0) == 0 {
            return Err(SpaceError::Invalid(
                "`mode = \"random\"` needs `samples = N` (N ≥ 1)".into(),
            ));
        }
        if let Some(n) = space.samples.filter(|&n| n > MAX_POINTS) {
            return Err(SpaceError::Invalid(format!(
                "`samples = {n}` is more points than a sweep holds (at most {MAX_POINTS}); \
                 split the space, or sample fewer"
            )));
        }
        Ok(space)
    }

    /// Every point of the space, in a fixed order (the same in every process, which is what
    /// makes sharding work).
    pub fn points(&self) -> Result<Vec<Recipe>, SpaceError> {
        let choices: Vec<Vec<LayerRule>> = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| r.choices(i))
            .collect::<Result<_, _>>()?;
        let total = choices
            .iter()
            .try_fold(1usize, |acc, c| acc.checked_mul(c.len()))
            .unwrap_or(usize::MAX);
        let recipe = |pick: &[usize]| Recipe {
            model: self.model.clone(),
            seed: self.seed,
            merge: self.merge.clone(),
            flatten: self.flatten.clone(),
            embedding: None,
            layers: pick
                .iter()
                .zip(&choices)
                .map(|(&k, c)| c[k].clone())
                .collect(),
        };
        match self.mode {
            SpaceMode::Grid => {
                if total > MAX_POINTS {
                    return Err(SpaceError::Invalid(format!(
                        "the grid has {total} points; use `mode = \"random\"` with `samples`"
                    )));
                }
                let mut out = Vec::with_capacity(total);
                for mut n in 0..total {
                    let mut pick = vec![0; choices.len()];
                    for (p, c) in pick.iter_mut().zip(&choices).rev() {
                        *p = n % c.len();
                        n /= c.len();
                    }
                    out.push(recipe(&pick));
                }
                Ok(out)
            }
            SpaceMode::Random => {
                let want = self.samples.unwrap_or(0).min(total).min(MAX_POINTS);
                let mut rng = crate::rng::Rng::new(self.seed ^ 0x5eed_5eed);
                let mut seen = BTreeSet::new();
                let mut out = Vec::new();
                // Distinct points; give up on duplicates after many tries (tiny spaces).
                let mut tries = 0;
                while out.len() < want && tries < want.saturating_mul(100).saturating_add(1000) {
                    tries += 1;
                    let pick: Vec<usize> = choices.iter().map(|c| rng.below(c.len())).collect();
                    if seen.insert(pick.clone()) {
                        out.push(recipe(&pick));
                    }
                }
                Ok(out)
            }
        }
    }
}

/// The most points one sweep enumerates (grid or random): beyond it the points alone would
/// take gigabytes, and the store millions of files.
pub const MAX_POINTS: usize = 1_000_000;

/// `I/N`: this process runs points `I, I + N, I + 2N, …` (I from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("shard `{s}` is not I/N with 0 ≤ I < N");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// The points of this shard.
    pub fn select<T>(&self, points: Vec<T>) -> Vec<T> {
        points
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % self.count == self.index)
            .map(|(_, p)| p)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPACE: &str = r#"
        [[rules]]
        match = "blk.*.ffn_*"
        [rules.rtn]
        bits = [2, 3, 4]
        group = [32, 64]
        [rules.shiftadd]
        bits = 2
        [[rules]]
        match = "blk.*.attn_*"
        [rules.rtn]
        bits = [4, 8]
    "#;

    #[test]
    fn grid_is_the_product() {
        let s = SearchSpace::from_toml(SPACE).unwrap();
        let pts = s.points().unwrap();
        assert_eq!(pts.len(), (3 * 2 + 1) * 2);
        let hashes: BTreeSet<String> = pts.iter().map(Recipe::hash).collect();
        assert_eq!(hashes.len(), pts.len(), "points are distinct");
    }

    #[test]
    fn random_is_seeded_and_distinct() {
        let text = format!("mode = \"random\"\nsamples = 5\nseed = 3\n{SPACE}");
        let s = SearchSpace::from_toml(&text).unwrap();
        let a: Vec<String> = s.points().unwrap().iter().map(Recipe::hash).collect();
        let b: Vec<String> = s.points().unwrap().iter().map(Recipe::hash).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 5);
        let set: BTreeSet<_> = a.iter().collect();
        assert_eq!(set.len(), 5);
        // A space names the suite its runs are scored on.
        let with_suite = format!("[eval]\nsuite = \"held-out\"\n{SPACE}");
        let e = SearchSpace::from_toml(&with_suite)
            .unwrap()
            .eval
            .apply(EvalSettings::default());
        assert_eq!(e.suite.as_deref(), Some("held-out"));
        // Absurd sample counts are refused when the space is read, before any allocation.
        for n in ["100000000", "18446744073709551615"] {
            let text = format!("mode = \"random\"\nsamples = {n}\nseed = 3\n{SPACE}");
            let err = SearchSpace::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains("at most 1000000"), "{err}");
        }
    }

    #[test]
    fn bad_knobs_are_errors() {
        let bad = SPACE.replace("bits = [4, 8]", "bits = [4, 9]");
        let err = SearchSpace::from_toml(&bad).unwrap().points().unwrap_err();
        assert!(err.to_string().contains("rule 1"), "{err}");
        let unknown = SPACE.replace("group = [32, 64]", "grup = 3");
        assert!(SearchSpace::from_toml(&unknown).unwrap().points().is_err());
    }

    #[test]
    fn shards_partition() {
        let pts: Vec<usize> = (0..10).collect();
        let mut all: Vec<usize> = (0..3)
            .flat_map(|i| Shard { index: i, count: 3 }.select(pts.clone()))
            .collect();
        all.sort_unstable();
        assert_eq!(all, pts);
        assert!("3/3".parse::<Shard>().is_err());
        assert!("1/2".parse::<Shard>().is_ok());
    }
}
