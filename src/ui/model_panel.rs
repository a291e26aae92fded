//! The model panel: open a model (zoo, GGUF, HF directory), its architecture and size, and a
//! per-block, per-linear table with shapes, bytes, form and — after a sensitivity pass — a bar
//! per layer so the fragile layers stand out.

use eframe::egui;

use super::command::Command;
use super::dialogs::DialogKind;
use super::studio::Studio;
use super::theme;

/// The bundled zoo models offered in the picker.
pub const ZOO: [&str; 6] = ["multi", "base", "arith", "brackets", "reverse", "recall"];

/// `1234567` → `1.23 MB`.
pub fn human_bytes(b: usize) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

pub fn model_ui(ui: &mut egui::Ui, s: &mut Studio, out: &mut Vec<Command>) {
    open_row_ui(ui, s, out);
    ui.separator();
    if let Some(err) = &s.load_error {
        ui.colored_label(theme::ERROR, err);
    }
    let Some(m) = s.model.clone() else {
        if s.loading.is_none() {
            ui.label("Open a model to begin: pick a zoo model above, or a GGUF file or Hugging Face directory.");
        }
        return;
    };
    let sum = &m.summary;
    egui::Grid::new("model-facts")
        .num_columns(2)
        .show(ui, |ui| {
            let mut row = |k: &str, v: String| {
                ui.label(k);
                ui.monospace(v);
                ui.end_row();
            };
            row("Name", sum.name.clone());
            row(
                "Architecture",
                format!("{} ({})", sum.architecture, sum.format),
            );
            row(
                "Shape",
                format!(
                    "{} blocks, width {}, FFN {}, {} heads / {} KV heads, vocab {}",
                    sum.n_blocks,
                    sum.hidden_size,
                    sum.intermediate_size,
                    sum.num_heads,
                    sum.num_kv_heads,
                    sum.vocab_size
                ),
            );
            row("Parameters", format!("{}", sum.params));
            row(
                "Bytes",
                format!("{} ({})", sum.size_bytes, human_bytes(sum.size_bytes)),
            );
            row("Model id", sum.id.chars().take(16).collect());
        });
    ui.separator();
    ui.horizontal(|ui| {
        let running = s.sensitivity_run.is_some();
        if ui
            .add_enabled(!running, egui::Button::new("Run sensitivity pass"))
            .on_hover_text(
                "Score every linear on calibration windows (ShiftAddLLM's |IS|·std(IS)^2): \
                 large scores mark layers that lose most when quantized",
            )
            .clicked()
        {
            out.push(Command::RunSensitivity);
        }
        if let Some(a) = &s.sensitivity_run {
            let f = if a.total > 0 {
                a.done as f32 / a.total as f32
            } else {
                0.0
            };
            ui.add(
                egui::ProgressBar::new(f)
                    .desired_width(160.0)
                    .show_percentage(),
            );
            ui.label(format!(
                "{} ({:.0} s)",
                a.stage,
                a.since.elapsed().as_secs_f32()
            ));
        } else if s.sensitivity.is_none() {
            ui.weak("no sensitivity scores yet");
        }
    });
    let sens = s
        .sensitivity
        .as_ref()
        .filter(|x| x.model_id == sum.id)
        .cloned();
    let range = sens.as_ref().map_or((0.0, 0.0), |x| (x.min(), x.max()));
    egui::ScrollArea::vertical().show(ui, |ui| {
        for block in 0..sum.n_blocks {
            let bytes: usize = sum.block_linears(block).map(|l| l.size_bytes).sum();
            egui::CollapsingHeader::new(format!("Block {block} · {}", human_bytes(bytes)))
                .id_salt(("model-block", block))
                .default_open(block == 0)
                .show(ui, |ui| {
                    egui::Grid::new(("model-linears", block))
                        .striped(true)
                        .num_columns(5)
                        .show(ui, |ui| {
                            ui.strong("Layer");
                            ui.strong("Shape");
                            ui.strong("Bytes");
                            ui.strong("Form");
                            ui.strong("Sensitivity (log)");
                            ui.end_row();
                            for l in sum.block_linears(block) {
                                ui.monospace(l.id.to_string());
                                ui.monospace(format!("{}×{}", l.rows, l.cols));
                                ui.monospace(human_bytes(l.size_bytes));
                                ui.label(&l.form);
                                match sens.as_ref().and_then(|x| x.scores.get(&l.id)) {
                                    Some(&v) => sensitivity_bar_ui(ui, v, range),
                                    None => {
                                        ui.weak("—");
                                    }
                                }
                                ui.end_row();
                            }
                        });
                });
        }
    });
}

fn open_row_ui(ui: &mut egui::Ui, s: &mut Studio, out: &mut Vec<Command>) {
    ui.horizontal(|ui| {
        ui.label("Zoo");
        for z in ZOO {
            let spec = format!("zoo:{z}");
            let current = s.state.model_spec == spec;
            if ui.selectable_label(current, &spec).clicked() {
                out.push(Command::OpenModel(spec));
            }
        }
        ui.separator();
        if ui.button("Open GGUF…").clicked() {
            out.push(Command::OpenModelDialog(DialogKind::OpenGguf));
        }
        if ui.button("Open HF directory…").clicked() {
            out.push(Command::OpenModelDialog(DialogKind::OpenHfDir));
        }
    });
    if let Some((spec, since)) = &s.loading {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label(format!(
                "Loading {spec}: reading and dequantizing tensors ({:.1} s)",
                since.elapsed().as_secs_f32()
            ));
        });
    }
}

/// A horizontal bar on a log scale over `min..=max` (scores span orders of magnitude: on a
/// linear scale one layer would dwarf the rest), with the value on hover.
fn sensitivity_bar_ui(ui: &mut egui::Ui, value: f64, (min, max): (f64, f64)) {
    let width = 160.0;
    let (rect, resp) = ui.allocate_exact_size(egui::vec2(width, 12.0), egui::Sense::hover());
    let frac = if max > min && min > 0.0 && value > 0.0 {
        // A sliver for the smallest score so every layer shows a bar.
        (0.03 + 0.97 * (value / min).ln() / (max / min).ln()) as f32
    } else {
        1.0
    };
    let painter = ui.painter();
    painter.rect_filled(rect, 2.0, ui.visuals().extreme_bg_color);
    let mut bar = rect;
    bar.set_width(width * frac.clamp(0.0, 1.0));
    painter.rect_filled(bar, 2.0, theme::BAR);
    resp.on_hover_text(format!(
        "{value:.4e} ({:.1}% of the largest; bars are on a log scale)",
        100.0 * value / max
    ));
}
