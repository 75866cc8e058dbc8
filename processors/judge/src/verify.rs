//! The rule-based verifier: decides what it is sure of, and says UNSURE for the rest (which go
//! to the LLM judge). Its discipline:
//! - MATCH when the answers are equal after normalisation, or both were read completely
//!   ([`crate::answer`]) and are equal as the same kind of object;
//! - MISMATCH only when both were read completely into comparable objects that differ
//!   (different numbers, tuples, intervals, sets; a list of answers none of which is the
//!   expected one);
//! - UNSURE for everything else: what the parser does not understand (words, equations,
//!   inequalities), different kinds of object (a set against a tuple), rounding questions
//!   ([`crate::value`]), and answers whose other readings disagree: when the usual reading of
//!   commas and mixed numbers says MISMATCH but another reading says MATCH (`32, 349` against
//!   `32349`, `0,111` against `0.111`).

use crate::answer::{open_interval, parse_answer, Answer, Bound, Interval, Parsed, Reading};
use crate::expr::close;
use crate::extract::extract_final_answer;
use crate::normalize::{clean, compact};
use crate::value::{compare_values, plain_number, same_equation};
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleVerdict {
    Match,
    Mismatch,
    Unsure,
}
use RuleVerdict::*;

/// The verifier's decision with what it looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDecision {
    pub verdict: RuleVerdict,
    /// The final answer extracted from the response, if any (several boxes joined by `; `).
    pub extracted: Option<String>,
    /// Which rule decided (for the record and for debugging the verifier).
    pub rule: String,
}

/// Judges a full answer text against the ground truth.
pub fn verify(answer_text: Option<&str>, expected: &str) -> RuleDecision {
    let Some(text) = answer_text.filter(|t| !t.trim().is_empty()) else {
        return RuleDecision { verdict: Mismatch, extracted: None, rule: "no answer".into() };
    };
    let Some(extracted) = extract_final_answer(text) else {
        // An answer in words, or a cut-off box: a reader (the LLM judge) may still find it.
        return RuleDecision { verdict: Unsure, extracted: None, rule: "no final answer found".into() };
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

/// A verdict and the rule that gave it.
pub type Decision = (RuleVerdict, Cow<'static, str>);

/// Compares two final answers.
pub fn compare(predicted: &str, expected: &str) -> Decision {
    if predicted.len() > MAX_RULE_ANSWER_BYTES || expected.len() > MAX_RULE_ANSWER_BYTES {
        return (Unsure, TOO_LONG.into());
    }
    let (p, e) = (clean(predicted), clean(expected));
    let (p_compact, e_compact) = (compact(&p), compact(&e));
    if p_compact == e_compact {
        return (Match, "equal after normalisation".into());
    }
    if let (Some(a), Some(b)) = (plain_number(&p, &p_compact), plain_number(&e, &e_compact)) {
        let (verdict, rule) = compare_values(&a, &b);
        return (verdict, rule.into());
    }
    let (usual_p, usual_e) = match (parse_answer(&p, Reading::USUAL), parse_answer(&e, Reading::USUAL)) {
        (Ok(usual_p), Ok(usual_e)) => (usual_p, usual_e),
        (Err(why), _) => return (Unsure, format!("answer not understood: {why}").into()),
        (_, Err(why)) => return (Unsure, format!("expected answer not understood: {why}").into()),
    };
    let budget = &mut 0;
    let (verdict, rule) = compare_answers(&usual_p.answer, &usual_e.answer, budget);
    // A MISMATCH stands only if no other reading of a comma or a mixed number makes a MATCH.
    if verdict == Mismatch && (usual_p.ambiguous || usual_e.ambiguous) {
        let others = |text: &str, usual: Parsed| {
            let mut all = vec![usual.answer];
            if usual.ambiguous {
                all.extend(Reading::OTHERS.iter().filter_map(|r| parse_answer(text, *r).ok()).map(|p| p.answer));
            }
            all
        };
        let (all_p, all_e) = (others(&p, usual_p), others(&e, usual_e));
        for a in &all_p {
            for b in &all_e {
                if compare_answers(a, b, budget).0 == Match {
                    return (
                        Unsure,
                        "different as usually read, equal when a comma or mixed number is read otherwise".into(),
                    );
                }
            }
        }
    }
    (verdict, rule.into())
}

/// Compares two answers read completely, counting element comparisons in `budget`.
fn compare_answers(p: &Answer, e: &Answer, budget: &mut usize) -> (RuleVerdict, &'static str) {
    *budget += 1;
    if *budget > MAX_COMPARISONS {
        return (Unsure, "too many elements to compare");
    }
    use Answer::*;
    match (p, e) {
        (Value(a), Value(b)) => compare_values(a, b),
        (Text(a), Text(b)) => {
            if a == b {
                (Match, "equal words")
            } else {
                (Unsure, "different words")
            }
        }
        (Tuple(a), Tuple(b)) => in_order(a, b, budget),
        (Matrix(a), Matrix(b)) => {
            if a.len() != b.len() || a[0].len() != b[0].len() {
                return (Mismatch, "matrices of different shapes");
            }
            let (a, b): (Vec<_>, Vec<_>) =
                (a.iter().flatten().cloned().collect(), b.iter().flatten().cloned().collect());
            in_order(&a, &b, budget)
        }
        (Matrix(m), Tuple(t)) | (Tuple(t), Matrix(m)) if m.len() == 1 || m[0].len() == 1 => {
            let cells: Vec<Answer> = m.iter().flatten().cloned().collect();
            in_order(&cells, t, budget)
        }
        (Equation(a_lhs, a_rhs), Equation(b_lhs, b_rhs)) => same_equation(a_lhs, a_rhs, b_lhs, b_rhs),
        (Interval(a), Interval(b)) => intervals(a, b),
        (Tuple(t), Interval(i)) | (Interval(i), Tuple(t)) => match open_interval(t.clone()) {
            Some(open) => intervals(&open, i),
            None => (Unsure, "a tuple against an interval"),
        },
        (Union(a), Union(b)) => unions(a, b),
        (Union(u), Interval(i)) | (Interval(i), Union(u)) => unions(u, std::slice::from_ref(i)),
        (Union(u), Tuple(t)) | (Tuple(t), Union(u)) => match open_interval(t.clone()) {
            Some(open) => unions(u, &[open]),
            None => (Unsure, "a tuple against a union of intervals"),
        },
        (Set(a) | Several(a), Set(b) | Several(b)) => sets(a, b, budget),
        (Tuple(t), Several(s)) | (Several(s), Tuple(t)) if s.iter().all(|x| matches!(x, Value(_))) => {
            ordered_against_unordered(t, s, budget)
        }
        (Named(n), Tuple(t) | Several(t)) | (Tuple(t) | Several(t), Named(n)) => {
            let values: Vec<Answer> = n.iter().map(|(_, v)| v.clone()).collect();
            ordered_against_unordered(&values, t, budget)
        }
        (Named(a), Named(b)) => {
            let sorted = |n: &[(String, Answer)]| {
                let mut n = n.to_vec();
                n.sort_by(|x, y| x.0.cmp(&y.0));
                n
            };
            let (a, b) = (sorted(a), sorted(b));
            if a.len() != b.len() || a.iter().zip(&b).any(|(x, y)| x.0 != y.0) {
                return (Unsure, "values of different variables");
            }
            let (a, b): (Vec<_>, Vec<_>) = (a.into_iter().map(|x| x.1).collect(), b.into_iter().map(|x| x.1).collect());
            in_order(&a, &b, budget)
        }
        (single, Set(several) | Several(several)) | (Set(several) | Several(several), single) => {
            one_against_several(single, several, budget)
        }
        _ => (Unsure, "different kinds of answer"),
    }
}

/// Element by element: any element different is a MISMATCH.
fn in_order(a: &[Answer], b: &[Answer], budget: &mut usize) -> (RuleVerdict, &'static str) {
    if a.len() != b.len() {
        return (Mismatch, "different numbers of elements");
    }
    let mut verdict = (Match, "equal elements");
    for (x, y) in a.iter().zip(b) {
        match compare_answers(x, y, budget).0 {
            Match => {}
            Mismatch => return (Mismatch, "different elements"),
            Unsure => verdict = (Unsure, "elements not all decidable"),
        }
    }
    verdict
}

/// Order and repeats do not matter: every element of each side must equal one of the other's.
/// One element that differs from every element of the other side makes a MISMATCH.
fn sets(a: &[Answer], b: &[Answer], budget: &mut usize) -> (RuleVerdict, &'static str) {
    let mut verdict = (Match, "equal sets of answers");
    for (from, to) in [(a, b), (b, a)] {
        for x in from {
            let mut results = to.iter().map(|y| compare_answers(x, y, budget).0);
            let mut all_different = true;
            let mut found = false;
            for r in results.by_ref() {
                match r {
                    Match => {
                        found = true;
                        break;
                    }
                    Unsure => all_different = false,
                    Mismatch => {}
                }
            }
            if !found && all_different {
                return (Mismatch, "an answer the other side does not have");
            }
            if !found {
                verdict = (Unsure, "set elements not all decidable");
            }
        }
    }
    verdict
}

/// A tuple (or named values) against a list of values: equal in order is a MATCH, different
/// elements a MISMATCH, the same elements in another order UNSURE (ordered pair or solutions?).
fn ordered_against_unordered(ordered: &[Answer], list: &[Answer], budget: &mut usize) -> (RuleVerdict, &'static str) {
    if ordered.len() == list.len() && in_order(ordered, list, budget).0 == Match {
        return (Match, "equal elements in the same order");
    }
    match sets(ordered, list, budget).0 {
        Mismatch => (Mismatch, "different elements"),
        _ => (Unsure, "a tuple against a list in another order"),
    }
}

/// One answer against several: the same answer repeated is that answer; several different
/// ones are a MISMATCH when none of them is it, else UNSURE (which one was meant?).
fn one_against_several(single: &Answer, several: &[Answer], budget: &mut usize) -> (RuleVerdict, &'static str) {
    if several.is_empty() {
        return (Mismatch, "an answer against the empty set");
    }
    let verdicts: Vec<RuleVerdict> = several.iter().map(|x| compare_answers(single, x, budget).0).collect();
    if verdicts.iter().all(|v| *v == Match) {
        (Match, "the same answer repeated")
    } else if verdicts.iter().all(|v| *v == Mismatch) {
        (Mismatch, "none of the several answers")
    } else {
        (Unsure, "several different answers, one of them may be it")
    }
}

fn bounds(a: &Bound, b: &Bound) -> RuleVerdict {
    match (a, b) {
        (Bound::Infinity, Bound::Infinity) | (Bound::MinusInfinity, Bound::MinusInfinity) => Match,
        (Bound::Finite(x), Bound::Finite(y)) => compare_values(x, y).0,
        _ => Mismatch,
    }
}

fn intervals(a: &Interval, b: &Interval) -> (RuleVerdict, &'static str) {
    let ends = [bounds(&a.low, &b.low), bounds(&a.high, &b.high)];
    let finite = |bound: &Bound| matches!(bound, Bound::Finite(_));
    let closed_differently =
        (finite(&a.low) && a.low_closed != b.low_closed) || (finite(&a.high) && a.high_closed != b.high_closed);
    if ends.contains(&Mismatch) || closed_differently {
        (Mismatch, "different intervals")
    } else if ends == [Match, Match] {
        (Match, "equal intervals")
    } else {
        (Unsure, "interval ends not all decidable")
    }
}

/// Unions of intervals with numeric ends compare in their merged, sorted form; others only
/// interval by interval in the order written.
fn unions(a: &[Interval], b: &[Interval]) -> (RuleVerdict, &'static str) {
    match (merged(a), merged(b)) {
        (Some(a), Some(b)) => {
            if a.len() != b.len() {
                return (Mismatch, "different unions of intervals");
            }
            let verdicts: Vec<RuleVerdict> = a.iter().zip(&b).map(|(x, y)| intervals(x, y).0).collect();
            if verdicts.contains(&Mismatch) {
                (Mismatch, "different unions of intervals")
            } else if verdicts.iter().all(|v| *v == Match) {
                (Match, "equal unions of intervals")
            } else {
                (Unsure, "union ends not all decidable")
            }
        }
        _ if a.len() == b.len() && a.iter().zip(b).all(|(x, y)| intervals(x, y).0 == Match) => {
            (Match, "equal unions of intervals")
        }
        _ => (Unsure, "unions of intervals with symbolic ends"),
    }
}

/// The union as disjoint intervals in increasing order; `None` when an end is not a number.
fn merged(union: &[Interval]) -> Option<Vec<Interval>> {
    let number = |b: &Bound| match b {
        Bound::MinusInfinity => Some(f64::NEG_INFINITY),
        Bound::Infinity => Some(f64::INFINITY),
        Bound::Finite(v) => v.constant,
    };
    let mut sorted: Vec<(f64, f64, &Interval)> =
        union.iter().map(|i| Some((number(&i.low)?, number(&i.high)?, i))).collect::<Option<_>>()?;
    sorted.sort_by(|x, y| x.0.total_cmp(&y.0).then((!x.2.low_closed).cmp(&!y.2.low_closed)));
    let mut out: Vec<(f64, Interval)> = Vec::new();
    for (low, high, interval) in sorted {
        if let Some((last_high, last)) = out.last_mut() {
            let touching = close(*last_high, low) && (last.high_closed || interval.low_closed);
            if low < *last_high && !close(*last_high, low) || touching {
                if high > *last_high && !close(high, *last_high) {
                    *last_high = high;
                    last.high = interval.high.clone();
                    last.high_closed = interval.high_closed;
                } else if close(high, *last_high) {
                    last.high_closed |= interval.high_closed;
                }
                continue;
            }
        }
        out.push((high, interval.clone()));
    }
    Some(out.into_iter().map(|(_, i)| i).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(v("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "(1,2)"), Match);
        assert_eq!(v("\\langle 1, -2 \\rangle", "(1,-2)"), Match);
        assert_eq!(v("(-\\infty, -2) \\cup (3, \\infty)", "(3,\\infty)\\cup(-\\infty,-2)"), Match);
        assert_eq!(v("(1, 2] \\cup (2, 3)", "(1, 3)"), Match, "merged unions");
        assert_eq!(v("x > 3", "(3, \\infty)"), Match);
        assert_eq!(v("2x + 3y = 6", "4x + 6y - 12 = 0"), Match, "equations with proportional sides");
        assert_eq!(v("-3 < x \\le 3", "(-3, 3]"), Match);
        assert_eq!(v("x < -2 \\text{ or } x > 3", "(-\\infty,-2)\\cup(3,\\infty)"), Match);
    }

    #[test]
    fn wrong_values_mismatch() {
        assert_eq!(v("3", "4"), Mismatch);
        assert_eq!(v("(1,2)", "(1,3)"), Mismatch);
        assert_eq!(v("(1,2]", "[1,2]"), Mismatch);
        assert_eq!(v("(1,2,3)", "(1,2)"), Mismatch);
        assert_eq!(v("x^2+1", "(x+1)^2"), Mismatch);
        assert_eq!(v("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\3\\end{pmatrix}"), Mismatch);
        assert_eq!(v("(-\\infty, 3]", "(-\\infty, 3)"), Mismatch);
        assert_eq!(v("(1, 2) \\cup (2, 3)", "(1, 3)"), Mismatch, "2 is left out");
    }

    #[test]
    fn what_rules_cannot_decide_is_unsure() {
        assert_eq!(v("\\text{Monday}", "\\text{Tuesday}"), Unsure);
        assert_eq!(v("\\frac{1}{3}", "0.33"), Unsure, "a rounding question");
        assert_eq!(v("x + y = 5", "y = 5 - x"), Unsure, "an equation against a formula for y");
        assert_eq!(v("x^2 + y^2 = 4", "x + y = 2"), Unsure, "different equations may share solutions");
        assert_eq!(v("x^2 > 9", "(3, \\infty)"), Unsure, "inequalities other than intervals");
        assert_eq!(v("\\{1, 2\\}", "(1, 2)"), Unsure, "a set against a tuple");
        assert_eq!(v("12 square units", "12"), Unsure);
    }

    #[test]
    fn the_length_limit_is_named_in_its_rule() {
        assert!(TOO_LONG.contains(&MAX_RULE_ANSWER_BYTES.to_string()));
        let long = "1".repeat(MAX_RULE_ANSWER_BYTES + 1);
        assert_eq!(compare(&long, "1"), (Unsure, Cow::Borrowed(TOO_LONG)));
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
