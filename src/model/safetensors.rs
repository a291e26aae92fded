//! The one bounds-checked reader and writer of the safetensors format, for HF checkpoints and
//! our packed file (whose integer payloads are why the dtypes go beyond candle's).
//!
//! Like the GGUF reader, this parses the header itself so that a header whose offsets run past
//! the end of the file is a clear error, and it reads one tensor at a time so loading never
//! holds a whole shard in memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::error::LoadError;

/// Headers larger than this are not real checkpoints (the format's own limit is 100 MB).
const MAX_HEADER_BYTES: u64 = 100 << 20;

#[derive(Debug, Clone, Deserialize)]
struct RawInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// The payload types this project reads and writes: floats for weights, unsigned integers
/// for the packed file's codes and indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StDType {
    F64,
    F32,
    F16,
    BF16,
    U32,
    U16,
    U8,
    /// Signed 32-bit integers (compressed-tensors' packed codes and shapes).
    I32,
}

impl StDType {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "F64" => Self::F64,
            "F32" => Self::F32,
            "F16" => Self::F16,
            "BF16" => Self::BF16,
            "U32" => Self::U32,
            "U16" => Self::U16,
            "U8" => Self::U8,
            "I32" => Self::I32,
            _ => return None,
        })
    }

    /// The name in a header (`F32`, `U16`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::F64 => "F64",
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::U32 => "U32",
            Self::U16 => "U16",
            Self::U8 => "U8",
            Self::I32 => "I32",
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            Self::F64 => 8,
            Self::F32 | Self::U32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::U16 => 2,
            Self::U8 => 1,
        }
    }

    /// The float type a weight of this payload type loads as; `None` for integer payloads.
    fn float(self) -> Option<DType> {
        match self {
            Self::F64 => Some(DType::F64),
            Self::F32 => Some(DType::F32),
            Self::F16 => Some(DType::F16),
            Self::BF16 => Some(DType::BF16),
            Self::U32 | Self::U16 | Self::U8 | Self::I32 => None,
        }
    }
}

/// One tensor to write: its name, payload type, shape and little-endian bytes.
pub struct RawTensor {
    pub name: String,
    pub dtype: StDType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// Where one tensor lives in a safetensors file.
#[derive(Debug, Clone)]
pub struct SafeTensorInfo {
    pub dtype: StDType,
    pub shape: Vec<usize>,
    /// Absolute byte offset of the payload.
    pub offset: u64,
    pub size_bytes: u64,
}

/// A parsed safetensors header, payloads still on disk.
#[derive(Debug)]
pub struct SafeTensorsFile {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, SafeTensorInfo>,
    pub metadata: BTreeMap<String, String>,
}

impl SafeTensorsFile {
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let mut file = File::open(path).map_err(|e| LoadError::io(path, e))?;
        let len = file.metadata().map_err(|e| LoadError::io(path, e))?.len();
        let truncated = |what: &str, needed: u64| LoadError::Truncated {
            path: path.to_path_buf(),
            what: what.to_string(),
            needed,
            len,
        };
        if len < 8 {
            return Err(truncated("header length", 8));
        }
        let mut n = [0u8; 8];
        file.read_exact(&mut n)
            .map_err(|e| LoadError::io(path, e))?;
        let header_len = u64::from_le_bytes(n);
        if header_len > MAX_HEADER_BYTES {
            return Err(LoadError::malformed(
                path,
                format!("header claims {header_len} bytes (limit {MAX_HEADER_BYTES})"),
            ));
        }
        if 8 + header_len > len {
            return Err(truncated("JSON header", 8 + header_len));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| LoadError::io(path, e))?;
        let raw: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| LoadError::malformed(path, format!("JSON header: {e}")))?;
        let data_start = 8 + header_len;
        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, value) in raw {
            if name == "__metadata__" {
                metadata = serde_json::from_value(value)
                    .map_err(|e| LoadError::malformed(path, format!("__metadata__: {e}")))?;
                continue;
            }
            let info: RawInfo = serde_json::from_value(value)
                .map_err(|e| LoadError::malformed(path, format!("tensor `{name}`: {e}")))?;
            let dtype = StDType::parse(&info.dtype).ok_or_else(|| LoadError::UnsupportedDType {
                path: path.to_path_buf(),
                name: name.clone(),
                dtype: info.dtype.clone(),
            })?;
            let (start, end) = info.data_offsets;
            let elems = info
                .shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
            let expected = elems.and_then(|e| e.checked_mul(dtype.size_in_bytes() as u64));
            if end < start || expected != Some(end - start) {
                return Err(LoadError::malformed(
                    path,
                    format!(
                        "tensor `{name}`: offsets {start}..{end} do not hold a {:?} {} tensor",
                        info.shape, info.dtype
                    ),
                ));
            }
            if data_start + end > len {
                return Err(truncated(&format!("tensor `{name}`"), data_start + end));
            }
            tensors.insert(
                name,
                SafeTensorInfo {
                    dtype,
                    shape: info.shape,
                    offset: data_start + start,
                    size_bytes: end - start,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            metadata,
        })
    }

    /// Reads one tensor's raw bytes.
    pub fn read_raw(&self, file: &mut File, info: &SafeTensorInfo) -> Result<Vec<u8>, LoadError> {
        let mut buf = vec![0u8; info.size_bytes as usize];
        file.seek(SeekFrom::Start(info.offset))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| LoadError::io(&self.path, e))?;
        Ok(buf)
    }

    /// Turns raw bytes into an f32 tensor (a weight: float payloads only).
    pub fn to_f32(
        &self,
        name: &str,
        info: &SafeTensorInfo,
        raw: &[u8],
    ) -> Result<Tensor, LoadError> {
        let Some(dtype) = info.dtype.float() else {
            return Err(LoadError::UnsupportedDType {
                path: self.path.clone(),
                name: name.to_string(),
                dtype: info.dtype.name().to_string(),
            });
        };
        Tensor::from_raw_buffer(raw, dtype, &info.shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| LoadError::candle(&self.path, format!("tensor `{name}`"), e))
    }
}

/// Writes tensors (any float dtype) and string metadata as one safetensors file.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let raw = tensors
        .iter()
        .map(|(name, t)| {
            let t = t.contiguous()?;
            let dtype = match t.dtype() {
                DType::F16 => StDType::F16,
                DType::BF16 => StDType::BF16,
                DType::F64 => StDType::F64,
                _ => StDType::F32,
            };
            Ok(RawTensor {
                name: name.clone(),
                dtype,
                shape: t.dims().to_vec(),
                bytes: tensor_bytes(&t)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    write_raw(path, &raw, metadata)
}

/// Writes raw payloads (in the given order) and string metadata as one safetensors file.
pub fn write_raw(
    path: &Path,
    tensors: &[RawTensor],
    metadata: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata)?);
    }
    let mut offset = 0u64;
    for t in tensors {
        let end = offset + t.bytes.len() as u64;
        header.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": t.dtype.name(),
                "shape": t.shape,
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&header)?;
    // Keep the payload 8-byte aligned, as the reference implementation does.
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut file = std::io::BufWriter::new(File::create(path)?);
    file.write_all(&(header.len() as u64).to_le_bytes())?;
    file.write_all(&header)?;
    for t in tensors {
        file.write_all(&t.bytes)?;
    }
    file.flush()?;
    Ok(())
}

/// The little-endian bytes of a contiguous float tensor.
fn tensor_bytes(t: &Tensor) -> anyhow::Result<Vec<u8>> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F16 => flat
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => flat
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F64 => flat
            .to_vec1::<f64>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        _ => flat
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    })
}
