//! Recipe editing: the editor (with undo), the pattern-rule form's drafts, and the analysis
//! of the edited recipe against the open model, recomputed only when either changes.

use crate::ui::editor::{Analysis, RecipeEditor};
use crate::ui::model_info::LoadedModel;
use crate::ui::recipe_panel::RuleForm;

pub struct RecipeEditing {
    pub editor: RecipeEditor,
    /// Drafts of the recipe editor's pattern-rule form.
    pub rule_form: RuleForm,
    analysis: Analysis,
    /// (editor generation, model id) the analysis was computed for.
    analysis_key: Option<(u64, String)>,
}

impl RecipeEditing {
    pub fn new(editor: RecipeEditor) -> Self {
        Self {
            editor,
            rule_form: RuleForm::default(),
            analysis: Analysis::default(),
            analysis_key: None,
        }
    }

    /// The analysis of the edited recipe against `model`, recomputed on change.
    pub fn analysis(&mut self, model: Option<&LoadedModel>) -> &Analysis {
        let key = (
            self.editor.generation,
            model.map(|m| m.summary.id.clone()).unwrap_or_default(),
        );
        if self.analysis_key.as_ref() != Some(&key) {
            self.analysis = self
                .editor
                .analyse(model.map(|m| (&m.model.transformer, m.summary.as_ref())));
            self.analysis_key = Some(key);
        }
        &self.analysis
    }
}
