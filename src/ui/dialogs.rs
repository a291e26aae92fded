//! Where paths come from: native dialogs (rfd) in the app, scripted answers in tests and in
//! the demo script, so no test ever opens a window it cannot close.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What the app asks a dialog for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogKind {
    /// A GGUF file to open.
    OpenGguf,
    /// A Hugging Face model directory to open.
    OpenHfDir,
    /// A recipe TOML to load.
    OpenRecipe,
    /// Where to save a recipe TOML.
    SaveRecipe,
    /// A directory to write a compressed model into.
    SaveModelDir,
    /// Where to save a compressed model as one GGUF file.
    SaveGguf,
    /// Where to save a llama.cpp tensor-type file.
    SaveTypes,
    /// Where to save the plot as PNG.
    SavePng,
    /// Where to save the plot as SVG.
    SaveSvg,
}

/// Asks the user for a path. Blocking is fine: the app calls it from a helper thread.
pub trait FileDialogs: Send + Sync {
    /// `None` when the user cancelled (or no dialog could be shown).
    fn pick(&self, kind: DialogKind, suggested_name: &str) -> Option<PathBuf>;
}

/// Native dialogs through rfd (xdg portal on Linux). Without a portal the dialog returns
/// `None` at once, which the app reports as cancelled.
#[derive(Debug, Default)]
pub struct NativeDialogs;

impl FileDialogs for NativeDialogs {
    fn pick(&self, kind: DialogKind, suggested_name: &str) -> Option<PathBuf> {
        let d = rfd::FileDialog::new();
        match kind {
            DialogKind::OpenGguf => d.add_filter("GGUF", &["gguf"]).pick_file(),
            DialogKind::OpenHfDir => d.pick_folder(),
            DialogKind::OpenRecipe => d.add_filter("Recipe", &["toml"]).pick_file(),
            DialogKind::SaveRecipe => d
                .add_filter("Recipe", &["toml"])
                .set_file_name(suggested_name)
                .save_file(),
            DialogKind::SaveModelDir => d.pick_folder(),
            DialogKind::SaveGguf => d
                .add_filter("GGUF", &["gguf"])
                .set_file_name(suggested_name)
                .save_file(),
            DialogKind::SaveTypes => d.set_file_name(suggested_name).save_file(),
            DialogKind::SavePng => d
                .add_filter("PNG", &["png"])
                .set_file_name(suggested_name)
                .save_file(),
            DialogKind::SaveSvg => d
                .add_filter("SVG", &["svg"])
                .set_file_name(suggested_name)
                .save_file(),
        }
    }
}

/// Answers queued in advance (tests, the demo script). An empty queue answers `None`
/// (cancelled). Cloning shares the queue, so a test keeps a handle to push answers.
#[derive(Debug, Clone, Default)]
pub struct ScriptedDialogs {
    answers: Arc<Mutex<VecDeque<PathBuf>>>,
}

impl ScriptedDialogs {
    /// Queues the answer for the next dialog.
    pub fn push(&self, path: impl Into<PathBuf>) {
        if let Ok(mut q) = self.answers.lock() {
            q.push_back(path.into());
        }
    }
}

impl FileDialogs for ScriptedDialogs {
    fn pick(&self, _kind: DialogKind, _suggested_name: &str) -> Option<PathBuf> {
        self.answers.lock().ok()?.pop_front()
    }
}
