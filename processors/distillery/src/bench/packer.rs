//! `distillery bench packer`: template + tokenize + mask + pack, beside Python's Hugging Face
//! `tokenizers` + jinja2 + TRL's `pack_dataset(strategy="bfd")` on the same traces, and beside
//! offline FFD's fill on the same lengths.

use super::run_python;
use distillery_packer::ffd::{fill_ratio, offline_ffd, OnlinePacker, PackingSettings, Sequence};
use distillery_packer::tekken::tekken_to_tokenizer;
use distillery_packer::template::{assistant_turn, ChatTemplate};
use distillery_packer::tokenize::StudentTokenizer;
use std::path::PathBuf;
use std::time::Instant;

const TEMPLATE: &str = include_str!("../../../packer/templates/nvidia-nemotron-nano-v2.jinja");

/// Traces whose lengths are drawn so that half average about 3.5k tokens (gpt-oss style) and
/// half about 15.5k (DeepSeek-R1 style), as in the paper.
fn traces(n: usize, row_tokens: usize) -> Vec<(String, String)> {
    let mut words = super::ReasoningWords::new(7);
    (0..n)
        .map(|i| {
            let mean = if i % 2 == 0 { 3_500.0 } else { 15_500.0 };
            let z: f64 = (0..6).map(|_| words.below(10_000) as f64 / 10_000.0).sum::<f64>() - 3.0;
            let target = ((mean * (0.7 * z).exp()) as usize).clamp(100, row_tokens * 9 / 10);
            // About 1.25 Tekken tokens per word of this vocabulary.
            let reasoning = words.words((target as f64 / 1.25) as usize);
            let user = format!("Solve the following math problem. Make sure to put the answer (and only answer) inside \\boxed{{}}.\n\nProblem {i}: find x.");
            (user, assistant_turn(Some(&reasoning), Some(&format!("The answer is \\boxed{{{i}}}."))))
        })
        .collect()
}

pub fn run(count: usize, row_tokens: usize, tekken: Option<PathBuf>) -> anyhow::Result<()> {
    let tekken = tekken.unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/distillery-assets/tekken/tekken_240718.json")
    });
    let tokenizer = tekken_to_tokenizer(
        &std::fs::read(&tekken).map_err(|e| anyhow::anyhow!("{}: {e} (run .ci/install-tools)", tekken.display()))?,
    )?;
    let dir = tempfile::tempdir()?;
    let tokenizer_json = dir.path().join("tokenizer.json");
    std::fs::write(&tokenizer_json, tokenizer.to_string(false).map_err(|e| anyhow::anyhow!("{e}"))?)?;
    let student = StudentTokenizer::from_tokenizer(tokenizer, "bench".into());
    let template = ChatTemplate::new(TEMPLATE, "", "<SPECIAL_12>")?;
    let traces = traces(count, row_tokens);

    // Ours: render twice (prompt and full), tokenize with offsets, mask, pack online. Render
    // and tokenize on both cores; packing is one pass.
    let started = Instant::now();
    let halves: Vec<Vec<(String, String)>> = traces.chunks(traces.len().div_ceil(2)).map(|c| c.to_vec()).collect();
    let sequences: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = halves
            .iter()
            .map(|half| {
                let (template, student) = (&template, &student);
                scope.spawn(move || {
                    half.iter()
                        .enumerate()
                        .map(|(i, (user, assistant))| {
                            let rendered = template.render_sample(None, user, assistant)?;
                            student.tokenize(&i.to_string(), &rendered)
                        })
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker")).collect::<anyhow::Result<Vec<_>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    let mut packer = OnlinePacker::new(PackingSettings::new(row_tokens));
    let mut rows = Vec::new();
    let mut lengths = Vec::with_capacity(sequences.len());
    for sequence in sequences {
        let tokens = sequence.input_ids.len().min(row_tokens);
        lengths.push(tokens);
        rows.extend(packer.push(Sequence { tokens, item: () }).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    rows.extend(packer.finish());
    let ours_secs = started.elapsed().as_secs_f64();
    let tokens: usize = lengths.iter().sum();
    let ours_fill = fill_ratio(rows.iter().map(|r| r.tokens), row_tokens);
    let offline_fill = fill_ratio(offline_ffd(&lengths, row_tokens), row_tokens);

    let jsonl = dir.path().join("traces.jsonl");
    let lines: Vec<String> = traces
        .iter()
        .map(|(user, assistant)| serde_json::json!({"user": user, "assistant": assistant}).to_string())
        .collect();
    std::fs::write(&jsonl, lines.join("\n"))?;
    let template_path = dir.path().join("template.jinja");
    std::fs::write(&template_path, TEMPLATE)?;
    let trl = run_python(
        include_str!("../../bench/trl_pack.py"),
        &[
            jsonl.display().to_string(),
            tokenizer_json.display().to_string(),
            template_path.display().to_string(),
            row_tokens.to_string(),
        ],
    )?;
    let trl_secs = trl["seconds"].as_f64().unwrap_or(f64::NAN);
    let trl_tokens = trl["tokens"].as_f64().unwrap_or(0.0);
    let trl_fill = trl["fill"].as_f64().unwrap_or(f64::NAN);

    println!(
        "distillery bench packer: {count} traces (half ~3.5k, half ~15.5k tokens), {tokens} tokens, Tekken tokenizer, Nemotron-Nano-v2 template, rows of {row_tokens}"
    );
    println!("{:<62} {:>12} {:>10}", "", "tokens/s", "fill");
    println!(
        "{:<62} {:>12.0} {:>10.4}",
        "baseline: HF tokenizers + jinja2 + TRL pack_dataset(bfd), Python",
        trl_tokens / trl_secs,
        trl_fill
    );
    println!("{:<62} {:>12} {:>10.4}", "offline first-fit-decreasing on the same lengths", "-", offline_fill);
    println!(
        "{:<62} {:>12.0} {:>10.4}",
        "distillery: template + tokenize + mask + online FFD",
        tokens as f64 / ours_secs,
        ours_fill
    );
    println!(
        "ratio distillery / TRL throughput: {:.1}x; fill {:+.2} points against offline FFD, {:+.2} against TRL",
        (tokens as f64 / ours_secs) / (trl_tokens / trl_secs),
        100.0 * (ours_fill - offline_fill),
        100.0 * (ours_fill - trl_fill)
    );
    Ok(())
}
