//! Checkpoints in Hugging Face layout, so vLLM and transformers load them as they are:
//! `config.json`, `model.safetensors` (Llama/Mistral tensor names), the tokenizer files, plus
//! what a restart needs: `optimizer.safetensors` (AdamW moments) and `trainer_state.json`
//! (step and the shard position). `trainer_state.json` is written last; a checkpoint event is
//! published only after every file is uploaded.

use crate::model::Student;
use crate::model_config::ModelConfig;
use candle_core::{DType, Device, Tensor};
use distillery_runtime::objects::{get_bytes, put_bytes};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Where the trainer is in its input: the next shard manifest to read and how many rows of
/// the shard at that offset are already trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ShardPosition {
    pub next_offset: i64,
    pub rows_done: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    pub position: ShardPosition,
    pub input_topic: String,
    pub shards_consumed: i64,
    pub tokens_seen: i64,
    /// The shard ids trained on, in order (what a restart is checked against).
    pub shard_ids: Vec<String>,
    pub is_final: bool,
}

/// Tokenizer files copied into every checkpoint.
#[derive(Debug, Clone, Default)]
pub struct TokenizerFiles {
    pub tokenizer_json: Option<Vec<u8>>,
    pub tokenizer_config_json: Option<Vec<u8>>,
}

/// safetensors bytes of named tensors (sorted by name; f32, bf16 or f64 kept as they are).
pub fn safetensors_bytes(tensors: &BTreeMap<String, Tensor>) -> anyhow::Result<Vec<u8>> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let tensor = tensor.to_device(&Device::Cpu)?.flatten_all()?;
        let (dtype, bytes) = match tensor.dtype() {
            DType::F32 => (Dtype::F32, tensor.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
            DType::F64 => (Dtype::F64, tensor.to_vec1::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
            DType::BF16 => (
                Dtype::BF16,
                tensor.to_vec1::<half::bf16>()?.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect::<Vec<u8>>(),
            ),
            other => anyhow::bail!("cannot save '{name}' of dtype {other:?}"),
        };
        buffers.push((name.clone(), dtype, bytes));
    }
    let shapes: HashMap<&str, Vec<usize>> = tensors.iter().map(|(n, t)| (n.as_str(), t.dims().to_vec())).collect();
    let views = buffers
        .iter()
        .map(|(name, dtype, bytes)| Ok((name.as_str(), TensorView::new(*dtype, shapes[name.as_str()].clone(), bytes)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
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

fn join(base: &str, file: &str) -> String {
    format!("{}/{file}", base.trim_end_matches('/'))
}

/// Uploads a checkpoint into the folder `uri`.
pub async fn save(
    uri: &str,
    student: &Student,
    optimizer_state: BTreeMap<String, Tensor>,
    state: &TrainerState,
    tokenizer: &TokenizerFiles,
) -> anyhow::Result<()> {
    put_bytes(&join(uri, "config.json"), student.config.to_json().into_bytes()).await?;
    put_bytes(&join(uri, "model.safetensors"), safetensors_bytes(&student.tensors())?).await?;
    put_bytes(&join(uri, "optimizer.safetensors"), safetensors_bytes(&optimizer_state)?).await?;
    if let Some(bytes) = &tokenizer.tokenizer_json {
        put_bytes(&join(uri, "tokenizer.json"), bytes.clone()).await?;
    }
    if let Some(bytes) = &tokenizer.tokenizer_config_json {
        put_bytes(&join(uri, "tokenizer_config.json"), bytes.clone()).await?;
    }
    let generation = serde_json::json!({
        "bos_token_id": student.config.bos_token_id,
        "eos_token_id": student.config.eos_token_id,
    });
    put_bytes(&join(uri, "generation_config.json"), serde_json::to_vec_pretty(&generation)?).await?;
    put_bytes(&join(uri, "trainer_state.json"), serde_json::to_vec_pretty(state)?).await?;
    Ok(())
}

/// Config and weights of a Hugging Face model folder (a checkpoint or a student to start
/// from): `model.safetensors`, or the shards named by `model.safetensors.index.json`.
pub async fn load_model_folder(uri: &str, device: &Device) -> anyhow::Result<(ModelConfig, BTreeMap<String, Tensor>)> {
    let config = ModelConfig::from_json(&get_bytes(&join(uri, "config.json")).await?)?;
    let tensors = match get_bytes(&join(uri, "model.safetensors")).await {
        Ok(bytes) => tensors_from_safetensors(&bytes, device)?,
        Err(single) => {
            let index = get_bytes(&join(uri, "model.safetensors.index.json")).await.map_err(|e| {
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
                tensors.extend(tensors_from_safetensors(&get_bytes(&join(uri, file)).await?, device)?);
            }
            tensors
        }
    };
    Ok((config, tensors))
}

/// A checkpoint read back: model, optimizer moments and trainer state.
pub struct Loaded {
    pub config: ModelConfig,
    pub weights: BTreeMap<String, Tensor>,
    pub optimizer: BTreeMap<String, Tensor>,
    pub state: TrainerState,
}

pub async fn load(uri: &str, device: &Device) -> anyhow::Result<Loaded> {
    let state: TrainerState = serde_json::from_slice(&get_bytes(&join(uri, "trainer_state.json")).await?)
        .map_err(|e| anyhow::anyhow!("{uri}/trainer_state.json: {e}"))?;
    let (config, weights) = load_model_folder(uri, device).await?;
    let optimizer = tensors_from_safetensors(&get_bytes(&join(uri, "optimizer.safetensors")).await?, device)?;
    Ok(Loaded { config, weights, optimizer, state })
}
