//! Finding the final answer in a model's answer text: the content of the last `\boxed{...}`
//! (or `\fbox{...}`), braces nested to any depth, else the text after the last "answer is" /
//! "Answer:", else a short answer taken whole.

/// Answers longer than this without a box or an "answer is" phrase are not guessed at.
const SHORT_ANSWER_CHARS: usize = 40;

/// The final answer and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub answer: String,
    pub from: &'static str,
}

pub fn extract_final_answer(text: &str) -> Option<Extracted> {
    if let Some(boxed) = last_boxed(text) {
        return Some(Extracted { answer: boxed, from: "boxed" });
    }
    if text.contains("\\boxed") || text.contains("\\fbox") {
        // A box that never closes: the generation was cut off; do not guess.
        return None;
    }
    let lower = text.to_lowercase();
    for marker in ["answer is", "answer:"] {
        if let Some(at) = lower.rfind(marker) {
            // Lowercasing can change byte lengths outside ASCII; fall back to the original
            // text only when the offsets line up.
            if lower.len() == text.len() {
                let rest = text[at + marker.len()..].lines().next().unwrap_or("").trim();
                let rest = rest.trim_end_matches(['.', '!']).trim();
                if !rest.is_empty() {
                    return Some(Extracted { answer: rest.to_string(), from: "answer-phrase" });
                }
            }
        }
    }
    let trimmed = text.trim();
    (!trimmed.is_empty() && trimmed.chars().count() <= SHORT_ANSWER_CHARS)
        .then(|| Extracted { answer: trimmed.to_string(), from: "whole-answer" })
}

/// The content of the last `\boxed{...}` or `\fbox{...}` (also `\boxed 5`).
pub fn last_boxed(text: &str) -> Option<String> {
    let start =
        ["\\boxed", "\\fbox"].iter().filter_map(|m| text.rfind(m).map(|i| (i, m.len()))).max_by_key(|(i, _)| *i)?;
    let rest = &text[start.0 + start.1..];
    let rest_trimmed = rest.trim_start();
    if let Some(inner) = rest_trimmed.strip_prefix('{') {
        return balanced(inner);
    }
    // `\boxed 5`: up to the next space or dollar sign.
    let token: String = rest_trimmed.chars().take_while(|c| !c.is_whitespace() && *c != '$').collect();
    (!token.is_empty() && rest.starts_with(char::is_whitespace)).then_some(token)
}

/// The text up to the brace closing an already opened one; escaped braces do not count.
fn balanced(inner: &str) -> Option<String> {
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
                    return Some(inner[..i].trim().to_string());
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
    fn the_last_box_wins_and_braces_nest() {
        assert_eq!(answer("first \\boxed{1} then \\boxed{\\frac{1}{2}}."), Some("\\frac{1}{2}".into()));
        assert_eq!(answer("so \\fbox{ 7 }"), Some("7".into()));
        assert_eq!(answer("$\\boxed 5$"), Some("5".into()));
        assert_eq!(answer("\\boxed{\\{1, 2\\}}"), Some("\\{1, 2\\}".into()));
        assert_eq!(
            answer("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}"),
            Some("\\left( 3, \\frac{\\pi}{2} \\right)".into())
        );
    }

    #[test]
    fn fallbacks_outside_boxes() {
        assert_eq!(answer("Long reasoning here. So the answer is 42."), Some("42".into()));
        assert_eq!(answer("Answer: $x=3$"), Some("$x=3$".into()));
        assert_eq!(answer("  12  "), Some("12".into()));
        assert_eq!(answer(&"no answer in this long text at all ".repeat(3)), None);
        assert_eq!(answer("\\boxed{unclosed"), None);
    }

    #[test]
    fn hostile_nesting_is_bounded_work() {
        let deep = format!("\\boxed{{{}x{}}}", "{".repeat(10_000), "}".repeat(10_000));
        assert_eq!(answer(&deep).unwrap().len(), 20_001);
    }
}
