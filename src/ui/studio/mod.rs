//! The app's runtime, split by concern: the persisted [`AppState`], recipe editing
//! ([`recipe`]), the model slot and its sensitivity pass ([`model`]), the store, runs and jobs
//! ([`runs`]), the search and its predicted front ([`search`]), dialogs and exports ([`files`]), what the views cache ([`views`]) and the status
//! bar ([`notices`]). [`Studio::frame`] is one frame: drain background events, draw the panels
//! (which only push [`Command`]s), apply the commands. The eframe wrapper and the kittest
//! harness both drive this same type.

mod files;
pub mod model;
pub mod notices;
pub mod recipe;
pub mod runs;
pub mod search;
pub mod views;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use eframe::egui;

use crate::jobs::JobRunner;
use crate::model::LinearId;
use crate::store::{Status, Store};

use super::command::Command;
use super::dialogs::{DialogKind, FileDialogs};
use super::editor::{Analysis, RecipeEditor};
use super::jobs::JobsView;
use super::model_info::ModelSummary;
use super::runs::RunTable;
use super::state::AppState;
use super::tasks::{DialogPurpose, TaskEvent, Tasks, Waker};
use model::{ModelSlot, SensitivityPass};
use notices::Notices;
use recipe::RecipeEditing;
use runs::StoreSlot;
use search::SearchPass;
use views::Views;

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

/// A running export, sensitivity pass or search, for a progress bar.
#[derive(Debug, Clone)]
pub struct Activity {
    pub what: String,
    pub stage: String,
    pub done: usize,
    pub total: usize,
    pub since: Instant,
}

impl Activity {
    /// How far it is, 0–1; `None` while the total is unknown.
    pub fn fraction(&self) -> Option<f32> {
        (self.total > 0).then(|| (self.done as f32 / self.total as f32).clamp(0.0, 1.0))
    }
}

/// Everything the app holds while it runs.
pub struct Studio {
    pub state: AppState,
    pub recipe: RecipeEditing,
    pub model: ModelSlot,
    pub sensitivity: SensitivityPass,
    /// The search from the Recipe panel and its predicted front.
    pub search: SearchPass,
    pub store: StoreSlot,
    pub runs: RunTable,
    pub jobs: JobsView,
    runner: JobRunner,
    /// A model export under way.
    pub export: Option<Activity>,
    pub views: Views,
    pub notices: Notices,
    dialogs: Arc<dyn FileDialogs>,
    /// Background threads other than jobs, and the UI's wake-up.
    tasks: Tasks,
    waker: Waker,
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
            recipe: RecipeEditing::new(editor),
            model: ModelSlot::default(),
            sensitivity: SensitivityPass::default(),
            search: SearchPass::default(),
            store: StoreSlot {
                dir: opts.store_dir,
                loading: false,
                skipped: Vec::new(),
            },
            runs: RunTable::default(),
            jobs: JobsView::default(),
            runner,
            export: None,
            views: Views::default(),
            notices: Notices::default(),
            dialogs: opts.dialogs,
            tasks: Tasks::new(waker.clone()),
            waker,
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
            let id = ev.id;
            if let Some(rec) = self.jobs.apply(ev) {
                let unstored = self.jobs.get_mut(id).and_then(|e| e.unstored.clone());
                match (&rec.error, rec.status) {
                    // The result stays in the Jobs list and the views; the store lacks it.
                    _ if unstored.is_some() => self.notice_error(format!(
                        "run {} finished but was not stored: {}",
                        rec.id,
                        unstored.unwrap_or_default()
                    )),
                    (Some(err), Status::Cancelled) => {
                        self.notice(format!("job {} stopped: {err}", rec.id));
                    }
                    (Some(err), _) => self.notice_error(format!("job {} failed: {err}", rec.id)),
                    // A success says so, replacing an older error in the status bar.
                    (None, _) => self.notice(format!("run {} finished", rec.id)),
                }
                self.runs.push(rec);
            }
        }
        for ev in self.tasks.drain() {
            self.on_task(ctx, ev);
        }
        // Elapsed times and indeterminate progress move while work is under way.
        if self.jobs.active().next().is_some()
            || self.model.loading.is_some()
            || self.sensitivity.running.is_some()
            || self.search.running.is_some()
            || self.export.is_some()
        {
            ctx.request_repaint_after(std::time::Duration::from_millis(250));
        }
    }

    /// The analysis of the edited recipe against the loaded model, recomputed on change.
    pub fn analysis(&mut self) -> &Analysis {
        self.recipe.analysis(self.model.loaded.as_ref())
    }

    pub fn summary(&self) -> Option<&Arc<ModelSummary>> {
        self.model.loaded.as_ref().map(|m| &m.summary)
    }

    pub fn notice(&mut self, text: impl Into<String>) {
        self.notices.push(text.into(), false);
    }

    pub fn notice_error(&mut self, text: impl Into<String>) {
        self.notices.push(text.into(), true);
    }

    /// The persisted state with the current recipe folded in.
    pub fn state_to_save(&self) -> AppState {
        AppState {
            recipe: Some(self.recipe.editor.recipe.clone()),
            ..self.state.clone()
        }
    }

    pub fn store_dir(&self) -> &std::path::Path {
        &self.store.dir
    }

    /// Applies the commands pushed during this frame, in order.
    pub fn apply_pending(&mut self) {
        let cmds = std::mem::take(&mut self.commands);
        for c in cmds {
            self.apply(c);
        }
    }

    /// Applies one command: a table from each command to its concern's handler.
    pub fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::SwitchPanel(p) => self.state.panel = p,
            Command::DismissNotices => self.notices.clear(),
            Command::AnswerPathPrompt(path) => self.answer_path_prompt(path),
            // The model slot and its sensitivity pass.
            Command::OpenModel(spec) => self.open_model(spec),
            Command::OpenModelDialog(kind) => self.dialog(kind, "", DialogPurpose::OpenModel),
            Command::RunSensitivity => self.run_sensitivity(),
            Command::CancelSensitivity => self.cancel_sensitivity(),
            Command::SetSensitivityBits(b) => self.state.sensitivity_bits = b,
            // The search and its predicted front.
            Command::RunSearch => self.run_search(),
            Command::CancelSearch => self.cancel_search(),
            Command::MeasureSearchPoints(k) => self.measure_search_points(k),
            Command::LoadSearchPoint(i) => self.load_search_point(i),
            // Recipe editing.
            Command::EditCells { targets, edit } => {
                let analysis = self.analysis().clone();
                let model = self.model.loaded.as_ref();
                let model = model.map(|m| (&m.model.transformer, m.summary.as_ref()));
                self.recipe
                    .editor
                    .edit_cells(&targets, &edit, &analysis, model);
            }
            Command::ToggleFlatten(b) => self.recipe.editor.toggle_flatten(b),
            Command::SetMerge(m) => self.recipe.editor.set_merge(m),
            Command::SetSeed(s) => self.recipe.editor.set_seed(s),
            Command::AddRule(r) => self.recipe.editor.add_rule(r),
            Command::RemoveRule(i) => self.recipe.editor.remove_rule(i),
            Command::SetRecipe(r) => self.recipe.editor.set(r),
            Command::Undo => {
                if !self.recipe.editor.undo() {
                    self.notice("nothing to undo");
                }
            }
            Command::Redo => {
                if !self.recipe.editor.redo() {
                    self.notice("nothing to redo");
                }
            }
            Command::LoadRecipeDialog => {
                self.dialog(DialogKind::OpenRecipe, "", DialogPurpose::LoadRecipe);
            }
            Command::SaveRecipeDialog => self.save_recipe_dialog(),
            // Jobs.
            Command::RunRecipe => {
                let recipe = self.recipe.editor.recipe.clone();
                self.submit(recipe, "run");
            }
            Command::RunSweep => self.run_sweep(),
            Command::CancelJob(id) => self.cancel(id),
            Command::CancelLatest => self.cancel_latest(),
            Command::ClearFinishedJobs => self.jobs.clear_finished(),
            // Runs and the views over them.
            Command::SelectRun(id) => self.state.selected_run = id,
            Command::SetBoxSelection(ids) => self.views.box_selection = ids,
            Command::LoadRunRecipe(id) => self.load_run_recipe(&id, None),
            Command::LoadMergeStep { id, step } => self.load_run_recipe(&id, Some(step)),
            Command::AddTag { ids, tag } => self.change_tags(&ids, &tag, true),
            Command::RemoveTag { id, tag } => self.change_tags(&[id], &tag, false),
            Command::ReloadStore => self.reload_store(),
            Command::SetCompareRun { side_b, id } => {
                if side_b {
                    self.state.history.run_b = id;
                } else {
                    self.state.history.run_a = id;
                }
            }
            // Exports.
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
        }
    }

    /// Routes a background thread's report to its concern.
    fn on_task(&mut self, ctx: &egui::Context, ev: TaskEvent) {
        match ev {
            TaskEvent::ModelLoaded { spec, result } => self.on_model_loaded(spec, result),
            TaskEvent::LoadProgress { spec, progress } => self.on_load_progress(&spec, progress),
            TaskEvent::SensitivityProgress { stage, done, total } => {
                self.on_sensitivity_progress(stage, done, total);
            }
            TaskEvent::Sensitivity(result) => self.on_sensitivity(result),
            TaskEvent::SearchProgress { stage, done, total } => {
                self.on_search_progress(stage, done, total);
            }
            TaskEvent::Search(result) => self.on_search(result),
            TaskEvent::SensitivityRestored(result) => self.on_sensitivity_restored(result),
            TaskEvent::StoreLoaded(result) => self.on_store_loaded(result),
            TaskEvent::Tags { id, result } => self.on_tags(&id, result),
            TaskEvent::Dialog {
                purpose,
                answer,
                kind,
                suggested,
            } => self.on_dialog(ctx, purpose, answer, (kind, suggested)),
            TaskEvent::RecipeLoaded(result) => match result {
                Ok(r) => {
                    self.recipe.editor.set(r);
                    self.notice("recipe loaded");
                }
                Err(e) => self.notice_error(e),
            },
            TaskEvent::Screenshot { image, path } => self.on_screenshot(ctx, image, path),
            TaskEvent::ExportProgress { stage, done, total } => {
                self.on_export_progress(stage, done, total);
            }
            TaskEvent::ExportDone(result) => {
                self.export = None;
                self.report(result);
            }
            TaskEvent::Saved(result) => self.report(result),
        }
    }

    /// A finished background write: its message, or its error.
    fn report(&mut self, result: Result<String, String>) {
        match result {
            Ok(msg) => self.notice(msg),
            Err(e) => self.notice_error(e),
        }
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
