//! The feeder: reads question datasets (JSONL or Parquet, from a path or an object-store URL)
//! and publishes one question record per row on its `questions` port.
//!
//! - Ids are deterministic (`rows`), and before publishing the feeder reads the ids already
//!   on its output topic (and in the dead letters), so a re-run or a restart after a kill
//!   publishes nothing twice: the topic itself is the resume position.
//! - Rows with no problem or no answer, unparsable lines and invalid UTF-8 go to the
//!   dead-letter topic with the reason and the original row.
//! - A rate limit paces publishing for teachers that bill per request.

pub mod config;
mod pyliteral;
pub mod read;
pub mod rows;

pub use config::{DatasetFile, FeederSettings, FileType, RowFormat};

use distillery_runtime::publisher::{dead_letter_id, FailedInput, Publisher, HEADER_ID};
use distillery_runtime::reader::read_to_end;
use distillery_runtime::source::source_publisher;
use distillery_runtime::topology::DEAD_LETTERS;
use distillery_runtime::{objects, Emit, PortSpec, ProcessorRun};
use distillery_schemas::{ErrorClass, RecordKind};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The feeder's one output port.
pub const OUTPUTS: &[PortSpec] = &[PortSpec { name: "questions", kind: RecordKind::Question }];

/// What a feeder run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FeedSummary {
    pub rows: u64,
    pub published: u64,
    /// Already on the topic from an earlier run (or an earlier row with the same id).
    pub skipped: u64,
    pub dead_lettered: u64,
}

/// Publishes every file of the settings, then returns. Stops early (after the publishes in
/// flight are acknowledged) when `shutdown` resolves.
pub async fn run(
    settings: FeederSettings,
    run: ProcessorRun,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<FeedSummary> {
    let stop = CancellationToken::new();
    let stop_on_signal = stop.clone();
    let signal_task = tokio::spawn(async move {
        shutdown.await;
        stop_on_signal.cancel();
    });
    let publisher = source_publisher(&run, OUTPUTS)?;
    let mut already = HashSet::new();
    if settings.skip_published {
        already = published_ids(&run).await?;
        tracing::info!(processor = %run.name, "{} question(s) and dead letters already published: skipped", already.len());
    }
    let scratch = tempfile::tempdir()?;
    let mut feed = Feed {
        publisher: &publisher,
        processor: run.name.clone(),
        already,
        pending: FuturesUnordered::new(),
        max_pending: settings.max_pending,
        pace: (settings.rate_limit_per_second > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / settings.rate_limit_per_second)),
        next_send: Instant::now(),
        summary: FeedSummary::default(),
    };
    for file in &settings.files {
        if stop.is_cancelled() {
            break;
        }
        let local = objects::local_copy(&file.uri, scratch.path()).await?;
        let mut rows = read::spawn_row_reader(local, file.file_type(), file.limit);
        loop {
            let row = tokio::select! {
                _ = stop.cancelled() => break,
                row = rows.recv() => row,
            };
            match row {
                Some(read::RowItem::Row { index, row, original }) => feed.row(file, index, row, original).await?,
                Some(read::RowItem::Failed(e)) => anyhow::bail!("{}: {e}", file.uri),
                None => break,
            }
        }
    }
    while let Some(result) = feed.pending.next().await {
        result?;
    }
    signal_task.abort();
    let summary = feed.summary.clone();
    tracing::info!(processor = %run.name, ?summary, "feeder finished");
    Ok(summary)
}

/// Ids already on the output topic and in this feeder's dead letters.
async fn published_ids(run: &ProcessorRun) -> anyhow::Result<HashSet<String>> {
    let instance = run.topology.processor(&run.name).map_err(anyhow::Error::msg)?;
    let mut topics = vec![run.topology.topic_name(DEAD_LETTERS)];
    topics.extend(instance.outputs.values().map(|t| run.topology.topic_name(t)));
    let connection = run.connection.clone();
    tokio::task::spawn_blocking(move || {
        let mut ids = HashSet::new();
        for topic in topics {
            for record in read_to_end(&connection, &topic, Duration::from_secs(600))? {
                if let Some(id) = record.header(HEADER_ID).or(record.key.as_deref()) {
                    ids.insert(id.to_string());
                }
            }
        }
        Ok(ids)
    })
    .await?
}

type Pending<'a> = FuturesUnordered<std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>>;

struct Feed<'a> {
    publisher: &'a Publisher,
    processor: String,
    already: HashSet<String>,
    pending: Pending<'a>,
    max_pending: usize,
    pace: Option<Duration>,
    next_send: Instant,
    summary: FeedSummary,
}

impl<'a> Feed<'a> {
    async fn row(
        &mut self,
        file: &DatasetFile,
        index: u64,
        row: Result<serde_json::Value, String>,
        original: Vec<u8>,
    ) -> anyhow::Result<()> {
        self.summary.rows += 1;
        let question = row.and_then(|value| rows::question_from_row(&value, file, index));
        let publisher = self.publisher;
        match question {
            Ok(question) => {
                if !self.already.insert(question.id.clone()) {
                    self.summary.skipped += 1;
                    return Ok(());
                }
                if let Some(pace) = self.pace {
                    tokio::time::sleep_until(self.next_send).await;
                    self.next_send = self.next_send.max(Instant::now() - pace) + pace;
                }
                let emit = Emit::record("questions", &question)?;
                self.summary.published += 1;
                self.pending.push(Box::pin(async move { Ok(publisher.publish(std::slice::from_ref(&emit)).await?) }));
            }
            Err(reason) => {
                let uri = file.uri.clone();
                if !self.already.insert(dead_letter_id(&self.processor, &failed_row(&uri, index, &original))) {
                    self.summary.skipped += 1;
                    return Ok(());
                }
                self.summary.dead_lettered += 1;
                let reason = format!("row {index}: {reason}");
                self.pending.push(Box::pin(async move {
                    Ok(publisher.dead_letter(failed_row(&uri, index, &original), ErrorClass::User, &reason).await?)
                }));
            }
        }
        while self.pending.len() >= self.max_pending {
            if let Some(result) = self.pending.next().await {
                result?;
            }
        }
        Ok(())
    }
}

/// A dataset row that cannot become a question, described for the dead-letter topic: the
/// file stands in for the topic, the row index for the offset.
fn failed_row<'a>(uri: &'a str, index: u64, original: &'a [u8]) -> FailedInput<'a> {
    FailedInput { source_topic: uri, partition: -1, offset: index as i64, key: None, original }
}
