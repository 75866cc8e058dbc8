//! The benchmark metrics, from scored samples: pass@k (unbiased estimator), majority@k,
//! average generated tokens and the share of truncated generations.

use distillery_judge::verify::{compare, RuleVerdict};

/// One scored generation.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredSample {
    /// The final answer found in the generation, if any.
    pub extracted: Option<String>,
    /// The rule verifier said MATCH against the ground truth, or it was UNSURE and the LLM
    /// judge (`llm_judge`) said MATCH. Everything else is not correct.
    pub correct: bool,
    /// Completion tokens, reasoning included.
    pub completion_tokens: u64,
    /// Stopped at max_tokens.
    pub truncated: bool,
}

/// The metrics of one benchmark run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkMetrics {
    pub problems: usize,
    pub samples_per_problem: usize,
    /// Element k-1 is pass@k, k = 1..n.
    pub pass_at_k: Vec<f64>,
    /// Element k-1 is maj@k, k = 1..n.
    pub majority_at_k: Vec<f64>,
    pub avg_generated_tokens: f64,
    pub truncated_share: f64,
}

/// pass@k of one problem with `c` correct samples out of `n`: the probability that at least
/// one of k samples drawn without replacement is correct, 1 − C(n−c, k) / C(n, k). Computed as
/// the product 1 − Π_{i=n−c+1}^{n} (1 − k/i) (the Codex paper's stable form: no factorials,
/// no overflow); 1 when n − c < k (every draw of k contains a correct sample).
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(k >= 1 && k <= n && c <= n, "pass@k needs 1 <= k <= n and c <= n (n={n}, c={c}, k={k})");
    if n - c < k {
        return 1.0;
    }
    let all_wrong: f64 = (n - c + 1..=n).map(|i| 1.0 - k as f64 / i as f64).product();
    1.0 - all_wrong
}

/// Whether majority voting over the first `k` samples gives a correct answer.
///
/// Samples without an extracted answer do not vote. Answers are grouped by equivalence (the
/// verifier's `compare` says MATCH: `0.5` and `\frac{1}{2}` are one vote), each joining the
/// first group it matches in sample order. The group with the most votes wins; a tie goes to
/// the group whose first member came first (deterministic, and independent of how the
/// answers are spelled). The vote is correct when the winning group's first sample is
/// correct; no answer at all is not correct.
pub fn majority_correct(samples: &[ScoredSample], k: usize) -> bool {
    // (representative answer, votes, whether the representative is correct), in first-seen order.
    let mut groups: Vec<(&str, usize, bool)> = Vec::new();
    for sample in samples.iter().take(k) {
        let Some(answer) = sample.extracted.as_deref() else { continue };
        match groups.iter_mut().find(|(rep, _, _)| equivalent(rep, answer)) {
            Some(group) => group.1 += 1,
            None => groups.push((answer, 1, sample.correct)),
        }
    }
    // max_by_key keeps the last maximum; iterate in reverse so the earliest group wins ties.
    groups.iter().rev().max_by_key(|(_, votes, _)| *votes).is_some_and(|(_, _, correct)| *correct)
}

fn equivalent(a: &str, b: &str) -> bool {
    a == b || compare(a, b).0 == RuleVerdict::Match
}

/// The metrics over problems, each with its samples in generation order (sample j used seed
/// + j). Every problem must have the same number of samples.
pub fn summarise(problems: &[Vec<ScoredSample>]) -> BenchmarkMetrics {
    let n = problems.first().map_or(0, Vec::len);
    assert!(problems.iter().all(|p| p.len() == n), "every problem has samples_per_problem samples");
    let count = problems.len() as f64;
    let mean = |f: &dyn Fn(&[ScoredSample]) -> f64| {
        if problems.is_empty() {
            0.0
        } else {
            problems.iter().map(|p| f(p)).sum::<f64>() / count
        }
    };
    let pass_at_k =
        (1..=n).map(|k| mean(&|p: &[ScoredSample]| pass_at_k(n, p.iter().filter(|s| s.correct).count(), k))).collect();
    let majority_at_k =
        (1..=n).map(|k| mean(&|p: &[ScoredSample]| if majority_correct(p, k) { 1.0 } else { 0.0 })).collect();
    let avg_generated_tokens =
        mean(&|p: &[ScoredSample]| p.iter().map(|s| s.completion_tokens as f64).sum::<f64>() / n as f64);
    let truncated_share = mean(&|p: &[ScoredSample]| p.iter().filter(|s| s.truncated).count() as f64 / n as f64);
    BenchmarkMetrics {
        problems: problems.len(),
        samples_per_problem: n,
        pass_at_k,
        majority_at_k,
        avg_generated_tokens,
        truncated_share,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    fn sample(answer: Option<&str>, correct: bool) -> ScoredSample {
        ScoredSample { extracted: answer.map(str::to_string), correct, completion_tokens: 10, truncated: false }
    }

    #[test]
    fn pass_at_k_matches_hand_computed_binomials() {
        // c = 0: never.
        for k in 1..=8 {
            assert_eq!(pass_at_k(8, 0, k), 0.0);
        }
        // c = n: always.
        for k in 1..=8 {
            assert_eq!(pass_at_k(8, 8, k), 1.0);
        }
        // pass@1 is the share of correct samples.
        assert!(close(pass_at_k(8, 3, 1), 3.0 / 8.0));
        // n=8, c=3, k=2: 1 - C(5,2)/C(8,2) = 1 - 10/28.
        assert!(close(pass_at_k(8, 3, 2), 1.0 - 10.0 / 28.0));
        // n=8, c=3, k=5: 1 - C(5,5)/C(8,5) = 1 - 1/56.
        assert!(close(pass_at_k(8, 3, 5), 1.0 - 1.0 / 56.0));
        // n - c < k: 5 wrong cannot fill 6 draws.
        assert_eq!(pass_at_k(8, 3, 6), 1.0);
        assert_eq!(pass_at_k(8, 1, 8), 1.0);
        // n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6.
        assert!(close(pass_at_k(4, 1, 2), 0.5));
        // pass@n with n samples is "any correct".
        assert_eq!(pass_at_k(8, 1, 8), 1.0);
        assert_eq!(pass_at_k(1, 0, 1), 0.0);
        // Large n stays finite and exact enough: n=1000, c=1, k=1 is 1/1000.
        assert!(close(pass_at_k(1000, 1, 1), 0.001));
        assert!(close(
            pass_at_k(1000, 10, 100),
            1.0 - (0..10).map(|i| (900.0 - i as f64) / (1000.0 - i as f64)).product::<f64>()
        ));
    }

    #[test]
    fn majority_votes_group_equivalent_answers_and_break_ties_by_first_seen() {
        let s = [
            sample(Some("5"), false),
            sample(Some("\\frac{1}{2}"), true),
            sample(Some("0.5"), true),
            sample(None, false),
            sample(Some("5"), false),
            sample(Some("5"), false),
        ];
        // k=1: only "5" -> wrong.
        assert!(!majority_correct(&s, 1));
        // k=2: 5 vs 1/2, one vote each: tie to the first seen ("5") -> wrong.
        assert!(!majority_correct(&s, 2));
        // k=3: 1/2 and 0.5 are one answer with two votes -> right.
        assert!(majority_correct(&s, 3));
        // k=4: the sample without an answer does not vote.
        assert!(majority_correct(&s, 4));
        // k=5: 2-2 tie, "5" came first -> wrong.
        assert!(!majority_correct(&s, 5));
        assert!(!majority_correct(&s, 6));
        // No answers at all: wrong.
        assert!(!majority_correct(&[sample(None, false), sample(None, false)], 2));
    }

    #[test]
    fn summary_averages_over_problems() {
        let mut a = vec![sample(Some("1"), true), sample(Some("2"), false)];
        a[0].completion_tokens = 100;
        a[1].completion_tokens = 300;
        a[1].truncated = true;
        let b = vec![sample(Some("7"), false), sample(Some("7"), false)];
        let m = summarise(&[a, b]);
        assert_eq!((m.problems, m.samples_per_problem), (2, 2));
        assert_eq!(m.pass_at_k, vec![0.25, 0.5]);
        // maj@1: problem a right, b wrong; maj@2: a ties 1-1 -> first ("1", right).
        assert_eq!(m.majority_at_k, vec![0.5, 0.5]);
        // (mean(100, 300) + mean(10, 10)) / 2
        assert_eq!(m.avg_generated_tokens, 105.0);
        assert_eq!(m.truncated_share, 0.25);
    }
}
