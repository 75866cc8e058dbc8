//! The verifier on the real answer formats of MATH-500 and GSM8K (`topology/data/benchmarks`): every gold
//! answer against itself rewritten in equivalent forms must MATCH, and against wrong values
//! must never MATCH.

use distillery_judge::verify::{compare, verify, RuleVerdict};
use std::path::PathBuf;

fn benchmark_rows(path: &str) -> Vec<serde_json::Value> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../topology/data/benchmarks").join(path);
    std::fs::read_to_string(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn gold_answers() -> Vec<(String, String)> {
    let mut answers = Vec::new();
    for row in benchmark_rows("math500/test.jsonl") {
        answers.push(("math500".to_string(), row["answer"].as_str().unwrap().to_string()));
    }
    for row in benchmark_rows("gsm8k/test.jsonl") {
        let solution = row["answer"].as_str().unwrap();
        let gold = solution.rsplit_once("####").unwrap().1.trim().replace(',', "");
        answers.push(("gsm8k".to_string(), gold));
    }
    answers
}

/// Equivalent ways a model writes the same answer.
fn rewrites(gold: &str) -> Vec<String> {
    let mut out = vec![
        format!("Putting it together, the answer is $\\boxed{{{gold}}}$."),
        format!("\\boxed{{{}}}", gold.replace("\\frac", "\\dfrac")),
        format!("\\boxed{{ {} }}", gold.replace(',', ", ")),
        format!("The final answer is $\\boxed{{{gold}}}$. "),
    ];
    if gold.starts_with('(') && gold.ends_with(')') {
        out.push(format!("\\boxed{{\\left{}\\right{}}}", &gold[..gold.len() - 1], ")"));
    }
    if let Ok(n) = gold.parse::<i64>() {
        if n.abs() >= 1000 {
            let digits = n.abs().to_string();
            let mut grouped = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    grouped.push(',');
                }
                grouped.push(c);
            }
            out.push(format!("\\boxed{{{}{grouped}}}", if n < 0 { "-" } else { "" }));
        }
        out.push(format!("\\boxed{{{n}.00}}"));
        out.push(format!("The answer is {n}."));
    }
    out
}

#[test]
fn equivalent_rewrites_match_and_wrong_values_never_do() {
    let answers = gold_answers();
    assert_eq!(answers.len(), 500 + 1319);
    let (mut equivalent, mut matched, mut failures) = (0, 0, Vec::new());
    for (source, gold) in &answers {
        for text in rewrites(gold) {
            equivalent += 1;
            let decision = verify(Some(&text), gold);
            if decision.verdict == RuleVerdict::Match {
                matched += 1;
            } else {
                failures.push(format!("{source}: {text:?} vs {gold:?}: {:?} ({})", decision.verdict, decision.rule));
            }
        }
    }
    let (mut wrong, mut false_matches, mut mismatched) = (0, Vec::new(), 0);
    for (i, (source, gold)) in answers.iter().enumerate() {
        // A wrong value: the number plus one, or another problem's answer.
        let other = &answers[(i + 7) % answers.len()].1;
        let candidates = match gold.parse::<f64>() {
            Ok(n) => vec![format!("{}", n + 1.0), other.clone()],
            Err(_) => vec![other.clone()],
        };
        for candidate in candidates {
            if compare(&candidate, gold).0 == RuleVerdict::Match && compare(other, gold).0 != RuleVerdict::Match {
                false_matches.push(format!("{source}: {candidate:?} vs {gold:?}"));
            }
            wrong += 1;
            if verify(Some(&format!("\\boxed{{{candidate}}}")), gold).verdict == RuleVerdict::Mismatch {
                mismatched += 1;
            }
        }
    }
    eprintln!(
        "equivalent forms: {matched}/{equivalent} MATCH ({:.2}%); wrong values: {mismatched}/{wrong} MISMATCH ({:.2}%), {} false MATCH",
        100.0 * matched as f64 / equivalent as f64,
        100.0 * mismatched as f64 / wrong as f64,
        false_matches.len()
    );
    for f in failures.iter().take(20) {
        eprintln!("not matched: {f}");
    }
    assert!(false_matches.is_empty(), "wrong answers judged MATCH: {false_matches:?}");
    assert!(matched as f64 >= 0.99 * equivalent as f64, "{} equivalent forms not matched", failures.len());
}
