//! Judged sample in; agreed or rejected out.

use crate::clock::EventClock;
use crate::config::AgreementSettings;
use crate::join::{JoinState, Outcome};
use distillery_runtime::{Emit, PartitionId, PortSpec, ProcessError, Processor, RecordContext};
use distillery_schemas::{JudgedSample, RecordKind};
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
    join: JoinState,
    clock: EventClock,
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
        let partition = PartitionId { topic: ctx.topic.clone(), partition: ctx.partition };
        let wall_ms = self.wall_ms();
        let mut state = self.state();
        state.clock.observe(&partition, judged.judged_at_ms, wall_ms);
        let outcome = state.join.add(&self.settings, judged, &partition);
        metrics::gauge!("distillery_agreement_pending").set(state.join.pending() as f64);
        outcome
    }
}

impl Processor for Agreement {
    type Input = JudgedSample;
    const OUTPUTS: &'static [PortSpec] = &[
        PortSpec { name: "agreed", kind: RecordKind::AgreedSample },
        PortSpec { name: "rejected", kind: RecordKind::AgreedSample },
    ];
    const RESTORES_FROM_INPUT: bool = true;

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

    async fn restore(&self, judged: JudgedSample, ctx: &RecordContext) {
        self.add(judged, ctx);
    }

    async fn on_revoked(&self, partitions: &[PartitionId]) {
        // The new owner rebuilds these joins from the partition; kept here they would expire
        // and be rejected by a replica that no longer owns them.
        let mut state = self.state();
        state.join.forget(partitions);
        state.clock.forget(partitions);
        metrics::gauge!("distillery_agreement_pending").set(state.join.pending() as f64);
    }

    async fn on_tick(&self) -> Vec<Emit> {
        let wall_ms = self.wall_ms();
        let expired = {
            let mut state = self.state();
            let State { join, clock } = &mut *state;
            let expired = join.expire(&self.settings, clock, wall_ms);
            metrics::gauge!("distillery_agreement_pending").set(join.pending() as f64);
            expired
        };
        for question in &expired {
            metrics::counter!("distillery_agreement_decisions_total", "outcome" => "expired").increment(1);
            tracing::warn!(question = %question.question_id, "{}", question.reason.as_deref().unwrap_or("expired"));
        }
        expired.iter().filter_map(|q| Emit::record("rejected", q).ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Keep;
    use distillery_schemas::{decode, now_ms, AgreedSample, JudgeMethod, SamplingSettings, TeacherSample, Verdict};

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

    fn ctx(partition: i32) -> RecordContext {
        RecordContext { processor: "agreement".into(), topic: "judged".into(), partition, offset: 0, key: None }
    }

    #[tokio::test]
    async fn replaying_verdicts_older_than_the_expiry_still_joins_them_across_ticks() {
        let agreement = Agreement::new(AgreementSettings {
            required_teachers: vec!["a".into(), "b".into()],
            attempts_per_teacher: 1,
            keep: Keep::First,
            expire_after_secs: 3600,
        });
        // An experiment judged 30 days ago, replayed now: an hour's expiry against the wall
        // clock would reject every question at the first tick.
        let month_ago = now_ms() - 30 * 24 * 3600 * 1000;
        assert!(agreement.process(judged("q1", "a", month_ago), &ctx(0)).await.unwrap().is_empty());
        assert!(agreement.process(judged("q2", "a", month_ago + 1_000), &ctx(1)).await.unwrap().is_empty());
        assert!(agreement.on_tick().await.is_empty(), "nothing expires");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(agreement.on_tick().await.is_empty(), "nor at the next tick");
        let out = agreement.process(judged("q1", "b", month_ago + 60_000), &ctx(0)).await.unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].port, "agreed");
        let agreed: AgreedSample = decode(&out[0].payload).unwrap();
        assert_eq!((agreed.question_id.as_str(), agreed.accepted), ("q1", true));

        // Event time moves past q2's deadline (first verdict + 1 h) on its partition: expired.
        let out = agreement.process(judged("q3", "a", month_ago + 3_602_000), &ctx(1)).await.unwrap();
        assert!(out.is_empty());
        let expired = agreement.on_tick().await;
        assert_eq!(expired.len(), 1);
        let rejected: AgreedSample = decode(&expired[0].payload).unwrap();
        assert_eq!((rejected.question_id.as_str(), expired[0].port), ("q2", "rejected"));
        assert_eq!(rejected.reason.as_deref(), Some("expired: no verdict from b in time"));

        // A revoked partition's joins are dropped, not expired later by this replica.
        agreement.on_revoked(&[PartitionId { topic: "judged".into(), partition: 1 }]).await;
        assert_eq!(agreement.state().join.pending(), 0);
    }
}
