//! The one list of processor types: name -> ports and settings check (for `topology check`)
//! and constructor (for `distillery run`). A new stage is one entry here.

use distillery_agreement::{Agreement, AgreementSettings};
use distillery_evaluator::{Evaluator, EvaluatorSettings};
use distillery_feeder::FeederSettings;
use distillery_judge::{Judge, JudgeSettings};
use distillery_packer::{Packer, PackerSettings};
use distillery_passthrough::{Passthrough, PassthroughSettings};
use distillery_runtime::topology::ProcessorTypeSpec;
use distillery_runtime::{run_processor, Processor, ProcessorRun};
use distillery_sampler::{Sampler, SamplerSettings};
use distillery_schemas::RecordKind;
use distillery_trainer::config::TrainerEngine;
use distillery_trainer::TrainerSettings;
use std::future::Future;

fn check_feeder(table: &toml::Table) -> Result<(), String> {
    FeederSettings::from_table(table).map(|_| ())
}

fn check_passthrough(table: &toml::Table) -> Result<(), String> {
    PassthroughSettings::from_table(table).map(|_| ())
}

fn check_sampler(table: &toml::Table) -> Result<(), String> {
    SamplerSettings::from_table(table).map(|_| ())
}

fn check_judge(table: &toml::Table) -> Result<(), String> {
    JudgeSettings::from_table(table).map(|_| ())
}

fn check_agreement(table: &toml::Table) -> Result<(), String> {
    AgreementSettings::from_table(table).map(|_| ())
}

fn check_packer(table: &toml::Table) -> Result<(), String> {
    PackerSettings::from_table(table).map(|_| ())
}

fn check_evaluator(table: &toml::Table) -> Result<(), String> {
    EvaluatorSettings::from_table(table).map(|_| ())
}

fn check_trainer(table: &toml::Table) -> Result<(), String> {
    TrainerSettings::from_table(table).map(|_| ())
}

/// Every processor type, runnable or not.
pub fn processor_types() -> Vec<ProcessorTypeSpec> {
    use RecordKind::*;
    vec![
        ProcessorTypeSpec {
            name: "feeder",
            input: None,
            outputs: distillery_feeder::OUTPUTS,
            check_settings: check_feeder,
        },
        ProcessorTypeSpec {
            name: "passthrough",
            input: Some(Question),
            outputs: Passthrough::OUTPUTS,
            check_settings: check_passthrough,
        },
        ProcessorTypeSpec {
            name: "sampler",
            input: Some(Question),
            outputs: Sampler::OUTPUTS,
            check_settings: check_sampler,
        },
        ProcessorTypeSpec {
            name: "judge",
            input: Some(TeacherSample),
            outputs: Judge::OUTPUTS,
            check_settings: check_judge,
        },
        ProcessorTypeSpec {
            name: "agreement",
            input: Some(JudgedSample),
            outputs: Agreement::OUTPUTS,
            check_settings: check_agreement,
        },
        ProcessorTypeSpec {
            name: "packer",
            input: Some(AgreedSample),
            outputs: Packer::OUTPUTS,
            check_settings: check_packer,
        },
        ProcessorTypeSpec {
            name: "trainer",
            input: Some(ShardManifest),
            outputs: distillery_trainer::OUTPUTS,
            check_settings: check_trainer,
        },
        ProcessorTypeSpec {
            name: "evaluator",
            input: Some(CheckpointEvent),
            outputs: Evaluator::OUTPUTS,
            check_settings: check_evaluator,
        },
    ]
}

/// Types `distillery run` can start in this build.
pub const RUNNABLE: &[&str] =
    &["feeder", "passthrough", "sampler", "judge", "agreement", "packer", "trainer", "evaluator"];

/// Runs one instance of the topology until it finishes (sources) or `shutdown` resolves.
pub async fn run_instance(
    run: ProcessorRun,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<String> {
    let instance = run.topology.processor(&run.name).map_err(anyhow::Error::msg)?.clone();
    let settings_error = |e: String| anyhow::anyhow!("processor '{}': settings: {e}", run.name);
    match instance.kind.as_str() {
        "feeder" => {
            let settings = FeederSettings::from_table(&instance.settings).map_err(settings_error)?;
            let summary = distillery_feeder::run(settings, run, shutdown).await?;
            Ok(format!("{summary:?}"))
        }
        "passthrough" => {
            let settings = PassthroughSettings::from_table(&instance.settings).map_err(settings_error)?;
            let summary = run_processor(Passthrough::new(settings), run, shutdown).await?;
            Ok(format!("{summary:?}"))
        }
        "sampler" => {
            let settings = SamplerSettings::from_table(&instance.settings).map_err(settings_error)?;
            let sampler = Sampler::new(&run.name, settings).await?;
            let summary = run_processor(sampler, run, shutdown).await?;
            Ok(format!("{summary:?}"))
        }
        "judge" => {
            let settings = JudgeSettings::from_table(&instance.settings).map_err(settings_error)?;
            let summary = run_processor(Judge::new(&run.name, settings)?, run, shutdown).await?;
            Ok(format!("{summary:?}"))
        }
        "agreement" => {
            let settings = AgreementSettings::from_table(&instance.settings).map_err(settings_error)?;
            let summary = run_processor(Agreement::new(settings), run, shutdown).await?;
            Ok(format!("{summary:?}"))
        }
        "packer" => {
            let settings = PackerSettings::from_table(&instance.settings).map_err(settings_error)?;
            let summary = run_processor(Packer::new(settings).await?, run, shutdown).await?;
            Ok(format!("{summary:?}"))
        }
        "trainer" => {
            let settings = TrainerSettings::from_table(&instance.settings).map_err(settings_error)?;
            match settings.engine {
                TrainerEngine::Candle => {
                    let summary = distillery_trainer::run(settings, run, shutdown).await?;
                    Ok(format!("{summary:?}"))
                }
                TrainerEngine::Torch => crate::torchrun::run(&run, &settings, shutdown).await,
            }
        }
        "evaluator" => {
            let settings = EvaluatorSettings::from_table(&instance.settings).map_err(settings_error)?;
            let summary = run_processor(Evaluator::new(&run.name, settings).await?, run, shutdown).await?;
            Ok(format!("{summary:?}"))
        }
        other => anyhow::bail!(
            "processor type '{other}' cannot run in this build yet (runnable: {}); its topology still checks",
            RUNNABLE.join(", ")
        ),
    }
}

/// Starts every replica of processor `name` as a task of this process; each stops when `stop`
/// turns true (the quickstart and replay run whole topologies in one process this way).
pub fn spawn_replicas(
    topology: &std::sync::Arc<distillery_runtime::Topology>,
    name: &str,
    connection: &distillery_runtime::Connection,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<String>>> {
    (0..topology.processors[name].replicas)
        .map(|replica| {
            let run = ProcessorRun {
                topology: topology.clone(),
                name: name.to_string(),
                replica: replica.to_string(),
                connection: connection.clone(),
            };
            let mut stop = stop.clone();
            let stopped = async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            };
            tokio::spawn(run_instance(run, stopped))
        })
        .collect()
}
