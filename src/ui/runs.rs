//! The runs the Pareto and history panels show: records from the store held column-wise, so a
//! frame over 100 000 runs reads plain `Vec<f64>`s, plus filters, 2-D fronts and decimation for
//! drawing. Built off the UI thread when the store is loaded. No egui here.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::store::pareto::Sense;
use crate::store::record::metric_base;
use crate::store::{ExperimentRecord, Status};
use crate::technique::recipe::Recipe;

use super::editor::{recipe_family, recipe_summary};

/// Columns every run has besides its metrics.
pub const DURATION: &str = "duration_s";

/// One run as the panels show it.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub record: ExperimentRecord,
    /// Technique family of its recipe (`shift-add`, `prune`, `mixed`, …).
    pub family: &'static str,
    /// One-line recipe summary for hovers and tables.
    pub summary: String,
    /// What the text filter searches (id, summary, error), lower-cased once here.
    search: String,
}

impl RunRow {
    pub fn new(record: ExperimentRecord) -> Self {
        let (family, summary) = match Recipe::from_json(&record.recipe_json) {
            Ok(r) => (recipe_family(&r), recipe_summary(&r)),
            Err(e) => ("none", format!("unreadable recipe: {e}")),
        };
        let mut search = format!("{}\n{summary}", record.id);
        if let Some(e) = &record.error {
            search.push('\n');
            search.push_str(e);
        }
        Self {
            search: search.to_lowercase(),
            record,
            family,
            summary,
        }
    }

    pub fn recipe(&self) -> Result<Recipe, String> {
        Recipe::from_json(&self.record.recipe_json).map_err(|e| e.to_string())
    }

    pub fn status_label(&self) -> &'static str {
        match self.record.status {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// Whether larger values of a metric are better (for fronts and hypervolumes): the store's
/// convention, so the app's fronts match `reparam pareto`.
pub fn maximize(metric: &str) -> bool {
    matches!(Sense::for_metric(metric), Sense::Maximize)
}

/// Metrics offered first in the axis pickers, in this order.
pub const PREFERRED_METRICS: [&str; 9] = [
    "bytes",
    "avg_bits",
    "decode_tok_s",
    "prefill_tok_s",
    "ppl",
    "kld_mean",
    "top1_agree",
    "task_acc_mean",
    "compress_seconds",
];

/// Which runs to show.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RunFilter {
    /// Model name; empty = all.
    pub model: String,
    /// A tag the run must carry; empty = any.
    pub tag: String,
    /// Technique family; empty = any.
    pub family: String,
    /// Substring of id, recipe summary or error; empty = any.
    pub text: String,
    /// Hide failed and cancelled runs.
    pub ok_only: bool,
}

/// All runs, column-wise.
#[derive(Debug, Clone, Default)]
pub struct RunTable {
    pub rows: Vec<RunRow>,
    /// Metric name → value per row (NaN where a run lacks it).
    columns: HashMap<String, Vec<f64>>,
    /// Run id → row.
    index: HashMap<String, usize>,
    /// Distinct models, tags and families, kept up to date on every change (filter pickers
    /// read them every frame).
    facets: Facets,
    /// Bumped on every change so views can cache.
    pub generation: u64,
    /// The history panel's polars frame of these runs; dropped on every change, rebuilt on
    /// demand (and built ahead, off the UI thread, when the store is read).
    frame: Option<std::sync::Arc<polars::prelude::DataFrame>>,
}

impl RunTable {
    pub fn from_records(records: Vec<ExperimentRecord>) -> Self {
        let mut t = Self::default();
        t.rows.reserve(records.len());
        for r in records {
            t.push(r);
        }
        t
    }

    /// Adds a run, or replaces the row with the same id.
    pub fn push(&mut self, record: ExperimentRecord) {
        self.generation += 1;
        self.frame = None;
        if let Some(&i) = self.index.get(&record.id) {
            for (k, col) in self.columns.iter_mut() {
                col[i] = value_of(&record, k);
            }
            for (k, v) in &record.metrics {
                self.columns
                    .entry(k.clone())
                    .or_insert_with(|| vec![f64::NAN; self.rows.len()])[i] = *v;
            }
            let row = RunRow::new(record);
            self.facets.add(&row);
            self.rows[i] = row;
            return;
        }
        let n = self.rows.len();
        for (k, col) in self.columns.iter_mut() {
            col.push(value_of(&record, k));
        }
        let mut keys: Vec<&String> = record.metrics.keys().collect();
        let dur = DURATION.to_string();
        keys.push(&dur);
        for k in keys {
            if !self.columns.contains_key(k) {
                let mut col = vec![f64::NAN; n];
                col.push(value_of(&record, k));
                self.columns.insert(k.clone(), col);
            }
        }
        self.index.insert(record.id.clone(), n);
        let row = RunRow::new(record);
        self.facets.add(&row);
        self.rows.push(row);
    }

    /// Replaces a run's tags (after the store changed them).
    pub fn set_tags(&mut self, id: &str, tags: Vec<String>) {
        if let Some(&i) = self.index.get(id) {
            self.facets.tags.extend(tags.iter().cloned());
            self.rows[i].record.tags = tags;
            self.generation += 1;
            self.frame = None;
        }
    }

    /// The runs as a polars frame for the history query (see [`super::history_query`]),
    /// built now if the runs changed since the last call.
    pub fn history_frame(
        &mut self,
    ) -> polars::prelude::PolarsResult<std::sync::Arc<polars::prelude::DataFrame>> {
        if let Some(f) = &self.frame {
            return Ok(f.clone());
        }
        let f = std::sync::Arc::new(super::history_query::history_frame(self)?);
        self.frame = Some(f.clone());
        Ok(f)
    }

    pub fn column(&self, metric: &str) -> Option<&[f64]> {
        self.columns.get(metric).map(Vec::as_slice)
    }

    pub fn value(&self, metric: &str, row: usize) -> f64 {
        self.columns
            .get(metric)
            .and_then(|c| c.get(row))
            .copied()
            .unwrap_or(f64::NAN)
    }

    /// Metric names, preferred ones first, then the rest alphabetically.
    pub fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = PREFERRED_METRICS
            .iter()
            .filter(|m| self.columns.contains_key(**m))
            .map(|m| (*m).to_string())
            .collect();
        let rest: BTreeSet<&String> = self
            .columns
            .keys()
            .filter(|k| !PREFERRED_METRICS.contains(&k.as_str()))
            .collect();
        names.extend(rest.into_iter().cloned());
        names
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Distinct model names, tags and families present (a removed tag stays offered until
    /// the store is read again).
    pub fn facets(&self) -> &Facets {
        &self.facets
    }

    /// Rows passing `filter`, in table order.
    /// Rows passing `filter`, in table order: the one filter rule of every run list in the app
    /// (Pareto, Compare, History, which then sorts them).
    pub fn filtered(&self, filter: &RunFilter) -> Vec<usize> {
        let text = filter.text.trim().to_lowercase();
        (0..self.rows.len())
            .filter(|&i| {
                let r = &self.rows[i];
                (filter.model.is_empty() || r.record.model_name == filter.model)
                    && (filter.tag.is_empty() || r.record.tags.contains(&filter.tag))
                    && (filter.family.is_empty() || r.family == filter.family)
                    && (!filter.ok_only || r.record.status == Status::Ok)
                    && (text.is_empty() || r.search.contains(&text))
            })
            .collect()
    }
}

fn value_of(record: &ExperimentRecord, metric: &str) -> f64 {
    if metric == DURATION {
        return record.duration_s;
    }
    record.metrics.get(metric).copied().unwrap_or(f64::NAN)
}

/// Distinct values for filter pickers.
#[derive(Debug, Clone, Default)]
pub struct Facets {
    pub models: BTreeSet<String>,
    pub tags: BTreeSet<String>,
    pub families: BTreeSet<String>,
}

impl Facets {
    fn add(&mut self, r: &RunRow) {
        if !self.models.contains(&r.record.model_name) {
            self.models.insert(r.record.model_name.clone());
        }
        for t in &r.record.tags {
            if !self.tags.contains(t) {
                self.tags.insert(t.clone());
            }
        }
        if !self.families.contains(r.family) {
            self.families.insert(r.family.to_string());
        }
    }
}

/// Indices (into `xs`/`ys`) of the non-dominated points of `rows` with finite values, sorted
/// by x ascending: the store's front ([`crate::store::pareto::front`]), so the app draws the
/// front `reparam pareto` and `reparam compare` print, ties included.
pub fn front_2d(xs: &[f64], ys: &[f64], rows: &[usize], max_x: bool, max_y: bool) -> Vec<usize> {
    let sense = |max| {
        if max {
            Sense::Maximize
        } else {
            Sense::Minimize
        }
    };
    let finite: Vec<usize> = rows
        .iter()
        .copied()
        .filter(|&i| xs[i].is_finite() && ys[i].is_finite())
        .collect();
    let pts: Vec<Vec<f64>> = finite.iter().map(|&i| vec![xs[i], ys[i]]).collect();
    crate::store::pareto::front(&pts, &[sense(max_x), sense(max_y)])
        .into_iter()
        .map(|k| finite[k])
        .collect()
}

/// Keeps one row per cell of a `cols × rows` grid over `bounds` (`[min_x, min_y, max_x,
/// max_y]`), so drawing costs the same for 100 000 runs as for a few thousand; rows outside the
/// bounds are dropped. `key` splits cells further (e.g. by colour group) so no colour vanishes.
pub fn decimate(
    xs: &[f64],
    ys: &[f64],
    rows: &[usize],
    bounds: [f64; 4],
    grid: (usize, usize),
    key: impl Fn(usize) -> u32,
) -> Vec<usize> {
    let [x0, y0, x1, y1] = bounds;
    let (w, h) = (
        (x1 - x0).max(f64::MIN_POSITIVE),
        (y1 - y0).max(f64::MIN_POSITIVE),
    );
    let (gc, gr) = (grid.0.max(1), grid.1.max(1));
    let mut seen: HashSet<(u32, u32, u32)> = HashSet::with_capacity(rows.len().min(gc * gr));
    let mut out = Vec::new();
    for &i in rows {
        let (x, y) = (xs[i], ys[i]);
        if !(x.is_finite() && y.is_finite()) || x < x0 || x > x1 || y < y0 || y > y1 {
            continue;
        }
        let cx = (((x - x0) / w) * gc as f64) as u32;
        let cy = (((y - y0) / h) * gr as f64) as u32;
        if seen.insert((cx, cy, key(i))) {
            out.push(i);
        }
    }
    out
}

/// Bounding box `[min_x, min_y, max_x, max_y]` of the finite points, padded by 5 %.
pub fn data_bounds(xs: &[f64], ys: &[f64], rows: &[usize]) -> Option<[f64; 4]> {
    let mut b = [
        f64::INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
    ];
    for &i in rows {
        let (x, y) = (xs[i], ys[i]);
        if x.is_finite() && y.is_finite() {
            b = [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)];
        }
    }
    if !b[0].is_finite() {
        return None;
    }
    let px = ((b[2] - b[0]) * 0.05).max(1e-9 * b[2].abs().max(1.0));
    let py = ((b[3] - b[1]) * 0.05).max(1e-9 * b[3].abs().max(1.0));
    Some([b[0] - px, b[1] - py, b[2] + px, b[3] + py])
}

/// Difference of two runs' metrics (`b − a`), for the compare view.
pub fn metric_deltas(a: &ExperimentRecord, b: &ExperimentRecord) -> Vec<(String, f64, f64)> {
    let keys: BTreeSet<&String> = a.metrics.keys().chain(b.metrics.keys()).collect();
    keys.into_iter()
        .map(|k| {
            let va = a.metrics.get(k).copied().unwrap_or(f64::NAN);
            let vb = b.metrics.get(k).copied().unwrap_or(f64::NAN);
            (k.clone(), va, vb)
        })
        .collect()
}

/// A continual-merge run's timeline: one row per step, columns from the step objects' keys.
pub fn steps_table(steps_json: &str) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let v: serde_json::Value = serde_json::from_str(steps_json).map_err(|e| e.to_string())?;
    let steps = match &v {
        serde_json::Value::Array(a) => a.clone(),
        serde_json::Value::Object(o) => match o.get("steps") {
            Some(serde_json::Value::Array(a)) => a.clone(),
            _ => vec![v.clone()],
        },
        other => vec![other.clone()],
    };
    let mut cols: Vec<String> = Vec::new();
    for s in &steps {
        if let serde_json::Value::Object(o) = s {
            for k in o.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
    }
    let rows = steps
        .iter()
        .map(|s| match s {
            serde_json::Value::Object(o) => cols
                .iter()
                .map(|c| o.get(c).map_or(String::new(), cell_text))
                .collect(),
            other => vec![cell_text(other)],
        })
        .collect();
    if cols.is_empty() {
        cols.push("step".into());
    }
    Ok((cols, rows))
}

/// A continual-merge run's timeline as chart series: each task's accuracy and their mean
/// against the step, and the perplexity after each step (absent in runs stored before it was
/// recorded).
#[derive(Debug, Default, PartialEq)]
pub struct TimelineSeries {
    /// (name, points) per task, then `mean`.
    pub accuracy: Vec<(String, Vec<[f64; 2]>)>,
    pub ppl: Vec<[f64; 2]>,
}

pub fn timeline_series(steps_json: &str) -> Result<TimelineSeries, String> {
    let v: serde_json::Value = serde_json::from_str(steps_json).map_err(|e| e.to_string())?;
    let serde_json::Value::Array(steps) = v else {
        return Err("a timeline is a list of steps".into());
    };
    let mut out = TimelineSeries::default();
    let mut mean = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let step = s
            .get("step")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or((i + 1) as f64);
        if let Some(serde_json::Value::Object(tasks)) = s.get("tasks") {
            for (task, acc) in tasks {
                let Some(acc) = acc.as_f64() else { continue };
                match out.accuracy.iter_mut().find(|(n, _)| n == task) {
                    Some((_, pts)) => pts.push([step, acc]),
                    None => out.accuracy.push((task.clone(), vec![[step, acc]])),
                }
            }
        }
        if let Some(m) = s.get("task_acc_mean").and_then(serde_json::Value::as_f64) {
            mean.push([step, m]);
        }
        if let Some(p) = s.get("ppl").and_then(serde_json::Value::as_f64) {
            out.ppl.push([step, p]);
        }
    }
    if !mean.is_empty() {
        out.accuracy.push(("mean".into(), mean));
    }
    Ok(out)
}

/// One intermediate model of a continual-merge run, placed on the Pareto plot's axes.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPoint {
    /// 1-based merge step (the models merged so far).
    pub step: usize,
    /// The model folded in at this step.
    pub model: String,
    pub at: [f64; 2],
}

/// A merge run's steps on the axes `x` and `y`: `merged_models` is the step, `ppl`,
/// `task_acc_mean` and `task_NAME` are the step's own measurements, and any other metric
/// (bytes, speed) is the run's, which merging does not change. Empty unless one axis changes
/// from step to step, or where a step lacks a value.
pub fn step_points(
    steps_json: &str,
    run_metrics: &std::collections::BTreeMap<String, f64>,
    x: &str,
    y: &str,
) -> Vec<StepPoint> {
    let per_step = |m: &str| m == "merged_models" || m == "ppl" || m.starts_with("task_");
    if !per_step(x) && !per_step(y) {
        return Vec::new();
    }
    let Ok(serde_json::Value::Array(steps)) = serde_json::from_str(steps_json) else {
        return Vec::new();
    };
    let value = |s: &serde_json::Value, step: usize, m: &str| -> Option<f64> {
        match m {
            "merged_models" => Some(step as f64),
            "ppl" | "task_acc_mean" => s.get(m)?.as_f64(),
            _ => match m.strip_prefix("task_") {
                Some(task) => s.get("tasks")?.get(task)?.as_f64(),
                None => run_metrics.get(m).copied(),
            },
        }
    };
    let mut out = Vec::with_capacity(steps.len());
    for (i, s) in steps.iter().enumerate() {
        let step = s
            .get("step")
            .and_then(serde_json::Value::as_u64)
            .map_or(i + 1, |v| v as usize);
        let (Some(vx), Some(vy)) = (value(s, step, x), value(s, step, y)) else {
            return Vec::new();
        };
        if !(vx.is_finite() && vy.is_finite()) {
            return Vec::new();
        }
        let model = s.get("model").and_then(serde_json::Value::as_str);
        out.push(StepPoint {
            step,
            model: model.unwrap_or_default().to_string(),
            at: [vx, vy],
        });
    }
    out
}

fn cell_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), format_value),
        other => other.to_string(),
    }
}

/// Compact number formatting for tables and hovers.
pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.3} G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.3} M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1} k", v / 1e3)
    } else if a != 0.0 && a < 1e-3 {
        format!("{v:.3e}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

/// What a run's accuracy was measured on, from its stored evaluation settings.
pub fn evaluated_on(eval_json: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(eval_json) else {
        return "unknown (no stored settings)".into();
    };
    if let Some(s) = v["suite"].as_str() {
        return format!("suite {s}");
    }
    if let Some(h) = v["text"].as_str() {
        return format!("a text file (content {h})");
    }
    if v["defaults"].as_u64().unwrap_or(1) >= 2 {
        "the model's default: suite held-out (a zoo model: its held-out lang text)".into()
    } else {
        "the default of the time: the licence texts (a zoo model: its lang text)".into()
    }
}

/// Metrics that are fractions of 1, shown as percentages.
pub fn is_fraction_metric(metric: &str) -> bool {
    let base = metric_base(metric);
    matches!(base, "top1_agree" | "sparsity" | "rms_dp") || base.starts_with("task_")
}

/// A metric's value in its unit: bytes as kB/MB/GB, fractions as percentages, the rest by
/// [`format_value`] (one rule for every table, hover and axis of the app).
pub fn format_metric(metric: &str, v: f64) -> String {
    let base = metric_base(metric);
    if !v.is_finite() {
        "—".into()
    } else if base.ends_with("bytes") {
        human_bytes(v.max(0.0) as usize)
    } else if is_fraction_metric(base) {
        format!("{:.1} %", 100.0 * v)
    } else {
        format_value(v)
    }
}

/// `1234567` → `1.23 MB`.
pub fn human_bytes(b: usize) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-step merge timeline as `run` stores it.
    const TWO_STEPS: &str = r#"[
        {"step": 1, "model": "zoo:a", "ppl": 3.5, "tasks": {"a": 0.9, "b": 0.1}, "task_acc_mean": 0.5},
        {"step": 2, "model": "zoo:b", "ppl": 4.0, "tasks": {"a": 0.6, "b": 0.8}, "task_acc_mean": 0.7}
    ]"#;

    #[test]
    fn a_timeline_becomes_one_series_per_task_their_mean_and_the_perplexity() {
        let json = TWO_STEPS;
        let t = timeline_series(json).unwrap();
        let names: Vec<&str> = t.accuracy.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "mean"]);
        assert_eq!(t.accuracy[1].1, [[1.0, 0.1], [2.0, 0.8]]);
        assert_eq!(t.ppl, [[1.0, 3.5], [2.0, 4.0]]);
        // A run stored before per-step perplexity, without tasks: no series, no error.
        let old = timeline_series(r#"[{"step": 1, "model": "m", "lambda": 1.0}]"#).unwrap();
        assert_eq!(old, TimelineSeries::default());
        assert!(timeline_series("{").is_err());
    }

    #[test]
    fn merge_steps_sit_at_their_own_values_and_the_runs_elsewhere() {
        let json = TWO_STEPS;
        let run = std::collections::BTreeMap::from([("bytes".to_string(), 100.0)]);
        let pts = step_points(json, &run, "merged_models", "task_acc_mean");
        let at: Vec<[f64; 2]> = pts.iter().map(|p| p.at).collect();
        assert_eq!(at, [[1.0, 0.5], [2.0, 0.7]]);
        assert_eq!(pts[1].model, "zoo:b");
        let by_bytes = step_points(json, &run, "bytes", "task_b");
        assert_eq!(
            by_bytes.iter().map(|p| p.at).collect::<Vec<_>>(),
            [[100.0, 0.1], [100.0, 0.8]]
        );
        assert_eq!(
            step_points(json, &run, "ppl", "merged_models")[0].at,
            [3.5, 1.0]
        );
        // Neither axis changes over the steps: nothing to draw beyond the run itself.
        assert!(step_points(json, &run, "bytes", "bytes").is_empty());
        // A metric the run lacks, or an unreadable timeline: no points.
        assert!(step_points(json, &run, "decode_tok_s", "ppl").is_empty());
        assert!(step_points("{", &run, "merged_models", "ppl").is_empty());
    }

    #[test]
    fn the_evaluated_text_is_named_from_the_stored_settings() {
        assert_eq!(
            evaluated_on(r#"{"suite":"held-out","text":null}"#),
            "suite held-out"
        );
        assert!(evaluated_on(r#"{"text":"ab12"}"#).contains("ab12"));
        assert!(evaluated_on(r#"{"text":null,"defaults":2}"#).contains("held-out"));
        assert!(evaluated_on(r#"{"text":null}"#).contains("licence"));
        assert!(evaluated_on("").contains("unknown"));
    }

    #[test]
    fn values_read_in_one_style_and_metrics_in_their_units() {
        // Around a million the style does not switch between plain digits and exponents.
        assert_eq!(format_value(977_408.0), "977.4 k");
        assert_eq!(format_value(1_125_000.0), "1.125 M");
        assert_eq!(format_value(0.25), "0.2500");
        assert_eq!(format_metric("bytes", 78_415_314.0), "78.42 MB");
        assert_eq!(format_metric("top1_agree", 0.682), "68.2 %");
        assert_eq!(format_metric("kld_mean@code", 0.5019), "0.5019");
        assert_eq!(format_metric("top1_agree@prose", 0.5), "50.0 %");
        assert_eq!(format_metric("ppl", f64::NAN), "—");
    }

    #[test]
    fn front_is_non_dominated_and_sorted() {
        let xs = [1.0, 2.0, 3.0, 2.5, 4.0, f64::NAN];
        let ys = [5.0, 3.0, 1.0, 4.0, 0.5, 0.0];
        let rows: Vec<usize> = (0..6).collect();
        assert_eq!(front_2d(&xs, &ys, &rows, false, false), vec![0, 1, 2, 4]);
        // Maximising y: the best y with the smallest x.
        assert_eq!(front_2d(&xs, &ys, &rows, false, true), vec![0]);
        // Duplicated front points all stay on it, as in `reparam pareto`.
        let (xs, ys) = ([1.0, 1.0, 2.0, 2.0], [2.0, 2.0, 1.0, 3.0]);
        assert_eq!(
            front_2d(&xs, &ys, &[0, 1, 2, 3], false, false),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn decimation_keeps_one_point_per_cell_and_drops_outside() {
        let xs: Vec<f64> = (0..1000).map(|i| (i % 10) as f64 * 0.1).collect();
        let ys: Vec<f64> = (0..1000).map(|i| (i / 100) as f64 * 0.1).collect();
        let rows: Vec<usize> = (0..1000).collect();
        let kept = decimate(&xs, &ys, &rows, [0.0, 0.0, 0.45, 1.0], (10, 10), |_| 0);
        // x in {0, .1, .2, .3, .4} × y in 10 values = 50 occupied cells.
        assert_eq!(kept.len(), 50);
    }
}
