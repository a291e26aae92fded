//! The recipe editor's model: a [`Recipe`] plus undo/redo, and its analysis against the loaded
//! model (the effective plan per linear, errors per rule and per cell, a bytes estimate).
//!
//! The grid and the layer map are views of the resolved recipe. Editing a cell (or every
//! selected cell) starts from each layer's current effective plan; a selection that is a
//! pattern (all layers, a block range, one kind or group of kinds) is written as pattern rules,
//! anything else as an exact-name rule per linear, so the most specific rule wins, as in
//! [`Recipe::resolve`]. No egui here.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{LinearId, LinearKind, Transformer};
use crate::technique::recipe::{
    FlattenStep, LayerPlan, LayerRule, MergeStep, PruneKnobs, Quant, Recipe, RpsKnobs,
    ShiftAddKnobs,
};

use super::model_info::{LinearInfo, ModelSummary};

/// Undo history depth.
const UNDO_LIMIT: usize = 200;

/// One edit of the per-linear families.
#[derive(Debug, Clone, PartialEq)]
pub enum CellEdit {
    /// Quantization form (`None` = keep the weights unquantized).
    Quant(Option<Quant>),
    Prune(Option<PruneKnobs>),
    Rps(Option<RpsKnobs>),
}

/// What the editor knows about the recipe against the current model.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    /// Every linear of the analysed model (empty without one).
    pub linears: Vec<LinearId>,
    /// Effective plan per linear (from the valid rules), with the winning rule's index.
    pub plan: BTreeMap<LinearId, (usize, LayerPlan)>,
    /// Per rule: why it cannot run.
    pub rule_errors: Vec<Option<String>>,
    /// Per linear: the error of an invalid rule that covers it.
    pub cell_errors: BTreeMap<LinearId, String>,
    /// Per linear covered by an invalid rule: that rule's knobs, so the grid shows what the
    /// user set (flagged) rather than what would run instead.
    pub invalid_plans: BTreeMap<LinearId, LayerPlan>,
    /// Problems of the model-level steps (flatten pairs, merge list).
    pub step_errors: Vec<String>,
    /// Rule overlaps and similar facts.
    pub notes: Vec<String>,
    pub estimate: Estimate,
}

impl Analysis {
    /// What the grid shows for a linear: an invalid rule's knobs, else the effective plan.
    pub fn shown_plan(&self, id: &LinearId) -> Option<&LayerPlan> {
        self.invalid_plans
            .get(id)
            .or_else(|| self.plan.get(id).map(|(_, p)| p))
    }

    /// Whether the recipe can be submitted as it is.
    pub fn is_valid(&self) -> bool {
        self.rule_errors.iter().all(Option::is_none) && self.step_errors.is_empty()
    }

    /// The first error, for a one-line status.
    pub fn first_error(&self) -> Option<String> {
        self.rule_errors
            .iter()
            .enumerate()
            .find_map(|(i, e)| e.as_ref().map(|e| format!("rule {i}: {e}")))
            .or_else(|| self.step_errors.first().cloned())
    }
}

/// Live size estimate of the compressed model (the run measures the exact value).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Estimate {
    pub base_bytes: usize,
    pub total_bytes: usize,
    /// Stored bits per weight over the linears the recipe touches (scales included), as the
    /// run's `avg_bits` metric counts them; 32 when none.
    pub avg_bits: f64,
    pub compressed_layers: usize,
    pub removed_blocks: usize,
}

/// Bytes of one linear under `plan`: the pipeline's own estimate
/// ([`crate::technique::estimated_layer_bytes`]), bias excluded as in the plan.
pub fn estimated_bytes(l: &LinearInfo, plan: &LayerPlan) -> usize {
    crate::technique::estimated_layer_bytes(plan, l.rows, l.cols, l.size_bytes)
}

/// The recipe being edited, with its history.
#[derive(Debug, Clone)]
pub struct RecipeEditor {
    pub recipe: Recipe,
    undo: Vec<Recipe>,
    redo: Vec<Recipe>,
    /// Bumped on every change, so views can cache their analysis.
    pub generation: u64,
    /// Targets and family of the last drag edit: a drag's many small steps are one undo step.
    last_drag: Option<(Vec<LinearId>, u8)>,
}

impl Default for RecipeEditor {
    fn default() -> Self {
        Self::new(Recipe::default())
    }
}

impl RecipeEditor {
    pub fn new(recipe: Recipe) -> Self {
        Self {
            recipe,
            undo: Vec::new(),
            redo: Vec::new(),
            generation: 0,
            last_drag: None,
        }
    }

    /// Replaces the recipe (loading a file or a run's recipe), undoably.
    pub fn set(&mut self, recipe: Recipe) {
        if recipe != self.recipe {
            self.push_undo();
            self.recipe = recipe;
        }
    }

    fn push_undo(&mut self) {
        self.last_drag = None;
        self.undo.push(self.recipe.clone());
        if self.undo.len() > UNDO_LIMIT {
            self.undo.remove(0);
        }
        self.redo.clear();
        self.generation += 1;
    }

    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }
    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    pub fn undo(&mut self) -> bool {
        let Some(prev) = self.undo.pop() else {
            return false;
        };
        self.redo.push(std::mem::replace(&mut self.recipe, prev));
        self.generation += 1;
        self.last_drag = None;
        true
    }

    pub fn redo(&mut self) -> bool {
        let Some(next) = self.redo.pop() else {
            return false;
        };
        self.undo.push(std::mem::replace(&mut self.recipe, next));
        self.generation += 1;
        self.last_drag = None;
        true
    }

    /// Applies `edit` to every linear in `targets`, starting from each one's effective plan.
    /// A selection that is a pattern (every layer, a block range, one kind or the attention or
    /// FFN group, or a range of those) becomes pattern rules that replace the rules it makes
    /// redundant; any other selection, or one a pattern cannot express, an exact rule per
    /// layer. With `model`, the pattern form is checked to give every layer the same plan as
    /// the per-layer form would.
    pub fn edit_cells(
        &mut self,
        targets: &[LinearId],
        edit: &CellEdit,
        analysis: &Analysis,
        model: Option<(&Transformer, &ModelSummary)>,
    ) {
        if targets.is_empty() {
            return;
        }
        let family = match edit {
            CellEdit::Quant(_) => 0,
            CellEdit::Prune(_) => 1,
            CellEdit::Rps(_) => 2,
        };
        let key = (targets.to_vec(), family);
        if family == 0 || self.last_drag.as_ref() != Some(&key) {
            self.push_undo();
        } else {
            self.generation += 1;
        }
        if family != 0 {
            self.last_drag = Some(key);
        }
        let plans: BTreeMap<LinearId, LayerPlan> = targets
            .iter()
            .map(|&id| {
                // The layer's own rule, even when invalid (its knobs are what the user sees
                // and fixes); else whatever rule applies now.
                let name = id.to_string();
                let own = self
                    .recipe
                    .layers
                    .iter()
                    .find(|r| r.blocks.is_none() && r.pattern == name)
                    .map(raw_plan);
                let mut plan = own
                    .or_else(|| analysis.plan.get(&id).map(|(_, p)| p.clone()))
                    .unwrap_or_default();
                match edit {
                    CellEdit::Quant(q) => plan.quant = q.clone(),
                    CellEdit::Prune(p) => plan.prune = p.clone(),
                    CellEdit::Rps(r) => plan.rps = r.clone(),
                }
                (id, plan)
            })
            .collect();
        if let Some(model) = model
            && let Some(recipe) = self.as_pattern_rules(&plans, analysis, model)
        {
            self.recipe = recipe;
            return;
        }
        for (id, plan) in plans {
            self.write_exact_rule(id, &plan);
        }
    }

    /// The recipe with `plans` written as pattern rules, when the selection is a pattern, its
    /// layers get one plan, and the result checks out: every selected layer shows its new plan
    /// and every other layer what it showed before.
    fn as_pattern_rules(
        &self,
        plans: &BTreeMap<LinearId, LayerPlan>,
        analysis: &Analysis,
        (t, summary): (&Transformer, &ModelSummary),
    ) -> Option<Recipe> {
        let targets: Vec<LinearId> = plans.keys().copied().collect();
        let mut values = plans.values();
        let plan = values.next()?;
        if values.any(|p| p != plan) {
            return None;
        }
        let patterns = selection_patterns(&targets, &analysis.linears, t.blocks.len())?;
        let chosen: BTreeSet<LinearId> = targets.iter().copied().collect();
        let mut recipe = self.recipe.clone();
        // Rules that only reach selected layers are replaced by the new ones.
        recipe.layers.retain(|r| {
            rule_matches(r, t).map_or(true, |ids| !ids.iter().all(|id| chosen.contains(id)))
        });
        for (pattern, blocks) in patterns {
            let mut rule = rule_from_plan(pattern, plan);
            rule.blocks = blocks;
            recipe.layers.push(rule);
        }
        let after = analyse(&recipe, Some((t, summary)));
        let empty = LayerPlan::default();
        let holds = analysis.linears.iter().all(|id| {
            let want = plans.get(id).or_else(|| analysis.shown_plan(id));
            after.shown_plan(id).unwrap_or(&empty) == want.unwrap_or(&empty)
        });
        holds.then_some(recipe)
    }

    /// Sets the exact-name rule of `id` to `plan`, creating or removing it as needed.
    fn write_exact_rule(&mut self, id: LinearId, plan: &LayerPlan) {
        let name = id.to_string();
        let pos = self
            .recipe
            .layers
            .iter()
            .position(|r| r.blocks.is_none() && r.pattern == name);
        let empty = *plan == LayerPlan::default();
        if empty {
            // Removing the exact rule falls back to any pattern rule; with none left the layer
            // is untouched, which is what an empty cell means.
            if let Some(i) = pos {
                self.recipe.layers.remove(i);
            }
            return;
        }
        let rule = rule_from_plan(name, plan);
        match pos {
            Some(i) => self.recipe.layers[i] = rule,
            None => self.recipe.layers.push(rule),
        }
    }

    /// Appends a pattern rule.
    pub fn add_rule(&mut self, rule: LayerRule) {
        self.push_undo();
        self.recipe.layers.push(rule);
    }

    pub fn remove_rule(&mut self, index: usize) {
        if index < self.recipe.layers.len() {
            self.push_undo();
            self.recipe.layers.remove(index);
        }
    }

    /// Toggles "flatten block `block` with the next one".
    pub fn toggle_flatten(&mut self, block: usize) {
        self.push_undo();
        let step = self
            .recipe
            .flatten
            .get_or_insert_with(|| FlattenStep::new(Vec::new(), None, Default::default()));
        let pair = [block, block + 1];
        if let Some(i) = step.pairs.iter().position(|p| *p == pair) {
            step.pairs.remove(i);
        } else {
            step.pairs.push(pair);
            step.pairs.sort_unstable();
        }
        if step.pairs.is_empty() && step.auto.is_none() {
            self.recipe.flatten = None;
        }
    }

    /// Replaces the model-level merge step (`None` removes it).
    pub fn set_merge(&mut self, merge: Option<MergeStep>) {
        if merge != self.recipe.merge {
            self.push_undo();
            self.recipe.merge = merge;
        }
    }

    pub fn set_seed(&mut self, seed: u64) {
        if seed != self.recipe.seed {
            self.push_undo();
            self.recipe.seed = seed;
        }
    }

    /// Checks the recipe against `model` and estimates its size.
    pub fn analyse(&self, model: Option<(&Transformer, &ModelSummary)>) -> Analysis {
        analyse(&self.recipe, model)
    }
}

/// A rule's knobs as a plan, without validation (a rule setting both shift-add and RTN shows
/// its shift-add).
fn raw_plan(rule: &LayerRule) -> LayerPlan {
    LayerPlan {
        prune: rule.prune.clone(),
        quant: rule
            .shiftadd
            .clone()
            .map(Quant::ShiftAdd)
            .or_else(|| rule.rtn.clone().map(Quant::Rtn))
            .or(rule.f16.then_some(Quant::F16)),
        rps: rule.rps.clone(),
    }
}

/// A rule with exactly `plan`'s knobs.
pub fn rule_from_plan(pattern: String, plan: &LayerPlan) -> LayerRule {
    LayerRule {
        pattern,
        blocks: None,
        shiftadd: match &plan.quant {
            Some(Quant::ShiftAdd(k)) => Some(k.clone()),
            _ => None,
        },
        rtn: match &plan.quant {
            Some(Quant::Rtn(k)) => Some(k.clone()),
            _ => None,
        },
        prune: plan.prune.clone(),
        rps: plan.rps.clone(),
        f16: plan.quant == Some(Quant::F16),
    }
}

/// The layers a rule selects, regardless of whether its knobs are valid.
fn rule_matches(rule: &LayerRule, t: &Transformer) -> Result<Vec<LinearId>, String> {
    let probe = Recipe {
        model: None,
        seed: 0,
        merge: None,
        flatten: None,
        embedding: None,
        layers: vec![LayerRule {
            shiftadd: Some(ShiftAddKnobs::with_bits(4)),
            rtn: None,
            prune: None,
            rps: None,
            f16: false,
            ..rule.clone()
        }],
    };
    match probe.resolve(t) {
        Ok(plan) => Ok(plan.layers.into_keys().collect()),
        Err(crate::technique::recipe::RecipeError::Rule { what, .. }) => Err(what),
        Err(e) => Err(e.to_string()),
    }
}

/// The pattern rules (`match`, `blocks`) that select exactly `targets` among `linears`, when
/// the selection is a product of a contiguous block range and a set of kinds (and more than
/// one layer): one rule for every kind, the attention or the FFN group, else one per kind.
pub fn selection_patterns(
    targets: &[LinearId],
    linears: &[LinearId],
    n_blocks: usize,
) -> Option<Vec<(String, Option<String>)>> {
    if targets.len() < 2 {
        return None;
    }
    let blocks: BTreeSet<usize> = targets.iter().map(|id| id.block).collect();
    let kinds: BTreeSet<LinearKind> = targets.iter().map(|id| id.kind).collect();
    let (first, last) = (*blocks.first()?, *blocks.last()?);
    let product = last - first + 1 == blocks.len()
        && targets.len() == blocks.len() * kinds.len()
        && blocks.iter().all(|b| {
            kinds
                .iter()
                .all(|k| linears.contains(&LinearId::new(*b, *k)))
        });
    if !product {
        return None;
    }
    let range = match (first, last) {
        (0, l) if l + 1 == n_blocks => None,
        (f, l) if f == l => Some(f.to_string()),
        (f, l) => Some(format!("{f}-{l}")),
    };
    let present: BTreeSet<LinearKind> = linears.iter().map(|id| id.kind).collect();
    let group = |prefix: &str| {
        present
            .iter()
            .filter(|k| k.gguf_name().starts_with(prefix))
            .copied()
            .collect::<BTreeSet<_>>()
    };
    let names: Vec<String> = if kinds == present {
        vec!["blk.*.*".into()]
    } else if kinds == group("attn_") {
        vec!["blk.*.attn_*".into()]
    } else if kinds == group("ffn_") {
        vec!["blk.*.ffn_*".into()]
    } else {
        kinds
            .iter()
            .map(|k| format!("blk.*.{}", k.gguf_name()))
            .collect()
    };
    Some(names.into_iter().map(|n| (n, range.clone())).collect())
}

/// How a rule is named in messages: its pattern and block range.
pub fn rule_label(rule: &LayerRule) -> String {
    match &rule.blocks {
        Some(b) => format!("{} in blocks {b}", rule.pattern),
        None => rule.pattern.clone(),
    }
}

/// See [`RecipeEditor::analyse`].
pub fn analyse(recipe: &Recipe, model: Option<(&Transformer, &ModelSummary)>) -> Analysis {
    let mut a = Analysis {
        rule_errors: vec![None; recipe.layers.len()],
        ..Analysis::default()
    };
    let n_blocks = model.map(|(t, _)| t.blocks.len());
    let mut valid = Vec::new();
    for (i, rule) in recipe.layers.iter().enumerate() {
        let knobs = rule.layer_plan();
        let matches = model.map(|(t, _)| rule_matches(rule, t));
        match (&knobs, &matches) {
            (Err(e), Some(Ok(ids))) => {
                for id in ids {
                    a.cell_errors
                        .insert(*id, format!("rule {i} ({}): {e}", rule_label(rule)));
                    a.invalid_plans.insert(*id, raw_plan(rule));
                }
                a.rule_errors[i] = Some(e.clone());
            }
            (Err(e), _) => a.rule_errors[i] = Some(e.clone()),
            (Ok(_), Some(Err(e))) => a.rule_errors[i] = Some(e.clone()),
            (Ok(_), _) => valid.push(rule.clone()),
        }
    }
    if let Some(step) = &recipe.flatten {
        a.step_errors.extend(flatten_errors(step, n_blocks));
    }
    if let Some(m) = &recipe.merge {
        if m.models.is_empty() {
            a.step_errors
                .push("merge: add at least one fine-tuned model to fold in".into());
        }
        if !(m.alpha.is_finite() && (0.0..=10.0).contains(&m.alpha)) {
            a.step_errors
                .push(format!("merge: α = {} is outside 0..=10", m.alpha));
        }
    }
    let Some((t, summary)) = model else {
        return a;
    };
    a.linears = summary.linears.iter().map(|l| l.id).collect();
    let probe = Recipe {
        layers: valid,
        merge: None,
        flatten: None,
        ..recipe.clone()
    };
    // Indices in `probe` differ from the recipe's; map them back through the valid rules.
    let valid_index: Vec<usize> = (0..recipe.layers.len())
        .filter(|i| a.rule_errors[*i].is_none())
        .collect();
    if let Ok(plan) = probe.resolve(t) {
        a.notes = plan.notes;
        a.plan = plan
            .layers
            .into_iter()
            .map(|(id, (i, p))| (id, (valid_index.get(i).copied().unwrap_or(i), p)))
            .collect();
    }
    a.estimate = estimate(recipe, &a.plan, summary);
    a
}

fn flatten_errors(step: &FlattenStep, n_blocks: Option<usize>) -> Vec<String> {
    let mut errs = Vec::new();
    let mut seen = BTreeSet::new();
    for p in &step.pairs {
        if p[1] != p[0] + 1 {
            errs.push(format!("flatten: pair {p:?} is not two adjacent blocks"));
        }
        if let Some(n) = n_blocks
            && p[1] >= n
        {
            errs.push(format!(
                "flatten: block {} has no next block (the model has {n})",
                p[0]
            ));
        }
        if !seen.insert(p[0]) || !seen.insert(p[1]) {
            errs.push(format!(
                "flatten: pair {p:?} overlaps another pair; a block can be flattened once"
            ));
        }
    }
    errs
}

fn estimate(
    recipe: &Recipe,
    plan: &BTreeMap<LinearId, (usize, LayerPlan)>,
    s: &ModelSummary,
) -> Estimate {
    let mut total = s.size_bytes;
    let (mut bytes, mut weights) = (0usize, 0usize);
    for (id, (_, p)) in plan {
        let Some(l) = s.linear(*id) else { continue };
        let new = estimated_bytes(l, p);
        total = total - l.size_bytes + new;
        bytes += new;
        weights += l.weight_count();
    }
    // A flattened pair stores one block instead of two.
    let removed: Vec<usize> = recipe
        .flatten
        .as_ref()
        .map(|f| f.pairs.iter().map(|p| p[1]).collect())
        .unwrap_or_default();
    for b in &removed {
        for l in s.block_linears(*b) {
            let cur = plan
                .get(&l.id)
                .map_or(l.size_bytes, |(_, p)| estimated_bytes(l, p));
            total = total.saturating_sub(cur);
        }
    }
    Estimate {
        base_bytes: s.size_bytes,
        total_bytes: total,
        avg_bits: if weights == 0 {
            32.0
        } else {
            8.0 * bytes as f64 / weights as f64
        },
        compressed_layers: plan.len(),
        removed_blocks: removed.len(),
    }
}

/// One-line description of a plan cell (`SA3`, `RTN4`, `prune 0.5 wanda`, `RPS ×4`).
pub fn quant_label(q: &Option<Quant>) -> String {
    match q {
        None => "—".into(),
        Some(Quant::ShiftAdd(k)) => format!("SA {}", k.bits),
        // Symmetric at group 32, 4/5/8 bits, int8 activations: llama.cpp's own types, exported
        // as they are and computed as llama.cpp computes them.
        Some(Quant::Rtn(k)) if let Some(ty) = k.llama_cpp_type() => ty.into(),
        Some(Quant::Rtn(k)) if k.symmetric => format!("RTN {}s", k.bits),
        Some(Quant::Rtn(k)) => format!("RTN {}", k.bits),
        Some(Quant::F16) => "F16".into(),
    }
}

/// Every shift-add / RTN bit width of the recipe moved by `delta` (clamped to 2..=8): the
/// neighbours a sweep around the current recipe tries.
pub fn shift_bits(recipe: &Recipe, delta: i64) -> Recipe {
    let mut r = recipe.clone();
    let shift = |b: usize| (b as i64 + delta).clamp(2, 8) as usize;
    for rule in &mut r.layers {
        if let Some(k) = &mut rule.shiftadd {
            k.bits = shift(k.bits);
        }
        if let Some(k) = &mut rule.rtn {
            k.bits = shift(k.bits);
        }
    }
    r
}

/// A short human summary of a recipe (hover text, job labels).
pub fn recipe_summary(recipe: &Recipe) -> String {
    let mut parts = Vec::new();
    if let Some(m) = &recipe.merge {
        parts.push(format!(
            "merge {} ({:?}, α {})",
            m.models.join("+"),
            m.method,
            m.alpha
        ));
    }
    if let Some(f) = &recipe.flatten {
        if let Some(n) = f.auto {
            parts.push(format!("flatten auto {n}"));
        } else {
            parts.push(format!("flatten {:?}", f.pairs));
        }
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for rule in &recipe.layers {
        let mut k = Vec::new();
        if let Some(s) = &rule.shiftadd {
            k.push(format!("SA{}", s.bits));
        }
        if let Some(s) = &rule.rtn {
            k.push(format!("RTN{}", s.bits));
        }
        if rule.f16 {
            k.push("F16".into());
        }
        if let Some(p) = &rule.prune {
            k.push(format!("prune {:.2} {:?}", p.sparsity(), p.method).to_lowercase());
        }
        if let Some(r) = &rule.rps {
            k.push(format!("RPS ×{}", r.ratio));
        }
        *counts.entry(k.join("+")).or_default() += 1;
    }
    for (k, n) in counts {
        parts.push(if n == 1 {
            k
        } else {
            format!("{k} ×{n} rules")
        });
    }
    if parts.is_empty() {
        "no compression".into()
    } else {
        parts.join("; ")
    }
}

/// The technique family of a recipe, for colouring points.
pub fn recipe_family(recipe: &Recipe) -> &'static str {
    let mut fams = BTreeSet::new();
    if recipe.merge.is_some() {
        fams.insert("merge");
    }
    if recipe.flatten.is_some() {
        fams.insert("flatten");
    }
    for r in &recipe.layers {
        if r.shiftadd.is_some() {
            fams.insert("shift-add");
        }
        if r.rtn.is_some() || r.f16 {
            fams.insert("rtn");
        }
        if r.prune.is_some() {
            fams.insert("prune");
        }
        if r.rps.is_some() {
            fams.insert("rps");
        }
    }
    match fams.len() {
        0 => "none",
        1 => fams.into_iter().next().unwrap_or("none"),
        _ => "mixed",
    }
}

/// Family names in colour order.
pub const FAMILIES: [&str; 8] = [
    "shift-add",
    "rtn",
    "prune",
    "rps",
    "merge",
    "flatten",
    "mixed",
    "none",
];
