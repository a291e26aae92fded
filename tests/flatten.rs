//! Flattening end to end on a tiny checkpoint: the result is a standard model with fewer blocks
//! whose config follows, it exports as a normal Hugging Face directory, and our loader reloads
//! it with the same outputs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use candle_core::DType;
use common::{TinySpec, max_abs_diff};
use reparam::model::{Model, NoHook};
use reparam::model::{TokenizerFiles, save_hf_dir};
use reparam::technique::recipe::Recipe;
use reparam::technique::{CalibOptions, apply};

const CALIB: CalibOptions = CalibOptions {
    samples: 4,
    seq_len: 16,
};

#[test]
fn flattened_model_exports_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    TinySpec {
        layers: 5,
        ..TinySpec::default()
    }
    .write_hf(&src, 1);
    let base = Model::load(&src).unwrap();
    let calib: Vec<u32> = (0..400u32).map(|i| (i * 37 + 11) % 258).collect();
    for (method, body) in [
        ("flatten", "[flatten]\nauto = 2\n"),
        ("drop", "[flatten]\nauto = 2\nmethod = \"drop\"\n"),
        ("pairs", "[flatten]\npairs = [[0, 1], [3, 4]]\n"),
    ] {
        let r = Recipe::from_toml(body).unwrap();
        let c = apply(&base, &r, &calib, CALIB, &mut |_, _, _| true).unwrap();
        assert_eq!(c.summary.flattened_blocks, 2, "{method}");
        let t = &c.model.transformer;
        assert_eq!(t.blocks.len(), 3, "{method}");
        assert_eq!(t.config.num_layers, 3, "{method}");
        // Original widths everywhere.
        for (b, o) in t.blocks.iter().zip(&base.transformer.blocks) {
            assert_eq!(b.attn_q.shape(), o.attn_q.shape());
            assert_eq!(b.attn_k.shape(), o.attn_k.shape());
            assert_eq!(b.ffn_down.shape(), o.ffn_down.shape());
        }
        let out = dir.path().join(method);
        let json = std::fs::read_to_string(src.join("tokenizer.json")).unwrap();
        let files = TokenizerFiles {
            json: &json,
            bos: None,
            add_bos: false,
            eos: None,
        };
        save_hf_dir(t, &files, &out, DType::F32, &BTreeMap::new()).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["num_hidden_layers"], 3);
        let again = Model::load(&out).unwrap();
        let ids = [5u32, 60, 7, 120, 3, 99];
        let a = t.forward(&ids, None, &mut NoHook, 0).unwrap();
        let b = again
            .transformer
            .forward(&ids, None, &mut NoHook, 0)
            .unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-5, "{method}");
    }
    // Bad steps are errors, not panics.
    for bad in [
        "[flatten]\nauto = 5\n",
        "[flatten]\npairs = [[0, 2]]\n",
        "[flatten]\n",
        "[flatten]\nauto = 1\npairs = [[0, 1]]\n",
    ] {
        let r = Recipe::from_toml(bad).unwrap();
        assert!(
            apply(&base, &r, &calib, CALIB, &mut |_, _, _| true).is_err(),
            "{bad}"
        );
    }
}
