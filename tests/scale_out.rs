//! Stateful stages under replicas and rebalances, each over a real broker with real
//! `distillery run` processes: the state a processor keeps for a partition follows the
//! partition (dropped on revoke, rebuilt on assign), nothing is claimed done before its effect
//! is durable, a stuck object store holds up neither shutdown nor rebalances, and a replay
//! after a rebalance costs no second LLM call.

use distillery_llm_test_server::{LlmServer, ServerConfig};
use distillery_runtime::bench::produce_keyed;
use distillery_schemas::{decode, now_ms, AgreedSample, ShardManifest, Verdict};
use distillery_tests::records::{agreed_sample, judged_sample, write_student};
use distillery_tests::{encoded_question, wait_until, Cluster, Proc};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

// --- packers --------------------------------------------------------------------------------

/// A packer over a 2-partition `agreed` topic; `settings` are extra packer settings lines.
fn packer_topology(settings: &str) -> String {
    format!(
        r#"
experiment = "scale"
[topics.agreed]
schema = "agreed_sample"
partitions = 2
external = true
[topics."shards.a"]
schema = "shard_manifest"
partitions = 1

[processors.packer-a]
type = "packer"
inputs = ["agreed"]
outputs = {{ shards = "shards.a" }}
runtime = {{ max_in_flight = 4, commit_interval_ms = 100, session_timeout_ms = 1000, tick_interval_ms = 200, shutdown_deadline_ms = 2000 }}
[processors.packer-a.settings]
style = "teacher-a"
tokenizer = "{{dir}}/tokenizer.json"
tokenizer_config = "{{dir}}/tokenizer_config.json"
store = "{{dir}}/store/shards"
row_tokens = 4096
window_sequences = 1
{settings}
"#
    )
}

/// Agreed samples q0000.. keyed by question id (so both partitions get some).
fn agreed_records(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n).map(|i| agreed_sample(i, 5 + i % 7)).collect()
}

/// How many published shards (distinct manifests) hold each question.
fn shards_per_question(cluster: &Cluster) -> BTreeMap<String, usize> {
    let manifests: BTreeMap<String, ShardManifest> = cluster
        .read("shards.a")
        .iter()
        .map(|r| decode::<ShardManifest>(&r.payload).unwrap())
        .map(|m| (m.id.clone(), m))
        .collect();
    let mut counts = BTreeMap::new();
    for question in manifests.values().flat_map(|m| &m.question_ids) {
        *counts.entry(question.clone()).or_insert(0) += 1;
    }
    counts
}

/// Whether every replica holds partitions and together they hold `partitions` of them.
fn balanced(replicas: &[&Proc], partitions: usize) -> bool {
    let assigned: Vec<BTreeSet<String>> = replicas.iter().filter_map(|p| p.last_assignment()).collect();
    assigned.len() == replicas.len()
        && assigned.iter().all(|a| !a.is_empty())
        && assigned.iter().map(BTreeSet::len).sum::<usize>() == partitions
}

/// The object store's folder is blocked by a plain file (a write fails even for root) until
/// [`unblock_store`].
fn block_store(cluster: &Cluster) {
    std::fs::write(cluster.path("store"), b"not a folder").unwrap();
}

fn unblock_store(cluster: &Cluster) {
    std::fs::remove_file(cluster.path("store")).unwrap();
    std::fs::create_dir_all(cluster.path("store")).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_question_held_by_a_replica_that_loses_its_partition_is_shipped_by_one_replica_only() {
    // Nothing fills a shard: everything is held until the idle flush, 10 s after the last input.
    let cluster = Cluster::start(&packer_topology("rows_per_shard = 1000\nflush_idle_secs = 10")).await;
    write_student(cluster.dir.path());
    std::fs::create_dir_all(cluster.path("store")).unwrap();
    let records = agreed_records(40);
    let mut first = cluster.spawn("packer-a", "r1");
    produce_keyed(&cluster.connection(), &cluster.topology.topic_name("agreed"), &records).await.unwrap();
    wait_until("the first replica holds every question (input committed)", Duration::from_secs(60), || {
        cluster.lag("packer-a") == 0
    });
    // A second replica joins: one partition, with the questions the first holds, moves to it.
    let mut second = cluster.spawn("packer-a", "r2");
    wait_until("both replicas hold a partition", Duration::from_secs(60), || balanced(&[&first, &second], 2));
    wait_until("every question shipped after the idle flush", Duration::from_secs(90), || {
        shards_per_question(&cluster).len() == records.len()
    });
    // Both flushes are over once no replica holds anything for a flush interval.
    std::thread::sleep(Duration::from_secs(4));
    let counts = shards_per_question(&cluster);
    assert!(first.terminate().success() && second.terminate().success());
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "questions in two shards (trained twice): {twice:?}");
    assert_eq!(counts.len(), records.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shipment_cut_short_by_a_rebalance_is_shipped_once_the_store_is_back() {
    // Shards of 2 rows fill as records arrive; the store refuses every upload at first.
    let cluster = Cluster::start(&packer_topology("rows_per_shard = 2\nflush_idle_secs = 3")).await;
    write_student(cluster.dir.path());
    block_store(&cluster);
    let records = agreed_records(20);
    let mut first = cluster.spawn("packer-a", "r1");
    produce_keyed(&cluster.connection(), &cluster.topology.topic_name("agreed"), &records).await.unwrap();
    wait_until("an upload failing", Duration::from_secs(60), || first.log().contains("upload failed"));
    // A rebalance while the shipments wait for the store.
    let mut second = cluster.spawn("packer-a", "r2");
    wait_until("both replicas hold a partition", Duration::from_secs(60), || balanced(&[&first, &second], 2));
    unblock_store(&cluster);
    wait_until("every question shipped", Duration::from_secs(60), || {
        shards_per_question(&cluster).len() == records.len()
    });
    assert!(first.terminate().success() && second.terminate().success());
    let counts = shards_per_question(&cluster);
    assert!(counts.values().all(|n| *n == 1), "no question in two shards: {counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flush_that_cannot_reach_the_store_holds_up_neither_commits_nor_rebalances_nor_shutdown() {
    let cluster = Cluster::start(&packer_topology("rows_per_shard = 1000\nflush_idle_secs = 1")).await;
    write_student(cluster.dir.path());
    block_store(&cluster);
    let records = agreed_records(10);
    let mut first = cluster.spawn("packer-a", "r1");
    produce_keyed(&cluster.connection(), &cluster.topology.topic_name("agreed"), &records).await.unwrap();
    wait_until("the idle flush failing on the store", Duration::from_secs(60), || {
        first.log().contains("upload failed")
    });
    wait_until("the input committed meanwhile", Duration::from_secs(20), || cluster.lag("packer-a") == 0);
    let mut second = cluster.spawn("packer-a", "r2");
    wait_until("a second replica given a partition meanwhile", Duration::from_secs(30), || {
        balanced(&[&first, &second], 2)
    });
    let stopping = std::time::Instant::now();
    assert!(first.terminate().success(), "{}", first.log());
    assert!(stopping.elapsed() < Duration::from_secs(10), "SIGTERM took {:?}", stopping.elapsed());
    // Once the store is back the surviving replica ships everything (it took over the
    // stopped one's partition and rebuilt what it held).
    unblock_store(&cluster);
    wait_until("every question shipped", Duration::from_secs(60), || {
        shards_per_question(&cluster).len() == records.len()
    });
    assert!(second.terminate().success());
    assert!(shards_per_question(&cluster).values().all(|n| *n == 1));
}

// --- agreement ------------------------------------------------------------------------------

const AGREEMENT: &str = r#"
experiment = "scale"
[topics.judged]
schema = "judged_sample"
partitions = 2
external = true
[topics.agreed]
schema = "agreed_sample"
partitions = 2
[topics.rejected]
schema = "agreed_sample"
partitions = 2

[processors.agreement]
type = "agreement"
inputs = ["judged"]
outputs = { agreed = "agreed", rejected = "rejected" }
settings = { required_teachers = ["teacher-a", "teacher-b"], expire_after_secs = 4 }
runtime = { commit_interval_ms = 100, session_timeout_ms = 1000, tick_interval_ms = 200 }
"#;

fn verdict(question: &str, teacher: &str) -> (String, Vec<u8>) {
    judged_sample(question, teacher, Verdict::Match, now_ms())
}

fn decisions(cluster: &Cluster, topic: &str) -> Vec<AgreedSample> {
    cluster.read(topic).iter().map(|r| decode::<AgreedSample>(&r.payload).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_question_stays_rejected_when_its_late_verdict_follows_a_restart() {
    let cluster = Cluster::start(AGREEMENT).await;
    let judged = cluster.topology.topic_name("judged");
    let mut agreement = cluster.spawn("agreement", "0");
    produce_keyed(&cluster.connection(), &judged, &[verdict("late", "teacher-a")]).await.unwrap();
    wait_until("the question expired (its partition went quiet)", Duration::from_secs(60), || {
        decisions(&cluster, "rejected").iter().any(|d| d.reason.as_deref().is_some_and(|r| r.starts_with("expired")))
    });
    // A restart rebuilds the joins from the input; then teacher B's verdict arrives, late.
    assert!(agreement.terminate().success());
    agreement = cluster.spawn("agreement", "0");
    wait_until("the restarted agreement restored its partitions", Duration::from_secs(60), || {
        agreement.log().matches("restored").count() >= 1
    });
    produce_keyed(&cluster.connection(), &judged, &[verdict("late", "teacher-b")]).await.unwrap();
    wait_until("the late verdict read", Duration::from_secs(30), || cluster.lag("agreement") == 0);
    std::thread::sleep(Duration::from_secs(1));
    assert!(agreement.terminate().success());
    let agreed = decisions(&cluster, "agreed");
    assert!(agreed.is_empty(), "a question both rejected (expired) and agreed: {agreed:?}");
    assert_eq!(
        decisions(&cluster, "rejected").iter().map(|d| d.question_id.as_str()).collect::<BTreeSet<_>>(),
        ["late"].into()
    );
}

// --- de-duplication across rebalances -------------------------------------------------------

fn sampler_topology(url: &str) -> String {
    format!(
        r#"
experiment = "scale"
[topics.questions]
schema = "question"
partitions = 2
external = true
[topics.samples]
schema = "teacher_sample"
partitions = 2

[processors.sampler]
type = "sampler"
inputs = ["questions"]
outputs = {{ samples = "samples" }}
runtime = {{ max_in_flight = 4, commit_interval_ms = 100, session_timeout_ms = 1000 }}
[processors.sampler.settings]
teacher = "teacher-a"
model = "test/teacher-a"
max_tokens = 256
server = {{ endpoints = ["{url}"], retry_attempts = 5, retry_min_delay_ms = 5, retry_max_delay_ms = 50, request_timeout_secs = 10 }}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn questions_replayed_after_a_rebalance_cost_no_second_teacher_call() {
    let server = LlmServer::start(ServerConfig::default()).await.unwrap();
    let cluster = Cluster::start(&sampler_topology(&server.base_url())).await;
    let topic = cluster.topology.topic_name("questions");
    let questions: Vec<(String, Vec<u8>)> =
        (0..12).map(|i| (format!("q{i}"), encoded_question(&format!("q{i}"), &format!("What is {i} + 1?")))).collect();
    let mut first = cluster.spawn("sampler", "r1");
    produce_keyed(&cluster.connection(), &topic, &questions).await.unwrap();
    wait_until("every question sampled and committed", Duration::from_secs(60), || cluster.lag("sampler") == 0);
    assert_eq!(server.stats.answered.load(Ordering::Relaxed), 12);
    // A second replica joins (both replicas' partitions are reassigned), then an upstream
    // replica replays every question (same ids, as after its crash).
    let mut second = cluster.spawn("sampler", "r2");
    wait_until("both replicas hold a partition", Duration::from_secs(60), || balanced(&[&first, &second], 2));
    produce_keyed(&cluster.connection(), &topic, &questions).await.unwrap();
    wait_until("the replays read and committed", Duration::from_secs(60), || cluster.lag("sampler") == 0);
    assert!(first.terminate().success() && second.terminate().success());
    assert_eq!(server.stats.answered.load(Ordering::Relaxed), 12, "a replayed question cost a second teacher call");
    assert_eq!(cluster.read("samples").len(), 12);
}
