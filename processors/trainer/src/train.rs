//! The trainer's run: settings, shards in (manifests from `shards.{style}`, files from the
//! object store), optimizer steps, and `train-metrics` and `checkpoints` out.
//!
//! The trainer keeps its input position in its checkpoints rather than in a consumer group:
//! model, optimizer and position change together, so a restart resumes from the latest
//! checkpoint and sees exactly the shard sequence an uninterrupted run would have seen (the
//! shard topic has one partition, hence one order). The input itself is `feed`'s.

use crate::checkpoint::{self, ShardPosition, TokenizerFiles, TrainerState};
use crate::config::TrainerSettings;
use crate::feed::{spawn_feed, Feed};
use crate::optim::{AdamW, AdamWSettings, GradAccumulator};
use crate::schedule::LrSchedule;
use candle_core::{DType, Device};
use distillery_model::{ModelConfig, PackedRow, Student};
use distillery_runtime::objects::get_bytes;
use distillery_runtime::ordered::Start;
use distillery_runtime::processor::PortSpec;
use distillery_runtime::publisher::Publisher;
use distillery_runtime::reader::read_to_end;
use distillery_runtime::runner::ProcessorRun;
use distillery_runtime::source::outputs_publisher;
use distillery_runtime::Emit;
use distillery_schemas::{decode, now_ms, stable_id, CheckpointEvent, ConsumedOffset, RecordKind, TrainMetrics};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const OUTPUTS: &[PortSpec] = &[
    PortSpec { name: "checkpoints", kind: RecordKind::CheckpointEvent },
    PortSpec { name: "metrics", kind: RecordKind::TrainMetrics },
];

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    pub steps: u64,
    pub shards_consumed: i64,
    pub tokens_seen: i64,
    pub last_checkpoint: Option<String>,
    pub resumed_from_step: u64,
}

/// One packed row and where the input stands once it is trained on.
struct QueuedRow {
    row: PackedRow,
    after: ShardPosition,
    /// Set on a shard's first row: the shard id, counted as consumed from then on.
    starts_shard: Option<String>,
}

pub async fn run(
    settings: TrainerSettings,
    run: ProcessorRun,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<TrainSummary> {
    let topology = run.topology.clone();
    let instance = topology.processor(&run.name).map_err(anyhow::Error::msg)?.clone();
    let [input] = instance.inputs.as_slice() else {
        anyhow::bail!("trainer '{}' reads exactly one shards topic", run.name);
    };
    let input_topic = topology.topic_name(input);
    let publisher = Arc::new(outputs_publisher(&run, OUTPUTS)?);
    let run_id = format!("{}/{}", topology.experiment, run.name);
    let device = open_device(&settings.device)?;
    let compute_dtype = match (settings.compute_dtype.as_str(), device.is_cuda()) {
        ("bf16", _) | ("auto", true) => DType::BF16,
        _ => DType::F32,
    };

    // Resume from the latest checkpoint this run published, or start fresh.
    let checkpoints_topic = publisher.topic_of("checkpoints").expect("declared port").to_string();
    let latest = latest_checkpoint(&run, &checkpoints_topic, &run_id).await?;
    let optimizer_settings = AdamWSettings {
        beta1: settings.beta1,
        beta2: settings.beta2,
        eps: settings.adam_eps,
        weight_decay: settings.weight_decay,
        max_grad_norm: settings.max_grad_norm,
    };
    let mut optimizer = AdamW::new(optimizer_settings);
    let (student, mut state) = match &latest {
        Some(event) => {
            tracing::info!(trainer = %run.name, step = event.step, uri = %event.uri, "resuming from checkpoint");
            let loaded = checkpoint::load(&event.uri, &device).await?;
            let student = Student::from_tensors(loaded.config, loaded.weights, DType::F32, &device)?;
            optimizer.restore(loaded.state.step, loaded.optimizer, student.parameters())?;
            (student, loaded.state)
        }
        None => {
            let student = initial_student(&settings, &device).await?;
            let state = TrainerState {
                step: 0,
                position: ShardPosition::default(),
                input_topic: input_topic.clone(),
                shards_consumed: 0,
                tokens_seen: 0,
                shard_ids: Vec::new(),
                is_final: false,
            };
            (student, state)
        }
    };
    let student = student.with_compute_dtype(compute_dtype);
    let resumed_from_step = state.step;
    let mut summary =
        TrainSummary { steps: 0, shards_consumed: 0, tokens_seen: 0, last_checkpoint: None, resumed_from_step };
    if state.is_final || state.step >= settings.steps {
        tracing::info!(trainer = %run.name, step = state.step, "the run is already complete");
        summary.steps = state.step;
        return Ok(summary);
    }
    let tokenizer = tokenizer_files(&settings).await?;
    tracing::info!(
        trainer = %run.name, parameters = student.config.parameters(), step = state.step,
        device = ?device, compute = ?compute_dtype, "training"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let stop_on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop_on_signal.store(true, Ordering::SeqCst);
    });
    // A run with a checkpoint resumes exactly where it was; a new one starts at the topic's
    // earliest record.
    let start = if latest.is_some() { Start::At(state.position.next_offset) } else { Start::Beginning };
    let feed = spawn_feed(&run, &settings, &input_topic, start, publisher.clone(), stop.clone())?;

    let schedule = LrSchedule::new(
        settings.learning_rate,
        settings.warmup_start_lr,
        settings.min_lr,
        settings.warmup_ratio,
        settings.steps,
    );
    let context = StepContext {
        run_id,
        style: settings.style.clone(),
        input_topic,
        checkpoint_store: settings.checkpoint_store.clone(),
        publisher,
        tokenizer,
    };
    let runtime = tokio::runtime::Handle::current();
    let settings = settings.clone();
    let final_state = tokio::task::spawn_blocking(move || {
        train_loop(&runtime, &settings, &context, &student, &mut optimizer, &schedule, &mut state, feed, &stop)
            .map(|last| (state, last))
    })
    .await??;
    let (state, last_checkpoint) = final_state;
    summary.steps = state.step;
    summary.shards_consumed = state.shards_consumed;
    summary.tokens_seen = state.tokens_seen;
    summary.last_checkpoint = last_checkpoint;
    Ok(summary)
}

/// What every step needs besides the model.
struct StepContext {
    run_id: String,
    style: String,
    input_topic: String,
    checkpoint_store: String,
    publisher: Arc<Publisher>,
    tokenizer: TokenizerFiles,
}

/// Steps until `steps` are done, the feed goes idle (with `stop_when_idle_secs`) or a signal
/// arrives; checkpoints every `checkpoint_every_steps` and at the end. Returns the last
/// checkpoint's URI.
#[allow(clippy::too_many_arguments)]
fn train_loop(
    runtime: &tokio::runtime::Handle,
    settings: &TrainerSettings,
    context: &StepContext,
    student: &Student,
    optimizer: &mut AdamW,
    schedule: &LrSchedule,
    state: &mut TrainerState,
    mut feed: mpsc::Receiver<Feed>,
    stop: &AtomicBool,
) -> anyhow::Result<Option<String>> {
    let mut queue: VecDeque<QueuedRow> = VecDeque::new();
    let mut skip_rows = state.position.rows_done;
    let mut feed_idle = false;
    // Shard ids trained or queued: a manifest seen again (a replayed publish) is skipped.
    let mut seen: HashSet<String> = state.shard_ids.iter().cloned().collect();
    let mut checkpointed_step = state.step;
    loop {
        // Fill the queue with a global batch (or whatever is left once the feed is idle).
        while queue.len() < settings.global_batch_rows && !feed_idle && !stop.load(Ordering::SeqCst) {
            match feed.blocking_recv() {
                // A shard resumed mid-way is already in `seen`; a new one must not be.
                Some(Feed::Shard { offset, id, .. }) if skip_rows == 0 && seen.contains(&id) => {
                    tracing::info!(offset, shard = %id, "a manifest of a shard already trained (a replayed publish): skipped");
                    metrics::counter!("distillery_trainer_duplicate_shards_total", "run" => context.run_id.clone())
                        .increment(1);
                    skip_past(state, &mut queue, offset);
                }
                Some(Feed::Shard { offset, id, rows }) => {
                    seen.insert(id.clone());
                    let count = rows.len();
                    for (index, row) in rows.into_iter().enumerate().skip(skip_rows) {
                        let after = if index + 1 == count {
                            ShardPosition { next_offset: offset + 1, rows_done: 0 }
                        } else {
                            ShardPosition { next_offset: offset, rows_done: index + 1 }
                        };
                        let starts_shard = (index == skip_rows && skip_rows == 0).then(|| id.clone());
                        queue.push_back(QueuedRow { row, after, starts_shard });
                    }
                    if count == 0 || skip_rows >= count {
                        state.position = ShardPosition { next_offset: offset + 1, rows_done: 0 };
                    }
                    skip_rows = 0;
                }
                Some(Feed::Skipped { offset }) => skip_past(state, &mut queue, offset),
                Some(Feed::Idle) => feed_idle = true,
                failed @ (Some(Feed::Failed(_)) | None) => {
                    // Keep what was trained; the rows queued are read again after a restart.
                    if state.step > checkpointed_step {
                        checkpoint_now(runtime, context, student, optimizer, state, false)?;
                    }
                    let error = match failed {
                        Some(Feed::Failed(error)) => error,
                        _ => "the shard feed stopped".to_string(),
                    };
                    anyhow::bail!("cannot read the shards: {error}");
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            // Rows queued but not trained are not in the position: a restart reads them again.
            let uri = checkpoint_now(runtime, context, student, optimizer, state, false)?;
            return Ok(Some(uri));
        }
        let full = queue.len() >= settings.global_batch_rows;
        if !full && queue.is_empty() {
            let uri = checkpoint_now(runtime, context, student, optimizer, state, true)?;
            return Ok(Some(uri));
        }
        let batch: Vec<QueuedRow> = queue.drain(..queue.len().min(settings.global_batch_rows)).collect();
        train_step(runtime, context, student, optimizer, schedule, state, batch)?;
        let done = state.step >= settings.steps || (feed_idle && queue.is_empty());
        if done {
            return Ok(Some(checkpoint_now(runtime, context, student, optimizer, state, true)?));
        }
        if state.step % settings.checkpoint_every_steps == 0 {
            checkpoint_now(runtime, context, student, optimizer, state, false)?;
            checkpointed_step = state.step;
        }
    }
}

/// Moves the position past an offset whose record is not trained on: at once when nothing is
/// queued, else once the queued rows are trained.
fn skip_past(state: &mut TrainerState, queue: &mut VecDeque<QueuedRow>, offset: i64) {
    let past = ShardPosition { next_offset: offset + 1, rows_done: 0 };
    match queue.back_mut() {
        Some(last) => last.after = past,
        None => state.position = past,
    }
}

/// One optimizer step over a global batch: gradients accumulated row by row, the loss averaged
/// over all completion tokens of the batch.
/// The gradients of one global batch: each row's summed completion cross-entropy divided by
/// the batch's completion tokens (so the loss is the mean over the batch's completion tokens
/// however rows split them), backward row by row into f32 accumulators. Returns the batch
/// loss and the gradients (empty if no row has a completion token).
pub fn batch_gradients<'a>(
    student: &Student,
    rows: impl Iterator<Item = &'a PackedRow> + Clone,
) -> anyhow::Result<(f64, GradAccumulator)> {
    let completion_tokens: usize = rows.clone().map(|row| row.completion_tokens()).sum();
    let mut grads = GradAccumulator::default();
    let mut loss_total = 0.0;
    if completion_tokens > 0 {
        let scale = 1.0 / completion_tokens as f64;
        for row in rows {
            let (loss, _) = student.row_gradients(row, scale, &mut |part| grads.add(student.parameters(), part))?;
            loss_total += loss;
        }
    }
    Ok((loss_total, grads))
}

fn train_step(
    runtime: &tokio::runtime::Handle,
    context: &StepContext,
    student: &Student,
    optimizer: &mut AdamW,
    schedule: &LrSchedule,
    state: &mut TrainerState,
    batch: Vec<QueuedRow>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let completion_tokens: usize = batch.iter().map(|q| q.row.completion_tokens()).sum();
    let tokens: usize = batch.iter().map(|q| q.row.input_ids.len()).sum();
    let (loss_total, grads) = batch_gradients(student, batch.iter().map(|q| &q.row))?;
    let lr = schedule.lr(state.step);
    let grad_norm = if grads.is_empty() {
        tracing::warn!(step = state.step, "a batch without completion tokens: no update");
        0.0
    } else {
        optimizer.step(student.parameters(), grads, lr)?
    };
    for queued in &batch {
        if let Some(id) = &queued.starts_shard {
            state.shard_ids.push(id.clone());
            state.shards_consumed += 1;
        }
    }
    state.position = batch.last().expect("a batch has rows").after;
    state.tokens_seen += tokens as i64;
    state.step += 1;
    let seconds = started.elapsed().as_secs_f64();
    let metrics = TrainMetrics {
        id: stable_id(&[&context.run_id, &state.step.to_string()]),
        run: context.run_id.clone(),
        style: context.style.clone(),
        step: state.step as i64,
        loss: loss_total,
        lr,
        grad_norm,
        tokens: tokens as i64,
        completion_tokens: completion_tokens as i64,
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
        created_at_ms: now_ms(),
    };
    metrics::counter!("distillery_trainer_steps_total", "run" => context.run_id.clone()).increment(1);
    metrics::gauge!("distillery_trainer_loss", "run" => context.run_id.clone()).set(loss_total);
    tracing::info!(step = state.step, loss = loss_total, lr, grad_norm, tokens, seconds, "step");
    runtime.block_on(context.publisher.publish(&[Emit::record("metrics", &metrics)?]))?;
    Ok(())
}

/// Uploads a checkpoint, then publishes its event; returns its URI.
fn checkpoint_now(
    runtime: &tokio::runtime::Handle,
    context: &StepContext,
    student: &Student,
    optimizer: &AdamW,
    state: &mut TrainerState,
    is_final: bool,
) -> anyhow::Result<String> {
    state.is_final = is_final;
    let uri = format!(
        "{}/{}/step-{:06}",
        context.checkpoint_store.trim_end_matches('/'),
        context.run_id.replace('/', "."),
        state.step
    );
    runtime.block_on(checkpoint::save(&uri, student, optimizer.state_tensors(), state, &context.tokenizer))?;
    let event = CheckpointEvent {
        id: stable_id(&[&context.run_id, &state.step.to_string(), if is_final { "final" } else { "" }]),
        run: context.run_id.clone(),
        style: context.style.clone(),
        step: state.step as i64,
        uri: uri.clone(),
        consumed: vec![ConsumedOffset {
            topic: context.input_topic.clone(),
            partition: 0,
            next_offset: state.position.next_offset,
        }],
        shards_consumed: state.shards_consumed,
        tokens_seen: state.tokens_seen,
        is_final,
        created_at_ms: now_ms(),
    };
    runtime.block_on(context.publisher.publish(&[Emit::record("checkpoints", &event)?]))?;
    tracing::info!(step = state.step, %uri, is_final, "checkpoint");
    Ok(uri)
}

/// `cpu`, `cuda` or `cuda:N`.
pub fn open_device(name: &str) -> anyhow::Result<Device> {
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = name.strip_prefix("cuda:").map(str::parse).transpose()?.unwrap_or(0);
    Device::new_cuda(ordinal).map_err(|e| {
        anyhow::anyhow!("device '{name}': {e} (CUDA needs a binary built with `--features cuda` and an NVIDIA driver)")
    })
}

/// The newest checkpoint event of this run on the checkpoints topic (events are published only
/// after their upload completed, so the newest is complete).
async fn latest_checkpoint(run: &ProcessorRun, topic: &str, run_id: &str) -> anyhow::Result<Option<CheckpointEvent>> {
    let (connection, topic) = (run.connection.clone(), topic.to_string());
    let records =
        tokio::task::spawn_blocking(move || read_to_end(&connection, &topic, Duration::from_secs(60))).await??;
    Ok(records
        .iter()
        .filter_map(|r| decode::<CheckpointEvent>(&r.payload).ok())
        .filter(|e| e.run == run_id)
        .max_by_key(|e| (e.step, e.is_final)))
}

async fn initial_student(settings: &TrainerSettings, device: &Device) -> anyhow::Result<Student> {
    if settings.student == "random" {
        let config = match settings.model_config.as_deref() {
            Some("tiny") | None => {
                let vocab = match &settings.tokenizer {
                    Some(location) => tokenizer_vocab_size(location).await?,
                    None => anyhow::bail!("model_config = \"tiny\" takes its vocabulary size from `tokenizer`"),
                };
                ModelConfig::tiny(vocab)
            }
            Some(location) => ModelConfig::from_json(&get_bytes(location).await?)?,
        };
        return Student::random(config, settings.init_seed, DType::F32, device);
    }
    if settings.student.ends_with(".gguf") {
        let path = distillery_runtime::objects::local_copy(&settings.student, &std::env::temp_dir()).await?;
        let (config, weights) = distillery_model::gguf::load_gguf(&path, device)?;
        return Student::from_tensors(config, weights, DType::F32, device);
    }
    let (config, weights) = checkpoint::load_model_folder(&settings.student, device).await?;
    Student::from_tensors(config, weights, DType::F32, device)
}

async fn tokenizer_vocab_size(location: &str) -> anyhow::Result<usize> {
    let bytes = get_bytes(location).await?;
    let tokenizer = distillery_packer::tokenize::StudentTokenizer::from_bytes(&bytes)?;
    Ok(tokenizer.vocab_size())
}

/// `tokenizer.json` and `tokenizer_config.json` for checkpoints; a GGUF tokenizer is converted
/// and its chat template written into a `tokenizer_config.json`.
async fn tokenizer_files(settings: &TrainerSettings) -> anyhow::Result<TokenizerFiles> {
    let mut files = TokenizerFiles::default();
    if let Some(location) = &settings.tokenizer {
        let bytes = get_bytes(location).await?;
        if location.ends_with(".gguf") {
            let gguf = distillery_packer::gguf::tokenizer_from_gguf_bytes(&bytes)?;
            files.tokenizer_json = Some(gguf.tokenizer.to_json()?.into_bytes());
            let config = serde_json::json!({
                "chat_template": gguf.chat_template,
                "bos_token": gguf.tokenizer.id_to_token(gguf.bos_id),
                "eos_token": gguf.tokenizer.id_to_token(gguf.eos_id),
                "tokenizer_class": "PreTrainedTokenizerFast",
            });
            files.tokenizer_config_json = Some(serde_json::to_vec_pretty(&config)?);
        } else {
            files.tokenizer_json = Some(bytes);
        }
    }
    if let Some(location) = &settings.tokenizer_config {
        files.tokenizer_config_json = Some(get_bytes(location).await?);
    }
    Ok(files)
}
