//! Runs and jobs: reading the store, submitting recipes as jobs, cancelling them, loading a
//! run's recipe back into the editor, and tagging runs.

use std::path::PathBuf;

use super::Studio;
use crate::jobs::{JobId, JobSpec};
use crate::store::{Store, check_tag};
use crate::technique::recipe::Recipe;
use crate::ui::editor::{recipe_summary, shift_bits};
use crate::ui::runs::RunTable;
use crate::ui::state::Panel;
use crate::ui::tasks::TaskEvent;

/// The experiment store the app reads and writes.
pub struct StoreSlot {
    pub dir: PathBuf,
    /// The store is being read in the background.
    pub loading: bool,
    /// Store files that could not be read (reported, never deleted).
    pub skipped: Vec<String>,
}

impl Studio {
    pub(super) fn reload_store(&mut self) {
        self.store.loading = true;
        let dir = self.store.dir.clone();
        self.tasks.spawn(
            "load-store",
            move |tx| {
                let result = Store::open(&dir)
                    .and_then(|s| s.load())
                    .map(|snap| {
                        let skipped = snap
                            .skipped
                            .iter()
                            .map(|(p, e)| format!("{e} ({})", p.display()))
                            .collect();
                        let mut table = RunTable::from_records(snap.records);
                        // The history panel's polars frame, built here rather than on the
                        // UI thread (an error is reported when the panel queries it).
                        let _ = table.history_frame();
                        (table, skipped)
                    })
                    .map_err(|e| format!("reading the store: {e}"));
                tx.send(TaskEvent::StoreLoaded(result));
            },
            |e| TaskEvent::StoreLoaded(Err(e)),
        );
    }

    pub(super) fn on_store_loaded(&mut self, result: Result<(RunTable, Vec<String>), String>) {
        self.store.loading = false;
        match result {
            Ok((mut table, skipped)) => {
                // Runs that finished while the store was being read stay.
                for r in &self.runs.rows {
                    if table.index_of(&r.record.id).is_none() {
                        table.push(r.record.clone());
                    }
                }
                table.generation = self.runs.generation + 1;
                self.runs = table;
                if !skipped.is_empty() {
                    self.notice_error(format!(
                        "{} store files could not be read (kept on disk)",
                        skipped.len()
                    ));
                }
                self.store.skipped = skipped;
            }
            Err(e) => self.notice_error(e),
        }
    }

    /// Submits the edited `recipe` (or a variant of it) on the open model; a recipe the editor
    /// finds invalid is refused with its error.
    pub(super) fn submit(&mut self, recipe: Recipe, what: &str) {
        if let Some(err) = self.analysis().first_error() {
            self.notice_error(format!("the recipe cannot run: {err}"));
            return;
        }
        self.enqueue(recipe, what, None);
    }

    /// Queues `recipe` as a job on the open model, with the job settings' tags (and `tag`).
    pub(super) fn enqueue(&mut self, mut recipe: Recipe, what: &str, tag: Option<&str>) {
        let spec = self.state.model_spec.clone();
        if spec.is_empty() {
            self.notice_error("open a model first");
            return;
        }
        recipe.model = Some(spec.clone());
        let label = format!("{what}: {}", recipe_summary(&recipe));
        let tags: Vec<String> = self
            .state
            .eval
            .tags
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .chain(tag)
            .map(String::from)
            .collect();
        if let Some(e) = tags.iter().find_map(|t| check_tag(t).err()) {
            self.notice_error(format!("tags for new runs: {e}"));
            return;
        }
        let spec = JobSpec {
            label: label.clone(),
            model: spec,
            recipe,
            tags,
            force: false,
            eval: self.state.eval.settings.clone(),
        };
        let id = self.runner.submit(spec);
        self.jobs.add(id, label);
    }

    pub(super) fn run_sweep(&mut self) {
        let base = self.recipe.editor.recipe.clone();
        let mut variants = vec![base.clone()];
        for d in [-1, 1] {
            let v = shift_bits(&base, d);
            if !variants.contains(&v) {
                variants.push(v);
            }
        }
        if variants.len() == 1 {
            self.notice("the sweep varies shift-add/RTN bits: set bits on some layers first");
        }
        for v in variants {
            self.submit(v, "sweep");
        }
    }

    pub(super) fn cancel(&mut self, id: JobId) {
        self.runner.cancel(id);
        if let Some(e) = self.jobs.get_mut(id) {
            e.cancel_requested = true;
        }
    }

    pub(super) fn cancel_latest(&mut self) {
        let latest = self.jobs.active().filter(|e| !e.cancel_requested).last();
        match latest.map(|e| e.id) {
            Some(id) => self.cancel(id),
            None => self.notice("no running job to cancel"),
        }
    }

    /// Loads run `id`'s recipe into the editor; with `merge_step`, its merge stopped after that
    /// many models.
    pub(super) fn load_run_recipe(&mut self, id: &str, merge_step: Option<usize>) {
        let Some(i) = self.runs.index_of(id) else {
            self.notice_error(format!("no run {id}"));
            return;
        };
        match self.runs.rows[i].recipe() {
            Ok(mut r) => {
                let what = match (merge_step, r.merge.as_mut()) {
                    (Some(step), Some(m)) => {
                        m.models.truncate(step.max(1));
                        format!("the merge of run {id} up to step {}", m.models.len())
                    }
                    _ => format!("the recipe of run {id}"),
                };
                self.recipe.editor.set(r);
                self.state.panel = Panel::Recipe;
                self.notice(format!("loaded {what} into the editor"));
            }
            Err(e) => self.notice_error(format!("run {id}: {e}")),
        }
    }

    pub(super) fn change_tags(&mut self, ids: &[String], tag: &str, add: bool) {
        let tag = tag.trim().to_string();
        if let Err(e) = check_tag(&tag) {
            self.notice_error(e.to_string());
            return;
        }
        let current: Vec<(String, Vec<String>)> = ids
            .iter()
            .filter_map(|id| {
                let i = self.runs.index_of(id)?;
                Some((id.clone(), self.runs.rows[i].record.tags.clone()))
            })
            .collect();
        let dir = self.store.dir.clone();
        self.tasks.spawn(
            "tags",
            move |tx| {
                let store = match Store::open(&dir) {
                    Ok(s) => s,
                    Err(e) => {
                        tx.send(TaskEvent::Saved(Err(format!("opening the store: {e}"))));
                        return;
                    }
                };
                for (id, mut tags) in current {
                    let r = if add {
                        store.add_tag(&id, &tag)
                    } else {
                        store.remove_tag(&id, &tag)
                    };
                    let result = r
                        .map(|_| {
                            tags.retain(|t| *t != tag);
                            if add {
                                tags.push(tag.clone());
                            }
                            tags
                        })
                        .map_err(|e| format!("{e}"));
                    tx.send(TaskEvent::Tags { id, result });
                }
            },
            |e| TaskEvent::Saved(Err(e)),
        );
    }

    pub(super) fn on_tags(&mut self, id: &str, result: Result<Vec<String>, String>) {
        match result {
            Ok(tags) => self.runs.set_tags(id, tags),
            Err(e) => self.notice_error(format!("tagging {id}: {e}")),
        }
    }
}
