//! The LLM judge: the system prompt verbatim, the ground truth in `<CORRECT_ANSWER>` and the
//! sample's full answer in `<GENERATED_ANSWER>`; the verdict is the last MATCH or MISMATCH in
//! the reply.

use crate::config::JudgeSettings;
use distillery_openai::{ChatClient, ChatRequest, LlmError};
use distillery_schemas::Verdict;

/// The user message for one judgement.
pub fn judge_message(expected: &str, answer: &str) -> String {
    format!("<CORRECT_ANSWER>\n{expected}\n</CORRECT_ANSWER>\n\n<GENERATED_ANSWER>\n{answer}\n</GENERATED_ANSWER>")
}

/// The verdict of a reply (the judge's answer, never its reasoning). The paper's prompt asks
/// for **MATCH** or **MISMATCH** in bold, so the last bold verdict wins: a reply that weighs
/// both words while it reasons ("a **MATCH** would need..., so: **MISMATCH**") or names the
/// other one after its verdict ("**MATCH** (not a MISMATCH: ...)") is read by its bold word.
/// Without a bold verdict, the last of the two words counts.
pub fn parse_verdict(reply: &str) -> Option<Verdict> {
    last_bold_verdict(reply).or_else(|| last_verdict_word(reply))
}

/// The last `**MATCH**` / `**MISMATCH**` (spaces and punctuation inside the stars allowed).
fn last_bold_verdict(reply: &str) -> Option<Verdict> {
    // Splitting on "**" puts every bold span at an odd index.
    reply
        .split("**")
        .skip(1)
        .step_by(2)
        .filter_map(|span| match span.trim_matches(|c: char| !c.is_alphanumeric()) {
            "MATCH" => Some(Verdict::Match),
            "MISMATCH" => Some(Verdict::Mismatch),
            _ => None,
        })
        .last()
}

/// The last verdict word anywhere in the reply. "MISMATCH" contains "MATCH", so a MATCH only
/// counts when it is not the tail of a MISMATCH.
fn last_verdict_word(reply: &str) -> Option<Verdict> {
    let last_mismatch = reply.rfind("MISMATCH");
    // `ends_with` on the text before the match, not a byte slice `[i - 3..i]`: that slice
    // panicked when a multi-byte character sat there ("€xxMATCH").
    let last_match = reply.match_indices("MATCH").map(|(i, _)| i).filter(|&i| !reply[..i].ends_with("MIS")).last();
    match (last_match, last_mismatch) {
        (Some(m), Some(x)) => Some(if m > x { Verdict::Match } else { Verdict::Mismatch }),
        (Some(_), None) => Some(Verdict::Match),
        (None, Some(_)) => Some(Verdict::Mismatch),
        (None, None) => None,
    }
}

/// The LLM judge: a client of the judge model's servers with the judge's settings (model,
/// system prompt, sampling, verdict attempts). The judge processor asks it about what the rule
/// verifier leaves UNSURE; the evaluator asks it the same way when it has an `llm_judge`.
pub struct LlmJudge {
    client: ChatClient,
    model: String,
    system_prompt: String,
    temperature: f64,
    top_p: f64,
    max_tokens: u32,
    verdict_attempts: u32,
}

/// One judgement of the LLM judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmJudgement {
    /// MATCH or MISMATCH from the reply; ERROR when no reply had a verdict.
    pub verdict: Verdict,
    /// The judge model's reply (the last one when none had a verdict).
    pub output: Option<String>,
    /// What happened, for the record.
    pub detail: String,
}

impl LlmJudge {
    /// The judge of `settings` (its `server` is required), with the system prompt of its
    /// `prompt_file` or the shipped one.
    pub fn from_settings(name: &str, settings: &JudgeSettings) -> Result<LlmJudge, String> {
        LlmJudge::new(name, settings, settings.system_prompt()?)
    }

    /// The judge of `settings` with `system_prompt` already read.
    pub fn new(name: &str, settings: &JudgeSettings, system_prompt: String) -> Result<LlmJudge, String> {
        let server = settings.server.clone().ok_or("the LLM judge needs `server`")?;
        Ok(LlmJudge {
            client: ChatClient::new(name, server)?,
            model: settings.model.clone(),
            system_prompt,
            temperature: settings.temperature,
            top_p: settings.top_p,
            max_tokens: settings.max_tokens,
            verdict_attempts: settings.verdict_attempts.max(1),
        })
    }

    /// The judge model's name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Asks the judge model whether `answer` (the full answer text) gives `expected`. A reply
    /// without a verdict (or a thinking model out of tokens) is asked again, up to
    /// `verdict_attempts` times, then judged ERROR. The error is the client's, its retries
    /// already spent.
    pub async fn judge(&self, expected: &str, answer: &str) -> Result<LlmJudgement, LlmError> {
        let request = ChatRequest {
            model: self.model.clone(),
            system_prompt: Some(self.system_prompt.clone()),
            user: judge_message(expected, answer),
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_tokens,
            reasoning_effort: None,
            seed: None,
        };
        let mut last_output = None;
        for _ in 0..self.verdict_attempts {
            let completion = self.client.complete(&request).await?;
            // A thinking model that ran out of tokens returns no content: ask again.
            if let Some(verdict) = completion.answer.as_deref().and_then(parse_verdict) {
                return Ok(LlmJudgement {
                    verdict,
                    output: completion.answer,
                    detail: format!("judge model replied (finish_reason {})", completion.finish_reason),
                });
            }
            last_output =
                completion.answer.or(Some(format!("<no content; finish_reason {}>", completion.finish_reason)));
        }
        Ok(LlmJudgement {
            verdict: Verdict::Error,
            output: last_output,
            detail: format!("no MATCH or MISMATCH in {} judge replies", self.verdict_attempts),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_verdict_word_wins_and_mismatch_is_not_a_match() {
        assert_eq!(parse_verdict("Equivalent.\nMATCH"), Some(Verdict::Match));
        assert_eq!(parse_verdict("The values differ.\nMISMATCH"), Some(Verdict::Mismatch));
        assert_eq!(parse_verdict("At first MISMATCH seemed right, but they are equal: MATCH"), Some(Verdict::Match));
        assert_eq!(parse_verdict("MATCH? No. MISMATCH"), Some(Verdict::Mismatch));
        assert_eq!(parse_verdict("I cannot tell."), None);
        assert_eq!(parse_verdict(""), None);
    }

    #[test]
    fn a_bold_verdict_wins_over_verdict_words_around_it() {
        // The paper's prompt asks for the verdict in bold.
        assert_eq!(parse_verdict("Both give 7.\n\n**MATCH**"), Some(Verdict::Match));
        assert_eq!(parse_verdict("**Verdict:** **MISMATCH**"), Some(Verdict::Mismatch));
        // Weighing both words while reasoning, then deciding.
        assert_eq!(
            parse_verdict("A MATCH would need 7 = 8; it is not, so MATCH is wrong.\n\n**MISMATCH**"),
            Some(Verdict::Mismatch)
        );
        // Naming the other word after the bold verdict.
        assert_eq!(parse_verdict("**MATCH**\n\n(Not a MISMATCH: 0.5 and 1/2 are equal.)"), Some(Verdict::Match));
        // The as-printed PDF broke "**MATCH\n**"; spaces and punctuation inside the stars.
        assert_eq!(parse_verdict("Verdict: **MATCH\n**"), Some(Verdict::Match));
        assert_eq!(parse_verdict("Verdict: ** MISMATCH. **"), Some(Verdict::Mismatch));
        // Bold text that is no verdict does not count.
        assert_eq!(parse_verdict("**Step 1:** compare. Result: MISMATCH"), Some(Verdict::Mismatch));
    }

    #[test]
    fn the_message_wraps_both_answers_in_their_tags() {
        assert_eq!(
            judge_message("7", "so \\boxed{7}"),
            "<CORRECT_ANSWER>\n7\n</CORRECT_ANSWER>\n\n<GENERATED_ANSWER>\nso \\boxed{7}\n</GENERATED_ANSWER>"
        );
    }
}
