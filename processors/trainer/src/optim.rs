//! AdamW with f32 moments (candle's `AdamW` keeps them in the parameter dtype, where bf16 updates
//! at lr 5e-6 round to nothing), gradient accumulation over the micro-batches of a global batch,
//! clipping by global norm, and state that checkpoints save and restore exactly.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
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
    /// Adds one micro-batch's gradients (from `loss.backward()`), in f32.
    pub fn add(&mut self, params: &BTreeMap<String, Var>, grads: &GradStore) -> candle_core::Result<()> {
        for (name, var) in params {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            let grad = grad.to_dtype(master_dtype(var))?;
            let sum = match self.sums.remove(name) {
                Some(sum) => (sum + grad)?,
                None => grad,
            };
            self.sums.insert(name.clone(), sum);
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

pub struct AdamW {
    pub settings: AdamWSettings,
    /// Optimizer steps taken (for bias correction).
    pub steps: u64,
    first_moments: BTreeMap<String, Tensor>,
    second_moments: BTreeMap<String, Tensor>,
}

impl AdamW {
    pub fn new(settings: AdamWSettings) -> AdamW {
        AdamW { settings, steps: 0, first_moments: BTreeMap::new(), second_moments: BTreeMap::new() }
    }

    /// Applies one update from accumulated gradients; returns the gradient norm before clipping.
    /// A parameter without a gradient is an error: it would mean the graph was cut.
    pub fn step(&mut self, params: &BTreeMap<String, Var>, grads: GradAccumulator, lr: f64) -> anyhow::Result<f64> {
        let mut grads = grads.sums;
        let mut squared = 0f64;
        for (name, _) in params {
            let grad = grads.get(name).ok_or_else(|| anyhow::anyhow!("no gradient reached '{name}'"))?;
            squared += grad.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
        let norm = squared.sqrt();
        let clip = if self.settings.max_grad_norm > 0.0 && norm > self.settings.max_grad_norm {
            self.settings.max_grad_norm / (norm + 1e-6)
        } else {
            1.0
        };
        self.steps += 1;
        let s = &self.settings;
        let correction1 = 1.0 - s.beta1.powi(self.steps as i32);
        let correction2 = 1.0 - s.beta2.powi(self.steps as i32);
        for (name, var) in params {
            let grad = (grads.remove(name).expect("checked above") * clip)?;
            let dtype = master_dtype(var);
            let zeros = || Tensor::zeros(var.shape(), dtype, var.device());
            let m = match self.first_moments.remove(name) {
                Some(m) => m,
                None => zeros()?,
            };
            let v = match self.second_moments.remove(name) {
                Some(v) => v,
                None => zeros()?,
            };
            let m = ((m * s.beta1)? + (&grad * (1.0 - s.beta1))?)?;
            let v = ((v * s.beta2)? + (grad.sqr()? * (1.0 - s.beta2))?)?;
            let update = ((&m / correction1)? / ((&v / correction2)?.sqrt()? + s.eps)?)?;
            let weights = var.as_tensor().to_dtype(dtype)?;
            let decayed = (&weights * (1.0 - lr * s.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?.to_dtype(var.dtype())?)?;
            self.first_moments.insert(name.clone(), m);
            self.second_moments.insert(name.clone(), v);
        }
        Ok(norm)
    }

    /// Moments as named tensors (`{name}.exp_avg`, `{name}.exp_avg_sq`), for checkpoints.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let first = self.first_moments.iter().map(|(name, t)| (format!("{name}.exp_avg"), t.clone()));
        let second = self.second_moments.iter().map(|(name, t)| (format!("{name}.exp_avg_sq"), t.clone()));
        first.chain(second).collect()
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
        for name in params.keys() {
            let m = tensors.remove(&format!("{name}.exp_avg"));
            let v = tensors.remove(&format!("{name}.exp_avg_sq"));
            let (Some(m), Some(v)) = (m, v) else { anyhow::bail!("the optimizer state has no moments for '{name}'") };
            self.first_moments.insert(name.clone(), m);
            self.second_moments.insert(name.clone(), v);
        }
        Ok(())
    }
}
