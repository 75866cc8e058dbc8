//! Processors without an input topic (the feeder) produce through the same [`Publisher`] as
//! everyone else: same headers, same dead-letter topic.

use crate::processor::PortSpec;
use crate::publisher::Publisher;
use crate::runner::ProcessorRun;
use crate::topology::DEAD_LETTERS;
use std::collections::HashMap;

/// The publisher of a source instance, with its ports mapped to the topology's topics.
pub fn source_publisher(run: &ProcessorRun, outputs: &[PortSpec]) -> anyhow::Result<Publisher> {
    let topology = &run.topology;
    let instance = topology.processor(&run.name).map_err(anyhow::Error::msg)?;
    if !instance.inputs.is_empty() {
        anyhow::bail!("processor '{}' is a source and reads no topic, but the topology lists inputs", run.name);
    }
    outputs_publisher(run, outputs)
}

/// The publisher of an instance's output ports, for processors that run their own loop
/// instead of [`crate::run_processor`] (sources, the trainer).
pub fn outputs_publisher(run: &ProcessorRun, outputs: &[PortSpec]) -> anyhow::Result<Publisher> {
    let topology = &run.topology;
    let instance = topology.processor(&run.name).map_err(anyhow::Error::msg)?;
    let port_topics: HashMap<String, String> =
        instance.outputs.iter().map(|(port, topic)| (port.clone(), topology.topic_name(topic))).collect();
    let producer = run.connection.producer(None)?;
    Publisher::new(producer, &run.name, &run.replica, outputs, &port_topics, topology.topic_name(DEAD_LETTERS))
        .map_err(anyhow::Error::msg)
}
