//! Recipes: TOML/JSON round trips, a stable content hash, rule resolution (specificity,
//! overlaps reported), and clear errors before any work starts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TinySpec;
use reparam::model::{LinearId, LinearKind, Model};
use reparam::technique::recipe::{Quant, Recipe};

fn tiny() -> (tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().unwrap();
    TinySpec::default().write_hf(dir.path(), 1);
    let m = Model::load(dir.path()).unwrap();
    (dir, m)
}

const RECIPE: &str = r#"
seed = 7

[[layers]]
match = "blk.*.*"
[layers.shiftadd]
bits = 3

[[layers]]
match = "blk.*.ffn_*"
blocks = "1"
[layers.rtn]
bits = 4
"#;

#[test]
fn toml_json_round_trip_and_stable_hash() {
    let r = Recipe::from_toml(RECIPE).unwrap();
    let again = Recipe::from_toml(&r.to_toml().unwrap()).unwrap();
    assert_eq!(r, again);
    assert_eq!(r, Recipe::from_json(&r.to_json()).unwrap());
    assert_eq!(r.hash(), again.hash());
    // Formatting does not change the hash; a knob does.
    let reformatted = RECIPE.replace("bits = 3", "bits   =   3  # three");
    assert_eq!(Recipe::from_toml(&reformatted).unwrap().hash(), r.hash());
    let changed = Recipe::from_toml(&RECIPE.replace("bits = 3", "bits = 2")).unwrap();
    assert_ne!(changed.hash(), r.hash());
    // Defaults are filled in and explicit.
    let toml = r.to_toml().unwrap();
    assert!(toml.contains("apot_terms = 3"), "{toml}");
}

#[test]
fn most_specific_rule_wins_and_overlaps_are_reported() {
    let (_d, m) = tiny();
    let plan = Recipe::from_toml(RECIPE)
        .unwrap()
        .resolve(&m.transformer)
        .unwrap();
    assert_eq!(plan.layers.len(), 14, "every linear of both blocks");
    let down1 = &plan.layers[&LinearId::new(1, LinearKind::FfnDown)];
    assert!(
        matches!(down1.1.quant, Some(Quant::Rtn(_))),
        "block-restricted rule wins"
    );
    let down0 = &plan.layers[&LinearId::new(0, LinearKind::FfnDown)];
    assert!(matches!(down0.1.quant, Some(Quant::ShiftAdd(_))));
    assert_eq!(plan.notes.len(), 3, "{:?}", plan.notes);
    assert!(
        plan.notes[0].contains("blk.1.ffn_gate: rules 0 and 1 overlap; rule 1 applies"),
        "{:?}",
        plan.notes
    );
}

#[test]
fn hf_names_and_regexes_select_layers() {
    let (_d, m) = tiny();
    let r = Recipe::from_toml(
        "[[layers]]\nmatch = \"model.layers.0.mlp.down_proj\"\n[layers.rtn]\nbits = 4\n\n\
         [[layers]]\nmatch = \"re:blk\\\\.1\\\\.attn_[qk]\"\n[layers.rtn]\nbits = 4\n",
    )
    .unwrap();
    let plan = r.resolve(&m.transformer).unwrap();
    let names: Vec<String> = plan.layers.keys().map(ToString::to_string).collect();
    assert_eq!(names, ["blk.0.ffn_down", "blk.1.attn_q", "blk.1.attn_k"]);
}

fn resolve_err(text: &str) -> String {
    let (_d, m) = tiny();
    match Recipe::from_toml(text) {
        Err(e) => e.to_string(),
        Ok(r) => r.resolve(&m.transformer).unwrap_err().to_string(),
    }
}

#[test]
fn bad_recipes_are_clear_errors() {
    let msg = resolve_err("[[layers]]\nmatch = \"blk.*.ffn_sideways\"\n[layers.rtn]\nbits = 4\n");
    assert!(
        msg.contains("rule 0 (`blk.*.ffn_sideways`)") && msg.contains("matches no layer"),
        "{msg}"
    );
    let msg =
        resolve_err("[[layers]]\nmatch = \"blk.*.*\"\nblocks = \"7\"\n[layers.rtn]\nbits = 4\n");
    assert!(
        msg.contains("block 7 does not exist (the model has 2 blocks)"),
        "{msg}"
    );
    let msg = resolve_err("[[layers]]\nmatch = \"blk.*.*\"\n[layers.shiftadd]\nbits = 9\n");
    assert!(msg.contains("shiftadd.bits = 9 is outside 2..=8"), "{msg}");
    let msg =
        resolve_err("[[layers]]\nmatch = \"blk.*.*\"\n[layers.shiftadd]\nbits = 3\nbitz = 2\n");
    assert!(msg.contains("unknown field `bitz`"), "{msg}");
    let msg = resolve_err("[[layers]]\nmatch = \"blk.*.*\"\n");
    assert!(msg.contains("sets no technique"), "{msg}");
    let msg = resolve_err("[[layers]]\nmatch = \"re:blk.(\"\n[layers.rtn]\nbits = 4\n");
    assert!(msg.contains("bad regex"), "{msg}");
    // f16 is a stored form of its own: not beside another, not under a sparse form.
    let msg = resolve_err("[[layers]]\nmatch = \"blk.*.*\"\nf16 = true\n[layers.rtn]\nbits = 4\n");
    assert!(msg.contains("one stored form"), "{msg}");
    let msg = resolve_err(
        "[[layers]]\nmatch = \"blk.*.*\"\nf16 = true\n[layers.prune]\nmethod = \"magnitude\"\nratio = 0.5\n",
    );
    assert!(msg.contains("combines `prune` with `f16`"), "{msg}");
}

#[test]
fn an_f16_layer_holds_half_the_bytes_and_every_weight_rounded_to_f16() {
    let (_d, m) = tiny();
    let r = Recipe::from_toml("[[layers]]\nmatch = \"blk.*.ffn_up\"\nf16 = true\n").unwrap();
    let c = reparam::technique::apply(
        &m,
        &r,
        &[],
        reparam::technique::CalibOptions::default(),
        &mut |_, _, _| true,
    )
    .unwrap();
    let plan = r.resolve(&m.transformer).unwrap();
    let (_, layer) = plan.layers.values().next().unwrap();
    let values = |w: &reparam::model::LinearWeight| {
        w.to_dense()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    for (b, block) in c.model.transformer.blocks.iter().enumerate() {
        let (before, after) = (&m.transformer.blocks[b].ffn_up, &block.ffn_up);
        assert_eq!(after.form(), "f16");
        assert_eq!(after.size_bytes() * 2, before.size_bytes());
        let (rows, cols) = before.shape();
        assert_eq!(
            reparam::technique::estimated_layer_bytes(layer, rows, cols, before.size_bytes()),
            after.size_bytes()
        );
        for (x, y) in values(before).iter().zip(&values(after)) {
            assert_eq!(half::f16::from_f32(*x).to_f32(), *y);
        }
    }
}
