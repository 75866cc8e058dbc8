//! What a replica keeps for each partition it holds, shared by the loop, the record tasks,
//! the restore and tick tasks and librdkafka's rebalance callbacks: the committable offsets
//! and the assignment's generation (`offsets`), a cancellation for the partition's work,
//! whether its state is restored yet, and the window of recent ids (`dedup`).
//!
//! Locks are taken in one order: offsets, held, recent ids, tick.
//!
//! The generation is the fence. Every output that depends on a partition is handed to the
//! producer under this lock, after checking the generation it was made under; a revocation
//! takes the same lock to forget the partition. So once `revoke` returned, nothing more is
//! produced for the revoked assignment.

use crate::dedup::RecentIds;
use crate::offsets::{InFlight, OffsetTracker, PartitionId};
use crate::processor::Assignment;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave them inconsistent (every critical
    // section is a single map operation), so poisoning is ignored.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A partition's work, while it is assigned.
struct Held {
    /// Cancels the partition's in-flight records and its restore on revocation.
    cancel: CancellationToken,
    /// Set once the partition's state is restored; its records wait for it.
    ready: watch::Sender<bool>,
}

/// A record let in: its offset ticket, and what its task waits on.
pub(crate) struct Admitted {
    pub ticket: InFlight,
    pub cancel: CancellationToken,
    pub ready: watch::Receiver<bool>,
}

pub(crate) struct Partitions {
    tracker: Mutex<OffsetTracker>,
    held: Mutex<HashMap<PartitionId, Held>>,
    recent: Mutex<RecentIds>,
    /// Cancels the running tick; replaced at every revocation.
    tick_cancel: Mutex<CancellationToken>,
}

impl Partitions {
    pub fn new(dedup_window: usize) -> Partitions {
        Partitions {
            tracker: Mutex::new(OffsetTracker::default()),
            held: Mutex::new(HashMap::new()),
            recent: Mutex::new(RecentIds::new(dedup_window)),
            tick_cancel: Mutex::new(CancellationToken::new()),
        }
    }

    /// Starts holding newly assigned partitions (not ready until restored).
    pub fn assign(&self, partitions: &[PartitionId]) -> Vec<Assignment> {
        let mut tracker = lock(&self.tracker);
        let mut held = lock(&self.held);
        let mut recent = lock(&self.recent);
        partitions
            .iter()
            .map(|p| {
                let generation = tracker.assign(p.clone());
                recent.forget(p);
                held.insert(p.clone(), Held { cancel: CancellationToken::new(), ready: watch::channel(false).0 });
                Assignment { partition: p.clone(), generation }
            })
            .collect()
    }

    /// Stops holding revoked partitions: fences their outputs, cancels their work (and the
    /// running tick), forgets their recent ids. Returns what may still be committed for them.
    pub fn revoke(&self, partitions: &[PartitionId]) -> Vec<(PartitionId, i64)> {
        let mut done = Vec::new();
        {
            let mut tracker = lock(&self.tracker);
            for p in partitions {
                if let Some(offset) = tracker.revoke(p) {
                    done.push((p.clone(), offset));
                }
            }
        }
        let mut held = lock(&self.held);
        let mut recent = lock(&self.recent);
        for p in partitions {
            // Dropping the ready sender releases records still waiting for the restore.
            if let Some(h) = held.remove(p) {
                h.cancel.cancel();
            }
            recent.forget(p);
        }
        let mut tick = lock(&self.tick_cancel);
        tick.cancel();
        *tick = CancellationToken::new();
        done
    }

    /// Lets a fetched record in: None when its partition is not (or no longer) held.
    pub fn admit(&self, partition: &PartitionId, offset: i64) -> Option<Admitted> {
        let mut tracker = lock(&self.tracker);
        let held = lock(&self.held);
        let h = held.get(partition)?;
        let ticket = tracker.begin(partition, offset)?;
        Some(Admitted { ticket, cancel: h.cancel.clone(), ready: h.ready.subscribe() })
    }

    /// Marks a record done (ignored if its assignment is gone).
    pub fn complete(&self, ticket: &InFlight) {
        lock(&self.tracker).complete(ticket);
    }

    /// The partitions' cancellation (None for one no longer held).
    pub fn cancellation(&self, partition: &PartitionId) -> Option<CancellationToken> {
        lock(&self.held).get(partition).map(|h| h.cancel.clone())
    }

    /// Lets the records of a restored partition through (if it is still held under `of`).
    pub fn mark_ready(&self, of: &Assignment) {
        let tracker = lock(&self.tracker);
        if tracker.generation(&of.partition) == Some(of.generation) {
            if let Some(h) = lock(&self.held).get(&of.partition) {
                h.ready.send_replace(true);
            }
        }
    }

    /// The fence: a guard on the offsets lock if every one of `owners` is still held under
    /// its generation. Produce while holding it; a revocation waits for it.
    pub fn holds(&self, owners: &[Assignment]) -> Option<MutexGuard<'_, OffsetTracker>> {
        let tracker = lock(&self.tracker);
        owners.iter().all(|o| tracker.generation(&o.partition) == Some(o.generation)).then_some(tracker)
    }

    /// Whether every held partition is restored.
    pub fn all_ready(&self) -> bool {
        lock(&self.held).values().all(|h| *h.ready.borrow())
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.held).is_empty()
    }

    /// The partitions held now, in order.
    pub fn held(&self) -> Vec<PartitionId> {
        let mut held: Vec<PartitionId> = lock(&self.held).keys().cloned().collect();
        held.sort();
        held
    }

    /// The running tick's cancellation.
    pub fn tick_cancellation(&self) -> CancellationToken {
        lock(&self.tick_cancel).clone()
    }

    /// Offsets that advanced since the last commit.
    pub fn to_commit(&self) -> Vec<(PartitionId, i64)> {
        lock(&self.tracker).to_commit()
    }

    /// Records that the broker accepted a commit.
    pub fn committed(&self, offsets: &[(PartitionId, i64)]) {
        let mut tracker = lock(&self.tracker);
        for (p, offset) in offsets {
            tracker.committed(p, *offset);
        }
    }

    /// True the first time an id is seen on a partition, false for a replay.
    pub fn first_time(&self, partition: &PartitionId, id: &str) -> bool {
        lock(&self.recent).first_time(partition, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> PartitionId {
        PartitionId { topic: "t".into(), partition: n }
    }

    #[test]
    fn outputs_of_a_revoked_or_reassigned_partition_are_fenced() {
        let partitions = Partitions::new(10);
        let first = partitions.assign(&[p(0), p(1)]);
        assert!(partitions.holds(&first).is_some());
        partitions.revoke(&[p(0)]);
        assert!(partitions.holds(&first[1..]).is_some(), "partition 1 is still held");
        assert!(partitions.holds(&first).is_none(), "partition 0 was revoked");
        let again = partitions.assign(&[p(0)]);
        assert_ne!(again[0].generation, first[0].generation);
        assert!(partitions.holds(&first[..1]).is_none(), "the earlier assignment stays fenced");
        assert!(partitions.holds(&again).is_some());
    }

    #[test]
    fn records_wait_for_the_restore_and_a_revocation_releases_them() {
        let partitions = Partitions::new(10);
        let assigned = partitions.assign(&[p(0)]);
        let admitted = partitions.admit(&p(0), 5).unwrap();
        assert!(!*admitted.ready.borrow() && !partitions.all_ready());
        partitions.mark_ready(&assigned[0]);
        assert!(*admitted.ready.borrow() && partitions.all_ready());
        let waiting = partitions.admit(&p(0), 6).unwrap();
        let tick = partitions.tick_cancellation();
        assert_eq!(partitions.revoke(&[p(0)]), vec![(p(0), 5)], "5 and 6 are still in flight");
        assert!(waiting.cancel.is_cancelled() && tick.is_cancelled());
        assert!(waiting.ready.has_changed().is_err(), "the ready signal is gone with the partition");
        assert!(partitions.admit(&p(0), 7).is_none());
        // A stale restore of the revoked assignment marks nothing ready.
        partitions.assign(&[p(0)]);
        partitions.mark_ready(&assigned[0]);
        assert!(!partitions.all_ready());
    }

    #[test]
    fn recent_ids_are_forgotten_with_the_partition() {
        let partitions = Partitions::new(10);
        partitions.assign(&[p(0)]);
        assert!(partitions.first_time(&p(0), "a"));
        assert!(!partitions.first_time(&p(0), "a"));
        partitions.revoke(&[p(0)]);
        partitions.assign(&[p(0)]);
        assert!(partitions.first_time(&p(0), "a"), "a new assignment starts from its restore's seed");
    }
}
