//! Where the reasoning is in a chat completion. Servers disagree: newer vLLM puts it in
//! `message.reasoning`, older vLLM, SGLang, NIM and the DeepSeek API in
//! `message.reasoning_content`, and a server without a reasoning parser leaves it inline in
//! `content` as `<think>…</think>answer`. A truncated generation may have `content: null`, or
//! an opened `<think>` that never closes.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Split {
    pub reasoning: Option<String>,
    pub answer: Option<String>,
}

fn text(value: &Value) -> Option<&str> {
    value.as_str().filter(|s| !s.is_empty())
}

/// Splits a chat `message` object into reasoning and answer.
pub fn split_reasoning(message: &Value) -> Split {
    let content = text(&message["content"]);
    if let Some(reasoning) = text(&message["reasoning"]).or_else(|| text(&message["reasoning_content"])) {
        return Split { reasoning: Some(reasoning.to_string()), answer: content.map(str::to_string) };
    }
    let Some(content) = content else { return Split::default() };
    split_think_tags(content)
}

/// Splits `<think>reasoning</think>answer`. Also handles a template that opened `<think>` in
/// the prompt (only `</think>` in the output) and a generation cut off inside the reasoning.
pub fn split_think_tags(content: &str) -> Split {
    let non_empty = |s: &str| {
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_string())
    };
    match (content.find("<think>"), content.find("</think>")) {
        (Some(open), Some(close)) if open < close => Split {
            reasoning: non_empty(&content[open + "<think>".len()..close]),
            answer: non_empty(&content[close + "</think>".len()..]),
        },
        (None, Some(close)) => {
            Split { reasoning: non_empty(&content[..close]), answer: non_empty(&content[close + "</think>".len()..]) }
        }
        (Some(open), None) => Split { reasoning: non_empty(&content[open + "<think>".len()..]), answer: None },
        _ => Split { reasoning: None, answer: non_empty(content) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn split(message: Value) -> (Option<String>, Option<String>) {
        let s = split_reasoning(&message);
        (s.reasoning, s.answer)
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn all_three_server_styles() {
        assert_eq!(split(json!({"reasoning": "r", "content": "a"})), (some("r"), some("a")));
        assert_eq!(split(json!({"reasoning_content": "r", "content": "a"})), (some("r"), some("a")));
        assert_eq!(split(json!({"content": "<think>\nr\n</think>\n\na"})), (some("r"), some("a")));
        assert_eq!(split(json!({"reasoning": null, "reasoning_content": "r", "content": "a"})), (some("r"), some("a")));
    }

    #[test]
    fn truncated_and_unusual_shapes() {
        assert_eq!(split(json!({"reasoning": "r", "content": null})), (some("r"), None));
        assert_eq!(split(json!({"content": "<think>cut off mid-thought"})), (some("cut off mid-thought"), None));
        assert_eq!(
            split(json!({"content": "opened by the template</think>a"})),
            (some("opened by the template"), some("a"))
        );
        assert_eq!(split(json!({"content": "just an answer"})), (None, some("just an answer")));
        assert_eq!(split(json!({"content": null})), (None, None));
        assert_eq!(split(json!({})), (None, None));
    }
}
