//! Stamps the binary with a hash of its own source tree, so the experiment store's code version
//! (part of every run key) changes whenever the code that produced a result does, not only when
//! the crate's version number is bumped.

use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Blake3 (12 hex) of the paths and contents of these files and directories.
fn hash(roots: &[&str]) -> String {
    let mut files = Vec::new();
    for root in roots {
        let p = Path::new(root);
        if p.is_dir() {
            collect(p, &mut files);
        } else if p.exists() {
            files.push(p.to_path_buf());
        }
    }
    files.sort();
    let mut hasher = blake3::Hasher::new();
    for f in &files {
        hasher.update(f.to_string_lossy().as_bytes());
        if let Ok(bytes) = std::fs::read(f) {
            hasher.update(&bytes);
        }
    }
    hasher.finalize().to_hex()[..12].to_string()
}

/// The modules that compute numbers (the technique layer and everything below it; see
/// `tests/layering.rs`): what a per-layer measurement depends on, so the search's tables stay
/// valid across changes to the store, the app or the command line.
const NUMERIC_MODULES: [&str; 13] = [
    "cpu",
    "device",
    "rng",
    "linalg",
    "output",
    "progress",
    "quant",
    "model",
    "engine",
    "zoo",
    "calib",
    "eval",
    "technique",
];

fn main() {
    for root in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={root}");
    }
    let source = hash(&["src", "Cargo.toml", "Cargo.lock"]);
    println!("cargo:rustc-env=REPARAM_SOURCE_HASH={source}");
    let mut numeric: Vec<String> = vec!["Cargo.toml".into(), "Cargo.lock".into()];
    for m in NUMERIC_MODULES {
        numeric.push(format!("src/{m}.rs"));
        numeric.push(format!("src/{m}"));
    }
    let numeric: Vec<&str> = numeric.iter().map(String::as_str).collect();
    println!("cargo:rustc-env=REPARAM_NUMERICS_HASH={}", hash(&numeric));
}
