//! The join state of one agreement processor: verdicts of questions still waiting for other
//! teachers, and the questions already decided (so replays and late verdicts decide nothing
//! twice). Pure: no Kafka, no clock of its own.

use crate::config::{AgreementSettings, Keep};
use distillery_schemas::{stable_id, AgreedSample, JudgedSample, TeacherTrace, Verdict};
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Default)]
struct Pending {
    /// Verdicts by teacher, by attempt.
    verdicts: BTreeMap<String, BTreeMap<i32, JudgedSample>>,
    first_seen_ms: i64,
}

#[derive(Debug, Default)]
pub struct JoinState {
    pending: HashMap<String, Pending>,
    decided: HashSet<String>,
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

    /// Adds a verdict; `now_ms` stamps when the question was first seen.
    pub fn add(&mut self, settings: &AgreementSettings, judged: JudgedSample, now_ms: i64) -> Outcome {
        let question = judged.sample.question_id.clone();
        if self.decided.contains(&question) {
            return Outcome::Ignored("question already decided");
        }
        if !settings.required_teachers.contains(&judged.sample.teacher) {
            return Outcome::Ignored("teacher not required");
        }
        let pending = self
            .pending
            .entry(question.clone())
            .or_insert_with(|| Pending { first_seen_ms: now_ms, ..Default::default() });
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
        if !failed.is_empty() {
            let reason = format!("no MATCH from {}", failed.join(", "));
            return Outcome::Decided(self.decide(settings, &question, false, Some(reason)));
        }
        if waiting {
            return Outcome::Waiting;
        }
        Outcome::Decided(self.decide(settings, &question, true, None))
    }

    /// Rejects every question first seen at or before `cutoff_ms` that is still waiting.
    pub fn expire(&mut self, settings: &AgreementSettings, cutoff_ms: i64) -> Vec<AgreedSample> {
        let expired: Vec<String> =
            self.pending.iter().filter(|(_, p)| p.first_seen_ms <= cutoff_ms).map(|(q, _)| q.clone()).collect();
        expired
            .into_iter()
            .map(|question| {
                let missing: Vec<&str> = settings
                    .required_teachers
                    .iter()
                    .filter(|t| !self.pending[&question].verdicts.contains_key(*t))
                    .map(String::as_str)
                    .collect();
                let reason = format!(
                    "expired: no verdict from {} in time",
                    if missing.is_empty() { "every attempt".to_string() } else { missing.join(", ") }
                );
                self.decide(settings, &question, false, Some(reason))
            })
            .collect()
    }

    fn decide(
        &mut self,
        settings: &AgreementSettings,
        question: &str,
        accepted: bool,
        reason: Option<String>,
    ) -> AgreedSample {
        let pending = self.pending.remove(question).unwrap_or_default();
        self.decided.insert(question.to_string());
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
        assert_eq!(join.add(&s, judged("q", "a", 0, Verdict::Match, 5), 0), Outcome::Waiting);
        let Outcome::Decided(agreed) = join.add(&s, judged("q", "b", 0, Verdict::Match, 7), 0) else { panic!() };
        assert!(agreed.accepted);
        assert_eq!(agreed.traces.iter().map(|t| t.teacher.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(
            join.add(&s, judged("q", "b", 0, Verdict::Match, 7), 0),
            Outcome::Ignored("question already decided")
        );
        assert_eq!(join.pending(), 0);
    }

    #[test]
    fn a_mismatch_rejects_and_other_teachers_are_ignored() {
        let s = settings(1, Keep::First);
        let mut join = JoinState::default();
        let Outcome::Decided(rejected) = join.add(&s, judged("q", "b", 0, Verdict::Mismatch, 3), 0) else { panic!() };
        assert!(!rejected.accepted);
        assert_eq!(rejected.reason.as_deref(), Some("no MATCH from b"));
        assert_eq!(join.add(&s, judged("r", "c", 0, Verdict::Match, 3), 0), Outcome::Ignored("teacher not required"));
    }

    #[test]
    fn with_several_attempts_the_setting_picks_the_match_to_keep() {
        let mut join = JoinState::default();
        let s = settings(3, Keep::Shortest);
        join.add(&s, judged("q", "a", 0, Verdict::Match, 50), 0);
        join.add(&s, judged("q", "a", 1, Verdict::Mismatch, 5), 0);
        assert_eq!(join.add(&s, judged("q", "a", 2, Verdict::Match, 20), 0), Outcome::Waiting, "b has not answered");
        join.add(&s, judged("q", "b", 0, Verdict::Mismatch, 9), 0);
        join.add(&s, judged("q", "b", 1, Verdict::Mismatch, 9), 0);
        let Outcome::Decided(d) = join.add(&s, judged("q", "b", 2, Verdict::Match, 9), 0) else { panic!() };
        assert!(d.accepted);
        assert_eq!(d.traces[0].completion_tokens, 20, "shortest MATCH of a");
        let mut first = JoinState::default();
        let s = settings(2, Keep::First);
        first.add(&s, judged("q", "a", 1, Verdict::Match, 1), 0);
        first.add(&s, judged("q", "a", 0, Verdict::Match, 50), 0);
        let Outcome::Decided(d) = first.add(&s, judged("q", "b", 0, Verdict::Match, 9), 0) else { panic!() };
        assert_eq!(d.traces[0].completion_tokens, 50, "first attempt of a");
    }

    #[test]
    fn waiting_questions_expire_with_the_missing_teacher_named() {
        let s = settings(1, Keep::First);
        let mut join = JoinState::default();
        join.add(&s, judged("old", "a", 0, Verdict::Match, 1), 1_000);
        join.add(&s, judged("new", "a", 0, Verdict::Match, 1), 5_000);
        let expired = join.expire(&s, 2_000);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].question_id, "old");
        assert_eq!(expired[0].reason.as_deref(), Some("expired: no verdict from b in time"));
        assert_eq!(
            join.add(&s, judged("old", "b", 0, Verdict::Match, 1), 9_000),
            Outcome::Ignored("question already decided")
        );
        assert_eq!(join.pending(), 1);
    }
}
