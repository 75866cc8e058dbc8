//! Loading a benchmark's problems, with the feeder's reader and row formats (so a benchmark
//! file is read exactly as a question file would be: JSONL or Parquet, local or object
//! store, GSM8K's `#### N` with thousands separators removed).

use crate::config::BenchmarkSource;
use distillery_feeder::read::{spawn_row_reader, RowItem};
use distillery_feeder::rows::question_from_row;
use distillery_runtime::objects;

/// One problem and its ground truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub id: String,
    pub problem: String,
    pub expected_answer: String,
}

/// A benchmark held in memory (MATH-500 is 500 problems; GSM8K 1,319).
#[derive(Debug, Clone)]
pub struct LoadedBenchmark {
    pub name: String,
    pub problems: Vec<Problem>,
}

/// Reads every problem of a benchmark. A row that is not a problem fails the load: a
/// benchmark with holes would make every checkpoint's score incomparable.
pub async fn load(source: &BenchmarkSource) -> anyhow::Result<LoadedBenchmark> {
    let scratch = tempfile::tempdir()?;
    let local = objects::local_copy(&source.file.uri, scratch.path()).await?;
    let mut rows = spawn_row_reader(local, source.file.file_type(), source.file.limit);
    let mut problems = Vec::new();
    while let Some(item) = rows.recv().await {
        match item {
            RowItem::Row { index, row, .. } => {
                let question = row.and_then(|value| question_from_row(&value, &source.file, index)).map_err(|e| {
                    anyhow::anyhow!("benchmark '{}' ({}), row {index}: {e}", source.name, source.file.uri)
                })?;
                problems.push(Problem {
                    id: question.id,
                    problem: question.problem,
                    expected_answer: question.expected_answer,
                });
            }
            RowItem::Failed(e) => anyhow::bail!("benchmark '{}': {e}", source.name),
        }
    }
    if problems.is_empty() {
        anyhow::bail!("benchmark '{}' ({}) has no problems", source.name, source.file.uri);
    }
    Ok(LoadedBenchmark { name: source.name.clone(), problems })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EvaluatorSettings;

    fn repo_root() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    #[tokio::test]
    async fn the_shipped_benchmark_files_load_with_normalised_answers() {
        let table: toml::Table = toml::from_str(&format!(
            r#"
            backend = "in-process"
            benchmarks = [
              {{ name = "gsm8k", uri = "{0}/topology/data/benchmarks/gsm8k/test.jsonl", format = "gsm8k", limit = 60 }},
              {{ name = "aime25", uri = "{0}/topology/data/benchmarks/aime25/test.jsonl", format = "aime", limit = 3 }},
            ]
            "#,
            repo_root().display()
        ))
        .unwrap();
        let settings = EvaluatorSettings::from_table(&table).unwrap();
        let sources = settings.benchmark_sources().unwrap();
        let gsm8k = load(&sources[0]).await.unwrap();
        assert_eq!(gsm8k.problems.len(), 60);
        assert_eq!(gsm8k.problems[0].expected_answer, "18");
        assert!(gsm8k.problems.iter().all(|p| !p.expected_answer.contains(',')));
        let aime = load(&sources[1]).await.unwrap();
        assert_eq!(aime.problems.len(), 3);
        assert_eq!(
            (aime.problems[0].id.as_str(), aime.problems[0].expected_answer.as_str()),
            ("aime25:2025-I-1", "70")
        );
    }
}
