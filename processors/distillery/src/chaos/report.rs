//! The comparison of the two runs, and the table `distillery chaos` prints.

use super::disruptions::{Disruptions, Service};
use super::outcome::Outcome;
use super::setup::EXPIRING_QUESTION;
use super::RunContext;
use distillery_llm_test_server::Fault;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

pub struct ChaosReport {
    pub questions: usize,
    /// Replicas of each replicated stage.
    pub replicas: usize,
    pub kills: BTreeMap<&'static str, usize>,
    /// Packer kills that landed during a shipment, and during a flush.
    pub kills_during_shipment: usize,
    pub kills_during_flush: usize,
    /// Replicas that joined and left their groups, by kind.
    pub joins: BTreeMap<&'static str, usize>,
    pub leaves: BTreeMap<&'static str, usize>,
    pub unplanned_exits: usize,
    pub faults: BTreeMap<Fault, u64>,
    pub teacher_down: Option<(Duration, Option<f64>)>,
    pub s3_down: Option<(Duration, Option<f64>)>,
    pub broker_restart: Option<(Duration, Option<f64>)>,
    pub kill_recovery_secs: Vec<f64>,
    /// Questions or packed sequences of the clean run missing from the chaos run.
    pub records_lost: usize,
    /// Packed sequences beyond the clean run's count, questions in two shards, and shards the
    /// killed trainer trained on twice.
    pub duplicates_reaching_trainer: usize,
    /// Questions both agreed and rejected, in either run.
    pub agreed_and_rejected: usize,
    /// Whether the scripted question expired and stayed rejected after its late verdict, in
    /// both runs.
    pub expiry_held: bool,
    /// Everything else that differs between the runs (empty when they agree).
    pub differences: Vec<String>,
    pub clean: Outcome,
    pub chaos: Outcome,
    pub clean_secs: f64,
    pub chaos_secs: f64,
}

impl ChaosReport {
    pub(crate) fn compare(
        context: &RunContext,
        clean: Outcome,
        chaos: Outcome,
        disruptions: Disruptions,
        faults: BTreeMap<Fault, u64>,
        clean_secs: f64,
        chaos_secs: f64,
    ) -> ChaosReport {
        let mut differences = Vec::new();
        let mut lost = 0;
        let mut duplicates = 0;
        for question in clean.agreed.keys().chain(&clean.rejected) {
            if !chaos.agreed.contains_key(question) && !chaos.rejected.contains(question) {
                lost += 1;
            }
        }
        if clean.agreed != chaos.agreed {
            differences.push("the agreed questions or their traces differ".into());
        }
        if clean.rejected != chaos.rejected {
            differences.push("the rejected questions differ".into());
        }
        if clean.dead_letters != chaos.dead_letters {
            differences.push(format!(
                "the dead letters differ: {:?} (clean) vs {:?} (chaos)",
                clean.dead_letters, chaos.dead_letters
            ));
        }
        for (style, clean_sequences) in &clean.sequences {
            let chaos_sequences = chaos.sequences.get(style).cloned().unwrap_or_default();
            for (hash, n) in clean_sequences {
                lost += n.saturating_sub(*chaos_sequences.get(hash).unwrap_or(&0));
            }
            for (hash, n) in &chaos_sequences {
                duplicates += n.saturating_sub(*clean_sequences.get(hash).unwrap_or(&0));
            }
            let (a, b) = (&clean.manifest_totals[style], chaos.manifest_totals.get(style).cloned().unwrap_or_default());
            if (a.sequences, a.tokens, a.completion_tokens) != (b.sequences, b.tokens, b.completion_tokens) {
                differences.push(format!("style {style}: manifest totals {a:?} (clean) vs {b:?} (chaos)"));
            }
        }
        let late = EXPIRING_QUESTION.to_string();
        let mut agreed_and_rejected = 0;
        let mut expiry_held = true;
        for (run, outcome) in [("clean", &clean), ("chaos", &chaos)] {
            duplicates += outcome.questions_in_two_shards.len();
            agreed_and_rejected += outcome.agreed_and_rejected.len();
            differences.extend(outcome.bad_manifests.iter().cloned());
            differences.extend(outcome.conflicting_decisions.iter().map(|q| format!("{q}: two different decisions")));
            differences
                .extend(outcome.agreed_and_rejected.iter().map(|q| format!("{run} run: {q} both agreed and rejected")));
            if outcome.agreed.contains_key(&late) || !outcome.rejected.contains(&late) {
                expiry_held = false;
                differences.push(format!("{run} run: the expired question {late} did not stay rejected"));
            }
        }
        match &chaos.trainer {
            Some(t) => {
                duplicates += t.repeated_shards;
                if !(t.weights_identical && t.optimizer_identical && t.same_shard_sequence && t.follows_topic_order) {
                    differences.push(format!("trainer: {t:?}"));
                }
            }
            None => differences.push("no trainer comparison".into()),
        }
        ChaosReport {
            questions: context.args.questions,
            replicas: context.args.replicas,
            kills: disruptions.kills.clone(),
            kills_during_shipment: disruptions.kills_during_shipment,
            kills_during_flush: disruptions.kills_during_flush,
            joins: disruptions.joins.clone(),
            leaves: disruptions.leaves.clone(),
            unplanned_exits: chaos.unplanned_exits.len(),
            faults,
            teacher_down: disruptions.outage_recovery(Service::TeacherEndpoint),
            s3_down: disruptions.outage_recovery(Service::S3),
            broker_restart: disruptions.outage_recovery(Service::Broker),
            kill_recovery_secs: disruptions.kill_recovery_secs.clone(),
            records_lost: lost,
            duplicates_reaching_trainer: duplicates,
            agreed_and_rejected,
            expiry_held,
            differences,
            clean,
            chaos,
            clean_secs,
            chaos_secs,
        }
    }

    pub fn total_kills(&self) -> usize {
        self.kills.values().sum()
    }

    /// Teacher generations (answered requests) per distinct sample in a run.
    pub fn calls_per_sample(outcome: &Outcome) -> f64 {
        outcome.teacher_calls.answered as f64 / outcome.samples.max(1) as f64
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let kills: Vec<String> = self.kills.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
        let moves: Vec<String> =
            self.joins.iter().map(|(kind, n)| format!("{kind} {n}/{}", self.leaves.get(kind).unwrap_or(&0))).collect();
        let faults: Vec<String> = self.faults.iter().map(|(f, n)| format!("{} {n}", f.name())).collect();
        let mut recovery = self.kill_recovery_secs.clone();
        recovery.sort_by(f64::total_cmp);
        let percentile = |p: f64| recovery.get(((recovery.len() as f64 - 1.0) * p).round() as usize).copied();
        let secs = |s: Option<f64>| s.map_or("not measured".to_string(), |s| format!("{s:.1} s"));
        let outage = |o: &Option<(Duration, Option<f64>)>| match o {
            Some((lasted, recovered)) => format!("{} s; output again {} after", lasted.as_secs(), secs(*recovered)),
            None => "not run".into(),
        };
        let trainer = match &self.chaos.trainer {
            Some(t) => format!(
                "{} after {} steps on {} shards (shard sequence {}, none repeated: {})",
                if t.weights_identical && t.optimizer_identical {
                    "bit-identical weights and optimizer"
                } else {
                    "DIFFERENT weights"
                },
                t.steps,
                t.shards,
                if t.same_shard_sequence && t.follows_topic_order { "identical" } else { "DIFFERENT" },
                t.repeated_shards == 0
            ),
            None => "not compared".into(),
        };
        let calls = |o: &Outcome| {
            format!(
                "{:.3} ({} generations for {} samples; {} requests with the faults)",
                Self::calls_per_sample(o),
                o.teacher_calls.answered,
                o.samples,
                o.teacher_calls.requests
            )
        };
        let r = self.replicas;
        let _ = writeln!(out, "| chaos run ({} questions) | result |\n|---|---|", self.questions);
        let _ = writeln!(
            out,
            "| replicas | samplers 2 x {r}, judge {r}, agreement {r}, packers 2 x {r}; trainer 1 (and a never-killed twin) |"
        );
        let _ = writeln!(out, "| SIGKILLs survived | {} ({}) |", self.total_kills(), kills.join(", "));
        let _ = writeln!(
            out,
            "| packer kills during a shipment / during a flush | {} / {} |",
            self.kills_during_shipment, self.kills_during_flush
        );
        let _ = writeln!(out, "| replicas joined / left (rebalances) | {} |", moves.join(", "));
        let _ = writeln!(out, "| processes that exited on their own and were restarted | {} |", self.unplanned_exits);
        let _ = writeln!(
            out,
            "| teacher faults injected | {} ({}) |",
            self.faults.values().sum::<u64>(),
            faults.join(", ")
        );
        let _ = writeln!(out, "| one teacher endpoint down | {} |", outage(&self.teacher_down));
        let _ = writeln!(out, "| S3 server unreachable (as the stream ends) | {} |", outage(&self.s3_down));
        let _ = writeln!(out, "| broker SIGKILLed and restarted (SQLite store) | {} |", outage(&self.broker_restart));
        let _ = writeln!(
            out,
            "| time from a kill to the stage's next output | median {}, 90th percentile {}, max {} ({} kills measured) |",
            secs(percentile(0.5)),
            secs(percentile(0.9)),
            secs(recovery.last().copied()),
            recovery.len()
        );
        let _ = writeln!(
            out,
            "| agreed / rejected | {} / {} (clean run: {} / {}) |",
            self.chaos.agreed.len(),
            self.chaos.rejected.len(),
            self.clean.agreed.len(),
            self.clean.rejected.len()
        );
        let _ = writeln!(
            out,
            "| expired question, then its late verdict | {} |",
            if self.expiry_held { "stayed rejected in both runs" } else { "NOT rejected in both runs" }
        );
        let _ = writeln!(out, "| questions both agreed and rejected | {} |", self.agreed_and_rejected);
        let _ = writeln!(out, "| dead letters | {} in each run, the same |", self.chaos.dead_letters.len());
        let _ = writeln!(out, "| packed: clean run | {} |", self.clean.summary());
        let _ = writeln!(out, "| packed: chaos run | {} |", self.chaos.summary());
        let _ = writeln!(out, "| records lost | {} |", self.records_lost);
        let _ = writeln!(
            out,
            "| duplicates reaching the trainer (sequences, questions in two shards, shards trained twice) | {} |",
            self.duplicates_reaching_trainer
        );
        let _ = writeln!(out, "| killed trainer vs its never-killed twin | {trainer} |");
        let _ = writeln!(out, "| teacher calls per sample: clean run | {} |", calls(&self.clean));
        let _ = writeln!(out, "| teacher calls per sample: chaos run | {} |", calls(&self.chaos));
        let _ = writeln!(out, "| wall time | clean {:.0} s, chaos {:.0} s |", self.clean_secs, self.chaos_secs);
        if self.differences.is_empty() {
            let _ = writeln!(out, "\nThe chaos run's dataset is identical to the clean run's.");
        } else {
            let _ = writeln!(out, "\nDifferences:");
            for difference in &self.differences {
                let _ = writeln!(out, "- {difference}");
            }
        }
        out
    }
}
