//! Writing models out in formats other tools read.

pub mod hf;

pub use hf::{TokenizerFiles, save_hf_dir};
pub mod experiment;
pub mod gguf_meta;
pub mod packed;
