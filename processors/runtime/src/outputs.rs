//! Publishing outside a record's own processing: what a processor's `on_tick` produces (an
//! expired join, a shard manifest). Such an output depends on partitions this replica holds
//! (the questions it rejects, the questions in the shard), so it is published only while they
//! are still held under the same assignment; a replica that lost one leaves the output to the
//! partition's next owner, which rebuilds the state from the topics.

use crate::partitions::{lock, Partitions};
use crate::processor::{Assignment, Emit};
use crate::publisher::{PublishError, Publisher};
use std::sync::{Arc, Mutex};

/// Where a tick publishes. Handed to [`crate::Processor::on_tick`].
pub struct Outputs {
    sink: Sink,
}

enum Sink {
    Broker { publisher: Publisher, partitions: Arc<Partitions> },
    Memory(Mutex<Vec<Emit>>),
}

impl Outputs {
    pub(crate) fn broker(publisher: Publisher, partitions: Arc<Partitions>) -> Outputs {
        Outputs { sink: Sink::Broker { publisher, partitions } }
    }

    /// A sink that keeps what is published in memory and treats every assignment as held:
    /// for driving a processor's `on_tick` without a broker (unit tests of its logic).
    pub fn in_memory() -> Outputs {
        Outputs { sink: Sink::Memory(Mutex::new(Vec::new())) }
    }

    /// What an in-memory sink took since the last call (nothing for the broker's).
    pub fn take(&self) -> Vec<Emit> {
        match &self.sink {
            Sink::Memory(taken) => std::mem::take(&mut *lock(taken)),
            Sink::Broker { .. } => Vec::new(),
        }
    }

    /// Publishes `emits` and waits for the broker's acks, provided every partition in
    /// `owners` is still held under that generation; otherwise [`PublishError::NotOwner`] and
    /// nothing (more) of it is produced. Only after Ok may the outputs count as done.
    pub async fn publish(&self, emits: &[Emit], owners: &[Assignment]) -> Result<(), PublishError> {
        match &self.sink {
            Sink::Broker { publisher, partitions } => publisher.publish_held(emits, || partitions.holds(owners)).await,
            Sink::Memory(taken) => {
                lock(taken).extend(emits.iter().cloned());
                Ok(())
            }
        }
    }
}
