//! Which texts an evaluation scores: one rule for `eval`, `run`, the job runner, the
//! sensitivity pass and the app. A user names a text file or a suite; otherwise zoo models
//! score their held-out `lang` text and every other model the built-in held-out suite.

use std::path::Path;

use anyhow::Context as _;

use super::suite::{Domain, HELD_OUT, suite_domains};
use crate::model::Model;
use crate::zoo::corpus::lang_eval_text;
use crate::zoo::{LANG_EVAL_SENTENCES, is_zoo_model};

/// The texts to score and how to name them in reports ("suite held-out", a file name, …).
#[derive(Debug, Clone)]
pub struct EvalTexts {
    pub label: String,
    /// One domain for a single text; several for a suite.
    pub domains: Vec<Domain>,
}

impl EvalTexts {
    /// Whether per-domain metrics are worth reporting (a suite of more than one text).
    pub fn is_suite(&self) -> bool {
        self.domains.len() > 1
    }

    /// Each domain's name and tokens under `model`'s tokenizer, as the scoring takes them.
    pub fn tokenize(&self, model: &Model) -> anyhow::Result<Vec<(String, Vec<u32>)>> {
        self.domains
            .iter()
            .map(|d| Ok((d.name.clone(), model.tokenizer.encode(&d.text, true)?)))
            .collect()
    }
}

/// The texts an evaluation scores: the file at `text`, else suite `suite`, else the model's
/// default (the zoo's held-out `lang` text, or the built-in held-out suite).
pub fn evaluation_texts(
    model: &Model,
    text: Option<&Path>,
    suite: Option<&str>,
) -> anyhow::Result<EvalTexts> {
    anyhow::ensure!(
        text.is_none() || suite.is_none(),
        "give an evaluation text or a suite, not both"
    );
    if let Some(p) = text {
        let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        return Ok(EvalTexts {
            label: p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            domains: vec![Domain {
                name: "text".into(),
                text: t,
            }],
        });
    }
    let suite = match suite {
        Some(s) => s,
        None if is_zoo_model(&model.path) => {
            return Ok(EvalTexts {
                label: "zoo lang (held out)".into(),
                domains: vec![Domain {
                    name: "lang".into(),
                    text: lang_eval_text(LANG_EVAL_SENTENCES),
                }],
            });
        }
        None => HELD_OUT,
    };
    Ok(EvalTexts {
        label: format!("suite {suite}"),
        domains: suite_domains(suite)?,
    })
}

/// One text standing for the default evaluation where a single stream is needed (the
/// sensitivity pass, which scores a short prefix): for a suite, its domains' paragraphs taken
/// in turn, so any prefix covers every domain.
pub fn default_evaluation_text(model: &Model) -> anyhow::Result<String> {
    let texts = evaluation_texts(model, None, None)?;
    let mut paras: Vec<std::str::Split<'_, &str>> =
        texts.domains.iter().map(|d| d.text.split("\n\n")).collect();
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for p in &mut paras {
            if let Some(x) = p.next() {
                out.push(x);
            }
        }
        if out.len() == before {
            break;
        }
    }
    Ok(out.join("\n\n"))
}
