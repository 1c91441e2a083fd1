//! Reading checkpoint tensors: `model.safetensors` or a sharded `model.safetensors.index.json`,
//! in f32/f16/bf16, converted to f32 and shape-checked with errors that name file and tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};

/// Named tensors plus the file each came from (for error messages).
pub struct TensorStore {
    tensors: HashMap<String, (Tensor, PathBuf)>,
    origin: PathBuf,
}

impl TensorStore {
    /// Load every safetensors file of a Hugging Face folder.
    pub fn load_dir(dir: &Path, device: &Device) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            shard_files(&index)?
                .into_iter()
                .map(|f| dir.join(f))
                .collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut tensors = HashMap::new();
        for file in &files {
            let bytes = std::fs::read(file).map_err(|source| ModelError::Io {
                path: file.clone(),
                source,
            })?;
            for (name, t) in parse_safetensors(&bytes, file, device)? {
                tensors.insert(name, (t, file.clone()));
            }
        }
        Ok(Self {
            tensors,
            origin: files.first().cloned().unwrap_or_else(|| dir.to_owned()),
        })
    }

    /// Tensors already in memory (embedded weights, or tests).
    pub fn from_bytes(bytes: &[u8], origin: &Path, device: &Device) -> Result<Self> {
        let tensors = parse_safetensors(bytes, origin, device)?
            .into_iter()
            .map(|(n, t)| (n, (t, origin.to_owned())))
            .collect();
        Ok(Self {
            tensors,
            origin: origin.to_owned(),
        })
    }

    pub fn from_map(map: HashMap<String, Tensor>, origin: &Path) -> Self {
        let tensors = map
            .into_iter()
            .map(|(n, t)| (n, (t, origin.to_owned())))
            .collect();
        Self {
            tensors,
            origin: origin.to_owned(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name`, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let Some((t, file)) = self.tensors.get(name) else {
            return Err(ModelError::Weights {
                path: self.origin.clone(),
                tensor: name.into(),
                reason: "missing".into(),
            });
        };
        if t.dims() != shape {
            return Err(ModelError::Weights {
                path: file.clone(),
                tensor: name.into(),
                reason: format!("shape {:?}, expected {:?}", t.dims(), shape),
            });
        }
        Ok(t.clone())
    }
}

fn shard_files(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|source| ModelError::Io {
        path: index.to_owned(),
        source,
    })?;
    let bad = |reason: String| ModelError::Weights {
        path: index.to_owned(),
        tensor: "weight_map".into(),
        reason,
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("missing".into()))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    files.sort();
    files.dedup();
    if files.iter().any(|f| f.contains('/') || f.contains("..")) {
        return Err(bad("shard names must be plain file names".into()));
    }
    Ok(files)
}

fn parse_safetensors(bytes: &[u8], file: &Path, device: &Device) -> Result<Vec<(String, Tensor)>> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| ModelError::Weights {
        path: file.to_owned(),
        tensor: "(header)".into(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let t = candle_core::safetensors::Load::load(&view, device)
            .and_then(|t| match t.dtype() {
                DType::F32 => Ok(t),
                DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32),
                other => Err(candle_core::Error::Msg(format!(
                    "unsupported dtype {other:?}"
                ))),
            })
            .map_err(|e| ModelError::Weights {
                path: file.to_owned(),
                tensor: name.clone(),
                reason: e.to_string(),
            })?;
        out.push((name, t));
    }
    Ok(out)
}
