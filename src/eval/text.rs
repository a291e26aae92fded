//! Which text an evaluation scores when the user names none: one rule for `eval`, `run`, the
//! job runner, the sensitivity pass and the app.

use std::path::Path;

use anyhow::Context as _;

use crate::model::Model;
use crate::zoo::corpus::lang_eval_text;
use crate::zoo::{LANG_EVAL_SENTENCES, is_zoo_model};

/// The bundled evaluation text for models without a built-in one: the GNU GPL 3 and the
/// Apache 2.0 licence, verbatim (`assets/text/licenses.txt`, embedded so the binary runs
/// anywhere). It is disjoint from the bundled calibration text, but of the same (legal) domain.
const BUNDLED_EVAL_TEXT: &str = include_str!("../../assets/text/licenses.txt");

/// The text scored when none is given: the zoo's held-out `lang` text for zoo models, else the
/// bundled evaluation text.
pub fn default_evaluation_text(model: &Model) -> String {
    if is_zoo_model(&model.path) {
        lang_eval_text(LANG_EVAL_SENTENCES)
    } else {
        BUNDLED_EVAL_TEXT.to_string()
    }
}

/// The text an evaluation scores: the file at `path`, else [`default_evaluation_text`].
pub fn evaluation_text(model: &Model, path: Option<&Path>) -> anyhow::Result<String> {
    match path {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())),
        None => Ok(default_evaluation_text(model)),
    }
}
