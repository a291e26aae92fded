//! The model slot: the open model, a load in progress, and the sensitivity pass measured on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::{Activity, Studio};
use crate::model::{LoadProgress, load_spec_with_progress};
use crate::store::passes::{latest_sensitivity, save_sensitivity};
use crate::technique::recipe::{LayerPlan, Quant, ShiftAddKnobs};
use crate::technique::sensitivity::{SensitivityOptions, recipe_sensitivity};
use crate::ui::model_info::{LoadedModel, ModelSummary, Sensitivity};
use crate::ui::tasks::TaskEvent;

/// The model shown and edited against, and the one being loaded.
#[derive(Default)]
pub struct ModelSlot {
    pub loaded: Option<LoadedModel>,
    /// A model being loaded: its spec and since when.
    pub loading: Option<(String, Instant)>,
    /// How far the model being loaded is.
    pub progress: Option<LoadProgress>,
    /// Why the last load failed.
    pub error: Option<String>,
}

/// The sensitivity pass: its last result and the pass under way.
#[derive(Default)]
pub struct SensitivityPass {
    pub result: Option<Sensitivity>,
    pub running: Option<Activity>,
    /// Set to stop the running pass (checked between layers).
    cancel: Arc<AtomicBool>,
}

impl Studio {
    pub(super) fn open_model(&mut self, spec: String) {
        self.model.loading = Some((spec.clone(), Instant::now()));
        self.model.progress = None;
        self.model.error = None;
        let spec2 = spec.clone();
        self.tasks.spawn(
            "load-model",
            move |tx| {
                let result = load_spec_with_progress(&spec, &mut |progress| {
                    tx.send(TaskEvent::LoadProgress {
                        spec: spec.clone(),
                        progress,
                    });
                })
                .map(|m| {
                    let summary = Arc::new(ModelSummary::from_model(&spec, &m));
                    LoadedModel {
                        model: Arc::new(m),
                        summary,
                    }
                })
                .map_err(|e| format!("{e}"));
                tx.send(TaskEvent::ModelLoaded { spec, result });
            },
            move |error| TaskEvent::ModelLoaded {
                spec: spec2,
                result: Err(error),
            },
        );
    }

    pub(super) fn on_model_loaded(&mut self, spec: String, result: Result<LoadedModel, String>) {
        if self.model.loading.as_ref().is_some_and(|(s, _)| *s != spec) {
            return; // a newer load superseded this one
        }
        self.model.loading = None;
        self.model.progress = None;
        match result {
            Ok(m) => {
                self.state.model_spec = spec;
                if self
                    .sensitivity
                    .result
                    .as_ref()
                    .is_some_and(|s| s.model_id != m.summary.id)
                {
                    self.sensitivity.result = None;
                }
                if self.sensitivity.result.is_none() {
                    self.restore_sensitivity(&m.summary.id);
                }
                self.model.loaded = Some(m);
                self.model.error = None;
            }
            Err(e) => {
                self.notice_error(format!("cannot open {spec}: {e}"));
                self.model.error = Some(format!("cannot open {spec}: {e}"));
            }
        }
    }

    pub(super) fn on_load_progress(&mut self, spec: &str, progress: LoadProgress) {
        if self.model.loading.as_ref().is_some_and(|(s, _)| *s == spec) {
            self.model.progress = Some(progress);
        }
    }

    /// Reads the model's last saved sensitivity pass in the background.
    fn restore_sensitivity(&mut self, model_id: &str) {
        let dir = self.store.dir.clone();
        let id = model_id.to_string();
        self.tasks.spawn(
            "restore-sensitivity",
            move |tx| {
                let r = latest_sensitivity(&dir, &id)
                    .map(|found| found.map(|(hash, r)| Sensitivity::from_report(hash, r)))
                    .map_err(|e| format!("a saved sensitivity pass could not be read: {e}"));
                tx.send(TaskEvent::SensitivityRestored(r));
            },
            |e| TaskEvent::SensitivityRestored(Err(e)),
        );
    }

    pub(super) fn on_sensitivity_restored(&mut self, result: Result<Option<Sensitivity>, String>) {
        match result {
            // A pass run since the restore started wins; so does one for another model.
            Ok(Some(s))
                if self.sensitivity.result.is_none()
                    && self.summary().is_some_and(|m| m.id == s.model_id) =>
            {
                self.sensitivity.result = Some(s);
            }
            Ok(_) => {}
            Err(e) => self.notice_error(e),
        }
    }

    pub(super) fn run_sensitivity(&mut self) {
        let Some(loaded) = self.model.loaded.clone() else {
            self.notice_error("open a model first");
            return;
        };
        if self.sensitivity.running.is_some() {
            self.notice("a sensitivity pass is already running");
            return;
        }
        // Each layer at its setting in the edited recipe; the others at the chosen default.
        let recipe = self.recipe.editor.recipe.clone();
        if let Some(err) = self.analysis().first_error() {
            self.notice_error(format!("the recipe is invalid: {err}"));
            return;
        }
        let bits = self.state.sensitivity_bits;
        let fallback = (bits > 0).then(|| LayerPlan {
            quant: Some(Quant::ShiftAdd(ShiftAddKnobs::with_bits(bits))),
            ..Default::default()
        });
        self.sensitivity.running = Some(Activity {
            what: "sensitivity".into(),
            stage: "starting".into(),
            done: 0,
            total: loaded.summary.linears.len(),
            since: Instant::now(),
        });
        let cancel = Arc::new(AtomicBool::new(false));
        self.sensitivity.cancel = cancel.clone();
        let settings = &self.state.eval.settings;
        let opts = SensitivityOptions {
            calib: crate::technique::CalibOptions {
                samples: settings.calib.samples.max(1),
                seq_len: settings.calib.seq_len.max(8),
            },
            ctx: settings.ctx.unwrap_or(128).max(8),
            ..Default::default()
        };
        let device = settings.device;
        let store_dir = self.store.dir.clone();
        self.tasks.spawn(
            "sensitivity",
            move |tx| {
                let hash = recipe.hash();
                let model = device.open().and_then(|d| Ok(loaded.model.to_device(&d)?));
                let result = model
                    .and_then(|model| {
                        recipe_sensitivity(
                            &model,
                            &recipe,
                            fallback.as_ref(),
                            None,
                            None,
                            opts,
                            &mut |stage, done, total| {
                                tx.send(TaskEvent::SensitivityProgress {
                                    stage: stage.to_string(),
                                    done,
                                    total,
                                });
                                !cancel.load(Ordering::Relaxed)
                            },
                        )
                    })
                    .map(|mut r| {
                        // Kept in the store, so the pass comes back after a restart.
                        if let Err(e) = save_sensitivity(&store_dir, &hash, &r) {
                            r.notes.push(format!("the pass could not be kept: {e}"));
                        }
                        Sensitivity::from_report(hash, r)
                    })
                    .map_err(|e| format!("{e:#}"));
                tx.send(TaskEvent::Sensitivity(result));
            },
            |e| TaskEvent::Sensitivity(Err(e)),
        );
    }

    pub(super) fn cancel_sensitivity(&mut self) {
        if self.sensitivity.running.is_some() {
            self.sensitivity.cancel.store(true, Ordering::Relaxed);
        }
    }

    pub(super) fn on_sensitivity_progress(&mut self, stage: String, done: usize, total: usize) {
        if let Some(a) = &mut self.sensitivity.running {
            a.stage = stage;
            a.done = done;
            a.total = total;
        }
    }

    pub(super) fn on_sensitivity(&mut self, result: Result<Sensitivity, String>) {
        self.sensitivity.running = None;
        match result {
            Ok(s) => {
                self.notice(format!(
                    "sensitivity pass finished: {} layers in {:.1} s",
                    s.layers.len(),
                    s.seconds
                ));
                for n in &s.notes {
                    self.notice(n.clone());
                }
                self.sensitivity.result = Some(s);
            }
            // A cancel the user asked for is not an error.
            Err(e) if self.sensitivity.cancel.load(Ordering::Relaxed) => {
                self.notice(format!("sensitivity pass stopped: {e}"));
            }
            Err(e) => self.notice_error(format!("sensitivity pass failed: {e}")),
        }
    }
}
