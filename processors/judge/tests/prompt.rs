//! The judge's default system prompt is the paper's Appendix A text, and it reaches the judge
//! model byte for byte; the verdict comes from the judge's answer, not its reasoning.

use distillery_judge::config::{JudgeSettings, DEFAULT_SYSTEM_PROMPT};
use distillery_judge::llm::{judge_message, LlmJudge};
use distillery_llm_test_server::{LlmServer, ServerConfig};
use distillery_schemas::Verdict;
use sha2::{Digest, Sha256};

const RESTORED: &str = include_str!("../prompts/judge-appendix-a.txt");
const AS_PRINTED: &str = include_str!("../prompts/judge-appendix-a.as-printed.txt");

#[test]
fn the_default_prompt_is_the_papers_appendix_a_word_for_word() {
    assert_eq!(DEFAULT_SYSTEM_PROMPT, RESTORED);
    // The paper's text layer, less its heading line, with every line break and indent dropped,
    // is the shipped prompt with its line breaks and indents dropped: the words, the markup and
    // the punctuation are the paper's; only the layout was restored.
    let (heading, printed_body) = AS_PRINTED.split_once('\n').unwrap();
    assert_eq!(heading, "Appendix: System Prompt used for verifying correctly generated answer");
    let squeeze = |text: &str| text.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    assert_eq!(squeeze(RESTORED), squeeze(printed_body));
    // And the spaces between words are the paper's too (a line break in print is a space here,
    // except inside "step-by-step", which the PDF split after a hyphen).
    let printed_words = printed_body.replace("-\n", "-").replace("MATCH\n**", "MATCH**");
    let words = |text: &str| text.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(words(RESTORED), words(&printed_words));
    assert!(RESTORED.contains("when it’s not correct"), "the typographic apostrophe is the paper's");
    // Pinned bytes: any edit to the file, even of whitespace, fails here.
    assert_eq!(
        hex::encode(Sha256::digest(RESTORED.as_bytes())),
        "8c34ec8aa93c40e4f55548fc96769ee462d3c946fbc30fde3de18275aae70a0e"
    );
}

#[tokio::test]
async fn the_judge_model_receives_exactly_the_appendix_a_prompt_and_its_answer_decides() {
    let server = LlmServer::start(ServerConfig::default()).await.unwrap();
    server.keep_bodies();
    let table: toml::Table = toml::from_str(&format!(
        r#"server = {{ endpoints = ["{}"], retry_attempts = 2, retry_min_delay_ms = 1, retry_max_delay_ms = 5 }}"#,
        server.base_url()
    ))
    .unwrap();
    let settings = JudgeSettings::from_table(&table).unwrap();
    let judge = LlmJudge::from_settings("judge", &settings).unwrap();

    // The test server, as a thinking judge, names the opposite verdict in its reasoning field
    // and gives its verdict in bold in its answer.
    let right = judge.judge("42", "So the total is \\boxed{42}.").await.unwrap();
    assert_eq!(right.verdict, Verdict::Match);
    let wrong = judge.judge("42", "So the total is \\boxed{41}.").await.unwrap();
    assert_eq!(wrong.verdict, Verdict::Mismatch);

    let bodies = server.stats.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2);
    let messages = bodies[0]["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(messages[0]["content"].as_str().unwrap().as_bytes(), RESTORED.as_bytes());
    assert_eq!(messages[1]["role"], "user");
    assert_eq!(messages[1]["content"].as_str().unwrap(), judge_message("42", "So the total is \\boxed{42}."));
    assert_eq!(bodies[0]["model"], "Qwen/Qwen3-30B-A3B-Thinking-2507");
}
