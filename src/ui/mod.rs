//! The desktop app (eframe/egui): per-layer recipe editing, live jobs, Pareto plots, history
//! comparison and export, over the same library the CLI uses.
//!
//! Layout: [`studio::Studio`] owns the runtime (store, job runner, background tasks, loaded
//! model, runs); [`state::AppState`] holds the persisted preferences; each panel is one file
//! that draws from the studio and pushes [`command::Command`]s, applied once per frame. Pure
//! logic (recipe editing, run tables, fronts, SVG) lives in files without egui widgets so it is
//! unit-tested. Nothing slow runs on the UI thread: model loading, the sensitivity pass, store
//! reads, tagging, dialogs and exports run on named threads and report over a channel that
//! wakes the UI; experiments are jobs of [`crate::jobs::JobRunner`].

pub mod app;
pub mod command;
pub mod demo;
pub mod dialogs;
pub mod editor;
pub mod export;
pub mod history_panel;
pub mod history_query;
pub mod jobs;
pub mod jobs_panel;
pub mod layer_map;
pub mod model_info;
pub mod model_panel;
pub mod pareto_panel;
pub mod plot_export;
pub mod recipe_panel;
pub mod runs;
pub mod shell;
pub mod state;
pub mod studio;
pub mod tasks;
pub mod theme;

pub use app::{GuiOptions, run_gui};
pub use studio::{Studio, StudioOptions};
