//! What the views remember between frames: caches of derived tables and plots, and the
//! transient selections and text fields that are not persisted.

use eframe::egui;

use crate::ui::dialogs::DialogKind;
use crate::ui::history_panel::HistoryCache;
use crate::ui::pareto_panel::ParetoCache;
use crate::ui::tasks::DialogPurpose;

/// A path typed by hand because no file dialog could open: what it is for and the text so far.
#[derive(Debug, Clone)]
pub struct PathPrompt {
    pub purpose: DialogPurpose,
    pub kind: DialogKind,
    pub text: String,
    /// Why no dialog opened.
    pub reason: String,
}

/// The compare view's per-layer diff, keyed by (run A, run B, open model id).
pub type DiffCache = (
    (String, String, Option<String>),
    Result<Vec<(String, String, String)>, String>,
);

#[derive(Default)]
pub struct Views {
    /// Runs inside the last box selection on the Pareto plot.
    pub box_selection: Vec<String>,
    pub pareto_cache: ParetoCache,
    /// The Pareto axes drawn last frame; a change refits the view.
    pub pareto_axes: Option<(String, String)>,
    /// The Pareto plot's visible data range last frame, `[x0, y0, x1, y1]`.
    pub pareto_view: Option<[f64; 4]>,
    /// Where the plot was drawn last frame (screen points), for the PNG export's crop.
    pub plot_rect: Option<egui::Rect>,
    /// Text typed into the tag boxes.
    pub tag_input: String,
    pub history_cache: HistoryCache,
    pub diff_cache: Option<DiffCache>,
    /// The typed-path prompt shown when no file dialog could open.
    pub path_prompt: Option<PathPrompt>,
    /// Hypervolumes of the compare view's two sets, as last drawn.
    pub compare_hv: Option<(f64, f64)>,
}
