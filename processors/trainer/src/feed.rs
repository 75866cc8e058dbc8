//! The trainer's input: shard manifests read from `shards.{style}` in topic order from the
//! position in the checkpoint, each shard fetched (with read-ahead) and checked against its
//! sha256, cut into packed rows and handed to the training loop. What cannot be used is
//! dead-lettered and skipped; a read that keeps failing, or a saved position the topic no
//! longer has, ends the feed with [`Feed::Failed`], never as if the input were exhausted.

use crate::config::TrainerSettings;
use backon::{ExponentialBuilder, Retryable};
use distillery_model::PackedRow;
use distillery_runtime::objects::get_bytes;
use distillery_runtime::ordered::{OrderedReader, PositionGone, Start};
use distillery_runtime::publisher::{FailedInput, Publisher};
use distillery_runtime::reader::ReadRecord;
use distillery_runtime::runner::ProcessorRun;
use distillery_schemas::{decode, ErrorClass, ShardManifest};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the shard feed hands to the training loop, in topic order.
pub(crate) enum Feed {
    Shard {
        offset: i64,
        id: String,
        rows: Vec<PackedRow>,
    },
    /// An offset whose record could not be used (dead-lettered); the position moves past it.
    Skipped {
        offset: i64,
    },
    /// No new shard for `stop_when_idle_secs`.
    Idle,
    /// The input cannot be read (after `read_retry_secs` of retries, or at once when the saved
    /// position is gone): the run stops with an error, never as if it were complete.
    Failed(String),
}

/// What the reading thread hands to the fetching task.
enum Read {
    Record(ReadRecord),
    Idle,
    Failed(String),
}

/// Reads manifests in topic order on a blocking thread, fetches and checks each shard with
/// read-ahead (the channel holds `read_ahead_shards` shards), and dead-letters what cannot be
/// used. A read or a dead letter that keeps failing for `read_retry_secs` (the topic missing,
/// the broker unreachable), or a saved position the topic no longer has, ends the feed with
/// [`Feed::Failed`].
pub(crate) fn spawn_feed(
    run: &ProcessorRun,
    settings: &TrainerSettings,
    topic: &str,
    start: Start,
    publisher: Arc<Publisher>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<mpsc::Receiver<Feed>> {
    let (records_tx, mut records_rx) = mpsc::channel::<Read>(1);
    let (feed_tx, feed_rx) = mpsc::channel::<Feed>(settings.read_ahead_shards.max(1));
    let (connection, topic_name) = (run.connection.clone(), topic.to_string());
    let idle_after = settings.stop_when_idle_secs.map(Duration::from_secs);
    let retry_for = Duration::from_secs(settings.read_retry_secs);
    std::thread::spawn(move || {
        let failed = |e: anyhow::Error| {
            tracing::error!("cannot read {topic_name}: {e:#}");
            let _ = records_tx.blocking_send(Read::Failed(format!("{e:#}")));
        };
        let failing_since = Instant::now();
        let reader = loop {
            match OrderedReader::open(&connection, &topic_name, start) {
                Ok(reader) => break reader,
                Err(e) if e.is::<PositionGone>() || failing_since.elapsed() >= retry_for => return failed(e),
                Err(e) if stop.load(Ordering::SeqCst) => return failed(e),
                Err(e) => {
                    tracing::warn!("cannot open {topic_name} (retrying for up to {retry_for:?}): {e:#}");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        };
        let mut last_record = Instant::now();
        let mut failing_since: Option<Instant> = None;
        while !stop.load(Ordering::SeqCst) {
            match reader.next(Duration::from_millis(500)) {
                Ok(Some(record)) => {
                    (last_record, failing_since) = (Instant::now(), None);
                    if records_tx.blocking_send(Read::Record(record)).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    failing_since = None;
                    if idle_after.is_some_and(|idle| last_record.elapsed() >= idle) {
                        let _ = records_tx.blocking_send(Read::Idle);
                        return;
                    }
                }
                Err(e) if e.is::<PositionGone>() => return failed(e),
                Err(e) if failing_since.get_or_insert_with(Instant::now).elapsed() >= retry_for => return failed(e),
                Err(e) => {
                    tracing::warn!("{e:#} (retrying)");
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    });
    let (topic, attempts) = (topic.to_string(), settings.fetch_attempts);
    tokio::spawn(async move {
        while let Some(read) = records_rx.recv().await {
            let record = match read {
                Read::Record(record) => record,
                Read::Idle => {
                    let _ = feed_tx.send(Feed::Idle).await;
                    return;
                }
                Read::Failed(error) => {
                    let _ = feed_tx.send(Feed::Failed(error)).await;
                    return;
                }
            };
            let item = match fetch_shard(&record, attempts).await {
                Ok((id, rows)) => Feed::Shard { offset: record.offset, id, rows },
                Err(e) => {
                    tracing::error!(offset = record.offset, "shard dead-lettered: {e:#}");
                    let reason = format!("{e:#}");
                    let send = || {
                        let failed = FailedInput {
                            source_topic: &topic,
                            partition: record.partition,
                            offset: record.offset,
                            key: record.key.as_deref(),
                            original: &record.payload,
                        };
                        publisher.dead_letter(failed, ErrorClass::User, &reason)
                    };
                    let retry = ExponentialBuilder::default()
                        .with_max_delay(Duration::from_secs(5))
                        .with_total_delay(Some(retry_for))
                        .with_max_times(usize::MAX);
                    if let Err(e) = send.retry(retry).await {
                        let error = format!("cannot dead-letter the shard at offset {}: {e}", record.offset);
                        let _ = feed_tx.send(Feed::Failed(error)).await;
                        return;
                    }
                    Feed::Skipped { offset: record.offset }
                }
            };
            if feed_tx.send(item).await.is_err() {
                return;
            }
        }
    });
    Ok(feed_rx)
}

/// A manifest's shard, downloaded (with retries), checked against its checksum and cut into
/// packed rows.
async fn fetch_shard(record: &ReadRecord, attempts: usize) -> anyhow::Result<(String, Vec<PackedRow>)> {
    let manifest: ShardManifest = decode(&record.payload).map_err(|e| anyhow::anyhow!("not a shard manifest: {e}"))?;
    let fetch = || get_bytes(&manifest.uri);
    let bytes = fetch
        .retry(ExponentialBuilder::default().with_max_times(attempts).with_max_delay(Duration::from_secs(30)))
        .notify(|e, wait| tracing::warn!(uri = %manifest.uri, "fetching shard failed, retrying in {wait:?}: {e:#}"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot fetch shard {}: {e:#}", manifest.uri))?;
    let shard = distillery_packer::shard::read_shard(&bytes, Some(&manifest.sha256))?;
    Ok((manifest.id.clone(), rows_of(&shard)?))
}

/// Cuts a shard's flat arrays into rows and each row into its sequences.
pub fn rows_of(shard: &distillery_packer::shard::ShardTensors) -> anyhow::Result<Vec<PackedRow>> {
    let n = shard.input_ids.len();
    anyhow::ensure!(shard.loss_mask.len() == n, "loss_mask and input_ids differ in length");
    anyhow::ensure!(shard.input_ids.iter().all(|&t| t >= 0), "negative token id");
    let boundaries: std::collections::BTreeSet<usize> = shard.cu_seqlens.iter().map(|&c| c as usize).collect();
    let mut rows = Vec::new();
    for window in shard.row_offsets.windows(2) {
        let (start, end) = (window[0] as usize, window[1] as usize);
        anyhow::ensure!(start <= end && end <= n, "row offsets {start}..{end} outside {n} tokens");
        let cuts: Vec<usize> = boundaries.range(start..=end).copied().collect();
        anyhow::ensure!(
            cuts.first() == Some(&start) && cuts.last() == Some(&end),
            "row {start}..{end} does not start and end on sequence boundaries"
        );
        rows.push(PackedRow {
            input_ids: shard.input_ids[start..end].iter().map(|&t| t as u32).collect(),
            loss_mask: shard.loss_mask[start..end].to_vec(),
            sequence_lengths: cuts.windows(2).map(|w| w[1] - w[0]).collect(),
        });
    }
    Ok(rows)
}
