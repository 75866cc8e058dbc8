//! One input record's task: wait until its partition is restored, decode it, drop it if it is
//! a replay, process it (retrying retryable errors with backoff, turning a panic into an
//! error), publish the outputs under the partition's fence, and dead-letter what fails for
//! good. The record is done only once its outputs or its dead letter are acknowledged.

use crate::offsets::InFlight;
use crate::partitions::{lock, Admitted, Partitions};
use crate::processor::{ProcessError, Processor, RecordContext};
use crate::publisher::{FailedInput, PublishError, Publisher};
use crate::settings::RuntimeSettings;
use crate::telemetry;
use backon::{ExponentialBuilder, Retryable};
use distillery_schemas::{decode, ErrorClass, Record};
use futures::FutureExt;
use rdkafka::message::{Message, OwnedMessage};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Counts for the run's summary.
#[derive(Default)]
pub(crate) struct Counters {
    pub records_in: AtomicU64,
    pub records_done: AtomicU64,
    pub outputs: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub duplicates: AtomicU64,
}

/// Set when a record could neither be delivered nor dead-lettered: the loop stops so the
/// record is replayed after a restart instead of being skipped.
#[derive(Default)]
pub(crate) struct Fatal {
    error: Mutex<Option<String>>,
    pub notify: Notify,
}

impl Fatal {
    pub fn raise(&self, error: String) {
        lock(&self.error).get_or_insert(error);
        self.notify.notify_one();
    }

    pub fn error(&self) -> Option<String> {
        lock(&self.error).clone()
    }
}

/// Everything one record's task needs.
pub(crate) struct RecordTask<P> {
    pub processor: Arc<P>,
    pub name: String,
    pub publisher: Publisher,
    pub partitions: Arc<Partitions>,
    pub counters: Arc<Counters>,
    pub fatal: Arc<Fatal>,
    pub settings: RuntimeSettings,
}

impl<P: Processor> RecordTask<P> {
    pub async fn run(self, message: OwnedMessage, admitted: Admitted) {
        let Admitted { ticket, cancel, mut ready } = admitted;
        let started = Instant::now();
        let name = self.name.clone();
        metrics::gauge!(telemetry::IN_FLIGHT, "processor" => name.clone()).increment(1.0);
        let outcome = tokio::select! {
            // Revoked: abandon; the partition's next owner replays this record.
            _ = cancel.cancelled() => None,
            outcome = async {
                // A partition's records wait for its restore; a revocation drops the signal.
                ready.wait_for(|ready| *ready).await.ok()?;
                Some(self.handle(&message, &ticket).await)
            } => outcome,
        };
        metrics::gauge!(telemetry::IN_FLIGHT, "processor" => name.clone()).decrement(1.0);
        match outcome {
            Some(Ok(())) => {
                self.partitions.complete(&ticket);
                self.counters.records_done.fetch_add(1, Ordering::Relaxed);
                metrics::histogram!(telemetry::PROCESS_SECONDS, "processor" => name)
                    .record(started.elapsed().as_secs_f64());
            }
            // Revoked while publishing: the next owner replays it.
            Some(Err(PublishError::NotOwner)) | None => {}
            Some(Err(error)) => {
                let message = format!(
                    "record {}[{}]@{} could neither be delivered nor dead-lettered: {error}",
                    ticket.partition.topic, ticket.partition.partition, ticket.offset
                );
                tracing::error!(processor = %name, "{message}");
                self.fatal.raise(message);
            }
        }
    }

    /// Processes one record to completion: outputs acknowledged, or a dead letter
    /// acknowledged. An error here means neither happened.
    async fn handle(&self, message: &OwnedMessage, ticket: &InFlight) -> Result<(), PublishError> {
        let payload = message.payload().unwrap_or_default();
        let key = message.key().and_then(|k| std::str::from_utf8(k).ok());
        let failed = FailedInput {
            source_topic: &ticket.partition.topic,
            partition: ticket.partition.partition,
            offset: ticket.offset,
            key,
            original: payload,
        };
        let input: P::Input = match decode(payload) {
            Ok(input) => input,
            Err(e) => {
                let reason = format!("cannot decode the record as {}: {e}", <P::Input as Record>::KIND);
                return self.dead_letter(failed, ticket, ErrorClass::User, &reason).await;
            }
        };
        if !self.partitions.first_time(&ticket.partition, input.id()) {
            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(telemetry::RECORDS_DUPLICATE, "processor" => self.name.clone()).increment(1);
            return Ok(());
        }
        let ctx = RecordContext {
            processor: self.name.clone(),
            topic: ticket.partition.topic.clone(),
            partition: ticket.partition.partition,
            offset: ticket.offset,
            key: key.map(str::to_string),
            generation: ticket.generation,
        };
        let s = &self.settings;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(s.retry_min_delay_ms))
            .with_max_delay(Duration::from_millis(s.retry_max_delay_ms))
            .with_max_times(s.retry_attempts.saturating_sub(1))
            .with_jitter();
        let attempt = || {
            let input = input.clone();
            let ctx = &ctx;
            async move {
                // A panic in one record's processing must not take the whole stream down.
                AssertUnwindSafe(self.processor.process(input, ctx)).catch_unwind().await.unwrap_or_else(|panic| {
                    Err(ProcessError::internal(format!("processor panicked: {}", panic_message(&panic))))
                })
            }
        };
        let result = attempt
            .retry(backoff)
            .when(|e: &ProcessError| e.retryable)
            .notify(|e: &ProcessError, delay| {
                metrics::counter!(telemetry::PROCESS_RETRIES, "processor" => self.name.clone()).increment(1);
                tracing::debug!(processor = %self.name, "retrying in {delay:?}: {e}");
            })
            .await;
        let emits = match result {
            Ok(emits) => emits,
            Err(e) if e.retryable => {
                let reason = format!("gave up after {} attempts: {}", s.retry_attempts, e.message);
                return self.dead_letter(failed, ticket, e.class, &reason).await;
            }
            Err(e) => return self.dead_letter(failed, ticket, e.class, &e.message).await,
        };
        let owner = [ticket.assignment()];
        match self.publisher.publish_held(&emits, || self.partitions.holds(&owner)).await {
            Ok(()) => {
                self.counters.outputs.fetch_add(emits.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(PublishError::NotOwner) => Err(PublishError::NotOwner),
            Err(e @ (PublishError::UnknownPort(_) | PublishError::WrongKind { .. } | PublishError::Encode(_))) => {
                self.dead_letter(failed, ticket, ErrorClass::Internal, &e.to_string()).await
            }
            // The broker refused an output for good (too large, ...): the input is at fault.
            Err(e @ PublishError::Delivery { .. }) => {
                self.dead_letter(failed, ticket, ErrorClass::User, &e.to_string()).await
            }
        }
    }

    async fn dead_letter(
        &self,
        failed: FailedInput<'_>,
        ticket: &InFlight,
        class: ErrorClass,
        reason: &str,
    ) -> Result<(), PublishError> {
        let owner = [ticket.assignment()];
        self.publisher.dead_letter_held(failed, class, reason, || self.partitions.holds(&owner)).await?;
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
