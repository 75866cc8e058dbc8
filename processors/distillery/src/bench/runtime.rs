//! `distillery bench runtime`: large records through the passthrough processor beside bare
//! rdkafka clients on the same broker.

use distillery_passthrough::{Passthrough, PassthroughSettings};
use distillery_runtime::bench::{produce_all, raw_copy, raw_round_trip};
use distillery_runtime::broker::{BrokerStore, LocalBroker};
use distillery_runtime::reader::end_offset_total;
use distillery_runtime::{admin, run_processor, Connection, ProcessorRun, Topology};
use distillery_schemas::{encode, Question};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// About `bytes` bytes of reasoning-like text.
fn trace_like_text(bytes: usize, seed: u64) -> String {
    let mut words = super::ReasoningWords::new(seed);
    let mut out = String::with_capacity(bytes + 16);
    while out.len() < bytes {
        out.push_str(words.word());
        out.push(' ');
    }
    out.truncate(bytes);
    out
}

pub async fn run(records: usize, record_kib: usize, partitions: i32, bootstrap: Option<String>) -> anyhow::Result<()> {
    const WARMUP: usize = 200;
    let _broker;
    let connection = match bootstrap {
        Some(servers) => Connection::new(servers),
        None => {
            let broker = LocalBroker::start(BrokerStore::Memory, None)?;
            let connection = broker.connection();
            _broker = broker;
            connection
        }
    };
    let experiment = format!("bench-{}-{}", std::process::id(), distillery_schemas::now_ms());
    let topology = Topology::parse(
        &format!(
            r#"
            experiment = "{experiment}"
            [topics.raw]
            schema = "question"
            partitions = {partitions}
            [topics.raw-copy]
            schema = "question"
            partitions = {partitions}
            [topics.in]
            schema = "question"
            partitions = {partitions}
            [topics.out]
            schema = "question"
            partitions = {partitions}
            [processors.copy]
            type = "passthrough"
            inputs = ["in"]
            outputs = {{ out = "out" }}
            runtime = {{ max_in_flight = 256 }}
            "#
        ),
        "bench",
    )?;
    admin::apply_topology(&topology, &connection).await?;
    let payloads: Vec<Vec<u8>> = (0..records + WARMUP)
        .map(|i| {
            encode(&Question {
                id: format!("bench:{i}"),
                dataset: "bench".into(),
                source_uri: "bench".into(),
                source_row: i as i64,
                problem: trace_like_text(record_kib * 1024, i as u64),
                expected_answer: "42".into(),
                metadata: Default::default(),
            })
        })
        .collect::<Result<_, _>>()?;
    let record_bytes = payloads[0].len();
    let mb = |n: usize| (n * record_bytes) as f64 / 1e6;

    // Baseline: plain rdkafka, produce everything then consume everything.
    let raw = raw_round_trip(&connection, &topology.topic_name("raw"), &payloads).await?;
    let raw_secs = (raw.produce + raw.consume).as_secs_f64();
    // Baseline: the same records copied by a bare rdkafka loop (the named baseline).
    let copy_secs =
        raw_copy(&connection, &topology.topic_name("raw"), &topology.topic_name("raw-copy"), WARMUP, records)
            .await?
            .as_secs_f64();

    // Runtime: the input is loaded first; the clock runs from the warm-up's last output to
    // the last timed output, so the group join is not counted.
    produce_all(&connection, &topology.topic_name("in"), &payloads).await?;
    let run = ProcessorRun {
        topology: Arc::new(topology.clone()),
        name: "copy".into(),
        replica: "bench".into(),
        connection: connection.clone(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let processor = tokio::spawn(run_processor(Passthrough::new(PassthroughSettings::default()), run, async {
        let _ = stop_rx.await;
    }));
    let out_topic = topology.topic_name("out");
    let count = |connection: &Connection| end_offset_total(connection, &out_topic);
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut started = None;
    let elapsed = loop {
        let done = count(&connection)? as usize;
        if started.is_none() && done >= WARMUP {
            started = Some((Instant::now(), done));
        }
        if done >= WARMUP + records {
            let (t0, at) = started.expect("set above");
            break (t0.elapsed(), done - at);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the passthrough processor produced only {done} records in 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let _ = stop_tx.send(());
    processor.await??;
    let (runtime_secs, timed) = (elapsed.0.as_secs_f64(), elapsed.1);

    let raw_rate = raw.records as f64 / raw_secs;
    let copy_rate = records as f64 / copy_secs;
    let runtime_rate = timed as f64 / runtime_secs;
    println!("distillery bench runtime: {records} records of {record_bytes} bytes (Avro question, zstd), {partitions} partitions, broker {}", connection.bootstrap_servers);
    println!("{:<58} {:>10} {:>10}", "", "records/s", "MB/s");
    println!(
        "{:<58} {:>10.0} {:>10.1}   (produce {:.2}s + consume {:.2}s)",
        "raw rdkafka produce, then consume",
        raw_rate,
        mb(raw.records) / raw_secs,
        raw.produce.as_secs_f64(),
        raw.consume.as_secs_f64()
    );
    println!(
        "{:<58} {:>10.0} {:>10.1}   ({records} records in {copy_secs:.2}s)",
        "baseline: raw rdkafka copy loop (consume->produce->ack)",
        copy_rate,
        mb(records) / copy_secs
    );
    println!(
        "{:<58} {:>10.0} {:>10.1}   ({timed} records in {runtime_secs:.2}s)",
        "runtime: passthrough consume->decode->process->produce",
        runtime_rate,
        mb(timed) / runtime_secs
    );
    println!("ratio runtime / baseline (raw copy loop): {:.2}", runtime_rate / copy_rate);
    println!("ratio runtime / raw produce-then-consume: {:.2}", runtime_rate / raw_rate);
    Ok(())
}
