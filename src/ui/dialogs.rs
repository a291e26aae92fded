//! Where paths come from: native dialogs (rfd) in the app, scripted answers in tests and in
//! the demo script, so no test ever opens a window it cannot close.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// How a dialog ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialogAnswer {
    Picked(PathBuf),
    Cancelled,
    /// No dialog could be shown, and why; the app then asks for a typed path.
    Unavailable(String),
}

/// Asks the user for a path. Blocking is fine: the app calls it from a helper thread.
pub trait FileDialogs: Send + Sync {
    fn pick(&self, kind: DialogKind, suggested_name: &str) -> DialogAnswer;
}

/// Native dialogs through rfd (xdg portal on Linux). Without a D-Bus session bus there is no
/// portal to ask; with one but no portal service, rfd returns at once as if cancelled, which
/// no person can do within [`NativeDialogs::TOO_FAST`]: both count as unavailable.
#[derive(Debug, Default)]
pub struct NativeDialogs;

impl NativeDialogs {
    const TOO_FAST: Duration = Duration::from_millis(250);
}

impl FileDialogs for NativeDialogs {
    fn pick(&self, kind: DialogKind, suggested_name: &str) -> DialogAnswer {
        if cfg!(target_os = "linux") && !session_bus_present() {
            return DialogAnswer::Unavailable(
                "no file dialog: there is no desktop session bus (xdg portal)".into(),
            );
        }
        let start = Instant::now();
        match native_pick(kind, suggested_name) {
            Some(p) => DialogAnswer::Picked(p),
            None if start.elapsed() < Self::TOO_FAST => DialogAnswer::Unavailable(
                "the desktop's file dialog did not open (is an xdg desktop portal running?)".into(),
            ),
            None => DialogAnswer::Cancelled,
        }
    }
}

/// Whether a D-Bus session bus is reachable: the address variable, or the systemd default.
fn session_bus_present() -> bool {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some() {
        return true;
    }
    std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| Path::new(&d).join("bus").exists())
}

fn native_pick(kind: DialogKind, suggested_name: &str) -> Option<PathBuf> {
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

/// Answers queued in advance (tests, the demo script). An empty queue answers cancelled.
/// Cloning shares the queue, so a test keeps a handle to push answers.
#[derive(Debug, Clone, Default)]
pub struct ScriptedDialogs {
    answers: Arc<Mutex<VecDeque<DialogAnswer>>>,
}

impl ScriptedDialogs {
    /// Queues a picked path as the answer of the next dialog.
    pub fn push(&self, path: impl Into<PathBuf>) {
        self.push_answer(DialogAnswer::Picked(path.into()));
    }

    /// Queues any answer (a dialog that cannot open, say).
    pub fn push_answer(&self, answer: DialogAnswer) {
        if let Ok(mut q) = self.answers.lock() {
            q.push_back(answer);
        }
    }
}

impl FileDialogs for ScriptedDialogs {
    fn pick(&self, _kind: DialogKind, _suggested_name: &str) -> DialogAnswer {
        self.answers
            .lock()
            .ok()
            .and_then(|mut q| q.pop_front())
            .unwrap_or(DialogAnswer::Cancelled)
    }
}

/// Completions of a typed path: the entries of its directory whose names start with what is
/// typed after the last `/` (directories first, then files; at most `limit`).
pub fn path_completions(typed: &str, limit: usize) -> Vec<String> {
    let (dir, prefix) = match typed.rfind('/') {
        Some(i) => (&typed[..=i], &typed[i + 1..]),
        None => ("", typed),
    };
    let Ok(entries) = std::fs::read_dir(if dir.is_empty() { "." } else { dir }) else {
        return Vec::new();
    };
    let mut found: Vec<(bool, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            (name.starts_with(prefix) && !name.starts_with('.')).then(|| {
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                (
                    !is_dir,
                    format!("{dir}{name}{}", if is_dir { "/" } else { "" }),
                )
            })
        })
        .collect();
    found.sort();
    found.into_iter().take(limit).map(|(_, p)| p).collect()
}
