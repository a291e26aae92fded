//! The recipe editor's logic without a window: cell edits become exact-name rules that start
//! from the layer's effective plan, pattern rules keep working, undo/redo, drag coalescing,
//! errors per cell, the size estimate, and the bit sweep.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TinySpec;
use reparam::model::{LinearId, LinearKind, Model};
use reparam::technique::recipe::{
    PruneKnobs, PruneMethod, Quant, Recipe, RpsKnobs, RtnKnobs, ShiftAddKnobs,
};
use reparam::ui::editor::{CellEdit, RecipeEditor, estimated_bytes, shift_bits};
use reparam::ui::model_info::ModelSummary;

fn tiny() -> (tempfile::TempDir, Model, ModelSummary) {
    let dir = tempfile::tempdir().unwrap();
    TinySpec::default().write_hf(dir.path(), 1);
    let m = Model::load(dir.path()).unwrap();
    let s = ModelSummary::from_model("tiny", &m);
    (dir, m, s)
}

fn id(block: usize, kind: LinearKind) -> LinearId {
    LinearId::new(block, kind)
}

#[test]
fn cell_edits_override_patterns_and_undo() {
    let (_d, m, s) = tiny();
    let mut ed = RecipeEditor::new(
        Recipe::from_toml("[[layers]]\nmatch = \"blk.*\"\n[layers.prune]\nratio = 0.3\n").unwrap(),
    );
    let a = ed.analyse(Some((&m.transformer, &s)));
    assert!(a.is_valid());
    assert_eq!(a.plan.len(), s.linears.len());
    let q = id(1, LinearKind::FfnUp);
    let prune = |ratio| {
        CellEdit::Prune(Some(PruneKnobs {
            ratio,
            method: PruneMethod::Magnitude,
            ..Default::default()
        }))
    };
    // Prune one layer harder: an exact rule for it wins over the pattern.
    ed.edit_cells(&[q], &prune(0.5), &a, Some((&m.transformer, &s)));
    let a = ed.analyse(Some((&m.transformer, &s)));
    let (rule, plan) = &a.plan[&q];
    assert_eq!(*rule, 1, "an exact rule wins over the pattern");
    assert_eq!(plan.prune.as_ref().unwrap().ratio, 0.5);
    // Dragging the ratio further is one undo step.
    for r in [0.55, 0.6, 0.65] {
        ed.edit_cells(&[q], &prune(r), &a, Some((&m.transformer, &s)));
    }
    assert!(ed.undo());
    assert_eq!(ed.recipe.layers.len(), 1, "back to the pattern alone");
    assert!(ed.redo());
    assert_eq!(ed.recipe.layers[1].prune.as_ref().unwrap().ratio, 0.65);
    // Quantizing a pruned layer is flagged in place (the quantized forms hold no zeros)...
    let a = ed.analyse(Some((&m.transformer, &s)));
    ed.edit_cells(
        &[q],
        &CellEdit::Quant(Some(Quant::ShiftAdd(ShiftAddKnobs::with_bits(3)))),
        &a,
        Some((&m.transformer, &s)),
    );
    let a = ed.analyse(Some((&m.transformer, &s)));
    assert!(!a.is_valid());
    assert!(a.cell_errors.contains_key(&q), "{a:?}");
    // ...and clearing the pruning leaves a valid shift-add layer.
    ed.edit_cells(&[q], &CellEdit::Prune(None), &a, Some((&m.transformer, &s)));
    let a = ed.analyse(Some((&m.transformer, &s)));
    assert!(a.is_valid(), "{a:?}");
    assert!(matches!(&a.plan[&q].1.quant, Some(Quant::ShiftAdd(k)) if k.bits == 3));
}

#[test]
fn invalid_combinations_are_flagged_per_cell_and_the_estimate_tracks_bits() {
    let (_d, m, s) = tiny();
    let mut ed = RecipeEditor::default();
    let a = ed.analyse(Some((&m.transformer, &s)));
    assert_eq!(a.estimate.total_bytes, s.size_bytes);
    let all: Vec<LinearId> = s.linears.iter().map(|l| l.id).collect();
    ed.edit_cells(
        &all,
        &CellEdit::Quant(Some(Quant::ShiftAdd(ShiftAddKnobs::with_bits(4)))),
        &a,
        Some((&m.transformer, &s)),
    );
    let a4 = ed.analyse(Some((&m.transformer, &s)));
    let a = a4.clone();
    ed.edit_cells(
        &all,
        &CellEdit::Quant(Some(Quant::ShiftAdd(ShiftAddKnobs::with_bits(2)))),
        &a,
        Some((&m.transformer, &s)),
    );
    let a2 = ed.analyse(Some((&m.transformer, &s)));
    assert!(a2.estimate.total_bytes < a4.estimate.total_bytes);
    assert!(a2.estimate.avg_bits < a4.estimate.avg_bits);
    // Planes alone are 2 bits; scales add the rest.
    assert!(a2.estimate.avg_bits > 2.0, "{}", a2.estimate.avg_bits);

    let q = id(0, LinearKind::AttnV);
    ed.edit_cells(
        &[q],
        &CellEdit::Rps(Some(RpsKnobs {
            ratio: 4.0,
            ..Default::default()
        })),
        &a2,
        Some((&m.transformer, &s)),
    );
    let bad = ed.analyse(Some((&m.transformer, &s)));
    assert!(!bad.is_valid());
    assert!(
        bad.cell_errors[&q].contains("rps"),
        "{}",
        bad.cell_errors[&q]
    );
    assert_eq!(bad.cell_errors.len(), 1, "only the edited layer is flagged");
    // Taking the quantization away makes the RPS layer valid; its estimate is n/ratio f32
    // slots plus the 8-byte seed the hashed form stores.
    ed.edit_cells(
        &[q],
        &CellEdit::Quant(None),
        &bad,
        Some((&m.transformer, &s)),
    );
    let ok = ed.analyse(Some((&m.transformer, &s)));
    assert!(ok.is_valid(), "{:?}", ok.first_error());
    let l = s.linear(q).unwrap();
    assert_eq!(
        estimated_bytes(l, &ok.plan[&q].1),
        l.weight_count().div_ceil(4) * 4 + 8
    );
}

/// Setting a knob on every layer of a recipe without per-layer rules writes one pattern rule,
/// which a later edit of all layers updates; one layer's edit then adds an exact rule beside it.
#[test]
fn editing_every_layer_writes_one_pattern_rule() {
    let (_d, m, s) = tiny();
    let mut ed = RecipeEditor::new(Recipe::default());
    let all: Vec<LinearId> = s.linears.iter().map(|l| l.id).collect();
    let a = ed.analyse(Some((&m.transformer, &s)));
    ed.edit_cells(
        &all,
        &CellEdit::Quant(Some(Quant::Rtn(RtnKnobs {
            bits: 4,
            group: 128,
            symmetric: false,
            float_min: false,
            int8_activations: false,
        }))),
        &a,
        Some((&m.transformer, &s)),
    );
    assert_eq!(ed.recipe.layers.len(), 1, "{:?}", ed.recipe.layers);
    assert_eq!(ed.recipe.layers[0].pattern, "blk.*.*");
    let a = ed.analyse(Some((&m.transformer, &s)));
    assert_eq!(a.plan.len(), all.len());
    ed.edit_cells(
        &all,
        &CellEdit::Quant(Some(Quant::Rtn(RtnKnobs {
            bits: 3,
            group: 128,
            symmetric: false,
            float_min: false,
            int8_activations: false,
        }))),
        &a,
        Some((&m.transformer, &s)),
    );
    assert_eq!(
        ed.recipe.layers.len(),
        1,
        "the pattern rule is updated in place"
    );
    assert_eq!(ed.recipe.layers[0].rtn.as_ref().unwrap().bits, 3);
    let a = ed.analyse(Some((&m.transformer, &s)));
    ed.edit_cells(
        &all[..1],
        &CellEdit::Quant(Some(Quant::Rtn(RtnKnobs {
            bits: 8,
            group: 128,
            symmetric: false,
            float_min: false,
            int8_activations: false,
        }))),
        &a,
        Some((&m.transformer, &s)),
    );
    assert_eq!(ed.recipe.layers.len(), 2, "{:?}", ed.recipe.layers);
    // Undo goes back one edit at a time.
    assert!(ed.undo());
    assert_eq!(ed.recipe.layers.len(), 1);
}

#[test]
fn flatten_pairs_are_checked() {
    let (_d, m, s) = tiny();
    let mut ed = RecipeEditor::default();
    ed.toggle_flatten(0);
    assert!(ed.analyse(Some((&m.transformer, &s))).is_valid());
    ed.toggle_flatten(s.n_blocks - 1);
    let a = ed.analyse(Some((&m.transformer, &s)));
    assert!(
        a.step_errors.iter().any(|e| e.contains("no next block")),
        "{:?}",
        a.step_errors
    );
    ed.toggle_flatten(s.n_blocks - 1);
    ed.toggle_flatten(0);
    assert!(ed.recipe.flatten.is_none());
}

#[test]
fn the_sweep_moves_every_bit_width() {
    let r = Recipe::from_toml(
        "[[layers]]\nmatch = \"blk.*\"\n[layers.shiftadd]\nbits = 2\n[[layers]]\nmatch = \"blk.0.*\"\n[layers.rtn]\nbits = 8\n",
    )
    .unwrap();
    let down = shift_bits(&r, -1);
    assert_eq!(
        down.layers[0].shiftadd.as_ref().unwrap().bits,
        2,
        "clamped at 2"
    );
    assert_eq!(down.layers[1].rtn.as_ref().unwrap().bits, 7);
    let up = shift_bits(&r, 1);
    assert_eq!(up.layers[0].shiftadd.as_ref().unwrap().bits, 3);
    assert_eq!(up.layers[1].rtn.as_ref().unwrap().bits, 8);
}

/// A selection that is a pattern becomes pattern rules (a kind across the model, a group of
/// kinds, a block range), replacing the rules it makes redundant, and leaving every other layer
/// as it was; a scattered selection, or one whose layers end with different plans, becomes an
/// exact rule per layer; an invalid setting on a pattern is one error naming the pattern.
#[test]
fn pattern_selections_write_pattern_rules() {
    let (_d, m, s) = tiny();
    let model = Some((&m.transformer, &s));
    let rtn = |bits| {
        CellEdit::Quant(Some(Quant::Rtn(RtnKnobs {
            bits,
            group: 128,
            symmetric: false,
            float_min: false,
            int8_activations: false,
        })))
    };
    let select = |f: &dyn Fn(&LinearId) -> bool| -> Vec<LinearId> {
        s.linears.iter().map(|l| l.id).filter(|id| f(id)).collect()
    };
    let base = "[[layers]]\nmatch = \"blk.*.*\"\n[layers.rtn]\nbits = 4\n\
                [[layers]]\nmatch = \"blk.1.attn_q\"\n[layers.rtn]\nbits = 8\n";
    let mut ed = RecipeEditor::new(Recipe::from_toml(base).unwrap());

    // One kind across every block.
    let a = ed.analyse(model);
    ed.edit_cells(
        &select(&|id| id.kind == LinearKind::FfnUp),
        &rtn(3),
        &a,
        model,
    );
    let last = ed.recipe.layers.last().unwrap();
    assert_eq!(
        (last.pattern.as_str(), last.blocks.as_deref()),
        ("blk.*.ffn_up", None)
    );
    assert_eq!(ed.recipe.layers.len(), 3);

    // The FFN group of block 0: one rule with a block range; block 1 and the exact rule keep
    // their plans.
    let a = ed.analyse(model);
    let ffn0 = select(&|id| id.block == 0 && id.kind.gguf_name().starts_with("ffn_"));
    ed.edit_cells(&ffn0, &rtn(2), &a, model);
    let last = ed.recipe.layers.last().unwrap();
    assert_eq!(
        (last.pattern.as_str(), last.blocks.as_deref()),
        ("blk.*.ffn_*", Some("0"))
    );
    let a = ed.analyse(model);
    let bits = |id: LinearId| match &a.plan[&id].1.quant {
        Some(Quant::Rtn(k)) => k.bits,
        other => panic!("{other:?}"),
    };
    assert_eq!(bits(id(0, LinearKind::FfnDown)), 2);
    assert_eq!(bits(id(1, LinearKind::FfnUp)), 3);
    assert_eq!(bits(id(1, LinearKind::FfnDown)), 4);
    assert_eq!(bits(id(1, LinearKind::AttnQ)), 8);

    // The attention group everywhere replaces the exact rule it covers.
    let attn = select(&|id| id.kind.gguf_name().starts_with("attn_"));
    ed.edit_cells(&attn, &rtn(5), &a, model);
    assert!(ed.recipe.layers.iter().all(|r| r.pattern != "blk.1.attn_q"));
    assert_eq!(ed.recipe.layers.last().unwrap().pattern, "blk.*.attn_*");

    // Every layer: the one rule left.
    let a = ed.analyse(model);
    ed.edit_cells(&select(&|_| true), &rtn(6), &a, model);
    assert_eq!(ed.recipe.layers.len(), 1, "{:?}", ed.recipe.layers);
    assert_eq!(ed.recipe.layers[0].pattern, "blk.*.*");

    // Scattered: exact rules.
    let a = ed.analyse(model);
    let scattered = vec![id(0, LinearKind::AttnQ), id(1, LinearKind::FfnUp)];
    ed.edit_cells(&scattered, &rtn(3), &a, model);
    assert_eq!(ed.recipe.layers.len(), 3);
    assert!(
        ed.recipe.layers[1..]
            .iter()
            .all(|r| r.pattern.split('.').count() == 3 && !r.pattern.contains('*'))
    );

    // Different plans after the edit (one layer pruned): per layer as well.
    let mut ed = RecipeEditor::default();
    let a = ed.analyse(model);
    let q0 = id(0, LinearKind::AttnQ);
    ed.edit_cells(
        &[q0],
        &CellEdit::Rps(Some(RpsKnobs {
            ratio: 2.0,
            ..Default::default()
        })),
        &a,
        model,
    );
    let a = ed.analyse(model);
    let block0 = select(&|id| id.block == 0);
    ed.edit_cells(
        &block0,
        &CellEdit::Prune(Some(PruneKnobs {
            ratio: 0.5,
            ..Default::default()
        })),
        &a,
        model,
    );
    assert_eq!(ed.recipe.layers.len(), block0.len());

    // An invalid setting on every layer is one error, naming its pattern.
    let mut ed = RecipeEditor::new(
        Recipe::from_toml("[[layers]]\nmatch = \"blk.*.*\"\n[layers.prune]\nratio = 0.3\n")
            .unwrap(),
    );
    let a = ed.analyse(model);
    let sa = CellEdit::Quant(Some(Quant::ShiftAdd(ShiftAddKnobs::with_bits(3))));
    ed.edit_cells(&select(&|_| true), &sa, &a, model);
    let a = ed.analyse(model);
    assert_eq!(ed.recipe.layers.len(), 1);
    assert_eq!(a.rule_errors.iter().flatten().count(), 1);
    let e = &a.cell_errors[&q0];
    assert!(e.contains("rule 0 (blk.*.*)"), "{e}");
}
