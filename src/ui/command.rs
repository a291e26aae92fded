//! What the panels ask for. Changes to the recipe, the store, jobs and the open model go
//! through a [`Command`], which [`super::studio::Studio::apply`] applies once per frame, after
//! drawing (so they can be undone and scripted). View preferences (axes, filters, the job
//! settings) are plain fields the widgets edit in place.

use crate::jobs::JobId;
use crate::model::LinearId;
use crate::technique::recipe::{LayerRule, MergeStep, Recipe};

use super::dialogs::DialogKind;
use super::editor::CellEdit;
use super::state::Panel;

/// One user intent.
#[derive(Debug, Clone)]
pub enum Command {
    /// Show another panel.
    SwitchPanel(Panel),
    /// Load a model by spec (`zoo:NAME`, a GGUF path, an HF directory) in the background.
    OpenModel(String),
    /// Ask for a GGUF file or an HF directory, then open it.
    OpenModelDialog(DialogKind),
    /// Measure every linear's sensitivity (KL divergence when only that layer is compressed at
    /// the edited recipe's setting) in the background.
    RunSensitivity,
    /// Stop the running sensitivity pass.
    CancelSensitivity,
    /// Shift-add bits for the layers the recipe leaves alone in a sensitivity pass (0 = skip
    /// them).
    SetSensitivityBits(usize),
    /// Search per-layer assignments of the candidates (measuring what the store's table
    /// lacks) in the background; the predicted front appears on the Pareto plot.
    RunSearch,
    CancelSearch,
    /// Run this many points spread along the predicted front as jobs (tagged `search`).
    MeasureSearchPoints(usize),
    /// Load a predicted point's recipe into the editor.
    LoadSearchPoint(usize),
    /// Set one family of the given linears.
    EditCells {
        targets: Vec<LinearId>,
        edit: CellEdit,
    },
    /// Toggle "flatten this block with the next".
    ToggleFlatten(usize),
    /// Replace the merge step.
    SetMerge(Option<MergeStep>),
    /// Set the recipe's seed.
    SetSeed(u64),
    /// Append a pattern rule.
    AddRule(LayerRule),
    RemoveRule(usize),
    /// Replace the whole recipe (undoable).
    SetRecipe(Recipe),
    Undo,
    Redo,
    /// Load a recipe TOML through a dialog.
    LoadRecipeDialog,
    /// Save the edited recipe as TOML through a dialog.
    SaveRecipeDialog,
    /// Run the edited recipe on the open model.
    RunRecipe,
    /// Run the edited recipe and its neighbours (every bit width one lower and one higher).
    RunSweep,
    CancelJob(JobId),
    /// Cancel the most recently started job still running (Esc).
    CancelLatest,
    /// Forget finished jobs in the jobs list (their runs stay in the store).
    ClearFinishedJobs,
    /// Select a run (Pareto click, history row).
    SelectRun(Option<String>),
    /// Replace the box selection of runs.
    SetBoxSelection(Vec<String>),
    /// Load a run's recipe into the editor.
    LoadRunRecipe(String),
    /// Load a merge run's recipe stopped after its `step`-th model (1-based) into the editor:
    /// the intermediate model of its timeline, to run or build on.
    LoadMergeStep {
        id: String,
        step: usize,
    },
    AddTag {
        ids: Vec<String>,
        tag: String,
    },
    RemoveTag {
        id: String,
        tag: String,
    },
    /// Read the store again.
    ReloadStore,
    /// Export the Pareto plot.
    ExportPlotPng,
    ExportPlotSvg,
    /// Export a run's recipe, compressed model, or llama.cpp tensor-type file.
    ExportRecipe(String),
    ExportModel(String),
    /// Export a run's compressed model as one GGUF file.
    ExportGguf(String),
    ExportTypes(String),
    /// Pick a run as side A or B of the per-layer diff.
    SetCompareRun {
        side_b: bool,
        id: Option<String>,
    },
    /// Forget the notices shown in the status bar.
    DismissNotices,
    /// The typed-path prompt's answer (`None`: cancelled).
    AnswerPathPrompt(Option<String>),
}
