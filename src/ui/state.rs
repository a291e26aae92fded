//! Persisted UI preferences: which panel is open, the model, the recipe being edited, the
//! selected run, plot axes and filters. Everything here survives a restart (eframe
//! persistence); runtime things (threads, loaded data) live in [`super::studio::Studio`].

use std::collections::BTreeSet;

use crate::run::EvalSettings;
use crate::technique::CalibOptions;
use serde::{Deserialize, Serialize};

use crate::technique::recipe::Recipe;

use super::runs::RunFilter;

/// The main panels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Panel {
    #[default]
    Model,
    Recipe,
    Jobs,
    Pareto,
    History,
}

impl Panel {
    pub const ALL: [Self; 5] = [
        Self::Model,
        Self::Recipe,
        Self::Jobs,
        Self::Pareto,
        Self::History,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Model => "Model",
            Self::Recipe => "Recipe",
            Self::Jobs => "Jobs",
            Self::Pareto => "Pareto",
            Self::History => "History",
        }
    }
}

/// How Pareto points are coloured.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ColorBy {
    #[default]
    None,
    /// Technique family of the run's recipe.
    Family,
    /// A third metric on a colour ramp.
    Metric(String),
}

/// Pareto panel preferences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ParetoPrefs {
    pub x: String,
    pub y: String,
    pub color: ColorBy,
    pub filter: RunFilter,
    pub show_front: bool,
    /// Drag selects a box of runs instead of panning.
    pub box_select: bool,
}

impl Default for ParetoPrefs {
    fn default() -> Self {
        Self {
            x: "bytes".into(),
            y: "kld_mean".into(),
            color: ColorBy::Family,
            filter: RunFilter::default(),
            show_front: true,
            box_select: false,
        }
    }
}

/// History panel preferences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryPrefs {
    /// Sort column: `created_at`, `id`, `model`, `status`, or a metric name.
    pub sort: String,
    pub descending: bool,
    pub filter: RunFilter,
    /// Compare view: the two sets, by tag.
    pub tag_a: String,
    pub tag_b: String,
    /// Compare view: two runs for the per-layer diff.
    pub run_a: Option<String>,
    pub run_b: Option<String>,
    /// Extra metric columns shown in the table.
    pub columns: Vec<String>,
}

impl Default for HistoryPrefs {
    fn default() -> Self {
        Self {
            sort: "created_at".into(),
            descending: true,
            filter: RunFilter::default(),
            tag_a: String::new(),
            tag_b: String::new(),
            run_a: None,
            run_b: None,
            columns: vec![
                "bytes".into(),
                "avg_bits".into(),
                "ppl".into(),
                "kld_mean".into(),
                "decode_tok_s".into(),
            ],
        }
    }
}

/// The settings of jobs started from the app: the settings every run takes (the CLI's flags
/// and the run key's), with defaults that favour speed, and the tags given to new runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalPrefs {
    pub settings: EvalSettings,
    /// Tags given to new runs.
    pub tags: String,
}

impl Default for EvalPrefs {
    fn default() -> Self {
        Self {
            settings: EvalSettings {
                ctx: Some(128),
                chunks: Some(8),
                calib: CalibOptions {
                    samples: 16,
                    seq_len: 128,
                },
                task_prompts: 50,
                ..EvalSettings::default()
            },
            tags: String::new(),
        }
    }
}

/// Everything the app remembers between sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppState {
    pub panel: Panel,
    /// The model opened last (`zoo:multi`, a GGUF path, an HF directory).
    pub model_spec: String,
    /// The recipe being edited.
    pub recipe: Option<Recipe>,
    /// The selected run (history, Pareto).
    pub selected_run: Option<String>,
    /// Blocks expanded to their linears in the editor grid.
    pub expanded_blocks: BTreeSet<usize>,
    /// Linears selected in the editor grid (edits apply to all of them), by name.
    pub selected_cells: BTreeSet<String>,
    pub pareto: ParetoPrefs,
    pub history: HistoryPrefs,
    pub eval: EvalPrefs,
    /// Sensitivity pass: shift-add bits for layers the recipe leaves alone (0 = skip them).
    pub sensitivity_bits: usize,
    /// What the layer map's colours show.
    pub map_quantity: super::layer_map::MapQuantity,
}

impl Default for AppState {
    fn default() -> Self {
        Self {
            panel: Panel::Model,
            model_spec: "zoo:multi".into(),
            recipe: None,
            selected_run: None,
            expanded_blocks: BTreeSet::new(),
            selected_cells: BTreeSet::new(),
            pareto: ParetoPrefs::default(),
            history: HistoryPrefs::default(),
            eval: EvalPrefs::default(),
            sensitivity_bits: 3,
            map_quantity: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;

    use super::*;

    #[derive(Default)]
    struct Memory(HashMap<String, String>);

    impl eframe::Storage for Memory {
        fn get_string(&self, key: &str) -> Option<String> {
            self.0.get(key).cloned()
        }
        fn set_string(&mut self, key: &str, value: String) {
            self.0.insert(key.to_string(), value);
        }
        fn remove_string(&mut self, key: &str) {
            self.0.remove(key);
        }
        fn flush(&mut self) {}
    }

    /// The state survives eframe's RON storage, job settings included; a state saved before
    /// the settings became one type still restores everything else.
    #[test]
    fn state_round_trips_through_the_apps_storage() {
        let mut state = AppState {
            model_spec: "zoo:base".into(),
            ..AppState::default()
        };
        state.eval.settings.chunks = Some(3);
        state.eval.settings.device = crate::device::DeviceChoice::Cuda(1);
        state.eval.tags = "a,b".into();
        let mut storage = Memory::default();
        eframe::set_value(&mut storage, "app", &state);
        let back: AppState = eframe::get_value(&storage, "app").unwrap();
        assert_eq!(back, state);

        let old = r#"(panel: Model, model_spec: "zoo:base", eval: (chunks: 8, ctx: 128, task_prompts: 50, calib_samples: 16, calib_len: 128, tags: "old"), sensitivity_bits: 4)"#;
        eframe::Storage::set_string(&mut storage, "app", old.to_string());
        let back: AppState = eframe::get_value(&storage, "app").unwrap();
        assert_eq!(back.model_spec, "zoo:base");
        assert_eq!(back.sensitivity_bits, 4);
        assert_eq!(back.eval.tags, "old");
        assert_eq!(back.eval.settings, EvalPrefs::default().settings);
    }
}
