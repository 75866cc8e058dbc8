//! Dropping replays: an upstream processor that restarts re-sends the records it had not
//! committed, with the same deterministic ids. Remembering the last N ids seen per partition
//! stops such duplicates from costing work again (a teacher call, a training step) and from
//! multiplying downstream. The window of a partition is forgotten when the partition is
//! revoked: a record abandoned on revocation must be processed when it comes back.

use crate::offsets::PartitionId;
use std::collections::{HashMap, HashSet, VecDeque};

#[derive(Debug)]
pub struct RecentIds {
    capacity: usize,
    partitions: HashMap<PartitionId, Window>,
}

#[derive(Debug, Default)]
struct Window {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentIds {
    pub fn new(capacity: usize) -> RecentIds {
        RecentIds { capacity, partitions: HashMap::new() }
    }

    /// Returns true the first time an id is seen on a partition, false for a replay.
    pub fn first_time(&mut self, partition: &PartitionId, id: &str) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let window = self.partitions.entry(partition.clone()).or_default();
        if window.ids.contains(id) {
            return false;
        }
        window.ids.insert(id.to_string());
        window.order.push_back(id.to_string());
        if window.order.len() > self.capacity {
            if let Some(oldest) = window.order.pop_front() {
                window.ids.remove(&oldest);
            }
        }
        true
    }

    pub fn forget(&mut self, partition: &PartitionId) {
        self.partitions.remove(partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_recognised_within_the_window_per_partition() {
        let p0 = PartitionId { topic: "t".into(), partition: 0 };
        let p1 = PartitionId { topic: "t".into(), partition: 1 };
        let mut recent = RecentIds::new(2);
        assert!(recent.first_time(&p0, "a"));
        assert!(!recent.first_time(&p0, "a"));
        assert!(recent.first_time(&p1, "a"), "windows are per partition");
        assert!(recent.first_time(&p0, "b"));
        assert!(recent.first_time(&p0, "c"));
        assert!(recent.first_time(&p0, "a"), "'a' fell out of a window of 2");
        recent.forget(&p0);
        assert!(recent.first_time(&p0, "c"), "a revoked partition starts afresh");
    }
}
