//! The in-process backend: the checkpoint's own files (Hugging Face layout: config.json,
//! model.safetensors, tokenizer.json, tokenizer_config.json with the chat template) loaded into
//! the trainer's candle model, sampled here. For small checkpoints, tests and the quickstart;
//! large students are served by vLLM (the server backend).

use crate::generate::{Backend, GenerateError, Generation, GenerationSettings, Generator, Prompt};
use candle_core::{DType, Device};
use distillery_model::generate::{sample_until, Sampling};
use distillery_model::Student;
use distillery_packer::template::ChatTemplate;
use distillery_packer::tokenize::StudentTokenizer;
use distillery_runtime::objects::get_bytes;
use distillery_runtime::shutdown;
use distillery_schemas::CheckpointEvent;
use futures::future::BoxFuture;
use serde_json::json;
use std::sync::{Arc, Mutex};

pub struct InProcessBackend;

struct LoadedCheckpoint {
    /// One generation at a time: the model already uses every core for its matmuls.
    student: Mutex<Student>,
    tokenizer: StudentTokenizer,
    template: ChatTemplate,
    stop: Vec<u32>,
}

impl Backend for InProcessBackend {
    fn open<'a>(&'a self, checkpoint: &'a CheckpointEvent) -> BoxFuture<'a, Result<Arc<dyn Generator>, GenerateError>> {
        Box::pin(async move {
            let uri = checkpoint.uri.trim_end_matches('/');
            // A checkpoint whose files cannot be read now may be readable later (eventual
            // consistency of a store): transient. Files that do not make a model: failed.
            let read = |file: &'static str| async move {
                get_bytes(&format!("{uri}/{file}"))
                    .await
                    .map_err(|e| GenerateError::Transient(format!("cannot read {uri}/{file}: {e:#}")))
            };
            let tokenizer_json = read("tokenizer.json").await?;
            let tokenizer_config = read("tokenizer_config.json").await?;
            let failed = |e: anyhow::Error| GenerateError::Failed(format!("checkpoint {uri}: {e:#}"));
            let (config, weights) =
                distillery_model::weights::load_model_folder(uri, &Device::Cpu, |path| async move {
                    get_bytes(&path).await
                })
                .await
                .map_err(|e| GenerateError::Transient(format!("{e:#}")))?;
            let student = Student::from_tensors(config, weights, DType::F32, &Device::Cpu).map_err(failed)?;
            let tokenizer = StudentTokenizer::from_bytes(&tokenizer_json).map_err(failed)?;
            let config_text = String::from_utf8_lossy(&tokenizer_config).into_owned();
            let template = ChatTemplate::from_tokenizer_config(&config_text).map_err(failed)?;
            let mut stop = student.config.eos_token_ids();
            let config_json: serde_json::Value = serde_json::from_str(&config_text).unwrap_or_default();
            if let Some(eos) = config_json["eos_token"].as_str().and_then(|t| tokenizer.token_to_id(t)) {
                stop.push(eos);
            }
            let loaded = LoadedCheckpoint { student: Mutex::new(student), tokenizer, template, stop };
            Ok(Arc::new(loaded) as Arc<dyn Generator>)
        })
    }
}

impl Generator for LoadedCheckpoint {
    fn generate<'a>(
        &'a self,
        prompt: &'a Prompt,
        n: usize,
        settings: &'a GenerationSettings,
    ) -> BoxFuture<'a, Result<Vec<Generation>, GenerateError>> {
        Box::pin(async move {
            let mut messages = Vec::new();
            if let Some(system) = &prompt.system {
                messages.push(json!({"role": "system", "content": system}));
            }
            messages.push(json!({"role": "user", "content": prompt.user}));
            let failed = |e: anyhow::Error| GenerateError::Failed(format!("{e:#}"));
            let text = self.template.render(&messages, true).map_err(failed)?;
            let ids = self.tokenizer.encode(&text).map_err(failed)?;
            let mut generations = Vec::with_capacity(n);
            for j in 0..n {
                let sampling = Sampling {
                    temperature: settings.temperature,
                    top_p: settings.top_p,
                    max_tokens: settings.max_tokens as usize,
                    seed: (settings.seed + j as i64) as u64,
                };
                let sampled = tokio::task::block_in_place(|| {
                    let student = self.student.lock().expect("a generation panicked");
                    sample_until(&student, &ids, &self.stop, &sampling, &shutdown::in_flight_abandoned)
                })
                .map_err(failed)?;
                let text = self.tokenizer.decode(&sampled.tokens).map_err(failed)?;
                generations.push(Generation::from_text(&text, sampled.tokens.len() as u64, sampled.truncated));
                // An await point between samples: a task aborted at the shutdown deadline stops
                // here instead of generating every remaining sample first.
                tokio::task::yield_now().await;
            }
            Ok(generations)
        })
    }
}
