//! Errors raised while opening model files. Every variant names the file and the problem, so
//! the message alone tells a user what to fix.

use std::path::PathBuf;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (magic bytes {magic:02x?}, expected \"GGUF\")")]
    NotGguf { path: PathBuf, magic: [u8; 4] },
    #[error("{path}: unsupported GGUF version {version} (supported: 2, 3)")]
    GgufVersion { path: PathBuf, version: u32 },
    #[error(
        "{path}: truncated file: {what} needs bytes up to offset {needed}, but the file has {len} bytes"
    )]
    Truncated {
        path: PathBuf,
        what: String,
        needed: u64,
        len: u64,
    },
    #[error("{path}: malformed header: {what}")]
    Malformed { path: PathBuf, what: String },
    #[error("{path}: missing metadata key `{key}`")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: unsupported architecture `{arch}` (supported: {supported})")]
    UnknownArchitecture {
        path: PathBuf,
        arch: String,
        supported: String,
    },
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, but the config implies {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` holds a non-finite value ({value}) at flat index {index}")]
    NonFinite {
        path: PathBuf,
        name: String,
        index: usize,
        value: f32,
    },
    #[error("{path}: tensor `{name}` has unsupported type {dtype}")]
    UnsupportedDType {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: invalid config: {what}")]
    Config { path: PathBuf, what: String },
    #[error("{path}: tokenizer: {what}")]
    Tokenizer { path: PathBuf, what: String },
    #[error("{path}: {what}: {source}")]
    Candle {
        path: PathBuf,
        what: String,
        // Boxed: candle's error is large and would bloat every `Result` here.
        #[source]
        source: Box<candle_core::Error>,
    },
}

impl LoadError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn malformed(path: &std::path::Path, what: impl Into<String>) -> Self {
        Self::Malformed {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    pub(crate) fn config(path: &std::path::Path, what: impl Into<String>) -> Self {
        Self::Config {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    pub(crate) fn candle(
        path: &std::path::Path,
        what: impl Into<String>,
        source: candle_core::Error,
    ) -> Self {
        Self::Candle {
            path: path.to_path_buf(),
            what: what.into(),
            source: Box::new(source),
        }
    }
}
