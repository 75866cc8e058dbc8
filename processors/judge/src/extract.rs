//! Finding the final answer in a model's answer text (after a `</think>` if there is one): the
//! contents of its `\boxed{...}` (or `\fbox{...}`), braces nested to any depth; else the math
//! after the last "final answer is" / "answer is" / "Answer:" / "####"; else a short answer
//! taken whole.
//!
//! Several different boxes are several answers (`\boxed{2}` and `\boxed{3}` for two roots):
//! they are joined with `; `, which the answer parser reads as a list, so the verifier compares
//! all of them. The same box repeated counts once.

/// Answers longer than this without a box or an "answer is" phrase are not guessed at.
const SHORT_ANSWER_CHARS: usize = 40;

/// Separates the contents of several boxes in [`Extracted::answer`].
pub const BOX_SEPARATOR: &str = "; ";

/// The final answer and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub answer: String,
    pub from: &'static str,
}

pub fn extract_final_answer(text: &str) -> Option<Extracted> {
    // A reasoning model without a reasoning parser: only what follows the reasoning counts.
    let text = text.rfind("</think>").map_or(text, |at| &text[at + "</think>".len()..]);
    match boxes(text) {
        Boxes::CutOff => return None,
        Boxes::Found(found) if !found.is_empty() => {
            let mut distinct: Vec<&str> = Vec::new();
            for b in &found {
                if !distinct.contains(&b.as_str()) {
                    distinct.push(b);
                }
            }
            let from = if distinct.len() == 1 { "boxed" } else { "several boxes" };
            return Some(Extracted { answer: distinct.join(BOX_SEPARATOR), from });
        }
        Boxes::Found(_) => {}
    }
    if let Some(answer) = after_answer_phrase(text) {
        return Some(Extracted { answer, from: "answer-phrase" });
    }
    let trimmed = text.trim();
    (!trimmed.is_empty() && trimmed.chars().count() <= SHORT_ANSWER_CHARS)
        .then(|| Extracted { answer: trimmed.to_string(), from: "whole-answer" })
}

/// The math after the last answer phrase: a `$...$` span if the rest of the line starts with
/// one, else the rest of the line up to the end of its sentence.
fn after_answer_phrase(text: &str) -> Option<String> {
    // ASCII lowercasing keeps byte offsets, so they index the original text.
    let lower = text.to_ascii_lowercase();
    let (at, marker) = ["final answer is", "final answer:", "answer is", "answer:", "####"]
        .iter()
        .filter_map(|m| lower.rfind(m).map(|at| (at, m.len())))
        .max_by_key(|(at, _)| *at)?;
    let line = text[at + marker..].lines().next().unwrap_or("");
    let rest = line.trim_start_matches([' ', ':', '*', '\t']).trim();
    let answer = if let Some(math) = rest.strip_prefix('$') {
        let math = math.strip_prefix('$').unwrap_or(math);
        math.find('$').map_or(math, |end| &math[..end])
    } else {
        let sentence = rest.find(". ").map_or(rest, |end| &rest[..end]);
        sentence.trim_end_matches(['.', '!', '*']).trim()
    };
    let answer = answer.trim();
    (!answer.is_empty()).then(|| answer.to_string())
}

enum Boxes {
    /// Every box's content, in order.
    Found(Vec<String>),
    /// A box that never closes: the generation was cut off; do not guess.
    CutOff,
}

/// The boxes of a text in one pass: a box inside another is part of the outer one's content.
fn boxes(text: &str) -> Boxes {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('\\') {
        let tail = &rest[at..];
        let Some(command) = ["\\boxed", "\\fbox"].into_iter().find(|m| tail.starts_with(m)) else {
            rest = &tail[1..];
            continue;
        };
        let after = &tail[command.len()..];
        let trimmed = after.trim_start();
        if let Some(inner) = trimmed.strip_prefix('{') {
            let Some(len) = balanced(inner) else { return Boxes::CutOff };
            found.push(inner[..len].trim().to_string());
            rest = &inner[len + 1..];
        } else {
            // `\boxed 5`: up to the next space or dollar sign.
            let token: String = trimmed.chars().take_while(|c| !c.is_whitespace() && *c != '$').collect();
            if !token.is_empty() && after.starts_with(char::is_whitespace) {
                found.push(token);
            }
            rest = after;
        }
    }
    Boxes::Found(found)
}

/// The content of the last `\boxed{...}` or `\fbox{...}` (also `\boxed 5`).
pub fn last_boxed(text: &str) -> Option<String> {
    match boxes(text) {
        Boxes::Found(mut found) => found.pop(),
        Boxes::CutOff => None,
    }
}

/// The length of the text up to the brace closing an already opened one; escaped braces do
/// not count.
fn balanced(inner: &str) -> Option<usize> {
    let mut depth = 1usize;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(text: &str) -> Option<String> {
        extract_final_answer(text).map(|e| e.answer)
    }

    #[test]
    fn boxes_nest_and_several_different_boxes_are_all_kept() {
        assert_eq!(answer("so \\fbox{ 7 }"), Some("7".into()));
        assert_eq!(answer("$\\boxed 5$"), Some("5".into()));
        assert_eq!(answer("\\boxed{\\{1, 2\\}}"), Some("\\{1, 2\\}".into()));
        assert_eq!(
            answer("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}"),
            Some("\\left( 3, \\frac{\\pi}{2} \\right)".into())
        );
        assert_eq!(answer("first \\boxed{1} then \\boxed{\\frac{1}{2}}."), Some("1; \\frac{1}{2}".into()));
        assert_eq!(answer("\\boxed{4} so again \\boxed{4}"), Some("4".into()), "a repeated box counts once");
        assert_eq!(answer("\\boxed{\\boxed{3}}"), Some("\\boxed{3}".into()), "a box inside a box is content");
        assert_eq!(extract_final_answer("\\boxed{2} and \\boxed{3}").unwrap().from, "several boxes");
    }

    #[test]
    fn only_what_follows_the_reasoning_counts() {
        assert_eq!(answer("<think>maybe \\boxed{3}</think>It is \\boxed{4}."), Some("4".into()));
        assert_eq!(answer("reasoning \\boxed{3}</think>5"), Some("5".into()));
    }

    #[test]
    fn fallbacks_outside_boxes() {
        assert_eq!(answer("Long reasoning here. So the answer is 42."), Some("42".into()));
        assert_eq!(answer("Answer: $x=3$"), Some("x=3".into()));
        assert_eq!(
            answer("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct."),
            Some("\\frac{1}{2}".into())
        );
        assert_eq!(answer("She pays 5 + 7 = 12 dollars.\n#### 12"), Some("12".into()));
        assert_eq!(answer("**Answer:** 3.5."), Some("3.5".into()));
        assert_eq!(answer("  12  "), Some("12".into()));
        assert_eq!(answer(&"no answer in this long text at all ".repeat(3)), None);
        assert_eq!(answer("\\boxed{unclosed"), None);
        assert_eq!(answer("\\boxed{1} and then \\boxed{unclosed"), None);
    }

    #[test]
    fn hostile_nesting_is_bounded_work() {
        let deep = format!("\\boxed{{{}x{}}}", "{".repeat(10_000), "}".repeat(10_000));
        assert_eq!(answer(&deep).unwrap().len(), 20_001);
        // Boxes nested in boxes: one pass, not one scan per box.
        let nested = format!("{}1{}", "\\boxed{".repeat(50_000), "}".repeat(50_000));
        let started = std::time::Instant::now();
        assert!(answer(&nested).is_some());
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
