//! The fused elementwise ops (RMSNorm, RoPE, SwiGLU, linear + cross-entropy) against the
//! reference ops composed of candle primitives (forward, and gradients through candle's
//! autograd, in f32) and against central finite differences (in f64, on tiny shapes).

use distillery_model::candle_core::{DType, Device, Result, Tensor, Var};
use distillery_model::fused::cross_entropy::linear_cross_entropy;
use distillery_model::fused::norm::rms_norm;
use distillery_model::fused::rope::{rope, RopeTables};
use distillery_model::fused::swiglu::swiglu;
use distillery_model::reference;

/// Deterministic values in [-scale, scale) from a seed (a 64-bit LCG: no dependency, the same
/// on every machine).
fn values(seed: u64, count: usize, scale: f64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..count)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor(seed: u64, shape: &[usize], scale: f64, dtype: DType) -> Tensor {
    let count = shape.iter().product();
    Tensor::from_vec(values(seed, count, scale), shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// Asserts `|a - b| <= tolerance * max(1, |b|)` elementwise.
fn assert_close(what: &str, a: &Tensor, b: &Tensor, tolerance: f64) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let (a, b) = (flat(a), flat(b));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= tolerance * y.abs().max(1.0),
            "{what}: element {i}: {x} vs {y} (tolerance {tolerance})"
        );
    }
}

/// `sum(out * probe)`: a scalar whose gradient sends an arbitrary gradient `probe` into the op.
fn probed(out: &Tensor, probe: &Tensor) -> Result<Tensor> {
    (out * probe)?.sum_all()
}

/// Gradients of `f` at `inputs` through candle's autograd.
fn autograd(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) -> Vec<Tensor> {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let grads = f(&tensors).unwrap().backward().unwrap();
    vars.iter().map(|v| grads.get(v.as_tensor()).expect("a gradient for every input").clone()).collect()
}

/// Central finite differences of the scalar `f` with respect to input `which`, in f64.
fn finite_differences(inputs: &[Tensor], which: usize, f: &impl Fn(&[Tensor]) -> Result<Tensor>) -> Tensor {
    let step = 1e-6;
    let base = flat(&inputs[which]);
    let shape = inputs[which].dims().to_vec();
    let at = |values: Vec<f64>| -> f64 {
        let mut moved = inputs.to_vec();
        moved[which] = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu).unwrap();
        f(&moved).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    };
    let gradient: Vec<f64> = (0..base.len())
        .map(|i| {
            let (mut up, mut down) = (base.clone(), base.clone());
            up[i] += step;
            down[i] -= step;
            (at(up) - at(down)) / (2.0 * step)
        })
        .collect();
    Tensor::from_vec(gradient, shape.as_slice(), &Device::Cpu).unwrap()
}

/// Checks the autograd gradients of `f` (through the fused op) against finite differences, f64.
fn check_against_finite_differences(what: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let analytic = autograd(inputs, &f);
    for (which, analytic) in analytic.iter().enumerate() {
        let numeric = finite_differences(inputs, which, &f);
        assert_close(&format!("{what}: gradient of input {which}"), analytic, &numeric, 1e-6);
    }
}

// ---- RMSNorm ----

#[test]
fn rms_norm_forward_equals_reference_f32() {
    let x = tensor(1, &[2, 7, 64], 2.0, DType::F32);
    let w = tensor(2, &[64], 1.0, DType::F32);
    let fused = rms_norm(&x, &w, 1e-5).unwrap();
    assert_close("rms_norm", &fused, &reference::rms_norm(&x, &w, 1e-5).unwrap(), 1e-5);
}

#[test]
fn rms_norm_gradients_equal_reference_autograd_f32() {
    let inputs = [tensor(3, &[37, 48], 2.0, DType::F32), tensor(4, &[48], 1.0, DType::F32)];
    let probe = tensor(5, &[37, 48], 1.0, DType::F32);
    let fused = autograd(&inputs, |t| probed(&rms_norm(&t[0], &t[1], 1e-6)?, &probe));
    let expected = autograd(&inputs, |t| probed(&reference::rms_norm(&t[0], &t[1], 1e-6)?, &probe));
    assert_close("d x", &fused[0], &expected[0], 1e-4);
    assert_close("d weight", &fused[1], &expected[1], 1e-4);
}

#[test]
fn rms_norm_gradients_equal_finite_differences_f64() {
    let inputs = [tensor(6, &[3, 5], 2.0, DType::F64), tensor(7, &[5], 1.0, DType::F64)];
    let probe = tensor(8, &[3, 5], 1.0, DType::F64);
    check_against_finite_differences("rms_norm", &inputs, |t| probed(&rms_norm(&t[0], &t[1], 1e-6)?, &probe));
}

#[test]
fn rms_norm_of_bf16_input_is_bf16_and_close_to_f32() {
    let x = tensor(9, &[4, 32], 2.0, DType::F32);
    let w = tensor(10, &[32], 1.0, DType::F32);
    let fused = rms_norm(&x.to_dtype(DType::BF16).unwrap(), &w.to_dtype(DType::BF16).unwrap(), 1e-5).unwrap();
    assert_eq!(fused.dtype(), DType::BF16);
    assert_close("rms_norm bf16", &fused, &rms_norm(&x, &w, 1e-5).unwrap(), 2e-2);
}

// ---- RoPE ----

/// Positions of a packed row of sequences with these lengths: each restarts at 0.
fn packed_positions(lengths: &[usize]) -> Vec<u32> {
    lengths.iter().flat_map(|&len| 0..len as u32).collect()
}

/// The reference: `x` `[len, heads, head_dim]` rotated one sequence at a time with the
/// reference tables, each sequence from position 0.
fn reference_rope(x: &Tensor, tables: &reference::RotaryTables, lengths: &[usize]) -> Result<Tensor> {
    let mut start = 0;
    let mut parts = Vec::new();
    for &len in lengths {
        let (cos, sin) = tables.slice(0, len)?;
        let sequence = x.narrow(0, start, len)?.transpose(0, 1)?.contiguous()?;
        parts.push(reference::rope(&sequence, &cos, &sin)?.transpose(0, 1)?);
        start += len;
    }
    Tensor::cat(&parts, 0)
}

#[test]
fn rope_forward_equals_reference_per_sequence_f32() {
    let lengths = [5, 9, 3];
    let x = tensor(11, &[17, 3, 16], 1.0, DType::F32);
    let tables = RopeTables::new(16, 10_000.0, 32, DType::F32, &Device::Cpu).unwrap();
    let reference_tables = reference::RotaryTables::new(16, 10_000.0, 32, DType::F32, &Device::Cpu).unwrap();
    let fused = rope(&x, &tables, &packed_positions(&lengths)).unwrap();
    assert_close("rope", &fused, &reference_rope(&x, &reference_tables, &lengths).unwrap(), 1e-5);
}

#[test]
fn rope_at_generation_positions_equals_reference_slice() {
    let x = tensor(12, &[4, 2, 8], 1.0, DType::F32);
    let tables = RopeTables::new(8, 10_000.0, 16, DType::F32, &Device::Cpu).unwrap();
    let reference_tables = reference::RotaryTables::new(8, 10_000.0, 16, DType::F32, &Device::Cpu).unwrap();
    let fused = rope(&x, &tables, &[7, 8, 9, 10]).unwrap();
    let (cos, sin) = reference_tables.slice(7, 4).unwrap();
    let expected = reference::rope(&x.transpose(0, 1).unwrap().contiguous().unwrap(), &cos, &sin).unwrap();
    assert_close("rope past 7", &fused, &expected.transpose(0, 1).unwrap(), 1e-5);
}

#[test]
fn rope_gradient_equals_reference_autograd_f32() {
    let lengths = [6, 4];
    let inputs = [tensor(13, &[10, 2, 8], 1.0, DType::F32)];
    let probe = tensor(14, &[10, 2, 8], 1.0, DType::F32);
    let tables = RopeTables::new(8, 10_000.0, 16, DType::F32, &Device::Cpu).unwrap();
    let reference_tables = reference::RotaryTables::new(8, 10_000.0, 16, DType::F32, &Device::Cpu).unwrap();
    let positions = packed_positions(&lengths);
    let fused = autograd(&inputs, |t| probed(&rope(&t[0], &tables, &positions)?, &probe));
    let expected = autograd(&inputs, |t| probed(&reference_rope(&t[0], &reference_tables, &lengths)?, &probe));
    assert_close("d x", &fused[0], &expected[0], 1e-5);
}

#[test]
fn rope_gradient_equals_finite_differences_f64() {
    let inputs = [tensor(15, &[3, 2, 4], 1.0, DType::F64)];
    let probe = tensor(16, &[3, 2, 4], 1.0, DType::F64);
    let tables = RopeTables::new(4, 10_000.0, 8, DType::F64, &Device::Cpu).unwrap();
    check_against_finite_differences("rope", &inputs, |t| probed(&rope(&t[0], &tables, &[0, 1, 5])?, &probe));
}

#[test]
fn rope_with_a_position_past_the_tables_is_an_error() {
    let x = tensor(17, &[2, 1, 4], 1.0, DType::F32);
    let tables = RopeTables::new(4, 10_000.0, 8, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(tables.max_positions(), 8);
    assert!(rope(&x, &tables, &[7, 8]).is_err());
    assert!(rope(&x, &tables, &[6, 7]).is_ok());
    assert!(rope(&x, &tables, &[0]).is_err(), "one position per token");
}

// ---- SwiGLU ----

#[test]
fn swiglu_forward_equals_reference_f32() {
    let gate = tensor(18, &[9, 100], 6.0, DType::F32);
    let up = tensor(19, &[9, 100], 2.0, DType::F32);
    assert_close("swiglu", &swiglu(&gate, &up).unwrap(), &reference::swiglu(&gate, &up).unwrap(), 1e-5);
}

#[test]
fn swiglu_gradients_equal_reference_autograd_f32() {
    let inputs = [tensor(20, &[13, 70], 6.0, DType::F32), tensor(21, &[13, 70], 2.0, DType::F32)];
    let probe = tensor(22, &[13, 70], 1.0, DType::F32);
    let fused = autograd(&inputs, |t| probed(&swiglu(&t[0], &t[1])?, &probe));
    let expected = autograd(&inputs, |t| probed(&reference::swiglu(&t[0], &t[1])?, &probe));
    assert_close("d gate", &fused[0], &expected[0], 1e-5);
    assert_close("d up", &fused[1], &expected[1], 1e-5);
}

#[test]
fn swiglu_gradients_equal_finite_differences_f64() {
    let inputs = [tensor(23, &[2, 5], 4.0, DType::F64), tensor(24, &[2, 5], 2.0, DType::F64)];
    let probe = tensor(25, &[2, 5], 1.0, DType::F64);
    check_against_finite_differences("swiglu", &inputs, |t| probed(&swiglu(&t[0], &t[1])?, &probe));
}

// ---- linear + cross-entropy ----

fn targets(seed: u64, n: usize, vocab: usize) -> Tensor {
    let t: Vec<u32> =
        values(seed, n, 1.0).iter().map(|v| ((v + 1.0) / 2.0 * vocab as f64) as u32 % vocab as u32).collect();
    Tensor::from_vec(t, n, &Device::Cpu).unwrap()
}

fn reference_linear_cross_entropy(hidden: &Tensor, weight: &Tensor, targets: &Tensor) -> Result<Tensor> {
    reference::cross_entropy_sum(&hidden.matmul(&weight.t()?)?, targets)
}

#[test]
fn linear_cross_entropy_equals_reference_f32() {
    let hidden = tensor(26, &[23, 32], 1.0, DType::F32);
    let weight = tensor(27, &[101, 32], 1.0, DType::F32);
    let t = targets(28, 23, 101);
    let fused = linear_cross_entropy(&hidden, &weight, &t, 8).unwrap();
    assert_eq!(fused.dims(), &[] as &[usize]);
    assert_close("loss", &fused, &reference_linear_cross_entropy(&hidden, &weight, &t).unwrap(), 1e-5);
}

#[test]
fn linear_cross_entropy_gradients_equal_reference_autograd_f32() {
    let inputs = [tensor(29, &[19, 24], 1.0, DType::F32), tensor(30, &[67, 24], 1.0, DType::F32)];
    let t = targets(31, 19, 67);
    // Scaled, so the incoming gradient is not 1.
    let fused = autograd(&inputs, |x| linear_cross_entropy(&x[0], &x[1], &t, 5)? * 0.5);
    let expected = autograd(&inputs, |x| reference_linear_cross_entropy(&x[0], &x[1], &t)? * 0.5);
    assert_close("d hidden", &fused[0], &expected[0], 1e-5);
    assert_close("d weight", &fused[1], &expected[1], 1e-5);
}

#[test]
fn linear_cross_entropy_gradients_equal_finite_differences_f64() {
    let inputs = [tensor(32, &[5, 3], 1.0, DType::F64), tensor(33, &[7, 3], 1.0, DType::F64)];
    let t = targets(34, 5, 7);
    check_against_finite_differences("linear_cross_entropy", &inputs, |x| {
        linear_cross_entropy(&x[0], &x[1], &t, 2)? * 0.7
    });
}

#[test]
fn linear_cross_entropy_does_not_depend_on_chunk_rows() {
    let n = 11;
    let inputs = [tensor(35, &[n, 16], 1.0, DType::F64), tensor(36, &[29, 16], 1.0, DType::F64)];
    let t = targets(37, n, 29);
    let whole = autograd(&inputs, |x| linear_cross_entropy(&x[0], &x[1], &t, n));
    let loss_whole = linear_cross_entropy(&inputs[0], &inputs[1], &t, n).unwrap();
    for chunk_rows in [1, 4, 64] {
        let chunked = autograd(&inputs, |x| linear_cross_entropy(&x[0], &x[1], &t, chunk_rows));
        let loss = linear_cross_entropy(&inputs[0], &inputs[1], &t, chunk_rows).unwrap();
        assert_close(&format!("loss, chunk_rows {chunk_rows}"), &loss, &loss_whole, 1e-12);
        assert_close(&format!("d hidden, chunk_rows {chunk_rows}"), &chunked[0], &whole[0], 1e-12);
        assert_close(&format!("d weight, chunk_rows {chunk_rows}"), &chunked[1], &whole[1], 1e-12);
    }
}

#[test]
fn linear_cross_entropy_with_a_target_past_the_vocabulary_is_an_error() {
    let hidden = tensor(38, &[2, 4], 1.0, DType::F32);
    let weight = tensor(39, &[5, 4], 1.0, DType::F32);
    let t = Tensor::new(&[1u32, 5], &Device::Cpu).unwrap();
    assert!(linear_cross_entropy(&hidden, &weight, &t, 1).is_err());
}

#[test]
fn swiglu_of_the_halves_of_one_projection_equals_reference() {
    // Gate and up as strided views of one fused projection, as a merged gate/up matmul gives.
    let inputs = [tensor(40, &[6, 2 * 24], 3.0, DType::F32)];
    let probe = tensor(41, &[6, 24], 1.0, DType::F32);
    let halves = |t: &Tensor| -> Result<(Tensor, Tensor)> { Ok((t.narrow(1, 0, 24)?, t.narrow(1, 24, 24)?)) };
    let fused = autograd(&inputs, |t| {
        let (gate, up) = halves(&t[0])?;
        probed(&swiglu(&gate, &up)?, &probe)
    });
    let expected = autograd(&inputs, |t| {
        let (gate, up) = halves(&t[0])?;
        probed(&reference::swiglu(&gate, &up)?, &probe)
    });
    assert_close("d projection", &fused[0], &expected[0], 1e-5);
}

#[test]
fn linear_cross_entropy_of_bf16_inputs_is_an_f32_loss_close_to_f32() {
    let hidden = tensor(42, &[9, 16], 1.0, DType::F32);
    let weight = tensor(43, &[31, 16], 1.0, DType::F32);
    let t = targets(44, 9, 31);
    let (hidden_bf16, weight_bf16) = (hidden.to_dtype(DType::BF16).unwrap(), weight.to_dtype(DType::BF16).unwrap());
    let loss = linear_cross_entropy(&hidden_bf16, &weight_bf16, &t, 4).unwrap();
    assert_eq!(loss.dtype(), DType::F32);
    let expected = reference_linear_cross_entropy(
        &hidden_bf16.to_dtype(DType::F32).unwrap(),
        &weight_bf16.to_dtype(DType::F32).unwrap(),
        &t,
    );
    assert_close("loss", &loss, &expected.unwrap(), 1e-5);
}

#[test]
fn linear_cross_entropy_gradients_reach_bf16_inputs() {
    let hidden = Var::from_tensor(&tensor(45, &[5, 8], 1.0, DType::BF16)).unwrap();
    let weight = Var::from_tensor(&tensor(46, &[11, 8], 1.0, DType::BF16)).unwrap();
    let t = targets(47, 5, 11);
    let grads = linear_cross_entropy(hidden.as_tensor(), weight.as_tensor(), &t, 2).unwrap().backward().unwrap();
    let d_hidden = grads.get(hidden.as_tensor()).expect("d hidden");
    let d_weight = grads.get(weight.as_tensor()).expect("d weight");
    assert_eq!((d_hidden.dtype(), d_hidden.dims()), (DType::BF16, &[5, 8][..]));
    assert_eq!((d_weight.dtype(), d_weight.dims()), (DType::BF16, &[11, 8][..]));
}
