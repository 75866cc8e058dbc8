//! `distillery bench judge`: the rule verifier against Hugging Face's math-verify on labelled
//! MATH-500 answer pairs.

use super::run_python;
use distillery_judge::verify::{verify, RuleVerdict};
use std::path::Path;
use std::time::Instant;

struct Pair {
    gold: String,
    answer: String,
    equivalent: bool,
}

/// Each gold answer against two equivalent rewrites and two wrong values (another problem's
/// answer, and for numbers the value plus one).
fn labelled_pairs(golds: &[String]) -> Vec<Pair> {
    let mut pairs = Vec::new();
    for (i, gold) in golds.iter().enumerate() {
        pairs.push(Pair {
            gold: gold.clone(),
            answer: format!("So the answer is $\\boxed{{{gold}}}$."),
            equivalent: true,
        });
        let restyled = gold.replace("\\frac", "\\dfrac").replace(',', ", ");
        pairs.push(Pair {
            gold: gold.clone(),
            answer: format!("Final answer: $\\boxed{{ {restyled} }}$"),
            equivalent: true,
        });
        let other = &golds[(i + 7) % golds.len()];
        if other != gold {
            pairs.push(Pair { gold: gold.clone(), answer: format!("$\\boxed{{{other}}}$"), equivalent: false });
        }
        if let Ok(n) = gold.parse::<i64>() {
            pairs.push(Pair { gold: gold.clone(), answer: format!("$\\boxed{{{}}}$", n + 1), equivalent: false });
        }
    }
    pairs
}

pub fn run(math500: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(math500).map_err(|e| anyhow::anyhow!("{}: {e}", math500.display()))?;
    let golds: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str::<serde_json::Value>(l)?["answer"].as_str().unwrap_or_default().to_string()))
        .collect::<anyhow::Result<_>>()?;
    let pairs = labelled_pairs(&golds);

    // Ours, repeated until the clock has something to measure.
    let mut rounds = 0;
    let started = Instant::now();
    let mut verdicts = Vec::new();
    while rounds == 0 || started.elapsed().as_secs_f64() < 1.0 {
        verdicts = pairs.iter().map(|p| verify(Some(&p.answer), &p.gold).verdict).collect();
        rounds += 1;
    }
    let ours_rate = (rounds * pairs.len()) as f64 / started.elapsed().as_secs_f64();
    let decided = verdicts.iter().filter(|v| **v != RuleVerdict::Unsure).count();
    let agree = verdicts
        .iter()
        .zip(&pairs)
        .filter(|(v, p)| (**v == RuleVerdict::Match) == p.equivalent && **v != RuleVerdict::Unsure)
        .count();
    let false_match = verdicts.iter().zip(&pairs).filter(|(v, p)| **v == RuleVerdict::Match && !p.equivalent).count();

    let file = tempfile::NamedTempFile::new()?;
    let lines: Vec<String> = pairs
        .iter()
        .map(|p| serde_json::json!({"gold": p.gold, "answer": p.answer, "equivalent": p.equivalent}).to_string())
        .collect();
    std::fs::write(file.path(), lines.join("\n"))?;
    let baseline =
        run_python(include_str!("../../bench/math_verify_baseline.py"), &[file.path().display().to_string()])?;
    let their_rate = baseline["pairs"].as_f64().unwrap_or(0.0) / baseline["seconds"].as_f64().unwrap_or(f64::NAN);
    let their_agree = baseline["agree"].as_u64().unwrap_or(0);
    let their_false = baseline["false_match"].as_u64().unwrap_or(0);

    let n = pairs.len();
    let pct = |x: usize| 100.0 * x as f64 / n as f64;
    println!(
        "distillery bench judge: {n} labelled MATH-500 answer pairs ({} equivalent, {} wrong) from {}",
        pairs.iter().filter(|p| p.equivalent).count(),
        pairs.iter().filter(|p| !p.equivalent).count(),
        math500.display()
    );
    println!("{:<44} {:>12} {:>22} {:>12} {:>12}", "", "answers/s", "agree with label", "false MATCH", "decided");
    println!(
        "{:<44} {:>12.0} {:>15} ({:>4.1}%) {:>12} {:>11}%",
        "baseline: math-verify (Python, sympy)",
        their_rate,
        their_agree,
        pct(their_agree as usize),
        their_false,
        100
    );
    println!(
        "{:<44} {:>12.0} {:>15} ({:>4.1}%) {:>12} {:>11.1}%",
        "distillery rule verifier",
        ours_rate,
        agree,
        pct(agree),
        false_match,
        pct(decided)
    );
    println!(
        "ratio distillery / math-verify: {:.0}x; {:.1}% decided without the LLM judge (the rest goes to it)",
        ours_rate / their_rate,
        pct(decided)
    );
    Ok(())
}
