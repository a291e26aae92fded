//! The search from the Recipe panel: a background pass that measures what the store's table
//! lacks and predicts the front, the result the Pareto panel draws beside the measured runs,
//! and "measure K points", which queues points of the front as ordinary jobs.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::{Activity, Studio};
use crate::model::LinearId;
use crate::search::{
    CandidateFile, DEFAULT_CANDIDATES, Goal, MeasureRequest, Prediction, search_model, spread,
};
use crate::technique::measure::Measured;
use crate::technique::recipe::{LayerPlan, Recipe};
use crate::ui::runs::RunTable;
use crate::ui::tasks::TaskEvent;

/// The Recipe panel's search settings (drafts, not persisted).
#[derive(Debug, Clone)]
pub struct SearchForm {
    /// A candidates file; empty: the bundled one (every family).
    pub candidates: String,
    /// Largest model in MB (0: no limit).
    pub max_mb: f64,
    /// Points of the front to run as jobs.
    pub measure_k: usize,
}

impl Default for SearchForm {
    fn default() -> Self {
        Self {
            candidates: String::new(),
            max_mb: 0.0,
            measure_k: 4,
        }
    }
}

/// One predicted point with its recipe.
#[derive(Debug, Clone)]
pub struct SearchPoint {
    pub recipe: Recipe,
    /// The recipe's hash: a stored run of this recipe is this point, measured.
    pub recipe_hash: String,
    pub predicted: Prediction,
    /// One line: how many layers each setting got.
    pub summary: String,
}

/// What the search's table measured for one layer at one setting.
#[derive(Debug, Clone)]
pub struct MeasuredSetting {
    pub plan: LayerPlan,
    /// KLD from the base with only this layer at this setting.
    pub kld: f64,
    pub bytes: usize,
    /// The layer's product time in the decode engine (seconds; NaN when untimed).
    pub seconds: f64,
}

/// A finished search.
#[derive(Debug, Clone)]
pub struct SearchResult {
    pub model_id: String,
    pub points: Vec<SearchPoint>,
    /// The measurement table by layer, for the layer map.
    pub layers: BTreeMap<LinearId, Vec<MeasuredSetting>>,
    /// Table rows measured by this search and found stored.
    pub measured_now: usize,
    pub reused: usize,
}

/// The search: its form, the pass under way and the last result.
#[derive(Default)]
pub struct SearchPass {
    pub form: SearchForm,
    pub result: Option<SearchResult>,
    pub running: Option<Activity>,
    /// Set to stop the running pass (checked between measurements).
    cancel: Arc<AtomicBool>,
    /// For each point of `result`, the row of its stored run, if it was measured; kept for
    /// one generation of the run table (the plot asks every frame).
    measured: RefCell<Option<(u64, Vec<Option<usize>>)>>,
}

impl SearchPass {
    /// The run-table row of each predicted point's measurement (a successful run of the same
    /// recipe on the same model), `None` where it was not measured.
    pub fn measured_rows(&self, runs: &RunTable) -> Vec<Option<usize>> {
        let Some(r) = &self.result else {
            return Vec::new();
        };
        if let Some((generation, rows)) = &*self.measured.borrow()
            && *generation == runs.generation
            && rows.len() == r.points.len()
        {
            return rows.clone();
        }
        let wanted: HashMap<&str, usize> = r
            .points
            .iter()
            .enumerate()
            .map(|(i, p)| (p.recipe_hash.as_str(), i))
            .collect();
        let mut rows = vec![None; r.points.len()];
        for (i, row) in runs.rows.iter().enumerate() {
            let rec = &row.record;
            if rec.model_id == r.model_id
                && rec.status == crate::store::Status::Ok
                && let Some(&p) = wanted.get(rec.recipe_hash.as_str())
            {
                rows[p].get_or_insert(i);
            }
        }
        *self.measured.borrow_mut() = Some((runs.generation, rows.clone()));
        rows
    }
}

/// The table's rows by layer and setting (the candidates' plans, dense included).
fn measured_settings(
    file: &CandidateFile,
    model: &crate::model::Model,
    rows: &[Measured],
) -> BTreeMap<LinearId, Vec<MeasuredSetting>> {
    let index: HashMap<(&str, &str), &Measured> = rows
        .iter()
        .map(|r| ((r.layer.as_str(), r.candidate.as_str()), r))
        .collect();
    let work = file.work(&model.transformer).unwrap_or_default();
    work.into_iter()
        .map(|(id, candidates)| {
            let layer = id.to_string();
            let settings = candidates
                .into_iter()
                .filter_map(|c| {
                    let r = index.get(&(layer.as_str(), c.key.as_str()))?;
                    Some(MeasuredSetting {
                        plan: c.plan,
                        kld: r.kld,
                        bytes: r.bytes,
                        seconds: r.seconds,
                    })
                })
                .collect();
            (id, settings)
        })
        .collect()
}

impl Studio {
    pub(super) fn run_search(&mut self) {
        if self.search.running.is_some() {
            return;
        }
        let Some(loaded) = self.model.loaded.clone() else {
            self.notice_error("open a model first");
            return;
        };
        let form = self.search.form.clone();
        let text = if form.candidates.trim().is_empty() {
            Ok(DEFAULT_CANDIDATES.to_string())
        } else {
            std::fs::read_to_string(form.candidates.trim())
                .map_err(|e| format!("reading {}: {e}", form.candidates.trim()))
        };
        let file = match text.and_then(|t| CandidateFile::from_toml(&t).map_err(|e| e.to_string()))
        {
            Ok(f) => f,
            Err(e) => {
                self.notice_error(format!("candidates: {e}"));
                return;
            }
        };
        let settings = &self.state.eval.settings;
        let request = MeasureRequest {
            calib_text: settings.calib_text.clone(),
            calib: settings.calib,
            seed: self.recipe.editor.recipe.seed,
            ..MeasureRequest::default()
        };
        let goal = Goal {
            max_bytes: (form.max_mb > 0.0).then_some((form.max_mb * 1e6) as u64),
            ..Goal::default()
        };
        self.search.running = Some(Activity {
            what: "search".into(),
            stage: "starting".into(),
            done: 0,
            total: 1,
            since: Instant::now(),
        });
        let cancel = Arc::new(AtomicBool::new(false));
        self.search.cancel = cancel.clone();
        let store = self.store.dir.clone();
        self.tasks.spawn(
            "search",
            move |tx| {
                let model = &loaded.model;
                let result = search_model(
                    &store,
                    model,
                    &file,
                    &request,
                    &goal,
                    &mut |stage, done, total| {
                        tx.send(TaskEvent::SearchProgress {
                            stage: stage.to_string(),
                            done,
                            total,
                        });
                        !cancel.load(Ordering::Relaxed)
                    },
                )
                .map(|out| SearchResult {
                    layers: measured_settings(&file, model, &out.table.rows),
                    model_id: model.id.clone(),
                    points: out
                        .front
                        .iter()
                        .zip(out.recipes)
                        .zip(out.summaries)
                        .map(|((f, recipe), summary)| SearchPoint {
                            recipe_hash: recipe.hash(),
                            summary,
                            recipe,
                            predicted: f.predicted,
                        })
                        .collect(),
                    measured_now: out.table.measured,
                    reused: out.table.reused,
                })
                .map_err(|e| format!("{e:#}"));
                tx.send(TaskEvent::Search(result));
            },
            |e| TaskEvent::Search(Err(e)),
        );
    }

    pub(super) fn cancel_search(&mut self) {
        if self.search.running.is_some() {
            self.search.cancel.store(true, Ordering::Relaxed);
        }
    }

    pub(super) fn on_search_progress(&mut self, stage: String, done: usize, total: usize) {
        if let Some(a) = &mut self.search.running {
            a.stage = stage;
            a.done = done;
            a.total = total;
        }
    }

    pub(super) fn on_search(&mut self, result: Result<SearchResult, String>) {
        self.search.running = None;
        match result {
            Ok(r) => {
                self.notice(format!(
                    "search finished: {} points on the predicted front ({} measurements new, {} \
                     reused); they are drawn on the Pareto plot of size against KLD",
                    r.points.len(),
                    r.measured_now,
                    r.reused
                ));
                self.search.result = Some(r);
                self.search.measured.replace(None);
            }
            Err(e) if self.search.cancel.load(Ordering::Relaxed) => {
                self.notice(format!("search stopped: {e}"));
            }
            Err(e) => self.notice_error(format!("search failed: {e}")),
        }
    }

    /// Queues `k` points spread along the predicted front as jobs tagged `search`.
    pub(super) fn measure_search_points(&mut self, k: usize) {
        let Some(r) = &self.search.result else {
            self.notice_error("run a search first");
            return;
        };
        let points: Vec<Recipe> = spread(r.points.len(), k)
            .into_iter()
            .map(|i| r.points[i].recipe.clone())
            .collect();
        for recipe in points {
            self.enqueue(recipe, "search point", Some("search"));
        }
    }

    /// Loads a predicted point's recipe into the editor.
    pub(super) fn load_search_point(&mut self, i: usize) {
        if let Some(p) = self.search.result.as_ref().and_then(|r| r.points.get(i)) {
            self.recipe.editor.set(p.recipe.clone());
            self.notice(format!("loaded the predicted point: {}", p.summary));
        }
    }
}
