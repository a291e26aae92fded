//! Writing models out in formats other tools read.

pub mod deployed;
pub mod experiment;
pub mod gguf_meta;
