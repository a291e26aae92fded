//! The jobs panel: evaluation settings for new runs, Run / Sweep, and every job of this
//! session with its stage, progress bar, elapsed time and Cancel; finished jobs show their key
//! metrics, failed ones their error.

use eframe::egui;

use super::command::Command;
use super::jobs::{JobEntry, JobState};
use super::runs::{format_metric, human_bytes};
use super::studio::Studio;
use super::theme;
use crate::device::DeviceChoice;
use crate::eval::suite::HELD_OUT;
use crate::run::EvalSettings;
use crate::store::Status;

/// Metrics shown for a finished job.
const KEY_METRICS: [(&str, &str); 6] = [
    ("ppl", "ppl"),
    ("kld_mean", "KLD"),
    ("top1_agree", "top-1"),
    ("avg_bits", "bits"),
    ("decode_tok_s", "decode tok/s"),
    ("task_acc_mean", "task acc"),
];

pub fn jobs_ui(ui: &mut egui::Ui, s: &mut Studio, out: &mut Vec<Command>) {
    settings_ui(ui, s);
    ui.horizontal_wrapped(|ui| {
        let can = s.model.loaded.is_some();
        if ui
            .add_enabled(can, egui::Button::new("Run recipe"))
            .on_hover_text("Ctrl+Enter")
            .clicked()
        {
            out.push(Command::RunRecipe);
        }
        if ui
            .add_enabled(can, egui::Button::new("Run sweep"))
            .on_hover_text("The recipe with every bit width one lower and one higher")
            .clicked()
        {
            out.push(Command::RunSweep);
        }
        if ui.button("Clear finished").clicked() {
            out.push(Command::ClearFinishedJobs);
        }
    });
    ui.separator();
    if s.jobs.entries.is_empty() {
        ui.label("No jobs yet. Edit a recipe, then Run (Ctrl+Enter).");
    }
    egui::ScrollArea::vertical().show(ui, |ui| {
        for e in s.jobs.entries.iter().rev() {
            job_ui(ui, e, out);
            ui.separator();
        }
    });
}

fn settings_ui(ui: &mut egui::Ui, s: &mut Studio) {
    let prefs = &mut s.state.eval;
    egui::CollapsingHeader::new("Evaluation settings")
        .id_salt("eval-settings")
        .default_open(true)
        .show(ui, |ui| {
            let e = &mut prefs.settings;
            ui.horizontal_wrapped(|ui| {
                // The app always names both; a run without them takes the CLI's defaults.
                let mut chunks = e.chunks.unwrap_or(8);
                let mut ctx = e.ctx.unwrap_or(128);
                ui.label("Perplexity windows");
                ui.add(egui::DragValue::new(&mut chunks).range(1..=10_000));
                ui.label("Context");
                ui.add(egui::DragValue::new(&mut ctx).range(16..=8192));
                (e.chunks, e.ctx) = (Some(chunks), Some(ctx));
                ui.label("Task prompts");
                ui.add(egui::DragValue::new(&mut e.task_prompts).range(0..=1000));
                ui.label("Calibration windows");
                ui.add(egui::DragValue::new(&mut e.calib.samples).range(1..=1024));
                ui.label("length");
                ui.add(egui::DragValue::new(&mut e.calib.seq_len).range(8..=8192));
            });
            ui.horizontal_wrapped(|ui| evaluation_text_picker(ui, e));
            ui.horizontal_wrapped(|ui| device_picker(ui, &mut e.device));
            ui.horizontal_wrapped(|ui| {
                ui.label("Tags for new runs");
                ui.add(egui::TextEdit::singleline(&mut prefs.tags).hint_text("comma-separated"));
            });
        });
}

/// What new runs are scored on: the model's default (the held-out suite, or a zoo model's
/// held-out `lang` text), the suite by name, a text file, or a directory of domain texts.
fn evaluation_text_picker(ui: &mut egui::Ui, e: &mut EvalSettings) {
    ui.label("Evaluate on");
    let shown = match (&e.text, &e.suite) {
        (Some(_), _) => "a text file".to_string(),
        (_, Some(s)) if s == HELD_OUT => format!("suite {HELD_OUT}"),
        (_, Some(_)) => "a suite directory".to_string(),
        _ => "the model's default".to_string(),
    };
    egui::ComboBox::from_id_salt("eval-text")
        .selected_text(shown)
        .show_ui(ui, |ui| {
            if ui
                .selectable_label(e.text.is_none() && e.suite.is_none(), "the model's default")
                .clicked()
            {
                (e.text, e.suite) = (None, None);
            }
            if ui
                .selectable_label(
                    e.suite.as_deref() == Some(HELD_OUT),
                    format!("suite {HELD_OUT}"),
                )
                .clicked()
            {
                (e.text, e.suite) = (None, Some(HELD_OUT.into()));
            }
            if ui
                .selectable_label(e.text.is_some(), "a text file")
                .clicked()
                && e.text.is_none()
            {
                (e.text, e.suite) = (Some(Default::default()), None);
            }
            let dir = e.suite.as_deref().is_some_and(|s| s != HELD_OUT);
            if ui.selectable_label(dir, "a suite directory").clicked() && !dir {
                (e.text, e.suite) = (None, Some(String::new()));
            }
        })
        .response
        .on_hover_text(
            "The held-out suite scores six domains the calibration never saw (prose, dialogue, \
             technical text, code, tables, legal text); the headline metrics are token-weighted \
             over them and each domain's show on hover in the plots. Zoo models default to \
             their held-out lang text, other models to the suite.",
        );
    if let Some(p) = &mut e.text {
        let mut path = p.display().to_string();
        if ui
            .add(egui::TextEdit::singleline(&mut path).hint_text("path of a .txt file"))
            .changed()
        {
            *p = path.into();
        }
    } else if let Some(dir) = e.suite.as_mut().filter(|s| *s != HELD_OUT) {
        ui.add(egui::TextEdit::singleline(dir).hint_text("directory of .txt files"));
    }
}

/// The device new jobs and the sensitivity pass compute on. A build without CUDA shows the
/// GPU choice disabled, with the way to get it.
fn device_picker(ui: &mut egui::Ui, device: &mut DeviceChoice) {
    ui.label("Device");
    egui::ComboBox::from_id_salt("device")
        .selected_text(device.to_string())
        .show_ui(ui, |ui| {
            for choice in DeviceChoice::offered() {
                ui.selectable_value(device, choice, choice.to_string());
            }
            if !DeviceChoice::CUDA_BUILT {
                ui.add_enabled(false, egui::Button::new("cuda:0"))
                    .on_disabled_hover_text(
                        "this build has no CUDA support: build it with the cuda feature (cargo build --release --features cuda)",
                    );
            }
        });
    if !device.is_cpu() {
        ui.weak("latency is measured on CPU runs only");
    }
}

/// A throughput with the spread of its timed rounds: "decode tok/s 61.2 (58.0–63.1)".
fn latency_label(
    ui: &mut egui::Ui,
    metrics: &std::collections::BTreeMap<String, f64>,
    key: &str,
    name: &str,
) {
    let Some(v) = metrics.get(key) else {
        return;
    };
    let lo = metrics.get(&format!("{key}_min"));
    let hi = metrics.get(&format!("{key}_max"));
    let text = match (lo, hi) {
        (Some(lo), Some(hi)) => format!("{name} {v:.1} ({lo:.1}–{hi:.1})"),
        _ => format!("{name} {v:.1}"),
    };
    ui.label(text).on_hover_text(
        "Median of 3 timed rounds on this machine, with the slowest and fastest: timings move \
         with other load on the machine, so compare runs by their ranges.",
    );
}

fn job_ui(ui: &mut egui::Ui, e: &JobEntry, out: &mut Vec<Command>) {
    ui.horizontal_wrapped(|ui| {
        let color = match e.status_label() {
            "ok" => theme::OK,
            "failed" => theme::ERROR,
            "cancelled" => theme::WARN,
            _ => ui.visuals().text_color(),
        };
        ui.colored_label(color, e.status_label());
        ui.label(format!("{} ·", e.id));
        ui.label(&e.label);
    });
    ui.horizontal_wrapped(|ui| {
        if e.from_store {
            ui.label("from the store").on_hover_text(
                "This recipe was already measured with these settings on this model: the stored \
                 run is shown and nothing ran (the CLI's run --force measures it again).",
            );
        } else {
            ui.monospace(format!("{:>6.1} s", e.elapsed().as_secs_f32()));
        }
        match &e.state {
            JobState::Queued | JobState::Running => {
                let bar = match e.fraction() {
                    Some(f) => egui::ProgressBar::new(f).show_percentage(),
                    None => egui::ProgressBar::new(0.0).animate(true),
                };
                ui.add(bar.desired_width(240.0));
                ui.label(&e.stage);
                if e.cancel_requested {
                    ui.weak("cancelling…");
                } else if ui
                    .button("Cancel")
                    .on_hover_text("Esc cancels the latest job")
                    .clicked()
                {
                    out.push(Command::CancelJob(e.id));
                }
            }
            JobState::Finished(rec) => {
                if let Some(why) = &e.unstored {
                    ui.colored_label(theme::ERROR, "not stored")
                        .on_hover_text(why.as_str());
                }
                if let Some(err) = &rec.error {
                    // A cancel the user asked for is not an error.
                    if rec.status == Status::Cancelled {
                        ui.weak(err);
                    } else {
                        ui.colored_label(theme::ERROR, err);
                    }
                } else {
                    let bytes = rec.metrics.get("bytes").copied().unwrap_or(f64::NAN);
                    if bytes.is_finite() {
                        ui.label(format!("size {}", human_bytes(bytes as usize)));
                    }
                    for (k, name) in KEY_METRICS {
                        if k == "decode_tok_s" {
                            latency_label(ui, &rec.metrics, k, name);
                            continue;
                        }
                        if let Some(v) = rec.metrics.get(k) {
                            ui.label(format!("{name} {}", format_metric(k, *v)));
                        }
                    }
                    if ui.small_button("Show in history").clicked() {
                        out.push(Command::SelectRun(Some(rec.id.clone())));
                        out.push(Command::SwitchPanel(super::state::Panel::History));
                    }
                }
            }
        }
    });
}
