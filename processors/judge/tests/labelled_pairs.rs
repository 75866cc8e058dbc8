//! The verifier on the project's own labelled answer pairs (`tests/data/labelled_pairs.jsonl`,
//! whole model-style responses of every shape in issue 16, with near misses; see
//! `tests/data/README.md`): it makes no wrong decision, and decides most pairs without the
//! LLM judge.

use distillery_judge::verify::{verify, RuleVerdict};
use std::collections::BTreeMap;
use std::path::PathBuf;

struct Pair {
    shape: String,
    gold: String,
    answer: String,
    equivalent: bool,
}

fn labelled_pairs() -> Vec<Pair> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/labelled_pairs.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            Pair {
                shape: v["shape"].as_str().unwrap().to_string(),
                gold: v["gold"].as_str().unwrap().to_string(),
                answer: v["answer"].as_str().unwrap().to_string(),
                equivalent: v["equivalent"].as_bool().unwrap(),
            }
        })
        .collect()
}

#[test]
fn the_set_has_every_shape_with_equivalent_pairs_and_near_misses() {
    let pairs = labelled_pairs();
    assert!(pairs.len() >= 300, "{} pairs", pairs.len());
    let mut by_shape: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for p in &pairs {
        let counts = by_shape.entry(&p.shape).or_default();
        if p.equivalent {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }
    for shape in
        ["assignment", "several answers", "mixed number", "rounded decimal", "list order", "comma", "interval", "tuple"]
    {
        let (equivalent, not) = by_shape.get(shape).copied().unwrap_or_default();
        assert!(equivalent >= 5 && not >= 5, "{shape}: {equivalent} equivalent, {not} not");
    }
}

#[test]
fn no_wrong_decisions_and_most_pairs_decided() {
    let pairs = labelled_pairs();
    let (mut decided, mut wrong) = (0, Vec::new());
    let mut by_shape: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for p in &pairs {
        let decision = verify(Some(&p.answer), &p.gold);
        let counts = by_shape.entry(&p.shape).or_default();
        counts.0 += 1;
        if decision.verdict == RuleVerdict::Unsure {
            continue;
        }
        decided += 1;
        counts.1 += 1;
        if (decision.verdict == RuleVerdict::Match) != p.equivalent {
            wrong.push(format!(
                "[{}] {:?} for gold {:?}, extracted {:?} ({}), labelled {}",
                p.shape,
                decision.verdict,
                p.gold,
                decision.extracted,
                decision.rule,
                if p.equivalent { "equivalent" } else { "not equivalent" }
            ));
        }
    }
    for (shape, (total, decided)) in &by_shape {
        eprintln!("{shape:<16} {decided:>3}/{total:<3} decided");
    }
    let share = decided as f64 / pairs.len() as f64;
    eprintln!("{decided}/{} decided ({:.1}%), {} wrong", pairs.len(), 100.0 * share, wrong.len());
    assert!(wrong.is_empty(), "wrong decisions:\n{}", wrong.join("\n"));
    assert!(share >= 0.80, "only {:.1}% decided without the LLM judge", 100.0 * share);
}
