//! The runtime's contract with a processor, in-process over the real local broker: hooks run
//! before a partition's first record, retryable errors are retried with backoff, exhausted
//! retries and panics become dead letters, and shutdown commits what was done.

use distillery_runtime::bench::produce_all;
use distillery_runtime::{
    run_processor, Emit, PartitionId, PortSpec, ProcessError, Processor, ProcessorRun, RecordContext,
};
use distillery_schemas::{decode, DeadLetter, ErrorClass, Question, RecordKind};
use distillery_tests::{encoded_question, feeder_and_copy, wait_until, Cluster};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Fails according to the question's problem text: "flaky" fails twice then succeeds,
/// "down" always fails (retryable), "panic" panics. Records the order of hooks and records.
#[derive(Default)]
struct Script {
    attempts: Mutex<HashMap<String, usize>>,
    events: Mutex<Vec<String>>,
    assigned: Mutex<BTreeSet<i32>>,
}

struct Scripted(Arc<Script>);

impl Processor for Scripted {
    type Input = Question;
    const OUTPUTS: &'static [PortSpec] = &[PortSpec { name: "out", kind: RecordKind::Question }];

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
        self.0.events.lock().unwrap().push(format!("process {} attempt {attempt}", q.id));
        match q.problem.as_str() {
            "flaky" if attempt <= 2 => Err(ProcessError::transient(format!("503 on attempt {attempt}"))),
            "down" => Err(ProcessError::transient("connection refused")),
            "panic" => panic!("bug in the processor"),
            _ => Ok(vec![Emit::record("out", &q)?]),
        }
    }

    async fn on_assigned(&self, partitions: &[PartitionId]) {
        self.0.events.lock().unwrap().push(format!("assigned {}", partitions.len()));
        self.0.assigned.lock().unwrap().extend(partitions.iter().map(|p| p.partition));
    }

    async fn on_shutdown(&self) {
        self.0.events.lock().unwrap().push("shutdown".into());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_dead_letters_hooks_and_shutdown() {
    let text = feeder_and_copy(
        "behaviour",
        1,
        "[{ uri = \"unused.jsonl\", format = \"aime\" }]",
        "runtime = { retry_attempts = 3, retry_min_delay_ms = 10, retry_max_delay_ms = 50 }",
    );
    let cluster = Cluster::start(&text).await;
    let inputs = [
        encoded_question("ok", "fine"),
        encoded_question("flaky", "flaky"),
        encoded_question("down", "down"),
        encoded_question("panic", "panic"),
        encoded_question("ok", "fine"),
    ];
    produce_all(&cluster.connection(), &cluster.topology.topic_name("questions"), &inputs).await.unwrap();

    let scripted = Arc::new(Script::default());
    let run = ProcessorRun {
        topology: Arc::new(cluster.topology.clone()),
        name: "copy".into(),
        replica: "t".into(),
        connection: cluster.connection(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_processor(Scripted(scripted.clone()), run, async {
        let _ = stopped.await;
    }));
    wait_until("all records settled", Duration::from_secs(60), || {
        cluster.lag("copy") == 0 && cluster.read("dead-letters").len() == 2
    });
    stop.send(()).unwrap();
    let summary = task.await.unwrap().unwrap();

    assert_eq!(summary.records_in, 5);
    assert_eq!(summary.duplicates, 1, "the second 'ok' (same id, same partition) is a replay");
    assert_eq!(summary.dead_lettered, 2);
    assert_eq!(summary.outputs, 2, "'ok' once and 'flaky' after its retries");
    let attempts = scripted.attempts.lock().unwrap().clone();
    assert_eq!(attempts["flaky"], 3, "two 503s, then success");
    assert_eq!(attempts["down"], 3, "retry_attempts = 3");
    let copies: BTreeSet<String> = cluster.read("copies").iter().map(|r| r.id().unwrap().to_string()).collect();
    assert_eq!(copies, BTreeSet::from(["flaky".to_string(), "ok".to_string()]));

    let letters: Vec<DeadLetter> = cluster.read("dead-letters").iter().map(|r| decode(&r.payload).unwrap()).collect();
    let down = letters.iter().find(|l| l.key.as_deref() == Some("k2")).unwrap();
    assert_eq!(down.error, "gave up after 3 attempts: connection refused");
    assert_eq!(down.error_class, ErrorClass::External);
    let panicked = letters.iter().find(|l| l.key.as_deref() == Some("k3")).unwrap();
    assert_eq!(panicked.error, "processor panicked: bug in the processor");
    assert_eq!(panicked.error_class, ErrorClass::Internal);

    let events = scripted.events.lock().unwrap().clone();
    assert!(events.first().unwrap().starts_with("assigned"), "{events:?}");
    assert_eq!(events.last().unwrap(), "shutdown");
    assert_eq!(cluster.lag("copy"), 0, "shutdown committed everything done");
}
