//! The disruptions of the chaos run, advanced by [`Disruptions::step`] from the run loop:
//! SIGKILLs with restarts, replicas joining and leaving their groups, and the outages (a
//! teacher endpoint, the broker, and S3 as the stream ends).

use super::pipeline::{Pipeline, Shipping};
use super::{RunContext, KINDS, REPLICATED};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub struct Disruptions {
    rng: rand::rngs::StdRng,
    started: Instant,
    next_kill: Instant,
    /// While S3 is down: when the next packer that waits for it with a shipment is killed.
    next_shipment_kill: Instant,
    next_rebalance: Instant,
    pub kills: BTreeMap<&'static str, usize>,
    /// Packer kills that landed while the replica was shipping a shard, and a flush.
    pub kills_during_shipment: usize,
    pub kills_during_flush: usize,
    /// Replicas that joined and left, by kind.
    pub joins: BTreeMap<&'static str, usize>,
    pub leaves: BTreeMap<&'static str, usize>,
    /// (kind, when, the kind's output count then) for kills not yet followed by new output.
    pending_recovery: Vec<(&'static str, Instant, i64)>,
    pub kill_recovery_secs: Vec<f64>,
    outages: Vec<Outage>,
}

struct Outage {
    what: Service,
    begins: Begins,
    lasts: Duration,
    state: OutageState,
}

/// When an outage begins.
enum Begins {
    After(Duration),
    /// Once the agreement decided this many questions: the stream is ending, so the packers'
    /// last shipments and flushes wait for the service.
    WhenDecided(i64),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Service {
    TeacherEndpoint,
    S3,
    Broker,
}

enum OutageState {
    Waiting,
    Down(Instant),
    /// Back up at this time; recovered when the watched output grows past the count.
    Back(Instant, i64),
    Recovered(f64),
}

impl Disruptions {
    pub(crate) fn new(context: &RunContext) -> Disruptions {
        let args = &context.args;
        let mut outages = vec![Outage {
            what: Service::TeacherEndpoint,
            begins: Begins::After(Duration::from_secs(5)),
            lasts: Duration::from_secs(args.teacher_down_secs),
            state: OutageState::Waiting,
        }];
        if context.s3_proxy.is_some() {
            outages.push(Outage {
                what: Service::S3,
                begins: Begins::WhenDecided((args.questions as i64 * 95) / 100),
                lasts: Duration::from_secs(args.s3_down_secs),
                state: OutageState::Waiting,
            });
        }
        outages.push(Outage {
            what: Service::Broker,
            begins: Begins::After(Duration::from_secs(20)),
            lasts: Duration::from_secs(3),
            state: OutageState::Waiting,
        });
        let zero = || REPLICATED.iter().map(|kind| (*kind, 0)).collect();
        Disruptions {
            rng: rand::rngs::StdRng::seed_from_u64(args.seed),
            started: Instant::now(),
            next_kill: Instant::now() + Duration::from_secs(2),
            next_shipment_kill: Instant::now(),
            next_rebalance: Instant::now() + Duration::from_secs(3),
            kills: KINDS.iter().map(|(kind, _, _)| (*kind, 0)).collect(),
            kills_during_shipment: 0,
            kills_during_flush: 0,
            joins: zero(),
            leaves: zero(),
            pending_recovery: Vec::new(),
            kill_recovery_secs: Vec::new(),
            outages,
        }
    }

    pub fn done(&self) -> bool {
        self.outages.iter().all(|o| matches!(o.state, OutageState::Back(..) | OutageState::Recovered(_)))
    }

    fn s3_down(&self) -> bool {
        self.outages.iter().any(|o| o.what == Service::S3 && matches!(o.state, OutageState::Down(_)))
    }

    pub(crate) fn step(&mut self, context: &RunContext, pipeline: &mut Pipeline) -> anyhow::Result<()> {
        // Kills finish their recovery when the stage's output grows again.
        let mut still_pending = Vec::new();
        for (kind, at, count) in std::mem::take(&mut self.pending_recovery) {
            match pipeline.output_count(kind) {
                Some(n) if n > count => self.kill_recovery_secs.push(at.elapsed().as_secs_f64()),
                _ => still_pending.push((kind, at, count)),
            }
        }
        self.pending_recovery = still_pending;
        self.outages(context, pipeline)?;
        self.rebalance(context, pipeline)?;
        self.kill(context, pipeline)
    }

    fn outages(&mut self, context: &RunContext, pipeline: &mut Pipeline) -> anyhow::Result<()> {
        let now = Instant::now();
        // S3 stays down past its time until a packer kill has landed during a shipment and
        // during a flush (the packers' last flush waits for its idle timer), at most 4x longer:
        // otherwise a fast run can end its outage before any packer tried to ship.
        let shipment_kills_landed = self.kills_during_shipment >= 1 && self.kills_during_flush >= 1;
        for outage in &mut self.outages {
            let watched = match outage.what {
                Service::TeacherEndpoint => "sampler",
                Service::S3 => "packer",
                Service::Broker => "any",
            };
            let due = match outage.begins {
                Begins::After(after) => self.started.elapsed() >= after,
                Begins::WhenDecided(decided) => pipeline.output_count("agreement").is_some_and(|n| n >= decided),
            };
            match outage.state {
                OutageState::Waiting if due => {
                    println!("  {:?} down for {:?}", outage.what, outage.lasts);
                    match outage.what {
                        Service::TeacherEndpoint => context.teachers[1].a[0].set_down(true),
                        Service::S3 => context.s3_proxy.as_ref().expect("S3 outages need S3").set_down(true)?,
                        // Down and up here: every read of a topic would wait out its timeout
                        // while the broker is gone.
                        Service::Broker => {
                            pipeline.broker.stop();
                            std::thread::sleep(outage.lasts);
                            pipeline.broker.restart()?;
                            println!("  broker back after {:.1}s", now.elapsed().as_secs_f64());
                            let count = pipeline.output_count(watched).unwrap_or(0);
                            outage.state = OutageState::Back(Instant::now(), count);
                            continue;
                        }
                    }
                    outage.state = OutageState::Down(now);
                }
                OutageState::Down(since)
                    if since.elapsed() >= outage.lasts
                        && (outage.what != Service::S3
                            || shipment_kills_landed
                            || since.elapsed() >= 4 * outage.lasts) =>
                {
                    match outage.what {
                        Service::TeacherEndpoint => context.teachers[1].a[0].set_down(false),
                        Service::S3 => context.s3_proxy.as_ref().expect("S3 outages need S3").set_down(false)?,
                        Service::Broker => unreachable!("the broker is restarted as it goes down"),
                    }
                    println!("  {:?} back after {:.1}s", outage.what, since.elapsed().as_secs_f64());
                    outage.state = OutageState::Back(Instant::now(), pipeline.output_count(watched).unwrap_or(0));
                }
                OutageState::Back(at, count) if pipeline.output_count(watched).is_some_and(|n| n > count) => {
                    outage.state = OutageState::Recovered(at.elapsed().as_secs_f64());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A replica joins a group, or one that joined earlier leaves it: the kind furthest
    /// behind its quota goes next.
    fn rebalance(&mut self, context: &RunContext, pipeline: &mut Pipeline) -> anyhow::Result<()> {
        let args = &context.args;
        if Instant::now() < self.next_rebalance {
            return Ok(());
        }
        self.next_rebalance = Instant::now() + Duration::from_millis(args.rebalance_gap_ms);
        let done = |kind: &str| self.joins[kind] + self.leaves[kind];
        let mut kinds: Vec<_> = REPLICATED
            .iter()
            .filter(|kind| done(kind) < args.rebalances_per_kind)
            .map(|kind| (done(kind), self.rng.gen::<u32>(), *kind))
            .collect();
        kinds.sort();
        let Some(&(_, _, kind)) = kinds.first() else { return Ok(()) };
        let (_, instances, _) = KINDS.iter().find(|(k, _, _)| *k == kind).expect("a known kind");
        let instance = instances[self.rng.gen_range(0..instances.len())];
        // A joined replica leaves once it has had time to be given partitions.
        match pipeline.joined_replica(instance, Duration::from_secs(3)) {
            Some(key) => {
                println!("  {key} leaves its group");
                pipeline.leave(&key);
                *self.leaves.get_mut(kind).expect("a replicated kind") += 1;
            }
            None if !pipeline.has_joined_replica(instance) => {
                let key = pipeline.join(context, instance)?;
                println!("  {key} joins its group");
                *self.joins.get_mut(kind).expect("a replicated kind") += 1;
            }
            None => {}
        }
        Ok(())
    }

    fn kill(&mut self, context: &RunContext, pipeline: &mut Pipeline) -> anyhow::Result<()> {
        let now = Instant::now();
        // While S3 is down the packers' shipments and flushes wait for it: beside the schedule,
        // one of those packers is killed every 1.5 s.
        if self.s3_down() && now >= self.next_shipment_kill {
            self.next_shipment_kill = now + Duration::from_millis(1500);
            let shipping = pipeline.packers_shipping();
            if !shipping.is_empty() {
                let (key, state) = shipping[self.rng.gen_range(0..shipping.len())].clone();
                self.kill_one(context, pipeline, "packer", &key, state)?;
            }
        }
        if now < self.next_kill {
            return Ok(());
        }
        let args = &context.args;
        let (min, max) = (args.kill_gap_min_ms, args.kill_gap_max_ms.max(args.kill_gap_min_ms));
        self.next_kill = now + Duration::from_millis(self.rng.gen_range(min..=max));
        // The kind furthest behind its quota goes next, among those with a replica to kill.
        let mut wanted: Vec<_> = self
            .kills
            .iter()
            .filter(|(_, n)| **n < args.kills_per_kind)
            .map(|(kind, n)| (*n, self.rng.gen::<u32>(), *kind))
            .collect();
        wanted.sort();
        for (_, _, kind) in wanted {
            let candidates = pipeline.killable(kind);
            if candidates.is_empty() {
                continue;
            }
            let key = candidates[self.rng.gen_range(0..candidates.len())].clone();
            let state = if kind == "packer" { pipeline.shipping(&key) } else { Shipping::No };
            return self.kill_one(context, pipeline, kind, &key, state);
        }
        Ok(())
    }

    fn kill_one(
        &mut self,
        context: &RunContext,
        pipeline: &mut Pipeline,
        kind: &'static str,
        key: &str,
        shipping: Shipping,
    ) -> anyhow::Result<()> {
        let count = pipeline.output_count(kind).unwrap_or(0);
        pipeline.kill_and_restart(context, key)?;
        *self.kills.get_mut(kind).expect("a known kind") += 1;
        match shipping {
            Shipping::No => {}
            Shipping::Shard => self.kills_during_shipment += 1,
            Shipping::Flush => {
                self.kills_during_shipment += 1;
                self.kills_during_flush += 1;
            }
        }
        self.pending_recovery.push((kind, Instant::now(), count));
        Ok(())
    }

    pub fn outage_recovery(&self, what: Service) -> Option<(Duration, Option<f64>)> {
        let outage = self.outages.iter().find(|o| o.what == what)?;
        let recovered = match outage.state {
            OutageState::Recovered(secs) => Some(secs),
            _ => None,
        };
        Some((outage.lasts, recovered))
    }
}
