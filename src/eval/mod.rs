//! Measuring models: perplexity with llama.cpp's windowing, KL divergence and top-1
//! agreement against a base model, over one text or a multi-domain suite, and greedy generation.

pub mod generate;
pub mod latency;
pub mod perplexity;
pub mod suite;
pub mod tasks;
pub mod text;

pub use generate::generate_greedy;
pub use perplexity::{
    Forward, KldReport, PerplexityOptions, PerplexityReport, perplexity, perplexity_with,
};
pub use text::{EvalTexts, default_evaluation_text, evaluation_texts};
