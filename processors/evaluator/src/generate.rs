//! Where generations come from, behind two small traits so that backends plug in:
//! a [`Backend`] opens a [`Generator`] for one checkpoint; the generator returns `n`
//! generations for one prompt.
//!
//! - [`ServerBackend`]: an OpenAI-compatible server (vLLM, SGLang, NIM) serving the
//!   checkpoint, through the samplers' client (retries, adaptive concurrency, time-outs).
//! - in-process (the trainer's candle model with a KV cache): a `Backend` whose `open` loads
//!   the checkpoint's files and whose generator samples with temperature / top-p, returning
//!   its raw text through [`Generation::from_text`].
//!
//! The traits return boxed futures so that the evaluator holds any backend as
//! `Arc<dyn Backend>` without a generic parameter (and without an async-trait macro).

use crate::config::{substitute, EvaluatorSettings};
use crate::launch::{Launcher, RunningServer};
use distillery_openai::reasoning::split_think_tags;
use distillery_openai::{ChatClient, ChatRequest, ClientSettings};
use distillery_schemas::CheckpointEvent;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The chat to generate from: what the student sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub system: Option<String>,
    /// The user turn (the prompt template with the problem in it).
    pub user: String,
}

/// How to sample (the paper's defaults come from the settings).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSettings {
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: u32,
    /// Sample j of a prompt uses seed `seed + j`.
    pub seed: i64,
}

impl GenerationSettings {
    pub fn from_settings(s: &EvaluatorSettings) -> GenerationSettings {
        GenerationSettings { temperature: s.temperature, top_p: s.top_p, max_tokens: s.max_tokens, seed: s.seed }
    }
}

/// One generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// The answer: the text after the reasoning. None when the generation ended inside its
    /// reasoning (cut off at max_tokens) or produced nothing.
    pub answer: Option<String>,
    /// Generated tokens, reasoning included.
    pub completion_tokens: u64,
    /// Stopped at max_tokens (finish_reason "length").
    pub truncated: bool,
}

impl Generation {
    /// From a model's raw output with inline `<think>…</think>` (or a template that opened
    /// `<think>` in the prompt, so only `</think>` appears).
    pub fn from_text(text: &str, completion_tokens: u64, truncated: bool) -> Generation {
        Generation { answer: split_think_tags(text).answer, completion_tokens, truncated }
    }
}

/// Why generation failed. Either way the checkpoint is not scored: a failure never counts as
/// a wrong answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenerateError {
    /// Trying the whole checkpoint again later may help (e.g. its files are not readable yet);
    /// the runtime retries it with backoff, then dead-letters it.
    Transient(String),
    /// Retries are spent or cannot help (the server refused the request, the model does not
    /// load): the checkpoint goes to the dead-letter topic, to be replayed once fixed.
    Failed(String),
}

impl std::fmt::Display for GenerateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GenerateError::Transient(m) | GenerateError::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for GenerateError {}

/// Generations for one checkpoint.
pub trait Generator: Send + Sync {
    /// `n` generations for `prompt`, in sample order (sample j with seed `settings.seed + j`).
    /// Called concurrently for many prompts; an implementation that cannot run requests in
    /// parallel queues them itself.
    fn generate<'a>(
        &'a self,
        prompt: &'a Prompt,
        n: usize,
        settings: &'a GenerationSettings,
    ) -> BoxFuture<'a, Result<Vec<Generation>, GenerateError>>;

    /// Called once after the checkpoint's last generation, whether the evaluation succeeded
    /// or not: releases what `Backend::open` started (a server process). Nothing by default.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A source of generators: one per evaluated checkpoint.
pub trait Backend: Send + Sync {
    /// The generator for `checkpoint`: a client of the server serving it, or the model
    /// loaded from its files. Called once per evaluated checkpoint, before any generation.
    fn open<'a>(&'a self, checkpoint: &'a CheckpointEvent) -> BoxFuture<'a, Result<Arc<dyn Generator>, GenerateError>>;
}

// --- server backend -------------------------------------------------------------------------

/// An OpenAI-compatible server per checkpoint: endpoints and model name are templates filled
/// from the checkpoint (see `EvaluatorSettings::model`). With `server_command`, the backend
/// starts that server itself for each checkpoint and stops it in `Generator::close`.
pub struct ServerBackend {
    name: String,
    client: ClientSettings,
    model_template: String,
    /// One client per distinct endpoint list, kept across checkpoints so its adaptive
    /// concurrency limit carries over.
    clients: Mutex<HashMap<Vec<String>, Arc<ChatClient>>>,
    launcher: Option<Launcher>,
}

impl ServerBackend {
    pub fn new(name: &str, settings: &EvaluatorSettings) -> anyhow::Result<ServerBackend> {
        let client = settings.server.clone().ok_or_else(|| anyhow::anyhow!("backend \"server\" needs `server`"))?;
        // Check the client settings (API key variable, retry budget) at start-up, not at the
        // first checkpoint.
        ChatClient::new(name, client.clone()).map_err(anyhow::Error::msg)?;
        Ok(ServerBackend {
            name: name.to_string(),
            client,
            model_template: settings.model.clone(),
            clients: Mutex::new(HashMap::new()),
            launcher: Launcher::from_settings(settings)?,
        })
    }

    /// Starts the checkpoint's own server, and a client of it (not kept: the next
    /// checkpoint's server is another process on another port).
    async fn launch(
        &self,
        launcher: &Launcher,
        checkpoint: &CheckpointEvent,
    ) -> Result<Arc<dyn Generator>, GenerateError> {
        let values = launcher.prepare(checkpoint).await?;
        let endpoints: Vec<String> = self.client.endpoints.iter().map(|e| values.fill(e, checkpoint)).collect();
        let model = values.fill(&self.model_template, checkpoint);
        let settings = ClientSettings { endpoints: endpoints.clone(), ..self.client.clone() };
        let client = Arc::new(ChatClient::new(&self.name, settings).map_err(GenerateError::Failed)?);
        let server = launcher.start(checkpoint, values, &endpoints[0]).await?;
        let generator = ServerGenerator { client, model, server: Some(tokio::sync::Mutex::new(server)) };
        Ok(Arc::new(generator) as Arc<dyn Generator>)
    }
}

impl Backend for ServerBackend {
    fn open<'a>(&'a self, checkpoint: &'a CheckpointEvent) -> BoxFuture<'a, Result<Arc<dyn Generator>, GenerateError>> {
        Box::pin(async move {
            if let Some(launcher) = &self.launcher {
                return self.launch(launcher, checkpoint).await;
            }
            let endpoints: Vec<String> = self.client.endpoints.iter().map(|e| substitute(e, checkpoint)).collect();
            let client = {
                let mut clients = self.clients.lock().unwrap();
                match clients.get(&endpoints) {
                    Some(client) => client.clone(),
                    None => {
                        let settings = ClientSettings { endpoints: endpoints.clone(), ..self.client.clone() };
                        let client = Arc::new(ChatClient::new(&self.name, settings).map_err(GenerateError::Failed)?);
                        clients.insert(endpoints, client.clone());
                        client
                    }
                }
            };
            let generator =
                ServerGenerator { client, model: substitute(&self.model_template, checkpoint), server: None };
            Ok(Arc::new(generator) as Arc<dyn Generator>)
        })
    }
}

struct ServerGenerator {
    client: Arc<ChatClient>,
    model: String,
    /// The server process started for this checkpoint (`server_command`).
    server: Option<tokio::sync::Mutex<RunningServer>>,
}

impl Generator for ServerGenerator {
    fn generate<'a>(
        &'a self,
        prompt: &'a Prompt,
        n: usize,
        settings: &'a GenerationSettings,
    ) -> BoxFuture<'a, Result<Vec<Generation>, GenerateError>> {
        Box::pin(async move {
            // One request per sample (seeded, so a repeat gives the same samples); the
            // client's adaptive limit decides how many are in flight.
            let requests = (0..n).map(|j| {
                let request = ChatRequest {
                    model: self.model.clone(),
                    system_prompt: prompt.system.clone(),
                    user: prompt.user.clone(),
                    temperature: settings.temperature,
                    top_p: settings.top_p,
                    max_tokens: settings.max_tokens,
                    reasoning_effort: None,
                    seed: Some(settings.seed + j as i64),
                };
                async move {
                    // The client already spent its retry budget: whatever fails here is final.
                    let completion = self.client.complete(&request).await.map_err(|e| {
                        GenerateError::Failed(format!("generation for model {} failed: {e}", self.model))
                    })?;
                    Ok(Generation {
                        truncated: completion.finish_reason == "length",
                        answer: completion.answer,
                        completion_tokens: completion.completion_tokens as u64,
                    })
                }
            });
            futures::future::try_join_all(requests).await
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(server) = &self.server {
                server.lock().await.stop().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_text_splits_off_the_reasoning() {
        let g = Generation::from_text("<think>2+2</think>So \\boxed{4}.", 12, false);
        assert_eq!(g.answer.as_deref(), Some("So \\boxed{4}."));
        assert_eq!(Generation::from_text("<think>still thinking", 9, true).answer, None);
        assert_eq!(
            Generation::from_text("reasoning</think>\\boxed{1}", 9, false).answer.as_deref(),
            Some("\\boxed{1}")
        );
        assert_eq!(Generation::from_text("\\boxed{7}", 3, false).answer.as_deref(), Some("\\boxed{7}"));
    }
}
