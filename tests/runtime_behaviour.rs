//! The runtime's contract with a processor, in-process over the real local broker: hooks run
//! before a partition's first record, retryable errors are retried with backoff, exhausted
//! retries and panics become dead letters (also a panic while restoring: a poison record
//! does not crash-loop its partition's replicas), a panicking tick does not stop the loop,
//! and shutdown with records in flight lets them finish and commits them, abandoning (not
//! committing) only what outlasts the deadline.

use distillery_runtime::bench::produce_all;
use distillery_runtime::{
    run_processor, Assignment, Emit, Outputs, PortSpec, ProcessError, Processor, ProcessorRun, RecordContext,
    RunSummary,
};
use distillery_schemas::{decode, DeadLetter, ErrorClass, Question, RecordKind};
use distillery_tests::{encoded_question, feeder_and_copy, wait_until, Cluster};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Behaviour by the question's problem text: "flaky" fails twice then succeeds, "down" always
/// fails (retryable), "panic" panics, "slow" takes a second, "stuck" takes a minute while
/// `stall` is set, "poison" processes fine but panics when restored. Records the order of
/// hooks and records.
#[derive(Default)]
struct Script {
    attempts: Mutex<HashMap<String, usize>>,
    events: Mutex<Vec<String>>,
    assigned: Mutex<BTreeSet<i32>>,
    restored: Mutex<Vec<String>>,
    stall: AtomicBool,
    ticks: AtomicUsize,
}

impl Script {
    fn event(&self, event: String) {
        self.events.lock().unwrap().push(event);
    }

    fn saw(&self, event: &str) -> bool {
        self.events.lock().unwrap().iter().any(|e| e == event)
    }
}

/// The scripted processor; `RESTORES` makes it rebuild state from its input.
struct Scripted<const RESTORES: bool>(Arc<Script>);

impl<const RESTORES: bool> Processor for Scripted<RESTORES> {
    type Input = Question;
    const OUTPUTS: &'static [PortSpec] = &[PortSpec { name: "out", kind: RecordKind::Question }];
    const RESTORES_FROM_INPUT: bool = RESTORES;

    async fn process(&self, q: Question, ctx: &RecordContext) -> Result<Vec<Emit>, ProcessError> {
        assert!(
            self.0.assigned.lock().unwrap().contains(&ctx.partition),
            "a record of partition {} arrived before on_assigned",
            ctx.partition
        );
        let attempt = {
            let mut attempts = self.0.attempts.lock().unwrap();
            let n = attempts.entry(q.id.clone()).or_insert(0);
            *n += 1;
            *n
        };
        self.0.event(format!("process {} attempt {attempt}", q.id));
        match q.problem.as_str() {
            "flaky" if attempt <= 2 => return Err(ProcessError::transient(format!("503 on attempt {attempt}"))),
            "down" => return Err(ProcessError::transient("connection refused")),
            "panic" => panic!("bug in the processor"),
            "slow" => tokio::time::sleep(Duration::from_secs(1)).await,
            "stuck" if self.0.stall.load(Ordering::SeqCst) => tokio::time::sleep(Duration::from_secs(60)).await,
            _ => {}
        }
        self.0.event(format!("done {}", q.id));
        Ok(vec![Emit::record("out", &q)?])
    }

    async fn on_assigned(&self, assigned: &[Assignment]) {
        self.0.event(format!("assigned {}", assigned.len()));
        self.0.assigned.lock().unwrap().extend(assigned.iter().map(|a| a.partition.partition));
    }

    async fn restore(&self, q: Question, _ctx: &RecordContext) {
        assert!(q.problem != "poison", "cannot restore a poison record");
        self.0.restored.lock().unwrap().push(q.id);
    }

    async fn on_tick(&self, _outputs: &Outputs) {
        if self.0.ticks.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("the first tick fails");
        }
    }

    async fn on_shutdown(&self) {
        self.0.event("shutdown".into());
    }
}

async fn start(retry: &str) -> Cluster {
    let runtime =
        format!("runtime = {{ {retry}commit_interval_ms = 100, tick_interval_ms = 100, shutdown_deadline_ms = 3000 }}");
    Cluster::start(&feeder_and_copy("behaviour", 1, "[{ uri = \"unused.jsonl\", format = \"aime\" }]", &runtime)).await
}

/// Runs the processor in this process until `stop` is sent.
fn run<const RESTORES: bool>(
    cluster: &Cluster,
    script: &Arc<Script>,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<RunSummary>>) {
    let run = ProcessorRun {
        topology: Arc::new(cluster.topology.clone()),
        name: "copy".into(),
        replica: "t".into(),
        connection: cluster.connection(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_processor(Scripted::<RESTORES>(script.clone()), run, async {
        let _ = stopped.await;
    }));
    (stop, task)
}

fn copies(cluster: &Cluster) -> BTreeSet<String> {
    cluster.read("copies").iter().map(|r| r.id().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_dead_letters_and_hooks_follow_the_contract() {
    let cluster = start("retry_attempts = 3, retry_min_delay_ms = 10, retry_max_delay_ms = 50, ").await;
    let inputs = [
        encoded_question("ok", "fine"),
        encoded_question("flaky", "flaky"),
        encoded_question("down", "down"),
        encoded_question("panic", "panic"),
        encoded_question("ok", "fine"),
    ];
    produce_all(&cluster.connection(), &cluster.topology.topic_name("questions"), &inputs).await.unwrap();

    let script = Arc::new(Script::default());
    let (stop, task) = run::<false>(&cluster, &script);
    wait_until("all records settled", Duration::from_secs(60), || {
        cluster.lag("copy") == 0 && cluster.read("dead-letters").len() == 2
    });
    stop.send(()).unwrap();
    let summary = task.await.unwrap().unwrap();

    assert_eq!(summary.records_in, 5);
    assert_eq!(summary.duplicates, 1, "the second 'ok' (same id, same partition) is a replay");
    assert_eq!(summary.dead_lettered, 2);
    assert_eq!(summary.outputs, 2, "'ok' once and 'flaky' after its retries");
    let attempts = script.attempts.lock().unwrap().clone();
    assert_eq!(attempts["flaky"], 3, "two 503s, then success");
    assert_eq!(attempts["down"], 3, "retry_attempts = 3");
    assert_eq!(copies(&cluster), BTreeSet::from(["flaky".to_string(), "ok".to_string()]));

    let letters: Vec<DeadLetter> = cluster.read("dead-letters").iter().map(|r| decode(&r.payload).unwrap()).collect();
    let down = letters.iter().find(|l| l.key.as_deref() == Some("k2")).unwrap();
    assert_eq!(down.error, "gave up after 3 attempts: connection refused");
    assert_eq!(down.error_class, ErrorClass::External);
    let panicked = letters.iter().find(|l| l.key.as_deref() == Some("k3")).unwrap();
    assert_eq!(panicked.error, "processor panicked: bug in the processor");
    assert_eq!(panicked.error_class, ErrorClass::Internal);

    let events = script.events.lock().unwrap().clone();
    assert!(events.first().unwrap().starts_with("assigned"), "{events:?}");
    assert_eq!(events.last().unwrap(), "shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_with_records_in_flight_commits_what_finishes_and_replays_what_outlasts_the_deadline() {
    let cluster = start("").await;
    let topic = cluster.topology.topic_name("questions");
    let script = Arc::new(Script::default());
    let (stop, task) = run::<false>(&cluster, &script);
    produce_all(&cluster.connection(), &topic, &[encoded_question("quick", "fine"), encoded_question("slow", "slow")])
        .await
        .unwrap();
    wait_until("the slow record in flight", Duration::from_secs(60), || script.saw("process slow attempt 1"));
    assert!(!script.saw("done slow"));
    stop.send(()).unwrap();
    let summary = task.await.unwrap().unwrap();
    assert!(script.saw("done slow"), "the record in flight was given the deadline to finish");
    assert_eq!(summary.records_done, 2);
    assert_eq!(copies(&cluster), BTreeSet::from(["quick".to_string(), "slow".to_string()]));
    assert_eq!(cluster.lag("copy"), 0, "shutdown committed the record that finished in flight");

    // A record that outlasts the deadline is abandoned: not committed, so the next run
    // processes it.
    script.stall.store(true, Ordering::SeqCst);
    let (stop, task) = run::<false>(&cluster, &script);
    produce_all(&cluster.connection(), &topic, &[encoded_question("stuck", "stuck")]).await.unwrap();
    wait_until("the stuck record in flight", Duration::from_secs(60), || script.saw("process stuck attempt 1"));
    let stopping = std::time::Instant::now();
    stop.send(()).unwrap();
    let summary = task.await.unwrap().unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(10), "stopped after the 3 s deadline: {:?}", stopping.elapsed());
    assert_eq!(summary.records_done, 0);
    assert_eq!(cluster.lag("copy"), 1, "the abandoned record is not committed");
    script.stall.store(false, Ordering::SeqCst);
    let (stop, task) = run::<false>(&cluster, &script);
    wait_until("the abandoned record replayed", Duration::from_secs(60), || cluster.lag("copy") == 0);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(copies(&cluster).contains("stuck"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_that_panics_its_restore_is_dead_lettered_and_a_panicking_tick_stops_nothing() {
    let cluster = start("").await;
    let topic = cluster.topology.topic_name("questions");
    let inputs = [encoded_question("a", "fine"), encoded_question("poison", "poison"), encoded_question("b", "fine")];
    produce_all(&cluster.connection(), &topic, &inputs).await.unwrap();
    let first = Arc::new(Script::default());
    let (stop, task) = run::<true>(&cluster, &first);
    wait_until("the records processed", Duration::from_secs(60), || cluster.lag("copy") == 0);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(cluster.read("dead-letters").is_empty(), "the poison record processes fine");

    // The next run restores its state from the three records: the poison one panics.
    let second = Arc::new(Script::default());
    let (stop, task) = run::<true>(&cluster, &second);
    wait_until("the restore dead-lettered the poison record", Duration::from_secs(60), || {
        cluster.read("dead-letters").len() == 1
    });
    produce_all(&cluster.connection(), &topic, &[encoded_question("c", "fine")]).await.unwrap();
    wait_until("a new record processed after the restore", Duration::from_secs(60), || copies(&cluster).contains("c"));
    wait_until("ticks after the one that panicked", Duration::from_secs(30), || {
        second.ticks.load(Ordering::SeqCst) >= 3
    });
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(*second.restored.lock().unwrap(), ["a", "b"], "the rest was restored");
    let letter: DeadLetter = decode(&cluster.read("dead-letters")[0].payload).unwrap();
    assert_eq!(letter.error, "processor panicked while restoring: cannot restore a poison record");
    assert_eq!(letter.error_class, ErrorClass::Internal);
    assert_eq!(letter.source_offset, 1);
}
