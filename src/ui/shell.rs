//! The frame around the panels: the top bar (panel tabs, model, run), the status bar (jobs,
//! notices, keyboard hints), global shortcuts, and dispatch to the current panel.

use eframe::egui::{self, Key, KeyboardShortcut, Modifiers};

use super::command::Command;
use super::state::Panel;
use super::studio::Studio;
use super::theme;

/// Shown in the status bar so the shortcuts are discoverable.
pub const SHORTCUT_HINT: &str = "Ctrl+Enter run · Esc cancel · Ctrl+Z undo · Ctrl+Shift+Z redo";

/// Gives a widget an accessible label (what screen readers and the UI tests find it by)
/// without drawing any text.
pub fn a11y_label(ui: &egui::Ui, resp: &egui::Response, label: &str) {
    ui.ctx()
        .accesskit_node_builder(resp.id, |node| node.set_label(label.to_string()));
}

impl Studio {
    /// Draws one frame of the app; widgets push commands, applied by [`Studio::frame`].
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        let mut out = Vec::new();
        shortcuts(ui.ctx(), &mut out);
        egui::Panel::top("top-bar").show(ui, |ui| self.top_bar_ui(ui, &mut out));
        egui::Panel::bottom("status-bar").show(ui, |ui| self.status_bar_ui(ui, &mut out));
        egui::CentralPanel::default().show(ui, |ui| match self.state.panel {
            Panel::Model => super::model_panel::model_ui(ui, self, &mut out),
            Panel::Recipe => super::recipe_panel::recipe_ui(ui, self, &mut out),
            Panel::Jobs => super::jobs_panel::jobs_ui(ui, self, &mut out),
            Panel::Pareto => super::pareto_panel::pareto_ui(ui, self, &mut out),
            Panel::History => super::history_panel::history_ui(ui, self, &mut out),
        });
        if let Some(prompt) = &mut self.views.path_prompt {
            path_prompt_ui(ui.ctx(), prompt, &mut out);
        }
        for c in out {
            self.push(c);
        }
    }

    fn top_bar_ui(&mut self, ui: &mut egui::Ui, out: &mut Vec<Command>) {
        ui.horizontal_wrapped(|ui| {
            ui.strong("Reparam Studio");
            ui.separator();
            for p in Panel::ALL {
                if ui
                    .selectable_label(self.state.panel == p, p.label())
                    .clicked()
                {
                    out.push(Command::SwitchPanel(p));
                }
            }
            ui.separator();
            match (&self.model.loaded, &self.model.loading) {
                (_, Some((spec, since))) => {
                    ui.spinner();
                    ui.label(format!(
                        "loading {spec} ({:.0} s)",
                        since.elapsed().as_secs_f32()
                    ));
                }
                (Some(m), None) => {
                    ui.label(format!("model {}", m.summary.spec));
                }
                (None, None) => {
                    ui.label("no model");
                }
            }
            ui.separator();
            let can_run = self.model.loaded.is_some();
            if ui
                .add_enabled(can_run, egui::Button::new("Run"))
                .on_hover_text("Run the edited recipe on the open model (Ctrl+Enter)")
                .clicked()
            {
                out.push(Command::RunRecipe);
            }
            if ui
                .add_enabled(can_run, egui::Button::new("Sweep"))
                .on_hover_text(
                    "Run the recipe and its neighbours: every bit width one lower and one higher",
                )
                .clicked()
            {
                out.push(Command::RunSweep);
            }
            if ui
                .add_enabled(self.recipe.editor.can_undo(), egui::Button::new("Undo"))
                .on_hover_text("Ctrl+Z")
                .clicked()
            {
                out.push(Command::Undo);
            }
            if ui
                .add_enabled(self.recipe.editor.can_redo(), egui::Button::new("Redo"))
                .on_hover_text("Ctrl+Shift+Z")
                .clicked()
            {
                out.push(Command::Redo);
            }
        });
    }

    fn status_bar_ui(&mut self, ui: &mut egui::Ui, out: &mut Vec<Command>) {
        ui.horizontal_wrapped(|ui| {
            let active = self.jobs.active().count();
            let runs = self.runs.rows.len();
            ui.label(format!(
                "{} · {}",
                plural(runs, "run", "runs"),
                plural(active, "job running", "jobs running")
            ));
            if self.store.loading {
                ui.spinner();
                ui.label("reading the store");
            }
            let activity = self
                .export
                .as_ref()
                .or(self.sensitivity.running.as_ref())
                .or(self.search.running.as_ref());
            if let Some(a) = activity {
                ui.separator();
                ui.label(format!("{}: {}", a.what, a.stage));
                let bar = match a.fraction() {
                    Some(f) => egui::ProgressBar::new(f)
                        .desired_width(120.0)
                        .show_percentage(),
                    None => egui::ProgressBar::new(0.0)
                        .desired_width(120.0)
                        .animate(true),
                };
                ui.add(bar);
            }
            ui.separator();
            ui.weak(SHORTCUT_HINT);
        });
        if let Some(n) = self.notices.last() {
            ui.horizontal_wrapped(|ui| {
                let color = if n.is_error {
                    theme::ERROR
                } else {
                    ui.visuals().text_color()
                };
                ui.colored_label(color, &n.text);
                if ui.small_button("Dismiss").clicked() {
                    out.push(Command::DismissNotices);
                }
            });
        }
    }
}

/// The typed-path fallback for a file dialog that could not open: the reason, a path field
/// with completions from the file system, OK (or Enter) and Cancel.
fn path_prompt_ui(
    ctx: &egui::Context,
    prompt: &mut crate::ui::studio::views::PathPrompt,
    out: &mut Vec<Command>,
) {
    egui::Window::new("Type a path")
        .collapsible(false)
        .resizable(false)
        .anchor(egui::Align2::CENTER_CENTER, egui::vec2(0.0, 0.0))
        .show(ctx, |ui| {
            ui.label(&prompt.reason);
            let resp = ui.add(
                egui::TextEdit::singleline(&mut prompt.text)
                    .hint_text("/path/to/file")
                    .desired_width(360.0),
            );
            a11y_label(ui, &resp, "Path");
            let entered = resp.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter));
            for c in crate::ui::dialogs::path_completions(&prompt.text, 8) {
                if ui.small_button(&c).clicked() {
                    prompt.text = c;
                }
            }
            ui.horizontal_wrapped(|ui| {
                if ui.button("OK").clicked() || entered {
                    out.push(Command::AnswerPathPrompt(Some(prompt.text.clone())));
                }
                if ui.button("Cancel").clicked() {
                    out.push(Command::AnswerPathPrompt(None));
                }
            });
        });
}

/// A tag field with its button: Enter in the field or the button tags `ids` and empties the
/// field; with nothing typed the button is disabled and says why.
pub fn tag_entry_ui(
    ui: &mut egui::Ui,
    input: &mut String,
    ids: &[String],
    button: &str,
    out: &mut Vec<Command>,
) {
    let resp = ui.add(
        egui::TextEdit::singleline(input)
            .hint_text("new tag")
            .desired_width(100.0),
    );
    a11y_label(ui, &resp, "New tag");
    let entered = resp.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter));
    let empty = input.trim().is_empty();
    let clicked = ui
        .add_enabled(!empty, egui::Button::new(button))
        .on_disabled_hover_text("type a tag first (one word)")
        .clicked();
    if (clicked || entered) && !empty {
        out.push(Command::AddTag {
            ids: ids.to_vec(),
            tag: std::mem::take(input).trim().to_string(),
        });
    }
}

/// "1 run", "2 runs".
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Global keyboard shortcuts. Undo/redo are left to a focused text field.
fn shortcuts(ctx: &egui::Context, out: &mut Vec<Command>) {
    let typing = ctx.egui_wants_keyboard_input();
    ctx.input_mut(|i| {
        if i.consume_shortcut(&KeyboardShortcut::new(Modifiers::COMMAND, Key::Enter)) {
            out.push(Command::RunRecipe);
        }
        if !typing && i.consume_key(Modifiers::NONE, Key::Escape) {
            out.push(Command::CancelLatest);
        }
        if typing {
            return;
        }
        // Redo first: Ctrl+Z also matches Ctrl+Shift+Z logically.
        if i.consume_shortcut(&KeyboardShortcut::new(
            Modifiers::COMMAND | Modifiers::SHIFT,
            Key::Z,
        )) {
            out.push(Command::Redo);
        } else if i.consume_shortcut(&KeyboardShortcut::new(Modifiers::COMMAND, Key::Z)) {
            out.push(Command::Undo);
        }
    });
}
