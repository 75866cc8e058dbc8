//! One chat completion over HTTP, with everything a long-running job against busy GPU servers
//! needs: endpoint rotation, adaptive concurrency, retries with exponential backoff and jitter
//! on 429, 5xx, timeouts, resets and malformed bodies (honouring Retry-After), a bounded retry
//! budget, and a cap on response size. The API key comes from the environment and never
//! appears in logs or errors.

use crate::limiter::AdaptiveLimit;
use crate::reasoning::split_reasoning;
use backon::{ExponentialBuilder, Retryable};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Settings shared by every stage that calls an LLM server (`endpoints`, retries, limits).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    /// Base URLs of OpenAI-compatible servers, ending in `/v1`; requests rotate over them.
    pub endpoints: Vec<String>,
    /// Environment variable holding the API key (sent as a bearer token), if the server
    /// needs one.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Per-request timeout. Long reasoning at 32k tokens takes minutes.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Attempts per request before giving up (and dead-lettering the record).
    #[serde(default = "default_retry_attempts")]
    pub retry_attempts: usize,
    #[serde(default = "default_retry_min_delay_ms")]
    pub retry_min_delay_ms: u64,
    #[serde(default = "default_retry_max_delay_ms")]
    pub retry_max_delay_ms: u64,
    /// Requests in flight per replica: where the adaptive limit starts, and its bounds.
    #[serde(default = "default_concurrency_initial")]
    pub concurrency_initial: usize,
    #[serde(default = "default_concurrency_min")]
    pub concurrency_min: usize,
    #[serde(default = "default_concurrency_max")]
    pub concurrency_max: usize,
    /// Answers slower than this count as overload and shrink the concurrency limit.
    #[serde(default = "default_latency_target_secs")]
    pub latency_target_secs: u64,
    /// Larger responses are refused (a clear error, not an out-of-memory).
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
}

fn default_request_timeout_secs() -> u64 {
    1800
}
fn default_retry_attempts() -> usize {
    8
}
fn default_retry_min_delay_ms() -> u64 {
    500
}
fn default_retry_max_delay_ms() -> u64 {
    60_000
}
fn default_concurrency_initial() -> usize {
    64
}
fn default_concurrency_min() -> usize {
    1
}
fn default_concurrency_max() -> usize {
    1024
}
fn default_latency_target_secs() -> u64 {
    900
}
fn default_max_response_bytes() -> usize {
    1024 * 1024
}

/// What to ask for.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    pub system_prompt: Option<String>,
    pub user: String,
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: u32,
    /// gpt-oss: "low", "medium", "high".
    pub reasoning_effort: Option<String>,
    pub seed: Option<i64>,
}

impl ChatRequest {
    fn body(&self) -> Value {
        let mut messages = Vec::new();
        if let Some(system) = self.system_prompt.as_deref().filter(|s| !s.is_empty()) {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": self.user}));
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
        });
        if let Some(effort) = &self.reasoning_effort {
            body["reasoning_effort"] = json!(effort);
        }
        if let Some(seed) = self.seed {
            body["seed"] = json!(seed);
        }
        body
    }
}

/// A parsed completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub reasoning: Option<String>,
    pub answer: Option<String>,
    pub finish_reason: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub reasoning_tokens: Option<u32>,
    pub server_model: Option<String>,
    pub endpoint: String,
    pub latency: Duration,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    /// Worth another attempt: 429, 5xx, timeout, connection failure, malformed body.
    #[error("{message}")]
    Retryable { message: String, retry_after: Option<Duration>, overloaded: bool },
    /// Not worth another attempt (4xx other than 429, oversized response, or the retry budget
    /// is spent).
    #[error("{0}")]
    Permanent(String),
}

impl LlmError {
    fn retryable(message: String) -> LlmError {
        LlmError::Retryable { message, retry_after: None, overloaded: false }
    }

    /// The same error with every occurrence of `secret` in its message replaced.
    fn redacted(self, secret: &str) -> LlmError {
        if secret.is_empty() {
            return self;
        }
        let clean = |message: String| message.replace(secret, "[redacted]");
        match self {
            LlmError::Retryable { message, retry_after, overloaded } => {
                LlmError::Retryable { message: clean(message), retry_after, overloaded }
            }
            LlmError::Permanent(message) => LlmError::Permanent(clean(message)),
        }
    }
}

pub struct ChatClient {
    name: String,
    http: reqwest::Client,
    settings: ClientSettings,
    api_key: Option<String>,
    next_endpoint: AtomicUsize,
    limit: AdaptiveLimit,
}

impl std::fmt::Debug for ChatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the API key.
        f.debug_struct("ChatClient").field("name", &self.name).field("endpoints", &self.settings.endpoints).finish()
    }
}

impl ChatClient {
    pub fn new(name: &str, settings: ClientSettings) -> Result<ChatClient, String> {
        if settings.endpoints.is_empty() {
            return Err("`endpoints` lists no server".into());
        }
        if settings.retry_attempts == 0 {
            return Err("retry_attempts must be at least 1".into());
        }
        let api_key = match &settings.api_key_env {
            Some(var) => {
                Some(std::env::var(var).map_err(|_| format!("environment variable {var} (api_key_env) is not set"))?)
            }
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.request_timeout_secs))
            .pool_max_idle_per_host(settings.concurrency_max)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let limit = AdaptiveLimit::new(
            name,
            settings.concurrency_initial,
            settings.concurrency_min,
            settings.concurrency_max,
            Duration::from_secs(settings.latency_target_secs),
        );
        Ok(ChatClient { name: name.to_string(), http, settings, api_key, next_endpoint: AtomicUsize::new(0), limit })
    }

    /// The current adaptive concurrency limit.
    pub fn concurrency_limit(&self) -> usize {
        self.limit.limit()
    }

    /// One completion, retried within the budget. The error of an exhausted budget is
    /// permanent and names the attempts and the last failure.
    pub async fn complete(&self, request: &ChatRequest) -> Result<Completion, LlmError> {
        let body = request.body();
        let s = &self.settings;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(s.retry_min_delay_ms))
            .with_max_delay(Duration::from_millis(s.retry_max_delay_ms))
            .with_max_times(s.retry_attempts - 1)
            .with_jitter();
        let result = (|| self.attempt(&body))
            .retry(backoff)
            .when(|e| matches!(e, LlmError::Retryable { .. }))
            // The server's Retry-After wins over our own backoff when it asks for longer.
            .adjust(|e, planned| match (e, planned) {
                (LlmError::Retryable { retry_after: Some(after), .. }, Some(planned)) => Some(planned.max(*after)),
                (_, planned) => planned,
            })
            .notify(|e, delay| tracing::debug!(client = %self.name, "retrying in {delay:?}: {e}"))
            .await;
        result.map_err(|e| match e {
            LlmError::Retryable { message, .. } => {
                LlmError::Permanent(format!("gave up after {} attempts; last error: {message}", s.retry_attempts))
            }
            permanent => permanent,
        })
    }

    async fn attempt(&self, body: &Value) -> Result<Completion, LlmError> {
        let slot = self.limit.acquire().await;
        let n = self.next_endpoint.fetch_add(1, Ordering::Relaxed);
        let endpoint = &self.settings.endpoints[n % self.settings.endpoints.len()];
        let url = format!("{}/chat/completions", endpoint.trim_end_matches('/'));
        let started = Instant::now();
        let mut request = self.http.post(&url).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let mut outcome = self.exchange(request, endpoint).await;
        if let Some(key) = &self.api_key {
            // Error messages quote the server's reply (and the endpoint URL); a proxy that
            // echoes the request's Authorization header would otherwise put the key into logs
            // and dead letters.
            outcome = outcome.map_err(|e| e.redacted(key));
        }
        let latency = started.elapsed();
        let label = match &outcome {
            Ok(_) => {
                slot.succeeded(latency);
                "ok"
            }
            Err(LlmError::Retryable { overloaded: true, .. }) => {
                slot.overloaded();
                "overloaded"
            }
            Err(LlmError::Retryable { .. }) => "retryable",
            Err(LlmError::Permanent(_)) => "permanent",
        };
        metrics::counter!("distillery_llm_requests_total", "client" => self.name.clone(), "outcome" => label)
            .increment(1);
        outcome.map(|mut completion| {
            completion.latency = latency;
            completion
        })
    }

    async fn exchange(&self, request: reqwest::RequestBuilder, endpoint: &str) -> Result<Completion, LlmError> {
        // Transport failures (refused, reset, timeout) are worth another attempt. reqwest's
        // errors name the URL, never the headers; `attempt` redacts the key from every message
        // all the same.
        let mut response =
            request.send().await.map_err(|e| LlmError::retryable(format!("{endpoint}: request failed: {e}")))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(600.0)));
        let max = self.settings.max_response_bytes;
        if response.content_length().is_some_and(|len| len as usize > max) {
            return Err(LlmError::Permanent(format!(
                "{endpoint}: response of {} bytes exceeds max_response_bytes ({max})",
                response.content_length().unwrap_or(0)
            )));
        }
        let mut bytes = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > max {
                        return Err(LlmError::Permanent(format!(
                            "{endpoint}: response exceeds max_response_bytes ({max})"
                        )));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(LlmError::retryable(format!("{endpoint}: reading the response failed: {e}"))),
            }
        }
        if !status.is_success() {
            let detail = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            let message = format!("{endpoint}: HTTP {status}: {detail}");
            return match status.as_u16() {
                429 | 503 => Err(LlmError::Retryable { message, retry_after, overloaded: true }),
                500..=599 | 408 => Err(LlmError::Retryable { message, retry_after, overloaded: false }),
                _ => Err(LlmError::Permanent(message)),
            };
        }
        parse_completion(&bytes, endpoint)
    }
}

/// Parses a chat-completion body. A body that is not the expected JSON is retryable: servers
/// and proxies cut bodies off under load.
pub fn parse_completion(bytes: &[u8], endpoint: &str) -> Result<Completion, LlmError> {
    let malformed = |why: String| LlmError::retryable(format!("{endpoint}: malformed response body: {why}"));
    let body: Value = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    let choice = body["choices"].get(0).ok_or_else(|| malformed("no choices".into()))?;
    let message = &choice["message"];
    if !message.is_object() {
        return Err(malformed("choice has no message".into()));
    }
    let split = split_reasoning(message);
    let finish_reason = choice["finish_reason"].as_str().unwrap_or("unknown").to_string();
    if split.reasoning.is_none() && split.answer.is_none() && finish_reason != "length" {
        // Nothing generated and not cut off: a server fault, not an answer.
        return Err(malformed(format!("empty completion (finish_reason {finish_reason})")));
    }
    let count = |v: &Value| v.as_u64().map(|n| n.min(u32::MAX as u64) as u32);
    Ok(Completion {
        reasoning: split.reasoning,
        answer: split.answer,
        finish_reason,
        prompt_tokens: count(&body["usage"]["prompt_tokens"]).unwrap_or(0),
        completion_tokens: count(&body["usage"]["completion_tokens"]).unwrap_or(0),
        reasoning_tokens: count(&body["usage"]["completion_tokens_details"]["reasoning_tokens"]),
        server_model: body["model"].as_str().map(str::to_string),
        endpoint: endpoint.to_string(),
        latency: Duration::ZERO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_completions_are_retryable_faults_and_truncations_are_results() {
        let empty = br#"{"choices":[{"message":{"role":"assistant","content":""},"finish_reason":"stop"}]}"#;
        assert!(
            matches!(parse_completion(empty, "e"), Err(LlmError::Retryable { message, .. }) if message.ends_with("empty completion (finish_reason stop)"))
        );
        let cut = br#"{"choices":[{"message":{"role":"assistant","content":null},"finish_reason":"length"}]}"#;
        assert_eq!(parse_completion(cut, "e").unwrap().finish_reason, "length");
        assert!(parse_completion(b"{\"choices\": [", "e").is_err());
        assert!(parse_completion(b"{\"choices\": []}", "e").is_err());
    }
}
