//! A Llama/Mistral-family decoder written for training: f32 master weights held as candle
//! `Var`s under their Hugging Face names, compute in the weights' dtype or bf16, and packed
//! rows where every sequence restarts its positions at 0 and attends only to itself.
//!
//! Training runs the fused ops (`crate::fused`): attention over the whole packed row from its
//! sequence boundaries, RMSNorm, RoPE from tables built once, SwiGLU, and the lm_head with the
//! cross-entropy in chunks. With activation recomputation on (the default), a row's backward
//! keeps only each layer's input and recomputes one layer at a time, so a step holds the
//! activations of one layer, not of all of them.

use crate::config::ModelConfig;
use crate::fused;
use crate::fused::cpu::wide_dtype;
use crate::fused::rope::RopeTables;
use crate::reference::{self, RotaryTables};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Positions the RoPE tables hold at first (they grow by doubling).
const INITIAL_ROPE_POSITIONS: usize = 4096;

/// One packed row: several sequences laid end to end.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedRow {
    pub input_ids: Vec<u32>,
    /// 1 on completion tokens (the tokens the student learns to produce).
    pub loss_mask: Vec<u8>,
    /// Lengths of the sequences in the row, in order; they sum to `input_ids.len()`.
    pub sequence_lengths: Vec<usize>,
}

impl PackedRow {
    /// Positions whose next token is a completion token of the same sequence, and those next
    /// tokens: the prediction targets of the row.
    pub fn targets(&self) -> (Vec<u32>, Vec<u32>) {
        let (mut positions, mut targets) = (Vec::new(), Vec::new());
        let mut start = 0;
        for &len in &self.sequence_lengths {
            for i in start..start + len.saturating_sub(1) {
                if self.loss_mask[i + 1] == 1 {
                    positions.push(i as u32);
                    targets.push(self.input_ids[i + 1]);
                }
            }
            start += len;
        }
        (positions, targets)
    }

    pub fn completion_tokens(&self) -> usize {
        self.targets().0.len()
    }
}

/// Keys and values of the positions generated so far, per layer (in-process generation),
/// each `[positions, kv_heads, head_dim]` after RoPE: a new token attends to them without
/// recomputing any past position.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dim(0).unwrap_or(0),
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which implementation of the decoder's ops a student runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpsPath {
    /// `crate::fused`: what the trainer and the evaluator run.
    Fused,
    /// `crate::reference`, composed of candle primitives: the tests' reference and the
    /// baseline of `distillery bench trainer-memory`.
    Reference,
}

/// Rows of the lm_head + cross-entropy computed at once: 256 x vocab f32 logits (50 MB for
/// SmolLM2's 49,152 tokens) instead of targets x vocab.
const LOSS_CHUNK_ROWS: usize = 256;

pub struct Student {
    pub config: ModelConfig,
    /// Trainable weights by Hugging Face name, in a fixed (sorted) order.
    params: BTreeMap<String, Var>,
    device: Device,
    /// Dtype of matmuls and activations: the weights' own dtype, or bf16 on GPUs.
    compute_dtype: DType,
    /// cos/sin tables, built once for the longest sequence seen so far and rebuilt (doubled)
    /// only when a longer one comes: not for `max_position_embeddings` up front, which is a
    /// million positions for some students.
    rope: std::sync::RwLock<Arc<RopeTables>>,
    ops: OpsPath,
    /// Keep only each layer's input during a row's forward and recompute the layer in backward.
    recompute_layers: bool,
}

/// Hugging Face names of every weight of a config, with shapes.
pub fn parameter_shapes(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i, v) = (config.hidden_size, config.intermediate_size, config.vocab_size);
    let (q, kv) = (config.num_attention_heads * config.head_dim(), config.kv_heads() * config.head_dim());
    let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for layer in 0..config.num_hidden_layers {
        let name = |suffix: &str| format!("model.layers.{layer}.{suffix}");
        shapes.extend([
            (name("input_layernorm.weight"), vec![h]),
            (name("self_attn.q_proj.weight"), vec![q, h]),
            (name("self_attn.k_proj.weight"), vec![kv, h]),
            (name("self_attn.v_proj.weight"), vec![kv, h]),
            (name("self_attn.o_proj.weight"), vec![h, q]),
            (name("post_attention_layernorm.weight"), vec![h]),
            (name("mlp.gate_proj.weight"), vec![i, h]),
            (name("mlp.up_proj.weight"), vec![i, h]),
            (name("mlp.down_proj.weight"), vec![h, i]),
        ]);
    }
    shapes.push(("model.norm.weight".to_string(), vec![h]));
    if !config.tie_word_embeddings {
        shapes.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    shapes
}

impl Student {
    /// Random weights (normal, std 0.02; norms at 1) from a seed: the same seed gives the same
    /// model on every machine.
    pub fn random(config: ModelConfig, seed: u64, dtype: DType, device: &Device) -> anyhow::Result<Student> {
        config.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut tensors = BTreeMap::new();
        for (name, shape) in parameter_shapes(&config) {
            let count: usize = shape.iter().product();
            let values: Vec<f32> = if name.ends_with("norm.weight") {
                vec![1.0; count]
            } else {
                // Box-Muller from the seeded generator: no dependency on candle's device RNG.
                (0..count)
                    .map(|_| {
                        let (u1, u2): (f32, f32) = (rng.gen_range(f32::EPSILON..1.0), rng.gen());
                        0.02 * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                    })
                    .collect()
            };
            tensors.insert(name, Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?);
        }
        Student::from_tensors(config, tensors, dtype, device)
    }

    /// A student from named tensors (a checkpoint, safetensors or GGUF), checking that every
    /// weight is present with its shape and that nothing unknown is left over.
    pub fn from_tensors(
        config: ModelConfig,
        mut tensors: BTreeMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> anyhow::Result<Student> {
        config.validate()?;
        let mut params = BTreeMap::new();
        for (name, shape) in parameter_shapes(&config) {
            let tensor = tensors.remove(&name).ok_or_else(|| anyhow::anyhow!("the weights have no '{name}'"))?;
            anyhow::ensure!(
                tensor.dims() == shape.as_slice(),
                "'{name}' has shape {:?}, the config says {shape:?}",
                tensor.dims()
            );
            params.insert(name, Var::from_tensor(&tensor.to_device(device)?.to_dtype(dtype)?)?);
        }
        // Tied embeddings saved with an explicit lm_head are fine; anything else is a mismatch.
        tensors.remove("lm_head.weight");
        tensors.retain(|name, _| !name.ends_with("rotary_emb.inv_freq"));
        if let Some(name) = tensors.keys().next() {
            anyhow::bail!("the weights have '{name}', which this {} config does not use", config.model_type);
        }
        let rope_dtype = wide_dtype(dtype);
        let rope = RopeTables::new(config.head_dim(), config.rope_theta, INITIAL_ROPE_POSITIONS, rope_dtype, device)?;
        let rope = std::sync::RwLock::new(Arc::new(rope));
        Ok(Student {
            config,
            params,
            device: device.clone(),
            compute_dtype: dtype,
            rope,
            ops: OpsPath::Fused,
            recompute_layers: true,
        })
    }

    /// Run matmuls and activations in `dtype` (bf16 on GPUs) while the weights stay in their
    /// own (f32 master) dtype.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Student {
        self.compute_dtype = dtype;
        self
    }

    /// Run the composite reference ops instead of the fused ones (tests, benchmarks' baseline).
    pub fn with_ops(mut self, ops: OpsPath) -> Student {
        self.ops = ops;
        self
    }

    /// Whether [`Student::row_gradients`] recomputes each layer in backward (memory: one
    /// layer's activations plus every layer's input) or keeps the whole graph (faster by the
    /// cost of one more forward, memory growing with every layer's activations).
    pub fn with_layer_recompute(mut self, recompute: bool) -> Student {
        self.recompute_layers = recompute;
        self
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The trainable weights by name, sorted.
    pub fn parameters(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    /// Every weight, detached from the graph, for saving. They share storage with the weights,
    /// which the optimizer updates in place: save them before the next step.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.params.iter().map(|(name, var)| (name.clone(), var.as_tensor().detach())).collect()
    }

    fn weight(&self, name: &str) -> Result<Tensor> {
        let var = self.params.get(name).unwrap_or_else(|| panic!("weight '{name}' exists by construction"));
        var.as_tensor().to_dtype(self.compute_dtype)
    }

    fn linear(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        x.matmul(&self.weight(name)?.t()?)
    }

    fn lm_head_name(&self) -> &'static str {
        if self.config.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        }
    }

    /// One decoder layer on `x` `[len, hidden]`. `attend` maps the layer's q, k, v projections
    /// (`[len, heads * head_dim]` and `[len, kv_heads * head_dim]`) to the attended values
    /// `[len, heads * head_dim]`: packed training and cached generation differ only there.
    fn layer(
        &self,
        layer: usize,
        x: &Tensor,
        attend: impl FnOnce(Tensor, Tensor, Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let eps = self.config.rms_norm_eps;
        let name = |suffix: &str| format!("model.layers.{layer}.{suffix}");
        let normed = self.rms_norm(x, &self.weight(&name("input_layernorm.weight"))?, eps)?;
        let q = self.linear(&normed, &name("self_attn.q_proj.weight"))?;
        let k = self.linear(&normed, &name("self_attn.k_proj.weight"))?;
        let v = self.linear(&normed, &name("self_attn.v_proj.weight"))?;
        let attended = attend(q, k, v)?;
        let x = (x + self.linear(&attended, &name("self_attn.o_proj.weight"))?)?;
        let normed = self.rms_norm(&x, &self.weight(&name("post_attention_layernorm.weight"))?, eps)?;
        let gate = self.linear(&normed, &name("mlp.gate_proj.weight"))?;
        let up = self.linear(&normed, &name("mlp.up_proj.weight"))?;
        let activated = match self.ops {
            OpsPath::Fused => fused::swiglu::swiglu(&gate, &up)?,
            OpsPath::Reference => reference::swiglu(&gate, &up)?,
        };
        x + self.linear(&activated, &name("mlp.down_proj.weight"))?
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
        match self.ops {
            OpsPath::Fused => fused::norm::rms_norm(x, weight, eps),
            OpsPath::Reference => reference::rms_norm(x, weight, eps),
        }
    }

    /// `[len, n * head_dim]` -> `[len, n, head_dim]` (a view: the fused ops' layout).
    fn heads_last(&self, t: &Tensor, n: usize) -> Result<Tensor> {
        t.reshape((t.dim(0)?, n, self.config.head_dim()))
    }

    /// RoPE tables holding at least `positions` positions.
    fn rope_tables(&self, positions: usize) -> Result<Arc<RopeTables>> {
        let current = self.rope.read().expect("the tables' lock is never poisoned").clone();
        if positions <= current.max_positions() {
            return Ok(current);
        }
        let mut held = self.rope.write().expect("the tables' lock is never poisoned");
        if positions > held.max_positions() {
            let size = positions.next_power_of_two();
            let dtype = wide_dtype(self.compute_dtype);
            *held =
                Arc::new(RopeTables::new(self.config.head_dim(), self.config.rope_theta, size, dtype, &self.device)?);
        }
        Ok(held.clone())
    }

    /// The attention of one layer over a packed row with the fused ops: `[len, heads * head_dim]`.
    fn attend_packed(&self, q: Tensor, k: Tensor, v: Tensor, row: &PackedRow, positions: &[u32]) -> Result<Tensor> {
        let (heads, kv_heads) = (self.config.num_attention_heads, self.config.kv_heads());
        let longest = row.sequence_lengths.iter().copied().max().unwrap_or(0);
        let tables = self.rope_tables(longest)?;
        let q = fused::rope::rope(&self.heads_last(&q, heads)?, &tables, positions)?;
        let k = fused::rope::rope(&self.heads_last(&k, kv_heads)?, &tables, positions)?;
        let v = self.heads_last(&v, kv_heads)?;
        let out = fused::attention::packed_attention(&q, &k, &v, &row.sequence_lengths)?;
        out.reshape((out.dim(0)?, heads * self.config.head_dim()))
    }

    /// `[len, n * head_dim]` -> `[n, len, head_dim]`.
    fn split_heads(&self, t: &Tensor, n: usize) -> Result<Tensor> {
        let len = t.dim(0)?;
        t.reshape((len, n, self.config.head_dim()))?.transpose(0, 1)?.contiguous()
    }

    /// `[n, len, head_dim]` -> `[len, n * head_dim]`.
    fn merge_heads(&self, t: &Tensor) -> Result<Tensor> {
        let (n, len, head_dim) = t.dims3()?;
        t.transpose(0, 1)?.reshape((len, n * head_dim))
    }

    /// Every token's position in its own sequence: 0, 1, .. restarting at each sequence.
    fn positions(&self, row: &PackedRow) -> Result<Vec<u32>> {
        if row.sequence_lengths.iter().sum::<usize>() != row.input_ids.len() {
            candle_core::bail!(
                "the row's sequence lengths add up to {}, it has {} tokens",
                row.sequence_lengths.iter().sum::<usize>(),
                row.input_ids.len()
            );
        }
        Ok(row.sequence_lengths.iter().flat_map(|&len| 0..len as u32).collect())
    }

    fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        let ids = Tensor::from_slice(tokens, tokens.len(), &self.device)?;
        self.weight("model.embed_tokens.weight")?.index_select(&ids, 0)
    }

    /// Hidden states after the final norm for a packed row, `[len, hidden]`.
    pub fn forward_hidden(&self, row: &PackedRow) -> Result<Tensor> {
        if self.ops == OpsPath::Reference {
            return self.forward_hidden_reference(row);
        }
        let positions = self.positions(row)?;
        let mut x = self.embed(&row.input_ids)?;
        for layer in 0..self.config.num_hidden_layers {
            x = self.layer(layer, &x, |q, k, v| self.attend_packed(q, k, v, row, &positions))?;
        }
        self.rms_norm(&x, &self.weight("model.norm.weight")?, self.config.rms_norm_eps)
    }

    /// [`Student::forward_hidden`] with the composite ops: attention one sequence at a time with
    /// a causal mask built on the host.
    fn forward_hidden_reference(&self, row: &PackedRow) -> Result<Tensor> {
        let cfg = &self.config;
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.kv_heads());
        let mut x = self.embed(&row.input_ids)?;
        let longest = row.sequence_lengths.iter().copied().max().unwrap_or(0);
        let rotary = RotaryTables::new(cfg.head_dim(), cfg.rope_theta, longest, self.compute_dtype, &self.device)?;
        for layer in 0..cfg.num_hidden_layers {
            x = self.layer(layer, &x, |q, k, v| {
                // Block-diagonal causal attention: each sequence on its own, positions from 0,
                // so the cost follows the sum of squared lengths, not the row length squared.
                let mut outputs = Vec::with_capacity(row.sequence_lengths.len());
                let mut start = 0;
                for &len in &row.sequence_lengths {
                    let (cos, sin) = rotary.slice(0, len)?;
                    let q = reference::rope(&self.split_heads(&q.narrow(0, start, len)?, heads)?, &cos, &sin)?;
                    let k = reference::rope(&self.split_heads(&k.narrow(0, start, len)?, kv_heads)?, &cos, &sin)?;
                    let v = self.split_heads(&v.narrow(0, start, len)?, kv_heads)?;
                    let mask = reference::causal_mask(len, 0, self.compute_dtype, &self.device)?;
                    outputs.push(self.merge_heads(&reference::attention(&q, &k, &v, Some(&mask))?)?);
                    start += len;
                }
                Tensor::cat(&outputs, 0)
            })?;
        }
        reference::rms_norm(&x, &self.weight("model.norm.weight")?, cfg.rms_norm_eps)
    }

    /// Logits of every position of a packed row, `[len, vocab]` (tests and tools; training
    /// computes logits only where there is a target).
    pub fn forward_logits(&self, row: &PackedRow) -> Result<Tensor> {
        let hidden = self.forward_hidden(row)?;
        self.linear(&hidden, self.lm_head_name())
    }

    /// Sum of the cross-entropy over the row's completion targets (in f32), and their count.
    pub fn loss_sum(&self, row: &PackedRow) -> Result<(Tensor, usize)> {
        let (positions, targets) = row.targets();
        let count = positions.len();
        if count == 0 {
            return Ok((Tensor::zeros((), DType::F32, &self.device)?, 0));
        }
        let hidden = self.forward_hidden(row)?;
        Ok((self.head_loss(&hidden, positions, targets)?, count))
    }

    /// Cross-entropy summed over `targets`, predicted from the final hidden states at
    /// `positions`.
    fn head_loss(&self, hidden: &Tensor, positions: Vec<u32>, targets: Vec<u32>) -> Result<Tensor> {
        let count = positions.len();
        let positions = Tensor::from_vec(positions, count, &self.device)?;
        let targets = Tensor::from_vec(targets, count, &self.device)?;
        let selected = hidden.index_select(&positions, 0)?;
        let lm_head = self.weight(self.lm_head_name())?;
        match self.ops {
            OpsPath::Fused => {
                fused::cross_entropy::linear_cross_entropy(&selected, &lm_head, &targets, LOSS_CHUNK_ROWS)
            }
            OpsPath::Reference => {
                let logits = selected.matmul(&lm_head.t()?)?;
                reference::cross_entropy_sum(&logits.to_dtype(wide_dtype(logits.dtype()))?, &targets)
            }
        }
    }

    /// The gradients of `scale` x the row's summed cross-entropy, handed to `sink` in parts
    /// (each a `GradStore` holding some of the weights' gradients; a weight may appear in
    /// several parts, which add up: the tied embedding is both the input and the lm_head).
    /// Returns the scaled loss and the row's target count.
    ///
    /// With layer recomputation the forward keeps only each layer's input (detached); the
    /// backward then runs the head, then each layer from the last, recomputing the layer from
    /// its input and back-propagating the incoming gradient through it with
    /// `backward(sum(output * incoming))`, whose gradient with respect to the layer's input is
    /// the next incoming gradient.
    pub fn row_gradients(
        &self,
        row: &PackedRow,
        scale: f64,
        sink: &mut dyn FnMut(&GradStore) -> Result<()>,
    ) -> Result<(f64, usize)> {
        let (target_positions, targets) = row.targets();
        let count = target_positions.len();
        if count == 0 {
            return Ok((0.0, 0));
        }
        if !self.recompute_layers || self.ops == OpsPath::Reference {
            let (loss, _) = self.loss_sum(row)?;
            let scaled = (loss * scale)?;
            sink(&scaled.backward()?)?;
            return Ok((scaled.to_dtype(DType::F64)?.to_scalar::<f64>()?, count));
        }
        let positions = self.positions(row)?;
        let layers = self.config.num_hidden_layers;
        // Forward: each layer's input, detached, so every intermediate is freed as it goes.
        let mut inputs = Vec::with_capacity(layers + 1);
        inputs.push(self.embed(&row.input_ids)?.detach());
        for layer in 0..layers {
            let x = self.layer(layer, &inputs[layer], |q, k, v| self.attend_packed(q, k, v, row, &positions))?;
            inputs.push(x.detach());
        }
        // The head: final norm, lm_head and cross-entropy, from the last layer's output.
        let last = Var::from_tensor(&inputs[layers])?;
        let hidden = self.rms_norm(last.as_tensor(), &self.weight("model.norm.weight")?, self.config.rms_norm_eps)?;
        let scaled = (self.head_loss(&hidden, target_positions, targets)? * scale)?;
        let loss = scaled.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let grads = scaled.backward()?;
        let mut incoming = grads.get(last.as_tensor()).expect("the head depends on its input").clone();
        sink(&grads)?;
        drop(grads);
        // Each layer from the last: recompute it, back-propagate the incoming gradient.
        for layer in (0..layers).rev() {
            let input = Var::from_tensor(&inputs[layer])?;
            let output =
                self.layer(layer, input.as_tensor(), |q, k, v| self.attend_packed(q, k, v, row, &positions))?;
            let grads = (output * &incoming)?.sum_all()?.backward()?;
            incoming = grads.get(input.as_tensor()).expect("a layer depends on its input").clone();
            sink(&grads)?;
            inputs.truncate(layer);
        }
        // The embedding: the rows of the input tokens receive the first layer's gradient.
        let embedded = self.embed(&row.input_ids)?;
        sink(&(embedded * &incoming)?.sum_all()?.backward()?)?;
        Ok((loss, count))
    }

    /// Feeds `tokens` after the positions already in `cache` and returns the logits of the
    /// last one, `[vocab]` (f32). Only the new positions go through the model; they attend to
    /// the cached keys and values.
    pub fn forward_cached(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let cfg = &self.config;
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.kv_heads());
        let (past, len) = (cache.len(), tokens.len());
        if len == 0 {
            candle_core::bail!("forward_cached needs at least one new token");
        }
        let tables = self.rope_tables(past + len)?;
        if cache.layers.is_empty() {
            cache.layers = vec![None; cfg.num_hidden_layers];
        }
        let positions: Vec<u32> = (past as u32..(past + len) as u32).collect();
        let mut x = self.embed(tokens)?;
        for layer in 0..cfg.num_hidden_layers {
            let cached = &mut cache.layers[layer];
            x = self.layer(layer, &x, |q, k, v| {
                let q = fused::rope::rope(&self.heads_last(&q, heads)?, &tables, &positions)?;
                let k = fused::rope::rope(&self.heads_last(&k, kv_heads)?, &tables, &positions)?;
                let v = self.heads_last(&v, kv_heads)?;
                let (k, v) = match cached.take() {
                    Some((past_k, past_v)) => (Tensor::cat(&[&past_k, &k], 0)?, Tensor::cat(&[&past_v, &v], 0)?),
                    None => (k.contiguous()?, v.contiguous()?),
                };
                let out = fused::attention::cached_attention(&q, &k, &v, past)?;
                *cached = Some((k, v));
                out.reshape((len, heads * cfg.head_dim()))
            })?;
        }
        let last = x.narrow(0, len - 1, 1)?;
        let hidden = self.rms_norm(&last, &self.weight("model.norm.weight")?, cfg.rms_norm_eps)?;
        self.linear(&hidden, self.lm_head_name())?.squeeze(0)?.to_dtype(DType::F32)
    }
}

/// A tiny learnable packed dataset: 4 rows of three sequences "p, p+1, p+2, ... (mod 16)",
/// the first two tokens of each a prompt (loss mask 0). A model with a 16-token vocabulary
/// learns it from the previous token in a few dozen steps; the trainer's tests and `distillery
/// bench trainer-learn-check` use it.
pub fn learnable_rows() -> Vec<PackedRow> {
    (0..4u32)
        .map(|r| {
            let (mut input_ids, mut loss_mask, mut sequence_lengths) = (Vec::new(), Vec::new(), Vec::new());
            for s in 0..3u32 {
                let start = (r * 3 + s) % 16;
                let len = 6 + s as usize;
                input_ids.extend((0..len as u32).map(|i| (start + i) % 16));
                loss_mask.extend((0..len).map(|i| u8::from(i >= 2)));
                sequence_lengths.push(len);
            }
            PackedRow { input_ids, loss_mask, sequence_lengths }
        })
        .collect()
}
