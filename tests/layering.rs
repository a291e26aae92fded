//! The library imports one way: each top-level module may use only modules on lower layers
//! (README, "Layout"). This reads every `crate::…` path in `src/` (tests included) and fails
//! on any that points up or sideways, and on a module the table below does not place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

/// Bottom to top. A module may use any module on a lower line, never one on its own line or
/// above (the binary's `main.rs` and `lib.rs` are outside the layering).
const LAYERS: &[&[&str]] = &[
    &["cpu", "device", "rng", "linalg", "output", "progress"],
    &["quant"],
    &["model"],
    &["engine"],
    &["zoo"],
    &["calib", "eval"],
    &["technique"],
    &["run"],
    &["store"],
    &["jobs", "export"],
    &["sweep"],
    &["search"],
    &["ui"],
    // The command line also opens the app (`reparam` alone, `reparam gui`).
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The identifier right after each `crate::` in `text`, outside line comments.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            // `$crate::`, or an identifier ending in `crate` (`reparam_crate::`), is not ours.
            if before.is_some_and(|c| c == '$' || c.is_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn no_module_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(own) = layer_of(&top) else {
            problems.push(format!("{}: module `{top}` has no layer", rel.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for used in crate_paths(&text) {
            if used == top {
                continue;
            }
            match layer_of(&used) {
                Some(l) if l < own => {}
                Some(_) => problems.push(format!(
                    "{}: `{top}` uses `crate::{used}`, which is not below it",
                    rel.display()
                )),
                // A crate-root item (a macro such as `outln`) is not a module.
                None if text.contains(&format!("crate::{used}!")) => {}
                None => problems.push(format!(
                    "{}: `crate::{used}` is not a module the layering knows",
                    rel.display()
                )),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the layering is broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_scanner_sees_paths_and_skips_comments() {
    let found = crate_paths("use crate::model::X; // crate::ui\nlet a = crate::rng::Rng::new(1);");
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        vec!["model".to_string(), "rng".to_string()]
    );
}
