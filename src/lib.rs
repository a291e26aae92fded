//! Reparam Studio: compress pretrained transformer models layer by layer and measure the
//! trade-offs. This library holds everything; the `reparam` binary is a thin front end.

pub mod calib;
pub mod cli;
pub mod cpu;
pub mod device;
pub mod engine;
pub mod eval;
pub mod export;
pub mod jobs;
pub mod linalg;
pub mod model;
pub mod output;
pub mod progress;
pub mod quant;
pub mod rng;
pub mod run;
pub mod search;
pub mod store;
pub mod sweep;
pub mod technique;
pub mod ui;
pub mod zoo;
