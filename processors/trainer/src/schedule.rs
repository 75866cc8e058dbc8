//! The learning-rate schedule of the paper: linear warmup over `warmup_ratio` of the steps from
//! `warmup_start_lr` to the peak, then cosine decay to `min_lr` at the last step.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub peak_lr: f64,
    pub warmup_start_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// `warmup_steps = ceil(total_steps * warmup_ratio)` (3,000 × 0.03 = 90).
    pub fn new(peak_lr: f64, warmup_start_lr: f64, min_lr: f64, warmup_ratio: f64, total_steps: u64) -> LrSchedule {
        let warmup_steps = (total_steps as f64 * warmup_ratio).ceil() as u64;
        LrSchedule { peak_lr, warmup_start_lr, min_lr, warmup_steps, total_steps }
    }

    /// Learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            let progress = step as f64 / self.warmup_steps as f64;
            return self.warmup_start_lr + (self.peak_lr - self.warmup_start_lr) * progress;
        }
        let decay_steps = self.total_steps.saturating_sub(1).saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's numbers: 3,000 steps, warmup 3% from 5e-7 to 5e-6, cosine to 0.
    #[test]
    fn paper_schedule_at_its_landmarks() {
        let schedule = LrSchedule::new(5e-6, 5e-7, 0.0, 0.03, 3000);
        assert_eq!(schedule.warmup_steps, 90);
        assert_eq!(schedule.lr(0), 5e-7);
        assert!((schedule.lr(45) - 2.75e-6).abs() < 1e-18, "halfway through warmup");
        assert_eq!(schedule.lr(90), 5e-6, "end of warmup is the peak");
        let mid = 90 + (2999 - 90) / 2;
        assert!((schedule.lr(mid) - 2.5e-6).abs() < 5e-9, "half the peak halfway through the decay");
        assert!(schedule.lr(2999).abs() < 1e-20, "the last step reaches min_lr");
        assert!((1..3000).all(|s| s <= 90 || schedule.lr(s) <= schedule.lr(s - 1)), "monotone decay");
    }
}
