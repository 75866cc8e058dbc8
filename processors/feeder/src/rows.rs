//! From a dataset row (as JSON, whether it came from JSONL or Parquet) to a [`Question`].

use crate::config::{DatasetFile, RowFormat};
use crate::pyliteral;
use distillery_schemas::{stable_id, Question};
use serde_json::Value;
use std::collections::BTreeMap;

/// Builds the question of one row, or says why the row cannot be one.
pub fn question_from_row(row: &Value, file: &DatasetFile, row_index: u64) -> Result<Question, String> {
    let obj = row.as_object().ok_or("row is not an object")?;
    let dataset = file.dataset_name();
    let mut metadata = BTreeMap::new();
    let (problem, answer, id) = match file.format {
        RowFormat::Nemotron => {
            let problem = nemotron_user_turn(row)?;
            let meta = nemotron_metadata(row)?;
            let answer = meta.get("expected_answer").and_then(scalar_text);
            for (k, v) in meta.iter().filter(|(k, _)| k.as_str() != "expected_answer") {
                if let Some(text) = scalar_text(v) {
                    metadata.insert(k.clone(), text);
                }
            }
            for k in ["category", "generator", "license", "version", "reasoning"] {
                if let Some(text) = obj.get(k).and_then(scalar_text) {
                    metadata.insert(k.to_string(), text);
                }
            }
            (Some(problem), answer, field_text(row, file.id_field.as_deref().unwrap_or("uuid")))
        }
        RowFormat::Gsm8k => {
            let problem = field_text(row, file.problem_field.as_deref().unwrap_or("question"));
            let answer_field = file.answer_field.as_deref().unwrap_or("answer");
            let answer = match field_text(row, answer_field) {
                Some(solution) => Some(
                    gsm8k_final_answer(&solution)
                        .ok_or_else(|| format!("field '{answer_field}' has no '#### <answer>' line"))?,
                ),
                None => None,
            };
            (problem, answer, file.id_field.as_deref().and_then(|f| field_text(row, f)))
        }
        RowFormat::Math500 => {
            for k in ["subject", "level"] {
                if let Some(text) = obj.get(k).and_then(scalar_text) {
                    metadata.insert(k.to_string(), text);
                }
            }
            (
                field_text(row, file.problem_field.as_deref().unwrap_or("problem")),
                field_text(row, file.answer_field.as_deref().unwrap_or("answer")),
                field_text(row, file.id_field.as_deref().unwrap_or("unique_id")),
            )
        }
        RowFormat::Aime => (
            field_text(row, file.problem_field.as_deref().unwrap_or("problem")),
            field_text(row, file.answer_field.as_deref().unwrap_or("answer")),
            field_text(row, file.id_field.as_deref().unwrap_or("id")),
        ),
        RowFormat::Fields => (
            field_text(row, file.problem_field.as_deref().unwrap_or("problem")),
            field_text(row, file.answer_field.as_deref().unwrap_or("answer")),
            file.id_field.as_deref().and_then(|f| field_text(row, f)),
        ),
    };
    let problem = problem.filter(|p| !p.trim().is_empty()).ok_or("row has no problem text")?;
    let answer = answer.filter(|a| !a.trim().is_empty()).ok_or("row has no expected answer")?;
    let id = match id.filter(|i| !i.is_empty()) {
        Some(row_id) => format!("{dataset}:{row_id}"),
        None => format!("{dataset}:{}", stable_id(&[&problem, &answer])),
    };
    Ok(Question {
        id,
        dataset: dataset.to_string(),
        source_uri: file.uri.clone(),
        source_row: row_index as i64,
        problem,
        expected_answer: answer.trim().to_string(),
        metadata,
    })
}

/// A field as text: strings as they are, numbers and booleans printed.
fn field_text(row: &Value, field: &str) -> Option<String> {
    row.get(field).and_then(scalar_text)
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The final answer of a GSM8K solution: the text after the last `####`, thousands
/// separators removed (`1,450,000` -> `1450000`).
pub fn gsm8k_final_answer(solution: &str) -> Option<String> {
    let (_, after) = solution.rsplit_once("####")?;
    let answer: String = after.trim().chars().filter(|c| *c != ',').collect();
    (!answer.is_empty()).then_some(answer)
}

fn nemotron_user_turn(row: &Value) -> Result<String, String> {
    let messages = row.get("messages").and_then(Value::as_array).ok_or("row has no 'messages' list")?;
    messages
        .iter()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content").and_then(Value::as_str))
        .map(str::to_string)
        .ok_or_else(|| "row has no problem text (no user message)".to_string())
}

/// Nemotron's `metadata` is a string holding JSON, or a Python dict literal
/// (`{'expected_answer': '5', ...}`); some exports already give an object.
fn nemotron_metadata(row: &Value) -> Result<serde_json::Map<String, Value>, String> {
    match row.get("metadata") {
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(Value::String(text)) => {
            let parsed = serde_json::from_str::<Value>(text)
                .or_else(|_| pyliteral::parse(text))
                .map_err(|e| format!("metadata is neither JSON nor a Python literal: {e}"))?;
            match parsed {
                Value::Object(map) => Ok(map),
                _ => Err("metadata is not a dictionary".into()),
            }
        }
        Some(_) => Err("metadata is neither a string nor an object".into()),
        None => Err("row has no expected answer (no 'metadata')".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file(format: RowFormat) -> DatasetFile {
        DatasetFile {
            uri: "f.jsonl".into(),
            format,
            dataset: None,
            file_type: None,
            problem_field: None,
            answer_field: None,
            id_field: None,
            limit: None,
        }
    }

    #[test]
    fn nemotron_rows_with_python_literal_metadata() {
        let row = json!({
            "uuid": "abc-1",
            "messages": [{"role": "user", "content": "Solve x+1=2."}, {"role": "assistant", "content": "<think>x=1</think>\\boxed{1}"}],
            "metadata": "{'expected_answer': '1', 'problem_source': 'aops_c4_high_school_math', 'used_in': ['nano'], 'ok': True}",
            "category": "math",
        });
        let q = question_from_row(&row, &file(RowFormat::Nemotron), 4).unwrap();
        assert_eq!(q.id, "nemotron:abc-1");
        assert_eq!(q.problem, "Solve x+1=2.");
        assert_eq!(q.expected_answer, "1");
        assert_eq!(q.metadata["problem_source"], "aops_c4_high_school_math");
        assert_eq!(q.metadata["category"], "math");
        assert_eq!(q.source_row, 4);
        let json_meta = json!({"uuid": "u", "messages": [{"role": "user", "content": "p"}], "metadata": "{\"expected_answer\": 12}"});
        assert_eq!(question_from_row(&json_meta, &file(RowFormat::Nemotron), 0).unwrap().expected_answer, "12");
    }

    #[test]
    fn gsm8k_answers_lose_their_thousands_separators() {
        let row = json!({"question": "How many?", "answer": "Work...\n#### 1,450,000"});
        let q = question_from_row(&row, &file(RowFormat::Gsm8k), 0).unwrap();
        assert_eq!(q.expected_answer, "1450000");
        assert!(q.id.starts_with("gsm8k:") && q.id.len() == "gsm8k:".len() + 32);
        let again = question_from_row(&row, &file(RowFormat::Gsm8k), 9).unwrap();
        assert_eq!(q.id, again.id, "ids depend on content, not position");
    }

    #[test]
    fn rows_without_problem_or_answer_are_refused_with_the_reason() {
        let no_answer = json!({"problem": "p", "answer": ""});
        assert_eq!(question_from_row(&no_answer, &file(RowFormat::Aime), 0).unwrap_err(), "row has no expected answer");
        let no_problem = json!({"answer": "3"});
        assert_eq!(question_from_row(&no_problem, &file(RowFormat::Aime), 0).unwrap_err(), "row has no problem text");
        let bad_gsm = json!({"question": "q", "answer": "no marker"});
        assert!(question_from_row(&bad_gsm, &file(RowFormat::Gsm8k), 0).unwrap_err().contains("####"));
        let nemotron =
            json!({"uuid": "u", "messages": [{"role": "user", "content": "p"}], "metadata": "{'problem_source': 'x'}"});
        assert_eq!(
            question_from_row(&nemotron, &file(RowFormat::Nemotron), 0).unwrap_err(),
            "row has no expected answer"
        );
        assert_eq!(question_from_row(&json!([1]), &file(RowFormat::Aime), 0).unwrap_err(), "row is not an object");
    }

    const FORMATS: [RowFormat; 5] =
        [RowFormat::Nemotron, RowFormat::Gsm8k, RowFormat::Math500, RowFormat::Aime, RowFormat::Fields];

    /// Every format tried on a row: a question or a reason, never a panic.
    fn every_format(row: &Value) {
        for format in FORMATS {
            if let Err(e) = question_from_row(row, &file(format), 0) {
                assert!(!e.is_empty());
            }
        }
    }

    /// JSON values whose keys are the ones the formats look for, holding anything.
    fn row_like() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            "\\PC{0,20}".prop_map(Value::String),
            Just(json!("{'expected_answer': '5'}")),
            Just(json!("Work\n#### 1,000")),
        ];
        let value = leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("(role|content|user|[a-z]{1,3})", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        let key = prop_oneof![
            Just("uuid"),
            Just("messages"),
            Just("metadata"),
            Just("question"),
            Just("answer"),
            Just("problem"),
            Just("id"),
            Just("unique_id"),
            Just("category"),
        ]
        .prop_map(str::to_string);
        prop_oneof![
            proptest::collection::btree_map(key, value.clone(), 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            value,
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, failure_persistence: None, rng_seed: proptest::test_runner::RngSeed::Fixed(20261129), ..Default::default() })]

        #[test]
        fn arbitrary_lines_become_questions_or_reasons(line in "\\PC{0,120}") {
            if let Ok(row) = serde_json::from_str::<Value>(&line) {
                every_format(&row);
            }
            every_format(&json!({"uuid": "u", "messages": [{"role": "user", "content": "p"}], "metadata": line}));
            every_format(&json!({"question": "q", "answer": line, "problem": line}));
        }

        #[test]
        fn arbitrary_rows_become_questions_or_reasons(row in row_like()) {
            every_format(&row);
        }
    }

    #[test]
    fn hostile_metadata_is_a_reason() {
        let row = |meta: String| json!({"uuid": "u", "messages": [{"role": "user", "content": "p"}], "metadata": meta});
        let deep = "{'a': ".repeat(10_000) + "1" + &"}".repeat(10_000);
        let err = question_from_row(&row(deep), &file(RowFormat::Nemotron), 0).unwrap_err();
        assert!(err.starts_with("metadata is neither JSON nor a Python literal: nested deeper"), "{err}");
        let huge = format!("{{'expected_answer': '{}'}}", "9".repeat(1_000_000));
        assert_eq!(
            question_from_row(&row(huge), &file(RowFormat::Nemotron), 0).unwrap().expected_answer.len(),
            1_000_000
        );
        let nan = json!({"problem": "p", "answer": f64::NAN});
        assert_eq!(question_from_row(&nan, &file(RowFormat::Aime), 0).unwrap_err(), "row has no expected answer");
    }

    #[test]
    fn aime_integer_answers_and_configured_fields() {
        let q =
            question_from_row(&json!({"problem": "p", "answer": 70, "id": "0"}), &file(RowFormat::Aime), 0).unwrap();
        assert_eq!((q.expected_answer.as_str(), q.id.as_str()), ("70", "aime:0"));
        let mut f = file(RowFormat::Fields);
        f.problem_field = Some("q".into());
        f.answer_field = Some("a".into());
        f.dataset = Some("mine".into());
        let q = question_from_row(&json!({"q": "p", "a": "3"}), &f, 0).unwrap();
        assert_eq!(q.dataset, "mine");
        assert_eq!(q.expected_answer, "3");
    }
}
