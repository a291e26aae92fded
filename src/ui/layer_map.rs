//! The layer map: every linear of the model as one cell, blocks across and linear kinds down,
//! coloured by one per-layer quantity (sensitivity, size, bits per weight, sparsity, measured
//! product time). It is also the editor's selection: click a cell, drag a rectangle, or click a
//! block number or a kind name (Shift or Ctrl adds to the selection); the selection's knobs
//! are set below the map, and a selection that is a pattern becomes pattern rules. Beside it,
//! the layers ranked by the chosen quantity.

use std::collections::{BTreeMap, BTreeSet};

use eframe::egui;
use serde::{Deserialize, Serialize};

use crate::model::{LinearId, LinearKind};

use super::command::Command;
use super::editor::{Analysis, estimated_bytes, selection_patterns};
use super::model_info::{ModelSummary, Sensitivity};
use super::recipe_panel::cells_ui;
use super::runs::human_bytes;
use super::shell::a11y_label;
use super::studio::Studio;
use super::studio::search::MeasuredSetting;
use super::theme;

/// What the map's colours show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MapQuantity {
    #[default]
    Sensitivity,
    Size,
    Bits,
    Sparsity,
    ProductTime,
}

impl MapQuantity {
    pub const ALL: [Self; 5] = [
        Self::Sensitivity,
        Self::Size,
        Self::Bits,
        Self::Sparsity,
        Self::ProductTime,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Sensitivity => "Sensitivity (KLD)",
            Self::Size => "Size",
            Self::Bits => "Bits per weight",
            Self::Sparsity => "Sparsity",
            Self::ProductTime => "Product time",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Self::Sensitivity => {
                "KL divergence (nats) of the next-token distribution from the base model's with \
                 only this layer compressed, from the last sensitivity pass (Model panel); \
                 log colour scale"
            }
            Self::Size => "Estimated bytes of the layer under the recipe (scales included)",
            Self::Bits => "Stored bits per weight of the layer under the recipe",
            Self::Sparsity => "Fraction of the layer's weights the recipe prunes",
            Self::ProductTime => {
                "The layer's matrix-vector product time in the decode engine at its recipe \
                 setting, from the search's measurement table (run a search first; settings \
                 the table lacks are grey); log colour scale"
            }
        }
    }

    fn log_scale(self) -> bool {
        matches!(self, Self::Sensitivity | Self::ProductTime)
    }

    pub fn format(self, v: f64) -> String {
        match self {
            Self::Sensitivity => format!("{v:.2e} nats"),
            Self::Size => human_bytes(v as usize),
            Self::Bits => format!("{v:.2} bits"),
            Self::Sparsity => format!("{:.0} %", 100.0 * v),
            Self::ProductTime => format!("{:.1} µs", v * 1e6),
        }
    }
}

/// The value of `quantity` for every linear where it is known.
pub fn map_values(
    quantity: MapQuantity,
    sum: &ModelSummary,
    analysis: &Analysis,
    sensitivity: Option<&Sensitivity>,
    measured: Option<&BTreeMap<LinearId, Vec<MeasuredSetting>>>,
) -> BTreeMap<LinearId, f64> {
    let empty = Default::default();
    let mut out = BTreeMap::new();
    for l in &sum.linears {
        let plan = analysis.shown_plan(&l.id).unwrap_or(&empty);
        let value = match quantity {
            MapQuantity::Sensitivity => sensitivity
                .filter(|x| x.model_id == sum.id)
                .and_then(|x| x.layers.get(&l.id))
                .map(|m| m.kld),
            MapQuantity::Size => Some(estimated_bytes(l, plan) as f64),
            MapQuantity::Bits => {
                Some(estimated_bytes(l, plan) as f64 * 8.0 / l.weight_count().max(1) as f64)
            }
            MapQuantity::Sparsity => Some(plan.prune.as_ref().map_or(0.0, |p| p.sparsity())),
            MapQuantity::ProductTime => measured
                .and_then(|m| m.get(&l.id))
                .and_then(|settings| settings.iter().find(|s| s.plan == *plan))
                .map(|s| s.seconds),
        };
        if let Some(v) = value.filter(|v| v.is_finite()) {
            out.insert(l.id, v);
        }
    }
    out
}

/// Where each cell is: blocks across, kinds down.
struct Geometry {
    cells: egui::Rect,
    cell: egui::Vec2,
    kinds: Vec<LinearKind>,
}

impl Geometry {
    fn cell_at(&self, pos: egui::Pos2) -> Option<(usize, usize)> {
        if !self.cells.contains(pos) {
            return None;
        }
        let d = pos - self.cells.min;
        Some(((d.x / self.cell.x) as usize, (d.y / self.cell.y) as usize))
            .filter(|&(_, k)| k < self.kinds.len())
    }

    /// The cell nearest to `pos` (a drag may end outside the map).
    fn nearest(&self, pos: egui::Pos2) -> (usize, usize) {
        let inner = self.cells.shrink(0.5);
        let d = inner.clamp(pos) - self.cells.min;
        let max_b = (self.cells.width() / self.cell.x) as usize;
        (
            ((d.x / self.cell.x) as usize).min(max_b.saturating_sub(1)),
            ((d.y / self.cell.y) as usize).min(self.kinds.len().saturating_sub(1)),
        )
    }

    fn rect(&self, block: usize, kind: usize) -> egui::Rect {
        let min = self.cells.min + egui::vec2(block as f32, kind as f32) * self.cell;
        egui::Rect::from_min_size(min, self.cell).shrink(0.5)
    }

    fn id(&self, block: usize, kind: usize) -> LinearId {
        LinearId::new(block, self.kinds[kind])
    }
}

/// How a new selection combines with the old one: Shift or Ctrl adds to it.
fn select(s: &mut Studio, ids: impl IntoIterator<Item = LinearId>, add: bool) {
    if !add {
        s.state.selected_cells.clear();
    }
    s.state
        .selected_cells
        .extend(ids.into_iter().map(|id| id.to_string()));
}

/// The map, the ranked list beside it and the selection's knobs below.
pub fn layer_map_ui(
    ui: &mut egui::Ui,
    s: &mut Studio,
    sum: &ModelSummary,
    a: &Analysis,
    out: &mut Vec<Command>,
) {
    let quantity = s.state.map_quantity;
    ui.horizontal(|ui| {
        ui.label("Colour by");
        let resp = egui::ComboBox::from_id_salt("map-quantity")
            .selected_text(quantity.label())
            .show_ui(ui, |ui| {
                for q in MapQuantity::ALL {
                    ui.selectable_value(&mut s.state.map_quantity, q, q.label())
                        .on_hover_text(q.help());
                }
            })
            .response;
        a11y_label(ui, &resp, "Map colour");
        resp.on_hover_text(quantity.help());
    });
    let measured = s
        .search
        .result
        .as_ref()
        .filter(|r| r.model_id == sum.id)
        .map(|r| &r.layers);
    let values = map_values(quantity, sum, a, s.sensitivity.result.as_ref(), measured);
    let scale = Scale::of(quantity, &values);
    match (&scale, quantity) {
        (None, MapQuantity::Sensitivity) => {
            ui.weak("No sensitivity pass for this model yet: run one in the Model panel.");
        }
        (None, MapQuantity::ProductTime) => {
            ui.weak("No measured product times: run a search (below) to measure them.");
        }
        (Some(sc), _) => legend_ui(ui, quantity, sc),
        _ => {}
    }
    ui.horizontal_top(|ui| {
        map_ui(ui, s, sum, a, quantity, &values, scale.as_ref());
        ranked_ui(ui, s, quantity, &values);
    });
    selection_ui(ui, s, sum, a, out);
}

/// The colour scale of the values shown: linear, or logarithmic for quantities spanning
/// orders of magnitude.
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Scale {
    fn of(q: MapQuantity, values: &BTreeMap<LinearId, f64>) -> Option<Scale> {
        let log = q.log_scale();
        let usable = values.values().filter(|v| !log || **v > 0.0);
        let (lo, hi) = usable.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
        (lo <= hi).then_some(Scale { lo, hi, log })
    }

    fn t(&self, v: f64) -> f64 {
        let f = |x: f64| if self.log { x.max(1e-30).ln() } else { x };
        let span = f(self.hi) - f(self.lo);
        if span <= 0.0 {
            0.5
        } else {
            (f(v) - f(self.lo)) / span
        }
    }
}

fn legend_ui(ui: &mut egui::Ui, q: MapQuantity, sc: &Scale) {
    ui.horizontal(|ui| {
        ui.weak(q.format(sc.lo));
        let (rect, _) = ui.allocate_exact_size(egui::vec2(120.0, 10.0), egui::Sense::hover());
        let steps = 24;
        for i in 0..steps {
            let x0 = rect.min.x + rect.width() * i as f32 / steps as f32;
            let x1 = rect.min.x + rect.width() * (i + 1) as f32 / steps as f32;
            let r =
                egui::Rect::from_min_max(egui::pos2(x0, rect.min.y), egui::pos2(x1, rect.max.y));
            ui.painter()
                .rect_filled(r, 0.0, theme::ramp(f64::from(i) / f64::from(steps - 1)));
        }
        ui.weak(q.format(sc.hi));
        if sc.log {
            ui.weak("(log)");
        }
    });
}

fn map_ui(
    ui: &mut egui::Ui,
    s: &mut Studio,
    sum: &ModelSummary,
    a: &Analysis,
    q: MapQuantity,
    values: &BTreeMap<LinearId, f64>,
    scale: Option<&Scale>,
) {
    let present: BTreeSet<LinearKind> = sum.linears.iter().map(|l| l.id.kind).collect();
    let kinds: Vec<LinearKind> = LinearKind::ALL
        .into_iter()
        .filter(|k| present.contains(k))
        .collect();
    let label_w = 84.0;
    let head_h = 16.0;
    let avail = (ui.available_width() - 260.0).max(160.0);
    let cell_w = ((avail - label_w) / sum.n_blocks.max(1) as f32).clamp(6.0, 26.0);
    let cell = egui::vec2(cell_w, 16.0);
    let size = egui::vec2(
        label_w + cell_w * sum.n_blocks as f32,
        head_h + cell.y * kinds.len() as f32,
    );
    let (outer, _) = ui.allocate_exact_size(size, egui::Sense::hover());
    let cells = egui::Rect::from_min_size(
        outer.min + egui::vec2(label_w, head_h),
        egui::vec2(cell_w * sum.n_blocks as f32, cell.y * kinds.len() as f32),
    );
    let g = Geometry { cells, cell, kinds };
    let add = ui.input(|i| i.modifiers.shift || i.modifiers.command);

    // Kind names select a row; block numbers a column (every few when cells are narrow).
    for (k, kind) in g.kinds.iter().enumerate() {
        let r = egui::Rect::from_min_size(
            egui::pos2(outer.min.x, cells.min.y + k as f32 * cell.y),
            egui::vec2(label_w - 4.0, cell.y),
        );
        let resp = ui.put(r, egui::Button::new(kind.gguf_name()).small().frame(false));
        if resp
            .on_hover_text("Select this kind in every block")
            .clicked()
        {
            select(s, (0..sum.n_blocks).map(|b| LinearId::new(b, *kind)), add);
        }
    }
    let every = (18.0 / cell_w).ceil().max(1.0) as usize;
    for b in (0..sum.n_blocks).step_by(every) {
        let r = egui::Rect::from_min_size(
            egui::pos2(cells.min.x + b as f32 * cell_w, outer.min.y),
            egui::vec2(cell_w * every as f32, head_h),
        );
        let resp = ui.put(r, egui::Button::new(b.to_string()).small().frame(false));
        if resp.on_hover_text(format!("Select block {b}")).clicked() {
            select(s, g.kinds.iter().map(|k| LinearId::new(b, *k)), add);
        }
    }

    let resp = ui.interact(
        cells,
        ui.make_persistent_id("layer-map"),
        egui::Sense::click_and_drag(),
    );
    a11y_label(ui, &resp, "Layer map cells");
    let anchor_id = ui.make_persistent_id("layer-map-anchor");
    let pointer = resp.interact_pointer_pos().or(resp.hover_pos());
    if resp.drag_started()
        && let Some(c) = ui
            .input(|i| i.pointer.press_origin())
            .and_then(|p| g.cell_at(p))
    {
        ui.data_mut(|d| d.insert_temp(anchor_id, c));
    }
    let anchor: Option<(usize, usize)> = ui.data(|d| d.get_temp(anchor_id));
    // The rectangle from the cell the drag started on to the one nearest the pointer.
    let dragged = |p: egui::Pos2| {
        let to = g.nearest(p);
        let from = anchor.unwrap_or(to);
        (
            from.0.min(to.0),
            from.0.max(to.0),
            from.1.min(to.1),
            from.1.max(to.1),
        )
    };
    let preview = if resp.dragged() {
        pointer.map(dragged)
    } else {
        None
    };
    if resp.drag_stopped() {
        if let Some((b0, b1, k0, k1)) = pointer.map(dragged) {
            let ids = (b0..=b1).flat_map(|b| (k0..=k1).map(move |k| (b, k)));
            let ids: Vec<LinearId> = ids.map(|(b, k)| g.id(b, k)).collect();
            select(s, ids, add);
        }
        ui.data_mut(|d| d.remove::<(usize, usize)>(anchor_id));
    } else if resp.clicked()
        && let Some((b, k)) = pointer.and_then(|p| g.cell_at(p))
        && b < sum.n_blocks
    {
        let name = g.id(b, k).to_string();
        if add && s.state.selected_cells.contains(&name) {
            s.state.selected_cells.remove(&name);
        } else {
            select(s, [g.id(b, k)], add);
        }
    }

    let painter = ui.painter_at(outer);
    let stroke = egui::Stroke::new(1.5, theme::SELECTED);
    for b in 0..sum.n_blocks {
        for k in 0..g.kinds.len() {
            let id = g.id(b, k);
            let r = g.rect(b, k);
            let fill = match (values.get(&id), scale) {
                (Some(v), Some(sc)) => theme::ramp(sc.t(*v)),
                _ => ui.visuals().faint_bg_color,
            };
            painter.rect_filled(r, 1.0, fill);
            if a.cell_errors.contains_key(&id) {
                painter.rect_stroke(r, 1.0, (1.5, theme::ERROR), egui::StrokeKind::Inside);
            }
            let in_preview = preview
                .is_some_and(|(b0, b1, k0, k1)| (b0..=b1).contains(&b) && (k0..=k1).contains(&k));
            if in_preview || s.state.selected_cells.contains(&id.to_string()) {
                painter.rect_stroke(r, 1.0, stroke, egui::StrokeKind::Inside);
            }
        }
    }
    if let Some((b, k)) = resp.hover_pos().and_then(|p| g.cell_at(p))
        && b < sum.n_blocks
    {
        let id = g.id(b, k);
        let plan = a
            .shown_plan(&id)
            .map_or_else(|| "untouched".to_string(), |p| p.describe());
        let value = values
            .get(&id)
            .map_or_else(|| "not measured".to_string(), |v| q.format(*v));
        let error = a
            .cell_errors
            .get(&id)
            .map(|e| format!("\n{e}"))
            .unwrap_or_default();
        resp.on_hover_text(format!("{id}: {plan}\n{}: {value}{error}", q.label()));
    }
}

/// The ten layers highest in the chosen quantity; clicking one selects it.
fn ranked_ui(ui: &mut egui::Ui, s: &mut Studio, q: MapQuantity, values: &BTreeMap<LinearId, f64>) {
    if values.is_empty() {
        return;
    }
    ui.vertical(|ui| {
        ui.strong(format!("Highest {}", q.label().to_lowercase()));
        let mut ranked: Vec<(&LinearId, &f64)> = values.iter().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(a.1));
        for (id, v) in ranked.into_iter().take(10) {
            let text = format!("{id}  {}", q.format(*v));
            if ui
                .small_button(text)
                .on_hover_text("Select this layer")
                .clicked()
            {
                select(s, [*id], false);
            }
        }
    });
}

/// The selection's size and shape, and its knobs.
fn selection_ui(
    ui: &mut egui::Ui,
    s: &mut Studio,
    sum: &ModelSummary,
    a: &Analysis,
    out: &mut Vec<Command>,
) {
    let selected = s.selected_cells();
    ui.horizontal_wrapped(|ui| {
        if selected.is_empty() {
            ui.weak("Click or drag over the map to select layers, then set their knobs here.");
            return;
        }
        let linears: Vec<LinearId> = sum.linears.iter().map(|l| l.id).collect();
        let shape = match selection_patterns(&selected, &linears, sum.n_blocks) {
            Some(p) => {
                let rules: Vec<String> = p
                    .iter()
                    .map(|(m, b)| match b {
                        Some(b) => format!("{m} in blocks {b}"),
                        None => m.clone(),
                    })
                    .collect();
                format!("as {}", rules.join(" + "))
            }
            None if selected.len() == 1 => "one layer".to_string(),
            None => "one rule per layer".to_string(),
        };
        ui.label(format!(
            "Selection: {} layer{} ({shape})",
            selected.len(),
            if selected.len() == 1 { "" } else { "s" }
        ));
        cells_ui(ui, "Selection", &selected, &selected, a, out);
        if ui.small_button("Clear selection").clicked() {
            s.state.selected_cells.clear();
        }
    });
}
