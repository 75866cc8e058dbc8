//! The fused packed-row attention against the reference (`reference::attention` per sequence
//! with `causal_mask`), against central finite differences in f64, and its own promises:
//! sequences isolated inside a row, the cached variant equal to the packed one, long rows in
//! linear memory.

use candle_core::{DType, Device, Tensor, Var};
use distillery_model::fused::attention::{cached_attention, packed_attention};
use distillery_model::reference::{attention, causal_mask};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Seeded values uniform in `[-1.5, 1.5)`, shape `[len, heads, head_dim]`.
fn random(seed: u64, len: usize, heads: usize, head_dim: usize, dtype: DType) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f64> = (0..len * heads * head_dim).map(|_| rng.gen_range(-1.5..1.5)).collect();
    Tensor::from_vec(values, (len, heads, head_dim), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

/// q, k, v for a row of `len` positions.
fn qkv(
    seed: u64,
    len: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: DType,
) -> (Tensor, Tensor, Tensor) {
    (
        random(seed, len, heads, head_dim, dtype),
        random(seed + 1, len, kv_heads, head_dim, dtype),
        random(seed + 2, len, kv_heads, head_dim, dtype),
    )
}

/// The reference: each sequence on its own, heads first, with an additive causal mask.
fn reference_packed(q: &Tensor, k: &Tensor, v: &Tensor, lengths: &[usize]) -> Tensor {
    let heads_first = |t: &Tensor, start: usize, len: usize| {
        t.narrow(0, start, len).unwrap().transpose(0, 1).unwrap().contiguous().unwrap()
    };
    let mut outputs = Vec::new();
    let mut start = 0;
    for &len in lengths {
        let mask = causal_mask(len, 0, q.dtype(), &Device::Cpu).unwrap();
        let (qs, ks, vs) = (heads_first(q, start, len), heads_first(k, start, len), heads_first(v, start, len));
        let out = attention(&qs, &ks, &vs, Some(&mask)).unwrap();
        outputs.push(out.transpose(0, 1).unwrap());
        start += len;
    }
    Tensor::cat(&outputs, 0).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// Largest `|a - b| / max(1, |b|)`.
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    values(a).iter().zip(values(b)).map(|(x, y)| (x - y).abs() / y.abs().max(1.0)).fold(0.0, f64::max)
}

/// Lengths with single-token sequences and sequences longer than a query and a key block.
const LENGTHS: [usize; 5] = [5, 1, 37, 1, 70];

#[test]
fn forward_matches_reference_with_gqa_and_single_token_sequences() {
    let len = LENGTHS.iter().sum();
    let (q, k, v) = qkv(1, len, 4, 2, 16, DType::F32);
    let fused = packed_attention(&q, &k, &v, &LENGTHS).unwrap();
    assert_eq!(fused.dims(), &[len, 4, 16]);
    let error = relative_error(&fused, &reference_packed(&q, &k, &v, &LENGTHS));
    assert!(error < 1e-5, "fused vs reference: {error}");
}

/// head_dim 36: the kernels' 32-lane and scalar tails.
#[test]
fn forward_matches_reference_without_gqa() {
    let lengths = [33, 64, 2];
    let (q, k, v) = qkv(4, 99, 3, 3, 36, DType::F32);
    let fused = packed_attention(&q, &k, &v, &lengths).unwrap();
    let error = relative_error(&fused, &reference_packed(&q, &k, &v, &lengths));
    assert!(error < 1e-5, "fused vs reference: {error}");
}

/// `sum(out * weights)` differentiated with respect to q, k and v, through `f`.
fn gradients(q: &Tensor, k: &Tensor, v: &Tensor, f: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor) -> [Tensor; 3] {
    let (q, k, v) = (Var::from_tensor(q).unwrap(), Var::from_tensor(k).unwrap(), Var::from_tensor(v).unwrap());
    let out = f(q.as_tensor(), k.as_tensor(), v.as_tensor());
    let (len, heads, head_dim) = out.dims3().unwrap();
    let weights = random(99, len, heads, head_dim, out.dtype());
    let grads = (out * weights).unwrap().sum_all().unwrap().backward().unwrap();
    [&q, &k, &v].map(|x| grads.get(x.as_tensor()).expect("a gradient").clone())
}

/// head_dim 40: the kernels' 32-lane and 8-lane paths.
#[test]
fn gradients_match_reference_autograd() {
    let len = LENGTHS.iter().sum();
    let (q, k, v) = qkv(7, len, 4, 2, 40, DType::F32);
    let fused = gradients(&q, &k, &v, |q, k, v| packed_attention(q, k, v, &LENGTHS).unwrap());
    let reference = gradients(&q, &k, &v, |q, k, v| reference_packed(q, k, v, &LENGTHS));
    for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(fused.iter().zip(&reference)) {
        let error = relative_error(a, b);
        assert!(error < 1e-5, "{name}: fused vs autograd through the reference: {error}");
    }
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    let lengths = [4, 3];
    let (q, k, v) = qkv(11, 7, 4, 2, 4, DType::F64);
    let analytic = gradients(&q, &k, &v, |q, k, v| packed_attention(q, k, v, &lengths).unwrap());
    let weights = random(99, 7, 4, 4, DType::F64);
    let loss = |q: &Tensor, k: &Tensor, v: &Tensor| -> f64 {
        let out = packed_attention(q, k, v, &lengths).unwrap();
        (out * &weights).unwrap().sum_all().unwrap().to_scalar().unwrap()
    };
    let inputs = [&q, &k, &v];
    let eps = 1e-6;
    for (which, analytic) in analytic.iter().enumerate() {
        let base = values(inputs[which]);
        let shape = inputs[which].shape().clone();
        let analytic = values(analytic);
        for i in 0..base.len() {
            let nudged = |delta: f64| {
                let mut x = base.clone();
                x[i] += delta;
                let x = Tensor::from_vec(x, shape.clone(), &Device::Cpu).unwrap();
                let mut args = inputs.map(|t| t.clone());
                args[which] = x;
                loss(&args[0], &args[1], &args[2])
            };
            let numeric = (nudged(eps) - nudged(-eps)) / (2.0 * eps);
            let error = (numeric - analytic[i]).abs();
            assert!(
                error < 1e-6 * numeric.abs().max(1.0),
                "input {which} element {i}: analytic {} numeric {numeric}",
                analytic[i]
            );
        }
    }
}

#[test]
fn a_sequence_inside_a_packed_row_equals_the_sequence_alone() {
    let lengths = [6, 9, 4];
    let (q, k, v) = qkv(21, 19, 4, 2, 8, DType::F32);
    let packed = packed_attention(&q, &k, &v, &lengths).unwrap();
    let alone =
        packed_attention(&q.narrow(0, 6, 9).unwrap(), &k.narrow(0, 6, 9).unwrap(), &v.narrow(0, 6, 9).unwrap(), &[9])
            .unwrap();
    let error = relative_error(&packed.narrow(0, 6, 9).unwrap(), &alone);
    assert!(error == 0.0, "packed vs alone: {error}");
}

#[test]
fn cached_attention_equals_the_last_rows_of_packed_attention() {
    let len = 75;
    let (q, k, v) = qkv(31, len, 4, 2, 16, DType::F32);
    let whole = packed_attention(&q, &k, &v, &[len]).unwrap();
    // A prompt's tail of several queries, then single tokens (one at the very end).
    for past in [0, 3, 40, 74] {
        let fresh = len - past;
        let cached = cached_attention(&q.narrow(0, past, fresh).unwrap(), &k, &v, past).unwrap();
        let error = relative_error(&cached, &whole.narrow(0, past, fresh).unwrap());
        assert!(error < 1e-6, "past {past}: cached vs packed: {error}");
    }
}

#[test]
fn bf16_inputs_are_computed_in_f32_and_returned_in_bf16() {
    let lengths = [10, 6];
    let (q, k, v) = qkv(41, 16, 2, 1, 8, DType::F32);
    let narrow = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
    let out = packed_attention(&narrow(&q), &narrow(&k), &narrow(&v), &lengths).unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    let wide = packed_attention(
        &narrow(&q).to_dtype(DType::F32).unwrap(),
        &narrow(&k).to_dtype(DType::F32).unwrap(),
        &narrow(&v).to_dtype(DType::F32).unwrap(),
        &lengths,
    )
    .unwrap();
    let error = relative_error(&out, &wide);
    assert!(error < 1e-2, "bf16 vs f32: {error}");
}

#[test]
fn mismatched_lengths_are_an_error() {
    let (q, k, v) = qkv(51, 8, 2, 1, 4, DType::F32);
    assert!(packed_attention(&q, &k, &v, &[3, 4]).is_err());
    let (q3, _, _) = qkv(51, 8, 3, 1, 4, DType::F32);
    assert!(packed_attention(&q3, &k, &v, &[8]).is_ok());
    let (q3, k2, v2) = qkv(51, 8, 3, 2, 4, DType::F32);
    assert!(packed_attention(&q3, &k2, &v2, &[8]).is_err());
    assert!(cached_attention(&q.narrow(0, 0, 2).unwrap(), &k, &v, 5).is_err());
}

/// 4,096 positions in one sequence: an `L x L` score matrix would be 64 MiB per head; the
/// fused op needs none, runs forward and backward quickly and stays finite.
#[test]
fn a_long_row_runs_forward_and_backward_in_linear_memory() {
    let len = 4096;
    let (q, k, v) = qkv(61, len, 2, 1, 8, DType::F32);
    let grads = gradients(&q, &k, &v, |q, k, v| {
        let out = packed_attention(q, k, v, &[len]).unwrap();
        assert!(values(&out).iter().all(|x| x.is_finite()));
        out
    });
    for grad in &grads {
        assert!(values(grad).iter().all(|x| x.is_finite()));
    }
}
