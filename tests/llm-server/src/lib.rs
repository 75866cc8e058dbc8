//! A local OpenAI-compatible server: `POST /v1/chat/completions` and `GET /v1/models`, over
//! real HTTP on a loopback port. It answers in the three shapes servers use for reasoning
//! (gpt-oss-style `message.reasoning`, SGLang/DeepSeek-style `message.reasoning_content`, and
//! inline `<think>…</think>` in `content`), and injects faults on demand: latency, 429 with
//! Retry-After, 500, 503, connection resets, truncated JSON bodies, and truncated generations
//! (`finish_reason: "length"`, `content: null`). It can also be switched off entirely.
//!
//! The answer to a problem is `\boxed{X}` where X comes from [`ServerConfig::answers`] (by
//! problem text contained in the request), else the sum for "What is A + B?", else 42: tests
//! script right and wrong answers with it. [`ServerConfig::seeded_answers`] scripts answers that
//! differ between samples of one problem: the request's `seed` picks one (None: a truncated
//! generation), so a test knows which sample got which answer whatever the request order. Asked as a judge (a user message with `<CORRECT_ANSWER>`
//! and `<GENERATED_ANSWER>`), it answers **MATCH** when the generated answer contains the
//! correct one, else **MISMATCH**, after reasoning that names the opposite verdict last. With [`ServerConfig::api_key`] it refuses requests without that bearer
//! token (401), and [`ServerConfig::echo_credentials_problems`] makes it quote the request's
//! Authorization header back in an error, as a misconfigured proxy might.

pub mod proxy;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A fault the server can inject instead of (or before) a normal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// Answer normally after `fault_latency_ms`.
    Latency,
    /// 429 with `Retry-After` ([`ServerConfig::retry_after_secs`]).
    TooManyRequests,
    InternalError,
    Unavailable,
    /// Close the connection without answering.
    Reset,
    /// 200 with only the first half of the JSON body.
    TruncatedJson,
    /// A truncated generation: `finish_reason: "length"`, `content: null`.
    Length,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::Latency,
        Fault::TooManyRequests,
        Fault::InternalError,
        Fault::Unavailable,
        Fault::Reset,
        Fault::TruncatedJson,
        Fault::Length,
    ];

    /// The faults a client retries until it gets the same answer as without them (all but a
    /// truncated generation, which changes the sample's content).
    pub const RETRYABLE: [Fault; 6] = [
        Fault::Latency,
        Fault::TooManyRequests,
        Fault::InternalError,
        Fault::Unavailable,
        Fault::Reset,
        Fault::TruncatedJson,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Latency => "latency",
            Fault::TooManyRequests => "429",
            Fault::InternalError => "500",
            Fault::Unavailable => "503",
            Fault::Reset => "reset",
            Fault::TruncatedJson => "truncated-json",
            Fault::Length => "length",
        }
    }
}

/// How reasoning is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReasoningStyle {
    /// `message.reasoning` (gpt-oss on newer vLLM).
    Reasoning,
    /// `message.reasoning_content` (older vLLM, SGLang, NIM, DeepSeek API).
    ReasoningContent,
    /// `<think>…</think>` inline in `content` (no reasoning parser).
    InlineThink,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Share of requests that get a fault, drawn uniformly from `faults`.
    pub fault_rate: f64,
    pub faults: Vec<Fault>,
    pub fault_latency_ms: u64,
    /// Latency of every answer.
    pub latency_ms: u64,
    /// Fixed style, or None to rotate by problem so all three appear.
    pub style: Option<ReasoningStyle>,
    /// Scripted answers, by problem text (matched when the request contains it).
    pub answers: HashMap<String, String>,
    /// Scripted answers per sample, by problem text (matched when the request contains it):
    /// a request with `seed` s gets entry `s % len` (no seed: entry 0); `None` answers with a
    /// truncated generation (`finish_reason: "length"`, `content: null`). Wins over `answers`.
    pub seeded_answers: HashMap<String, Vec<Option<String>>>,
    /// Length of the reasoning text in words.
    pub reasoning_words: usize,
    /// Problems whose answer carries 2.5 MB of reasoning (for response-size limits).
    pub oversized_problems: Vec<String>,
    /// Problems answered with an empty message (`content: ""`, `finish_reason: "stop"`).
    pub empty_problems: Vec<String>,
    /// Seconds in the Retry-After header of 429, 500 and 503 answers.
    pub retry_after_secs: u64,
    pub seed: u64,
    /// The API key the server requires (`Authorization: Bearer KEY`); other requests get 401.
    pub api_key: Option<String>,
    /// Problems whose request gets a 400 error quoting the request's Authorization header,
    /// as a misconfigured proxy might (for tests that the client never repeats a key).
    pub echo_credentials_problems: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            fault_rate: 0.0,
            faults: Fault::ALL.to_vec(),
            fault_latency_ms: 200,
            latency_ms: 0,
            style: None,
            answers: HashMap::new(),
            seeded_answers: HashMap::new(),
            reasoning_words: 40,
            oversized_problems: Vec::new(),
            empty_problems: Vec::new(),
            retry_after_secs: 1,
            seed: 7,
            api_key: None,
            echo_credentials_problems: Vec::new(),
        }
    }
}

/// What the server saw and did.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub answered: AtomicU64,
    faults: Mutex<HashMap<Fault, u64>>,
    pub styles: Mutex<HashMap<String, u64>>,
    /// Requests refused for a missing or wrong API key.
    pub unauthorized: AtomicU64,
    /// Every request body received, for tests that check what was sent.
    pub bodies: Mutex<Vec<Value>>,
}

impl Stats {
    pub fn faults(&self) -> HashMap<Fault, u64> {
        self.faults.lock().unwrap().clone()
    }
}

struct Shared {
    config: ServerConfig,
    stats: Arc<Stats>,
    rng: Mutex<rand::rngs::StdRng>,
    down: AtomicBool,
    keep_bodies: AtomicBool,
}

/// A running server; stops when dropped.
pub struct LlmServer {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl LlmServer {
    /// Binds a free loopback port and serves until dropped.
    pub async fn start(config: ServerConfig) -> anyhow::Result<LlmServer> {
        Self::start_on(([127, 0, 0, 1], 0).into(), config).await
    }

    pub async fn start_on(addr: SocketAddr, config: ServerConfig) -> anyhow::Result<LlmServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let shared = Arc::new(Shared {
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(config.seed)),
            config,
            stats: stats.clone(),
            down: AtomicBool::new(false),
            keep_bodies: AtomicBool::new(false),
        });
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(shared.clone(), request));
                    // A service error (our injected reset) closes the connection unanswered.
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(LlmServer { addr, stats, shared, task })
    }

    /// Base URL for OpenAI clients: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// While down, every request gets a connection reset (a server that is entirely gone).
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Keep every request body in [`Stats::bodies`].
    pub fn keep_bodies(&self) {
        self.shared.keep_bodies.store(true, Ordering::SeqCst);
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
struct InjectedReset;

impl std::fmt::Display for InjectedReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected connection reset")
    }
}

impl std::error::Error for InjectedReset {}

type Reply = Result<Response<Full<Bytes>>, InjectedReset>;

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap())
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Reply {
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    if shared.down.load(Ordering::SeqCst) {
        return Err(InjectedReset);
    }
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let authorization = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if let Some(key) = &shared.config.api_key {
        if authorization != format!("Bearer {key}") {
            shared.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
            return reply(StatusCode::UNAUTHORIZED, json!({"error": {"message": "invalid API key"}}).to_string());
        }
    }
    match (method.as_str(), path.as_str()) {
        ("GET", "/v1/models") => reply(
            StatusCode::OK,
            json!({"object": "list", "data": [{"id": "test-model", "object": "model"}]}).to_string(),
        ),
        ("POST", "/v1/chat/completions") => chat(&shared, &body, &authorization).await,
        _ => {
            reply(StatusCode::NOT_FOUND, json!({"error": {"message": format!("no route {method} {path}")}}).to_string())
        }
    }
}

async fn chat(shared: &Shared, body: &[u8], authorization: &str) -> Reply {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return reply(StatusCode::BAD_REQUEST, json!({"error": {"message": "body is not JSON"}}).to_string());
    };
    let problem = problem_of(&request);
    if shared.config.echo_credentials_problems.iter().any(|p| problem.contains(p.as_str())) {
        let message = format!("bad request; you sent Authorization: {authorization}");
        return reply(StatusCode::BAD_REQUEST, json!({"error": {"message": message}}).to_string());
    }
    if shared.keep_bodies.load(Ordering::Relaxed) {
        shared.stats.bodies.lock().unwrap().push(request.clone());
    }
    let config = &shared.config;
    let fault = {
        let mut rng = shared.rng.lock().unwrap();
        (!config.faults.is_empty() && rng.gen_bool(config.fault_rate.clamp(0.0, 1.0)))
            .then(|| config.faults[rng.gen_range(0..config.faults.len())])
    };
    if let Some(fault) = fault {
        *shared.stats.faults.lock().unwrap().entry(fault).or_insert(0) += 1;
    }
    if config.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(config.latency_ms)).await;
    }
    let error = |status: StatusCode, message: &str| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("retry-after", config.retry_after_secs.to_string())
            .body(Full::new(Bytes::from(json!({"error": {"message": message}}).to_string())))
            .unwrap())
    };
    match fault {
        Some(Fault::Latency) => tokio::time::sleep(Duration::from_millis(config.fault_latency_ms)).await,
        Some(Fault::TooManyRequests) => return error(StatusCode::TOO_MANY_REQUESTS, "rate limited"),
        Some(Fault::InternalError) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        Some(Fault::Unavailable) => return error(StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        Some(Fault::Reset) => return Err(InjectedReset),
        _ => {}
    }
    let completion = completion(config, &request, fault == Some(Fault::Length));
    let mut text = completion.to_string();
    if fault == Some(Fault::TruncatedJson) {
        text.truncate(text.len() / 2);
    } else {
        shared.stats.answered.fetch_add(1, Ordering::Relaxed);
    }
    reply(StatusCode::OK, text)
}

/// The user turn of a chat request.
fn problem_of(request: &Value) -> String {
    request["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn answer_for(config: &ServerConfig, problem: &str) -> String {
    if let Some(answer) = config.answers.iter().find(|(p, _)| problem.contains(p.as_str())).map(|(_, a)| a) {
        return answer.clone();
    }
    // "What is A + B?" is answered right; anything else gets 42.
    let sum = problem.split("What is ").nth(1).and_then(|rest| {
        let (a, rest) = rest.split_once(" + ")?;
        let b: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        Some(a.trim().parse::<i64>().ok()? + b.parse::<i64>().ok()?)
    });
    sum.map(|n| n.to_string()).unwrap_or_else(|| "42".into())
}

/// The scripted answer of [`ServerConfig::seeded_answers`] for this request's seed, if the
/// problem has any: `Some(None)` is a truncated generation.
fn seeded_answer(config: &ServerConfig, problem: &str, request: &Value) -> Option<Option<String>> {
    let (_, answers) = config.seeded_answers.iter().find(|(p, a)| !a.is_empty() && problem.contains(p.as_str()))?;
    let seed = request["seed"].as_i64().unwrap_or(0).rem_euclid(answers.len() as i64);
    Some(answers[seed as usize].clone())
}

/// The reasoning style the server uses for a problem (tests check that all three occur).
pub fn style_for(config: &ServerConfig, problem: &str) -> ReasoningStyle {
    config.style.unwrap_or_else(|| {
        let hash = problem.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        [ReasoningStyle::Reasoning, ReasoningStyle::ReasoningContent, ReasoningStyle::InlineThink][(hash % 3) as usize]
    })
}

/// As a judge model: MATCH when the generated answer contains the correct answer's text.
fn judge_reply(message: &str) -> Option<String> {
    let between = |open: &str, close: &str| {
        let start = message.find(open)? + open.len();
        let end = message[start..].find(close)? + start;
        Some(message[start..end].trim().to_string())
    };
    let correct = between("<CORRECT_ANSWER>", "</CORRECT_ANSWER>")?;
    let generated = between("<GENERATED_ANSWER>", "</GENERATED_ANSWER>")?;
    let (verdict, other) =
        if !correct.is_empty() && generated.contains(&correct) { ("MATCH", "MISMATCH") } else { ("MISMATCH", "MATCH") };
    Some(format!("Comparing the final answers.\n\n**{verdict}**\n\n(not a {other})"))
}

/// A thinking judge's reasoning: it weighs both verdicts and ends on the wrong one, so a client
/// that read the verdict from the reasoning instead of the answer would get it wrong.
fn judge_reasoning(reply: &str) -> String {
    let wrong = if reply.contains("**MATCH**") { "MISMATCH" } else { "MATCH" };
    format!("Is it a MATCH or a MISMATCH? Let me compare the two values... {wrong}")
}

fn completion(config: &ServerConfig, request: &Value, truncated: bool) -> Value {
    let problem = problem_of(request);
    if let Some(reply) = judge_reply(&problem).filter(|_| !truncated) {
        return json!({
            "id": "chatcmpl-judge",
            "object": "chat.completion",
            "created": 0,
            "model": request["model"].as_str().unwrap_or("judge"),
            "choices": [{"index": 0, "message": {"role": "assistant", "reasoning": judge_reasoning(&reply), "content": reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}
        });
    }
    let model = request["model"].as_str().unwrap_or("test-model");
    let seeded = seeded_answer(config, &problem, request);
    let truncated = truncated || seeded == Some(None);
    if config.empty_problems.iter().any(|p| problem.contains(p.as_str())) {
        return json!({
            "id": "chatcmpl-empty", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 0, "total_tokens": 10}
        });
    }
    let words = if config.oversized_problems.iter().any(|p| problem.contains(p.as_str())) {
        500_000
    } else {
        config.reasoning_words
    };
    let reasoning = format!("Let me think about this. {}", "step ".repeat(words));
    let answer =
        format!("The answer is \\boxed{{{}}}.", seeded.flatten().unwrap_or_else(|| answer_for(config, &problem)));
    let reasoning_tokens = config.reasoning_words as u64 + 5;
    let answer_tokens = if truncated { 0 } else { 8 };
    let mut message = json!({"role": "assistant"});
    match (style_for(config, &problem), truncated) {
        (ReasoningStyle::Reasoning, false) => {
            message["reasoning"] = json!(reasoning);
            message["content"] = json!(answer);
        }
        (ReasoningStyle::ReasoningContent, false) => {
            message["reasoning_content"] = json!(reasoning);
            message["content"] = json!(answer);
        }
        (ReasoningStyle::InlineThink, false) => {
            message["content"] = json!(format!("<think>{reasoning}</think>{answer}"))
        }
        (ReasoningStyle::InlineThink, true) => message["content"] = json!(format!("<think>{reasoning}")),
        (_, true) => {
            message["reasoning"] = json!(reasoning);
            message["content"] = Value::Null;
        }
    }
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": if truncated { "length" } else { "stop" }}],
        "usage": {
            "prompt_tokens": problem.split_whitespace().count() + 10,
            "completion_tokens": reasoning_tokens + answer_tokens,
            "total_tokens": problem.split_whitespace().count() as u64 + 10 + reasoning_tokens + answer_tokens,
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens}
        }
    })
}
