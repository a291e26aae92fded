//! A bounds-checked reader for GGUF files (the llama.cpp container).
//!
//! We parse the header ourselves instead of using candle's reader because a header that lies
//! (a string or array length larger than the file) must become an error, not a multi-gigabyte
//! allocation. Tensor payloads are read one at a time so loading never holds the whole file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;

use super::error::LoadError;

const GGUF_MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Tensors in llama-family files have at most 4 dimensions.
const MAX_DIMS: u32 = 4;

/// One metadata value, typed as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// The value as an unsigned integer, when it is any non-negative integer type.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, when it is any numeric type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::String(_) => 8,
            Self::Array(_) => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Shape in row-major order (GGUF stores it fastest-varying first; this is reversed).
    pub shape: Vec<usize>,
    pub dtype: GgmlDType,
    /// Absolute byte offset of the payload.
    pub offset: u64,
    pub size_bytes: u64,
}

/// A parsed GGUF header: metadata and tensor directory, with the payloads still on disk.
#[derive(Debug)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<GgufTensorInfo>,
    pub file_len: u64,
}

/// Maps the on-disk type number to candle's type; `None` for types candle cannot dequantize.
fn dtype_from_u32(v: u32) -> Option<GgmlDType> {
    Some(match v {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// The on-disk type number of a candle type (inverse of [`dtype_from_u32`]).
pub fn dtype_to_u32(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// A reader that knows how many bytes remain, so every length field is checked before use.
struct Cursor<'a> {
    inner: BufReader<File>,
    pos: u64,
    len: u64,
    path: &'a Path,
}

impl Cursor<'_> {
    fn need(&self, n: u64, what: &str) -> Result<(), LoadError> {
        let end = self.pos.saturating_add(n);
        if end > self.len {
            return Err(LoadError::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                needed: end,
                len: self.len,
            });
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], LoadError> {
        self.need(N as u64, what)?;
        let mut buf = [0u8; N];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| LoadError::io(self.path, e))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, LoadError> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, LoadError> {
        let len = self.u64(what)?;
        self.need(len, what)?;
        let mut buf = vec![0u8; len as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| LoadError::io(self.path, e))?;
        self.pos += len;
        String::from_utf8(buf)
            .map_err(|_| LoadError::malformed(self.path, format!("{what} is not UTF-8")))
    }

    fn value(&mut self, type_id: u32, key: &str, depth: u32) -> Result<MetaValue, LoadError> {
        Ok(match type_id {
            0 => MetaValue::U8(u8::from_le_bytes(self.bytes(key)?)),
            1 => MetaValue::I8(i8::from_le_bytes(self.bytes(key)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.bytes(key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.bytes(key)?)),
            4 => MetaValue::U32(self.u32(key)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.bytes(key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.bytes(key)?)),
            7 => MetaValue::Bool(u8::from_le_bytes(self.bytes(key)?) != 0),
            8 => MetaValue::String(self.string(key)?),
            9 if depth == 0 => {
                let elem_type = self.u32(key)?;
                let n = self.u64(key)?;
                // Every element takes at least one byte, so a count beyond the remaining bytes is a lie.
                self.need(n, &format!("array `{key}` of {n} elements"))?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem_type, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.bytes(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.bytes(key)?)),
            other => {
                return Err(LoadError::malformed(
                    self.path,
                    format!("metadata `{key}` has unknown value type {other}"),
                ));
            }
        })
    }
}

impl GgufFile {
    /// Parses the header and tensor directory, checking every size against the file length.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let file = File::open(path).map_err(|e| LoadError::io(path, e))?;
        let file_len = file.metadata().map_err(|e| LoadError::io(path, e))?.len();
        let mut cur = Cursor {
            inner: BufReader::with_capacity(1 << 20, file),
            pos: 0,
            len: file_len,
            path,
        };
        let magic: [u8; 4] = cur.bytes("magic")?;
        if magic != GGUF_MAGIC {
            return Err(LoadError::NotGguf {
                path: path.to_path_buf(),
                magic,
            });
        }
        let version = cur.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(LoadError::GgufVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        let n_tensors = cur.u64("tensor count")?;
        let n_kv = cur.u64("metadata count")?;
        // Each entry takes well over 8 bytes; counts beyond that are lies, caught before allocating.
        cur.need(n_kv.saturating_mul(8), &format!("{n_kv} metadata entries"))?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = cur.string("metadata key")?;
            let type_id = cur.u32(&key)?;
            let value = cur.value(type_id, &key, 0)?;
            metadata.insert(key, value);
        }
        cur.need(
            n_tensors.saturating_mul(8),
            &format!("{n_tensors} tensor infos"),
        )?;
        let mut raw_infos = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = cur.string("tensor name")?;
            let n_dims = cur.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(LoadError::malformed(
                    path,
                    format!("tensor `{name}` has {n_dims} dimensions (1..={MAX_DIMS} allowed)"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(cur.u64(&name)?);
            }
            let type_id = cur.u32(&name)?;
            let offset = cur.u64(&name)?;
            raw_infos.push((name, dims, type_id, offset));
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(MetaValue::as_u64)
            .unwrap_or(DEFAULT_ALIGNMENT)
            .max(1);
        let data_start = cur.pos.div_ceil(alignment) * alignment;

        let mut tensors = Vec::with_capacity(raw_infos.len());
        for (name, dims, type_id, offset) in raw_infos {
            let Some(dtype) = dtype_from_u32(type_id) else {
                return Err(LoadError::UnsupportedDType {
                    path: path.to_path_buf(),
                    name,
                    dtype: format!("ggml type {type_id}"),
                });
            };
            let elems = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n > 0 && n < (1 << 40))
                .ok_or_else(|| {
                    LoadError::malformed(
                        path,
                        format!("tensor `{name}` has impossible dims {dims:?}"),
                    )
                })?;
            let block = dtype.block_size() as u64;
            if elems % block != 0 {
                return Err(LoadError::malformed(
                    path,
                    format!(
                        "tensor `{name}`: {elems} elements is not a multiple of the {dtype:?} block size {block}"
                    ),
                ));
            }
            let size_bytes = elems / block * dtype.type_size() as u64;
            let abs = data_start.saturating_add(offset);
            let end = abs.saturating_add(size_bytes);
            if end > file_len {
                return Err(LoadError::Truncated {
                    path: path.to_path_buf(),
                    what: format!("tensor `{name}` ({size_bytes} bytes at offset {abs})"),
                    needed: end,
                    len: file_len,
                });
            }
            tensors.push(GgufTensorInfo {
                name,
                shape: dims.iter().rev().map(|&d| d as usize).collect(),
                dtype,
                offset: abs,
                size_bytes,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            file_len,
        })
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Reads one tensor's raw payload.
    pub fn read_raw(&self, file: &mut File, info: &GgufTensorInfo) -> Result<Vec<u8>, LoadError> {
        let mut buf = vec![0u8; info.size_bytes as usize];
        file.seek(SeekFrom::Start(info.offset))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| LoadError::io(&self.path, e))?;
        Ok(buf)
    }

    pub fn get(&self, key: &str) -> Result<&MetaValue, LoadError> {
        self.metadata.get(key).ok_or_else(|| LoadError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    pub fn get_usize(&self, key: &str) -> Result<usize, LoadError> {
        self.get(key)?
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| LoadError::malformed(&self.path, format!("`{key}` is not an integer")))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64, LoadError> {
        self.get(key)?
            .as_f64()
            .ok_or_else(|| LoadError::malformed(&self.path, format!("`{key}` is not a number")))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, LoadError> {
        self.get(key)?
            .as_str()
            .ok_or_else(|| LoadError::malformed(&self.path, format!("`{key}` is not a string")))
    }
}

/// Writes GGUF v3 files: used to export models and to build test fixtures.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<(String, Vec<usize>, GgmlDType, Vec<u8>)>,
}

impl GgufWriter {
    pub fn meta(&mut self, key: &str, value: MetaValue) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor with its row-major `shape` and raw payload in `dtype`'s block layout.
    pub fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        dtype: GgmlDType,
        data: Vec<u8>,
    ) -> &mut Self {
        self.tensors
            .push((name.to_string(), shape.to_vec(), dtype, data));
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        fn put_str(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
            match v {
                MetaValue::U8(x) => out.push(*x),
                MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
                MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
                MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
                MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
                MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
                MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
                MetaValue::Bool(x) => out.push(u8::from(*x)),
                MetaValue::String(s) => put_str(out, s),
                MetaValue::Array(items) => {
                    let elem = items.first().map_or(4, MetaValue::type_id);
                    out.extend_from_slice(&elem.to_le_bytes());
                    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                    for item in items {
                        put_value(out, item);
                    }
                }
                MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
                MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
                MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
            }
        }
        let align = DEFAULT_ALIGNMENT as usize;
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut out, value);
        }
        let mut offset = 0usize;
        for (name, shape, dtype, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(shape.len() as u32).to_le_bytes());
            for d in shape.iter().rev() {
                out.extend_from_slice(&(*d as u64).to_le_bytes());
            }
            out.extend_from_slice(&dtype_to_u32(*dtype).to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += data.len().div_ceil(align) * align;
        }
        out.resize(out.len().div_ceil(align) * align, 0);
        for (_, _, _, data) in &self.tensors {
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(align) * align, 0);
        }
        out
    }
}
