//! Checkpoints in Hugging Face layout, so vLLM and transformers load them as they are:
//! `config.json`, `model.safetensors` (Llama/Mistral tensor names), the tokenizer files, plus
//! what a restart needs: `optimizer.safetensors` (AdamW moments) and `trainer_state.json`
//! (step and the shard position). `trainer_state.json` is written last; a checkpoint event is
//! published only after every file is uploaded.

use candle_core::{Device, Tensor};
use distillery_model::weights::join;
pub use distillery_model::weights::{safetensors_bytes, tensors_from_safetensors};
use distillery_model::{ModelConfig, Student};
use distillery_runtime::objects::{get_bytes, put_bytes};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

/// Config and weights of a Hugging Face model folder, read from the object store.
pub async fn load_model_folder(uri: &str, device: &Device) -> anyhow::Result<(ModelConfig, BTreeMap<String, Tensor>)> {
    distillery_model::weights::load_model_folder(uri, device, |path| async move { get_bytes(&path).await }).await
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
