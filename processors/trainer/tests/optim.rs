//! AdamW in place against the composite formula it replaced, gradient accumulation in place,
//! the one-reduction gradient norm, and a restore that continues bit for bit.

use candle_core::{DType, Device, Tensor, Var};
use distillery_trainer::distillery_model::weights::{safetensors_bytes, tensors_from_safetensors};
use distillery_trainer::optim::{AdamW, AdamWSettings, GradAccumulator};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

const SHAPES: [(&str, &[usize]); 3] = [("a.weight", &[7, 5]), ("b.weight", &[40_000]), ("c.norm", &[3])];

fn random(rng: &mut StdRng, shape: &[usize], scale: f64, dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f64> = (0..n).map(|_| rng.gen_range(-scale..scale)).collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn params(seed: u64, dtype: DType) -> BTreeMap<String, Var> {
    let mut rng = StdRng::seed_from_u64(seed);
    SHAPES
        .iter()
        .map(|(name, shape)| (name.to_string(), Var::from_tensor(&random(&mut rng, shape, 1.0, dtype)).unwrap()))
        .collect()
}

/// The loss `sum(w * x)` over every parameter, so each gradient is its `x`.
fn gradients(
    params: &BTreeMap<String, Var>,
    seed: u64,
) -> (candle_core::backprop::GradStore, BTreeMap<String, Tensor>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut loss: Option<Tensor> = None;
    let mut xs = BTreeMap::new();
    for (name, var) in params {
        let x = random(&mut rng, var.dims(), 3.0, var.dtype());
        let term = (var.as_tensor() * &x).unwrap().sum_all().unwrap();
        loss = Some(match loss {
            Some(loss) => (loss + term).unwrap(),
            None => term,
        });
        xs.insert(name.clone(), x);
    }
    (loss.unwrap().backward().unwrap(), xs)
}

fn accumulate(params: &BTreeMap<String, Var>, seeds: &[u64]) -> GradAccumulator {
    let mut accumulator = GradAccumulator::default();
    for &seed in seeds {
        accumulator.add(params, &gradients(params, seed).0).unwrap();
    }
    accumulator
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

fn weights(params: &BTreeMap<String, Var>) -> BTreeMap<String, Vec<f64>> {
    params.iter().map(|(name, var)| (name.clone(), values(var.as_tensor()))).collect()
}

/// The optimizer as it was before the in-place passes: a fresh tensor per term, the norm read
/// back per parameter. Kept here as the reference.
struct CompositeAdamW {
    settings: AdamWSettings,
    steps: u64,
    first: BTreeMap<String, Tensor>,
    second: BTreeMap<String, Tensor>,
}

impl CompositeAdamW {
    fn step(&mut self, params: &BTreeMap<String, Var>, grads: &BTreeMap<String, Tensor>, lr: f64) -> f64 {
        let mut squared = 0f64;
        for grad in grads.values() {
            squared += grad.sqr().unwrap().sum_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        }
        let norm = squared.sqrt();
        let s = &self.settings;
        let clip = if s.max_grad_norm > 0.0 && norm > s.max_grad_norm { s.max_grad_norm / (norm + 1e-6) } else { 1.0 };
        self.steps += 1;
        let correction1 = 1.0 - s.beta1.powi(self.steps as i32);
        let correction2 = 1.0 - s.beta2.powi(self.steps as i32);
        for (name, var) in params {
            let grad = (&grads[name] * clip).unwrap();
            let zeros = || Tensor::zeros(var.shape(), var.dtype(), var.device()).unwrap();
            let m = self.first.remove(name).unwrap_or_else(zeros);
            let v = self.second.remove(name).unwrap_or_else(zeros);
            let m = ((m * s.beta1).unwrap() + (&grad * (1.0 - s.beta1)).unwrap()).unwrap();
            let v = ((v * s.beta2).unwrap() + (grad.sqr().unwrap() * (1.0 - s.beta2)).unwrap()).unwrap();
            let update =
                ((&m / correction1).unwrap() / ((&v / correction2).unwrap().sqrt().unwrap() + s.eps).unwrap()).unwrap();
            let decayed = (var.as_tensor() * (1.0 - lr * s.weight_decay)).unwrap();
            var.set(&(decayed - (update * lr).unwrap()).unwrap()).unwrap();
            self.first.insert(name.clone(), m);
            self.second.insert(name.clone(), v);
        }
        norm
    }
}

fn settings() -> AdamWSettings {
    // Weight decay on, and a max norm small enough that every step clips.
    AdamWSettings { weight_decay: 0.1, max_grad_norm: 0.5, ..AdamWSettings::default() }
}

/// Element-wise, relative to the element or, for elements near zero, to the tensor's largest
/// (rounding errors scale with the operands, and a weight near zero is a difference of two).
fn assert_close(a: &[f64], b: &[f64], relative: f64, what: &str) {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, y| m.max(y.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= relative * y.abs().max(scale), "{what}[{i}]: {x} vs {y}");
    }
}

#[test]
fn in_place_step_matches_the_composite_formula_over_several_steps() {
    let (fused_params, composite_params) = (params(1, DType::F32), params(1, DType::F32));
    let mut fused = AdamW::new(settings());
    let mut composite =
        CompositeAdamW { settings: settings(), steps: 0, first: BTreeMap::new(), second: BTreeMap::new() };
    for step in 0..6u64 {
        let lr = 1e-2 * (1.0 + step as f64);
        let norm = fused.step(&fused_params, accumulate(&fused_params, &[10 * step, 10 * step + 1]), lr).unwrap();
        let (_, x1) = gradients(&composite_params, 10 * step);
        let (_, x2) = gradients(&composite_params, 10 * step + 1);
        let sums = x1.iter().map(|(name, x)| (name.clone(), (x + &x2[name]).unwrap())).collect();
        let reference_norm = composite.step(&composite_params, &sums, lr);
        assert!(norm > settings().max_grad_norm, "the step clips");
        assert!((norm - reference_norm).abs() <= 1e-6 * reference_norm, "norm {norm} vs {reference_norm}");
    }
    for (name, expected) in weights(&composite_params) {
        assert_close(&weights(&fused_params)[&name], &expected, 1e-6, &name);
    }
    let state = fused.state_tensors();
    for (name, m) in &composite.first {
        assert_close(&values(&state[&format!("{name}.exp_avg")]), &values(m), 1e-6, name);
        assert_close(&values(&state[&format!("{name}.exp_avg_sq")]), &values(&composite.second[name]), 1e-6, name);
    }
}

/// Without clipping both forms see the same gradient, and the pass keeps the composite's
/// operation order: the same bits.
#[test]
fn without_clipping_the_in_place_step_gives_the_composite_bits() {
    let unclipped = AdamWSettings { max_grad_norm: 0.0, ..settings() };
    let (fused_params, composite_params) = (params(7, DType::F32), params(7, DType::F32));
    let mut fused = AdamW::new(unclipped.clone());
    let mut composite =
        CompositeAdamW { settings: unclipped, steps: 0, first: BTreeMap::new(), second: BTreeMap::new() };
    for step in 0..4u64 {
        fused.step(&fused_params, accumulate(&fused_params, &[step]), 1e-2).unwrap();
        composite.step(&composite_params, &gradients(&composite_params, step).1, 1e-2);
    }
    assert_eq!(weights(&fused_params), weights(&composite_params));
}

#[test]
fn in_place_step_in_f64_matches_the_composite_formula() {
    let (fused_params, composite_params) = (params(2, DType::F64), params(2, DType::F64));
    let mut fused = AdamW::new(settings());
    let mut composite =
        CompositeAdamW { settings: settings(), steps: 0, first: BTreeMap::new(), second: BTreeMap::new() };
    for step in 0..3u64 {
        fused.step(&fused_params, accumulate(&fused_params, &[step]), 1e-2).unwrap();
        composite.step(&composite_params, &gradients(&composite_params, step).1, 1e-2);
    }
    for (name, expected) in weights(&composite_params) {
        assert_close(&weights(&fused_params)[&name], &expected, 1e-12, &name);
    }
}

#[test]
fn gradient_norm_is_the_global_norm_of_the_summed_micro_batches() {
    let params = params(3, DType::F32);
    let (_, x1) = gradients(&params, 5);
    let (_, x2) = gradients(&params, 6);
    let expected: f64 =
        x1.iter().flat_map(|(name, x)| values(&(x + &x2[name]).unwrap())).map(|g| g * g).sum::<f64>().sqrt();
    let mut optimizer = AdamW::new(AdamWSettings { max_grad_norm: 0.0, ..AdamWSettings::default() });
    let norm = optimizer.step(&params, accumulate(&params, &[5, 6]), 1e-3).unwrap();
    assert!((norm - expected).abs() <= 1e-6 * expected, "{norm} vs {expected}");
}

#[test]
fn accumulating_in_place_equals_one_backward_of_the_summed_loss() {
    // Two micro-batches added in place against their gradients summed by hand: the same update.
    let (accumulated, summed) = (params(4, DType::F32), params(4, DType::F32));
    let mut a = AdamW::new(settings());
    a.step(&accumulated, accumulate(&accumulated, &[7, 8, 9]), 1e-2).unwrap();
    let mut by_hand = GradAccumulator::default();
    let mut total: BTreeMap<String, Tensor> = BTreeMap::new();
    for seed in [7, 8, 9] {
        for (name, x) in gradients(&summed, seed).1 {
            let sum = match total.remove(&name) {
                Some(sum) => (sum + x).unwrap(),
                None => x,
            };
            total.insert(name, sum);
        }
    }
    // A store holding exactly those sums: the loss `sum(w * total)`.
    let mut loss: Option<Tensor> = None;
    for (name, var) in &summed {
        let term = (var.as_tensor() * &total[name]).unwrap().sum_all().unwrap();
        loss = Some(match loss {
            Some(loss) => (loss + term).unwrap(),
            None => term,
        });
    }
    by_hand.add(&summed, &loss.unwrap().backward().unwrap()).unwrap();
    let mut b = AdamW::new(settings());
    b.step(&summed, by_hand, 1e-2).unwrap();
    assert_eq!(weights(&accumulated), weights(&summed), "bit-identical");
}

#[test]
fn a_restored_optimizer_continues_bit_identically() {
    let (uninterrupted, resumed) = (params(5, DType::F32), params(5, DType::F32));
    let mut straight = AdamW::new(settings());
    let mut first = AdamW::new(settings());
    for step in 0..3u64 {
        straight.step(&uninterrupted, accumulate(&uninterrupted, &[step, 100 + step]), 1e-2).unwrap();
        first.step(&resumed, accumulate(&resumed, &[step, 100 + step]), 1e-2).unwrap();
    }
    // Through the checkpoint's bytes, as a restart sees them.
    let bytes = safetensors_bytes(&first.state_tensors()).unwrap();
    let state = tensors_from_safetensors(&bytes, &Device::Cpu).unwrap();
    for (name, var) in &resumed {
        assert_eq!(state[&format!("{name}.exp_avg")].dims(), var.dims(), "moments keep the parameter's shape");
    }
    drop(first);
    let mut second = AdamW::new(settings());
    second.restore(3, state, &resumed).unwrap();
    for step in 3..6u64 {
        let a = straight.step(&uninterrupted, accumulate(&uninterrupted, &[step, 100 + step]), 1e-2).unwrap();
        let b = second.step(&resumed, accumulate(&resumed, &[step, 100 + step]), 1e-2).unwrap();
        assert_eq!(a.to_bits(), b.to_bits(), "the same norm");
    }
    assert_eq!(weights(&uninterrupted), weights(&resumed));
    assert_eq!(straight.steps, second.steps);
}

#[test]
fn a_parameter_without_a_gradient_is_an_error() {
    let params = params(6, DType::F32);
    let mut partial = params.clone();
    partial.remove("c.norm");
    let grads = accumulate(&partial, &[1]);
    let error = AdamW::new(settings()).step(&params, grads, 1e-2).unwrap_err().to_string();
    assert!(error.contains("c.norm"), "{error}");
}

/// The moments live in the tensors the optimizer created at its first step: a later step writes
/// into them (what `state_tensors` returned before it sees the new values).
#[test]
fn later_steps_update_the_moments_in_place() {
    let params = params(8, DType::F32);
    let mut optimizer = AdamW::new(settings());
    optimizer.step(&params, accumulate(&params, &[1]), 1e-2).unwrap();
    let before = optimizer.state_tensors();
    let first_values: Vec<f64> = values(&before["b.weight.exp_avg"]);
    optimizer.step(&params, accumulate(&params, &[2]), 1e-2).unwrap();
    let after = optimizer.state_tensors();
    assert_ne!(values(&before["b.weight.exp_avg"]), first_values, "the step wrote into the same storage");
    for (name, tensor) in &after {
        assert_eq!(values(&before[name]), values(tensor), "{name}");
    }
}
