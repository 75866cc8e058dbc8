//! The rule-based verifier: decides the clear cases, and says UNSURE for the rest (which go to
//! the LLM judge). Compares, after normalisation: equal strings; numbers (integers, decimals,
//! fractions, radicals, pi forms) by value; tuples, intervals and sets element by element; and
//! expressions with variables by evaluation at sample points.

use crate::expr::{close, parse, Expr};
use crate::extract::extract_final_answer;
use crate::normalize::normalize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleVerdict {
    Match,
    Mismatch,
    Unsure,
}

/// The verifier's decision with what it looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDecision {
    pub verdict: RuleVerdict,
    /// The final answer extracted from the response, if any.
    pub extracted: Option<String>,
    /// Which rule decided (for the record and for debugging the verifier).
    pub rule: String,
}

/// Judges a full answer text against the ground truth.
pub fn verify(answer_text: Option<&str>, expected: &str) -> RuleDecision {
    let Some(text) = answer_text.filter(|t| !t.trim().is_empty()) else {
        return RuleDecision { verdict: RuleVerdict::Mismatch, extracted: None, rule: "no answer".into() };
    };
    let Some(extracted) = extract_final_answer(text) else {
        // An answer in words, or a cut-off box: a reader (the LLM judge) may still find it.
        return RuleDecision { verdict: RuleVerdict::Unsure, extracted: None, rule: "no final answer found".into() };
    };
    let (verdict, rule) = compare(&extracted.answer, expected);
    RuleDecision { verdict, extracted: Some(extracted.answer), rule: format!("{} ({})", rule, extracted.from) }
}

/// Final answers longer than this are not compared by rule (the LLM judge gets them): no real
/// final answer is this long, and normalising one takes time that grows faster than its length.
pub const MAX_RULE_ANSWER_BYTES: usize = 10_000;
const TOO_LONG: &str = "answer longer than 10000 bytes (MAX_RULE_ANSWER_BYTES)";

/// Element comparisons one pair of answers may take. Tuples and sets nest, and a set compares
/// every element with every other, so hostile nesting could otherwise take time quadratic in
/// its size at every level.
const MAX_COMPARISONS: usize = 10_000;

/// Lists nested deeper than this are not compared element by element. Each level recursed
/// into `compare`, so 10,000 nested brackets on both sides exhausted the stack.
const MAX_LIST_DEPTH: usize = 16;

/// Compares two final answers.
pub fn compare(predicted: &str, expected: &str) -> (RuleVerdict, &'static str) {
    if predicted.len() > MAX_RULE_ANSWER_BYTES || expected.len() > MAX_RULE_ANSWER_BYTES {
        return (RuleVerdict::Unsure, TOO_LONG);
    }
    compare_within(predicted, expected, 0, &mut 0)
}

/// [`compare`] at a list nesting `depth`, counting element `comparisons` made so far.
fn compare_within(
    predicted: &str,
    expected: &str,
    depth: usize,
    comparisons: &mut usize,
) -> (RuleVerdict, &'static str) {
    *comparisons += 1;
    if *comparisons > MAX_COMPARISONS {
        return (RuleVerdict::Unsure, "too many elements to compare");
    }
    let (p, e) = (normalize(predicted), normalize(expected));
    if p == e {
        return (RuleVerdict::Match, "equal after normalisation");
    }
    if p.is_empty() || e.is_empty() {
        return (RuleVerdict::Unsure, "empty answer");
    }
    if let (Some(pv), Some(ev)) = (constant(&p), constant(&e)) {
        return if close(pv, ev) {
            (RuleVerdict::Match, "equal values")
        } else {
            (RuleVerdict::Mismatch, "different values")
        };
    }
    if let (Some(pl), Some(el)) = (bracketed(&p), bracketed(&e)) {
        if depth >= MAX_LIST_DEPTH {
            return (RuleVerdict::Unsure, "lists nested too deep");
        }
        return compare_lists(&pl, &el, depth, comparisons);
    }
    if has_words(&p) || has_words(&e) {
        // "Monday", "yes": letters here are words, not variables.
        return (RuleVerdict::Unsure, "answers in words");
    }
    if let (Ok(pe), Ok(ee)) = (parse(&p), parse(&e)) {
        let vars = pe.variables();
        if !vars.is_empty() && vars == ee.variables() {
            return match same_function(&pe, &ee) {
                Some(true) => (RuleVerdict::Match, "equal expressions at sample points"),
                Some(false) => (RuleVerdict::Mismatch, "different expressions at sample points"),
                None => (RuleVerdict::Unsure, "expressions undefined at the sample points"),
            };
        }
        if vars != ee.variables() && (constant(&p).is_some() || constant(&e).is_some()) {
            // A number against an expression in variables: different kinds of answer.
            return (RuleVerdict::Unsure, "a number against an expression");
        }
    }
    (RuleVerdict::Unsure, "no rule applies")
}

/// A run of three or more letters that is not a LaTeX command: a word.
fn has_words(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_alphabetic() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_alphabetic() {
                i += 1;
            }
            let command = start > 0 && chars[start - 1] == '\\';
            if !command && i - start >= 3 {
                return true;
            }
        } else {
            i += 1;
        }
    }
    false
}

/// The value of an answer without variables.
fn constant(s: &str) -> Option<f64> {
    let e = parse(s).ok()?;
    if !e.variables().is_empty() {
        return None;
    }
    let v = e.eval(&|_| f64::NAN);
    v.is_finite().then_some(v)
}

/// Tuples `(a,b)`, intervals `[a,b)`, sets `\{a,b\}` and bare lists `a,b`: the brackets and
/// the top-level elements.
#[derive(Debug)]
struct List {
    open: String,
    close: String,
    items: Vec<String>,
}

fn bracketed(s: &str) -> Option<List> {
    let (open, close, inner) = if let Some(inner) = s.strip_prefix("\\{").and_then(|r| r.strip_suffix("\\}")) {
        ("{".to_string(), "}".to_string(), inner)
    } else {
        let first = s.chars().next()?;
        let last = s.chars().last()?;
        if "([".contains(first) && ")]".contains(last) && s.len() >= 2 {
            (first.to_string(), last.to_string(), &s[1..s.len() - 1])
        } else if s.contains(',') {
            (String::new(), String::new(), s)
        } else {
            return None;
        }
    };
    let mut items = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in inner.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(inner[start..i].to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(inner[start..].to_string());
    (items.len() > 1 || !open.is_empty()).then_some(List { open, close, items })
}

fn compare_lists(p: &List, e: &List, depth: usize, comparisons: &mut usize) -> (RuleVerdict, &'static str) {
    if p.items.len() != e.items.len() {
        return (RuleVerdict::Mismatch, "different number of elements");
    }
    let is_set = e.open == "{";
    if (p.open != e.open || p.close != e.close) && !(p.open.is_empty() || e.open.is_empty()) {
        // (1,2] against [1,2]: different intervals.
        return (RuleVerdict::Mismatch, "different brackets");
    }
    let mut element = |a: &str, b: &str| compare_within(a, b, depth + 1, comparisons).0;
    if is_set {
        // Order does not matter in a set: every element must match a distinct one.
        let mut unused: Vec<&String> = e.items.iter().collect();
        for item in &p.items {
            match unused.iter().position(|other| element(item, other) == RuleVerdict::Match) {
                Some(at) => {
                    unused.remove(at);
                }
                None => return (RuleVerdict::Unsure, "set elements not all matched"),
            }
        }
        return (RuleVerdict::Match, "equal sets");
    }
    let mut verdict = RuleVerdict::Match;
    for (a, b) in p.items.iter().zip(&e.items) {
        match element(a, b) {
            RuleVerdict::Match => {}
            RuleVerdict::Mismatch => return (RuleVerdict::Mismatch, "different elements"),
            RuleVerdict::Unsure => verdict = RuleVerdict::Unsure,
        }
    }
    (verdict, if verdict == RuleVerdict::Match { "equal elements" } else { "elements not all decidable" })
}

/// Evaluates both at fixed sample points; None when too few points are defined for both.
fn same_function(a: &Expr, b: &Expr) -> Option<bool> {
    const POINTS: [f64; 6] = [0.37, 1.13, 2.71, -0.59, 3.3, 0.82];
    let vars: Vec<char> = a.variables().into_iter().collect();
    let mut defined = 0;
    for (k, _) in POINTS.iter().enumerate() {
        let value_of = |v: char| {
            let i = vars.iter().position(|x| *x == v).unwrap_or(0);
            POINTS[(k + i * 2) % POINTS.len()] + i as f64 * 0.5
        };
        let (x, y) = (a.eval(&value_of), b.eval(&value_of));
        if !x.is_finite() || !y.is_finite() {
            continue;
        }
        if !close(x, y) {
            return Some(false);
        }
        defined += 1;
    }
    (defined >= 3).then_some(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RuleVerdict::*;

    fn v(p: &str, e: &str) -> RuleVerdict {
        compare(p, e).0
    }

    #[test]
    fn equivalent_forms_match() {
        assert_eq!(v("\\frac{1}{2}", "0.5"), Match);
        assert_eq!(v("\\dfrac12", "\\frac{1}{2}"), Match);
        assert_eq!(v("2\\sqrt{3}", "\\sqrt{12}"), Match);
        assert_eq!(v("\\frac{\\pi}{2}", "\\frac12\\pi"), Match);
        assert_eq!(v("1,450,000", "1450000"), Match);
        assert_eq!(v("90^\\circ", "90"), Match);
        assert_eq!(v("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"), Match);
        assert_eq!(v("\\{3, 1, 2\\}", "\\{1,2,3\\}"), Match);
        assert_eq!(v("[-2, 5)", "[-2,5)"), Match);
        assert_eq!(v("x^2+2x+1", "(x+1)^2"), Match);
        assert_eq!(v("5.", "5"), Match);
        assert_eq!(v("\\text{Evelyn}", "Evelyn"), Match);
    }

    #[test]
    fn wrong_values_mismatch() {
        assert_eq!(v("3", "4"), Mismatch);
        assert_eq!(v("\\frac{1}{3}", "0.33"), Mismatch);
        assert_eq!(v("(1,2)", "(1,3)"), Mismatch);
        assert_eq!(v("(1,2]", "[1,2]"), Mismatch);
        assert_eq!(v("(1,2,3)", "(1,2)"), Mismatch);
        assert_eq!(v("x^2+1", "(x+1)^2"), Mismatch);
    }

    #[test]
    fn what_rules_cannot_decide_is_unsure() {
        assert_eq!(v("\\text{Monday}", "\\text{Tuesday}"), Unsure);
        assert_eq!(v("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\3\\end{pmatrix}"), Unsure);
    }

    #[test]
    fn the_length_limit_is_named_in_its_rule() {
        assert!(TOO_LONG.contains(&MAX_RULE_ANSWER_BYTES.to_string()));
        let long = "1".repeat(MAX_RULE_ANSWER_BYTES + 1);
        assert_eq!(compare(&long, "1"), (Unsure, TOO_LONG));
    }

    #[test]
    fn answers_are_extracted_first() {
        let d = verify(Some("so the total is \\boxed{1{,}000}."), "1000");
        assert_eq!((d.verdict, d.extracted.as_deref()), (Match, Some("1{,}000")));
        let none = verify(None, "3");
        assert_eq!((none.verdict, none.rule.as_str()), (Mismatch, "no answer"));
        let words = verify(Some("After all that work I believe it comes to seven apples in total, as computed."), "7");
        assert_eq!((words.verdict, words.rule.as_str()), (Unsure, "no final answer found"));
        assert_eq!(v("abc", "cab"), Unsure, "words are not products of variables");
    }
}
