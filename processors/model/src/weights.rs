//! A model's weights as files: safetensors bytes both ways, and a Hugging Face model folder
//! (`config.json` + `model.safetensors` or sharded safetensors with an index).

use crate::config::ModelConfig;
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::View;
use safetensors::{Dtype, SafeTensors};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;

/// One tensor as safetensors reads it: its bytes are made only when the file is written, one
/// tensor at a time, so saving holds the file plus one tensor, not every tensor twice.
struct LazyBytes {
    tensor: Tensor,
    dtype: Dtype,
}

impl View for LazyBytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        self.tensor.dims()
    }

    fn data(&self) -> Cow<'_, [u8]> {
        // The tensor is on the CPU with a dtype checked in `safetensors_bytes`: converting it
        // cannot fail, and the trait has no way to return an error.
        let flat = self.tensor.flatten_all().expect("a CPU tensor flattens");
        let bytes: Vec<u8> = match self.dtype {
            Dtype::F32 => flat.to_vec1::<f32>().expect("checked f32").iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F64 => flat.to_vec1::<f64>().expect("checked f64").iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ => flat
                .to_vec1::<half::bf16>()
                .expect("checked bf16")
                .iter()
                .flat_map(|v| v.to_bits().to_le_bytes())
                .collect(),
        };
        Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        self.tensor.elem_count() * self.dtype.bitsize() / 8
    }
}

/// safetensors bytes of named tensors (sorted by name; f32, bf16 or f64 kept as they are).
pub fn safetensors_bytes(tensors: &BTreeMap<String, Tensor>) -> anyhow::Result<Vec<u8>> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let dtype = match tensor.dtype() {
            DType::F32 => Dtype::F32,
            DType::F64 => Dtype::F64,
            DType::BF16 => Dtype::BF16,
            other => anyhow::bail!("cannot save '{name}' of dtype {other:?}"),
        };
        views.push((name.as_str(), LazyBytes { tensor: tensor.to_device(&Device::Cpu)?, dtype }));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    Ok(safetensors::tensor::serialize(views, Some(metadata))?)
}

/// Named tensors from safetensors bytes (f32, f64, bf16, f16).
pub fn tensors_from_safetensors(bytes: &[u8], device: &Device) -> anyhow::Result<BTreeMap<String, Tensor>> {
    let file = SafeTensors::deserialize(bytes)?;
    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F64 => DType::F64,
            Dtype::BF16 => DType::BF16,
            Dtype::F16 => DType::F16,
            other => anyhow::bail!("tensor '{name}' has dtype {other:?}, not a float"),
        };
        let tensor = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), device)?;
        tensors.insert(name, tensor);
    }
    Ok(tensors)
}

/// `base/file`, for folders given with or without a trailing slash.
pub fn join(base: &str, file: &str) -> String {
    format!("{}/{file}", base.trim_end_matches('/'))
}

/// Config and weights of a Hugging Face model folder (a checkpoint or a student to start
/// from): `model.safetensors`, or the shards named by `model.safetensors.index.json`.
/// `get_bytes` reads one file by its full address (the object store, for the processors).
pub async fn load_model_folder<Get, Fut>(
    uri: &str,
    device: &Device,
    get_bytes: Get,
) -> anyhow::Result<(ModelConfig, BTreeMap<String, Tensor>)>
where
    Get: Fn(String) -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<u8>>>,
{
    let config = ModelConfig::from_json(&get_bytes(join(uri, "config.json")).await?)?;
    let tensors = match get_bytes(join(uri, "model.safetensors")).await {
        Ok(bytes) => tensors_from_safetensors(&bytes, device)?,
        Err(single) => {
            let index = get_bytes(join(uri, "model.safetensors.index.json")).await.map_err(|e| {
                anyhow::anyhow!("{uri} has neither model.safetensors ({single:#}) nor an index ({e:#})")
            })?;
            let index: serde_json::Value = serde_json::from_slice(&index)?;
            let files: std::collections::BTreeSet<&str> = index["weight_map"]
                .as_object()
                .ok_or_else(|| anyhow::anyhow!("model.safetensors.index.json has no weight_map"))?
                .values()
                .filter_map(|v| v.as_str())
                .collect();
            let mut tensors = BTreeMap::new();
            for file in files {
                tensors.extend(tensors_from_safetensors(&get_bytes(join(uri, file)).await?, device)?);
            }
            tensors
        }
    };
    Ok((config, tensors))
}
