//! The student's architecture, read from a Hugging Face `config.json` (Llama and Mistral
//! families: Llama, SmolLM2, Mistral-Nemo) and written back into every checkpoint so vLLM and
//! transformers load it.
//!
//! A field that changes the maths and that the decoder does not model (rope scaling, a sliding
//! window, biases, partial rotary, q/k norms, another activation) is refused by name rather than
//! trained around silently; fields that do not change the maths (`transformers_version`,
//! `use_cache`, `pad_token_id`, ...) are kept in `extra` and written back.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

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
    /// Every other field of the `config.json`, kept so a checkpoint writes it back. The ones
    /// that would change the maths are checked by [`ModelConfig::validate`].
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
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
        let mut json: serde_json::Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("config.json is not a JSON object: {e}"))?;
        // transformers 5 writes `rope_parameters: {rope_theta, rope_type}` instead of `rope_theta`.
        if !json.contains_key("rope_theta") {
            let theta = json.get("rope_parameters").and_then(|p| p.get("rope_theta")).cloned();
            if let Some(theta) = theta {
                json.insert("rope_theta".to_string(), theta);
            }
        }
        let config: ModelConfig = serde_json::from_value(Value::Object(json))
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
        let why = match self.model_type.as_str() {
            "qwen2" | "qwen2_moe" => " (Qwen2 adds biases to the q/k/v projections, which this decoder does not have)",
            "qwen3" => " (Qwen3 normalises q and k per head, which this decoder does not do)",
            _ => "",
        };
        anyhow::ensure!(
            known.contains(&self.model_type.as_str()),
            "model_type '{}' is not supported{why}: the trainer builds {known:?} decoders (hybrid Mamba students \
             such as Nemotron-H train on NeMo from `distillery export nemo` shards)",
            self.model_type
        );
        anyhow::ensure!(
            self.hidden_act == "silu",
            "hidden_act '{}' is not supported: the MLP is SwiGLU with silu",
            self.hidden_act
        );
        self.refuse_unmodelled_fields()?;
        anyhow::ensure!(
            self.hidden_size > 0
                && self.intermediate_size > 0
                && self.num_attention_heads > 0
                && self.kv_heads() > 0
                && self.head_dim() > 0,
            "hidden_size, intermediate_size, num_attention_heads, num_key_value_heads and head_dim must be > 0"
        );
        anyhow::ensure!(
            self.num_attention_heads.is_multiple_of(self.kv_heads()),
            "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
            self.num_attention_heads,
            self.kv_heads()
        );
        anyhow::ensure!(self.head_dim().is_multiple_of(2), "head_dim must be even for rotary embeddings");
        anyhow::ensure!(
            self.vocab_size > 0 && self.num_hidden_layers > 0,
            "vocab_size and num_hidden_layers must be > 0"
        );
        Ok(())
    }

    /// Refuses the fields kept in `extra` whose values would change the maths this decoder
    /// computes (transformers would compute something else from the same weights).
    fn refuse_unmodelled_fields(&self) -> anyhow::Result<()> {
        let field = |name: &str| self.extra.get(name).filter(|v| !v.is_null());
        let refuse = |name: &str, value: &Value, why: &str| -> anyhow::Result<()> {
            anyhow::bail!("config.json field '{name}' = {value} is not supported: {why}")
        };
        if let Some(scaling) = field("rope_scaling") {
            if !is_default_rope(scaling) {
                refuse("rope_scaling", scaling, "the rotary embedding has no scaling (plain rope_theta only)")?;
            }
        }
        if let Some(parameters) = field("rope_parameters") {
            if !is_default_rope(parameters) {
                refuse("rope_parameters", parameters, "only rope_type \"default\" is modelled (no scaling)")?;
            }
            let theta = parameters.get("rope_theta").and_then(Value::as_f64);
            if let Some(theta) = theta.filter(|theta| *theta != self.rope_theta) {
                anyhow::bail!(
                    "config.json gives two rotary bases: rope_theta {} and rope_parameters.rope_theta {theta}",
                    self.rope_theta
                );
            }
        }
        // A window at least as long as any position the model may see never binds; a shorter
        // one masks attention beyond it, which the packed attention does not.
        let window_used = !matches!(self.extra.get("use_sliding_window"), Some(Value::Bool(false)));
        if let Some(window) = field("sliding_window").filter(|_| window_used) {
            if window.as_u64().is_none_or(|w| (w as usize) < self.max_position_embeddings) {
                refuse(
                    "sliding_window",
                    window,
                    &format!(
                        "attention here is full-causal; a window shorter than max_position_embeddings ({}) \
                         changes it for longer rows",
                        self.max_position_embeddings
                    ),
                )?;
            }
        }
        for bias in ["attention_bias", "mlp_bias"] {
            if let Some(value) = field(bias).filter(|v| v.as_bool() != Some(false)) {
                refuse(bias, value, "the decoder's projections have no biases")?;
            }
        }
        if let Some(factor) = field("partial_rotary_factor").filter(|v| v.as_f64() != Some(1.0)) {
            refuse("partial_rotary_factor", factor, "the rotary embedding covers the whole head")?;
        }
        for norm in ["qk_norm", "use_qk_norm"] {
            if let Some(value) = field(norm).filter(|v| v.as_bool() != Some(false)) {
                refuse(norm, value, "q and k are not normalised per head here")?;
            }
        }
        if let Some(dropout) = field("attention_dropout").filter(|v| v.as_f64() != Some(0.0)) {
            refuse("attention_dropout", dropout, "training here has no dropout")?;
        }
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
            extra: BTreeMap::new(),
        }
    }
}

/// `{"rope_type": "default", ...}` (or the older `"type"`) with no scaling factor: plain rope.
fn is_default_rope(value: &Value) -> bool {
    let kind = value.get("rope_type").or_else(|| value.get("type")).and_then(Value::as_str);
    let scaled = ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]
        .iter()
        .any(|key| value.get(key).is_some_and(|v| !v.is_null()));
    kind.is_none_or(|kind| kind == "default") && value.is_object() && !scaled
}
