//! Files in and out: native dialogs (on helper threads, answered as events), saving recipes
//! and plots, loading recipes, and exporting a run's model.

use std::path::PathBuf;
use std::time::Instant;

use eframe::egui;

use super::{Activity, Studio};
use crate::technique::recipe::Recipe;
use crate::ui::dialogs::{DialogAnswer, DialogKind};
use crate::ui::export::{ExportKind, export_run};
use crate::ui::state::Panel;
use crate::ui::studio::views::PathPrompt;
use crate::ui::tasks::{DialogPurpose, TaskEvent};

impl Studio {
    /// Opens a dialog on a helper thread (rfd blocks) and reports the answer as an event.
    pub(super) fn dialog(&mut self, kind: DialogKind, suggested: &str, purpose: DialogPurpose) {
        let dialogs = self.dialogs.clone();
        let suggested = suggested.to_string();
        let p2 = purpose.clone();
        let s2 = suggested.clone();
        self.tasks.spawn(
            "dialog",
            move |tx| {
                let answer = dialogs.pick(kind, &suggested);
                tx.send(TaskEvent::Dialog {
                    purpose,
                    answer,
                    kind,
                    suggested,
                });
            },
            move |e| TaskEvent::Dialog {
                purpose: p2,
                answer: DialogAnswer::Unavailable(e),
                kind,
                suggested: s2,
            },
        );
    }

    pub(super) fn save_recipe_dialog(&mut self) {
        match self.recipe.editor.recipe.to_toml() {
            Ok(text) => self.dialog(
                DialogKind::SaveRecipe,
                "recipe.toml",
                DialogPurpose::SaveRecipe(text),
            ),
            Err(e) => self.notice_error(format!("{e:#}")),
        }
    }

    pub(super) fn export_recipe(&mut self, id: &str) {
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

    /// Exports the Pareto plot to `path` as PNG (a cropped window screenshot, so the Pareto
    /// panel must be showing) or SVG, as if a save dialog had answered `path`.
    pub fn export_plot_to(&mut self, ctx: &egui::Context, path: PathBuf, png: bool) {
        let purpose = if png {
            DialogPurpose::PlotPng
        } else {
            DialogPurpose::PlotSvg
        };
        self.use_path(ctx, purpose, path);
    }

    /// A dialog's answer: the path goes to its purpose; a dialog that could not open asks for
    /// a typed path instead (what was asked is in `asked`).
    pub(super) fn on_dialog(
        &mut self,
        ctx: &egui::Context,
        purpose: DialogPurpose,
        answer: DialogAnswer,
        asked: (DialogKind, String),
    ) {
        match answer {
            DialogAnswer::Picked(path) => self.use_path(ctx, purpose, path),
            DialogAnswer::Cancelled => self.notice("cancelled"),
            DialogAnswer::Unavailable(reason) => {
                self.notice(format!("{reason}: type the path instead"));
                self.views.path_prompt = Some(PathPrompt {
                    purpose,
                    kind: asked.0,
                    text: asked.1,
                    reason,
                });
            }
        }
    }

    /// A path for `purpose`, from a dialog, the typed-path prompt or a caller.
    fn use_path(&mut self, ctx: &egui::Context, purpose: DialogPurpose, path: PathBuf) {
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
                let svg = crate::ui::pareto_panel::plot_svg(self);
                self.write_file(path, svg.into_bytes());
            }
            DialogPurpose::PlotPng => {
                if self.state.panel != Panel::Pareto || self.views.plot_rect.is_none() {
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

    /// The typed-path prompt answered: its path goes where the dialog's would have.
    pub(super) fn answer_path_prompt(&mut self, path: Option<String>) {
        let Some(prompt) = self.views.path_prompt.take() else {
            return;
        };
        match path.map(|p| p.trim().to_string()).filter(|p| !p.is_empty()) {
            // Through the event queue, where the answer is handled with the frame's context.
            Some(p) => self.tasks.sender().send(TaskEvent::Dialog {
                purpose: prompt.purpose,
                answer: DialogAnswer::Picked(PathBuf::from(p)),
                kind: prompt.kind,
                suggested: String::new(),
            }),
            None => self.notice("cancelled"),
        }
    }

    /// Crops the window screenshot to the plot and writes it as PNG, off the UI thread.
    pub(super) fn on_screenshot(
        &mut self,
        ctx: &egui::Context,
        image: std::sync::Arc<egui::ColorImage>,
        path: PathBuf,
    ) {
        let rect = self.views.plot_rect;
        let ppp = ctx.pixels_per_point();
        self.tasks.spawn(
            "png",
            move |tx| {
                let r = crate::ui::plot_export::write_png_crop(&image, rect, ppp, &path)
                    .map(|()| format!("saved {}", path.display()))
                    .map_err(|e| format!("{e:#}"));
                tx.send(TaskEvent::Saved(r));
            },
            |e| TaskEvent::Saved(Err(e)),
        );
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
                let r = export_run(&record, &spec, &path, kind, tx).map_err(|e| format!("{e:#}"));
                tx.send(TaskEvent::ExportDone(r));
            },
            |e| TaskEvent::ExportDone(Err(e)),
        );
    }

    pub(super) fn on_export_progress(&mut self, stage: String, done: usize, total: usize) {
        if let Some(a) = &mut self.export {
            a.stage = stage;
            a.done = done;
            a.total = total;
        }
    }
}
