//! For the runtime's own tests: a real local broker (Nisshi, installed by `.ci/install-tools`)
//! with a topology applied, and records produced straight into partitions.

use crate::broker::{BrokerStore, LocalBroker};
use crate::runner::ProcessorRun;
use crate::{admin, Connection, Topology};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use std::sync::Arc;

pub struct TestCluster {
    pub broker: LocalBroker,
    pub topology: Arc<Topology>,
}

impl TestCluster {
    /// Starts a broker and applies `topology` (TOML).
    pub async fn start(topology: &str) -> TestCluster {
        let broker = LocalBroker::start(BrokerStore::Memory, None).expect("start the local broker (.ci/install-tools)");
        let topology = Topology::parse(topology, "test").expect("the test topology parses");
        admin::apply_topology(&topology, &broker.connection()).await.expect("apply the topology");
        TestCluster { broker, topology: Arc::new(topology) }
    }

    pub fn connection(&self) -> Connection {
        self.broker.connection()
    }

    pub fn topic(&self, short: &str) -> String {
        self.topology.topic_name(short)
    }

    pub fn run(&self, name: &str) -> ProcessorRun {
        ProcessorRun {
            topology: self.topology.clone(),
            name: name.into(),
            replica: "test".into(),
            connection: self.connection(),
        }
    }

    /// Produces `payloads` into one partition of a topic (short name), in order.
    pub async fn produce(&self, topic: &str, partition: i32, payloads: &[Vec<u8>]) {
        let producer = self.connection().producer(None).unwrap();
        let topic = self.topic(topic);
        for payload in payloads {
            let record = FutureRecord::<str, [u8]>::to(&topic).partition(partition).payload(payload);
            producer.send(record, Timeout::Never).await.map_err(|(e, _)| e).unwrap();
        }
    }
}

/// A question record whose id is `id`, encoded.
pub fn question(id: &str, problem: &str) -> Vec<u8> {
    distillery_schemas::encode(&distillery_schemas::Question {
        id: id.into(),
        dataset: "test".into(),
        source_uri: "test".into(),
        source_row: 0,
        problem: problem.into(),
        expected_answer: "1".into(),
        metadata: Default::default(),
    })
    .unwrap()
}
