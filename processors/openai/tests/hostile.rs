//! Hostile response bodies: arbitrary bytes, valid completions with bytes flipped, cut or
//! inserted, and well-formed JSON whose fields hold the wrong types. `parse_completion` gives
//! a completion or an error that names the endpoint and the reason, never a panic; the
//! reasoning split never invents text that was not in the message.

use distillery_openai::client::parse_completion;
use distillery_openai::reasoning::split_think_tags;
use distillery_openai::{split_reasoning, LlmError};
use proptest::prelude::*;
use serde_json::{json, Value};

fn valid_body() -> Vec<u8> {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "reasoning_content": "r", "content": "<think>x</think>\\boxed{4}"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "completion_tokens_details": {"reasoning_tokens": 3}}
    })
    .to_string()
    .into_bytes()
}

fn check(bytes: &[u8]) {
    match parse_completion(bytes, "http://e/v1") {
        Ok(c) => assert!(c.reasoning.is_some() || c.answer.is_some() || c.finish_reason == "length"),
        Err(LlmError::Retryable { message, .. }) => {
            assert!(message.starts_with("http://e/v1: malformed response body: ") && message.len() > 38, "{message}")
        }
        Err(LlmError::Permanent(message)) => panic!("a body is never a permanent error: {message}"),
    }
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e300f64..1e300).prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::String),
        Just(json!("<think>")),
        Just(json!("</think>")),
        Just(json!("a</think>b<think>c")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, rng_seed: proptest::test_runner::RngSeed::Fixed(20261129), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_a_completion_or_a_reason(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        check(&bytes);
    }

    #[test]
    fn mutated_valid_bodies_are_a_completion_or_a_reason(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut body = valid_body();
        for (at, byte, how) in edits {
            let i = at % (body.len() + 1);
            match how {
                0 if i < body.len() => body[i] = byte,
                1 => body.truncate(i),
                _ => body.insert(i, byte),
            }
        }
        check(&body);
    }

    #[test]
    fn fields_of_the_wrong_type_are_a_completion_or_a_reason(
        field in 0usize..9,
        value in json_value(),
    ) {
        let mut body: Value = serde_json::from_slice(&valid_body()).unwrap();
        match field {
            0 => body["choices"] = value,
            1 => body["choices"][0] = value,
            2 => body["choices"][0]["message"] = value,
            3 => body["choices"][0]["message"]["content"] = value,
            4 => body["choices"][0]["message"]["reasoning"] = value,
            5 => body["choices"][0]["message"]["reasoning_content"] = value,
            6 => body["choices"][0]["finish_reason"] = value,
            7 => body["usage"] = value,
            _ => body = value,
        }
        check(&serde_json::to_vec(&body).unwrap());
    }

    #[test]
    fn any_message_splits_into_parts_of_itself(message in json_value()) {
        let split = split_reasoning(&message);
        let text = message.to_string();
        for part in [&split.reasoning, &split.answer].into_iter().flatten() {
            prop_assert!(!part.is_empty());
            let escaped = serde_json::to_string(part).unwrap();
            prop_assert!(text.contains(escaped.trim_matches('"')), "{part:?} not in {text}");
        }
    }

    #[test]
    fn think_tags_anywhere_split_into_substrings(
        parts in proptest::collection::vec(prop_oneof![Just("<think>".to_string()), Just("</think>".to_string()), "\\PC{0,10}"], 0..8),
    ) {
        let content = parts.concat();
        let split = split_think_tags(&content);
        for part in [&split.reasoning, &split.answer].into_iter().flatten() {
            prop_assert!(!part.trim().is_empty() && content.contains(part.as_str()));
        }
    }
}

#[test]
fn bodies_nested_deeper_than_serde_json_allows_are_a_reason() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let err = parse_completion(deep.as_bytes(), "e").unwrap_err().to_string();
    assert!(err.contains("recursion limit exceeded"), "{err}");
    let deep_content = format!(
        r#"{{"choices":[{{"message":{{"content":{}1{}}},"finish_reason":"stop"}}]}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(parse_completion(deep_content.as_bytes(), "e").is_err());
}

#[test]
fn a_multi_megabyte_inline_trace_splits_promptly() {
    let started = std::time::Instant::now();
    let content = format!("<think>{}</think>\\boxed{{1}}", "step ".repeat(1_000_000));
    let split = split_think_tags(&content);
    assert_eq!(split.answer.as_deref(), Some("\\boxed{1}"));
    assert_eq!(split.reasoning.unwrap().len(), 5_000_000 - 1);
    assert!(started.elapsed().as_secs() < 5);
}

#[test]
fn nan_and_huge_token_counts_are_not_trusted() {
    // JSON has no NaN; a server that writes it sends a malformed body.
    let nan = br#"{"choices":[{"message":{"content":"a"},"finish_reason":"stop"}],"usage":{"completion_tokens":NaN}}"#;
    assert!(parse_completion(nan, "e").is_err());
    let huge = br#"{"choices":[{"message":{"content":"a"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1e300,"completion_tokens":18446744073709551615,"completion_tokens_details":{"reasoning_tokens":-5}}}"#;
    let c = parse_completion(huge, "e").unwrap();
    assert_eq!((c.prompt_tokens, c.completion_tokens, c.reasoning_tokens), (0, u32::MAX, None));
}
