//! The client against the real (local) fault-injecting server over HTTP.

use distillery_llm_test_server::{Fault, LlmServer, ServerConfig};
use distillery_openai::{ChatClient, ChatRequest, ClientSettings, LlmError};

fn settings(endpoints: Vec<String>) -> ClientSettings {
    serde_json::from_value(serde_json::json!({
        "endpoints": endpoints,
        "retry_attempts": 12,
        "retry_min_delay_ms": 1,
        "retry_max_delay_ms": 20,
        "request_timeout_secs": 5,
    }))
    .unwrap()
}

fn request(problem: &str) -> ChatRequest {
    ChatRequest {
        model: "test-model".into(),
        system_prompt: None,
        user: problem.into(),
        temperature: 1.0,
        top_p: 1.0,
        max_tokens: 1000,
        reasoning_effort: Some("high".into()),
        seed: None,
    }
}

#[tokio::test]
async fn answers_survive_every_fault_kind() {
    let server = LlmServer::start(ServerConfig {
        fault_rate: 0.5,
        faults: vec![Fault::InternalError, Fault::Unavailable, Fault::Reset, Fault::TruncatedJson, Fault::Latency],
        fault_latency_ms: 10,
        retry_after_secs: 0,
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let client = ChatClient::new("t", settings(vec![server.base_url()])).unwrap();
    for i in 0..60 {
        let completion = client.complete(&request(&format!("What is {i} + 1?"))).await.unwrap();
        assert_eq!(completion.answer.as_deref(), Some(format!("The answer is \\boxed{{{}}}.", i + 1).as_str()));
        assert!(completion.reasoning.as_deref().unwrap().starts_with("Let me think"));
        assert_eq!(completion.finish_reason, "stop");
        assert!(completion.completion_tokens > 0);
    }
    let faults = server.stats.faults();
    for kind in [Fault::InternalError, Fault::Unavailable, Fault::Reset, Fault::TruncatedJson] {
        assert!(faults.get(&kind).copied().unwrap_or(0) > 0, "{kind:?} was injected: {faults:?}");
    }
}

#[tokio::test]
async fn truncated_generations_are_results_and_client_errors_are_permanent() {
    let server =
        LlmServer::start(ServerConfig { fault_rate: 1.0, faults: vec![Fault::Length], ..ServerConfig::default() })
            .await
            .unwrap();
    let client = ChatClient::new("t", settings(vec![server.base_url()])).unwrap();
    let completion = client.complete(&request("long one")).await.unwrap();
    assert_eq!(completion.finish_reason, "length");
    assert_eq!(completion.answer, None);

    // A 404 (wrong base URL) is not retried.
    let wrong = ChatClient::new("t", settings(vec![format!("http://{}/wrong", server.addr)])).unwrap();
    let before = server.stats.requests.load(std::sync::atomic::Ordering::Relaxed);
    let err = wrong.complete(&request("x")).await.unwrap_err();
    assert!(matches!(&err, LlmError::Permanent(m) if m.contains("404")), "{err}");
    assert_eq!(server.stats.requests.load(std::sync::atomic::Ordering::Relaxed), before + 1);
}

#[tokio::test]
async fn a_dead_server_exhausts_the_budget_with_a_clear_error_and_rotation_avoids_it() {
    let server = LlmServer::start(ServerConfig::default()).await.unwrap();
    server.set_down(true);
    let client = ChatClient::new("t", settings(vec![server.base_url()])).unwrap();
    let err = client.complete(&request("x")).await.unwrap_err().to_string();
    assert!(err.starts_with("gave up after 12 attempts; last error:"), "{err}");

    let healthy = LlmServer::start(ServerConfig::default()).await.unwrap();
    let both = ChatClient::new("t", settings(vec![server.base_url(), healthy.base_url()])).unwrap();
    for _ in 0..10 {
        both.complete(&request("What is 1 plus 1?")).await.unwrap();
    }
}

#[tokio::test]
async fn oversized_responses_are_refused_and_the_key_is_sent_but_never_shown() {
    let server = LlmServer::start(ServerConfig { reasoning_words: 500_000, ..ServerConfig::default() }).await.unwrap();
    std::env::set_var("DISTILLERY_TEST_KEY", "sk-planted-secret");
    let mut s = settings(vec![server.base_url()]);
    s.api_key_env = Some("DISTILLERY_TEST_KEY".into());
    let client = ChatClient::new("t", s).unwrap();
    let err = client.complete(&request("x")).await.unwrap_err().to_string();
    assert!(err.contains("exceeds max_response_bytes (1048576)"), "{err}");
    assert!(!err.contains("sk-planted-secret") && !format!("{client:?}").contains("sk-planted-secret"));
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = LlmServer::start(ServerConfig {
        fault_rate: 0.5,
        faults: vec![Fault::TooManyRequests],
        retry_after_secs: 1,
        seed: 3,
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let client = ChatClient::new("t", settings(vec![server.base_url()])).unwrap();
    let started = std::time::Instant::now();
    for i in 0..4 {
        client.complete(&request(&format!("q{i}"))).await.unwrap();
    }
    let told_to_wait = server.stats.faults().get(&Fault::TooManyRequests).copied().unwrap_or(0);
    assert!(told_to_wait > 0, "the seed injects at least one 429");
    assert!(started.elapsed().as_secs_f64() >= told_to_wait as f64, "each 429 waited its Retry-After of 1 s");
}

#[tokio::test]
async fn a_server_that_echoes_the_key_never_gets_it_into_an_error() {
    let key = "sk-planted-SECRET-echo-123";
    let server = LlmServer::start(ServerConfig {
        api_key: Some(key.into()),
        echo_credentials_problems: vec!["ECHO".into()],
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    std::env::set_var("DISTILLERY_TEST_ECHO_KEY", key);
    let mut s = settings(vec![server.base_url()]);
    s.api_key_env = Some("DISTILLERY_TEST_ECHO_KEY".into());
    assert!(!format!("{s:?}").contains(key), "settings hold the variable's name, not the key");
    let client = ChatClient::new("t", s).unwrap();
    assert!(!format!("{client:?}").contains(key));
    // The key is sent: the server answers.
    client.complete(&request("What is 1 + 1?")).await.unwrap();
    // The server quotes the Authorization header back in a 400: redacted.
    let err = client.complete(&request("please ECHO")).await.unwrap_err().to_string();
    assert!(err.contains("HTTP 400") && err.contains("Bearer [redacted]"), "{err}");
    assert!(!err.contains(key) && !err.contains("SECRET"), "{err}");
    // Without the key: a permanent 401 that does not name one either.
    let anonymous = ChatClient::new("t", settings(vec![server.base_url()])).unwrap();
    let err = anonymous.complete(&request("What is 1 + 1?")).await.unwrap_err().to_string();
    assert!(err.contains("401") && !err.contains(key), "{err}");
    assert_eq!(server.stats.unauthorized.load(std::sync::atomic::Ordering::Relaxed), 1);
}
