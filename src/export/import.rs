//! Recipes from what users already have: a llama.cpp `--tensor-type` list (the per-tensor
//! types a `llama-quantize` call was given) as a per-layer RTN recipe.
//!
//! Each line is `PATTERN=TYPE` (optionally after `--tensor-type`; `#` starts a comment).
//! llama.cpp searches each tensor name for PATTERN as a regular expression and the first
//! pattern that matches wins; the recipe says the same with `re:` rules written last-first (of
//! equally specific rules the later one wins). Types become RTN knobs: Q4_0/Q5_0/Q8_0 exactly
//! (symmetric, group 32), Q4_1/Q5_1 and the K types approximately (asymmetric RTN at their
//! bits, group 32: our zero point is an integer, theirs an f16 minimum, and K types nest 6-bit
//! scales in 256-weight super-blocks), F16/F32/BF16 as dense layers. A pattern on the token
//! embedding becomes the `[embedding]` step.

use crate::technique::recipe::{EmbeddingStep, LayerRule, Recipe, RtnKnobs};

/// What an imported type becomes, and whether exactly.
fn rtn_for(ty: &str) -> Option<(Option<RtnKnobs>, bool)> {
    let rtn = |bits, symmetric| {
        Some(RtnKnobs {
            bits,
            group: 32,
            symmetric,
        })
    };
    Some(match ty {
        "q4_0" => (rtn(4, true), true),
        "q5_0" => (rtn(5, true), true),
        "q8_0" => (rtn(8, true), true),
        "q4_1" | "q4_k" => (rtn(4, false), false),
        "q5_1" | "q5_k" => (rtn(5, false), false),
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
            embedding = embedding.or(knobs.clone().map(|k| EmbeddingStep {
                bits: k.bits,
                group: k.group,
                symmetric: k.symmetric,
            }));
            continue;
        }
        rules.push(LayerRule {
            pattern: format!("re:.*(?:{pattern}).*"),
            blocks: None,
            shiftadd: None,
            rtn: knobs,
            prune: None,
            rps: None,
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
        assert!(recipe_from_tensor_types("attn_v=iq2_xxs").is_err());
        assert!(recipe_from_tensor_types("attn_v").is_err());
        assert!(recipe_from_tensor_types("(=q4_0").is_err());
    }
}
