//! The eframe application: builds the [`Studio`] from the saved state, drives it each frame,
//! and saves the preferences. `main.rs` only parses arguments and calls [`run_gui`].

use std::path::PathBuf;
use std::sync::Arc;

use eframe::egui;

use super::demo::DemoScript;
use super::dialogs::NativeDialogs;
use super::state::AppState;
use super::studio::{Studio, StudioOptions};

/// Key of the app's state in eframe's storage.
pub const APP_KEY: &str = "reparam-studio";

/// How `reparam gui` starts.
#[derive(Debug, Clone, Default)]
pub struct GuiOptions {
    /// Experiment store directory (default `experiments/store`).
    pub store_dir: Option<PathBuf>,
    /// Open this model instead of the remembered one.
    pub model: Option<String>,
    /// Drive the app from a script (see [`DemoScript`]); starts from default preferences and
    /// saves none.
    pub demo_script: Option<PathBuf>,
    /// Concurrent experiment jobs.
    pub workers: usize,
}

struct ReparamApp {
    studio: Studio,
    demo: Option<DemoScript>,
}

/// Opens the window and runs until it is closed.
pub fn run_gui(opts: GuiOptions) -> anyhow::Result<()> {
    let demo = opts
        .demo_script
        .as_deref()
        .map(DemoScript::load)
        .transpose()?;
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size([1280.0, 800.0])
            .with_min_inner_size([800.0, 500.0])
            .with_title("Reparam Studio"),
        persist_window: demo.is_none(),
        ..Default::default()
    };
    let store_dir = opts
        .store_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::store::DEFAULT_DIR));
    eframe::run_native(
        "Reparam Studio",
        native,
        Box::new(move |cc| {
            let mut state: AppState = match (&demo, cc.storage) {
                (None, Some(s)) => eframe::get_value(s, APP_KEY).unwrap_or_default(),
                _ => AppState::default(),
            };
            if let Some(m) = &opts.model {
                state.model_spec = m.clone();
            }
            let studio = Studio::new(StudioOptions {
                store_dir,
                dialogs: Arc::new(NativeDialogs),
                workers: opts.workers.max(1),
                state,
            })?;
            Ok(Box::new(ReparamApp { studio, demo }))
        }),
    )
    .map_err(|e| anyhow::anyhow!("the window could not be opened: {e}"))
}

impl eframe::App for ReparamApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.studio.poll(ctx);
        if let Some(demo) = &mut self.demo {
            demo.tick(&mut self.studio, ctx);
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.studio.ui(ui);
        self.studio.apply_pending();
        self.studio.frames += 1;
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if self.demo.is_none() {
            eframe::set_value(storage, APP_KEY, &self.studio.state_to_save());
        }
    }
}
