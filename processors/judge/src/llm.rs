//! The LLM judge: the system prompt verbatim, the ground truth in `<CORRECT_ANSWER>` and the
//! sample's full answer in `<GENERATED_ANSWER>`; the verdict is the last MATCH or MISMATCH in
//! the reply.

use distillery_schemas::Verdict;

/// The user message for one judgement.
pub fn judge_message(expected: &str, answer: &str) -> String {
    format!("<CORRECT_ANSWER>\n{expected}\n</CORRECT_ANSWER>\n\n<GENERATED_ANSWER>\n{answer}\n</GENERATED_ANSWER>")
}

/// The last verdict word in a reply. "MISMATCH" contains "MATCH", so a MATCH only counts when
/// it is not the tail of a MISMATCH.
pub fn parse_verdict(reply: &str) -> Option<Verdict> {
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
    fn the_message_wraps_both_answers_in_their_tags() {
        assert_eq!(
            judge_message("7", "so \\boxed{7}"),
            "<CORRECT_ANSWER>\n7\n</CORRECT_ANSWER>\n\n<GENERATED_ANSWER>\nso \\boxed{7}\n</GENERATED_ANSWER>"
        );
    }
}
