//! Per-partition contiguous-offset tracking: which input offset may be committed.
//!
//! Records of one partition are processed concurrently and finish in any order. Committing
//! offset N tells the group "everything below N is done", so the committable offset of a
//! partition is the lowest offset still in flight, or one past the highest offset seen when
//! nothing is in flight. A record counts as done only after every output it produced was
//! acknowledged by the broker (or it was dead-lettered), so a crash at any moment replays
//! exactly the records whose outputs may be missing.

use std::collections::{BTreeSet, HashMap};

/// A partition of an input topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    pub topic: String,
    pub partition: i32,
}

#[derive(Debug, Default)]
struct PartitionOffsets {
    /// Bumped on every assignment, so completions of work started under an earlier
    /// assignment of the same partition are ignored.
    generation: u64,
    in_flight: BTreeSet<i64>,
    highest_seen: Option<i64>,
    last_committed: Option<i64>,
}

impl PartitionOffsets {
    fn committable(&self) -> Option<i64> {
        match self.in_flight.first() {
            Some(&lowest) => Some(lowest),
            None => self.highest_seen.map(|h| h + 1),
        }
    }
}

/// Ticket for one record in flight; hand it back to [`OffsetTracker::complete`].
#[derive(Debug, Clone)]
pub struct InFlight {
    pub partition: PartitionId,
    pub offset: i64,
    pub generation: u64,
}

impl InFlight {
    /// The assignment the record was read under.
    pub fn assignment(&self) -> crate::processor::Assignment {
        crate::processor::Assignment { partition: self.partition.clone(), generation: self.generation }
    }
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<PartitionId, PartitionOffsets>,
    next_generation: u64,
}

impl OffsetTracker {
    /// Starts tracking a newly assigned partition (forgetting anything from an earlier
    /// assignment of it); returns the assignment's generation.
    pub fn assign(&mut self, partition: PartitionId) -> u64 {
        self.next_generation += 1;
        self.partitions.insert(partition, PartitionOffsets { generation: self.next_generation, ..Default::default() });
        self.next_generation
    }

    /// The generation of a partition's current assignment (None when not assigned).
    pub fn generation(&self, partition: &PartitionId) -> Option<u64> {
        self.partitions.get(partition).map(|s| s.generation)
    }

    /// Stops tracking a revoked partition; returns what may still be committed for it.
    pub fn revoke(&mut self, partition: &PartitionId) -> Option<i64> {
        let state = self.partitions.remove(partition)?;
        let committable = state.committable()?;
        (Some(committable) > state.last_committed).then_some(committable)
    }

    pub fn is_assigned(&self, partition: &PartitionId) -> bool {
        self.partitions.contains_key(partition)
    }

    /// Registers a record that is about to be processed. Returns None when the partition is
    /// not (or no longer) assigned to us.
    pub fn begin(&mut self, partition: &PartitionId, offset: i64) -> Option<InFlight> {
        let state = self.partitions.get_mut(partition)?;
        state.in_flight.insert(offset);
        state.highest_seen = Some(state.highest_seen.map_or(offset, |h| h.max(offset)));
        Some(InFlight { partition: partition.clone(), offset, generation: state.generation })
    }

    /// Marks a record done. Work from a revoked or re-assigned partition is ignored: the new
    /// owner replays it.
    pub fn complete(&mut self, ticket: &InFlight) -> bool {
        match self.partitions.get_mut(&ticket.partition) {
            Some(state) if state.generation == ticket.generation => state.in_flight.remove(&ticket.offset),
            _ => false,
        }
    }

    /// Offsets that advanced since the last commit: (partition, next offset to read).
    pub fn to_commit(&self) -> Vec<(PartitionId, i64)> {
        let mut out: Vec<_> = self
            .partitions
            .iter()
            .filter_map(|(p, state)| {
                let c = state.committable()?;
                (Some(c) > state.last_committed).then(|| (p.clone(), c))
            })
            .collect();
        out.sort();
        out
    }

    /// Records that the broker accepted a commit.
    pub fn committed(&mut self, partition: &PartitionId, offset: i64) {
        if let Some(state) = self.partitions.get_mut(partition) {
            state.last_committed = Some(state.last_committed.map_or(offset, |c| c.max(offset)));
        }
    }

    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|s| s.in_flight.len()).sum()
    }

    pub fn assigned(&self) -> Vec<PartitionId> {
        let mut out: Vec<_> = self.partitions.keys().cloned().collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> PartitionId {
        PartitionId { topic: "t".into(), partition: n }
    }

    #[test]
    fn commits_only_below_the_lowest_record_in_flight() {
        let mut t = OffsetTracker::default();
        t.assign(p(0));
        let a = t.begin(&p(0), 10).unwrap();
        let b = t.begin(&p(0), 11).unwrap();
        let c = t.begin(&p(0), 12).unwrap();
        assert_eq!(t.to_commit(), vec![(p(0), 10)]);
        t.committed(&p(0), 10);
        assert!(t.to_commit().is_empty(), "nothing advanced");
        assert!(t.complete(&c));
        assert!(t.complete(&b));
        assert!(t.to_commit().is_empty(), "10 is still in flight: 11 and 12 must not be committed");
        assert!(t.complete(&a));
        assert_eq!(t.to_commit(), vec![(p(0), 13)]);
    }

    #[test]
    fn partitions_are_tracked_independently() {
        let mut t = OffsetTracker::default();
        t.assign(p(0));
        t.assign(p(1));
        let a = t.begin(&p(0), 0).unwrap();
        let _b = t.begin(&p(1), 5).unwrap();
        t.complete(&a);
        assert_eq!(t.to_commit(), vec![(p(0), 1), (p(1), 5)]);
        assert_eq!(t.in_flight(), 1);
    }

    #[test]
    fn work_from_a_revoked_assignment_is_ignored() {
        let mut t = OffsetTracker::default();
        t.assign(p(0));
        let done = t.begin(&p(0), 0).unwrap();
        let stale = t.begin(&p(0), 1).unwrap();
        t.complete(&done);
        assert_eq!(t.revoke(&p(0)), Some(1), "what was done is committed on revoke");
        assert!(t.begin(&p(0), 2).is_none(), "not assigned any more");
        t.assign(p(0));
        assert!(!t.complete(&stale), "the old generation's completion does not count");
        assert!(t.to_commit().is_empty());
    }

    #[test]
    fn revoke_after_commit_has_nothing_new() {
        let mut t = OffsetTracker::default();
        t.assign(p(3));
        let a = t.begin(&p(3), 7).unwrap();
        t.complete(&a);
        t.committed(&p(3), 8);
        assert_eq!(t.revoke(&p(3)), None);
    }
}
