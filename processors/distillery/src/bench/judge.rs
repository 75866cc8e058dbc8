//! `distillery bench judge`: the rule verifier beside Hugging Face's math-verify on two
//! labelled sets of answer pairs: the judge's own model-style responses (every answer shape
//! of issue 16, with near misses; `processors/judge/tests/data/labelled_pairs.jsonl`) and
//! MATH-500 gold answers against rewrites and wrong values. For each: the share the verifier
//! decides, its wrong decisions (false MATCH, false MISMATCH), and answers/s; math-verify's
//! right and wrong decisions (it decides every pair) and answers/s. Rates are per CPU-second.

use super::run_python;
use distillery_judge::verify::{verify, RuleVerdict};
use std::collections::BTreeMap;
use std::path::Path;

struct Pair {
    shape: String,
    gold: String,
    /// The whole response, as a model writes it.
    answer: String,
    equivalent: bool,
}

/// The rule verifier's verdicts on one set, and its speed.
struct Ours {
    verdicts: Vec<RuleVerdict>,
    answers_per_second: f64,
}

/// math-verify's verdicts (true: equivalent) on the same set, and its speed.
struct Theirs {
    verdicts: Vec<bool>,
    answers_per_second: f64,
}

pub fn run(math500: &Path, labelled: &Path) -> anyhow::Result<()> {
    let sets = [
        (format!("labelled model-style responses ({})", labelled.display()), labelled_pairs(labelled)?),
        (format!("MATH-500 gold answers, rewritten and wrong ({})", math500.display()), gold_rewrites(math500)?),
    ];
    println!(
        "distillery bench judge: the rule verifier beside math-verify (parse + verify, defaults) on the same pairs"
    );
    for (name, pairs) in &sets {
        anyhow::ensure!(!pairs.is_empty(), "no pairs in {name}");
        let ours = measure_ours(pairs);
        let theirs = measure_math_verify(pairs)?;
        print_set(name, pairs, &ours, &theirs);
        if pairs.iter().any(|p| !p.shape.is_empty()) {
            print_shapes(pairs, &ours, &theirs);
        }
    }
    Ok(())
}

fn labelled_pairs(path: &Path) -> anyhow::Result<Vec<Pair>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let field = |v: &serde_json::Value, name: &str| v[name].as_str().unwrap_or_default().to_string();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            let equivalent = v["equivalent"]
                .as_bool()
                .ok_or_else(|| anyhow::anyhow!("{}: a pair without a label", path.display()))?;
            Ok(Pair { shape: field(&v, "shape"), gold: field(&v, "gold"), answer: field(&v, "answer"), equivalent })
        })
        .collect()
}

/// Each MATH-500 gold answer against two equivalent rewrites and two wrong values (another
/// problem's answer, and for numbers the value plus one).
fn gold_rewrites(math500: &Path) -> anyhow::Result<Vec<Pair>> {
    let text = std::fs::read_to_string(math500).map_err(|e| anyhow::anyhow!("{}: {e}", math500.display()))?;
    let golds: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str::<serde_json::Value>(l)?["answer"].as_str().unwrap_or_default().to_string()))
        .collect::<anyhow::Result<_>>()?;
    let pair = |gold: &String, answer: String, equivalent| Pair {
        shape: String::new(),
        gold: gold.clone(),
        answer,
        equivalent,
    };
    let mut pairs = Vec::new();
    for (i, gold) in golds.iter().enumerate() {
        pairs.push(pair(gold, format!("So the answer is $\\boxed{{{gold}}}$."), true));
        let restyled = gold.replace("\\frac", "\\dfrac").replace(',', ", ");
        pairs.push(pair(gold, format!("Final answer: $\\boxed{{ {restyled} }}$"), true));
        let other = &golds[(i + 7) % golds.len()];
        if other != gold {
            pairs.push(pair(gold, format!("$\\boxed{{{other}}}$"), false));
        }
        if let Ok(n) = gold.parse::<i64>() {
            pairs.push(pair(gold, format!("$\\boxed{{{}}}$", n + 1), false));
        }
    }
    Ok(pairs)
}

/// Verifies every whole response, repeated until the clock has something to measure.
fn measure_ours(pairs: &[Pair]) -> Ours {
    let (mut rounds, mut verdicts) = (0, Vec::new());
    let started = thread_cpu_seconds();
    while rounds == 0 || thread_cpu_seconds() - started < 1.0 {
        verdicts = pairs.iter().map(|p| verify(Some(&p.answer), &p.gold).verdict).collect();
        rounds += 1;
    }
    Ours { verdicts, answers_per_second: (rounds * pairs.len()) as f64 / (thread_cpu_seconds() - started) }
}

/// CPU time this thread has used. Both sides' rates are per CPU-second (math-verify's from
/// Python's `time.process_time()`), so other processes on a shared machine do not change them.
fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec it is given, which outlives the call.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

fn measure_math_verify(pairs: &[Pair]) -> anyhow::Result<Theirs> {
    let file = tempfile::NamedTempFile::new()?;
    let lines: Vec<String> =
        pairs.iter().map(|p| serde_json::json!({"gold": p.gold, "answer": p.answer}).to_string()).collect();
    std::fs::write(file.path(), lines.join("\n"))?;
    let out = run_python(include_str!("../../bench/math_verify_baseline.py"), &[file.path().display().to_string()])?;
    let verdicts: Vec<bool> = out["verdicts"]
        .as_array()
        .map(|v| v.iter().map(|x| x.as_bool().unwrap_or(false)).collect())
        .unwrap_or_default();
    anyhow::ensure!(verdicts.len() == pairs.len(), "math-verify judged {} of {} pairs", verdicts.len(), pairs.len());
    let seconds = out["seconds"].as_f64().unwrap_or(f64::NAN);
    Ok(Theirs { verdicts, answers_per_second: pairs.len() as f64 / seconds })
}

/// Decided, false MATCH and false MISMATCH counts of the rule verifier over `indices`.
fn our_counts(pairs: &[Pair], ours: &Ours, indices: &[usize]) -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
    for &i in indices {
        match (ours.verdicts[i], pairs[i].equivalent) {
            (RuleVerdict::Unsure, _) => continue,
            (RuleVerdict::Match, false) => counts.1 += 1,
            (RuleVerdict::Mismatch, true) => counts.2 += 1,
            _ => {}
        }
        counts.0 += 1;
    }
    counts
}

/// Right, false MATCH and false MISMATCH counts of math-verify over `indices`.
fn their_counts(pairs: &[Pair], theirs: &Theirs, indices: &[usize]) -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
    for &i in indices {
        match (theirs.verdicts[i], pairs[i].equivalent) {
            (true, false) => counts.1 += 1,
            (false, true) => counts.2 += 1,
            _ => counts.0 += 1,
        }
    }
    counts
}

fn print_set(name: &str, pairs: &[Pair], ours: &Ours, theirs: &Theirs) {
    let n = pairs.len();
    let all: Vec<usize> = (0..n).collect();
    let pct = |x: usize| 100.0 * x as f64 / n as f64;
    let equivalent = pairs.iter().filter(|p| p.equivalent).count();
    println!("\n{n} pairs, {name}: {equivalent} equivalent, {} not", n - equivalent);
    println!(
        "{:<40} {:>15} {:>9} {:>8} {:>12} {:>15} {:>10}",
        "", "answers/s (CPU)", "decided", "right", "false MATCH", "false MISMATCH", "to LLM"
    );
    let (right, false_match, false_mismatch) = their_counts(pairs, theirs, &all);
    println!(
        "{:<40} {:>15.0} {:>8.1}% {:>7.1}% {:>12} {:>15} {:>10}",
        "baseline: math-verify (Python, sympy)",
        theirs.answers_per_second,
        100.0,
        pct(right),
        false_match,
        false_mismatch,
        0
    );
    let (decided, our_false_match, our_false_mismatch) = our_counts(pairs, ours, &all);
    let our_wrong = our_false_match + our_false_mismatch;
    println!(
        "{:<40} {:>15.0} {:>8.1}% {:>7.1}% {:>12} {:>15} {:>10}",
        "distillery rule verifier",
        ours.answers_per_second,
        pct(decided),
        pct(decided - our_wrong),
        our_false_match,
        our_false_mismatch,
        n - decided
    );
    println!(
        "ratio distillery / math-verify: {:.0}x answers/s; wrong decisions: distillery {our_wrong} ({:.2}% of pairs), math-verify {} ({:.2}%)",
        ours.answers_per_second / theirs.answers_per_second,
        pct(our_wrong),
        false_match + false_mismatch,
        pct(false_match + false_mismatch)
    );
}

fn print_shapes(pairs: &[Pair], ours: &Ours, theirs: &Theirs) {
    let mut by_shape: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in pairs.iter().enumerate() {
        by_shape.entry(&p.shape).or_default().push(i);
    }
    println!(
        "{:<18} {:>6} {:>20} {:>17} {:>18}",
        "by shape", "pairs", "distillery decided", "distillery wrong", "math-verify right"
    );
    for (shape, indices) in &by_shape {
        let n = indices.len();
        let (decided, false_match, false_mismatch) = our_counts(pairs, ours, indices);
        let (right, _, _) = their_counts(pairs, theirs, indices);
        println!(
            "{shape:<18} {n:>6} {:>19.0}% {:>17} {:>17.0}%",
            100.0 * decided as f64 / n as f64,
            false_match + false_mismatch,
            100.0 * right as f64 / n as f64
        );
    }
}
