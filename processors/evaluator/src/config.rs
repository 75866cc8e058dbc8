//! Settings of an `evaluator` processor (`[processors.NAME.settings]`).
//!
//! ```toml
//! [processors.evaluator.settings]
//! benchmarks = ["gsm8k", "aime25", "math500"]      # files under data_dir, see `Benchmark`
//! data_dir = "s3://datasets/benchmarks"
//! backend = "server"
//! model = "{checkpoint_uri}"
//! server = { endpoints = ["http://vllm-eval-{style}:8000/v1"] }
//! # Optional: ask an LLM judge about what the rule verifier cannot decide (UNSURE), with the
//! # judge processor's settings (model, server, prompt_file, temperature, top_p, max_tokens,
//! # verdict_attempts).
//! llm_judge = { model = "Qwen/Qwen3-30B-A3B-Thinking-2507", server = { endpoints = ["http://vllm-judge:8000/v1"] } }
//! ```
//!
//! Or with one server started per checkpoint (see `server_command`):
//!
//! ```toml
//! [processors.evaluator.settings]
//! benchmarks = ["gsm8k", "aime25", "math500"]
//! data_dir = "s3://datasets/benchmarks"
//! server_command = "vllm serve {checkpoint_dir} --port {port} --served-model-name student"
//! model = "student"
//! server = { endpoints = ["http://127.0.0.1:{port}/v1"] }   # this is also the default
//! server_startup_timeout_secs = 1200
//! ```

use distillery_feeder::{DatasetFile, FileType, RowFormat};
use distillery_judge::JudgeSettings;
use distillery_openai::ClientSettings;
use distillery_schemas::CheckpointEvent;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorSettings {
    /// The benchmarks run on each evaluated checkpoint, one eval-result record each.
    pub benchmarks: Vec<Benchmark>,
    /// Folder (local path or object-store URL) holding the benchmarks given by name, laid out
    /// as `{data_dir}/gsm8k/test.jsonl`, `{data_dir}/math500/test.jsonl`,
    /// `{data_dir}/aime25/test.jsonl` (the layout of `topology/data/benchmarks/`, which ships the three).
    #[serde(default)]
    pub data_dir: Option<String>,
    /// Evaluate only the first N problems of every benchmark (a benchmark's own `limit` wins).
    #[serde(default)]
    pub limit: Option<u64>,
    /// Evaluate checkpoints whose step is a multiple of this (0: every checkpoint). Final
    /// checkpoints are always evaluated. Decided from the step alone, not from a count of
    /// checkpoints seen, so a restarted or replayed evaluator picks the same checkpoints.
    #[serde(default)]
    pub every_steps: u64,
    /// Generations per problem (n of pass@k; k = 1..n).
    #[serde(default = "default_samples_per_problem")]
    pub samples_per_problem: u32,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// Room for reasoning plus answer; a generation that reaches it counts as truncated.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Sample j of a problem is generated with seed `seed + j`: an evaluation can be repeated.
    #[serde(default)]
    pub seed: i64,
    /// Text around the problem; `{problem}` marks where it goes. The samplers' default: the
    /// answer is asked for inside `\boxed{}`.
    #[serde(default = "default_prompt_template")]
    pub prompt_template: String,
    /// System prompt; none by default.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Where generations come from.
    #[serde(default)]
    pub backend: BackendKind,
    /// `backend = "server"`: model name sent to the server. Placeholders (also allowed in
    /// `server.endpoints`): `{run}`, `{style}`, `{step}`, `{checkpoint_id}`, `{checkpoint_uri}`,
    /// and with `server_command` also `{port}` and `{checkpoint_dir}`.
    /// The default, `{checkpoint_uri}`, is the name vLLM serves a model under when started
    /// as `vllm serve <checkpoint uri>` (with `server_command = "vllm serve {checkpoint_dir}
    /// ..."` that name is `{checkpoint_dir}`, or whatever `--served-model-name` says).
    #[serde(default = "default_model")]
    pub model: String,
    /// `backend = "server"`: the OpenAI-compatible servers serving the checkpoint (retries,
    /// concurrency and time-outs as for the samplers). Endpoints may use the placeholders
    /// above, e.g. `"http://eval-{style}:8000/v1"` when one server per style reloads each
    /// new checkpoint. With `server_command` it defaults to
    /// `{ endpoints = ["http://127.0.0.1:{port}/v1"] }`.
    #[serde(default)]
    pub server: Option<ClientSettings>,
    /// `backend = "server"`: start the server for each evaluated checkpoint with this command,
    /// e.g. `"vllm serve {checkpoint_dir} --port {port} --served-model-name student"`. The
    /// evaluator starts it (split into words as a shell would, but run without a shell, in a
    /// process group of its own, output into the evaluator's), waits until `server_ready_url`
    /// answers 200, runs every benchmark against `server.endpoints`, and stops it afterwards,
    /// also when the evaluation fails: SIGTERM to its process group, SIGKILL after
    /// `server_stop_timeout_secs`. Placeholders: those of `model`, plus `{port}` (a free
    /// loopback port picked per checkpoint) and `{checkpoint_dir}` (a local folder holding the
    /// checkpoint: its path when the checkpoint is local, else a copy of its files downloaded
    /// into `server_scratch_dir` first and deleted after the server stops; only made when
    /// some setting uses `{checkpoint_dir}`). Each evaluated checkpoint starts its own server:
    /// with one GPU, keep the evaluator at `max_in_flight = 1`.
    #[serde(default)]
    pub server_command: Option<String>,
    /// With `server_command`: the URL polled (GET, the API key of `server.api_key_env` if any)
    /// until it answers 200. Placeholders as for `server_command`, plus `{base_url}` (the first
    /// endpoint). Default `"{base_url}/models"`.
    #[serde(default)]
    pub server_ready_url: Option<String>,
    /// With `server_command`: how long the server may take to answer `server_ready_url`
    /// (loading a large model takes minutes). A server that is not ready in time is stopped
    /// and the checkpoint retried later; one whose command exits before it is ready fails the
    /// checkpoint (dead letter).
    #[serde(default = "default_server_startup_timeout_secs")]
    pub server_startup_timeout_secs: u64,
    /// With `server_command`: how long the server may take to exit after SIGTERM before its
    /// process group gets SIGKILL.
    #[serde(default = "default_server_stop_timeout_secs")]
    pub server_stop_timeout_secs: u64,
    /// With `server_command` and a checkpoint in an object store: where its local copy for
    /// `{checkpoint_dir}` goes (the system's temporary folder by default).
    #[serde(default)]
    pub server_scratch_dir: Option<String>,
    /// An LLM judge for the answers the rule verifier cannot decide (UNSURE), with the judge
    /// processor's settings and code: `model`, `server` (required), `prompt_file`,
    /// `temperature`, `top_p`, `max_tokens`, `verdict_attempts` (no `mode`: the rule verifier
    /// always goes first). Its MATCH counts as correct, its MISMATCH (and a reply without a
    /// verdict) as not; a judge that cannot be reached fails the checkpoint rather than
    /// scoring it. Without it, UNSURE counts as not correct. The number of answers the LLM
    /// judge decided is logged with each result and counted in
    /// `distillery_evaluator_llm_judged_total{verdict}` (the eval-result schema has no field
    /// for it).
    #[serde(default)]
    pub llm_judge: Option<JudgeSettings>,
    /// Problems generated at once (each with `samples_per_problem` requests); the client's
    /// adaptive limit caps the requests actually in flight.
    #[serde(default = "default_concurrent_problems")]
    pub concurrent_problems: usize,
    /// Headline metrics logged for each result, e.g. `["pass@8", "avg_generated_tokens"]`
    /// (`pass@K`, `maj@K` with K <= samples_per_problem, `avg_generated_tokens`,
    /// `truncated_share`). Every record carries all of them regardless.
    #[serde(default = "default_metrics")]
    pub metrics: Vec<String>,
}

/// Where generations come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// An OpenAI-compatible server (vLLM, SGLang, NIM) serving the checkpoint.
    #[default]
    Server,
    /// The trainer's candle model, loaded from the checkpoint's files in this process.
    InProcess,
}

/// One benchmark: a well-known name (its file under `data_dir`), or a file described as in
/// the feeder's `files` plus a `name`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Benchmark {
    /// "gsm8k", "math500" or "aime25".
    Named(String),
    File(BenchmarkFile),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkFile {
    /// Benchmark name on the eval-result records ("gsm8k", "math500", "aime25", ...).
    pub name: String,
    /// Local path, `file://` URL, or `s3://bucket/key`.
    pub uri: String,
    /// How rows map to problems: nemotron, gsm8k (`#### N`, commas removed), math500,
    /// aime, or fields (with `problem_field` and `answer_field`).
    pub format: RowFormat,
    /// "jsonl", "parquet", or absent to decide by the file extension.
    #[serde(default)]
    pub file_type: Option<FileType>,
    #[serde(default)]
    pub problem_field: Option<String>,
    #[serde(default)]
    pub answer_field: Option<String>,
    #[serde(default)]
    pub id_field: Option<String>,
    /// Only the first N problems (overrides the evaluator's `limit`).
    #[serde(default)]
    pub limit: Option<u64>,
}

/// The benchmarks known by name: (name, format, path under `data_dir`).
pub const KNOWN_BENCHMARKS: &[(&str, RowFormat, &str)] = &[
    ("gsm8k", RowFormat::Gsm8k, "gsm8k/test.jsonl"),
    ("math500", RowFormat::Math500, "math500/test.jsonl"),
    ("aime25", RowFormat::Aime, "aime25/test.jsonl"),
];

fn default_samples_per_problem() -> u32 {
    8
}
fn default_temperature() -> f64 {
    0.6
}
fn default_top_p() -> f64 {
    0.95
}
fn default_max_tokens() -> u32 {
    32_768
}
fn default_prompt_template() -> String {
    distillery_sampler::config::DEFAULT_PROMPT_TEMPLATE.into()
}
fn default_model() -> String {
    "{checkpoint_uri}".into()
}
fn default_server_startup_timeout_secs() -> u64 {
    900
}
fn default_server_stop_timeout_secs() -> u64 {
    30
}
fn default_concurrent_problems() -> usize {
    64
}
fn default_metrics() -> Vec<String> {
    vec!["pass@1".into(), "avg_generated_tokens".into()]
}

/// A benchmark resolved to a file: its name and the feeder's description of the file.
#[derive(Debug, Clone)]
pub struct BenchmarkSource {
    pub name: String,
    pub file: DatasetFile,
}

impl EvaluatorSettings {
    pub fn from_table(table: &toml::Table) -> Result<Self, String> {
        let mut s: EvaluatorSettings = table.clone().try_into().map_err(|e: toml::de::Error| e.to_string())?;
        if s.benchmarks.is_empty() {
            return Err("`benchmarks` lists no benchmark".into());
        }
        let sources = s.benchmark_sources()?;
        let mut names: Vec<&str> = sources.iter().map(|b| b.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("benchmark '{}' is listed twice", w[0]));
        }
        if s.samples_per_problem == 0 {
            return Err("samples_per_problem must be at least 1".into());
        }
        if !(0.0..=2.0).contains(&s.temperature) || !(0.0..=1.0).contains(&s.top_p) {
            return Err("temperature must be in 0..=2 and top_p in 0..=1".into());
        }
        if s.max_tokens == 0 || s.max_tokens > i32::MAX as u32 {
            return Err("max_tokens must be at least 1".into());
        }
        if !s.prompt_template.contains("{problem}") {
            return Err("prompt_template must contain {problem}".into());
        }
        if s.concurrent_problems == 0 {
            return Err("concurrent_problems must be at least 1".into());
        }
        if let Some(command) = &s.server_command {
            if s.backend != BackendKind::Server {
                return Err("server_command needs backend = \"server\"".into());
            }
            match shlex::split(command) {
                Some(words) if !words.is_empty() => {}
                _ => return Err(format!("server_command '{command}' is not a command (empty, or unbalanced quotes)")),
            }
            if s.server_startup_timeout_secs == 0 {
                return Err("server_startup_timeout_secs must be at least 1".into());
            }
            if s.server.is_none() {
                s.server = Some(default_launched_server());
            }
        } else {
            let server_only = ["server_ready_url", "server_scratch_dir"];
            if let Some(key) = server_only.iter().find(|k| table.contains_key(**k)) {
                return Err(format!("{key} needs server_command"));
            }
            let templates = s.server.iter().flat_map(|c| c.endpoints.iter()).chain([&s.model]);
            for template in templates {
                if template.contains("{port}") || template.contains("{checkpoint_dir}") {
                    return Err(format!("'{template}': {{port}} and {{checkpoint_dir}} need server_command"));
                }
            }
        }
        if s.llm_judge.is_some() {
            // The judge processor's own checks (a server, verdict_attempts >= 1).
            let judge_table = table.get("llm_judge").and_then(toml::Value::as_table).cloned().unwrap_or_default();
            JudgeSettings::from_table(&judge_table).map_err(|e| format!("llm_judge: {e}"))?;
            if judge_table.contains_key("mode") {
                return Err(
                    "llm_judge takes no `mode`: the evaluator asks it only what the rule verifier cannot decide".into(),
                );
            }
        }
        match (s.backend, &s.server) {
            (BackendKind::Server, None) => {
                return Err("backend \"server\" needs `server` (endpoints of the server serving the checkpoints)".into())
            }
            (BackendKind::Server, Some(server)) if server.endpoints.is_empty() => {
                return Err("server.endpoints lists no server".into())
            }
            (BackendKind::InProcess, Some(_)) => return Err("backend \"in-process\" takes no `server`".into()),
            _ => {}
        }
        for metric in &s.metrics {
            check_metric(metric, s.samples_per_problem)?;
        }
        Ok(s)
    }

    /// Every benchmark as a file to read.
    pub fn benchmark_sources(&self) -> Result<Vec<BenchmarkSource>, String> {
        self.benchmarks
            .iter()
            .map(|b| match b {
                Benchmark::Named(name) => {
                    let (_, format, path) = KNOWN_BENCHMARKS.iter().find(|(n, _, _)| n == name).ok_or_else(|| {
                        let known: Vec<_> = KNOWN_BENCHMARKS.iter().map(|(n, _, _)| *n).collect();
                        format!(
                            "unknown benchmark '{name}' (known by name: {}; describe others as {{ name, uri, format }})",
                            known.join(", ")
                        )
                    })?;
                    let dir = self.data_dir.as_deref().ok_or_else(|| {
                        format!("benchmark '{name}' is given by name: set `data_dir`, the folder holding {path}")
                    })?;
                    Ok(BenchmarkSource {
                        name: name.clone(),
                        file: dataset_file(format!("{}/{path}", dir.trim_end_matches('/')), *format, name, self.limit),
                    })
                }
                Benchmark::File(f) => {
                    if f.format == RowFormat::Fields && (f.problem_field.is_none() || f.answer_field.is_none()) {
                        return Err(format!("benchmark '{}': format \"fields\" needs problem_field and answer_field", f.name));
                    }
                    let mut file = dataset_file(f.uri.clone(), f.format, &f.name, f.limit.or(self.limit));
                    file.file_type = f.file_type;
                    file.problem_field = f.problem_field.clone();
                    file.answer_field = f.answer_field.clone();
                    file.id_field = f.id_field.clone();
                    Ok(BenchmarkSource { name: f.name.clone(), file })
                }
            })
            .collect()
    }

    /// The user message for a problem.
    pub fn prompt(&self, problem: &str) -> String {
        self.prompt_template.replace("{problem}", problem)
    }

    /// Whether a checkpoint is evaluated at all.
    pub fn evaluates(&self, checkpoint: &CheckpointEvent) -> bool {
        checkpoint.is_final || self.every_steps == 0 || checkpoint.step.rem_euclid(self.every_steps as i64) == 0
    }
}

fn dataset_file(uri: String, format: RowFormat, name: &str, limit: Option<u64>) -> DatasetFile {
    DatasetFile {
        uri,
        format,
        dataset: Some(name.to_string()),
        file_type: None,
        problem_field: None,
        answer_field: None,
        id_field: None,
        limit,
    }
}

/// `pass@K`, `maj@K` (K in 1..=n), `avg_generated_tokens`, `truncated_share`.
fn check_metric(metric: &str, n: u32) -> Result<(), String> {
    if metric == "avg_generated_tokens" || metric == "truncated_share" {
        return Ok(());
    }
    let k = metric.strip_prefix("pass@").or_else(|| metric.strip_prefix("maj@")).and_then(|k| k.parse::<u32>().ok());
    match k {
        Some(k) if (1..=n).contains(&k) => Ok(()),
        Some(k) => Err(format!("metric '{metric}': k = {k} is not in 1..={n} (samples_per_problem)")),
        None => Err(format!("unknown metric '{metric}' (pass@K, maj@K, avg_generated_tokens, truncated_share)")),
    }
}

/// The client settings of a server started by `server_command` when `server` is not given.
fn default_launched_server() -> ClientSettings {
    let mut table = toml::Table::new();
    table.insert("endpoints".into(), toml::Value::Array(vec!["http://127.0.0.1:{port}/v1".into()]));
    table.try_into().expect("the default client settings parse")
}

/// `{run}`, `{style}`, `{step}`, `{checkpoint_id}` and `{checkpoint_uri}` replaced by the
/// checkpoint's values.
pub fn substitute(template: &str, checkpoint: &CheckpointEvent) -> String {
    substitute_with(template, checkpoint, &[])
}

/// [`substitute`], and every `{name}` of `extra` replaced by its value. One pass: a value is
/// never searched for placeholders itself; unknown `{...}` stay as they are.
pub fn substitute_with(template: &str, checkpoint: &CheckpointEvent, extra: &[(&str, &str)]) -> String {
    let step = checkpoint.step.to_string();
    let known: [(&str, &str); 5] = [
        ("run", &checkpoint.run),
        ("style", &checkpoint.style),
        ("step", &step),
        ("checkpoint_id", &checkpoint.id),
        ("checkpoint_uri", &checkpoint.uri),
    ];
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after.find('}').and_then(|close| {
            let name = &after[..close];
            known.iter().chain(extra).find(|(n, _)| *n == name).map(|(_, v)| (*v, close))
        });
        match value {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<EvaluatorSettings, String> {
        EvaluatorSettings::from_table(&toml::from_str(text).unwrap())
    }

    #[test]
    fn the_documented_example_parses_with_the_papers_defaults() {
        let s = parse(
            r#"
            benchmarks = ["gsm8k", "aime25", "math500", { name = "mine", uri = "m.parquet", format = "fields", problem_field = "q", answer_field = "a", limit = 5 }]
            data_dir = "s3://datasets/benchmarks/"
            limit = 100
            model = "{checkpoint_uri}"
            server = { endpoints = ["http://eval-{style}:8000/v1"] }
            metrics = ["pass@8", "avg_generated_tokens"]
            "#,
        )
        .unwrap();
        assert_eq!((s.samples_per_problem, s.temperature, s.top_p, s.max_tokens), (8, 0.6, 0.95, 32_768));
        assert!(s.prompt("P").contains("\\boxed{}") && s.prompt("P").ends_with("P"));
        let sources = s.benchmark_sources().unwrap();
        assert_eq!(sources[0].file.uri, "s3://datasets/benchmarks/gsm8k/test.jsonl");
        assert_eq!(sources[0].file.format, RowFormat::Gsm8k);
        assert_eq!(sources[0].file.limit, Some(100));
        assert_eq!(sources[2].file.format, RowFormat::Math500);
        assert_eq!((sources[3].name.as_str(), sources[3].file.limit), ("mine", Some(5)));
        assert_eq!(sources[3].file.file_type(), FileType::Parquet);
    }

    #[test]
    fn mistakes_are_refused_with_the_reason() {
        let server = r#"server = { endpoints = ["http://e/v1"] }"#;
        let cases = [
            ("benchmarks = [\"gsm8k\"]\n".to_string() + server, "data_dir"),
            (format!("benchmarks = [\"mmlu\"]\ndata_dir = \"d\"\n{server}"), "unknown benchmark 'mmlu'"),
            ("benchmarks = [\"gsm8k\"]\ndata_dir = \"d\"".to_string(), "needs `server`"),
            (format!("benchmarks = [\"gsm8k\", \"gsm8k\"]\ndata_dir = \"d\"\n{server}"), "listed twice"),
            (format!("benchmarks = [\"gsm8k\"]\ndata_dir = \"d\"\nmetrics = [\"pass@16\"]\n{server}"), "not in 1..=8"),
            (format!("benchmarks = [\"gsm8k\"]\ndata_dir = \"d\"\nprompt_template = \"x\"\n{server}"), "{problem}"),
            (format!("benchmarks = [\"gsm8k\"]\ndata_dir = \"d\"\nbackend = \"in-process\"\n{server}"), "takes no"),
            (format!("benchmarks = []\n{server}"), "no benchmark"),
            // server_command and its settings.
            ("benchmarks = [\"gsm8k\"]\ndata_dir = \"d\"\nbackend = \"in-process\"\nserver_command = \"vllm serve\"".into(), "needs backend"),
            (format!("benchmarks = [\"gsm8k\"]\ndata_dir = \"d\"\nserver_command = \"vllm 'serve\"\n{server}"), "unbalanced"),
            (format!("benchmarks = [\"gsm8k\"]\ndata_dir = \"d\"\nserver_ready_url = \"http://x\"\n{server}"), "server_ready_url needs server_command"),
            (
                "benchmarks = [\"gsm8k\"]\ndata_dir = \"d\"\nserver = { endpoints = [\"http://127.0.0.1:{port}/v1\"] }".into(),
                "{port} and {checkpoint_dir} need server_command",
            ),
            // llm_judge: the judge processor's checks, and no `mode`.
            (format!("benchmarks = [\"gsm8k\"]\ndata_dir = \"d\"\nllm_judge = {{ model = \"j\" }}\n{server}"), "llm_judge: the LLM judge needs `server`"),
            (format!("benchmarks = [\"gsm8k\"]\ndata_dir = \"d\"\nllm_judge = {{ mode = \"llm-only\", {server} }}\n{server}"), "takes no `mode`"),
            (format!("benchmarks = [\"gsm8k\"]\ndata_dir = \"d\"\nllm_judge = {{ verdict_attempts = 0, {server} }}\n{server}"), "verdict_attempts"),
            (format!("benchmarks = [\"gsm8k\"]\ndata_dir = \"d\"\nllm_judge = {{ modle = \"j\", {server} }}\n{server}"), "unknown field `modle`"),
        ];
        for (text, expected) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
        assert!(parse("benchmarks = [\"gsm8k\"]\ndata_dir = \"d\"\nbackend = \"in-process\"").is_ok());
    }

    #[test]
    fn server_command_defaults_to_a_loopback_endpoint_on_its_port() {
        let s = parse(
            "benchmarks = [\"gsm8k\"]\ndata_dir = \"d\"\nserver_command = \"vllm serve {checkpoint_dir} --port {port}\"",
        )
        .unwrap();
        assert_eq!(s.server.unwrap().endpoints, ["http://127.0.0.1:{port}/v1"]);
        assert_eq!((s.server_startup_timeout_secs, s.server_stop_timeout_secs), (900, 30));
        assert!(s.server_ready_url.is_none() && s.llm_judge.is_none());
        let s = parse(&format!(
            "benchmarks = [\"gsm8k\"]\ndata_dir = \"d\"\nserver = {{ endpoints = [\"http://e/v1\"] }}\n{}",
            "llm_judge = { model = \"j\", max_tokens = 100, server = { endpoints = [\"http://judge/v1\"] } }"
        ))
        .unwrap();
        let judge = s.llm_judge.unwrap();
        assert_eq!((judge.model.as_str(), judge.max_tokens, judge.verdict_attempts), ("j", 100, 3));
    }

    #[test]
    fn placeholders_are_filled_in_one_pass() {
        let c = CheckpointEvent {
            id: "r@7".into(),
            run: "r".into(),
            style: "{port}".into(),
            step: 7,
            uri: "s3://b/k".into(),
            consumed: vec![],
            shards_consumed: 0,
            tokens_seen: 0,
            is_final: false,
            created_at_ms: 0,
        };
        assert_eq!(
            substitute_with(
                "{checkpoint_dir}:{port} {style} {unknown} {step",
                &c,
                &[("port", "80"), ("checkpoint_dir", "/tmp/x")]
            ),
            "/tmp/x:80 {port} {unknown} {step"
        );
    }

    #[test]
    fn every_steps_picks_checkpoints_by_step_and_always_the_final_one() {
        let s =
            parse("benchmarks = [\"gsm8k\"]\ndata_dir = \"d\"\nbackend = \"in-process\"\nevery_steps = 500").unwrap();
        let at = |step, is_final| CheckpointEvent {
            id: format!("r@{step}"),
            run: "r".into(),
            style: "s".into(),
            step,
            uri: "u".into(),
            consumed: vec![],
            shards_consumed: 0,
            tokens_seen: 0,
            is_final,
            created_at_ms: 0,
        };
        assert!(s.evaluates(&at(1000, false)));
        assert!(!s.evaluates(&at(1200, false)));
        assert!(s.evaluates(&at(1234, true)));
        assert_eq!(
            substitute("http://{style}/{step}/{run}/{checkpoint_id}/{checkpoint_uri}", &at(7, false)),
            "http://s/7/r/r@7/u"
        );
    }
}
