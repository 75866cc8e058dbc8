//! `config.json` in and out: real Llama/Mistral configs load, fields that would change the maths
//! and are not modelled are refused by name, and fields that do not are written back.

use distillery_model::ModelConfig;
use serde_json::{json, Value};

/// HuggingFaceTB/SmolLM2-135M-Instruct's `config.json` (its math-relevant fields as published;
/// `head_dim` absent, `rope_scaling` null).
fn smollm2_135m() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 576,
        "initializer_range": 0.041666666666666664,
        "intermediate_size": 1536,
        "is_llama_config": true,
        "max_position_embeddings": 8192,
        "mlp_bias": false,
        "model_type": "llama",
        "num_attention_heads": 9,
        "num_hidden_layers": 30,
        "num_key_value_heads": 3,
        "pad_token_id": 2,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_interleaved": false,
        "rope_scaling": null,
        "rope_theta": 100000,
        "tie_word_embeddings": true,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.42.3",
        "use_cache": true,
        "vocab_size": 49152
    })
}

/// Mistral-7B-Instruct-v0.2's shape: no sliding window (null).
fn mistral_7b_v02() -> Value {
    json!({
        "architectures": ["MistralForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "model_type": "mistral",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "sliding_window": null,
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.36.0",
        "use_cache": true,
        "vocab_size": 32000
    })
}

/// Qwen2.5-0.5B's `config.json`: q/k/v biases are implied by the model type.
fn qwen25_05b() -> Value {
    json!({
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "hidden_act": "silu",
        "hidden_size": 896,
        "initializer_range": 0.02,
        "intermediate_size": 4864,
        "max_position_embeddings": 32768,
        "max_window_layers": 24,
        "model_type": "qwen2",
        "num_attention_heads": 14,
        "num_hidden_layers": 24,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": true,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1",
        "use_cache": true,
        "use_sliding_window": false,
        "vocab_size": 151936
    })
}

fn load(config: &Value) -> anyhow::Result<ModelConfig> {
    ModelConfig::from_json(config.to_string().as_bytes())
}

fn with(mut config: Value, field: &str, value: Value) -> Value {
    config[field] = value;
    config
}

/// The error of a config that must be refused, checked to name the field.
fn refusal(config: &Value, field: &str) -> String {
    let error = load(config).expect_err("the config must be refused").to_string();
    assert!(error.contains(field), "the error should name '{field}': {error}");
    error
}

#[test]
fn smollm2_135m_config_loads_with_its_shape() {
    let config = load(&smollm2_135m()).unwrap();
    assert_eq!((config.hidden_size, config.num_hidden_layers, config.kv_heads()), (576, 30, 3));
    assert_eq!(config.head_dim(), 64);
    assert_eq!(config.rope_theta, 100_000.0);
    assert_eq!(config.max_position_embeddings, 8192);
    assert!(config.tie_word_embeddings);
}

#[test]
fn unknown_fields_that_do_not_change_the_maths_are_written_back() {
    let config = load(&smollm2_135m()).unwrap();
    let written: Value = serde_json::from_str(&config.to_json()).unwrap();
    for field in
        ["transformers_version", "use_cache", "pad_token_id", "torch_dtype", "initializer_range", "rope_scaling"]
    {
        assert_eq!(written[field], smollm2_135m()[field], "'{field}' written back");
    }
    assert_eq!(load(&written).unwrap(), config, "a written config reads back the same");
}

#[test]
fn mistral_without_a_sliding_window_loads() {
    let config = load(&mistral_7b_v02()).unwrap();
    assert_eq!(config.model_type, "mistral");
    assert_eq!(config.rope_theta, 1_000_000.0);
}

#[test]
fn mistral_nemo_head_dim_apart_from_hidden_over_heads_loads() {
    let nemo = with(with(mistral_7b_v02(), "hidden_size", json!(5120)), "head_dim", json!(128));
    let config = load(&nemo).unwrap();
    assert_eq!(config.head_dim(), 128);
}

#[test]
fn a_sliding_window_shorter_than_the_positions_is_refused() {
    // Mistral-7B-v0.1: a 4096-token window, 32768 positions.
    let error = refusal(&with(mistral_7b_v02(), "sliding_window", json!(4096)), "sliding_window");
    assert!(error.contains("32768"), "{error}");
    // A window that covers every position never binds.
    load(&with(mistral_7b_v02(), "sliding_window", json!(32768))).unwrap();
}

#[test]
fn rope_scaling_is_refused() {
    let llama3 = json!({"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"});
    refusal(&with(smollm2_135m(), "rope_scaling", llama3), "rope_scaling");
    refusal(&with(smollm2_135m(), "rope_scaling", json!({"type": "linear", "factor": 2.0})), "rope_scaling");
}

#[test]
fn biases_are_refused() {
    refusal(&with(smollm2_135m(), "attention_bias", json!(true)), "attention_bias");
    refusal(&with(smollm2_135m(), "mlp_bias", json!(true)), "mlp_bias");
}

#[test]
fn qwen2_is_refused_for_its_qkv_biases() {
    let error = refusal(&qwen25_05b(), "qwen2");
    assert!(error.contains("biases"), "{error}");
}

#[test]
fn an_activation_other_than_silu_is_refused() {
    refusal(&with(smollm2_135m(), "hidden_act", json!("gelu")), "hidden_act");
}

#[test]
fn partial_rotary_and_qk_norms_are_refused() {
    refusal(&with(smollm2_135m(), "partial_rotary_factor", json!(0.5)), "partial_rotary_factor");
    load(&with(smollm2_135m(), "partial_rotary_factor", json!(1.0))).unwrap();
    refusal(&with(smollm2_135m(), "qk_norm", json!(true)), "qk_norm");
    refusal(&with(smollm2_135m(), "use_qk_norm", json!(true)), "use_qk_norm");
}

#[test]
fn an_unimplemented_model_type_is_refused() {
    refusal(&with(smollm2_135m(), "model_type", json!("gemma2")), "gemma2");
}

#[test]
fn attention_dropout_is_refused() {
    refusal(&with(smollm2_135m(), "attention_dropout", json!(0.1)), "attention_dropout");
}

#[test]
fn transformers5_rope_parameters_give_the_theta() {
    let mut config = smollm2_135m();
    config.as_object_mut().unwrap().remove("rope_theta");
    config.as_object_mut().unwrap().remove("rope_scaling");
    config["rope_parameters"] = json!({"rope_theta": 100000.0, "rope_type": "default"});
    let loaded = load(&config).unwrap();
    assert_eq!(loaded.rope_theta, 100_000.0);
    let written: Value = serde_json::from_str(&loaded.to_json()).unwrap();
    assert_eq!(written["rope_parameters"], config["rope_parameters"]);
    assert_eq!(load(&written).unwrap(), loaded);
}

#[test]
fn rope_parameters_of_another_type_are_refused() {
    let mut config = smollm2_135m();
    config.as_object_mut().unwrap().remove("rope_theta");
    config["rope_parameters"] = json!({"rope_theta": 100000.0, "rope_type": "yarn", "factor": 4.0});
    refusal(&config, "rope_parameters");
}

#[test]
fn tiny_config_round_trips() {
    let tiny = ModelConfig::tiny(16);
    assert_eq!(ModelConfig::from_json(tiny.to_json().as_bytes()).unwrap(), tiny);
}
