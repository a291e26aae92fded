//! `reparam gui --demo-script FILE`: drives the real app from a small script — open a model,
//! edit the recipe, run real jobs, tag, switch panels, take window screenshots — so
//! `scripts/screenshot.sh` can produce pictures of every panel with real data, and a person
//! can watch the core loop run. One command per line; `#` starts a comment:
//!
//! ```text
//! open zoo:multi          # load a model and wait for it
//! bits 3                  # every linear: shift-add 3 bits (also `rtn 4`, `none`)
//! bits 2 blk.*.ffn_*      # a pattern rule instead
//! prune 0.3 magnitude     # every linear: prune (keeps its bits)
//! eval CHUNKS CTX PROMPTS # small evaluation settings
//! tags a,b                # tags for the next runs
//! run | sweep             # submit, then `wait-jobs` waits for all to finish
//! sensitivity             # sensitivity pass, waits for it
//! panel pareto            # model | recipe | jobs | pareto | history
//! axes bytes kld_mean     # Pareto axes
//! select-last | compare-last | compare-tags A B | expand 0
//! screenshot out/pareto.png
//! plot-png out/plot.png | plot-svg out/plot.svg   # the Pareto panel's own exports
//! quit
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use eframe::egui;

use crate::model::LinearId;
use crate::technique::recipe::{
    LayerRule, PruneKnobs, PruneMethod, Quant, RtnKnobs, ShiftAddKnobs,
};

use super::command::Command;
use super::editor::CellEdit;
use super::state::Panel;
use super::studio::Studio;

/// Frames to draw after a change before a screenshot, so layout settles.
const SETTLE_FRAMES: u64 = 6;
/// Longest wait for one step (a model load, all jobs).
const STEP_TIMEOUT: Duration = Duration::from_secs(900);

/// What the script waits for before its next line.
enum Wait {
    None,
    Model,
    Jobs,
    Sensitivity,
    Frames(u64),
    /// 0 pending, 1 written, 2 failed.
    Screenshot(Arc<AtomicU8>),
    /// An export written by a background thread.
    File(PathBuf),
}

/// A parsed script and where it is.
pub struct DemoScript {
    lines: Vec<(usize, String)>,
    pc: usize,
    wait: Wait,
    since: Instant,
    /// Ids of runs finished before the last `run`, to find the new ones.
    seen: usize,
}

impl DemoScript {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the demo script {}", path.display()))?;
        let lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.split('#').next().unwrap_or("").trim().to_string()))
            .filter(|(_, l)| !l.is_empty())
            .collect();
        Ok(Self {
            lines,
            pc: 0,
            wait: Wait::None,
            since: Instant::now(),
            seen: 0,
        })
    }

    /// Advances as far as the current wait allows. Errors end the app with a message.
    pub fn tick(&mut self, s: &mut Studio, ctx: &egui::Context) {
        ctx.request_repaint_after(Duration::from_millis(100));
        loop {
            if !self.waiting_done(s) {
                if self.since.elapsed() > STEP_TIMEOUT {
                    self.fail(ctx, "timed out");
                }
                return;
            }
            let Some((line_no, line)) = self.lines.get(self.pc).cloned() else {
                return;
            };
            self.pc += 1;
            self.since = Instant::now();
            if let Err(e) = self.exec(s, ctx, &line) {
                self.fail(ctx, &format!("line {line_no} `{line}`: {e:#}"));
                return;
            }
        }
    }

    fn fail(&mut self, ctx: &egui::Context, why: &str) {
        eprintln!("demo script failed: {why}");
        self.pc = self.lines.len();
        self.wait = Wait::None;
        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
    }

    fn waiting_done(&mut self, s: &Studio) -> bool {
        let done = match &self.wait {
            Wait::None => true,
            Wait::Model => s.model.loading.is_none(),
            Wait::Jobs => s.jobs.active().next().is_none(),
            Wait::Sensitivity => s.sensitivity.running.is_none(),
            Wait::Frames(until) => s.frames >= *until,
            Wait::Screenshot(flag) => flag.load(Ordering::SeqCst) != 0,
            // Done when the writer reported it (the file alone may still be half written).
            Wait::File(p) => {
                let saved = format!("saved {}", p.display());
                s.notices.iter().any(|n| n.text == saved)
            }
        };
        if done {
            self.wait = Wait::None;
        }
        done
    }

    fn exec(&mut self, s: &mut Studio, ctx: &egui::Context, line: &str) -> anyhow::Result<()> {
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or("");
        let args: Vec<&str> = words.collect();
        let arg =
            |i: usize| -> anyhow::Result<&str> { args.get(i).copied().context("missing argument") };
        match cmd {
            "open" => {
                s.apply(Command::OpenModel(arg(0)?.to_string()));
                self.wait = Wait::Model;
            }
            "bits" | "rtn" | "none" => {
                let quant = match cmd {
                    "none" => None,
                    "rtn" => Some(Quant::Rtn(RtnKnobs {
                        bits: arg(0)?.parse()?,
                        group: 128,
                        symmetric: false,
                        float_min: false,
                        int8_activations: false,
                    })),
                    _ => Some(Quant::ShiftAdd(ShiftAddKnobs::with_bits(arg(0)?.parse()?))),
                };
                let pattern = if cmd == "none" {
                    args.first()
                } else {
                    args.get(1)
                };
                match pattern {
                    Some(p) => {
                        let plan = crate::technique::recipe::LayerPlan {
                            quant,
                            ..Default::default()
                        };
                        let rule: LayerRule = super::editor::rule_from_plan(p.to_string(), &plan);
                        s.apply(Command::AddRule(rule));
                    }
                    None => {
                        let targets = all_linears(s)?;
                        s.apply(Command::EditCells {
                            targets,
                            edit: CellEdit::Quant(quant),
                        });
                    }
                }
            }
            "prune" => {
                let method = match args.get(1).copied().unwrap_or("magnitude") {
                    "wanda" => PruneMethod::Wanda,
                    "nm" => PruneMethod::Nm,
                    _ => PruneMethod::Magnitude,
                };
                let ratio: f64 = arg(0)?.parse()?;
                let targets = all_linears(s)?;
                s.apply(Command::EditCells {
                    targets,
                    edit: CellEdit::Prune((ratio > 0.0).then_some(PruneKnobs {
                        ratio,
                        method,
                        n: 2,
                        m: 4,
                        ..PruneKnobs::default()
                    })),
                });
            }
            "recipe" => {
                let path = arg(0)?;
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("demo: reading {path}: {e}"))?;
                s.apply(Command::SetRecipe(
                    crate::technique::recipe::Recipe::from_toml(&text)
                        .map_err(|e| anyhow::anyhow!("demo: {path}: {e}"))?,
                ));
            }
            "clear" => s.apply(Command::SetRecipe(
                crate::technique::recipe::Recipe::default(),
            )),
            "eval" => {
                let e = &mut s.state.eval.settings;
                e.chunks = Some(arg(0)?.parse()?);
                e.ctx = Some(arg(1)?.parse()?);
                e.task_prompts = arg(2)?.parse()?;
            }
            "tags" => s.state.eval.tags = args.join(","),
            "run" => {
                self.seen = s.runs.rows.len();
                s.apply(Command::RunRecipe);
            }
            "sweep" => {
                self.seen = s.runs.rows.len();
                s.apply(Command::RunSweep);
            }
            "wait-jobs" => self.wait = Wait::Jobs,
            "sensitivity" => {
                s.apply(Command::RunSensitivity);
                self.wait = Wait::Sensitivity;
            }
            "panel" => {
                let name = arg(0)?;
                let p = Panel::ALL
                    .into_iter()
                    .find(|p| p.label().eq_ignore_ascii_case(name))
                    .context("unknown panel")?;
                s.apply(Command::SwitchPanel(p));
                self.wait = Wait::Frames(s.frames + SETTLE_FRAMES);
            }
            "axes" => {
                s.state.pareto.x = arg(0)?.to_string();
                s.state.pareto.y = arg(1)?.to_string();
            }
            "expand" => {
                s.state.expanded_blocks.insert(arg(0)?.parse()?);
            }
            "select-last" => {
                let id = s.runs.rows.last().map(|r| r.record.id.clone());
                s.apply(Command::SelectRun(id));
            }
            "compare-last" => {
                let n = s.runs.rows.len();
                anyhow::ensure!(n >= 2, "fewer than two runs");
                let a = s.runs.rows[n - 2].record.id.clone();
                let b = s.runs.rows[n - 1].record.id.clone();
                s.apply(Command::SetCompareRun {
                    side_b: false,
                    id: Some(a),
                });
                s.apply(Command::SetCompareRun {
                    side_b: true,
                    id: Some(b),
                });
            }
            "compare-tags" => {
                s.state.history.tag_a = arg(0)?.to_string();
                s.state.history.tag_b = arg(1)?.to_string();
            }
            "frames" => self.wait = Wait::Frames(s.frames + arg(0)?.parse::<u64>()?),
            // Resizes the window (the small-screen screenshots).
            "window" => {
                let size = egui::vec2(arg(0)?.parse()?, arg(1)?.parse()?);
                ctx.send_viewport_cmd(egui::ViewportCommand::InnerSize(size));
                self.wait = Wait::Frames(s.frames + SETTLE_FRAMES);
            }
            // Selects one linear kind in every block, as a click on its name in the layer map.
            "select-kind" => {
                let kind = arg(0)?;
                s.state.selected_cells = all_linears(s)?
                    .into_iter()
                    .filter(|id| id.kind.gguf_name() == kind)
                    .map(|id| id.to_string())
                    .collect();
                anyhow::ensure!(
                    !s.state.selected_cells.is_empty(),
                    "no linear kind `{kind}`"
                );
            }
            "screenshot" => {
                let path = PathBuf::from(arg(0)?);
                let flag = Arc::new(AtomicU8::new(0));
                let f2 = flag.clone();
                ctx.request_screenshot(move |image| {
                    let [w, h] = image.size;
                    let rgba: Vec<u8> = image
                        .pixels
                        .iter()
                        .flat_map(|p| p.to_srgba_unmultiplied())
                        .collect();
                    let ok = super::plot_export::write_png(&path, w as u32, h as u32, &rgba);
                    if let Err(e) = &ok {
                        eprintln!("screenshot {}: {e:#}", path.display());
                    }
                    f2.store(if ok.is_ok() { 1 } else { 2 }, Ordering::SeqCst);
                });
                self.wait = Wait::Screenshot(flag);
            }
            "plot-png" | "plot-svg" => {
                let path = PathBuf::from(arg(0)?);
                s.export_plot_to(ctx, path.clone(), cmd == "plot-png");
                self.wait = Wait::File(path);
            }
            "quit" => ctx.send_viewport_cmd(egui::ViewportCommand::Close),
            other => anyhow::bail!("unknown demo command `{other}`"),
        }
        Ok(())
    }
}

fn all_linears(s: &Studio) -> anyhow::Result<Vec<LinearId>> {
    let m = s.summary().context("no model is open")?;
    Ok(m.linears.iter().map(|l| l.id).collect())
}
