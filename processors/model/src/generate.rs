//! Sampling from a student in process (the evaluator's in-process backend): KV cache,
//! temperature and nucleus (top-p) sampling from a seeded generator, stop at an end-of-sequence
//! token or after `max_tokens`.

use crate::model::{KvCache, Student};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 picks the most likely token (greedy).
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// Generated ids, the end-of-sequence token excluded.
    pub tokens: Vec<u32>,
    /// Stopped by `max_tokens`, not by an end-of-sequence token.
    pub truncated: bool,
}

pub fn sample(student: &Student, prompt: &[u32], stop: &[u32], sampling: &Sampling) -> anyhow::Result<Sampled> {
    sample_until(student, prompt, stop, sampling, &|| false)
}

/// [`sample`], giving up with an error as soon as `cancelled` says so (checked every token).
pub fn sample_until(
    student: &Student,
    prompt: &[u32],
    stop: &[u32],
    sampling: &Sampling,
    cancelled: &dyn Fn() -> bool,
) -> anyhow::Result<Sampled> {
    anyhow::ensure!(!prompt.is_empty(), "an empty prompt");
    let mut rng = StdRng::seed_from_u64(sampling.seed);
    let mut cache = KvCache::default();
    let mut logits = student.forward_cached(prompt, &mut cache)?;
    let mut tokens = Vec::new();
    while tokens.len() < sampling.max_tokens {
        anyhow::ensure!(!cancelled(), "generation cancelled");
        let next = pick(&logits.to_vec1::<f32>()?, sampling, &mut rng);
        if stop.contains(&next) {
            return Ok(Sampled { tokens, truncated: false });
        }
        tokens.push(next);
        if tokens.len() == sampling.max_tokens {
            break;
        }
        logits = student.forward_cached(&[next], &mut cache)?;
    }
    Ok(Sampled { tokens, truncated: true })
}

/// The next token from logits: greedy at temperature 0, else softmax(logits / T) cut to the
/// smallest set of most likely tokens whose mass reaches `top_p`.
fn pick(logits: &[f32], sampling: &Sampling, rng: &mut StdRng) -> u32 {
    let argmax = || {
        logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &l)| if l > best.1 { (i, l) } else { best }).0
            as u32
    };
    if sampling.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut weighted: Vec<(u32, f64)> =
        logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l as f64 - max) / sampling.temperature).exp())).collect();
    let total: f64 = weighted.iter().map(|(_, w)| w).sum();
    // Descending probability; ties by id so the order never depends on the sort.
    weighted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0.0;
    let mut cut = weighted.len();
    for (i, (_, w)) in weighted.iter().enumerate() {
        kept += w / total;
        if kept >= sampling.top_p {
            cut = i + 1;
            break;
        }
    }
    let nucleus = &weighted[..cut];
    let mass: f64 = nucleus.iter().map(|(_, w)| w).sum();
    let mut draw = rng.gen::<f64>() * mass;
    for &(id, w) in nucleus {
        if draw < w {
            return id;
        }
        draw -= w;
    }
    nucleus.last().map(|&(id, _)| id).unwrap_or_else(argmax)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use candle_core::{DType, Device};

    fn tiny() -> Student {
        Student::random(ModelConfig::tiny(24), 1, DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn stops_at_max_tokens_and_is_reproducible() {
        let student = tiny();
        let sampling = Sampling { temperature: 0.6, top_p: 0.95, max_tokens: 7, seed: 4 };
        let out = sample(&student, &[1, 2, 3], &[], &sampling).unwrap();
        assert_eq!(out.tokens.len(), 7);
        assert!(out.truncated);
        assert!(out.tokens.iter().all(|&t| t < 24));
        assert_eq!(sample(&student, &[1, 2, 3], &[], &sampling).unwrap(), out, "same seed, same tokens");
    }

    #[test]
    fn stops_at_an_end_of_sequence_token() {
        let student = tiny();
        let greedy = Sampling { temperature: 0.0, top_p: 1.0, max_tokens: 5, seed: 0 };
        let free = sample(&student, &[5, 6], &[], &greedy).unwrap();
        // Make the third greedy token the stop token: generation ends before it.
        let stop = free.tokens[2];
        let first_stop = free.tokens.iter().position(|&t| t == stop).unwrap();
        let stopped = sample(&student, &[5, 6], &[stop], &greedy).unwrap();
        assert_eq!(stopped, Sampled { tokens: free.tokens[..first_stop].to_vec(), truncated: false });
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let mut rng = StdRng::seed_from_u64(0);
        let sampling = Sampling { temperature: 1.0, top_p: 0.5, max_tokens: 1, seed: 0 };
        // Token 2 holds ~88% of the mass: with top_p 0.5 it is the whole nucleus.
        let logits = [0.0f32, 0.0, 3.0, 0.0];
        assert!((0..200).all(|_| pick(&logits, &sampling, &mut rng) == 2));
    }
}
