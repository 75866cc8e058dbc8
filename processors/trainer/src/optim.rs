//! AdamW with f32 moments (candle's `AdamW` keeps them in the parameter dtype, where bf16 updates
//! at lr 5e-6 round to nothing), gradient accumulation over the micro-batches of a global batch,
//! clipping by global norm, and state that checkpoints save and restore exactly.
//!
//! On the CPU every step is in place: each micro-batch's gradient is added into the running f32
//! sum, the global norm is one reduction read back once, and each parameter's update is one
//! pass over (weight, moments, gradient) writing into their own storage
//! (`distillery_model::fused::adamw`). Other devices run the composite form (fresh tensors per
//! term) until those passes have CUDA kernels.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use distillery_model::fused::adamw::{adamw_update, add_assign, sum_squares, AdamWStep};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0 disables).
    pub max_grad_norm: f64,
}

impl Default for AdamWSettings {
    fn default() -> AdamWSettings {
        AdamWSettings { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, max_grad_norm: 1.0 }
    }
}

/// Summed gradients of the micro-batches of one global batch, by parameter name.
#[derive(Default)]
pub struct GradAccumulator {
    sums: BTreeMap<String, Tensor>,
}

impl GradAccumulator {
    /// Adds one micro-batch's gradients (from `loss.backward()`), in f32. The first micro-batch's
    /// gradients become the sums as they are (converted to f32 once); later ones are added into
    /// them in place, so the store's tensors must not be read after they were added.
    pub fn add(&mut self, params: &BTreeMap<String, Var>, grads: &GradStore) -> candle_core::Result<()> {
        for (name, var) in params {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            let grad = grad.to_dtype(master_dtype(var))?;
            match self.sums.remove(name) {
                Some(sum) if in_place(&sum, &grad) => {
                    add_assign(&sum, &grad)?;
                    self.sums.insert(name.clone(), sum);
                }
                Some(sum) => {
                    self.sums.insert(name.clone(), (sum + grad)?);
                }
                None => {
                    self.sums.insert(name.clone(), grad.contiguous()?);
                }
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }
}

/// Moments in f32 (f64 for f64 parameters) whatever the compute dtype.
fn master_dtype(var: &Var) -> DType {
    if var.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Whether the fused in-place passes can take these tensors (the CPU, one dtype, contiguous).
fn in_place(dst: &Tensor, src: &Tensor) -> bool {
    dst.device().is_cpu() && dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()
}

pub struct AdamW {
    pub settings: AdamWSettings,
    /// Optimizer steps taken (for bias correction).
    pub steps: u64,
    /// Per parameter, `[2, ..shape]`: the first moment, then the second, in the master dtype.
    moments: BTreeMap<String, Tensor>,
}

impl AdamW {
    pub fn new(settings: AdamWSettings) -> AdamW {
        AdamW { settings, steps: 0, moments: BTreeMap::new() }
    }

    /// Applies one update from accumulated gradients; returns the gradient norm before clipping.
    /// A parameter without a gradient is an error: it would mean the graph was cut.
    pub fn step(&mut self, params: &BTreeMap<String, Var>, grads: GradAccumulator, lr: f64) -> anyhow::Result<f64> {
        let mut grads = grads.sums;
        for name in params.keys() {
            anyhow::ensure!(grads.contains_key(name), "no gradient reached '{name}'");
        }
        let norm = global_norm(params.keys().map(|name| &grads[name]))?;
        let clip = if self.settings.max_grad_norm > 0.0 && norm > self.settings.max_grad_norm {
            self.settings.max_grad_norm / (norm + 1e-6)
        } else {
            1.0
        };
        self.steps += 1;
        let s = &self.settings;
        let step = AdamWStep {
            lr,
            beta1: s.beta1,
            beta2: s.beta2,
            eps: s.eps,
            weight_decay: s.weight_decay,
            clip,
            step: self.steps,
        };
        for (name, var) in params {
            let grad = grads.remove(name).expect("checked above");
            let dtype = master_dtype(var);
            let moments = match self.moments.remove(name) {
                Some(moments) => moments,
                None => Tensor::zeros(moments_shape(var), dtype, var.device())?,
            };
            let weight = var.as_tensor();
            let moments = if in_place(weight, &grad) && in_place(&moments, &grad) && weight.dtype() == dtype {
                adamw_update(weight, &moments, &grad, &step)?;
                moments
            } else {
                composite_update(var, &moments, &grad, &step)?
            };
            self.moments.insert(name.clone(), moments);
        }
        Ok(norm)
    }

    /// Moments as named tensors (`{name}.exp_avg`, `{name}.exp_avg_sq`), for checkpoints. They
    /// are views of the live state, which the next step overwrites: write them out first.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut tensors = BTreeMap::new();
        for (name, moments) in &self.moments {
            for (index, suffix) in [(0, "exp_avg"), (1, "exp_avg_sq")] {
                let moment = moments.get(index).expect("moments are [2, ..shape]");
                tensors.insert(format!("{name}.{suffix}"), moment);
            }
        }
        tensors
    }

    /// Restores moments saved by [`AdamW::state_tensors`].
    pub fn restore(
        &mut self,
        steps: u64,
        mut tensors: BTreeMap<String, Tensor>,
        params: &BTreeMap<String, Var>,
    ) -> anyhow::Result<()> {
        self.steps = steps;
        if steps == 0 {
            return Ok(());
        }
        for (name, var) in params {
            let m = tensors.remove(&format!("{name}.exp_avg"));
            let v = tensors.remove(&format!("{name}.exp_avg_sq"));
            let (Some(m), Some(v)) = (m, v) else { anyhow::bail!("the optimizer state has no moments for '{name}'") };
            anyhow::ensure!(
                m.elem_count() == var.elem_count() && v.elem_count() == var.elem_count(),
                "the optimizer state's moments for '{name}' do not match its shape {:?}",
                var.shape()
            );
            // A fresh tensor of our own: the update writes into it.
            let dtype = master_dtype(var);
            let (m, v) = (m.to_dtype(dtype)?.reshape(var.shape())?, v.to_dtype(dtype)?.reshape(var.shape())?);
            let moments = Tensor::stack(&[m, v], 0)?.to_device(var.device())?;
            self.moments.insert(name.clone(), moments);
        }
        Ok(())
    }
}

/// `[2, ..shape]`: both moments of a parameter in one tensor, so one in-place pass holds both.
fn moments_shape(var: &Var) -> Vec<usize> {
    std::iter::once(2).chain(var.dims().iter().copied()).collect()
}

/// The global L2 norm of the gradients: one sum of squares per tensor on its device, summed
/// there, read back once.
fn global_norm<'a>(grads: impl Iterator<Item = &'a Tensor>) -> candle_core::Result<f64> {
    let squares = grads
        .map(|grad| {
            if grad.device().is_cpu() && grad.is_contiguous() {
                sum_squares(grad)
            } else {
                grad.sqr()?.sum_all()?.to_dtype(DType::F64)
            }
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    if squares.is_empty() {
        return Ok(0.0);
    }
    Ok(Tensor::stack(&squares, 0)?.sum_all()?.to_scalar::<f64>()?.sqrt())
}

/// The update as composed candle ops (fresh tensors per term): the path off the CPU, and the
/// reference the in-place pass is tested against. Writes the weight through `Var::set` and
/// returns the new `[2, ..shape]` moments.
pub fn composite_update(var: &Var, moments: &Tensor, grad: &Tensor, step: &AdamWStep) -> candle_core::Result<Tensor> {
    let dtype = moments.dtype();
    let grad = (grad.to_dtype(dtype)? * step.clip)?;
    let (m, v) = (moments.get(0)?, moments.get(1)?);
    let correction1 = 1.0 - step.beta1.powi(step.step as i32);
    let correction2 = 1.0 - step.beta2.powi(step.step as i32);
    let m = ((m * step.beta1)? + (&grad * (1.0 - step.beta1))?)?;
    let v = ((v * step.beta2)? + (grad.sqr()? * (1.0 - step.beta2))?)?;
    let update = ((&m / correction1)? / ((&v / correction2)?.sqrt()? + step.eps)?)?;
    let weights = var.as_tensor().to_dtype(dtype)?;
    let decayed = (&weights * (1.0 - step.lr * step.weight_decay))?;
    var.set(&(decayed - (update * step.lr)?)?.to_dtype(var.dtype())?)?;
    Tensor::stack(&[m, v], 0)
}
