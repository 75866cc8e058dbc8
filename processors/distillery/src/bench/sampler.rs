//! `distillery bench sampler`: the samplers' HTTP client against the `openai` Python client.

use super::run_python;
use distillery_llm_test_server::{LlmServer, ServerConfig};
use distillery_openai::{ChatClient, ChatRequest, ClientSettings};
use futures::stream::{self, StreamExt};
use std::time::Instant;

pub async fn run(requests: usize, python_requests: usize, concurrency: usize) -> anyhow::Result<()> {
    let server = LlmServer::start(ServerConfig::default()).await?;
    let settings: ClientSettings = serde_json::from_value(serde_json::json!({
        "endpoints": [server.base_url()],
        "concurrency_initial": concurrency,
        "concurrency_min": concurrency,
        "concurrency_max": concurrency,
        "retry_attempts": 1,
    }))?;
    let client = ChatClient::new("bench", settings).map_err(anyhow::Error::msg)?;
    let request = |i: usize| ChatRequest {
        model: "test-model".into(),
        system_prompt: None,
        user: format!("What is {i} + 1?"),
        temperature: 0.6,
        top_p: 0.95,
        max_tokens: 1024,
        reasoning_effort: None,
        seed: None,
    };
    client.complete(&request(0)).await?; // warm-up: connection set-up is not timed
    let started = Instant::now();
    let results: Vec<_> = stream::iter(0..requests)
        .map(|i| {
            let (client, request) = (&client, request(i));
            async move { client.complete(&request).await }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let ours = started.elapsed().as_secs_f64();
    let failed = results.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(failed == 0, "{failed} requests failed");
    let ours_rate = requests as f64 / ours;

    let python = run_python(
        include_str!("../../bench/openai_client.py"),
        &[server.base_url(), python_requests.to_string(), concurrency.to_string()],
    )?;
    let python_rate = python["requests"].as_f64().unwrap_or(0.0) / python["seconds"].as_f64().unwrap_or(f64::NAN);

    println!("distillery bench sampler: chat completions against the local OpenAI-compatible server (zero latency, in this process), {concurrency} in flight");
    println!("{:<52} {:>10} {:>10}", "", "requests", "req/s");
    println!("{:<52} {:>10} {:>10.0}", "baseline: openai Python client (asyncio)", python_requests, python_rate);
    println!("{:<52} {:>10} {:>10.0}", "distillery sampler client (reqwest, AIMD, retries)", requests, ours_rate);
    println!("ratio distillery / openai-python: {:.1}", ours_rate / python_rate);
    Ok(())
}
