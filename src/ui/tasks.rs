//! Background work that is not an experiment job: loading a model, the sensitivity pass,
//! reading the store, tagging, dialogs and exports. Each runs on a named thread and reports
//! over one channel whose sender wakes the UI; the UI drains it in `logic`.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, OnceLock};

use eframe::egui;

use super::model_info::{LoadedModel, Sensitivity};
use super::runs::RunTable;

/// Wakes the UI from any thread once the app has a context (before that there is nothing to
/// repaint, so waking is a no-op).
#[derive(Clone, Default)]
pub struct Waker(Arc<OnceLock<egui::Context>>);

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waker")
    }
}

impl Waker {
    pub fn set_context(&self, ctx: &egui::Context) {
        let _ = self.0.set(ctx.clone());
    }

    pub fn wake(&self) {
        if let Some(ctx) = self.0.get() {
            ctx.request_repaint();
        }
    }

    /// The closure the job runner calls after every event.
    pub fn as_fn(&self) -> Arc<dyn Fn() + Send + Sync> {
        let w = self.clone();
        Arc::new(move || w.wake())
    }
}

/// Why a dialog was opened, so its answer goes to the right place.
#[derive(Debug, Clone)]
pub enum DialogPurpose {
    OpenModel,
    LoadRecipe,
    /// Save this TOML text.
    SaveRecipe(String),
    ExportModel(String),
    ExportGguf(String),
    ExportTypes(String),
    PlotPng,
    PlotSvg,
}

/// What background work reports.
#[derive(Debug)]
pub enum TaskEvent {
    ModelLoaded {
        spec: String,
        result: Result<LoadedModel, String>,
    },
    /// How far a model load is (bytes and tensors read).
    LoadProgress {
        spec: String,
        progress: crate::model::LoadProgress,
    },
    /// The model's saved sensitivity pass, read back after a restart (`None`: there is none).
    SensitivityRestored(Result<Option<Sensitivity>, String>),
    SensitivityProgress {
        stage: String,
        done: usize,
        total: usize,
    },
    Sensitivity(Result<Sensitivity, String>),
    SearchProgress {
        stage: String,
        done: usize,
        total: usize,
    },
    Search(Result<crate::ui::studio::search::SearchResult, String>),
    StoreLoaded(Result<(RunTable, Vec<String>), String>),
    /// A run's tags after a tag change, or why it failed.
    Tags {
        id: String,
        result: Result<Vec<String>, String>,
    },
    Dialog {
        purpose: DialogPurpose,
        answer: super::dialogs::DialogAnswer,
        /// What was asked, for the typed-path fallback when no dialog could open.
        kind: super::dialogs::DialogKind,
        suggested: String,
    },
    /// A recipe read from a file.
    RecipeLoaded(Result<crate::technique::recipe::Recipe, String>),
    /// A screenshot arrived (plot PNG export).
    Screenshot {
        image: Arc<egui::ColorImage>,
        path: PathBuf,
    },
    ExportProgress {
        stage: String,
        done: usize,
        total: usize,
    },
    /// A model export finished: a message for the status bar, or the error.
    ExportDone(Result<String, String>),
    /// A small background write (a recipe, a plot, tags) finished. Not an [`TaskEvent::ExportDone`]:
    /// arriving after a model export started, that would mark the export finished.
    Saved(Result<String, String>),
}

/// The sending half given to a task thread.
#[derive(Clone)]
pub struct TaskSender {
    tx: Sender<TaskEvent>,
    waker: Waker,
}

impl TaskSender {
    /// Sends an event and wakes the UI. A closed channel (the app quit) is not an error for
    /// the task: it just stops reporting.
    pub fn send(&self, ev: TaskEvent) {
        let _ = self.tx.send(ev);
        self.waker.wake();
    }
}

/// The channel and the threads feeding it.
pub struct Tasks {
    sender: TaskSender,
    rx: Receiver<TaskEvent>,
}

impl Tasks {
    pub fn new(waker: Waker) -> Self {
        let (tx, rx) = channel();
        Self {
            sender: TaskSender { tx, waker },
            rx,
        }
    }

    pub fn sender(&self) -> TaskSender {
        self.sender.clone()
    }

    /// Runs `work` on a named thread. If the thread cannot be started, the reason is reported
    /// through `on_spawn_error` (as an event) rather than lost.
    pub fn spawn(
        &self,
        name: &str,
        work: impl FnOnce(&TaskSender) + Send + 'static,
        on_spawn_error: impl FnOnce(String) -> TaskEvent,
    ) {
        let s = self.sender.clone();
        let result = std::thread::Builder::new()
            .name(format!("reparam-{name}"))
            .spawn(move || work(&s));
        if let Err(e) = result {
            self.sender
                .send(on_spawn_error(format!("cannot start a thread: {e}")));
        }
    }

    /// Every event that arrived since the last call, without blocking.
    pub fn drain(&self) -> Vec<TaskEvent> {
        self.rx.try_iter().collect()
    }
}
