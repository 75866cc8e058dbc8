//! The student on the fused ops: the same loss and gradients as on the composite reference
//! ops, the same gradients with layer recomputation as with the whole graph kept, and cached
//! generation equal to running the whole sequence.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device};
use distillery_model::model::OpsPath;
use distillery_model::{KvCache, ModelConfig, PackedRow, Student};
use std::collections::BTreeMap;

/// Grouped-query attention (4 heads, 2 kv heads), untied lm_head: every kind of weight.
fn micro_config() -> ModelConfig {
    ModelConfig {
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        tie_word_embeddings: false,
        ..ModelConfig::tiny(13)
    }
}

fn packed_row() -> PackedRow {
    PackedRow {
        input_ids: vec![1, 4, 2, 9, 3, 5, 7, 10, 12, 0, 6],
        loss_mask: vec![0, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1],
        sequence_lengths: vec![4, 1, 6],
    }
}

/// Every weight's gradient, summed over the parts `row_gradients` hands out, and the loss.
fn gradients(student: &Student, row: &PackedRow) -> (f64, BTreeMap<String, Vec<f64>>) {
    let mut sums: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let params = student.parameters().clone();
    let mut sink = |part: &GradStore| -> candle_core::Result<()> {
        for (name, var) in &params {
            if let Some(grad) = part.get(var.as_tensor()) {
                let values: Vec<f64> = grad.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
                let sum = sums.entry(name.clone()).or_insert_with(|| vec![0.0; values.len()]);
                sum.iter_mut().zip(values).for_each(|(s, v)| *s += v);
            }
        }
        Ok(())
    };
    let (loss, count) = student.row_gradients(row, 0.5, &mut sink).unwrap();
    assert_eq!(count, row.completion_tokens());
    (loss, sums)
}

fn assert_close(a: &(f64, BTreeMap<String, Vec<f64>>), b: &(f64, BTreeMap<String, Vec<f64>>), tolerance: f64) {
    assert!((a.0 - b.0).abs() <= tolerance * a.0.abs().max(1.0), "losses {} vs {}", a.0, b.0);
    assert_eq!(a.1.keys().collect::<Vec<_>>(), b.1.keys().collect::<Vec<_>>(), "the same weights get gradients");
    for (name, left) in &a.1 {
        let right = &b.1[name];
        let scale = left.iter().map(|v| v.abs()).fold(1e-6, f64::max);
        let worst = left.iter().zip(right).map(|(l, r)| (l - r).abs()).fold(0.0, f64::max);
        assert!(worst <= tolerance * scale, "{name}: gradients differ by {worst} (scale {scale})");
    }
}

#[test]
fn recomputing_layers_gives_the_gradients_of_the_whole_graph() {
    let student = Student::random(micro_config(), 3, DType::F64, &Device::Cpu).unwrap();
    let recomputed = gradients(&student.with_layer_recompute(true), &packed_row());
    let student = Student::random(micro_config(), 3, DType::F64, &Device::Cpu).unwrap();
    let whole = gradients(&student.with_layer_recompute(false), &packed_row());
    assert_eq!(recomputed.1.len(), micro_config_weights(), "every weight gets a gradient");
    assert_close(&recomputed, &whole, 1e-10);
}

fn micro_config_weights() -> usize {
    distillery_model::model::parameter_shapes(&micro_config()).len()
}

#[test]
fn fused_ops_give_the_loss_and_gradients_of_the_reference_ops() {
    let fused = gradients(&Student::random(micro_config(), 5, DType::F32, &Device::Cpu).unwrap(), &packed_row());
    let reference = Student::random(micro_config(), 5, DType::F32, &Device::Cpu).unwrap().with_ops(OpsPath::Reference);
    let reference = gradients(&reference, &packed_row());
    assert_close(&fused, &reference, 1e-4);
}

#[test]
fn tied_embeddings_get_the_gradient_of_the_input_and_of_the_lm_head() {
    let config = ModelConfig { tie_word_embeddings: true, ..micro_config() };
    let recomputed = gradients(&Student::random(config.clone(), 9, DType::F64, &Device::Cpu).unwrap(), &packed_row());
    let whole = Student::random(config, 9, DType::F64, &Device::Cpu).unwrap().with_layer_recompute(false);
    assert_close(&recomputed, &gradients(&whole, &packed_row()), 1e-10);
}

#[test]
fn cached_generation_equals_the_whole_sequence_at_every_step() {
    let student = Student::random(micro_config(), 7, DType::F32, &Device::Cpu).unwrap();
    let tokens = [3u32, 1, 4, 1, 5, 9, 2, 6];
    let mut cache = KvCache::default();
    // A prompt of three tokens at once, then one token at a time.
    let mut fed = 3;
    let mut last = student.forward_cached(&tokens[..fed], &mut cache).unwrap();
    loop {
        let row = PackedRow { input_ids: tokens[..fed].to_vec(), loss_mask: vec![1; fed], sequence_lengths: vec![fed] };
        let whole = student.forward_logits(&row).unwrap();
        let expected = whole.narrow(0, fed - 1, 1).unwrap().squeeze(0).unwrap();
        let difference: f32 = (&last - &expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(difference < 1e-5, "after {fed} tokens the cached logits differ by {difference}");
        assert_eq!(cache.len(), fed);
        if fed == tokens.len() {
            break;
        }
        last = student.forward_cached(&tokens[fed..fed + 1], &mut cache).unwrap();
        fed += 1;
    }
}

/// The RoPE tables start small and grow for a longer sequence, which trains and generates
/// exactly as it would from tables built that long at the start.
#[test]
fn a_sequence_longer_than_the_first_rope_tables_gets_grown_tables() {
    let student = Student::random(micro_config(), 1, DType::F32, &Device::Cpu).unwrap();
    let long = PackedRow { input_ids: vec![1; 5000], loss_mask: vec![1; 5000], sequence_lengths: vec![5000] };
    let (loss, count) = student.loss_sum(&long).unwrap();
    assert_eq!(count, 4999);
    assert!(loss.to_scalar::<f32>().unwrap().is_finite());
    let bad = PackedRow { input_ids: vec![1; 6], loss_mask: vec![1; 6], sequence_lengths: vec![3, 2] };
    assert!(student.loss_sum(&bad).unwrap_err().to_string().contains("add up to 5"));
    assert!(student.forward_cached(&[], &mut KvCache::default()).is_err(), "no token to feed is an error");
}

/// What a CUDA build runs until the kernels exist (`fused::off_cpu`) computes what the fused
/// CPU ops compute: checked here on the CPU, where both run.
#[test]
fn the_off_cpu_route_computes_what_the_fused_ops_compute() {
    use distillery_model::fused::{attention, off_cpu, rope::RopeTables};
    let device = Device::Cpu;
    let (len, heads, kv_heads, head_dim) = (9, 4, 2, 8);
    let values =
        |n: usize, seed: u32| -> Vec<f32> { (0..n as u32).map(|i| ((i * 7 + seed) % 13) as f32 / 6.0 - 1.0).collect() };
    let q = candle_core::Tensor::from_vec(values(len * heads * head_dim, 1), (len, heads, head_dim), &device).unwrap();
    let k = candle_core::Tensor::from_vec(values(len * kv_heads * head_dim, 2), (len, kv_heads, head_dim), &device)
        .unwrap();
    let v = candle_core::Tensor::from_vec(values(len * kv_heads * head_dim, 3), (len, kv_heads, head_dim), &device)
        .unwrap();
    let max_difference = |a: &candle_core::Tensor, b: &candle_core::Tensor| -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    };
    let lengths = [4, 5];
    let fused = attention::packed_attention(&q, &k, &v, &lengths).unwrap();
    assert!(max_difference(&fused, &off_cpu::packed_attention(&q, &k, &v, &lengths).unwrap()) < 1e-5);
    let last = q.narrow(0, len - 2, 2).unwrap();
    let fused = attention::cached_attention(&last, &k, &v, len - 2).unwrap();
    assert!(max_difference(&fused, &off_cpu::cached_attention(&last, &k, &v, len - 2).unwrap()) < 1e-5);
    let tables = RopeTables::new(head_dim, 10_000.0, 16, DType::F32, &device).unwrap();
    let positions: Vec<u32> = vec![0, 1, 2, 3, 0, 1, 2, 3, 4];
    let fused = distillery_model::fused::rope::rope(&q, &tables, &positions).unwrap();
    let (cos, sin) = tables.halves();
    assert!(max_difference(&fused, &off_cpu::rope(&q, cos, sin, &positions).unwrap()) < 1e-5);
}
