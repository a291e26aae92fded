//! Measuring models: perplexity with llama.cpp's windowing, KL divergence and top-1
//! agreement against a base model, and greedy generation.

pub mod generate;
pub mod latency;
pub mod perplexity;
pub mod tasks;
pub mod text;

pub use generate::generate_greedy;
pub use perplexity::{KldReport, PerplexityOptions, PerplexityReport, perplexity};
pub use text::{default_evaluation_text, evaluation_text};
