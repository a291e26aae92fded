//! The model panel: open a model (zoo, GGUF, HF directory), its architecture and size, and a
//! per-block, per-linear table with shapes, bytes, form and — after a sensitivity pass — a bar
//! per layer so the fragile layers stand out.

use eframe::egui;

use super::command::Command;
use super::dialogs::DialogKind;
use super::runs::human_bytes;
use super::studio::Studio;
use super::theme;

pub fn model_ui(ui: &mut egui::Ui, s: &mut Studio, out: &mut Vec<Command>) {
    open_row_ui(ui, s, out);
    ui.separator();
    if let Some(err) = &s.model.error {
        ui.colored_label(theme::ERROR, err);
    }
    let Some(m) = s.model.loaded.clone() else {
        if s.model.loading.is_none() {
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
    sensitivity_controls_ui(ui, s, out);
    let sens = s
        .sensitivity
        .result
        .as_ref()
        .filter(|x| x.model_id == sum.id)
        .cloned();
    let max_kld = sens.as_ref().map_or(0.0, |x| x.max_kld());
    egui::ScrollArea::vertical().show(ui, |ui| {
        for block in 0..sum.n_blocks {
            let bytes: usize = sum.block_linears(block).map(|l| l.size_bytes).sum();
            egui::CollapsingHeader::new(format!("Block {block} · {}", human_bytes(bytes)))
                .id_salt(("model-block", block))
                .default_open(block == 0)
                .show(ui, |ui| {
                    egui::Grid::new(("model-linears", block))
                        .striped(true)
                        .num_columns(6)
                        .show(ui, |ui| {
                            ui.strong("Layer");
                            ui.strong("Shape");
                            ui.strong("Bytes");
                            ui.strong("Form");
                            ui.strong("Measured at");
                            ui.strong("Sensitivity (KLD, this layer alone)");
                            ui.end_row();
                            for l in sum.block_linears(block) {
                                ui.monospace(l.id.to_string());
                                ui.monospace(format!("{}×{}", l.rows, l.cols));
                                ui.monospace(human_bytes(l.size_bytes));
                                ui.label(&l.form);
                                match sens.as_ref().and_then(|x| x.layers.get(&l.id)) {
                                    Some(m) => {
                                        ui.label(&m.setting);
                                        sensitivity_bar_ui(ui, m, max_kld);
                                    }
                                    None => {
                                        ui.weak("—");
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

/// The sensitivity pass: start, default setting, progress and cancel, and what was measured.
fn sensitivity_controls_ui(ui: &mut egui::Ui, s: &mut Studio, out: &mut Vec<Command>) {
    ui.horizontal_wrapped(|ui| {
        let running = s.sensitivity.running.is_some();
        if ui
            .add_enabled(!running, egui::Button::new("Run sensitivity pass"))
            .on_hover_text(
                "For every linear, compress only that layer at its setting in the edited recipe \
                 and measure the KL divergence of the next-token distribution from the \
                 uncompressed model on a short held-out text",
            )
            .clicked()
        {
            out.push(Command::RunSensitivity);
        }
        let bits = s.state.sensitivity_bits;
        let label = |b: usize| {
            if b == 0 {
                "skip them".to_string()
            } else {
                format!("shift-add {b}-bit")
            }
        };
        ui.label("Layers the recipe leaves alone");
        egui::ComboBox::from_id_salt("sensitivity-bits")
            .selected_text(label(bits))
            .show_ui(ui, |ui| {
                for b in [0, 2, 3, 4, 6, 8] {
                    if ui.selectable_label(bits == b, label(b)).clicked() {
                        out.push(Command::SetSensitivityBits(b));
                    }
                }
            });
        if let Some(a) = &s.sensitivity.running {
            let f = a.fraction().unwrap_or(0.0);
            ui.add(
                egui::ProgressBar::new(f)
                    .desired_width(160.0)
                    .show_percentage(),
            );
            ui.label(format!(
                "{} ({}/{}, {:.0} s)",
                a.stage,
                a.done,
                a.total,
                a.since.elapsed().as_secs_f32()
            ));
            if ui.button("Cancel sensitivity pass").clicked() {
                out.push(Command::CancelSensitivity);
            }
        }
    });
    match &s.sensitivity.result {
        None if s.sensitivity.running.is_none() => {
            ui.weak("no sensitivity pass yet");
        }
        None => {}
        Some(x) => {
            let current = s.recipe.editor.recipe.hash() == x.recipe_hash;
            ui.weak(format!(
                "{} layers measured on {} tokens in {:.1} s{}",
                x.layers.len(),
                x.tokens,
                x.seconds,
                if current {
                    ""
                } else {
                    " — for an earlier version of the recipe; run again to update"
                }
            ));
            egui::CollapsingHeader::new("Most sensitive layers")
                .id_salt("sensitivity-ranked")
                .default_open(true)
                .show(ui, |ui| {
                    egui::Grid::new("sensitivity-ranked-grid")
                        .striped(true)
                        .show(ui, |ui| {
                            for h in ["#", "Layer", "Setting", "KLD (nats)", "Δ loss (nats/token)"]
                            {
                                ui.strong(h);
                            }
                            ui.end_row();
                            for (rank, l) in x.ranked(10).into_iter().enumerate() {
                                ui.label(format!("{}", rank + 1));
                                ui.monospace(&l.layer);
                                ui.label(&l.setting);
                                ui.label(format!("{:.3e}", l.kld));
                                ui.label(format!("{:+.3e}", l.nll_delta));
                                ui.end_row();
                            }
                        });
                });
        }
    }
}

fn open_row_ui(ui: &mut egui::Ui, s: &mut Studio, out: &mut Vec<Command>) {
    ui.horizontal_wrapped(|ui| {
        ui.label("Zoo");
        for member in &crate::zoo::MEMBERS {
            let spec = format!("zoo:{}", member.name);
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
    if let Some((spec, since)) = &s.model.loading {
        ui.horizontal_wrapped(|ui| {
            ui.label(format!("Loading {spec}"));
            match s.model.progress {
                Some(p) if p.bytes_total > 0 => {
                    ui.add(
                        egui::ProgressBar::new(p.fraction() as f32)
                            .desired_width(200.0)
                            .show_percentage(),
                    );
                    ui.label(format!(
                        "{} of {} · {}/{} tensors ({:.1} s)",
                        human_bytes(p.bytes_read as usize),
                        human_bytes(p.bytes_total as usize),
                        p.tensors_read,
                        p.tensors_total,
                        since.elapsed().as_secs_f32()
                    ));
                }
                // Before the first tensor: reading the header and tokenizer.
                _ => {
                    ui.spinner();
                    ui.label(format!(
                        "reading the header ({:.1} s)",
                        since.elapsed().as_secs_f32()
                    ));
                }
            }
        });
    }
}

/// A horizontal bar, linear in KL divergence over `0..=max` (the layers that stand out are
/// the ones that matter), with the value beside it and details on hover.
fn sensitivity_bar_ui(
    ui: &mut egui::Ui,
    m: &crate::technique::sensitivity::LayerSensitivity,
    max: f64,
) {
    ui.horizontal(|ui| {
        let width = 160.0;
        let (rect, resp) = ui.allocate_exact_size(egui::vec2(width, 12.0), egui::Sense::hover());
        let frac = if max > 0.0 { (m.kld / max) as f32 } else { 0.0 };
        let painter = ui.painter();
        painter.rect_filled(rect, 2.0, ui.visuals().extreme_bg_color);
        let mut bar = rect;
        bar.set_width(width * frac.clamp(0.0, 1.0));
        painter.rect_filled(bar, 2.0, theme::BAR);
        super::shell::a11y_label(ui, &resp, &format!("sensitivity bar {}", m.layer));
        resp.on_hover_text(format!(
            "{}: KLD {:.3e} nats, loss {:+.3e} nats/token, {} to {} ({:.0}% of the largest KLD)",
            m.setting,
            m.kld,
            m.nll_delta,
            human_bytes(m.base_bytes),
            human_bytes(m.bytes),
            if max > 0.0 { 100.0 * m.kld / max } else { 0.0 }
        ));
        ui.monospace(format!("{:.2e}", m.kld));
    });
}
