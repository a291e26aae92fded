//! Writing models out in formats other tools read, and reading what they give us (recipes from
//! llama.cpp tensor-type lists).

pub mod compressed_tensors;
pub mod deployed;
pub mod experiment;
pub mod gguf_meta;
pub mod import;
