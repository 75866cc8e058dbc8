//! Records the tests write straight into topics (as the stage before would have), and the
//! files those records point at: agreed samples, judged samples, shards and the student
//! tokenizer a packer reads.

use distillery_packer::ffd::Row;
use distillery_packer::shard::{build_shard, ShardOrigin, TokenizedSequence};
use distillery_packer::tokenize::byte_level_tokenizer;
use distillery_schemas::{
    encode, now_ms, stable_id, AgreedSample, JudgeMethod, JudgedSample, SamplingSettings, ShardManifest, TeacherSample,
    TeacherTrace, Verdict,
};
use std::path::Path;

/// Question `q{i:04}` agreed by teacher-a (reasoning `words` sentences long) and teacher-b
/// (10), keyed by its question id: (key, record).
pub fn agreed_sample(i: usize, words: usize) -> (String, Vec<u8>) {
    let question_id = format!("q{i:04}");
    let trace = |teacher: &str, words: usize| TeacherTrace {
        teacher: teacher.into(),
        sample_id: stable_id(&[&question_id, teacher]),
        verdict: "MATCH".into(),
        reasoning: Some(format!("Let me work on problem {i}. {}", "We compute step by step. ".repeat(words))),
        answer: Some(format!("The answer is \\boxed{{{i}}}.")),
        completion_tokens: 0,
        finish_reason: "stop".into(),
    };
    let record = AgreedSample {
        id: stable_id(&[&question_id, "teacher-a", "teacher-b"]),
        question_id: question_id.clone(),
        dataset: "d".into(),
        problem: format!("What is {i} + 0?"),
        expected_answer: i.to_string(),
        accepted: true,
        reason: None,
        traces: vec![trace("teacher-a", words), trace("teacher-b", 10)],
        decided_at_ms: 0,
    };
    (question_id, encode(&record).unwrap())
}

/// `teacher`'s verdict on `question_id`'s first sample, judged at `judged_at_ms`, keyed by the
/// question id: (key, record).
pub fn judged_sample(question_id: &str, teacher: &str, verdict: Verdict, judged_at_ms: i64) -> (String, Vec<u8>) {
    let sample = TeacherSample {
        id: stable_id(&[question_id, teacher, "0"]),
        question_id: question_id.into(),
        dataset: "d".into(),
        problem: format!("Problem {question_id}"),
        expected_answer: "1".into(),
        teacher: teacher.into(),
        attempt: 0,
        model: teacher.into(),
        server_model: None,
        endpoint: None,
        reasoning: Some("thinking ".repeat(50)),
        answer: Some("\\boxed{1}".into()),
        finish_reason: "stop".into(),
        prompt_tokens: 10,
        completion_tokens: 60,
        reasoning_tokens: None,
        latency_ms: 1,
        sampling: SamplingSettings {
            temperature: 1.0,
            top_p: 1.0,
            max_tokens: 100,
            reasoning_effort: None,
            system_prompt: None,
            prompt_template: "{problem}".into(),
            seed: None,
        },
        replayed: false,
        created_at_ms: now_ms(),
    };
    let record = JudgedSample {
        id: stable_id(&[&sample.id, "judge"]),
        sample,
        verdict,
        extracted_answer: None,
        method: JudgeMethod::Rule,
        judge_model: None,
        judge_output: None,
        detail: None,
        judged_at_ms,
    };
    (question_id.to_string(), encode(&record).unwrap())
}

/// Writes shard `index` of style teacher-a (`rows` packed into rows of `row_capacity` tokens)
/// to `dir`, and returns its manifest record, id `stable_id(["shard", index])`: (key, record).
pub fn shard(dir: &Path, index: i64, rows: &[Row<TokenizedSequence>], row_capacity: usize) -> (String, Vec<u8>) {
    let origin = ShardOrigin {
        style: "teacher-a".into(),
        shard_index: index,
        row_capacity,
        tokenizer_sha256: "t".into(),
        template_sha256: "t".into(),
    };
    let (bytes, file) = build_shard(rows, &origin).unwrap();
    let uri = dir.join(format!("shard-{index:03}.safetensors")).display().to_string();
    std::fs::write(&uri, &bytes).unwrap();
    let manifest = ShardManifest {
        id: stable_id(&["shard", &index.to_string()]),
        style: file.style.clone(),
        shard_index: index,
        uri: uri.clone(),
        manifest_uri: uri.replace(".safetensors", ".json"),
        format: file.format.clone(),
        bytes: bytes.len() as i64,
        sha256: file.sha256.clone(),
        rows: file.rows as i32,
        sequences: file.sequences as i32,
        tokens: file.tokens as i64,
        completion_tokens: file.completion_tokens as i64,
        row_capacity: row_capacity as i32,
        fill_ratio: file.fill_ratio,
        tokenizer_sha256: "t".into(),
        template_sha256: "t".into(),
        question_ids: file.question_ids.clone(),
        created_at_ms: 0,
    };
    ("teacher-a".to_string(), encode(&manifest).unwrap())
}

/// Writes the student files a packer topology names as `{dir}/tokenizer.json` and
/// `{dir}/tokenizer_config.json`: a byte-level BPE and NVIDIA-Nemotron-Nano-v2's chat template.
pub fn write_student(dir: &Path) {
    let tokenizer = byte_level_tokenizer(&["<SPECIAL_10>", "<SPECIAL_11>", "<SPECIAL_12>"]);
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string(false).unwrap()).unwrap();
    let template =
        std::fs::read_to_string(crate::repo_root().join("processors/packer/templates/nvidia-nemotron-nano-v2.jinja"))
            .unwrap();
    let config = serde_json::json!({"chat_template": template, "eos_token": "<SPECIAL_12>"});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
}
