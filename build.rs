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

fn main() {
    let mut files = Vec::new();
    for root in ["src", "Cargo.toml", "Cargo.lock"] {
        let p = Path::new(root);
        if p.is_dir() {
            collect(p, &mut files);
        } else {
            files.push(p.to_path_buf());
        }
        println!("cargo:rerun-if-changed={root}");
    }
    files.sort();
    let mut hasher = blake3::Hasher::new();
    for f in &files {
        hasher.update(f.to_string_lossy().as_bytes());
        if let Ok(bytes) = std::fs::read(f) {
            hasher.update(&bytes);
        }
    }
    let hex = hasher.finalize().to_hex();
    println!("cargo:rustc-env=REPARAM_SOURCE_HASH={}", &hex[..12]);
}
