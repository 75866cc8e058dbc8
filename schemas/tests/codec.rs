//! Every record type round-trips through its schema; older writer versions resolve into the
//! current reader; garbage is rejected with a readable error.

use distillery_schemas::codec::{current_schema, encode_with_schema, peek_kind};
use distillery_schemas::*;
use std::collections::BTreeMap;

fn question() -> Question {
    Question {
        id: "gsm8k:1a2b".into(),
        dataset: "gsm8k".into(),
        source_uri: "data/gsm8k.jsonl".into(),
        source_row: 7,
        problem: "What is 2+2?".into(),
        expected_answer: "4".into(),
        metadata: BTreeMap::from([("level".to_string(), "1".to_string())]),
    }
}

fn sample() -> TeacherSample {
    TeacherSample {
        id: stable_id(&["gsm8k:1a2b", "gpt-oss-120b", "0"]),
        question_id: "gsm8k:1a2b".into(),
        dataset: "gsm8k".into(),
        problem: "What is 2+2?".into(),
        expected_answer: "4".into(),
        teacher: "gpt-oss-120b".into(),
        attempt: 0,
        model: "openai/gpt-oss-120b".into(),
        server_model: Some("gpt-oss-120b".into()),
        endpoint: None,
        reasoning: Some("two plus two".repeat(10_000)),
        answer: Some("\\boxed{4}".into()),
        finish_reason: "stop".into(),
        prompt_tokens: 12,
        completion_tokens: 40_000,
        reasoning_tokens: None,
        latency_ms: 1234,
        sampling: SamplingSettings {
            temperature: 1.0,
            top_p: 1.0,
            max_tokens: 32768,
            reasoning_effort: Some("high".into()),
            system_prompt: None,
            prompt_template: "{problem}".into(),
            seed: Some(7),
        },
        replayed: false,
        created_at_ms: 1,
    }
}

fn roundtrip<R: Record + PartialEq + std::fmt::Debug>(record: R) {
    let bytes = encode(&record).unwrap();
    assert_eq!(&bytes[..2], &[0xC3, 0x01], "single-object marker");
    assert_eq!(peek_kind(&bytes).unwrap(), R::KIND);
    let back: R = decode(&bytes).unwrap();
    assert_eq!(back, record);
    let any = decode_any(&bytes).unwrap();
    assert_eq!(any.kind, R::KIND);
    assert_eq!(any.json["id"], serde_json::Value::String(record.id().to_string()));
}

#[test]
fn every_record_type_round_trips() {
    roundtrip(question());
    roundtrip(sample());
    roundtrip(JudgedSample {
        id: "j1".into(),
        sample: sample(),
        verdict: Verdict::Mismatch,
        extracted_answer: Some("5".into()),
        method: JudgeMethod::Llm,
        judge_model: Some("Qwen3-30B-A3B-Thinking-2507".into()),
        judge_output: Some("... MISMATCH".into()),
        detail: None,
        judged_at_ms: 3,
    });
    roundtrip(AgreedSample {
        id: "a1".into(),
        question_id: "q".into(),
        dataset: "d".into(),
        problem: "p".into(),
        expected_answer: "4".into(),
        accepted: true,
        reason: None,
        traces: vec![TeacherTrace {
            teacher: "deepseek-r1".into(),
            sample_id: "s".into(),
            verdict: "MATCH".into(),
            reasoning: Some("r".into()),
            answer: Some("a".into()),
            completion_tokens: 9,
            finish_reason: "stop".into(),
        }],
        decided_at_ms: 4,
    });
    roundtrip(ShardManifest {
        id: "sh".into(),
        style: "gpt-oss".into(),
        shard_index: 3,
        uri: "s3://b/k.safetensors".into(),
        manifest_uri: "s3://b/k.json".into(),
        format: "safetensors".into(),
        bytes: 10,
        sha256: "00".into(),
        rows: 64,
        sequences: 900,
        tokens: 3_000_000,
        completion_tokens: 2_000_000,
        row_capacity: 60_000,
        fill_ratio: 0.97,
        tokenizer_sha256: "t".into(),
        template_sha256: "c".into(),
        question_ids: vec!["q1".into(), "q2".into()],
        created_at_ms: 5,
    });
    roundtrip(CheckpointEvent {
        id: "run@10".into(),
        run: "run".into(),
        style: "gpt-oss".into(),
        step: 10,
        uri: "file:///tmp/ck".into(),
        consumed: vec![ConsumedOffset { topic: "x.shards.gpt-oss".into(), partition: 0, next_offset: 11 }],
        shards_consumed: 10,
        tokens_seen: 100,
        is_final: false,
        created_at_ms: 6,
    });
    roundtrip(TrainMetrics {
        id: "run@1".into(),
        run: "run".into(),
        style: "s".into(),
        step: 1,
        loss: 1.5,
        lr: 5e-7,
        grad_norm: 0.3,
        tokens: 100,
        completion_tokens: 50,
        tokens_per_second: 1e4,
        created_at_ms: 7,
    });
    roundtrip(EvalResult {
        id: "run@10/gsm8k".into(),
        checkpoint_id: "run@10".into(),
        run: "run".into(),
        style: "s".into(),
        step: 10,
        benchmark: "gsm8k".into(),
        problems: 1319,
        samples_per_problem: 8,
        pass_at_k: vec![0.5; 8],
        majority_at_k: vec![0.4; 8],
        avg_generated_tokens: 900.0,
        truncated_share: 0.01,
        temperature: 0.6,
        top_p: 0.95,
        max_tokens: 32768,
        created_at_ms: 8,
    });
    roundtrip(DeadLetter {
        id: "d".into(),
        processor: "judge".into(),
        error_class: ErrorClass::User,
        error: "no answer".into(),
        source_topic: "x.samples".into(),
        source_partition: 2,
        source_offset: 99,
        key: Some("q".into()),
        original: vec![0, 159, 255],
        created_at_ms: 9,
    });
}

#[test]
fn a_reader_decodes_a_question_written_with_the_previous_schema_version() {
    #[derive(serde::Serialize)]
    struct QuestionV1 {
        id: String,
        dataset: String,
        source_uri: String,
        source_row: i64,
        problem: String,
        expected_answer: String,
    }
    let old = QuestionV1 {
        id: "q1".into(),
        dataset: "math500".into(),
        source_uri: "f.jsonl".into(),
        source_row: 3,
        problem: "1+1".into(),
        expected_answer: "2".into(),
    };
    let v1 = include_str!("../history/question.v1.avsc");
    let bytes = encode_with_schema(RecordKind::Question, v1, &old).unwrap();
    // The header names the old schema, not the current one.
    assert_ne!(bytes[2..10], encode(&question()).unwrap()[2..10]);
    let current: Question = decode(&bytes).unwrap();
    assert_eq!(current.id, "q1");
    assert_eq!(current.expected_answer, "2");
    assert!(current.metadata.is_empty(), "the field added in v2 takes its default");
}

#[test]
fn garbage_and_wrong_types_are_rejected_with_a_reason() {
    let err = decode::<Question>(b"not avro at all").unwrap_err().to_string();
    assert!(err.contains("marker"), "{err}");
    let err = decode::<Question>(&[0xC3]).unwrap_err().to_string();
    assert!(err.contains("too short"), "{err}");
    let err = decode::<Question>(&[0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0]).unwrap_err().to_string();
    assert!(err.contains("unknown writer schema"), "{err}");
    let sample_bytes = encode(&sample()).unwrap();
    let err = decode::<Question>(&sample_bytes).unwrap_err().to_string();
    assert!(err.contains("'teacher_sample' but 'question'"), "{err}");
    let mut truncated = encode(&question()).unwrap();
    truncated.truncate(truncated.len() - 3);
    assert!(decode::<Question>(&truncated).is_err());
    let mut trailing = encode(&question()).unwrap();
    trailing.push(0);
    let err = decode::<Question>(&trailing).unwrap_err().to_string();
    assert!(err.contains("follow the end"), "{err}");
}

#[test]
fn the_judged_sample_embeds_exactly_the_teacher_sample_schema() {
    let judged: serde_json::Value = serde_json::from_str(RecordKind::JudgedSample.current_schema_text()).unwrap();
    let sample: serde_json::Value = serde_json::from_str(RecordKind::TeacherSample.current_schema_text()).unwrap();
    let embedded = judged["fields"].as_array().unwrap().iter().find(|f| f["name"] == "sample").unwrap();
    assert_eq!(embedded["type"], sample, "re-generate judged_sample.avsc after changing teacher_sample.avsc");
    for kind in RecordKind::ALL {
        assert!(!current_schema(kind).canonical_form().is_empty());
    }
}
