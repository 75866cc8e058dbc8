//! The decoder's maths: gradients against finite differences, packed attention against each
//! sequence alone, the loss mask, and a tiny model that learns.

use candle_core::{DType, Device, Tensor};
use distillery_trainer::distillery_model::learnable_rows;
use distillery_trainer::optim::{AdamW, AdamWSettings};
use distillery_trainer::train::batch_gradients;
use distillery_trainer::{ModelConfig, PackedRow, Student};

fn micro_config() -> ModelConfig {
    ModelConfig {
        hidden_size: 8,
        intermediate_size: 12,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: Some(1),
        tie_word_embeddings: false,
        ..ModelConfig::tiny(11)
    }
}

fn row(input_ids: Vec<u32>, loss_mask: Vec<u8>, sequence_lengths: Vec<usize>) -> PackedRow {
    PackedRow { input_ids, loss_mask, sequence_lengths }
}

/// Every weight's analytic gradient matches a central finite difference (f64, so the
/// comparison is tight), for a row of two packed sequences.
#[test]
fn gradients_match_finite_differences() {
    let device = Device::Cpu;
    let student = Student::random(micro_config(), 7, DType::F64, &device).unwrap();
    let packed = row(vec![1, 4, 2, 9, 3, 5, 7, 10], vec![0, 0, 1, 1, 0, 1, 1, 1], vec![4, 4]);
    let (loss, _) = student.loss_sum(&packed).unwrap();
    let grads = loss.backward().unwrap();
    let eps = 1e-6;
    let mut checked = 0;
    for (name, var) in student.parameters() {
        let analytic = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let analytic: Vec<f64> = analytic.flatten_all().unwrap().to_vec1().unwrap();
        let original: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        // A few coordinates of every weight keep the test fast.
        for index in [0, original.len() / 2, original.len() - 1] {
            let loss_at = |delta: f64| {
                let mut values = original.clone();
                values[index] += delta;
                var.set(&Tensor::from_vec(values, var.shape(), &device).unwrap()).unwrap();
                let (loss, _) = student.loss_sum(&packed).unwrap();
                loss.to_scalar::<f64>().unwrap()
            };
            let numeric = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps);
            var.set(&Tensor::from_vec(original.clone(), var.shape(), &device).unwrap()).unwrap();
            let tolerance = 1e-6 + 1e-4 * numeric.abs();
            assert!(
                (numeric - analytic[index]).abs() < tolerance,
                "{name}[{index}]: analytic {} vs numeric {numeric}",
                analytic[index]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * student.parameters().len());
}

/// Packing is invisible to the model: logits of a packed row equal the logits of each
/// sequence run alone (positions restart, no attention across the boundary).
#[test]
fn packed_attention_equals_each_sequence_alone() {
    let student = Student::random(micro_config(), 3, DType::F32, &Device::Cpu).unwrap();
    let (a, b, c) = (vec![1u32, 2, 3, 4, 5], vec![6u32, 7, 8], vec![9u32, 10, 0, 1]);
    let packed: Vec<u32> = a.iter().chain(&b).chain(&c).copied().collect();
    let packed_logits = student.forward_logits(&row(packed, vec![1; 12], vec![5, 3, 4])).unwrap();
    let alone: Vec<Tensor> = [&a, &b, &c]
        .iter()
        .map(|ids| student.forward_logits(&row(ids.to_vec(), vec![1; ids.len()], vec![ids.len()])).unwrap())
        .collect();
    let alone = Tensor::cat(&alone, 0).unwrap();
    let difference = (packed_logits - alone).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(difference < 1e-5, "packed and separate logits differ by {difference}");
}

/// Only loss-mask tokens count: changing a prompt token's target changes nothing in the loss
/// of... itself; changing a completion target does.
#[test]
fn only_completion_tokens_contribute_to_the_loss() {
    let student = Student::random(micro_config(), 5, DType::F32, &Device::Cpu).unwrap();
    let base = row(vec![1, 2, 3, 4, 5, 6], vec![0, 0, 0, 1, 1, 1], vec![6]);
    let (loss, count) = student.loss_sum(&base).unwrap();
    assert_eq!(count, 3, "targets are the 3 completion tokens");
    assert_eq!(base.targets(), (vec![2, 3, 4], vec![4, 5, 6]));
    let loss = loss.to_scalar::<f32>().unwrap();
    // Masking out everything gives no targets and a zero loss.
    let (none, zero) = student.loss_sum(&row(vec![1, 2, 3], vec![0, 0, 0], vec![3])).unwrap();
    assert_eq!((none.to_scalar::<f32>().unwrap(), zero), (0.0, 0));
    // The loss equals the sum of -log p(target) computed from the full logits.
    let logits = student.forward_logits(&base).unwrap();
    let log_probs = distillery_trainer::distillery_model::reference::log_softmax_last_dim(&logits).unwrap();
    let log_probs: Vec<Vec<f32>> = log_probs.to_vec2().unwrap();
    let expected: f32 = [(2usize, 4usize), (3, 5), (4, 6)].iter().map(|&(p, t)| -log_probs[p][t]).sum();
    assert!((loss - expected).abs() < 1e-4, "{loss} vs {expected}");
    // The first token of a sequence is never a target, even if masked in: nothing predicts it
    // across the boundary.
    let two = row(vec![1, 2, 3, 4], vec![1, 1, 1, 1], vec![2, 2]);
    assert_eq!(two.targets(), (vec![0, 2], vec![2, 4]));
}

/// A tiny random model learns a synthetic packed dataset: the loss falls by more than half in
/// 60 steps.
#[test]
fn tiny_model_learns_a_packed_dataset() {
    let config = ModelConfig::tiny(16);
    let student = Student::random(config, 11, DType::F32, &Device::Cpu).unwrap();
    // Sequences "prompt p, then p+1, p+2, ... (mod 16)": learnable from the previous token.
    let rows = learnable_rows();
    let mut optimizer = AdamW::new(AdamWSettings { max_grad_norm: 1.0, ..AdamWSettings::default() });
    let mut losses = Vec::new();
    for _ in 0..60 {
        let (loss_total, grads) = batch_gradients(&student, rows.iter()).unwrap();
        optimizer.step(student.parameters(), grads, 1e-2).unwrap();
        losses.push(loss_total);
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(first > 2.0, "a random model starts near ln(16) = 2.77, got {first}");
    assert!(last < first * 0.5, "loss fell from {first} to {last} only");
}
