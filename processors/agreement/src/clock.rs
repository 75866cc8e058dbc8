//! Event time of the `judged` stream, per input partition, for expiring joins.
//!
//! Expiry must not compare the judge's timestamps with the wall clock: replaying `judged` of an
//! experiment older than `expire_after_secs` would then expire almost every question before its
//! other verdicts are read. Instead each partition's clock is the latest `judged_at_ms` read
//! from it, advanced by the wall time elapsed since its last record arrived: while records flow
//! (live or replayed at any speed) time is what the records say, and once a partition goes
//! quiet its clock keeps moving, so a question whose other verdicts never come still expires
//! `expire_after_secs` after its first verdict. Verdicts of one question share a partition
//! (keyed by question id), so a partition's clock is the one that matters for its questions.
//! Pure: callers pass the wall time (a monotonic reading in milliseconds).

use distillery_runtime::PartitionId;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy)]
struct Mark {
    /// Latest event time read from the partition.
    event_ms: i64,
    /// Wall time when its last record arrived.
    arrived_ms: i64,
}

#[derive(Debug, Default)]
pub struct EventClock {
    marks: HashMap<PartitionId, Mark>,
}

impl EventClock {
    /// A record with event time `event_ms` arrived from `partition` at wall time `wall_ms`.
    pub fn observe(&mut self, partition: &PartitionId, event_ms: i64, wall_ms: i64) {
        let mark = self.marks.entry(partition.clone()).or_insert(Mark { event_ms, arrived_ms: wall_ms });
        mark.event_ms = mark.event_ms.max(event_ms);
        mark.arrived_ms = wall_ms;
    }

    /// The partition's event time at wall time `wall_ms`; None before its first record.
    pub fn now(&self, partition: &PartitionId, wall_ms: i64) -> Option<i64> {
        self.marks.get(partition).map(|m| m.event_ms.saturating_add((wall_ms - m.arrived_ms).max(0)))
    }

    /// Forgets partitions this replica no longer owns.
    pub fn forget(&mut self, partitions: &[PartitionId]) {
        for p in partitions {
            self.marks.remove(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_set_the_time_and_quiet_partitions_advance_with_the_wall_clock() {
        let (p, q) = (PartitionId { topic: "t".into(), partition: 0 }, PartitionId { topic: "t".into(), partition: 1 });
        let mut clock = EventClock::default();
        assert_eq!(clock.now(&p, 0), None);
        clock.observe(&p, 1_000, 50);
        assert_eq!(clock.now(&p, 50), Some(1_000));
        assert_eq!(clock.now(&p, 80), Some(1_030), "quiet for 30 ms");
        clock.observe(&p, 900, 100); // out of order: the latest event time stays
        assert_eq!(clock.now(&p, 100), Some(1_000));
        clock.observe(&p, 5_000, 110);
        assert_eq!(clock.now(&p, 110), Some(5_000));
        assert_eq!(clock.now(&q, 110), None, "partitions keep their own time");
        clock.forget(std::slice::from_ref(&p));
        assert_eq!(clock.now(&p, 110), None);
    }
}
