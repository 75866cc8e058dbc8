//! The join state of one agreement processor: verdicts of questions still waiting for other
//! teachers, and the questions already decided (so replays and late verdicts decide nothing
//! twice), by input partition. Pure: no Kafka, no clock of its own (expiry reads the
//! stream's [`EventClock`]).

use crate::clock::EventClock;
use crate::config::{AgreementSettings, Keep};
use distillery_runtime::PartitionId;
use distillery_schemas::{stable_id, AgreedSample, JudgedSample, TeacherTrace, Verdict};
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug)]
struct Pending {
    /// The input partition the question's verdicts come from (all of them: keyed by question).
    partition: PartitionId,
    /// Verdicts by teacher, by attempt.
    verdicts: BTreeMap<String, BTreeMap<i32, JudgedSample>>,
    /// Event time of the question's first verdict (its `judged_at_ms`).
    first_seen_ms: i64,
}

#[derive(Debug, Default)]
pub struct JoinState {
    pending: HashMap<String, Pending>,
    /// Decided questions, by the partition they came from.
    decided: HashMap<PartitionId, HashSet<String>>,
}

/// What one verdict did to the join.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Still waiting for other verdicts.
    Waiting,
    /// The question was decided: agreed (accepted) or rejected.
    Decided(AgreedSample),
    /// Already decided (a replay, or a verdict after the decision), or a teacher the join
    /// does not need: nothing to do.
    Ignored(&'static str),
}

impl JoinState {
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Adds a verdict read from `partition`; the first verdict of a question starts its
    /// expiry at that verdict's event time (`judged_at_ms`).
    pub fn add(&mut self, settings: &AgreementSettings, judged: JudgedSample, partition: &PartitionId) -> Outcome {
        let question = judged.sample.question_id.clone();
        if self.decided.get(partition).is_some_and(|d| d.contains(&question)) {
            return Outcome::Ignored("question already decided");
        }
        if !settings.required_teachers.contains(&judged.sample.teacher) {
            return Outcome::Ignored("teacher not required");
        }
        let pending = self.pending.entry(question.clone()).or_insert_with(|| Pending {
            partition: partition.clone(),
            verdicts: BTreeMap::new(),
            first_seen_ms: judged.judged_at_ms,
        });
        pending.verdicts.entry(judged.sample.teacher.clone()).or_default().insert(judged.sample.attempt, judged);
        let mut failed = Vec::new();
        let mut waiting = false;
        for teacher in &settings.required_teachers {
            let verdicts = pending.verdicts.get(teacher);
            let has_match = verdicts.is_some_and(|v| v.values().any(|j| j.verdict == Verdict::Match));
            let attempts = verdicts.map_or(0, |v| v.len());
            if has_match {
                continue;
            }
            if attempts >= settings.attempts_per_teacher as usize {
                failed.push(teacher.clone());
            } else {
                waiting = true;
            }
        }
        let (accepted, reason) = if !failed.is_empty() {
            (false, Some(format!("no MATCH from {}", failed.join(", "))))
        } else if waiting {
            return Outcome::Waiting;
        } else {
            (true, None)
        };
        match self.pending.remove(&question) {
            Some(pending) => Outcome::Decided(self.decide(settings, &question, pending, accepted, reason)),
            None => Outcome::Waiting, // cannot happen: inserted above
        }
    }

    /// Counts a question as decided (a rejection learned from the `rejected` topic: an
    /// expiry its input alone would not repeat).
    pub fn mark_decided(&mut self, partition: &PartitionId, question: &str) {
        self.pending.remove(question);
        self.decided.entry(partition.clone()).or_default().insert(question.to_string());
    }

    /// Rejects every question still waiting whose partition's event time (at wall time
    /// `wall_ms`) reached its first verdict's time plus `expire_after_secs`; returns each
    /// rejection with the partition it came from.
    pub fn expire(
        &mut self,
        settings: &AgreementSettings,
        clock: &EventClock,
        wall_ms: i64,
    ) -> Vec<(PartitionId, AgreedSample)> {
        let expire_after_ms = i64::try_from(settings.expire_after_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let mut expired: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                clock
                    .now(&p.partition, wall_ms)
                    .is_some_and(|now| now >= p.first_seen_ms.saturating_add(expire_after_ms))
            })
            .map(|(q, _)| q.clone())
            .collect();
        expired.sort(); // a stable order of outputs
        expired
            .into_iter()
            .filter_map(|question| {
                let pending = self.pending.remove(&question)?;
                let missing: Vec<&str> = settings
                    .required_teachers
                    .iter()
                    .filter(|t| !pending.verdicts.contains_key(*t))
                    .map(String::as_str)
                    .collect();
                let reason = format!(
                    "expired: no verdict from {} in time",
                    if missing.is_empty() { "every attempt".to_string() } else { missing.join(", ") }
                );
                let partition = pending.partition.clone();
                Some((partition, self.decide(settings, &question, pending, false, Some(reason))))
            })
            .collect()
    }

    /// Drops the joins of partitions this replica no longer owns (their new owner rebuilds
    /// them from the partition).
    pub fn forget(&mut self, partitions: &[PartitionId]) {
        self.pending.retain(|_, p| !partitions.contains(&p.partition));
        for p in partitions {
            self.decided.remove(p);
        }
    }

    fn decide(
        &mut self,
        settings: &AgreementSettings,
        question: &str,
        pending: Pending,
        accepted: bool,
        reason: Option<String>,
    ) -> AgreedSample {
        self.decided.entry(pending.partition.clone()).or_default().insert(question.to_string());
        let mut teachers = settings.required_teachers.clone();
        teachers.sort();
        let mut parts = vec![question];
        parts.extend(teachers.iter().map(String::as_str));
        let any = pending.verdicts.values().flat_map(|v| v.values()).next();
        let traces = settings
            .required_teachers
            .iter()
            .filter_map(|teacher| {
                let verdicts = pending.verdicts.get(teacher)?;
                let matches: Vec<&JudgedSample> = verdicts.values().filter(|j| j.verdict == Verdict::Match).collect();
                let shown = choose(&matches, settings.keep).or_else(|| verdicts.values().next())?;
                Some(trace(shown))
            })
            .collect();
        AgreedSample {
            id: stable_id(&parts),
            question_id: question.to_string(),
            dataset: any.map(|j| j.sample.dataset.clone()).unwrap_or_default(),
            problem: any.map(|j| j.sample.problem.clone()).unwrap_or_default(),
            expected_answer: any.map(|j| j.sample.expected_answer.clone()).unwrap_or_default(),
            accepted,
            reason,
            traces,
            decided_at_ms: any.map(|j| j.judged_at_ms).unwrap_or_default(),
        }
    }
}

fn choose<'a>(matches: &[&'a JudgedSample], keep: Keep) -> Option<&'a JudgedSample> {
    match keep {
        Keep::First => matches.iter().min_by_key(|j| j.sample.attempt).copied(),
        Keep::Shortest => matches
            .iter()
            .min_by_key(|j| {
                let text =
                    j.sample.reasoning.as_deref().map_or(0, str::len) + j.sample.answer.as_deref().map_or(0, str::len);
                (j.sample.completion_tokens, text, j.sample.attempt)
            })
            .copied(),
    }
}

fn trace(j: &JudgedSample) -> TeacherTrace {
    TeacherTrace {
        teacher: j.sample.teacher.clone(),
        sample_id: j.sample.id.clone(),
        verdict: format!("{:?}", j.verdict).to_uppercase(),
        reasoning: j.sample.reasoning.clone(),
        answer: j.sample.answer.clone(),
        completion_tokens: j.sample.completion_tokens,
        finish_reason: j.sample.finish_reason.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distillery_schemas::{JudgeMethod, SamplingSettings, TeacherSample};

    fn settings(attempts: u32, keep: Keep) -> AgreementSettings {
        AgreementSettings {
            required_teachers: vec!["a".into(), "b".into()],
            attempts_per_teacher: attempts,
            keep,
            expire_after_secs: 60,
        }
    }

    fn p0() -> PartitionId {
        PartitionId { topic: "judged".into(), partition: 0 }
    }

    fn at(mut j: JudgedSample, judged_at_ms: i64) -> JudgedSample {
        j.judged_at_ms = judged_at_ms;
        j
    }

    fn judged(question: &str, teacher: &str, attempt: i32, verdict: Verdict, tokens: i32) -> JudgedSample {
        JudgedSample {
            id: format!("{question}/{teacher}/{attempt}"),
            sample: TeacherSample {
                id: format!("s/{question}/{teacher}/{attempt}"),
                question_id: question.into(),
                dataset: "d".into(),
                problem: "p".into(),
                expected_answer: "1".into(),
                teacher: teacher.into(),
                attempt,
                model: "m".into(),
                server_model: None,
                endpoint: None,
                reasoning: Some("r".repeat(tokens as usize)),
                answer: Some("\\boxed{1}".into()),
                finish_reason: "stop".into(),
                prompt_tokens: 1,
                completion_tokens: tokens,
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
                created_at_ms: 0,
            },
            verdict,
            extracted_answer: None,
            method: JudgeMethod::Rule,
            judge_model: None,
            judge_output: None,
            detail: None,
            judged_at_ms: 100,
        }
    }

    #[test]
    fn both_matches_agree_once_and_replays_are_ignored() {
        let s = settings(1, Keep::First);
        let mut join = JoinState::default();
        assert_eq!(join.add(&s, judged("q", "a", 0, Verdict::Match, 5), &p0()), Outcome::Waiting);
        let Outcome::Decided(agreed) = join.add(&s, judged("q", "b", 0, Verdict::Match, 7), &p0()) else { panic!() };
        assert!(agreed.accepted);
        assert_eq!(agreed.traces.iter().map(|t| t.teacher.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(
            join.add(&s, judged("q", "b", 0, Verdict::Match, 7), &p0()),
            Outcome::Ignored("question already decided")
        );
        assert_eq!(join.pending(), 0);
    }

    #[test]
    fn a_mismatch_rejects_and_other_teachers_are_ignored() {
        let s = settings(1, Keep::First);
        let mut join = JoinState::default();
        let Outcome::Decided(rejected) = join.add(&s, judged("q", "b", 0, Verdict::Mismatch, 3), &p0()) else {
            panic!()
        };
        assert!(!rejected.accepted);
        assert_eq!(rejected.reason.as_deref(), Some("no MATCH from b"));
        assert_eq!(
            join.add(&s, judged("r", "c", 0, Verdict::Match, 3), &p0()),
            Outcome::Ignored("teacher not required")
        );
    }

    #[test]
    fn with_several_attempts_the_setting_picks_the_match_to_keep() {
        let mut join = JoinState::default();
        let s = settings(3, Keep::Shortest);
        join.add(&s, judged("q", "a", 0, Verdict::Match, 50), &p0());
        join.add(&s, judged("q", "a", 1, Verdict::Mismatch, 5), &p0());
        assert_eq!(
            join.add(&s, judged("q", "a", 2, Verdict::Match, 20), &p0()),
            Outcome::Waiting,
            "b has not answered"
        );
        join.add(&s, judged("q", "b", 0, Verdict::Mismatch, 9), &p0());
        join.add(&s, judged("q", "b", 1, Verdict::Mismatch, 9), &p0());
        let Outcome::Decided(d) = join.add(&s, judged("q", "b", 2, Verdict::Match, 9), &p0()) else { panic!() };
        assert!(d.accepted);
        assert_eq!(d.traces[0].completion_tokens, 20, "shortest MATCH of a");
        let mut first = JoinState::default();
        let s = settings(2, Keep::First);
        first.add(&s, judged("q", "a", 1, Verdict::Match, 1), &p0());
        first.add(&s, judged("q", "a", 0, Verdict::Match, 50), &p0());
        let Outcome::Decided(d) = first.add(&s, judged("q", "b", 0, Verdict::Match, 9), &p0()) else { panic!() };
        assert_eq!(d.traces[0].completion_tokens, 50, "first attempt of a");
    }

    #[test]
    fn waiting_questions_expire_by_the_partitions_event_time_with_the_missing_teacher_named() {
        let s = settings(1, Keep::First); // expire after 60 s
        let (mut join, mut clock) = (JoinState::default(), EventClock::default());
        let add = |join: &mut JoinState, clock: &mut EventClock, j: JudgedSample, wall_ms| {
            clock.observe(&p0(), j.judged_at_ms, wall_ms);
            join.add(&s, j, &p0())
        };
        add(&mut join, &mut clock, at(judged("old", "a", 0, Verdict::Match, 1), 1_000), 0);
        add(&mut join, &mut clock, at(judged("new", "a", 0, Verdict::Match, 1), 50_000), 0);
        assert!(join.expire(&s, &clock, 0).is_empty(), "event time 50 s: nothing is 60 s old");
        // The stream goes quiet: its time moves on with the wall clock.
        let expired = join.expire(&s, &clock, 11_000);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0, p0());
        assert_eq!(expired[0].1.question_id, "old");
        assert_eq!(expired[0].1.reason.as_deref(), Some("expired: no verdict from b in time"));
        assert_eq!(
            add(&mut join, &mut clock, at(judged("old", "b", 0, Verdict::Match, 1), 52_000), 11_000),
            Outcome::Ignored("question already decided")
        );
        // A later verdict moves event time past "new"'s deadline.
        add(&mut join, &mut clock, at(judged("other", "a", 0, Verdict::Match, 1), 200_000), 11_001);
        let expired = join.expire(&s, &clock, 11_001);
        assert_eq!(expired.iter().map(|(_, e)| e.question_id.as_str()).collect::<Vec<_>>(), ["new"]);
        assert_eq!(join.pending(), 1);
        assert!(join.expire(&s, &clock, 11_002).is_empty(), "\"other\" is not due");
        let other = PartitionId { topic: "judged".into(), partition: 1 };
        join.add(&s, at(judged("elsewhere", "a", 0, Verdict::Match, 1), 0), &other);
        assert!(join.expire(&s, &clock, 11_002).is_empty(), "partition 1 has seen no time yet");
    }

    #[test]
    fn a_replay_of_an_old_experiment_joins_verdicts_far_apart_in_wall_time() {
        // judged_at_ms a year ago; the verdicts of a question arrive 30 s apart in replay.
        let s = settings(1, Keep::First);
        let (mut join, mut clock) = (JoinState::default(), EventClock::default());
        let year_ago = 1_700_000_000_000;
        clock.observe(&p0(), year_ago, 0);
        assert_eq!(join.add(&s, at(judged("q", "a", 0, Verdict::Match, 1), year_ago), &p0()), Outcome::Waiting);
        assert!(join.expire(&s, &clock, 30_000).is_empty());
        clock.observe(&p0(), year_ago + 5_000, 30_000);
        let Outcome::Decided(d) = join.add(&s, at(judged("q", "b", 0, Verdict::Match, 1), year_ago + 5_000), &p0())
        else {
            panic!()
        };
        assert!(d.accepted);
    }

    #[test]
    fn a_question_learned_as_decided_ignores_its_verdicts() {
        let s = settings(1, Keep::First);
        let mut join = JoinState::default();
        join.add(&s, judged("q", "a", 0, Verdict::Match, 1), &p0());
        join.mark_decided(&p0(), "q");
        assert_eq!(join.pending(), 0);
        assert_eq!(
            join.add(&s, judged("q", "b", 0, Verdict::Match, 1), &p0()),
            Outcome::Ignored("question already decided")
        );
    }

    #[test]
    fn revoked_partitions_are_forgotten() {
        let s = settings(1, Keep::First);
        let mut join = JoinState::default();
        let p1 = PartitionId { topic: "judged".into(), partition: 1 };
        join.add(&s, judged("q", "a", 0, Verdict::Match, 1), &p0());
        join.add(&s, judged("r", "a", 0, Verdict::Match, 1), &p1);
        join.add(&s, judged("r", "b", 0, Verdict::Match, 1), &p1);
        join.forget(std::slice::from_ref(&p1));
        assert_eq!(join.pending(), 1);
        assert_eq!(join.add(&s, judged("r", "a", 0, Verdict::Match, 1), &p1), Outcome::Waiting, "decided forgotten");
    }
}
