//! The app's runtime: the persisted [`AppState`], the recipe editor, the loaded model, the runs,
//! the jobs, and the channels from background threads. [`Studio::frame`] is one frame: drain
//! events, draw the panels (which only push [`Command`]s), apply the commands. The eframe
//! wrapper and the kittest harness both drive this same type.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use eframe::egui;

use crate::jobs::{JobRunner, JobSpec};
use crate::model::{LinearId, load_spec_with_progress};
use crate::store::Store;
use crate::technique::recipe::{Recipe, ShiftAddKnobs};

use super::command::Command;
use super::dialogs::{DialogKind, FileDialogs};
use super::editor::{Analysis, RecipeEditor, recipe_summary, shift_bits};
use super::export::ExportKind;
use super::jobs::JobsView;
use super::model_info::{LoadedModel, ModelSummary, Sensitivity};
use super::pareto_panel::ParetoCache;
use super::runs::RunTable;
use super::state::{AppState, Panel};
use super::tasks::{DialogPurpose, TaskEvent, Tasks, Waker};

/// How the studio is started.
pub struct StudioOptions {
    /// The experiment store's directory.
    pub store_dir: PathBuf,
    pub dialogs: Arc<dyn FileDialogs>,
    /// Concurrent experiment jobs.
    pub workers: usize,
    /// Preferences restored from the last session.
    pub state: AppState,
}

/// A message in the status bar.
#[derive(Debug, Clone)]
pub struct Notice {
    pub text: String,
    pub is_error: bool,
}

/// A running export (or sensitivity pass), for a progress bar.
#[derive(Debug, Clone)]
pub struct Activity {
    pub what: String,
    pub stage: String,
    pub done: usize,
    pub total: usize,
    pub since: Instant,
}

/// Everything the app holds while it runs.
pub struct Studio {
    pub state: AppState,
    pub editor: RecipeEditor,
    analysis: Analysis,
    analysis_key: Option<(u64, String)>,
    /// The model shown and edited against.
    pub model: Option<LoadedModel>,
    /// A model being loaded: its spec and since when.
    pub loading: Option<(String, Instant)>,
    /// How far the model being loaded is.
    pub load_progress: Option<crate::model::LoadProgress>,
    pub load_error: Option<String>,
    pub sensitivity: Option<Sensitivity>,
    pub sensitivity_run: Option<Activity>,
    /// Set to stop the running sensitivity pass (checked between layers).
    sensitivity_cancel: Arc<AtomicBool>,
    pub runs: RunTable,
    pub store_loading: bool,
    /// Store files that could not be read (reported, never deleted).
    pub store_skipped: Vec<String>,
    pub jobs: JobsView,
    runner: JobRunner,
    store_dir: PathBuf,
    dialogs: Arc<dyn FileDialogs>,
    tasks: Tasks,
    waker: Waker,
    pub notices: Vec<Notice>,
    /// Runs inside the last box selection on the Pareto plot.
    pub box_selection: Vec<String>,
    pub export: Option<Activity>,
    pub pareto_cache: ParetoCache,
    /// Where the plot was drawn last frame (screen points), for the PNG export's crop.
    pub plot_rect: Option<egui::Rect>,
    /// Text typed into the tag boxes.
    pub tag_input: String,
    /// Drafts of the recipe editor's pattern-rule form.
    pub rule_form: super::recipe_panel::RuleForm,
    pub history_cache: super::history_panel::HistoryCache,
    /// Per-layer diff of the compare view, keyed by (run A, run B, open model id).
    #[allow(clippy::type_complexity)]
    pub diff_cache: Option<(
        (String, String, Option<String>),
        Result<Vec<(String, String, String)>, String>,
    )>,
    /// Hypervolumes of the compare view's two sets, as last drawn.
    pub compare_hv: Option<(f64, f64)>,
    commands: Vec<Command>,
    /// Frames drawn; the demo script and tests wait on it.
    pub frames: u64,
}

impl Studio {
    /// Opens the store, starts the job runner, and starts loading the remembered model and
    /// the store's runs in the background.
    pub fn new(opts: StudioOptions) -> anyhow::Result<Self> {
        let waker = Waker::default();
        let store =
            Store::open(&opts.store_dir).map_err(|e| anyhow::anyhow!("opening the store: {e}"))?;
        let runner = JobRunner::new(store, opts.workers.max(1), waker.as_fn());
        let editor = RecipeEditor::new(opts.state.recipe.clone().unwrap_or_default());
        let mut s = Self {
            state: opts.state,
            editor,
            analysis: Analysis::default(),
            analysis_key: None,
            model: None,
            loading: None,
            load_progress: None,
            load_error: None,
            sensitivity: None,
            sensitivity_run: None,
            sensitivity_cancel: Arc::new(AtomicBool::new(false)),
            runs: RunTable::default(),
            store_loading: false,
            store_skipped: Vec::new(),
            jobs: JobsView::default(),
            runner,
            store_dir: opts.store_dir,
            dialogs: opts.dialogs,
            tasks: Tasks::new(waker.clone()),
            waker,
            notices: Vec::new(),
            box_selection: Vec::new(),
            export: None,
            pareto_cache: ParetoCache::default(),
            plot_rect: None,
            tag_input: String::new(),
            rule_form: Default::default(),
            history_cache: Default::default(),
            diff_cache: None,
            compare_hv: None,
            commands: Vec::new(),
            frames: 0,
        };
        let spec = s.state.model_spec.clone();
        if !spec.is_empty() {
            s.open_model(spec);
        }
        s.reload_store();
        Ok(s)
    }

    /// One frame: events in, panels drawn, commands applied.
    pub fn frame(&mut self, ui: &mut egui::Ui) {
        self.poll(ui.ctx());
        self.ui(ui);
        self.apply_pending();
        self.frames += 1;
    }

    /// Queues a command as if a widget had pushed it (tests, the demo script, shortcuts).
    pub fn push(&mut self, cmd: Command) {
        self.commands.push(cmd);
    }

    /// Drains job and task events. Runs before drawing (eframe's `logic`).
    pub fn poll(&mut self, ctx: &egui::Context) {
        self.waker.set_context(ctx);
        for ev in self.runner.try_events() {
            if let Some(rec) = self.jobs.apply(ev) {
                if let Some(err) = &rec.error {
                    self.notice_error(format!("job {} failed: {err}", rec.id));
                }
                self.runs.push(rec);
            }
        }
        for ev in self.tasks.drain() {
            self.on_task(ctx, ev);
        }
        // Elapsed times and indeterminate progress move while work is under way.
        if self.jobs.active().next().is_some()
            || self.loading.is_some()
            || self.sensitivity_run.is_some()
            || self.export.is_some()
        {
            ctx.request_repaint_after(std::time::Duration::from_millis(250));
        }
    }

    /// The analysis of the edited recipe against the loaded model, recomputed on change.
    pub fn analysis(&mut self) -> &Analysis {
        let key = (
            self.editor.generation,
            self.model
                .as_ref()
                .map(|m| m.summary.id.clone())
                .unwrap_or_default(),
        );
        if self.analysis_key.as_ref() != Some(&key) {
            self.analysis = self.editor.analyse(
                self.model
                    .as_ref()
                    .map(|m| (&m.model.transformer, m.summary.as_ref())),
            );
            self.analysis_key = Some(key);
        }
        &self.analysis
    }

    pub fn summary(&self) -> Option<&Arc<ModelSummary>> {
        self.model.as_ref().map(|m| &m.summary)
    }

    pub fn notice(&mut self, text: impl Into<String>) {
        self.push_notice(text.into(), false);
    }

    pub fn notice_error(&mut self, text: impl Into<String>) {
        self.push_notice(text.into(), true);
    }

    fn push_notice(&mut self, text: String, is_error: bool) {
        if is_error {
            tracing::warn!("{text}");
        }
        self.notices.push(Notice { text, is_error });
        if self.notices.len() > 20 {
            self.notices.remove(0);
        }
    }

    /// The persisted state with the current recipe folded in.
    pub fn state_to_save(&self) -> AppState {
        AppState {
            recipe: Some(self.editor.recipe.clone()),
            ..self.state.clone()
        }
    }

    pub fn store_dir(&self) -> &std::path::Path {
        &self.store_dir
    }

    /// Applies the commands pushed during this frame, in order.
    pub fn apply_pending(&mut self) {
        let cmds = std::mem::take(&mut self.commands);
        for c in cmds {
            self.apply(c);
        }
    }

    /// Applies one command.
    pub fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::SwitchPanel(p) => self.state.panel = p,
            Command::OpenModel(spec) => self.open_model(spec),
            Command::OpenModelDialog(kind) => self.dialog(kind, "", DialogPurpose::OpenModel),
            Command::RunSensitivity => self.run_sensitivity(),
            Command::CancelSensitivity => {
                if self.sensitivity_run.is_some() {
                    self.sensitivity_cancel.store(true, Ordering::Relaxed);
                }
            }
            Command::SetSensitivityBits(b) => self.state.sensitivity_bits = b,
            Command::EditCells { targets, edit } => {
                let analysis = self.analysis().clone();
                self.editor.edit_cells(&targets, &edit, &analysis);
            }
            Command::ToggleFlatten(b) => self.editor.toggle_flatten(b),
            Command::SetMerge(m) => self.editor.set_merge(m),
            Command::SetSeed(s) => self.editor.set_seed(s),
            Command::AddRule(r) => self.editor.add_rule(r),
            Command::RemoveRule(i) => self.editor.remove_rule(i),
            Command::SetRecipe(r) => self.editor.set(r),
            Command::Undo => {
                if !self.editor.undo() {
                    self.notice("nothing to undo");
                }
            }
            Command::Redo => {
                if !self.editor.redo() {
                    self.notice("nothing to redo");
                }
            }
            Command::LoadRecipeDialog => {
                self.dialog(DialogKind::OpenRecipe, "", DialogPurpose::LoadRecipe);
            }
            Command::SaveRecipeDialog => match self.editor.recipe.to_toml() {
                Ok(text) => self.dialog(
                    DialogKind::SaveRecipe,
                    "recipe.toml",
                    DialogPurpose::SaveRecipe(text),
                ),
                Err(e) => self.notice_error(format!("{e:#}")),
            },
            Command::RunRecipe => {
                let recipe = self.editor.recipe.clone();
                self.submit(recipe, "run");
            }
            Command::RunSweep => self.run_sweep(),
            Command::CancelJob(id) => self.cancel(id),
            Command::CancelLatest => {
                let latest = self.jobs.active().filter(|e| !e.cancel_requested).last();
                match latest.map(|e| e.id) {
                    Some(id) => self.cancel(id),
                    None => self.notice("no running job to cancel"),
                }
            }
            Command::ClearFinishedJobs => self.jobs.clear_finished(),
            Command::SelectRun(id) => self.state.selected_run = id,
            Command::SetBoxSelection(ids) => self.box_selection = ids,
            Command::LoadRunRecipe(id) => self.load_run_recipe(&id),
            Command::AddTag { ids, tag } => self.change_tags(&ids, &tag, true),
            Command::RemoveTag { id, tag } => self.change_tags(&[id], &tag, false),
            Command::ReloadStore => self.reload_store(),
            Command::ExportPlotPng => {
                self.dialog(DialogKind::SavePng, "pareto.png", DialogPurpose::PlotPng);
            }
            Command::ExportPlotSvg => {
                self.dialog(DialogKind::SaveSvg, "pareto.svg", DialogPurpose::PlotSvg);
            }
            Command::ExportRecipe(id) => self.export_recipe(&id),
            Command::ExportModel(id) => {
                self.dialog(DialogKind::SaveModelDir, "", DialogPurpose::ExportModel(id));
            }
            Command::ExportGguf(id) => self.dialog(
                DialogKind::SaveGguf,
                &format!("{id}.gguf"),
                DialogPurpose::ExportGguf(id),
            ),
            Command::ExportTypes(id) => self.dialog(
                DialogKind::SaveTypes,
                "tensor-types.txt",
                DialogPurpose::ExportTypes(id),
            ),
            Command::SetCompareRun { side_b, id } => {
                if side_b {
                    self.state.history.run_b = id;
                } else {
                    self.state.history.run_a = id;
                }
            }
            Command::DismissNotices => self.notices.clear(),
        }
    }

    fn open_model(&mut self, spec: String) {
        self.loading = Some((spec.clone(), Instant::now()));
        self.load_progress = None;
        self.load_error = None;
        let spec2 = spec.clone();
        self.tasks.spawn(
            "load-model",
            move |tx| {
                let result = load_spec_with_progress(&spec, &mut |progress| {
                    tx.send(TaskEvent::LoadProgress {
                        spec: spec.clone(),
                        progress,
                    });
                })
                .map(|m| {
                    let summary = Arc::new(ModelSummary::from_model(&spec, &m));
                    LoadedModel {
                        model: Arc::new(m),
                        summary,
                    }
                })
                .map_err(|e| format!("{e}"));
                tx.send(TaskEvent::ModelLoaded { spec, result });
            },
            move |error| TaskEvent::ModelLoaded {
                spec: spec2,
                result: Err(error),
            },
        );
    }

    fn reload_store(&mut self) {
        self.store_loading = true;
        let dir = self.store_dir.clone();
        self.tasks.spawn(
            "load-store",
            move |tx| {
                let result = Store::open(&dir)
                    .and_then(|s| s.load())
                    .map(|snap| {
                        let skipped = snap
                            .skipped
                            .iter()
                            .map(|(p, e)| format!("{e} ({})", p.display()))
                            .collect();
                        let mut table = RunTable::from_records(snap.records);
                        // The history panel's polars frame, built here rather than on the
                        // UI thread (an error is reported when the panel queries it).
                        let _ = table.history_frame();
                        (table, skipped)
                    })
                    .map_err(|e| format!("reading the store: {e}"));
                tx.send(TaskEvent::StoreLoaded(result));
            },
            |e| TaskEvent::StoreLoaded(Err(e)),
        );
    }

    /// Opens a dialog on a helper thread (rfd blocks) and reports the answer as an event.
    fn dialog(&mut self, kind: DialogKind, suggested: &str, purpose: DialogPurpose) {
        let dialogs = self.dialogs.clone();
        let suggested = suggested.to_string();
        let p2 = purpose.clone();
        self.tasks.spawn(
            "dialog",
            move |tx| {
                let path = dialogs.pick(kind, &suggested);
                tx.send(TaskEvent::Dialog { purpose, path });
            },
            move |_| TaskEvent::Dialog {
                purpose: p2,
                path: None,
            },
        );
    }

    /// Submits `recipe` on the open model; an invalid recipe is refused with its error.
    fn submit(&mut self, mut recipe: Recipe, what: &str) {
        let spec = self.state.model_spec.clone();
        if spec.is_empty() {
            self.notice_error("open a model first");
            return;
        }
        if let Some(err) = self.analysis().first_error() {
            self.notice_error(format!("the recipe cannot run: {err}"));
            return;
        }
        recipe.model = Some(spec.clone());
        let label = format!("{what}: {}", recipe_summary(&recipe));
        let tags: Vec<String> = self
            .state
            .eval
            .tags
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect();
        if let Some(e) = tags.iter().find_map(|t| crate::store::check_tag(t).err()) {
            self.notice_error(format!("tags for new runs: {e}"));
            return;
        }
        let spec = JobSpec {
            label: label.clone(),
            model: spec,
            recipe,
            tags,
            force: false,
            eval: self.state.eval.settings.clone(),
        };
        let id = self.runner.submit(spec);
        self.jobs.add(id, label);
    }

    fn run_sweep(&mut self) {
        let base = self.editor.recipe.clone();
        let mut variants = vec![base.clone()];
        for d in [-1, 1] {
            let v = shift_bits(&base, d);
            if !variants.contains(&v) {
                variants.push(v);
            }
        }
        if variants.len() == 1 {
            self.notice("the sweep varies shift-add/RTN bits: set bits on some layers first");
        }
        for v in variants {
            self.submit(v, "sweep");
        }
    }

    fn cancel(&mut self, id: crate::jobs::JobId) {
        self.runner.cancel(id);
        if let Some(e) = self.jobs.get_mut(id) {
            e.cancel_requested = true;
        }
    }

    fn load_run_recipe(&mut self, id: &str) {
        let Some(i) = self.runs.index_of(id) else {
            self.notice_error(format!("no run {id}"));
            return;
        };
        match self.runs.rows[i].recipe() {
            Ok(r) => {
                self.editor.set(r);
                self.state.panel = Panel::Recipe;
                self.notice(format!("loaded the recipe of run {id} into the editor"));
            }
            Err(e) => self.notice_error(format!("run {id}: {e}")),
        }
    }

    fn change_tags(&mut self, ids: &[String], tag: &str, add: bool) {
        let tag = tag.trim().to_string();
        if let Err(e) = crate::store::check_tag(&tag) {
            self.notice_error(e.to_string());
            return;
        }
        let current: Vec<(String, Vec<String>)> = ids
            .iter()
            .filter_map(|id| {
                let i = self.runs.index_of(id)?;
                Some((id.clone(), self.runs.rows[i].record.tags.clone()))
            })
            .collect();
        let dir = self.store_dir.clone();
        self.tasks.spawn(
            "tags",
            move |tx| {
                let store = match Store::open(&dir) {
                    Ok(s) => s,
                    Err(e) => {
                        tx.send(TaskEvent::Saved(Err(format!("opening the store: {e}"))));
                        return;
                    }
                };
                for (id, mut tags) in current {
                    let r = if add {
                        store.add_tag(&id, &tag)
                    } else {
                        store.remove_tag(&id, &tag)
                    };
                    let result = r
                        .map(|_| {
                            tags.retain(|t| *t != tag);
                            if add {
                                tags.push(tag.clone());
                            }
                            tags
                        })
                        .map_err(|e| format!("{e}"));
                    tx.send(TaskEvent::Tags { id, result });
                }
            },
            |e| TaskEvent::Saved(Err(e)),
        );
    }

    fn run_sensitivity(&mut self) {
        let Some(loaded) = self.model.clone() else {
            self.notice_error("open a model first");
            return;
        };
        if self.sensitivity_run.is_some() {
            self.notice("a sensitivity pass is already running");
            return;
        }
        // Each layer at its setting in the edited recipe; the others at the chosen default.
        let recipe = self.editor.recipe.clone();
        if let Some(err) = self.analysis().first_error() {
            self.notice_error(format!("the recipe is invalid: {err}"));
            return;
        }
        let bits = self.state.sensitivity_bits;
        let fallback = (bits > 0).then(|| crate::technique::recipe::LayerPlan {
            quant: Some(crate::technique::recipe::Quant::ShiftAdd(
                ShiftAddKnobs::with_bits(bits),
            )),
            ..Default::default()
        });
        self.sensitivity_run = Some(Activity {
            what: "sensitivity".into(),
            stage: "starting".into(),
            done: 0,
            total: loaded.summary.linears.len(),
            since: Instant::now(),
        });
        let cancel = Arc::new(AtomicBool::new(false));
        self.sensitivity_cancel = cancel.clone();
        let opts = crate::technique::sensitivity::SensitivityOptions {
            calib: crate::technique::CalibOptions {
                samples: self.state.eval.settings.calib.samples.max(1),
                seq_len: self.state.eval.settings.calib.seq_len.max(8),
            },
            ctx: self.state.eval.settings.ctx.unwrap_or(128).max(8),
            ..Default::default()
        };
        let device = self.state.eval.settings.device;
        self.tasks.spawn(
            "sensitivity",
            move |tx| {
                let hash = recipe.hash();
                let model = device.open().and_then(|d| Ok(loaded.model.to_device(&d)?));
                let result = model
                    .and_then(|model| {
                        crate::technique::sensitivity::recipe_sensitivity(
                            &model,
                            &recipe,
                            fallback.as_ref(),
                            None,
                            None,
                            opts,
                            &mut |stage, done, total| {
                                tx.send(TaskEvent::SensitivityProgress {
                                    stage: stage.to_string(),
                                    done,
                                    total,
                                });
                                !cancel.load(Ordering::Relaxed)
                            },
                        )
                    })
                    .map(|r| Sensitivity::from_report(hash, r))
                    .map_err(|e| format!("{e:#}"));
                tx.send(TaskEvent::Sensitivity(result));
            },
            |e| TaskEvent::Sensitivity(Err(e)),
        );
    }

    fn export_recipe(&mut self, id: &str) {
        let Some(i) = self.runs.index_of(id) else {
            self.notice_error(format!("no run {id}"));
            return;
        };
        // The same file `reparam export --recipe` writes (a header naming run, model, hash).
        match crate::export::experiment::recipe_toml(&self.runs.rows[i].record) {
            Ok(text) => self.dialog(
                DialogKind::SaveRecipe,
                &format!("{id}.toml"),
                DialogPurpose::SaveRecipe(text),
            ),
            Err(e) => self.notice_error(format!("run {id}: {e:#}")),
        }
    }

    fn on_task(&mut self, ctx: &egui::Context, ev: TaskEvent) {
        match ev {
            TaskEvent::ModelLoaded { spec, result } => {
                if self.loading.as_ref().is_some_and(|(s, _)| *s != spec) {
                    return; // a newer load superseded this one
                }
                self.loading = None;
                self.load_progress = None;
                match result {
                    Ok(m) => {
                        self.state.model_spec = spec;
                        if self
                            .sensitivity
                            .as_ref()
                            .is_some_and(|s| s.model_id != m.summary.id)
                        {
                            self.sensitivity = None;
                        }
                        self.model = Some(m);
                        self.load_error = None;
                    }
                    Err(e) => {
                        self.notice_error(format!("cannot open {spec}: {e}"));
                        self.load_error = Some(format!("cannot open {spec}: {e}"));
                    }
                }
            }
            TaskEvent::LoadProgress { spec, progress } => {
                if self.loading.as_ref().is_some_and(|(s, _)| *s == spec) {
                    self.load_progress = Some(progress);
                }
            }
            TaskEvent::SensitivityProgress { stage, done, total } => {
                if let Some(a) = &mut self.sensitivity_run {
                    a.stage = stage;
                    a.done = done;
                    a.total = total;
                }
            }
            TaskEvent::Sensitivity(result) => {
                self.sensitivity_run = None;
                match result {
                    Ok(s) => {
                        self.notice(format!(
                            "sensitivity pass finished: {} layers in {:.1} s",
                            s.layers.len(),
                            s.seconds
                        ));
                        for n in &s.notes {
                            self.notice(n.clone());
                        }
                        self.sensitivity = Some(s);
                    }
                    // A cancel the user asked for is not an error.
                    Err(e) if self.sensitivity_cancel.load(Ordering::Relaxed) => {
                        self.notice(format!("sensitivity pass stopped: {e}"));
                    }
                    Err(e) => self.notice_error(format!("sensitivity pass failed: {e}")),
                }
            }
            TaskEvent::StoreLoaded(result) => {
                self.store_loading = false;
                match result {
                    Ok((mut table, skipped)) => {
                        // Runs that finished while the store was being read stay.
                        for r in &self.runs.rows {
                            if table.index_of(&r.record.id).is_none() {
                                table.push(r.record.clone());
                            }
                        }
                        table.generation = self.runs.generation + 1;
                        self.runs = table;
                        if !skipped.is_empty() {
                            self.notice_error(format!(
                                "{} store files could not be read (kept on disk)",
                                skipped.len()
                            ));
                        }
                        self.store_skipped = skipped;
                    }
                    Err(e) => self.notice_error(e),
                }
            }
            TaskEvent::Tags { id, result } => match result {
                Ok(tags) => self.runs.set_tags(&id, tags),
                Err(e) => self.notice_error(format!("tagging {id}: {e}")),
            },
            TaskEvent::Dialog { purpose, path } => self.on_dialog(ctx, purpose, path),
            TaskEvent::RecipeLoaded(result) => match result {
                Ok(r) => {
                    self.editor.set(r);
                    self.notice("recipe loaded");
                }
                Err(e) => self.notice_error(e),
            },
            TaskEvent::Screenshot { image, path } => {
                let rect = self.plot_rect;
                let ppp = ctx.pixels_per_point();
                self.tasks.spawn(
                    "png",
                    move |tx| {
                        let r = super::plot_export::write_png_crop(&image, rect, ppp, &path)
                            .map(|()| format!("saved {}", path.display()))
                            .map_err(|e| format!("{e:#}"));
                        tx.send(TaskEvent::Saved(r));
                    },
                    |e| TaskEvent::Saved(Err(e)),
                );
            }
            TaskEvent::ExportProgress { stage, done, total } => {
                if let Some(a) = &mut self.export {
                    a.stage = stage;
                    a.done = done;
                    a.total = total;
                }
            }
            TaskEvent::ExportDone(result) => {
                self.export = None;
                match result {
                    Ok(msg) => self.notice(msg),
                    Err(e) => self.notice_error(e),
                }
            }
            TaskEvent::Saved(result) => match result {
                Ok(msg) => self.notice(msg),
                Err(e) => self.notice_error(e),
            },
        }
    }

    /// Exports the Pareto plot to `path` as PNG (a cropped window screenshot, so the Pareto
    /// panel must be showing) or SVG, as if a save dialog had answered `path`.
    pub fn export_plot_to(&mut self, ctx: &egui::Context, path: PathBuf, png: bool) {
        let purpose = if png {
            DialogPurpose::PlotPng
        } else {
            DialogPurpose::PlotSvg
        };
        self.on_dialog(ctx, purpose, Some(path));
    }

    fn on_dialog(&mut self, ctx: &egui::Context, purpose: DialogPurpose, path: Option<PathBuf>) {
        let Some(path) = path else {
            self.notice("cancelled");
            return;
        };
        match purpose {
            DialogPurpose::OpenModel => self.open_model(path.display().to_string()),
            DialogPurpose::LoadRecipe => self.tasks.spawn(
                "read-recipe",
                move |tx| {
                    let r = std::fs::read_to_string(&path)
                        .map_err(|e| format!("reading {}: {e}", path.display()))
                        .and_then(|t| {
                            Recipe::from_toml(&t).map_err(|e| format!("{}: {e}", path.display()))
                        });
                    tx.send(TaskEvent::RecipeLoaded(r));
                },
                |e| TaskEvent::RecipeLoaded(Err(e)),
            ),
            DialogPurpose::SaveRecipe(text) => self.write_file(path, text.into_bytes()),
            DialogPurpose::PlotSvg => {
                let svg = super::pareto_panel::plot_svg(self);
                self.write_file(path, svg.into_bytes());
            }
            DialogPurpose::PlotPng => {
                if self.state.panel != Panel::Pareto || self.plot_rect.is_none() {
                    self.notice_error("open the Pareto panel to export its plot");
                    return;
                }
                let tx = self.tasks.sender();
                ctx.request_screenshot(move |image| {
                    tx.send(TaskEvent::Screenshot { image, path });
                });
            }
            DialogPurpose::ExportModel(id) => self.export_model(&id, path, ExportKind::HfDir),
            DialogPurpose::ExportGguf(id) => self.export_model(&id, path, ExportKind::Gguf),
            DialogPurpose::ExportTypes(id) => self.export_model(&id, path, ExportKind::Types),
        }
    }

    fn write_file(&mut self, path: PathBuf, bytes: Vec<u8>) {
        self.tasks.spawn(
            "write",
            move |tx| {
                let r = std::fs::write(&path, bytes)
                    .map(|()| format!("saved {}", path.display()))
                    .map_err(|e| format!("writing {}: {e}", path.display()));
                tx.send(TaskEvent::Saved(r));
            },
            |e| TaskEvent::Saved(Err(e)),
        );
    }

    /// Exports a run's compressed model (or only its llama.cpp tensor-type file).
    fn export_model(&mut self, id: &str, path: PathBuf, kind: ExportKind) {
        let Some(i) = self.runs.index_of(id) else {
            self.notice_error(format!("no run {id}"));
            return;
        };
        let record = self.runs.rows[i].record.clone();
        // The spec the run was started with; older records only have the recipe's note.
        let spec = match self.runs.rows[i].recipe() {
            _ if !record.model_spec.is_empty() => record.model_spec.clone(),
            Ok(r) => r.model.unwrap_or_else(|| self.state.model_spec.clone()),
            Err(e) => {
                self.notice_error(format!("run {id}: {e}"));
                return;
            }
        };
        if self.export.is_some() {
            self.notice("an export is already running");
            return;
        }
        self.export = Some(Activity {
            what: kind.label().into(),
            stage: "starting".into(),
            done: 0,
            total: 0,
            since: Instant::now(),
        });
        self.tasks.spawn(
            "export",
            move |tx| {
                let r = super::export::export_run(&record, &spec, &path, kind, tx)
                    .map_err(|e| format!("{e:#}"));
                tx.send(TaskEvent::ExportDone(r));
            },
            |e| TaskEvent::ExportDone(Err(e)),
        );
    }

    /// The linears of the grid selection.
    pub fn selected_cells(&self) -> Vec<LinearId> {
        self.state
            .selected_cells
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    }
}
