//! `llm-test-server`: the fault-injecting OpenAI-compatible server as a standalone process
//! (for benchmarks against other clients, and for trying the pipeline without GPUs).

use clap::Parser;
use distillery_llm_test_server::{Fault, LlmServer, ServerConfig};

#[derive(Parser)]
#[command(about = "Local OpenAI-compatible chat-completions server with fault injection")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: std::net::SocketAddr,
    /// Share of requests that get a fault (0..1).
    #[arg(long, default_value_t = 0.0)]
    fault_rate: f64,
    /// Latency of every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    #[arg(long, default_value_t = 40)]
    reasoning_words: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = ServerConfig {
        fault_rate: args.fault_rate,
        faults: Fault::ALL.to_vec(),
        latency_ms: args.latency_ms,
        reasoning_words: args.reasoning_words,
        ..ServerConfig::default()
    };
    let server = LlmServer::start_on(args.listen, config).await?;
    println!("serving {}", server.base_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
