//! The student's own chat template: the Jinja `chat_template` of a Hugging Face
//! `tokenizer_config.json`, rendered with minijinja and Python-compatible string methods
//! (`.strip()`, `.startswith()`, `.split()`, ... via minijinja-contrib's pycompat), never a
//! hand-written imitation.
//!
//! A training sample is rendered twice: the conversation up to the generation prompt (the
//! assistant header, and whatever the template opens there, such as `<think>`), and the whole
//! conversation with the assistant turn. The first must be a prefix of the second; everything
//! after it is the completion, which carries the loss.
//!
//! The assistant turn follows the template: `{reasoning}</think>{answer}` when its generation
//! prompt opens `<think>` itself (Nemotron-Nano-v2), else the whole block
//! `<think>\n{reasoning}\n</think>\n{answer}` (templates without reasoning, such as
//! SmolLM2's ChatML), so the student learns to open and close its reasoning.

use minijinja::{context, Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// sha256 of the template text, recorded in shard manifests.
    pub sha256: String,
}

/// A rendered sample: the text, and the byte offset where the completion starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedSample {
    pub text: String,
    pub completion_start: usize,
}

/// A special token entry in tokenizer_config.json: a string, or `{"content": ...}`.
fn token_text(value: Option<&Json>) -> String {
    match value {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Object(o)) => o.get("content").and_then(Json::as_str).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("sha256", &self.sha256).finish()
    }
}

impl ChatTemplate {
    /// From the text of a `tokenizer_config.json`.
    pub fn from_tokenizer_config(config_json: &str) -> anyhow::Result<ChatTemplate> {
        let config: Json = serde_json::from_str(config_json)?;
        let template = match config.get("chat_template") {
            Some(Json::String(t)) => t.clone(),
            // Newer configs list named templates; "default" is the chat one.
            Some(Json::Array(list)) => list
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .ok_or_else(|| anyhow::anyhow!("chat_template list has no \"default\" template"))?
                .to_string(),
            _ => anyhow::bail!("tokenizer_config.json has no chat_template"),
        };
        Self::new(&template, &token_text(config.get("bos_token")), &token_text(config.get("eos_token")))
    }

    pub fn new(template: &str, bos_token: &str, eos_token: &str) -> anyhow::Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        // Templates strip trailing newlines of their blocks as Hugging Face's renderer does.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_template_owned("chat", template.to_string())?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            sha256: hex::encode(Sha256::digest(template.as_bytes())),
        })
    }

    /// Renders messages (`{"role", "content"}` objects).
    pub fn render(&self, messages: &[Json], add_generation_prompt: bool) -> anyhow::Result<String> {
        let template = self.env.get_template("chat")?;
        Ok(template.render(context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        })?)
    }

    /// Renders one training sample; the completion is the assistant turn to the end.
    pub fn render_sample(&self, system: Option<&str>, user: &str, assistant: &str) -> anyhow::Result<RenderedSample> {
        let messages = prompt_messages(system, user);
        let prompt = self.render(&messages, true)?;
        self.complete(messages, prompt, assistant)
    }

    /// Renders a teacher's trace as one training sample, with the assistant turn in the form
    /// the template expects (see the module documentation).
    pub fn render_trace(
        &self,
        system: Option<&str>,
        user: &str,
        reasoning: Option<&str>,
        answer: Option<&str>,
    ) -> anyhow::Result<RenderedSample> {
        let messages = prompt_messages(system, user);
        let prompt = self.render(&messages, true)?;
        // What the generation prompt adds: does it write `<think>` (open, or empty as with
        // Nemotron's `/no_think`)? The whole prompt if the template renders differently.
        let bare = self.render(&messages, false)?;
        let assistant = if prompt.strip_prefix(bare.as_str()).unwrap_or(&prompt).contains("<think>") {
            assistant_turn(reasoning, answer)
        } else {
            assistant_turn_with_think(reasoning, answer)
        };
        self.complete(messages, prompt, &assistant)
    }

    /// The conversation with the assistant turn, split where the rendered prompt ends.
    fn complete(&self, mut messages: Vec<Json>, prompt: String, assistant: &str) -> anyhow::Result<RenderedSample> {
        messages.push(serde_json::json!({"role": "assistant", "content": assistant}));
        let text = self.render(&messages, false)?;
        anyhow::ensure!(
            text.starts_with(&prompt),
            "the chat template does not render the prompt as a prefix of the full conversation; cannot tell the completion apart"
        );
        Ok(RenderedSample { completion_start: prompt.len(), text })
    }
}

/// The system (if any) and user messages.
fn prompt_messages(system: Option<&str>, user: &str) -> Vec<Json> {
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(serde_json::json!({"role": "system", "content": system}));
    }
    messages.push(serde_json::json!({"role": "user", "content": user}));
    messages
}

/// The assistant turn in a teacher's style: the template opens `<think>`, the turn closes it.
pub fn assistant_turn(reasoning: Option<&str>, answer: Option<&str>) -> String {
    format!("{}</think>{}", reasoning.unwrap_or("").trim(), answer.unwrap_or("").trim_start())
}

/// The assistant turn for templates that do not open `<think>`: the turn opens and closes it.
pub fn assistant_turn_with_think(reasoning: Option<&str>, answer: Option<&str>) -> String {
    format!("<think>\n{}\n</think>\n{}", reasoning.unwrap_or("").trim(), answer.unwrap_or("").trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A template in the shape of Nemotron-Nano-v2's: special tokens as role markers, and the
    /// generation prompt opening `<think>`.
    const TEMPLATE: &str = "{% for m in messages %}{% if m['role'] == 'system' %}<SPECIAL_10>System\n{{ m['content'].strip() }}\n{% elif m['role'] == 'user' %}<SPECIAL_11>User\n{{ m['content'] }}\n{% elif m['role'] == 'assistant' %}<SPECIAL_11>Assistant\n<think>\n{{ m['content'] }}<SPECIAL_12>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<SPECIAL_11>Assistant\n<think>\n{% endif %}";

    #[test]
    fn the_prompt_is_a_prefix_and_the_rest_is_the_completion() {
        let t = ChatTemplate::new(TEMPLATE, "", "<SPECIAL_12>").unwrap();
        let r = t.render_sample(Some("  be brief "), "1+1?", &assistant_turn(Some("two"), Some("\\boxed{2}"))).unwrap();
        assert_eq!(
            &r.text[..r.completion_start],
            "<SPECIAL_10>System\nbe brief\n<SPECIAL_11>User\n1+1?\n<SPECIAL_11>Assistant\n<think>\n"
        );
        assert_eq!(&r.text[r.completion_start..], "two</think>\\boxed{2}<SPECIAL_12>\n");
    }

    /// ChatML as SmolLM2 has it: no reasoning in the template at all.
    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn traces_open_think_themselves_only_where_the_template_does_not() {
        let nemotron_like = ChatTemplate::new(TEMPLATE, "", "<SPECIAL_12>").unwrap();
        let r = nemotron_like.render_trace(None, "1+1?", Some(" two "), Some(" \\boxed{2}")).unwrap();
        assert_eq!(
            r,
            nemotron_like.render_sample(None, "1+1?", &assistant_turn(Some("two"), Some("\\boxed{2}"))).unwrap()
        );
        let chatml = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let r = chatml.render_trace(Some("be brief"), "1+1?", Some(" two "), Some(" \\boxed{2}")).unwrap();
        assert_eq!(
            &r.text[..r.completion_start],
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(&r.text[r.completion_start..], "<think>\ntwo\n</think>\n\\boxed{2}<|im_end|>\n");
        let r = chatml.render_trace(None, "1+1?", None, Some("2")).unwrap();
        assert_eq!(&r.text[r.completion_start..], "<think>\n\n</think>\n2<|im_end|>\n", "no reasoning: an empty block");
    }

    #[test]
    fn templates_come_from_tokenizer_configs_and_errors_are_clear() {
        let config =
            serde_json::json!({"chat_template": TEMPLATE, "eos_token": {"content": "<SPECIAL_12>"}}).to_string();
        let t = ChatTemplate::from_tokenizer_config(&config).unwrap();
        assert_eq!(t.sha256.len(), 64);
        let listed = serde_json::json!({"chat_template": [{"name": "default", "template": TEMPLATE}]}).to_string();
        assert!(ChatTemplate::from_tokenizer_config(&listed).is_ok());
        assert!(ChatTemplate::from_tokenizer_config("{}").unwrap_err().to_string().contains("no chat_template"));
        let raising = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
        assert!(format!("{:#}", raising.render(&[], false).unwrap_err()).contains("roles must alternate"));
    }
}

#[cfg(test)]
mod nemotron_tests {
    use super::*;

    /// NVIDIA-Nemotron-Nano-v2's template (see templates/SOURCES.md).
    const NEMOTRON: &str = include_str!("../templates/nvidia-nemotron-nano-v2.jinja");

    #[test]
    fn the_nemotron_template_keeps_the_reasoning_in_the_completion() {
        let t = ChatTemplate::new(NEMOTRON, "", "<SPECIAL_12>").unwrap();
        let r = t
            .render_sample(None, "What is 2+2?", &assistant_turn(Some("Two plus two is four."), Some("\\boxed{4}")))
            .unwrap();
        let (prompt, completion) = r.text.split_at(r.completion_start);
        assert_eq!(prompt, "<SPECIAL_10>System\n\n\n<SPECIAL_11>User\nWhat is 2+2?\n<SPECIAL_11>Assistant\n<think>\n");
        assert_eq!(completion, "Two plus two is four.</think>\\boxed{4}\n<SPECIAL_12>\n");
    }

    #[test]
    fn traces_render_as_before_with_the_nemotron_template() {
        let t = ChatTemplate::new(NEMOTRON, "", "<SPECIAL_12>").unwrap();
        for user in ["What is 2+2?", "What is 2+2? /no_think"] {
            let trace = t.render_trace(Some("Be brief."), user, Some("Four."), Some("\\boxed{4}")).unwrap();
            let sample =
                t.render_sample(Some("Be brief."), user, &assistant_turn(Some("Four."), Some("\\boxed{4}"))).unwrap();
            assert_eq!(trace, sample, "{user}");
        }
    }
}
