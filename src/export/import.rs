//! Recipes from what users already have: a llama.cpp `--tensor-type` list (the per-tensor
//! types a `llama-quantize` call was given) as a per-layer RTN recipe, and a mergekit merge
//! config (YAML) as a merge recipe.
//!
//! Each line is `PATTERN=TYPE` (optionally after `--tensor-type`; `#` starts a comment).
//! llama.cpp searches each tensor name for PATTERN as a regular expression and the first
//! pattern that matches wins; the recipe says the same with `re:` rules written last-first (of
//! equally specific rules the later one wins). Types become RTN knobs: Q4_0/Q5_0/Q8_0 exactly
//! (symmetric, group 32), Q4_1/Q5_1 and the K types approximately (asymmetric RTN at their
//! bits, group 32: our zero point is an integer, theirs an f16 minimum, and K types nest 6-bit
//! scales in 256-weight super-blocks), F16 as f16 layers, F32/BF16 as dense layers. A pattern on the token
//! embedding becomes the `[embedding]` step (F16: its 16-bit form).

use crate::technique::recipe::{
    EmbeddingStep, LayerRule, MergeMethod, MergeStep, Recipe, RtnKnobs,
};

/// What an imported type becomes, and whether exactly.
fn rtn_for(ty: &str) -> Option<(Option<RtnKnobs>, bool)> {
    // Symmetric, or with an f16 minimum; llama.cpp multiplies every quantized type with int8
    // activations.
    let rtn = |bits, symmetric| {
        Some(RtnKnobs {
            bits,
            group: 32,
            symmetric,
            float_min: !symmetric,
            int8_activations: true,
        })
    };
    Some(match ty {
        "q4_0" => (rtn(4, true), true),
        "q5_0" => (rtn(5, true), true),
        "q8_0" => (rtn(8, true), true),
        "q4_1" => (rtn(4, false), true),
        "q5_1" => (rtn(5, false), true),
        "q4_k" => (rtn(4, false), false),
        "q5_k" => (rtn(5, false), false),
        "q2_k" => (rtn(2, false), false),
        "q3_k" => (rtn(3, false), false),
        "q6_k" => (rtn(6, false), false),
        "f16" | "f32" | "bf16" => (None, true),
        _ => return None,
    })
}

/// A recipe from a `--tensor-type` list, with one note per line that is approximated.
pub fn recipe_from_tensor_types(text: &str) -> anyhow::Result<(Recipe, Vec<String>)> {
    let mut rules = Vec::new();
    let mut embedding = None;
    let mut notes = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        let line = line.strip_prefix("--tensor-type").unwrap_or(line).trim();
        if line.is_empty() {
            continue;
        }
        let (pattern, ty) = line
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("line {}: `{raw}` is not PATTERN=TYPE", n + 1))?;
        let ty = ty.trim().to_ascii_lowercase();
        let (knobs, exact) = rtn_for(&ty).ok_or_else(|| {
            anyhow::anyhow!(
                "line {}: type `{ty}` has no RTN equivalent here (q4_0, q5_0, q8_0, q4_1, q5_1, \
                 q2_k…q6_k, f16, f32, bf16)",
                n + 1
            )
        })?;
        // Our layer names carry no `.weight`.
        let pattern = pattern.trim();
        let pattern = pattern
            .strip_suffix("\\.weight")
            .or_else(|| pattern.strip_suffix(".weight"))
            .unwrap_or(pattern);
        regex::Regex::new(pattern)
            .map_err(|e| anyhow::anyhow!("line {}: pattern `{pattern}`: {e}", n + 1))?;
        if !exact {
            notes.push(format!(
                "line {}: {ty} approximated by RTN {} bits, group 32 (not llama.cpp's own layout)",
                n + 1,
                knobs.as_ref().map_or(0, |k| k.bits)
            ));
        }
        if regex::Regex::new(pattern).is_ok_and(|re| re.is_match("token_embd")) {
            let step = match &knobs {
                Some(k) => Some(EmbeddingStep {
                    bits: k.bits,
                    group: k.group,
                    symmetric: k.symmetric,
                    float_min: k.float_min,
                    int8_activations: k.int8_activations,
                }),
                None if ty == "f16" => Some(EmbeddingStep {
                    bits: 16,
                    group: 0,
                    symmetric: false,
                    float_min: false,
                    int8_activations: false,
                }),
                None => None,
            };
            embedding = embedding.or(step);
            continue;
        }
        rules.push(LayerRule {
            pattern: format!("re:.*(?:{pattern}).*"),
            blocks: None,
            shiftadd: None,
            rtn: knobs,
            prune: None,
            rps: None,
            f16: ty == "f16",
        });
    }
    anyhow::ensure!(
        !rules.is_empty() || embedding.is_some(),
        "no PATTERN=TYPE line in the tensor-type list"
    );
    // llama.cpp takes the first matching pattern; equally specific rules: the last one wins.
    rules.reverse();
    let recipe = Recipe {
        embedding,
        layers: rules,
        ..Recipe::default()
    };
    Ok((recipe, notes))
}

/// A mergekit config, as far as the methods we have read it.
#[derive(Debug, serde::Deserialize)]
struct MergekitConfig {
    merge_method: String,
    #[serde(default)]
    base_model: Option<String>,
    #[serde(default)]
    models: Vec<MergekitModel>,
    #[serde(default)]
    parameters: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, serde::Deserialize)]
struct MergekitModel {
    model: String,
    #[serde(default)]
    parameters: Option<serde_yaml_ng::Value>,
}

fn number(params: Option<&serde_yaml_ng::Value>, key: &str) -> Option<f64> {
    params?.get(key)?.as_f64()
}

/// A merge recipe from a mergekit config: `linear` with equal weights is averaging,
/// `task_arithmetic` with one weight λ for every model (divided by their sum under
/// `normalize: true`) is task arithmetic; the base model is the model the recipe runs on (a
/// note says which one the config named). Methods and per-model weights we cannot reproduce
/// exactly are errors naming them.
pub fn recipe_from_mergekit(text: &str) -> anyhow::Result<(Recipe, Vec<String>)> {
    let config: MergekitConfig =
        serde_yaml_ng::from_str(text).map_err(|e| anyhow::anyhow!("mergekit config: {e}"))?;
    let mut notes = Vec::new();
    let base = config.base_model.clone();
    let models: Vec<&MergekitModel> = config
        .models
        .iter()
        .filter(|m| Some(&m.model) != base.as_ref())
        .collect();
    anyhow::ensure!(
        !models.is_empty(),
        "mergekit config: no model to merge besides the base"
    );
    let weights: Vec<f64> = models
        .iter()
        .map(|m| number(m.parameters.as_ref(), "weight").unwrap_or(1.0))
        .collect();
    let equal = weights.windows(2).all(|w| (w[0] - w[1]).abs() < 1e-12);
    let normalize = config
        .parameters
        .as_ref()
        .and_then(|p| p.get("normalize"))
        .and_then(serde_yaml_ng::Value::as_bool);
    let densities: Vec<f64> = models
        .iter()
        .map(|m| number(m.parameters.as_ref(), "density").unwrap_or(1.0))
        .collect();
    let density = || -> anyhow::Result<Option<f64>> {
        anyhow::ensure!(
            densities.windows(2).all(|w| (w[0] - w[1]).abs() < 1e-12),
            "mergekit densities {densities:?} differ between models: one density is supported"
        );
        Ok(Some(densities[0]))
    };
    // One weight for every model is one λ: divided by the weights' sum when the method
    // normalizes (`normalize`, which defaults to true for `ties` only).
    let lambda = |normalized: bool| {
        let sum: f64 = weights.iter().sum();
        if normalized {
            weights[0] / sum
        } else {
            weights[0]
        }
    };
    let mut merge_density = None;
    let (method, alpha) = match config.merge_method.as_str() {
        "linear" => {
            anyhow::ensure!(
                equal,
                "mergekit `linear` with unequal weights {weights:?}: only the plain average is \
                 supported"
            );
            (MergeMethod::Average, 0.5)
        }
        "task_arithmetic" => {
            anyhow::ensure!(
                equal,
                "mergekit `task_arithmetic` with unequal weights {weights:?}: one λ for every \
                 model is supported"
            );
            (MergeMethod::TaskArithmetic, lambda(normalize == Some(true)))
        }
        "ties" => {
            anyhow::ensure!(
                equal && normalize != Some(false),
                "mergekit `ties` with unequal weights {weights:?} or `normalize: false`: the \
                 mean of the agreeing entries (equal weights, normalized) is supported"
            );
            merge_density = density()?;
            (MergeMethod::Ties, 1.0)
        }
        "dare_linear" => {
            anyhow::ensure!(
                equal,
                "mergekit `dare_linear` with unequal weights {weights:?}: one weight for every \
                 model is supported"
            );
            merge_density = density()?;
            notes.push(
                "DARE's random masks are ours (seeded by the recipe), not mergekit's, and we \
                 scale the kept entries by 1/density where mergekit keeps each tensor's L1 \
                 norm (the same on average)"
                    .into(),
            );
            (MergeMethod::Dare, lambda(normalize == Some(true)))
        }
        other => anyhow::bail!(
            "mergekit method `{other}` is not one we run (linear with equal weights, \
             task_arithmetic with one weight, ties with equal weights, dare_linear with one \
             weight)"
        ),
    };
    if let Some(b) = &base {
        notes.push(format!(
            "the config's base_model is {b}: run the recipe on that model (reparam run {b} …)"
        ));
    }
    let recipe = Recipe {
        merge: Some(MergeStep {
            models: models.iter().map(|m| m.model.clone()).collect(),
            method,
            alpha,
            density: merge_density,
        }),
        ..Recipe::default()
    };
    Ok((recipe, notes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tensor_type_lists_become_rtn_rules_in_llama_cpp_order() {
        let (r, notes) = recipe_from_tensor_types(
            "# from a llama-quantize call\n--tensor-type attn_v=q8_0\nffn_down\\.weight=Q4_K\n\
             blk\\.0\\..*=q4_0\ntoken_embd=q8_0\n",
        )
        .unwrap();
        assert_eq!(r.layers.len(), 3);
        // Reversed: the first listed pattern is the last rule, so it wins ties.
        assert_eq!(r.layers[2].pattern, "re:.*(?:attn_v).*");
        assert!(r.layers[2].rtn.as_ref().unwrap().symmetric);
        assert_eq!(r.layers[1].pattern, "re:.*(?:ffn_down).*");
        assert!(!r.layers[1].rtn.as_ref().unwrap().symmetric);
        assert_eq!(notes.len(), 1, "{notes:?}");
        let e = r.embedding.unwrap();
        assert_eq!((e.bits, e.group, e.symmetric), (8, 32, true));
        let (r, _) = recipe_from_tensor_types("attn_output=f16\n").unwrap();
        assert!(r.layers[0].f16 && r.layers[0].layer_plan().is_ok());
        let (r, _) = recipe_from_tensor_types("token_embd=f16\nblk\\..*=q4_0\n").unwrap();
        assert_eq!(r.embedding.unwrap().bits, 16);
        assert!(recipe_from_tensor_types("attn_v=iq2_xxs").is_err());
        assert!(recipe_from_tensor_types("attn_v").is_err());
        assert!(recipe_from_tensor_types("(=q4_0").is_err());
    }

    #[test]
    fn mergekit_configs_become_merge_recipes() {
        let ta = "merge_method: task_arithmetic\nbase_model: zoo:base\nmodels:\n  - model: zoo:base\n  \
                  - model: zoo:arith\n    parameters:\n      weight: 0.4\n  - model: zoo:reverse\n    \
                  parameters:\n      weight: 0.4\ndtype: float16\n";
        let (r, notes) = recipe_from_mergekit(ta).unwrap();
        let m = r.merge.unwrap();
        assert_eq!(m.models, ["zoo:arith", "zoo:reverse"]);
        assert_eq!((m.method, m.alpha), (MergeMethod::TaskArithmetic, 0.4));
        assert!(notes[0].contains("zoo:base"));
        let avg = "merge_method: linear\nmodels:\n  - model: a\n  - model: b\n";
        assert_eq!(
            recipe_from_mergekit(avg).unwrap().0.merge.unwrap().method,
            MergeMethod::Average
        );
        let uneven = "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 0.7}\n  - model: b\n    parameters: {weight: 0.3}\n";
        assert!(
            recipe_from_mergekit(uneven)
                .unwrap_err()
                .to_string()
                .contains("unequal")
        );
        let ties = "merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 1.0, density: 0.3}\n  - model: b\n    parameters: {weight: 1.0, density: 0.3}\n";
        let m = recipe_from_mergekit(ties).unwrap().0.merge.unwrap();
        assert_eq!(
            (m.method, m.alpha, m.density),
            (MergeMethod::Ties, 1.0, Some(0.3))
        );
        let unnormalized = format!("{ties}parameters: {{normalize: false}}\n");
        assert!(recipe_from_mergekit(&unnormalized).is_err());
        let dare = "merge_method: dare_linear\nmodels:\n  - model: a\n    parameters: {weight: 1.0, density: 0.5}\n  - model: b\n    parameters: {weight: 1.0, density: 0.5}\n";
        let m = recipe_from_mergekit(dare).unwrap().0.merge.unwrap();
        // mergekit's `dare_linear` does not divide by the weights' sum unless told to.
        assert_eq!(
            (m.method, m.alpha, m.density),
            (MergeMethod::Dare, 1.0, Some(0.5))
        );
        let slerp = "merge_method: slerp\nmodels:\n  - model: a\n";
        assert!(
            recipe_from_mergekit(slerp)
                .unwrap_err()
                .to_string()
                .contains("slerp")
        );
        assert!(recipe_from_mergekit("merge_method: [").is_err());
    }
}
