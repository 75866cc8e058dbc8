//! The student's architecture, read from a Hugging Face `config.json` (Llama and Mistral
//! families: Llama, SmolLM2, Mistral-Nemo) and written back into every checkpoint so vLLM and
//! transformers load it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    #[serde(default = "default_architectures")]
    pub architectures: Vec<String>,
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention; equal to `num_attention_heads` when absent.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Mistral-Nemo sets it apart from `hidden_size / num_attention_heads` (128, not 160).
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_torch_dtype")]
    pub torch_dtype: String,
}

fn default_architectures() -> Vec<String> {
    vec!["LlamaForCausalLM".to_string()]
}
fn default_model_type() -> String {
    "llama".to_string()
}
fn default_rms_norm_eps() -> f64 {
    1e-5
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_position_embeddings() -> usize {
    4096
}
fn default_hidden_act() -> String {
    "silu".to_string()
}
fn default_torch_dtype() -> String {
    "float32".to_string()
}

impl ModelConfig {
    pub fn from_json(bytes: &[u8]) -> anyhow::Result<ModelConfig> {
        let config: ModelConfig = serde_json::from_slice(bytes)
            .map_err(|e| anyhow::anyhow!("config.json is not a Llama/Mistral config: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a config serialises")
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Every end-of-sequence id the config names (a number or a list).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            Some(serde_json::Value::Array(ids)) => ids.iter().filter_map(|v| v.as_u64()).map(|n| n as u32).collect(),
            _ => Vec::new(),
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let known = ["llama", "mistral"];
        anyhow::ensure!(
            known.contains(&self.model_type.as_str()),
            "model_type '{}' is not supported: the trainer builds {known:?} decoders (hybrid Mamba students \
             such as Nemotron-H train on NeMo from `distillery export nemo` shards)",
            self.model_type
        );
        anyhow::ensure!(self.hidden_act == "silu", "hidden_act '{}' is not supported (only silu)", self.hidden_act);
        anyhow::ensure!(
            self.num_attention_heads % self.kv_heads() == 0,
            "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
            self.num_attention_heads,
            self.kv_heads()
        );
        anyhow::ensure!(self.head_dim() % 2 == 0, "head_dim must be even for rotary embeddings");
        anyhow::ensure!(
            self.vocab_size > 0 && self.num_hidden_layers > 0,
            "vocab_size and num_hidden_layers must be > 0"
        );
        Ok(())
    }

    /// Parameter count (for model-FLOPs and logs).
    pub fn parameters(&self) -> usize {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (q, kv) = (self.num_attention_heads * self.head_dim(), self.kv_heads() * self.head_dim());
        let layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers * layer + h + head
    }

    /// A tiny config for tests and the quickstart's `--size tiny`.
    pub fn tiny(vocab_size: usize) -> ModelConfig {
        ModelConfig {
            architectures: default_architectures(),
            model_type: default_model_type(),
            vocab_size,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            tie_word_embeddings: true,
            max_position_embeddings: 8192,
            bos_token_id: None,
            eos_token_id: None,
            hidden_act: default_hidden_act(),
            torch_dtype: default_torch_dtype(),
        }
    }
}
