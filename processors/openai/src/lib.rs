//! Talking to OpenAI-compatible chat-completions servers, shared by the samplers, the judge
//! and the evaluator.
//!
//! # Layout
//! - `client`: one request -> one parsed completion, with retries (exponential backoff with
//!   jitter, Retry-After honoured, a bounded budget), endpoint rotation, and errors that say
//!   whether trying again could help.
//! - `limiter`: an AIMD concurrency limit that grows while the server keeps up and halves on
//!   429/503, so one replica can saturate a vLLM server without drowning it.
//! - `reasoning`: reasoning text from `message.reasoning`, `message.reasoning_content` or
//!   inline `<think>…</think>`.

pub mod client;
pub mod limiter;
pub mod reasoning;

pub use client::{ChatClient, ChatRequest, ClientSettings, Completion, LlmError};
pub use limiter::AdaptiveLimit;
pub use reasoning::{split_reasoning, Split};
