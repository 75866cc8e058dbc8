//! Judged sample in; agreed or rejected out.
//!
//! The join state is per partition of `judged` and follows it: started on assignment, rebuilt
//! from the partition's records (and from the `rejected` partition beside it, which holds the
//! expiries the records alone would not repeat), dropped on revocation. An expiry counts as a
//! decision at once (a late verdict is ignored), and is published by the tick while the
//! partition is still held; a replica that loses the partition first leaves the question to
//! the next owner, which decides it from what was durably published.

use crate::clock::EventClock;
use crate::config::AgreementSettings;
use crate::join::{JoinState, Outcome};
use distillery_runtime::{
    Assignment, Emit, OutputScope, Outputs, PartitionId, PortSpec, ProcessError, Processor, RecordContext,
    RestoredOutput,
};
use distillery_schemas::{decode, AgreedSample, JudgedSample, RecordKind};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

pub struct Agreement {
    settings: AgreementSettings,
    state: Mutex<State>,
    /// Origin of the monotonic wall time the event clock advances by.
    started: Instant,
}

#[derive(Default)]
struct State {
    /// The partitions held, by the generation of their assignment.
    owned: HashMap<PartitionId, u64>,
    join: JoinState,
    clock: EventClock,
    /// Expiries decided but not yet published, by question.
    expiring: BTreeMap<String, (Assignment, AgreedSample)>,
}

impl Agreement {
    pub fn new(settings: AgreementSettings) -> Agreement {
        Agreement { settings, state: Mutex::new(State::default()), started: Instant::now() }
    }

    fn wall_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, judged: JudgedSample, ctx: &RecordContext) -> Outcome {
        // Event time, not the clock: the judge's timestamp (a restore or a replay of an old
        // experiment reads the same times), so expiry works at any replay speed.
        let owner = ctx.assignment();
        let wall_ms = self.wall_ms();
        let mut state = self.state();
        if state.owned.get(&owner.partition) != Some(&owner.generation) {
            return Outcome::Ignored("the partition was revoked");
        }
        state.clock.observe(&owner.partition, judged.judged_at_ms, wall_ms);
        let outcome = state.join.add(&self.settings, judged, &owner.partition);
        metrics::gauge!("distillery_agreement_pending").set(state.join.pending() as f64);
        outcome
    }

    /// Moves the questions due to expire into `expiring`; returns everything there, by the
    /// partition it depends on.
    fn expiries(&self) -> BTreeMap<Assignment, Vec<AgreedSample>> {
        let wall_ms = self.wall_ms();
        let mut state = self.state();
        let State { owned, join, clock, expiring } = &mut *state;
        for (partition, question) in join.expire(&self.settings, clock, wall_ms) {
            let Some(&generation) = owned.get(&partition) else { continue };
            metrics::counter!("distillery_agreement_decisions_total", "outcome" => "expired").increment(1);
            tracing::warn!(question = %question.question_id, "{}", question.reason.as_deref().unwrap_or("expired"));
            expiring.insert(question.question_id.clone(), (Assignment { partition, generation }, question));
        }
        metrics::gauge!("distillery_agreement_pending").set(join.pending() as f64);
        let mut by_owner: BTreeMap<Assignment, Vec<AgreedSample>> = BTreeMap::new();
        for (owner, question) in expiring.values() {
            by_owner.entry(owner.clone()).or_default().push(question.clone());
        }
        by_owner
    }
}

impl Processor for Agreement {
    type Input = JudgedSample;
    const OUTPUTS: &'static [PortSpec] = &[
        PortSpec { name: "agreed", kind: RecordKind::AgreedSample },
        PortSpec { name: "rejected", kind: RecordKind::AgreedSample },
    ];
    const RESTORES_FROM_INPUT: bool = true;
    /// The rejections of the assigned partitions: an expiry is a decision the input alone
    /// would not repeat (a late verdict would turn it into an agreement).
    const RESTORES_FROM_OUTPUTS: &'static [RestoredOutput] =
        &[RestoredOutput { port: "rejected", scope: OutputScope::AssignedPartitions }];

    async fn process(&self, judged: JudgedSample, ctx: &RecordContext) -> Result<Vec<Emit>, ProcessError> {
        match self.add(judged, ctx) {
            Outcome::Decided(decided) if decided.accepted => {
                metrics::counter!("distillery_agreement_decisions_total", "outcome" => "agreed").increment(1);
                Ok(vec![Emit::record("agreed", &decided)?])
            }
            Outcome::Decided(rejected) => {
                metrics::counter!("distillery_agreement_decisions_total", "outcome" => "rejected").increment(1);
                Ok(vec![Emit::record("rejected", &rejected)?])
            }
            Outcome::Waiting | Outcome::Ignored(_) => Ok(Vec::new()),
        }
    }

    async fn on_assigned(&self, assigned: &[Assignment]) {
        let mut state = self.state();
        state.owned.extend(assigned.iter().map(|a| (a.partition.clone(), a.generation)));
    }

    async fn restore_output(&self, _port: &str, owner: Option<&Assignment>, payload: &[u8]) {
        let (Some(owner), Ok(rejected)) = (owner, decode::<AgreedSample>(payload)) else { return };
        let mut state = self.state();
        if state.owned.get(&owner.partition) == Some(&owner.generation) {
            state.join.mark_decided(&owner.partition, &rejected.question_id);
        }
    }

    async fn restore(&self, judged: JudgedSample, ctx: &RecordContext) {
        self.add(judged, ctx);
    }

    async fn on_revoked(&self, partitions: &[PartitionId]) {
        // The next owner rebuilds these joins from the partition; kept here they would expire
        // and be rejected by a replica that no longer owns them.
        let mut state = self.state();
        for p in partitions {
            state.owned.remove(p);
        }
        state.join.forget(partitions);
        state.clock.forget(partitions);
        state.expiring.retain(|_, (owner, _)| !partitions.contains(&owner.partition));
        metrics::gauge!("distillery_agreement_pending").set(state.join.pending() as f64);
    }

    /// Publishes the expiries, per partition; a failed publish is retried at the next tick.
    async fn on_tick(&self, outputs: &Outputs) {
        for (owner, questions) in self.expiries() {
            let emits: Vec<Emit> = questions.iter().filter_map(|q| Emit::record("rejected", q).ok()).collect();
            match outputs.publish(&emits, std::slice::from_ref(&owner)).await {
                Ok(()) => {
                    let mut state = self.state();
                    for question in &questions {
                        state.expiring.remove(&question.question_id);
                    }
                }
                Err(e) => tracing::warn!(partition = owner.partition.partition, "expiries not published: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Keep;
    use distillery_schemas::{now_ms, JudgeMethod, SamplingSettings, TeacherSample, Verdict};

    fn judged(question: &str, teacher: &str, judged_at_ms: i64) -> JudgedSample {
        JudgedSample {
            id: format!("{question}/{teacher}"),
            sample: TeacherSample {
                id: format!("s/{question}/{teacher}"),
                question_id: question.into(),
                dataset: "d".into(),
                problem: "p".into(),
                expected_answer: "1".into(),
                teacher: teacher.into(),
                attempt: 0,
                model: "m".into(),
                server_model: None,
                endpoint: None,
                reasoning: Some("r".into()),
                answer: Some("\\boxed{1}".into()),
                finish_reason: "stop".into(),
                prompt_tokens: 1,
                completion_tokens: 1,
                reasoning_tokens: None,
                latency_ms: 1,
                sampling: SamplingSettings {
                    temperature: 1.0,
                    top_p: 1.0,
                    max_tokens: 10,
                    reasoning_effort: None,
                    system_prompt: None,
                    prompt_template: "{problem}".into(),
                    seed: None,
                },
                replayed: false,
                created_at_ms: judged_at_ms,
            },
            verdict: Verdict::Match,
            extracted_answer: None,
            method: JudgeMethod::Rule,
            judge_model: None,
            judge_output: None,
            detail: None,
            judged_at_ms,
        }
    }

    fn assignment(partition: i32) -> Assignment {
        Assignment { partition: PartitionId { topic: "judged".into(), partition }, generation: 7 }
    }

    fn ctx(partition: i32) -> RecordContext {
        RecordContext {
            processor: "agreement".into(),
            topic: "judged".into(),
            partition,
            offset: 0,
            key: None,
            generation: assignment(partition).generation,
        }
    }

    /// One tick; what it published.
    async fn tick(agreement: &Agreement) -> Vec<Emit> {
        let outputs = Outputs::in_memory();
        agreement.on_tick(&outputs).await;
        outputs.take()
    }

    #[tokio::test]
    async fn replaying_verdicts_older_than_the_expiry_still_joins_them_across_ticks() {
        let agreement = Agreement::new(AgreementSettings {
            required_teachers: vec!["a".into(), "b".into()],
            attempts_per_teacher: 1,
            keep: Keep::First,
            expire_after_secs: 3600,
        });
        agreement.on_assigned(&[assignment(0), assignment(1)]).await;
        // An experiment judged 30 days ago, replayed now: an hour's expiry against the wall
        // clock would reject every question at the first tick.
        let month_ago = now_ms() - 30 * 24 * 3600 * 1000;
        assert!(agreement.process(judged("q1", "a", month_ago), &ctx(0)).await.unwrap().is_empty());
        assert!(agreement.process(judged("q2", "a", month_ago + 1_000), &ctx(1)).await.unwrap().is_empty());
        assert!(tick(&agreement).await.is_empty(), "nothing expires");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(tick(&agreement).await.is_empty(), "nor at the next tick");
        let out = agreement.process(judged("q1", "b", month_ago + 60_000), &ctx(0)).await.unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].port, "agreed");
        let agreed: AgreedSample = decode(&out[0].payload).unwrap();
        assert_eq!((agreed.question_id.as_str(), agreed.accepted), ("q1", true));

        // Event time moves past q2's deadline (first verdict + 1 h) on its partition: expired.
        let out = agreement.process(judged("q3", "a", month_ago + 3_602_000), &ctx(1)).await.unwrap();
        assert!(out.is_empty());
        let expired = tick(&agreement).await;
        assert_eq!(expired.len(), 1);
        let rejected: AgreedSample = decode(&expired[0].payload).unwrap();
        assert_eq!((rejected.question_id.as_str(), expired[0].port), ("q2", "rejected"));
        assert_eq!(rejected.reason.as_deref(), Some("expired: no verdict from b in time"));

        assert!(tick(&agreement).await.is_empty(), "an expiry is published once");
        // A late verdict for the expired question decides nothing.
        let late = agreement.process(judged("q2", "b", month_ago + 3_603_000), &ctx(1)).await.unwrap();
        assert!(late.is_empty(), "agreed after it expired: {late:?}");

        // A revoked partition's joins are dropped, not expired later by this replica, and a
        // stale task's verdict for it changes nothing.
        assert!(agreement.process(judged("q4", "a", month_ago + 3_602_000), &ctx(1)).await.unwrap().is_empty());
        agreement.on_revoked(&[assignment(1).partition]).await;
        assert_eq!(agreement.state().join.pending(), 0);
        assert!(agreement.process(judged("q4", "b", month_ago + 3_602_000), &ctx(1)).await.unwrap().is_empty());
        assert_eq!(agreement.state().join.pending(), 0);
    }

    #[tokio::test]
    async fn an_expiry_learned_from_the_rejected_topic_outlasts_a_restore_and_a_late_verdict() {
        let agreement = Agreement::new(AgreementSettings {
            required_teachers: vec!["a".into(), "b".into()],
            attempts_per_teacher: 1,
            keep: Keep::First,
            expire_after_secs: 60,
        });
        let expired = AgreedSample {
            id: "x".into(),
            question_id: "q".into(),
            dataset: "d".into(),
            problem: "p".into(),
            expected_answer: "1".into(),
            accepted: false,
            reason: Some("expired: no verdict from b in time".into()),
            traces: Vec::new(),
            decided_at_ms: 0,
        };
        let payload = distillery_schemas::encode(&expired).unwrap();
        agreement.on_assigned(&[assignment(0)]).await;
        // As on an assignment: the partition's rejections, then its records.
        agreement.restore_output("rejected", Some(&assignment(0)), &payload).await;
        agreement.restore(judged("q", "a", now_ms()), &ctx(0)).await;
        assert_eq!(agreement.state().join.pending(), 0, "the expired question is not pending again");
        let late = agreement.process(judged("q", "b", now_ms()), &ctx(0)).await.unwrap();
        assert!(late.is_empty(), "agreed after it expired: {late:?}");
    }
}
