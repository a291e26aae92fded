//! The Pareto panel: runs as points over two chosen metrics, coloured by family or a third
//! metric, the non-dominated front as a line, hover for a run's recipe, click to select, a box
//! to select many, filters, and PNG/SVG export. Drawing is decimated to one point per screen
//! cell per colour, so 100 000 runs draw as fast as a few thousand.

use eframe::egui;
use egui_plot::{
    Corner, GridMark, Legend, Line, LineStyle, MarkerShape, Plot, PlotPoint, Points, Polygon,
};

use super::command::Command;
use super::editor::FAMILIES;
use super::runs::{
    RunFilter, RunTable, StepPoint, data_bounds, decimate, evaluated_on, format_metric,
    format_value, front_2d, human_bytes, maximize, step_points,
};
use super::shell::{a11y_label, tag_entry_ui};
use super::state::ColorBy;
use super::studio::Studio;
use super::theme;
use crate::export::experiment::EXPORT_OF_TAG;
use crate::store::record::split_domain_metric;

/// Hover/click pick radius in screen points.
const PICK_RADIUS: f32 = 8.0;
/// Colour buckets for a metric colour ramp.
const RAMP_BUCKETS: u32 = 8;

/// Filtered rows, front and ranges for the current axes, recomputed only when the runs, the
/// axes or the filter change.
#[derive(Debug, Clone, Default)]
pub struct ParetoCache {
    key: Option<(u64, String, String, RunFilter, ColorBy)>,
    /// Rows passing the filter with finite x and y.
    pub rows: Vec<usize>,
    /// Non-dominated rows, sorted by x.
    pub front: Vec<usize>,
    pub bounds: Option<[f64; 4]>,
    /// Range of the colour metric over `rows`.
    color_range: (f64, f64),
    /// Each plotted merge run's intermediate models (row, steps), where an axis changes from
    /// step to step.
    pub merge_steps: Vec<(usize, Vec<StepPoint>)>,
    /// The rows drawn for the last view (bounds bits, grid), so a still plot does not
    /// re-bin 100 000 points every frame.
    drawn: Option<(DrawKey, Vec<usize>)>,
}

/// The view a decimation was made for: plot bounds (bit patterns) and grid size.
type DrawKey = ([u64; 4], (usize, usize));

impl ParetoCache {
    /// Brings the cache up to date; cheap when nothing changed.
    pub fn update(
        &mut self,
        runs: &RunTable,
        x: &str,
        y: &str,
        filter: &RunFilter,
        color: &ColorBy,
    ) {
        let key = (
            runs.generation,
            x.to_string(),
            y.to_string(),
            filter.clone(),
            color.clone(),
        );
        if self.key.as_ref() == Some(&key) {
            return;
        }
        self.key = Some(key);
        self.drawn = None;
        let (Some(xs), Some(ys)) = (runs.column(x), runs.column(y)) else {
            self.rows.clear();
            self.front.clear();
            self.merge_steps.clear();
            self.bounds = None;
            return;
        };
        self.rows = runs
            .filtered(filter)
            .into_iter()
            .filter(|&i| xs[i].is_finite() && ys[i].is_finite())
            .collect();
        self.front = front_2d(xs, ys, &self.rows, maximize(x), maximize(y));
        self.merge_steps = self
            .rows
            .iter()
            .filter_map(|&i| {
                let record = &runs.rows[i].record;
                let steps = step_points(record.steps_json.as_deref()?, &record.metrics, x, y);
                (!steps.is_empty()).then_some((i, steps))
            })
            .collect();
        self.bounds = data_bounds(xs, ys, &self.rows);
        // A merge run's line ends at its last step, usually low and to the right, where the
        // legend sits: leave the legend a column of its own past it.
        if x == "merged_models"
            && !self.merge_steps.is_empty()
            && let Some(b) = &mut self.bounds
        {
            b[2] += 0.25 * (b[2] - b[0]).max(1.0);
        }
        self.color_range = match color {
            ColorBy::Metric(m) => {
                let c = runs.column(m).unwrap_or(&[]);
                self.rows
                    .iter()
                    .filter_map(|&i| c.get(i).copied().filter(|v| v.is_finite()))
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                        (lo.min(v), hi.max(v))
                    })
            }
            _ => (0.0, 1.0),
        };
    }

    /// Colour group of a row (family index or ramp bucket) and its colour.
    pub fn color_of(&self, runs: &RunTable, color: &ColorBy, row: usize) -> (u32, egui::Color32) {
        match color {
            ColorBy::None => (0, theme::POINT),
            ColorBy::Family => {
                let f = runs.rows[row].family;
                let i = FAMILIES
                    .iter()
                    .position(|x| *x == f)
                    .unwrap_or(FAMILIES.len() - 1);
                (i as u32, theme::CATEGORICAL[i % theme::CATEGORICAL.len()])
            }
            ColorBy::Metric(m) => {
                let v = runs.value(m, row);
                let (lo, hi) = self.color_range;
                let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
                let b = ((t * RAMP_BUCKETS as f64).floor() as u32).min(RAMP_BUCKETS - 1);
                (
                    b,
                    theme::ramp((f64::from(b) + 0.5) / f64::from(RAMP_BUCKETS)),
                )
            }
        }
    }

    /// Name of a colour group for the legend.
    fn group_name(&self, color: &ColorBy, group: u32) -> String {
        match color {
            ColorBy::None => "runs".into(),
            ColorBy::Family => FAMILIES
                .get(group as usize)
                .copied()
                .unwrap_or("none")
                .into(),
            ColorBy::Metric(m) => {
                let (lo, hi) = self.color_range;
                let step = (hi - lo) / f64::from(RAMP_BUCKETS);
                format!(
                    "{m} {}–{}",
                    format_value(lo + step * f64::from(group)),
                    format_value(lo + step * f64::from(group + 1))
                )
            }
        }
    }
}

/// Where a box selection started (plot coordinates), kept in egui's temporary memory.
fn box_start_id(plot: egui::Id) -> egui::Id {
    plot.with("box-start")
}

pub fn pareto_ui(ui: &mut egui::Ui, s: &mut Studio, out: &mut Vec<Command>) {
    let metrics = s.runs.metric_names();
    controls_ui(ui, s, &metrics, out);
    filters_ui(ui, &s.runs, &mut s.state.pareto.filter, "pareto");
    let prefs = s.state.pareto.clone();
    s.views
        .pareto_cache
        .update(&s.runs, &prefs.x, &prefs.y, &prefs.filter, &prefs.color);
    let cache = &s.views.pareto_cache;
    let (Some(xs), Some(ys)) = (s.runs.column(&prefs.x), s.runs.column(&prefs.y)) else {
        ui.label(format!(
            "No run has both {} and {} yet: run a recipe (Jobs panel) and its point appears here.",
            prefs.x, prefs.y
        ));
        s.views.plot_rect = None;
        return;
    };
    ui.label(format!(
        "{} runs plotted · {} on the front{}",
        cache.rows.len(),
        cache.front.len(),
        if s.views.box_selection.is_empty() {
            String::new()
        } else {
            format!(" · {} box-selected", s.views.box_selection.len())
        }
    ));
    let overlay = search_overlay(s, &prefs.x, &prefs.y);
    if let Some(o) = &overlay {
        ui.label(o.caption());
    }
    if !cache.merge_steps.is_empty() {
        ui.label(format!(
            "{} merge run{} drawn step by step (squares; click a step to load the merge up to it)",
            cache.merge_steps.len(),
            if cache.merge_steps.len() == 1 {
                ""
            } else {
                "s"
            }
        ));
    }
    let deployed = deployed_links(s, &cache.rows, &prefs.x, &prefs.y);
    if !deployed.is_empty() {
        ui.label(format!(
            "{} run{} joined to {} file as deployed (dotted; tag `deployed`: measured by llama.cpp)",
            deployed.len(),
            if deployed.len() == 1 { "" } else { "s" },
            if deployed.len() == 1 { "its" } else { "their" }
        ));
    }
    let selected = prefs.selected_row(&s.runs, s.state.selected_run.as_deref());
    let height = (ui.available_height() - 150.0).max(200.0);
    // The legend goes in the corner where the worst runs are, away from the front.
    let corner = match (maximize(&prefs.x), maximize(&prefs.y)) {
        (false, false) => Corner::RightTop,
        (false, true) => Corner::RightBottom,
        (true, false) => Corner::LeftTop,
        (true, true) => Corner::LeftBottom,
    };
    let mut plot = Plot::new("pareto-plot")
        .height(height)
        .x_axis_label(metric_label(&prefs.x))
        .y_axis_label(metric_label(&prefs.y))
        .x_axis_formatter(axis_formatter(&prefs.x))
        .y_axis_formatter(axis_formatter(&prefs.y))
        .legend(Legend::default().position(corner))
        .allow_drag(!prefs.box_select)
        .allow_boxed_zoom(!prefs.box_select);
    if let Some(b) = cache.bounds {
        plot = plot
            .default_x_bounds(b[0], b[2])
            .default_y_bounds(b[1], b[3]);
    }
    // New axes: fit the view to them (the plot keeps its zoom across frames otherwise).
    let axes = (prefs.x.clone(), prefs.y.clone());
    if s.views.pareto_axes.as_ref() != Some(&axes) {
        plot = plot.reset();
        s.views.pareto_axes = Some(axes);
    }
    let box_selected: std::collections::HashSet<&str> =
        s.views.box_selection.iter().map(String::as_str).collect();
    let runs = &s.runs;
    let resp = plot.show(ui, |pu| {
        let b = pu.plot_bounds();
        let size = pu.response().rect.size();
        let bounds = [b.min()[0], b.min()[1], b.max()[0], b.max()[1]];
        let grid = (
            (size.x / 2.0).max(1.0) as usize,
            (size.y / 2.0).max(1.0) as usize,
        );
        let key: DrawKey = (bounds.map(f64::to_bits), grid);
        let fresh = match &cache.drawn {
            Some((k, _)) if *k == key => None,
            _ => Some((
                key,
                decimate(xs, ys, &cache.rows, bounds, grid, |i| {
                    cache.color_of(runs, &prefs.color, i).0
                }),
            )),
        };
        let drawn: &[usize] = match (&fresh, &cache.drawn) {
            (Some((_, d)), _) | (None, Some((_, d))) => d,
            (None, None) => &[],
        };
        let mut groups: std::collections::BTreeMap<u32, (egui::Color32, Vec<[f64; 2]>)> =
            Default::default();
        for &i in drawn {
            let (g, c) = cache.color_of(runs, &prefs.color, i);
            groups
                .entry(g)
                .or_insert_with(|| (c, Vec::new()))
                .1
                .push([xs[i], ys[i]]);
        }
        // The front first, so the points stay visible on top of it.
        if prefs.show_front && cache.front.len() > 1 {
            let pts: Vec<[f64; 2]> = cache.front.iter().map(|&i| [xs[i], ys[i]]).collect();
            // No band aggregation: two front points in one pixel column must not be filled.
            pu.line(
                Line::new("front", pts)
                    .color(theme::FRONT)
                    .width(1.5)
                    .allow_band(false),
            );
        }
        if let Some(o) = &overlay {
            o.draw(pu);
        }
        for (run, file) in &deployed {
            pu.line(
                Line::new("as measured here to as deployed", vec![*run, *file])
                    .color(theme::DEPLOYED)
                    .style(LineStyle::dotted_dense())
                    .width(1.5)
                    .allow_band(false),
            );
        }
        for (i, steps) in &cache.merge_steps {
            let c = cache.color_of(runs, &prefs.color, *i).1;
            let pts: Vec<[f64; 2]> = steps.iter().map(|p| p.at).collect();
            pu.line(
                Line::new("merge steps", pts.clone())
                    .color(c)
                    .width(1.0)
                    .allow_band(false),
            );
            pu.points(
                Points::new("merge steps", pts)
                    .color(c)
                    .shape(MarkerShape::Square)
                    .radius(3.5)
                    .filled(false),
            );
        }
        for (g, (c, pts)) in groups {
            pu.points(
                Points::new(cache.group_name(&prefs.color, g), pts)
                    .color(c)
                    .radius(3.5)
                    .filled(true),
            );
        }
        if !box_selected.is_empty() {
            let pts: Vec<[f64; 2]> = cache
                .rows
                .iter()
                .filter(|&&i| box_selected.contains(runs.rows[i].record.id.as_str()))
                .map(|&i| [xs[i], ys[i]])
                .collect();
            pu.points(
                Points::new("box-selected", pts)
                    .color(theme::SELECTED)
                    .radius(5.0)
                    .filled(false),
            );
        }
        if let Some(i) = selected {
            pu.points(
                Points::new("selected", vec![[xs[i], ys[i]]])
                    .color(theme::SELECTED)
                    .radius(6.0)
                    .filled(false),
            );
        }
        let pointer = pu.pointer_coordinate();
        let r = pu.response().clone();
        let mut box_rect = None;
        if prefs.box_select {
            let start: Option<PlotPoint> = pu.ctx().data(|d| d.get_temp(box_start_id(r.id)));
            if r.drag_started()
                && let Some(p) = pointer
            {
                pu.ctx().data_mut(|d| d.insert_temp(box_start_id(r.id), p));
            }
            if let (Some(a), Some(p)) = (start, pointer) {
                let rect = [a.x.min(p.x), a.y.min(p.y), a.x.max(p.x), a.y.max(p.y)];
                pu.polygon(
                    Polygon::new(
                        "box",
                        vec![
                            [rect[0], rect[1]],
                            [rect[2], rect[1]],
                            [rect[2], rect[3]],
                            [rect[0], rect[3]],
                        ],
                    )
                    .fill_color(egui::Color32::from_white_alpha(20)),
                );
                if r.drag_stopped() {
                    box_rect = Some(rect);
                    pu.ctx()
                        .data_mut(|d| d.remove::<PlotPoint>(box_start_id(r.id)));
                }
            }
        }
        let nearest = pointer.and_then(|p| {
            let t = pu.transform();
            let at = t.position_from_point(&p);
            // Among the drawn points: a hidden one is within a grid cell (2 px) of one drawn.
            let mut best: Option<(f32, usize)> = None;
            for &i in drawn {
                let q = t.position_from_point(&PlotPoint::new(xs[i], ys[i]));
                let d = q.distance(at);
                if d <= PICK_RADIUS && best.is_none_or(|(bd, _)| d < bd) {
                    best = Some((d, i));
                }
            }
            best.map(|(_, i)| i)
        });
        let nearest_predicted = match (&overlay, pointer) {
            (Some(o), Some(p)) => o.nearest(pu.transform(), p),
            _ => None,
        };
        let nearest_step =
            pointer.and_then(|p| nearest_step(&cache.merge_steps, pu.transform(), p));
        (nearest, box_rect, fresh, nearest_predicted, nearest_step)
    });
    // The PNG export crops to this: the plot frame plus its tick labels and axis titles.
    let r = resp.response.rect;
    s.views.plot_rect = Some(egui::Rect::from_min_max(
        r.min - egui::vec2(70.0, 4.0),
        r.max + egui::vec2(4.0, 36.0),
    ));
    let b = resp.transform.bounds();
    s.views.pareto_view = Some([b.min()[0], b.min()[1], b.max()[0], b.max()[1]]);
    let (nearest, box_rect, fresh, nearest_predicted, nearest_step) = resp.inner;
    if fresh.is_some() {
        s.views.pareto_cache.drawn = fresh;
    }
    a11y_label(ui, &resp.response, "Pareto plot");
    if let Some(i) = nearest {
        let row = &s.runs.rows[i];
        let text = format!(
            "{} · {}\n{}\n{} = {} · {} = {}",
            row.record.id,
            row.record.model_name,
            row.summary,
            metric_label(&prefs.x),
            format_metric(&prefs.x, xs[i]),
            metric_label(&prefs.y),
            format_metric(&prefs.y, ys[i])
        );
        let domains = domain_lines(&row.record.metrics);
        let on = evaluated_on(&row.record.eval_json);
        let r = resp.response.clone().on_hover_ui_at_pointer(|ui| {
            ui.label(text);
            ui.weak(format!("accuracy measured on {on}"));
            if !domains.is_empty() {
                ui.separator();
                ui.weak("per domain of the evaluation suite (the values above are token-weighted over them):");
                for line in &domains {
                    ui.monospace(line);
                }
            }
        });
        if r.clicked() {
            out.push(Command::SelectRun(Some(row.record.id.clone())));
        }
    }
    if nearest.is_none()
        && let (Some(i), Some(r)) = (nearest_predicted, &s.search.result)
        && let Some(p) = r.points.get(i)
    {
        let resp = resp.response.clone().on_hover_ui_at_pointer(|ui| {
            ui.label(format!(
                "predicted: {} · KLD {:.4}\n{}",
                human_bytes(p.predicted.bytes as usize),
                p.predicted.kld_mean,
                p.summary
            ));
            ui.weak("click to load this assignment into the editor");
        });
        if resp.clicked() {
            out.push(Command::LoadSearchPoint(i));
        }
    }
    if nearest.is_none()
        && nearest_predicted.is_none()
        && let Some((i, k)) = nearest_step
        && let Some(p) = s
            .views
            .pareto_cache
            .merge_steps
            .iter()
            .find(|(r, _)| *r == i)
            .and_then(|(_, steps)| steps.get(k))
    {
        let id = s.runs.rows[i].record.id.clone();
        let resp = resp.response.clone().on_hover_ui_at_pointer(|ui| {
            ui.label(format!(
                "{id} · merge step {}: after folding in {}\n{} = {} · {} = {}",
                p.step,
                p.model,
                metric_label(&prefs.x),
                format_metric(&prefs.x, p.at[0]),
                metric_label(&prefs.y),
                format_metric(&prefs.y, p.at[1])
            ));
            ui.weak("click to load the merge up to this step into the editor");
        });
        if resp.clicked() {
            out.push(Command::LoadMergeStep { id, step: p.step });
        }
    }
    if let Some([x0, y0, x1, y1]) = box_rect {
        let ids = s
            .views
            .pareto_cache
            .rows
            .iter()
            .filter(|&&i| (x0..=x1).contains(&xs[i]) && (y0..=y1).contains(&ys[i]))
            .map(|&i| s.runs.rows[i].record.id.clone())
            .collect();
        out.push(Command::SetBoxSelection(ids));
    }
    selection_ui(ui, s, out);
}

/// The merge step under the pointer, if any: (row, index into its steps).
fn nearest_step(
    merge_steps: &[(usize, Vec<StepPoint>)],
    t: &egui_plot::PlotTransform,
    p: PlotPoint,
) -> Option<(usize, usize)> {
    let at = t.position_from_point(&p);
    merge_steps
        .iter()
        .flat_map(|(i, steps)| steps.iter().enumerate().map(move |(k, q)| (*i, k, q.at)))
        .map(|(i, k, q)| {
            let d = t
                .position_from_point(&PlotPoint::new(q[0], q[1]))
                .distance(at);
            (d, (i, k))
        })
        .filter(|(d, _)| *d <= PICK_RADIUS)
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, hit)| hit)
}

/// Each plotted export row measured as deployed (tagged `export-of-RUN`) joined to its run,
/// when both have the plot's two metrics: (run, export) points.
fn deployed_links(s: &Studio, rows: &[usize], x: &str, y: &str) -> Vec<([f64; 2], [f64; 2])> {
    let at = |i: usize| [s.runs.value(x, i), s.runs.value(y, i)];
    rows.iter()
        .filter_map(|&i| {
            let tags = &s.runs.rows[i].record.tags;
            let run = tags.iter().find_map(|t| t.strip_prefix(EXPORT_OF_TAG))?;
            let j = s.runs.index_of(run)?;
            let (a, b) = (at(j), at(i));
            a.iter().chain(&b).all(|v| v.is_finite()).then_some((a, b))
        })
        .collect()
}

/// The search's predicted front over the plot's axes, each prediction joined to the stored
/// run of its recipe (if it was measured), and how well the prediction ranked them.
struct SearchOverlay {
    /// Predicted points, in the result's order.
    points: Vec<[f64; 2]>,
    /// (predicted, measured) pairs.
    links: Vec<([f64; 2], [f64; 2])>,
    /// Spearman correlation of predicted and measured y over the links.
    rho: f64,
    /// Geometric mean of measured / predicted y over the links.
    ratio: f64,
}

/// Only for size on x and KLD or decode speed on y: what the search predicts.
fn search_overlay(s: &Studio, x: &str, y: &str) -> Option<SearchOverlay> {
    let r = s.search.result.as_ref()?;
    if x != "bytes" || !matches!(y, "kld_mean" | "decode_tok_s") {
        return None;
    }
    let predicted_y = |p: &crate::search::Prediction| match y {
        "kld_mean" => p.kld_mean,
        _ => p.decode_tok_s,
    };
    let points: Vec<[f64; 2]> = r
        .points
        .iter()
        .map(|p| [p.predicted.bytes as f64, predicted_y(&p.predicted)])
        .collect();
    let mut links = Vec::new();
    for (&row, &at) in s.search.measured_rows(&s.runs).iter().zip(&points) {
        if let Some(i) = row {
            let (mx, my) = (s.runs.value(x, i), s.runs.value(y, i));
            if mx.is_finite() && my.is_finite() {
                links.push((at, [mx, my]));
            }
        }
    }
    let (a, b): (Vec<f64>, Vec<f64>) = links.iter().map(|(p, m)| (p[1], m[1])).unzip();
    Some(SearchOverlay {
        points,
        rho: crate::search::spearman(&a, &b),
        ratio: crate::search::measured_ratio(&a, &b),
        links,
    })
}

impl SearchOverlay {
    fn caption(&self) -> String {
        let mut text = format!(
            "search: {} predicted points (hollow diamonds; click one to load it)",
            self.points.len()
        );
        if !self.links.is_empty() {
            text.push_str(&format!(" · {} measured", self.links.len()));
        }
        if self.rho.is_finite() {
            text.push_str(&format!(
                " · Spearman rank correlation, predicted vs measured: {:.3}",
                self.rho
            ));
        }
        if self.ratio.is_finite() {
            text.push_str(&format!(
                " · measured / predicted: {:.2}x (geometric mean)",
                self.ratio
            ));
        }
        text
    }

    fn draw(&self, pu: &mut egui_plot::PlotUi<'_>) {
        if self.points.len() > 1 {
            pu.line(
                Line::new("predicted front", self.points.clone())
                    .color(theme::PREDICTED)
                    .style(LineStyle::dashed_loose())
                    .allow_band(false),
            );
        }
        pu.points(
            Points::new("predicted", self.points.clone())
                .color(theme::PREDICTED)
                .shape(MarkerShape::Diamond)
                .radius(4.0)
                .filled(false),
        );
        for (p, m) in &self.links {
            pu.line(
                Line::new("prediction to measurement", vec![*p, *m])
                    .color(theme::PREDICTED)
                    .width(1.0)
                    .allow_band(false),
            );
        }
    }

    /// The predicted point under the pointer, if any.
    fn nearest(&self, t: &egui_plot::PlotTransform, p: PlotPoint) -> Option<usize> {
        let at = t.position_from_point(&p);
        self.points
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let d = t
                    .position_from_point(&PlotPoint::new(q[0], q[1]))
                    .distance(at);
                (d, i)
            })
            .filter(|(d, _)| *d <= PICK_RADIUS)
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, i)| i)
    }
}

/// A metric's name for axes and pickers: what it is, with its unit.
pub fn metric_label(metric: &str) -> String {
    let (base, domain) = match split_domain_metric(metric) {
        Some((m, d)) => (m, Some(d)),
        None => (metric, None),
    };
    let name = match base {
        "bytes" => "size (bytes)".to_string(),
        "base_bytes" => "base size (bytes)".to_string(),
        "avg_bits" => "bits per weight".to_string(),
        "ppl" => "perplexity".to_string(),
        "base_ppl" => "base perplexity".to_string(),
        "kld_mean" => "KLD mean (nats)".to_string(),
        "kld_p99" => "KLD p99 (nats)".to_string(),
        "top1_agree" => "top-1 agreement".to_string(),
        "rms_dp" => "RMS Δp".to_string(),
        "decode_tok_s" => "decode (tokens/s)".to_string(),
        "prefill_tok_s" => "prefill (tokens/s)".to_string(),
        "compress_seconds" => "compression time (s)".to_string(),
        "duration_s" => "run time (s)".to_string(),
        "sparsity" => "sparsity".to_string(),
        "task_acc_mean" => "task accuracy (mean)".to_string(),
        other => other.replace('_', " "),
    };
    match domain {
        Some(d) => format!("{name}, {d}"),
        None => name,
    }
}

/// What a metric means, for tooltips: its definition and which way is better.
pub fn metric_help(metric: &str) -> String {
    let (base, domain) = match split_domain_metric(metric) {
        Some((m, d)) => (m, Some(d)),
        None => (metric, None),
    };
    let what = match base {
        "bytes" => {
            "Bytes of every weight in its stored form (packed codes, scales, embeddings, norms)"
        }
        "avg_bits" => "Stored bits per weight of the compressed linears, scales included",
        "ppl" => "Perplexity on the evaluated text (llama.cpp's windowing); lower is better",
        "kld_mean" => {
            "Mean KL divergence (nats) of the compressed model's next-token distribution from \
             the base model's, over the scored positions; 0 = identical, lower is better"
        }
        "kld_p99" => "99th percentile of the per-position KL divergence (nats)",
        "top1_agree" => {
            "Fraction of positions where the compressed and the base model pick the same most \
             likely token; higher is better"
        }
        "rms_dp" => "Root mean square change of the correct token's probability",
        "decode_tok_s" => {
            "Tokens per second generating one at a time, median of 3 timed rounds on this \
             machine; higher is better"
        }
        "prefill_tok_s" => "Tokens per second processing a prompt window in one pass",
        "task_acc_mean" => "Mean exact-match accuracy over the zoo's tasks; higher is better",
        "sparsity" => "Fraction of block-linear weights pruned away",
        _ => "",
    };
    let mut text = if what.is_empty() {
        metric.to_string()
    } else {
        what.to_string()
    };
    if let Some(d) = domain {
        text.push_str(&format!(", on the suite's {d} domain only"));
    }
    text
}

/// Tick labels in the metric's unit: bytes as kB/MB/GB, fractions as percentages.
fn axis_formatter(metric: &str) -> impl Fn(GridMark, &std::ops::RangeInclusive<f64>) -> String {
    let metric = metric.to_string();
    move |mark, _| format_metric(&metric, mark.value)
}

/// One line per domain of a suite run: its perplexity, KLD and top-1 agreement.
pub fn domain_lines(metrics: &std::collections::BTreeMap<String, f64>) -> Vec<String> {
    let mut by_domain: std::collections::BTreeMap<&str, [Option<f64>; 3]> = Default::default();
    for (name, v) in metrics {
        let Some((metric, domain)) = split_domain_metric(name) else {
            continue;
        };
        let slot = match metric {
            "ppl" => 0,
            "kld_mean" => 1,
            "top1_agree" => 2,
            _ => continue,
        };
        by_domain.entry(domain).or_default()[slot] = Some(*v);
    }
    by_domain
        .into_iter()
        .map(|(d, [ppl, kld, top1])| {
            let f = |v: Option<f64>, w: &dyn Fn(f64) -> String| v.map_or("–".into(), w);
            format!(
                "{d:<10} ppl {:>8}  KLD {:>7}  top-1 {:>6}",
                f(ppl, &|v| format!("{v:.2}")),
                f(kld, &|v| format!("{v:.4}")),
                f(top1, &|v| format!("{:.1} %", 100.0 * v)),
            )
        })
        .collect()
}

impl super::state::ParetoPrefs {
    fn selected_row(&self, runs: &RunTable, id: Option<&str>) -> Option<usize> {
        let i = runs.index_of(id?)?;
        let (x, y) = (runs.value(&self.x, i), runs.value(&self.y, i));
        (x.is_finite() && y.is_finite()).then_some(i)
    }
}

fn metric_combo(ui: &mut egui::Ui, label: &str, value: &mut String, metrics: &[String]) {
    ui.label(label);
    let resp = egui::ComboBox::from_id_salt(("axis", label))
        .selected_text(metric_label(value))
        .width(170.0)
        .show_ui(ui, |ui| {
            for m in metrics {
                let r = ui.selectable_value(value, m.clone(), metric_label(m));
                r.on_hover_text(metric_help(m));
            }
        })
        .response
        .on_hover_text(metric_help(value));
    a11y_label(ui, &resp, &format!("{label} axis"));
}

fn controls_ui(ui: &mut egui::Ui, s: &mut Studio, metrics: &[String], out: &mut Vec<Command>) {
    let p = &mut s.state.pareto;
    ui.horizontal_wrapped(|ui| {
        metric_combo(ui, "X", &mut p.x, metrics);
        metric_combo(ui, "Y", &mut p.y, metrics);
        ui.label("Colour");
        let text = match &p.color {
            ColorBy::None => "none".to_string(),
            ColorBy::Family => "technique family".to_string(),
            ColorBy::Metric(m) => m.clone(),
        };
        egui::ComboBox::from_id_salt("colour-by")
            .selected_text(text)
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut p.color, ColorBy::None, "none");
                ui.selectable_value(&mut p.color, ColorBy::Family, "technique family");
                for m in metrics {
                    ui.selectable_value(&mut p.color, ColorBy::Metric(m.clone()), m);
                }
            });
        ui.checkbox(&mut p.show_front, "Front");
        ui.checkbox(&mut p.box_select, "Box select")
            .on_hover_text("Drag a box to select runs (instead of panning)");
        if ui.button("Export PNG…").clicked() {
            out.push(Command::ExportPlotPng);
        }
        if ui.button("Export SVG…").clicked() {
            out.push(Command::ExportPlotSvg);
        }
    });
}

/// Model / tag / family / text filters; shared with the history panel.
pub fn filters_ui(ui: &mut egui::Ui, runs: &RunTable, f: &mut RunFilter, salt: &str) {
    let facets = runs.facets();
    ui.horizontal_wrapped(|ui| {
        let combo = |ui: &mut egui::Ui,
                     label: &str,
                     value: &mut String,
                     options: &std::collections::BTreeSet<String>| {
            ui.label(label);
            let shown = if value.is_empty() {
                "all".to_string()
            } else {
                value.clone()
            };
            let resp = egui::ComboBox::from_id_salt((salt, label))
                .selected_text(shown)
                .show_ui(ui, |ui| {
                    ui.selectable_value(value, String::new(), "all");
                    for o in options {
                        ui.selectable_value(value, o.clone(), o);
                    }
                })
                .response;
            a11y_label(ui, &resp, &format!("{salt} {label} filter"));
        };
        combo(ui, "Model", &mut f.model, &facets.models);
        combo(ui, "Tag", &mut f.tag, &facets.tags);
        combo(ui, "Technique", &mut f.family, &facets.families);
        ui.label("Search");
        ui.add(egui::TextEdit::singleline(&mut f.text).desired_width(120.0));
        ui.checkbox(&mut f.ok_only, "Only successful");
    });
}

/// The selected run and the box selection, with their actions.
fn selection_ui(ui: &mut egui::Ui, s: &mut Studio, out: &mut Vec<Command>) {
    if let Some(id) = s.state.selected_run.clone()
        && let Some(i) = s.runs.index_of(&id)
    {
        let row = &s.runs.rows[i];
        ui.horizontal_wrapped(|ui| {
            ui.strong(format!("Selected {id}"));
            ui.label(&row.summary);
        });
        run_actions_ui(ui, &id, out);
    }
    if !s.views.box_selection.is_empty() {
        ui.horizontal_wrapped(|ui| {
            ui.label(format!("{} runs in the box", s.views.box_selection.len()));
            let ids = s.views.box_selection.clone();
            tag_entry_ui(ui, &mut s.views.tag_input, &ids, "Tag them", out);
            if ui.button("Clear box").clicked() {
                out.push(Command::SetBoxSelection(Vec::new()));
            }
        });
    }
}

/// Load / export buttons for one run.
pub fn run_actions_ui(ui: &mut egui::Ui, id: &str, out: &mut Vec<Command>) {
    ui.horizontal_wrapped(|ui| {
        if ui.button("Load recipe into editor").clicked() {
            out.push(Command::LoadRunRecipe(id.to_string()));
        }
        if ui.button("Export recipe…").clicked() {
            out.push(Command::ExportRecipe(id.to_string()));
        }
        if ui
            .button("Export model…")
            .on_hover_text("The compressed model as a Hugging Face directory (safetensors)")
            .clicked()
        {
            out.push(Command::ExportModel(id.to_string()));
        }
        if ui
            .button("Export GGUF…")
            .on_hover_text("The compressed model as one GGUF file for llama.cpp")
            .clicked()
        {
            out.push(Command::ExportGguf(id.to_string()));
        }
        if ui.button("Export llama.cpp types…").clicked() {
            out.push(Command::ExportTypes(id.to_string()));
        }
    });
}

/// The plot as SVG, written from the plotted data (decimated like the screen).
pub fn plot_svg(s: &Studio) -> String {
    let p = &s.state.pareto;
    let c = &s.views.pareto_cache;
    let (Some(xs), Some(ys), Some(b)) = (s.runs.column(&p.x), s.runs.column(&p.y), c.bounds) else {
        return super::plot_export::empty_svg("no runs to plot");
    };
    let rows = decimate(xs, ys, &c.rows, b, (400, 250), |i| {
        c.color_of(&s.runs, &p.color, i).0
    });
    let points: Vec<(f64, f64, egui::Color32)> = rows
        .iter()
        .map(|&i| (xs[i], ys[i], c.color_of(&s.runs, &p.color, i).1))
        .collect();
    let front: Vec<(f64, f64)> = if p.show_front {
        c.front.iter().map(|&i| (xs[i], ys[i])).collect()
    } else {
        Vec::new()
    };
    super::plot_export::scatter_svg(&super::plot_export::SvgPlot {
        x_label: &p.x,
        y_label: &p.y,
        bounds: b,
        points: &points,
        front: &front,
        title: &format!("{} runs, {} on the front", c.rows.len(), c.front.len()),
    })
}
