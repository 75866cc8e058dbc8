//! Hostile answers: arbitrary strings, multi-megabyte traces, braces nested 10,000 deep,
//! NaN and infinity. The verifier and the LLM-reply parser return a verdict, `None` or an
//! error, promptly: never a panic, never a stack overflow, and never work that grows faster
//! than the input.

use distillery_judge::expr::{close, parse, MAX_EXPRESSION_TOKENS};
use distillery_judge::extract::{extract_final_answer, last_boxed};
use distillery_judge::llm::parse_verdict;
use distillery_judge::normalize::normalize;
use distillery_judge::verify::{compare, verify, RuleVerdict, MAX_RULE_ANSWER_BYTES};
use distillery_schemas::Verdict;
use proptest::prelude::*;
use std::time::{Duration, Instant};

/// Runs `f` on a thread with a small stack (like a busy tokio worker's), so unbounded
/// recursion shows up as a failure here rather than in production.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(512 * 1024).spawn(f).unwrap().join().expect("no panic")
}

fn within(limit: Duration, what: &str, f: impl FnOnce()) {
    let started = Instant::now();
    f();
    assert!(started.elapsed() < limit, "{what} took {:?}", started.elapsed());
}

/// Strings made of what answers are made of: LaTeX commands, braces, brackets, digits,
/// operators, verdict words, multi-byte characters.
fn answer_like() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just("\\boxed{".to_string()),
        Just("\\fbox{".to_string()),
        Just("\\frac".to_string()),
        Just("\\sqrt".to_string()),
        Just("\\text{".to_string()),
        Just("\\left(".to_string()),
        Just("\\right)".to_string()),
        Just("\\{".to_string()),
        Just("\\}".to_string()),
        Just("\\pi".to_string()),
        Just("^\\circ".to_string()),
        Just("{,}".to_string()),
        Just("answer is ".to_string()),
        Just("MATCH".to_string()),
        Just("MISMATCH".to_string()),
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("1e999".to_string()),
        Just("€".to_string()),
        Just("é".to_string()),
        "[{}()\\[\\],.^+*/=-]".prop_map(|s| s.to_string()),
        "[0-9]{1,4}".prop_map(|s| s.to_string()),
        "[a-zA-Z]{1,3}".prop_map(|s| s.to_string()),
        "\\PC{0,3}".prop_map(|s| s.to_string()),
    ];
    proptest::collection::vec(pieces, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, rng_seed: proptest::test_runner::RngSeed::Fixed(20261129), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(text in "\\PC{0,200}", expected in "\\PC{0,40}") {
        let _ = extract_final_answer(&text);
        let _ = last_boxed(&text);
        let _ = normalize(&text);
        let _ = parse(&text);
        let _ = parse_verdict(&text);
        let _ = compare(&text, &expected);
        let _ = verify(Some(&text), &expected);
    }

    #[test]
    fn answer_like_strings_never_panic_and_errors_say_why(text in answer_like(), expected in answer_like()) {
        let _ = extract_final_answer(&text);
        let _ = normalize(&text);
        if let Err(e) = parse(&text) {
            prop_assert!(!e.is_empty());
        }
        let _ = parse_verdict(&text);
        let decision = verify(Some(&text), &expected);
        prop_assert!(!decision.rule.is_empty());
        let (_, rule) = compare(&text, &expected);
        prop_assert!(!rule.is_empty());
    }

    #[test]
    fn the_verdict_is_the_last_word_whatever_precedes_it(prefix in "\\PC{0,30}", word in prop_oneof![Just("MATCH"), Just("MISMATCH")]) {
        // Multi-byte characters right before the word used to split a character in half.
        let reply = format!("{prefix}{word}");
        let expected = if word == "MATCH" { Verdict::Match } else { Verdict::Mismatch };
        prop_assert_eq!(parse_verdict(&reply), Some(expected));
    }

    #[test]
    fn normalisation_is_idempotent(text in answer_like()) {
        let once = normalize(&text);
        prop_assert_eq!(normalize(&once), once.clone());
    }
}

#[test]
fn a_multibyte_character_before_match_is_not_split() {
    // "€" is 3 bytes: the check for a preceding "MIS" sliced into the middle of it.
    assert_eq!(parse_verdict("€xxMATCH"), Some(Verdict::Match));
    assert_eq!(parse_verdict("中MATCH"), Some(Verdict::Match));
    assert_eq!(parse_verdict("é MISMATCH"), Some(Verdict::Mismatch));
}

#[test]
fn a_multi_megabyte_trace_is_judged_promptly() {
    within(Duration::from_secs(5), "a 4 MB trace", || {
        let trace = format!(
            "{}Therefore the answer is \\boxed{{\\frac{{1}}{{2}}}}.",
            "Let me think step by step. ".repeat(150_000)
        );
        assert!(trace.len() > 4_000_000);
        let decision = verify(Some(&trace), "0.5");
        assert_eq!(decision.verdict, RuleVerdict::Match, "{decision:?}");
        // Without a box: the phrase fallback, then nothing to guess from.
        let words = "no final answer in here ".repeat(200_000);
        assert_eq!(verify(Some(&words), "3").verdict, RuleVerdict::Unsure);
    });
}

#[test]
fn a_multi_megabyte_boxed_answer_is_left_to_the_llm_judge_with_the_limit_named() {
    within(Duration::from_secs(5), "a 2 MB box", || {
        let huge = format!("\\boxed{{{}}}", "\\text{x}+1".repeat(200_000));
        let decision = verify(Some(&huge), "1");
        assert_eq!(decision.verdict, RuleVerdict::Unsure);
        assert!(decision.rule.contains(&format!("longer than {MAX_RULE_ANSWER_BYTES} bytes")), "{}", decision.rule);
    });
}

#[test]
fn ten_thousand_nested_braces_in_a_box_return_promptly() {
    on_small_stack(|| {
        within(Duration::from_secs(5), "nested braces", || {
            let deep = format!("so \\boxed{{{}1{}}}", "{".repeat(10_000), "}".repeat(10_000));
            let extracted = extract_final_answer(&deep).unwrap();
            assert_eq!(extracted.answer.len(), 20_001);
            let decision = verify(Some(&deep), "1");
            assert_ne!(decision.verdict, RuleVerdict::Mismatch, "{decision:?}");
            // Unclosed: a cut-off generation, no answer.
            let open = format!("\\boxed{{{}", "{".repeat(10_000));
            assert_eq!(extract_final_answer(&open), None);
        })
    });
}

#[test]
fn ten_thousand_nested_brackets_on_both_sides_return_promptly() {
    on_small_stack(|| {
        within(Duration::from_secs(5), "nested tuples", || {
            let deep = |n: usize| format!("{}1,2{}", "(".repeat(n), ")".repeat(n));
            let (verdict, rule) = compare(&deep(3_000), &deep(3_000));
            assert_eq!(verdict, RuleVerdict::Match, "{rule}");
            let (verdict, rule) = compare(&deep(3_000), &format!("{}1,3{}", "(".repeat(3_000), ")".repeat(3_000)));
            assert_ne!(verdict, RuleVerdict::Match, "{rule}");
            let sets = |n: usize| format!("{}1{}", "\\{".repeat(n), "\\}".repeat(n));
            let _ = compare(&sets(1_000), &sets(1_000));
        })
    });
}

#[test]
fn ten_thousand_deep_expressions_fail_with_the_limit_named() {
    on_small_stack(|| {
        within(Duration::from_secs(5), "deep expressions", || {
            let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
            assert!(parse(&deep).unwrap_err().contains("more than"));
            let nested = format!("{}1{}", "(".repeat(400), ")".repeat(400));
            assert!(parse(&nested).unwrap_err().contains("nested deeper than 100 levels"));
            for n in [100, 10_000] {
                let frac = format!("{}1{}", "\\frac{1}{".repeat(n), "}".repeat(n));
                assert!(!parse(&frac).unwrap_err().is_empty());
                let exponents = format!("2{}2", "^-".repeat(n));
                assert!(!parse(&exponents).unwrap_err().is_empty());
                let roots = format!("{}2{}", "\\sqrt[".repeat(n), "]{2}".repeat(n));
                assert!(!parse(&roots).unwrap_err().is_empty());
            }
            // Long flat chains build deep trees too: they are refused by length.
            for n in [MAX_EXPRESSION_TOKENS, 100_000] {
                let chain = "1+".repeat(n) + "1";
                let err = parse(&chain).unwrap_err();
                assert!(err.contains(&format!("more than {MAX_EXPRESSION_TOKENS} tokens")), "{err}");
                let product = "x".repeat(n + 1);
                assert!(parse(&product).is_err());
            }
            // Under the limit, the deepest trees evaluate and drop on a small stack.
            let chain = "1+".repeat(MAX_EXPRESSION_TOKENS / 2 - 1) + "1";
            assert_eq!(parse(&chain).unwrap().eval(&|_| 0.0), (MAX_EXPRESSION_TOKENS / 2) as f64);
            let product = "x".repeat(MAX_EXPRESSION_TOKENS);
            assert_eq!(compare(&product, &product).0, RuleVerdict::Match, "equal strings still match");
            assert_eq!(compare(&product, &"x".repeat(MAX_EXPRESSION_TOKENS - 1)).0, RuleVerdict::Unsure);
        })
    });
}

#[test]
fn nan_and_infinity_never_match_anything() {
    for (answer, expected) in [
        ("NaN", "NaN"),
        ("nan", "1"),
        ("\\infty", "1"),
        ("1e999", "1e999"),
        ("9".repeat(400).as_str(), "1"),
        ("\\frac{1}{0}", "\\frac{2}{0}"),
        ("0/0", "0/0"),
        ("\\sqrt{-1}", "\\sqrt{-4}"),
        ("\\ln{0}", "1"),
    ] {
        let (verdict, rule) = compare(answer, expected);
        if answer != expected {
            assert_ne!(verdict, RuleVerdict::Match, "{answer} vs {expected}: {rule}");
        }
    }
    // Overflowing values are not values: 10^400 against itself is equal as text only.
    let big = "9".repeat(400);
    assert_eq!(compare(&big, &format!("{big}.0")).0, RuleVerdict::Unsure);
    assert!(!close(f64::NAN, f64::NAN));
    assert!(!close(f64::INFINITY, f64::INFINITY));
    assert!(!close(f64::INFINITY, 1.0));
    assert!(!close(f64::NEG_INFINITY, f64::INFINITY));
}
