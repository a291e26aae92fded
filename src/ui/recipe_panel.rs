//! The recipe editor: a grid with one row per block (expandable to its linears) and one column
//! per family — shift-add/RTN bits, pruning ratio and method, RPS ratio, flatten-with-next —
//! plus pattern rules, the model-level merge list, errors in place and a live size estimate.

use eframe::egui;

use crate::model::LinearId;
use crate::technique::recipe::{
    LayerPlan, LayerRule, MergeMethod, MergeStep, PruneKnobs, PruneMethod, Quant, RpsKnobs,
    RtnKnobs, ShiftAddKnobs,
};

use super::command::Command;
use super::editor::{Analysis, CellEdit, quant_label};
use super::model_info::ModelSummary;
use super::runs::human_bytes;
use super::shell::a11y_label;
use super::studio::Studio;
use super::theme;

/// The "add a pattern rule" form and the merge-model text box (not persisted: drafts).
#[derive(Debug, Clone)]
pub struct RuleForm {
    pub pattern: String,
    pub blocks: String,
    pub quant: Option<Quant>,
    pub prune_ratio: f64,
    pub prune_method: PruneMethod,
    pub rps_ratio: f64,
    pub merge_model: String,
}

impl Default for RuleForm {
    fn default() -> Self {
        Self {
            pattern: "blk.*.ffn_*".into(),
            blocks: String::new(),
            quant: Some(Quant::ShiftAdd(ShiftAddKnobs::with_bits(3))),
            prune_ratio: 0.0,
            prune_method: PruneMethod::Magnitude,
            rps_ratio: 0.0,
            merge_model: String::new(),
        }
    }
}

impl RuleForm {
    fn rule(&self) -> LayerRule {
        let plan = LayerPlan {
            quant: self.quant.clone(),
            prune: (self.prune_ratio > 0.0 || self.prune_method == PruneMethod::Nm).then_some({
                PruneKnobs {
                    ratio: self.prune_ratio,
                    method: self.prune_method,
                    ..PruneKnobs::default()
                }
            }),
            rps: (self.rps_ratio > 0.0).then_some(RpsKnobs {
                ratio: self.rps_ratio,
                ..RpsKnobs::default()
            }),
        };
        let mut r = super::editor::rule_from_plan(self.pattern.trim().to_string(), &plan);
        let b = self.blocks.trim();
        r.blocks = (!b.is_empty()).then(|| b.to_string());
        r
    }
}

/// Every choice of the quantization column.
/// The recipe grid's column headers and what each knob does.
const GRID_HEADERS: [(&str, &str); 9] = [
    ("", ""),
    ("Layer", ""),
    ("Shape", "Output × input features of the linear layer"),
    (
        "Bits",
        "SA n: shift-add (ShiftAddLLM) binary-coding quantization, n bit planes with \
         power-of-two scales, fitted to calibration data. RTN n: round-to-nearest n-bit \
         integers with an f16 scale and zero per group of 128 inputs (the baseline). Q4_0, \
         Q4_1, Q5_0, Q5_1, Q8_0: RTN at group 32 in llama.cpp's own layouts (symmetric, or \
         with an f16 minimum), multiplied with int8 activations as llama.cpp does, so a GGUF \
         export ships them without requantizing and measures as deployed.",
    ),
    (
        "Prune",
        "Fraction of the layer's weights set to zero (0 = no pruning)",
    ),
    (
        "Method",
        "magnitude: smallest |W| of the whole matrix; wanda: smallest |W|·‖x‖ per output row \
         (needs calibration); nm: keep n of every m consecutive inputs (2:4)",
    ),
    (
        "RPS ×",
        "Randomized parameter sharing: weights per slot of a small hashed array that stores \
         the layer (2 = half the values); 0 = off",
    ),
    (
        "Flatten with next",
        "FlattenGPT: merge this block with the next into one block that runs both in parallel \
         on the same input, then prune it back to the original width",
    ),
    ("Rule", "The recipe rule that sets this layer"),
];

fn quant_choices(current: &Option<Quant>) -> Vec<Option<Quant>> {
    let mut v = vec![None];
    for bits in 2..=8 {
        v.push(Some(Quant::ShiftAdd(match current {
            Some(Quant::ShiftAdd(k)) => ShiftAddKnobs { bits, ..k.clone() },
            _ => ShiftAddKnobs::with_bits(bits),
        })));
    }
    for bits in 2..=8 {
        v.push(Some(Quant::Rtn(RtnKnobs {
            bits,
            group: 128,
            symmetric: false,
            float_min: false,
            int8_activations: false,
        })));
    }
    // llama.cpp's Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 as llama.cpp computes them (int8 activations): a
    // GGUF export writes them as they are, at the deployed size.
    for (bits, symmetric) in [(4, true), (4, false), (5, true), (5, false), (8, true)] {
        v.push(Some(Quant::Rtn(RtnKnobs {
            bits,
            group: 32,
            symmetric,
            float_min: !symmetric,
            int8_activations: true,
        })));
    }
    v.push(Some(Quant::F16));
    v
}

pub fn recipe_ui(ui: &mut egui::Ui, s: &mut Studio, out: &mut Vec<Command>) {
    let analysis = s.analysis().clone();
    toolbar_ui(ui, s, out);
    estimate_ui(ui, s, &analysis);
    problems_ui(ui, &analysis);
    search_ui(ui, s, out);
    ui.separator();
    egui::ScrollArea::vertical().show(ui, |ui| {
        match s.summary().cloned() {
            Some(sum) => {
                egui::CollapsingHeader::new("Layer map")
                    .id_salt("layer-map-section")
                    .default_open(true)
                    .show(ui, |ui| {
                        super::layer_map::layer_map_ui(ui, s, &sum, &analysis, out);
                    });
                grid_ui(ui, s, &sum, &analysis, out);
            }
            None => {
                ui.label(
                    "Open a model to edit per layer; pattern rules and merging work without one.",
                );
            }
        }
        ui.separator();
        merge_ui(ui, s, out);
        ui.separator();
        rule_form_ui(ui, s, out);
        ui.separator();
        rules_list_ui(ui, s, &analysis, out);
    });
}

fn toolbar_ui(ui: &mut egui::Ui, s: &mut Studio, out: &mut Vec<Command>) {
    ui.horizontal_wrapped(|ui| {
        if ui.button("Load recipe…").clicked() {
            out.push(Command::LoadRecipeDialog);
        }
        if ui.button("Save recipe…").clicked() {
            out.push(Command::SaveRecipeDialog);
        }
        if ui.button("Clear recipe").clicked() {
            out.push(Command::SetRecipe(crate::technique::recipe::Recipe {
                seed: s.recipe.editor.recipe.seed,
                ..Default::default()
            }));
        }
        ui.separator();
        ui.label("Seed");
        let mut seed = s.recipe.editor.recipe.seed;
        if ui.add(egui::DragValue::new(&mut seed)).changed() {
            out.push(Command::SetSeed(seed));
        }
        ui.separator();
        ui.label("Selected cells");
        ui.monospace(s.state.selected_cells.len().to_string());
        if let Some(sum) = s.summary().cloned()
            && ui
                .small_button("Select all")
                .on_hover_text("Edits of a selected row then apply to every layer")
                .clicked()
        {
            s.state.selected_cells = sum.linears.iter().map(|l| l.id.to_string()).collect();
        }
        if !s.state.selected_cells.is_empty() && ui.small_button("Clear selection").clicked() {
            s.state.selected_cells.clear();
        }
    });
}

/// The search: candidates, a size budget, start/cancel with progress, the predicted front
/// (click a point to load it) and "measure K points".
fn search_ui(ui: &mut egui::Ui, s: &mut Studio, out: &mut Vec<Command>) {
    egui::CollapsingHeader::new("Search")
        .id_salt("search")
        .show(ui, |ui| {
            ui.horizontal_wrapped(|ui| {
                ui.label("Candidates file");
                ui.add(
                    egui::TextEdit::singleline(&mut s.search.form.candidates)
                        .hint_text("bundled: every family")
                        .desired_width(220.0),
                )
                .on_hover_text(
                    "A TOML file of [[candidate]] layer settings (shiftadd, rtn, prune, rps), \
                     `embedding = [6, 8]` and `depth = \"drop\"` or `\"flatten\"`; empty: \
                     shift-add 2/3/4-bit, RTN 4-bit, Wanda 50 %, 2:4 and RPS 2× on every \
                     linear, and each block flattened with the next",
                );
                ui.label("Max size (MB, 0 = none)");
                ui.add(
                    egui::DragValue::new(&mut s.search.form.max_mb)
                        .range(0.0..=1e6)
                        .speed(1.0),
                );
                let running = s.search.running.is_some();
                if ui
                    .add_enabled(!running, egui::Button::new("Run search"))
                    .on_hover_text(
                        "Measure every linear at every candidate alone (once per model: the \
                         table is kept in the store), then find the assignments with the least \
                         predicted KLD at each size",
                    )
                    .clicked()
                {
                    out.push(Command::RunSearch);
                }
                if let Some(a) = &s.search.running {
                    let f = a.fraction().unwrap_or(0.0);
                    ui.add(
                        egui::ProgressBar::new(f)
                            .desired_width(120.0)
                            .show_percentage(),
                    );
                    ui.label(format!(
                        "{} ({:.0} s)",
                        a.stage,
                        a.since.elapsed().as_secs_f32()
                    ));
                    if ui.button("Cancel search").clicked() {
                        out.push(Command::CancelSearch);
                    }
                }
            });
            let Some(r) = &s.search.result else {
                ui.weak("no search yet");
                return;
            };
            ui.horizontal_wrapped(|ui| {
                ui.label(format!(
                    "{} points on the predicted front ({} measurements new, {} reused)",
                    r.points.len(),
                    r.measured_now,
                    r.reused
                ));
                ui.label("Run");
                ui.add(egui::DragValue::new(&mut s.search.form.measure_k).range(1..=50));
                if ui
                    .button("points as jobs")
                    .on_hover_text(
                        "Queue points spread along the predicted front as ordinary jobs (tagged \
                         `search`); the Pareto plot joins each prediction to its measurement",
                    )
                    .clicked()
                {
                    out.push(Command::MeasureSearchPoints(s.search.form.measure_k));
                }
            });
            egui::ScrollArea::vertical()
                .id_salt("search-front")
                .max_height(160.0)
                .show(ui, |ui| {
                    for (i, p) in r.points.iter().enumerate() {
                        let text = format!(
                            "{}  KLD {:.4}  {}",
                            human_bytes(p.predicted.bytes as usize),
                            p.predicted.kld_mean,
                            p.summary
                        );
                        if ui
                            .selectable_label(false, text)
                            .on_hover_text("Load this assignment into the editor")
                            .clicked()
                        {
                            out.push(Command::LoadSearchPoint(i));
                        }
                    }
                });
        });
}

fn estimate_ui(ui: &mut egui::Ui, s: &Studio, a: &Analysis) {
    if s.model.loaded.is_none() {
        return;
    }
    let e = &a.estimate;
    ui.horizontal_wrapped(|ui| {
        ui.strong("Estimate");
        let ratio = if e.total_bytes > 0 {
            e.base_bytes as f64 / e.total_bytes as f64
        } else {
            0.0
        };
        ui.label(format!(
            "{} of {} (×{ratio:.2} smaller) · {:.2} bits/weight over {} compressed layers",
            human_bytes(e.total_bytes),
            human_bytes(e.base_bytes),
            e.avg_bits,
            e.compressed_layers
        ));
        if e.removed_blocks > 0 {
            ui.label(format!("· {} blocks removed", e.removed_blocks));
        }
    })
    .response
    .on_hover_text(
        "Exact for shift-add and RTN storage up to padding; RPS counts its shared slots; \
         pruning alone is counted dense. The run measures the real size.",
    );
}

fn problems_ui(ui: &mut egui::Ui, a: &Analysis) {
    for (i, e) in a.rule_errors.iter().enumerate() {
        if let Some(e) = e {
            ui.colored_label(theme::ERROR, format!("rule {i}: {e}"));
        }
    }
    for e in &a.step_errors {
        ui.colored_label(theme::ERROR, e);
    }
    if !a.notes.is_empty() {
        egui::CollapsingHeader::new(format!("{} rule overlaps", a.notes.len()))
            .id_salt("recipe-notes")
            .show(ui, |ui| {
                for n in &a.notes {
                    ui.colored_label(theme::WARN, n);
                }
            });
    }
}

/// The common value of `f` over `ids`, or `None` when they differ.
fn common<T: PartialEq + Clone>(
    ids: &[LinearId],
    a: &Analysis,
    f: impl Fn(&LayerPlan) -> T,
) -> Option<T> {
    let empty = LayerPlan::default();
    let mut it = ids.iter().map(|id| f(a.shown_plan(id).unwrap_or(&empty)));
    let first = it.next()?;
    it.all(|v| v == first).then_some(first)
}

fn grid_ui(
    ui: &mut egui::Ui,
    s: &mut Studio,
    sum: &ModelSummary,
    a: &Analysis,
    out: &mut Vec<Command>,
) {
    let flatten_pairs: Vec<[usize; 2]> = s
        .recipe
        .editor
        .recipe
        .flatten
        .as_ref()
        .map(|f| f.pairs.clone())
        .unwrap_or_default();
    if s.recipe.editor.recipe.flatten.is_some() {
        ui.colored_label(
            theme::WARN,
            "Flattening renumbers blocks: layer rules apply to the model after flattening.",
        );
    }
    egui::Grid::new("recipe-grid")
        .striped(true)
        .num_columns(9)
        .show(ui, |ui| {
            for (h, tip) in GRID_HEADERS {
                let r = ui.strong(h);
                if !tip.is_empty() {
                    r.on_hover_text(tip);
                }
            }
            ui.end_row();
            for block in 0..sum.n_blocks {
                let ids: Vec<LinearId> = sum.block_linears(block).map(|l| l.id).collect();
                let names: Vec<String> = ids.iter().map(ToString::to_string).collect();
                let all_sel = names.iter().all(|n| s.state.selected_cells.contains(n));
                let mut sel = all_sel;
                if ui.checkbox(&mut sel, "").changed() {
                    for n in &names {
                        if sel {
                            s.state.selected_cells.insert(n.clone());
                        } else {
                            s.state.selected_cells.remove(n);
                        }
                    }
                }
                let expanded = s.state.expanded_blocks.contains(&block);
                let label = format!("{} Block {block}", if expanded { "-" } else { "+" });
                if ui.button(label).clicked() {
                    if expanded {
                        s.state.expanded_blocks.remove(&block);
                    } else {
                        s.state.expanded_blocks.insert(block);
                    }
                }
                let bytes: usize = sum.block_linears(block).map(|l| l.size_bytes).sum();
                ui.weak(human_bytes(bytes));
                let targets = if all_sel {
                    s.selected_cells()
                } else {
                    ids.clone()
                };
                cells_ui(ui, &format!("Block {block}"), &ids, &targets, a, out);
                let mut flat = flatten_pairs.contains(&[block, block + 1]);
                let resp = ui.add_enabled(
                    block + 1 < sum.n_blocks,
                    egui::Checkbox::without_text(&mut flat),
                );
                a11y_label(ui, &resp, &format!("Block {block} flatten"));
                if resp.changed() {
                    out.push(Command::ToggleFlatten(block));
                }
                let errs: Vec<&String> =
                    ids.iter().filter_map(|id| a.cell_errors.get(id)).collect();
                if let Some(e) = errs.first() {
                    ui.colored_label(theme::ERROR, "invalid")
                        .on_hover_text(e.as_str());
                } else {
                    ui.label("");
                }
                ui.end_row();
                if expanded {
                    for l in sum.block_linears(block) {
                        let name = l.id.to_string();
                        let mut sel = s.state.selected_cells.contains(&name);
                        if ui.checkbox(&mut sel, "").changed() {
                            if sel {
                                s.state.selected_cells.insert(name.clone());
                            } else {
                                s.state.selected_cells.remove(&name);
                            }
                        }
                        ui.monospace(format!("  {}", l.id.kind.gguf_name()));
                        ui.weak(format!("{}×{}", l.rows, l.cols));
                        let targets = if sel { s.selected_cells() } else { vec![l.id] };
                        cells_ui(ui, &name, &[l.id], &targets, a, out);
                        ui.label("");
                        match (a.cell_errors.get(&l.id), a.plan.get(&l.id)) {
                            (Some(e), _) => {
                                ui.colored_label(theme::ERROR, "invalid").on_hover_text(e);
                            }
                            (None, Some((i, _))) => {
                                let pat = s
                                    .recipe
                                    .editor
                                    .recipe
                                    .layers
                                    .get(*i)
                                    .map(|r| r.pattern.clone())
                                    .unwrap_or_default();
                                ui.weak(format!("rule {i}")).on_hover_text(pat);
                            }
                            (None, None) => {
                                ui.weak("untouched");
                            }
                        }
                        ui.end_row();
                    }
                }
            }
        });
}

/// The bits, prune, method and RPS cells of one row. `shown` decides the displayed value,
/// `targets` receive edits (the selection when the row is selected).
pub(super) fn cells_ui(
    ui: &mut egui::Ui,
    row: &str,
    shown: &[LinearId],
    targets: &[LinearId],
    a: &Analysis,
    out: &mut Vec<Command>,
) {
    let quant = common(shown, a, |p| p.quant.clone());
    let text = quant
        .as_ref()
        .map_or_else(|| "mixed".to_string(), quant_label);
    let cur = quant.clone().flatten();
    let resp = egui::ComboBox::from_id_salt(("quant", row))
        .selected_text(text)
        .width(70.0)
        // Tall enough for every choice: RTN must not hide below the shift-add widths.
        .height(f32::INFINITY)
        .show_ui(ui, |ui| {
            for choice in quant_choices(&cur) {
                match &choice {
                    Some(Quant::ShiftAdd(k)) if k.bits == 2 => {
                        ui.separator();
                        ui.weak("shift-add");
                    }
                    Some(Quant::Rtn(k)) if k.bits == 2 => {
                        ui.separator();
                        ui.weak("RTN");
                    }
                    Some(Quant::Rtn(k)) if k.llama_cpp_type() == Some("Q4_0") => {
                        ui.separator();
                        ui.weak("llama.cpp types (exact in GGUF)");
                    }
                    _ => {}
                }
                let selected = quant.as_ref() == Some(&choice);
                if ui
                    .selectable_label(selected, quant_label(&choice))
                    .clicked()
                {
                    out.push(Command::EditCells {
                        targets: targets.to_vec(),
                        edit: CellEdit::Quant(choice),
                    });
                }
            }
        })
        .response;
    a11y_label(ui, &resp, &format!("{row} bits"));

    let prune = common(shown, a, |p| p.prune.clone());
    let mut ratio = prune
        .as_ref()
        .and_then(|p| p.as_ref().map(|k| k.ratio))
        .unwrap_or(0.0);
    let resp = ui.add(
        egui::DragValue::new(&mut ratio)
            .range(0.0..=0.95)
            .speed(0.01)
            .fixed_decimals(2),
    );
    a11y_label(ui, &resp, &format!("{row} prune"));
    let method = prune
        .as_ref()
        .and_then(|p| p.as_ref().map(|k| k.method))
        .unwrap_or_default();
    if resp.changed() {
        let knobs = (ratio > 0.0).then_some(PruneKnobs {
            ratio,
            method,
            n: 2,
            m: 4,
            ..PruneKnobs::default()
        });
        out.push(Command::EditCells {
            targets: targets.to_vec(),
            edit: CellEdit::Prune(knobs),
        });
    }
    let has_prune = matches!(&prune, Some(Some(_)));
    let resp = ui
        .add_enabled_ui(has_prune, |ui| {
            egui::ComboBox::from_id_salt(("prune-method", row))
                .selected_text(if has_prune {
                    format!("{method:?}").to_lowercase()
                } else {
                    "—".into()
                })
                .width(80.0)
                .show_ui(ui, |ui| {
                    for m in [PruneMethod::Magnitude, PruneMethod::Wanda, PruneMethod::Nm] {
                        if ui
                            .selectable_label(m == method, format!("{m:?}").to_lowercase())
                            .clicked()
                            && let Some(Some(k)) = &prune
                        {
                            out.push(Command::EditCells {
                                targets: targets.to_vec(),
                                edit: CellEdit::Prune(Some(PruneKnobs {
                                    method: m,
                                    ..k.clone()
                                })),
                            });
                        }
                    }
                })
                .response
        })
        .inner;
    a11y_label(ui, &resp, &format!("{row} prune method"));

    let rps = common(shown, a, |p| p.rps.clone());
    let mut rratio = rps
        .as_ref()
        .and_then(|p| p.as_ref().map(|k| k.ratio))
        .unwrap_or(0.0);
    let resp = ui
        .add(
            egui::DragValue::new(&mut rratio)
                .range(0.0..=1024.0)
                .speed(0.1)
                .fixed_decimals(1),
        )
        .on_hover_text("Weights per shared slot (0 = no sharing)");
    a11y_label(ui, &resp, &format!("{row} rps"));
    if resp.changed() {
        let knobs = (rratio > 0.0).then(|| RpsKnobs {
            ratio: rratio,
            mapping: rps
                .as_ref()
                .and_then(|p| p.as_ref().map(|k| k.mapping))
                .unwrap_or_default(),
            ..RpsKnobs::default()
        });
        out.push(Command::EditCells {
            targets: targets.to_vec(),
            edit: CellEdit::Rps(knobs),
        });
    }
}

fn merge_ui(ui: &mut egui::Ui, s: &mut Studio, out: &mut Vec<Command>) {
    ui.strong("Merge fine-tuned models (model level, runs first)");
    let merge = s.recipe.editor.recipe.merge.clone();
    let mut on = merge.is_some();
    if ui.checkbox(&mut on, "Merge").changed() {
        out.push(Command::SetMerge(on.then(|| MergeStep {
            models: Vec::new(),
            method: MergeMethod::Opcm,
            alpha: 0.5,
            density: None,
        })));
    }
    let Some(m) = merge else { return };
    ui.horizontal_wrapped(|ui| {
        ui.label("Models, folded in this order");
        for (i, model) in m.models.iter().enumerate() {
            ui.monospace(model);
            if ui.small_button("x").on_hover_text("Remove").clicked() {
                let mut n = m.clone();
                n.models.remove(i);
                out.push(Command::SetMerge(Some(n)));
            }
        }
    });
    ui.horizontal_wrapped(|ui| {
        // The zoo's fine-tunes, those of the open model first (its merge family).
        let open = s.state.model_spec.strip_prefix("zoo:").unwrap_or_default();
        let mut tunes: Vec<&crate::zoo::ZooMember> = crate::zoo::MEMBERS
            .iter()
            .filter(|z| z.parent.is_some())
            .collect();
        tunes.sort_by_key(|z| z.parent != Some(open));
        for z in tunes {
            let spec = format!("zoo:{}", z.name);
            if ui.small_button(format!("+ {spec}")).clicked() {
                let mut n = m.clone();
                n.models.push(spec);
                out.push(Command::SetMerge(Some(n)));
            }
        }
    });
    ui.horizontal_wrapped(|ui| {
        ui.label("Path");
        ui.text_edit_singleline(&mut s.recipe.rule_form.merge_model);
        if ui.button("Add model").clicked() && !s.recipe.rule_form.merge_model.trim().is_empty() {
            let mut n = m.clone();
            n.models
                .push(s.recipe.rule_form.merge_model.trim().to_string());
            s.recipe.rule_form.merge_model.clear();
            out.push(Command::SetMerge(Some(n)));
        }
    });
    ui.horizontal_wrapped(|ui| {
        ui.label("Method");
        for meth in [
            MergeMethod::Opcm,
            MergeMethod::TaskArithmetic,
            MergeMethod::Average,
            MergeMethod::Ties,
            MergeMethod::Dare,
        ] {
            if ui
                .selectable_label(m.method == meth, format!("{meth:?}"))
                .clicked()
            {
                out.push(Command::SetMerge(Some(MergeStep {
                    method: meth,
                    ..m.clone()
                })));
            }
        }
        ui.label("α");
        let mut alpha = m.alpha;
        if ui
            .add(
                egui::DragValue::new(&mut alpha)
                    .range(0.0..=10.0)
                    .speed(0.01),
            )
            .changed()
        {
            out.push(Command::SetMerge(Some(MergeStep { alpha, ..m.clone() })));
        }
        if matches!(m.method, MergeMethod::Ties | MergeMethod::Dare) {
            ui.label("density");
            let mut density = m.density();
            if ui
                .add(
                    egui::DragValue::new(&mut density)
                        .range(0.01..=1.0)
                        .speed(0.01),
                )
                .on_hover_text(
                    "TIES: fraction of each task vector kept, its largest entries. DARE: \
                     fraction kept at random, the rest scaled up to make up for it.",
                )
                .changed()
            {
                out.push(Command::SetMerge(Some(MergeStep {
                    density: Some(density),
                    ..m.clone()
                })));
            }
        }
    });
}

fn rule_form_ui(ui: &mut egui::Ui, s: &mut Studio, out: &mut Vec<Command>) {
    ui.strong("Add a pattern rule");
    let f = &mut s.recipe.rule_form;
    ui.horizontal_wrapped(|ui| {
        ui.label("Match");
        ui.add(egui::TextEdit::singleline(&mut f.pattern).desired_width(160.0))
            .on_hover_text("Glob over layer names (blk.*.ffn_*), re:REGEX, or an exact name");
        ui.label("Blocks");
        ui.add(egui::TextEdit::singleline(&mut f.blocks).desired_width(60.0))
            .on_hover_text("Optional: 3, 0-5 or 1,3,7-9");
        ui.label("Bits");
        egui::ComboBox::from_id_salt("rule-quant")
            .selected_text(quant_label(&f.quant))
            .width(70.0)
            .show_ui(ui, |ui| {
                for c in quant_choices(&f.quant) {
                    let label = quant_label(&c);
                    let sel = f.quant == c;
                    if ui.selectable_label(sel, label).clicked() {
                        f.quant = c;
                    }
                }
            });
        ui.label("Prune");
        ui.add(
            egui::DragValue::new(&mut f.prune_ratio)
                .range(0.0..=0.95)
                .speed(0.01),
        );
        egui::ComboBox::from_id_salt("rule-prune-method")
            .selected_text(format!("{:?}", f.prune_method).to_lowercase())
            .show_ui(ui, |ui| {
                for m in [PruneMethod::Magnitude, PruneMethod::Wanda, PruneMethod::Nm] {
                    ui.selectable_value(&mut f.prune_method, m, format!("{m:?}").to_lowercase());
                }
            });
        ui.label("RPS ×");
        ui.add(
            egui::DragValue::new(&mut f.rps_ratio)
                .range(0.0..=1024.0)
                .speed(0.1),
        );
        if ui.button("Add rule").clicked() {
            out.push(Command::AddRule(f.rule()));
        }
    });
}

fn rules_list_ui(ui: &mut egui::Ui, s: &Studio, a: &Analysis, out: &mut Vec<Command>) {
    let rules = &s.recipe.editor.recipe.layers;
    egui::CollapsingHeader::new(format!("Rules ({})", rules.len()))
        .id_salt("recipe-rules")
        .default_open(rules.len() <= 12)
        .show(ui, |ui| {
            egui::Grid::new("rules").striped(true).show(ui, |ui| {
                for (i, r) in rules.iter().enumerate() {
                    ui.monospace(i.to_string());
                    ui.monospace(&r.pattern);
                    ui.monospace(r.blocks.clone().unwrap_or_default());
                    let one = crate::technique::recipe::Recipe {
                        model: None,
                        seed: 0,
                        merge: None,
                        flatten: None,
                        embedding: None,
                        layers: vec![r.clone()],
                    };
                    ui.label(super::editor::recipe_summary(&one));
                    match a.rule_errors.get(i).cloned().flatten() {
                        Some(e) => {
                            ui.colored_label(theme::ERROR, "invalid").on_hover_text(e);
                        }
                        None => {
                            ui.label("");
                        }
                    }
                    if ui.small_button("Remove").clicked() {
                        out.push(Command::RemoveRule(i));
                    }
                    ui.end_row();
                }
            });
        });
}
