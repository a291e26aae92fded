//! The history panel: every run as a sortable, filterable table; the selected run's tags,
//! actions and (for continual merges) per-step timeline; and the compare view — two tagged sets
//! overlaid with their fronts and hypervolumes, and a per-layer diff of two runs' recipes with
//! their metric deltas.

use eframe::egui;
use egui_plot::{Legend, Line, Plot, Points};

use crate::store::pareto::Sense;
use crate::store::query::Objective;

use super::command::Command;
use super::history_query::query_rows;
use super::pareto_panel::{filters_ui, run_actions_ui};
use super::runs::{
    RunFilter, RunTable, TimelineSeries, format_metric, format_value, front_2d, maximize,
    metric_deltas, steps_table, timeline_series,
};
use super::shell::{a11y_label, tag_entry_ui};
use super::studio::Studio;
use super::theme;

const ROW_HEIGHT: f32 = 20.0;
/// Fixed columns before the metric columns.
const FIXED: [&str; 5] = ["id", "created_at", "model", "status", "recipe"];

/// Sorted, filtered row order, recomputed when the runs, filter or sort change.
#[derive(Debug, Clone, Default)]
pub struct HistoryCache {
    key: Option<(u64, RunFilter, String, bool)>,
    pub order: Vec<usize>,
    /// Why the last query failed, shown above the table.
    pub error: Option<String>,
}

impl HistoryCache {
    /// Recomputes the order through the polars query when the runs, filter or sort changed.
    /// Should the query fail (it should not), the table falls back to the unsorted filter.
    pub fn update(
        &mut self,
        runs: &mut RunTable,
        filter: &RunFilter,
        sort: &str,
        descending: bool,
    ) {
        let key = (
            runs.generation,
            filter.clone(),
            sort.to_string(),
            descending,
        );
        if self.key.as_ref() == Some(&key) {
            return;
        }
        self.key = Some(key);
        let rows = runs.filtered(filter);
        let result = runs
            .history_frame()
            .and_then(|f| query_rows(&f, &rows, sort, descending));
        match result {
            Ok(order) => {
                self.order = order;
                self.error = None;
            }
            Err(e) => {
                self.order = rows;
                self.error = Some(format!("the history query failed ({e}); showing unsorted"));
            }
        }
    }
}

pub fn history_ui(ui: &mut egui::Ui, s: &mut Studio, out: &mut Vec<Command>) {
    ui.horizontal_wrapped(|ui| {
        if ui.button("Reload store").clicked() {
            out.push(Command::ReloadStore);
        }
        // In the toolbar, not at the end of the header row, where a wide table pushed it out
        // of the window.
        let h = &mut s.state.history;
        ui.menu_button("Columns", |ui| {
            for m in s.runs.metric_names() {
                let mut on = h.columns.contains(&m);
                if ui
                    .checkbox(&mut on, super::pareto_panel::metric_label(&m))
                    .on_hover_text(super::pareto_panel::metric_help(&m))
                    .changed()
                {
                    if on {
                        h.columns.push(m);
                    } else {
                        h.columns.retain(|c| *c != m);
                    }
                }
            }
        });
        ui.weak(format!("store {}", s.store_dir().display()));
    });
    filters_ui(ui, &s.runs, &mut s.state.history.filter, "history");
    let h = s.state.history.clone();
    s.views
        .history_cache
        .update(&mut s.runs, &h.filter, &h.sort, h.descending);
    if let Some(e) = &s.views.history_cache.error {
        ui.colored_label(theme::ERROR, e);
    }
    // Sized from the window, so a small window keeps room for the table above it.
    let room = ui.available_height();
    egui::Panel::bottom("history-details")
        .resizable(true)
        .default_size((room * 0.45).clamp(120.0, 320.0))
        .max_size((room * 0.7).max(120.0))
        .show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                details_ui(ui, s, out);
                ui.separator();
                compare_ui(ui, s, out);
                ui.separator();
                search_progress_ui(ui, &s.runs);
            });
        });
    table_ui(ui, s, out);
}

/// Per model, the hypervolume (size against KLD) of the runs the searches measured (tagged
/// `search`), after each run in the order they were made: whether searching still pays.
fn search_progress_ui(ui: &mut egui::Ui, runs: &RunTable) {
    ui.strong("Search progress");
    let mut by_model: std::collections::BTreeMap<&str, Vec<(&str, Vec<f64>)>> = Default::default();
    for row in &runs.rows {
        let r = &row.record;
        let (bytes, kld) = (r.metrics.get("bytes"), r.metrics.get("kld_mean"));
        if r.status == crate::store::Status::Ok
            && r.tags.iter().any(|t| t == "search")
            && let (Some(&b), Some(&k)) = (bytes, kld)
            && b.is_finite()
            && k.is_finite()
        {
            by_model
                .entry(r.model_name.as_str())
                .or_default()
                .push((r.created_at.as_str(), vec![b, k]));
        }
    }
    if by_model.is_empty() {
        ui.weak(
            "No measured search points yet: run a search (Recipe panel) and queue points of its \
             front as jobs.",
        );
        return;
    }
    let senses = [Sense::Minimize, Sense::Minimize];
    let lines: Vec<(String, Vec<[f64; 2]>)> = by_model
        .into_iter()
        .map(|(model, mut pts)| {
            pts.sort_by(|a, b| a.0.cmp(b.0));
            let points: Vec<Vec<f64>> = pts.into_iter().map(|(_, p)| p).collect();
            // Just worse than the worst measured point, so every point counts.
            let reference: Vec<f64> = (0..2)
                .map(|m| points.iter().map(|p| p[m]).fold(0.0, f64::max) * 1.1)
                .collect();
            let h = crate::store::pareto::hypervolume_history(&points, &senses, &reference);
            let line = h
                .into_iter()
                .enumerate()
                .map(|(i, v)| [(i + 1) as f64, v])
                .collect();
            (model.to_string(), line)
        })
        .collect();
    Plot::new("search-progress-plot")
        .height(160.0)
        .allow_scroll(false)
        .legend(Legend::default())
        .x_axis_label("measured search points")
        .y_axis_label("hypervolume (size × KLD)")
        .show(ui, |pu| {
            for (i, (model, line)) in lines.into_iter().enumerate() {
                let c = theme::CATEGORICAL[i % theme::CATEGORICAL.len()];
                pu.line(Line::new(model.clone(), line.clone()).color(c).width(1.5));
                pu.points(Points::new(model, line).color(c).radius(2.5));
            }
        });
}

/// What the compare view's hypervolume is.
const HYPERVOLUME_HELP: &str = "Hypervolume: the area of the plane the set's front dominates, \
    measured up to a reference point just worse than the worst value of either set in each \
    metric (both sets share it, and the reparam compare command uses the same point). Larger \
    is better.";

fn table_ui(ui: &mut egui::Ui, s: &mut Studio, out: &mut Vec<Command>) {
    let h = &mut s.state.history;
    let metric_cols = h.columns.clone();
    let widths = |c: &str| match c {
        "id" => 110.0,
        "created_at" => 170.0,
        "model" => 80.0,
        "status" => 70.0,
        "recipe" => 260.0,
        _ => 90.0,
    };
    let header = |ui: &mut egui::Ui, h: &mut super::state::HistoryPrefs| {
        ui.horizontal(|ui| {
            for c in FIXED
                .iter()
                .map(|c| c.to_string())
                .chain(metric_cols.iter().cloned())
            {
                let arrow = if h.sort == c {
                    if h.descending { " v" } else { " ^" }
                } else {
                    ""
                };
                let resp = ui.add_sized(
                    [widths(&c), ROW_HEIGHT],
                    egui::Button::new(format!("{c}{arrow}")),
                );
                if resp.clicked() {
                    if h.sort == c {
                        h.descending = !h.descending;
                    } else {
                        h.sort = c.clone();
                        h.descending = c == "created_at";
                    }
                }
            }
        });
    };
    let order = &s.views.history_cache.order;
    let selected = s.state.selected_run.clone();
    // The header scrolls sideways with the rows, so columns stay under their names.
    egui::ScrollArea::horizontal()
        .id_salt("history-table-h")
        .auto_shrink([false, false])
        .show(ui, |ui| {
            header(ui, h);
            egui::ScrollArea::vertical()
                .id_salt("history-table-v")
                .auto_shrink([false, false])
                .show_rows(ui, ROW_HEIGHT, order.len(), |ui, range| {
                    for &i in &order[range] {
                        let row = &s.runs.rows[i];
                        let r = &row.record;
                        let is_sel = selected.as_deref() == Some(r.id.as_str());
                        ui.horizontal(|ui| {
                            let resp = ui.add_sized(
                                [widths("id"), ROW_HEIGHT],
                                egui::Button::selectable(is_sel, r.id.as_str()),
                            );
                            if resp.clicked() {
                                out.push(Command::SelectRun(Some(r.id.clone())));
                            }
                            let status_color = match row.status_label() {
                                "ok" => theme::OK,
                                "failed" => theme::ERROR,
                                _ => theme::WARN,
                            };
                            ui.add_sized(
                                [widths("created_at"), ROW_HEIGHT],
                                egui::Label::new(&r.created_at).truncate(),
                            );
                            ui.add_sized(
                                [widths("model"), ROW_HEIGHT],
                                egui::Label::new(&r.model_name).truncate(),
                            );
                            ui.add_sized(
                                [widths("status"), ROW_HEIGHT],
                                egui::Label::new(
                                    egui::RichText::new(row.status_label()).color(status_color),
                                ),
                            );
                            let tags = if r.tags.is_empty() {
                                String::new()
                            } else {
                                format!("[{}] ", r.tags.join(", "))
                            };
                            ui.add_sized(
                                [widths("recipe"), ROW_HEIGHT],
                                egui::Label::new(format!("{tags}{}", row.summary)).truncate(),
                            )
                            .on_hover_text(r.error.clone().unwrap_or_else(|| row.summary.clone()));
                            for c in &metric_cols {
                                ui.add_sized(
                                    [90.0, ROW_HEIGHT],
                                    egui::Label::new(format_metric(c, s.runs.value(c, i))),
                                );
                            }
                        });
                    }
                });
        });
}

fn details_ui(ui: &mut egui::Ui, s: &mut Studio, out: &mut Vec<Command>) {
    let Some(id) = s.state.selected_run.clone() else {
        ui.weak("Select a run to see its tags, metrics and actions.");
        return;
    };
    let Some(i) = s.runs.index_of(&id) else {
        ui.weak(format!("run {id} is not in the store"));
        return;
    };
    let row = s.runs.rows[i].clone();
    let r = &row.record;
    ui.horizontal_wrapped(|ui| {
        ui.strong(format!("Run {id}"));
        ui.label(format!(
            "{} · {} · {:.1} s · {}",
            r.model_name,
            row.status_label(),
            r.duration_s,
            r.created_at
        ));
    });
    ui.label(&row.summary);
    if let Some(e) = &r.error {
        ui.colored_label(theme::ERROR, e);
    }
    // A merge's timeline first: it is what such a run is opened for.
    if let Some(series) = r
        .steps_json
        .as_deref()
        .and_then(|j| timeline_series(j).ok())
    {
        timeline_chart(ui, &r.id, &series, out);
    }
    ui.horizontal_wrapped(|ui| {
        ui.label("Tags");
        for t in &r.tags {
            ui.monospace(t);
            if ui
                .small_button("x")
                .on_hover_text(format!("Remove tag {t}"))
                .clicked()
            {
                out.push(Command::RemoveTag {
                    id: id.clone(),
                    tag: t.clone(),
                });
            }
        }
        tag_entry_ui(
            ui,
            &mut s.views.tag_input,
            std::slice::from_ref(&id),
            "Add tag",
            out,
        );
    });
    run_actions_ui(ui, &id, out);
    ui.horizontal_wrapped(|ui| {
        if ui.button("Compare as A").clicked() {
            out.push(Command::SetCompareRun {
                side_b: false,
                id: Some(id.clone()),
            });
        }
        if ui.button("Compare as B").clicked() {
            out.push(Command::SetCompareRun {
                side_b: true,
                id: Some(id.clone()),
            });
        }
    });
    egui::CollapsingHeader::new("Metrics")
        .id_salt("run-metrics")
        .show(ui, |ui| {
            ui.weak(format!(
                "accuracy measured on {}",
                super::runs::evaluated_on(&r.eval_json)
            ));
            egui::Grid::new("run-metrics-grid")
                .striped(true)
                .show(ui, |ui| {
                    for (k, v) in &r.metrics {
                        ui.label(k);
                        ui.monospace(format_metric(k, *v));
                        ui.end_row();
                    }
                });
        });
    if let Some(steps) = &r.steps_json {
        ui.strong("Merge timeline");
        match steps_table(steps) {
            Ok((cols, rows)) => {
                egui::Grid::new("merge-steps").striped(true).show(ui, |ui| {
                    for c in &cols {
                        ui.strong(c);
                    }
                    ui.end_row();
                    for row in rows {
                        for cell in row {
                            ui.monospace(cell);
                        }
                        ui.end_row();
                    }
                });
            }
            Err(e) => {
                ui.colored_label(theme::ERROR, format!("unreadable timeline: {e}"));
            }
        }
    }
}

/// Task accuracy (each task, and their mean in bold) and perplexity after each merge step,
/// side by side: where a method starts forgetting. Clicking a step loads the merge up to it.
fn timeline_chart(
    ui: &mut egui::Ui,
    run_id: &str,
    series: &TimelineSeries,
    out: &mut Vec<Command>,
) {
    let height = 120.0;
    let steps = series
        .accuracy
        .iter()
        .flat_map(|(_, p)| p)
        .chain(&series.ppl)
        .fold(0.0f64, |m, p| m.max(p[0]));
    let mut clicked = |resp: egui_plot::PlotResponse<()>| {
        let pos = resp.response.interact_pointer_pos();
        if let (true, Some(pos)) = (resp.response.clicked(), pos) {
            let step = resp.transform.value_from_position(pos).x.round();
            if step >= 1.0 && step <= steps {
                out.push(Command::LoadMergeStep {
                    id: run_id.to_string(),
                    step: step as usize,
                });
            }
        }
    };
    ui.horizontal(|ui| {
        let width = (ui.available_width() / 2.0 - 8.0).max(120.0);
        if !series.accuracy.is_empty() {
            let resp = Plot::new(format!("timeline-acc-{run_id}"))
                .width(width)
                .height(height)
                .x_axis_label("models merged")
                .y_axis_label("task accuracy")
                .include_y(0.0)
                .include_y(1.0)
                // Room past the last step for the legend (top right, where accuracies end).
                .include_x(steps + 0.9)
                .legend(Legend::default())
                .show(ui, |plot| {
                    for (name, pts) in &series.accuracy {
                        let line = Line::new(name.clone(), pts.clone());
                        let line = if name == "mean" {
                            line.width(3.0)
                        } else {
                            line
                        };
                        plot.line(line);
                        plot.points(Points::new(name.clone(), pts.clone()).radius(3.0));
                    }
                });
            clicked(resp);
        }
        if !series.ppl.is_empty() {
            let resp = Plot::new(format!("timeline-ppl-{run_id}"))
                .width(width)
                .height(height)
                .x_axis_label("models merged")
                .y_axis_label("perplexity")
                .show(ui, |plot| {
                    plot.line(Line::new("ppl", series.ppl.clone()));
                    plot.points(Points::new("ppl", series.ppl.clone()).radius(3.0));
                });
            clicked(resp);
        }
    });
}

/// A tagged set's points on the Pareto axes, its front and (for the hypervolume) its points.
struct SetView {
    points: Vec<[f64; 2]>,
    front: Vec<[f64; 2]>,
}

fn set_view(runs: &RunTable, tag: &str, x: &str, y: &str) -> SetView {
    let filter = RunFilter {
        tag: tag.to_string(),
        ok_only: true,
        ..RunFilter::default()
    };
    let (Some(xs), Some(ys)) = (runs.column(x), runs.column(y)) else {
        return SetView {
            points: Vec::new(),
            front: Vec::new(),
        };
    };
    let rows: Vec<usize> = runs
        .filtered(&filter)
        .into_iter()
        .filter(|&i| xs[i].is_finite() && ys[i].is_finite())
        .collect();
    let front = front_2d(xs, ys, &rows, maximize(x), maximize(y));
    SetView {
        points: rows.iter().map(|&i| [xs[i], ys[i]]).collect(),
        front: front.iter().map(|&i| [xs[i], ys[i]]).collect(),
    }
}

/// Hypervolumes of both sets against the reference `reparam compare` uses (the store's one
/// rule, [`crate::store::query::shared_hypervolumes`]), on the Pareto axes.
pub fn hypervolumes(a: &[[f64; 2]], b: &[[f64; 2]], x: &str, y: &str) -> (f64, f64) {
    let objective = |metric: &str| Objective {
        metric: metric.to_string(),
        sense: Sense::for_metric(metric),
    };
    let pts = |s: &[[f64; 2]]| -> Vec<Vec<f64>> { s.iter().map(|p| p.to_vec()).collect() };
    let (_, ha, hb) =
        crate::store::query::shared_hypervolumes(&pts(a), &pts(b), &[objective(x), objective(y)]);
    (ha, hb)
}

fn compare_ui(ui: &mut egui::Ui, s: &mut Studio, _out: &mut [Command]) {
    ui.strong("Compare");
    let tags: Vec<String> = s.runs.facets().tags.iter().cloned().collect();
    let (x, y) = (s.state.pareto.x.clone(), s.state.pareto.y.clone());
    let h = &mut s.state.history;
    ui.horizontal_wrapped(|ui| {
        for (label, value) in [("Set A", &mut h.tag_a), ("Set B", &mut h.tag_b)] {
            ui.label(format!("{label} tag"));
            let resp = egui::ComboBox::from_id_salt(label)
                .selected_text(if value.is_empty() {
                    "—".to_string()
                } else {
                    value.clone()
                })
                .show_ui(ui, |ui| {
                    for t in &tags {
                        ui.selectable_value(value, t.clone(), t);
                    }
                })
                .response;
            a11y_label(ui, &resp, label);
        }
        ui.weak(format!("on the Pareto axes: {x} vs {y}"));
    });
    if !h.tag_a.is_empty() && !h.tag_b.is_empty() {
        let a = set_view(&s.runs, &h.tag_a, &x, &y);
        let b = set_view(&s.runs, &h.tag_b, &x, &y);
        let (hva, hvb) = hypervolumes(&a.points, &b.points, &x, &y);
        ui.horizontal_wrapped(|ui| {
            ui.colored_label(
                theme::SET_A,
                format!(
                    "A '{}': {} runs, {} on its front, hypervolume {}",
                    h.tag_a,
                    a.points.len(),
                    a.front.len(),
                    format_value(hva)
                ),
            )
            .on_hover_text(HYPERVOLUME_HELP);
        });
        ui.horizontal_wrapped(|ui| {
            ui.colored_label(
                theme::SET_B,
                format!(
                    "B '{}': {} runs, {} on its front, hypervolume {}",
                    h.tag_b,
                    b.points.len(),
                    b.front.len(),
                    format_value(hvb)
                ),
            )
            .on_hover_text(HYPERVOLUME_HELP);
        });
        s.views.compare_hv = Some((hva, hvb));
        Plot::new("compare-plot")
            .height(220.0)
            // The wheel scrolls the panel around the plot (the plot zooms with Ctrl+wheel).
            .allow_scroll(false)
            .legend(Legend::default())
            .x_axis_label(super::pareto_panel::metric_label(&x))
            .y_axis_label(super::pareto_panel::metric_label(&y))
            .show(ui, |pu| {
                pu.points(
                    Points::new(format!("A {}", h.tag_a), a.points.clone())
                        .color(theme::SET_A)
                        .radius(3.0),
                );
                pu.points(
                    Points::new(format!("B {}", h.tag_b), b.points.clone())
                        .color(theme::SET_B)
                        .radius(3.0),
                );
                if a.front.len() > 1 {
                    pu.line(
                        Line::new("front A", a.front.clone())
                            .color(theme::SET_A)
                            .width(2.0),
                    );
                }
                if b.front.len() > 1 {
                    pu.line(
                        Line::new("front B", b.front.clone())
                            .color(theme::SET_B)
                            .width(2.0),
                    );
                }
            });
    } else {
        ui.weak(
            "Tag runs (select one, Add tag; or box-select on the Pareto plot), then pick two tags.",
        );
    }
    ui.separator();
    let (ra, rb) = (h.run_a.clone(), h.run_b.clone());
    ui.label(format!(
        "Per-layer diff: A = {}, B = {}",
        ra.as_deref().unwrap_or("—"),
        rb.as_deref().unwrap_or("—")
    ));
    let (Some(ra), Some(rb)) = (ra, rb) else {
        ui.weak("Select a run and press Compare as A, another and Compare as B.");
        return;
    };
    let (Some(ia), Some(ib)) = (s.runs.index_of(&ra), s.runs.index_of(&rb)) else {
        return;
    };
    let key = (
        ra.clone(),
        rb.clone(),
        s.model.loaded.as_ref().map(|m| m.summary.id.clone()),
    );
    if s.views.diff_cache.as_ref().map(|c| &c.0) != Some(&key) {
        let rows = layer_diff(s, ia, ib);
        s.views.diff_cache = Some((key, rows));
    }
    if let Some((_, rows)) = &s.views.diff_cache {
        match rows {
            Ok(rows) if rows.is_empty() => {
                ui.label("The two recipes plan every layer the same way.");
            }
            Ok(rows) => {
                egui::Grid::new("layer-diff").striped(true).show(ui, |ui| {
                    ui.strong("Layer");
                    ui.strong("A");
                    ui.strong("B");
                    ui.end_row();
                    for (l, a, b) in rows {
                        ui.monospace(l);
                        ui.label(a);
                        ui.label(b);
                        ui.end_row();
                    }
                });
            }
            Err(e) => {
                ui.colored_label(theme::ERROR, e);
            }
        }
    }
    let deltas = metric_deltas(&s.runs.rows[ia].record, &s.runs.rows[ib].record);
    egui::Grid::new("metric-deltas")
        .striped(true)
        .show(ui, |ui| {
            for h in ["Metric", "A", "B", "B - A"] {
                ui.strong(h);
            }
            ui.end_row();
            for (k, va, vb) in deltas {
                ui.label(&k);
                ui.monospace(format_metric(&k, va));
                ui.monospace(format_metric(&k, vb));
                ui.monospace(format_metric(&k, vb - va));
                ui.end_row();
            }
        });
}

/// Where two runs' recipes differ, resolved against the open model (the model both were made
/// for): [`crate::technique::recipe::plan_diff`], the rows `reparam compare` prints.
fn layer_diff(s: &Studio, ia: usize, ib: usize) -> Result<Vec<(String, String, String)>, String> {
    let ra = s.runs.rows[ia].recipe()?;
    let rb = s.runs.rows[ib].recipe()?;
    let Some(model) = s
        .model
        .loaded
        .as_ref()
        .filter(|m| m.summary.id == s.runs.rows[ia].record.model_id)
    else {
        return Err("open the model these runs were made on to diff them per layer".into());
    };
    let rows = crate::technique::recipe::plan_diff(&model.model.transformer, &ra, &rb)
        .map_err(|e| e.to_string())?;
    Ok(rows.into_iter().map(|d| (d.layer, d.a, d.b)).collect())
}
