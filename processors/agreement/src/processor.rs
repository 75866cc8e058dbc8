//! Judged sample in; agreed or rejected out.

use crate::config::AgreementSettings;
use crate::join::{JoinState, Outcome};
use distillery_runtime::{Emit, PortSpec, ProcessError, Processor, RecordContext};
use distillery_schemas::{now_ms, JudgedSample, RecordKind};
use std::sync::Mutex;

pub struct Agreement {
    settings: AgreementSettings,
    join: Mutex<JoinState>,
}

impl Agreement {
    pub fn new(settings: AgreementSettings) -> Agreement {
        Agreement { settings, join: Mutex::new(JoinState::default()) }
    }

    fn add(&self, judged: JudgedSample) -> Outcome {
        // The judge's timestamp, not the clock: a restore replays the same times.
        let at = judged.judged_at_ms;
        let mut join = self.join.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = join.add(&self.settings, judged, at);
        metrics::gauge!("distillery_agreement_pending").set(join.pending() as f64);
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

    async fn process(&self, judged: JudgedSample, _ctx: &RecordContext) -> Result<Vec<Emit>, ProcessError> {
        match self.add(judged) {
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

    async fn restore(&self, judged: JudgedSample, _ctx: &RecordContext) {
        self.add(judged);
    }

    async fn on_tick(&self) -> Vec<Emit> {
        let cutoff = now_ms() - (self.settings.expire_after_secs as i64) * 1000;
        let expired = self.join.lock().unwrap_or_else(|e| e.into_inner()).expire(&self.settings, cutoff);
        for question in &expired {
            metrics::counter!("distillery_agreement_decisions_total", "outcome" => "expired").increment(1);
            tracing::warn!(question = %question.question_id, "{}", question.reason.as_deref().unwrap_or("expired"));
        }
        expired.iter().filter_map(|q| Emit::record("rejected", q).ok()).collect()
    }
}
