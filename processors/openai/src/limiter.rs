//! Adaptive concurrency (AIMD, as in TCP congestion control): the number of requests allowed
//! in flight grows by one per window of successful requests answered within the latency
//! target, and halves when the server says it is overloaded (429, 503) or answers too slowly.
//! One replica thus finds the level a vLLM server sustains instead of a fixed guess.

use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub struct AdaptiveLimit {
    state: Mutex<State>,
    freed: Notify,
    min: f64,
    max: f64,
    latency_target: Duration,
    name: String,
}

struct State {
    limit: f64,
    in_flight: usize,
    /// Decreases within this window after one count as one (the requests already in flight
    /// saw the same overload).
    last_decrease: Option<Instant>,
}

/// One request's slot; dropping it frees the slot.
pub struct Slot<'a> {
    limit: &'a AdaptiveLimit,
}

impl AdaptiveLimit {
    pub fn new(name: &str, initial: usize, min: usize, max: usize, latency_target: Duration) -> AdaptiveLimit {
        let (min, max) = (min.max(1) as f64, max.max(min.max(1)) as f64);
        AdaptiveLimit {
            state: Mutex::new(State { limit: (initial as f64).clamp(min, max), in_flight: 0, last_decrease: None }),
            freed: Notify::new(),
            min,
            max,
            latency_target,
            name: name.to_string(),
        }
    }

    /// Waits for a free slot.
    pub async fn acquire(&self) -> Slot<'_> {
        loop {
            let notified = self.freed.notified();
            {
                let mut state = self.state.lock().unwrap();
                if (state.in_flight as f64) < state.limit.floor() {
                    state.in_flight += 1;
                    return Slot { limit: self };
                }
            }
            notified.await;
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.state.lock().unwrap().limit.floor() as usize
    }

    fn adjust(&self, change: impl FnOnce(&mut State, f64, f64)) {
        let limit = {
            let mut state = self.state.lock().unwrap();
            change(&mut state, self.min, self.max);
            state.limit
        };
        metrics::gauge!("distillery_llm_concurrency_limit", "client" => self.name.clone()).set(limit.floor());
        self.freed.notify_waiters();
    }
}

impl Slot<'_> {
    /// The request was answered; `latency` decides between growing and shrinking.
    pub fn succeeded(&self, latency: Duration) {
        let target = self.limit.latency_target;
        if latency > target {
            self.overloaded();
            return;
        }
        self.limit.adjust(|state, _, max| state.limit = (state.limit + 1.0 / state.limit).min(max));
    }

    /// The server said it is overloaded (429, 503) or took too long.
    pub fn overloaded(&self) {
        self.limit.adjust(|state, min, _| {
            let now = Instant::now();
            if state.last_decrease.is_some_and(|t| now.duration_since(t) < Duration::from_millis(200)) {
                return;
            }
            state.last_decrease = Some(now);
            state.limit = (state.limit / 2.0).max(min);
        });
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.limit.state.lock().unwrap().in_flight -= 1;
        self.limit.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn grows_on_fast_answers_and_halves_on_overload() {
        let limit = AdaptiveLimit::new("t", 4, 2, 64, Duration::from_secs(1));
        for _ in 0..40 {
            limit.acquire().await.succeeded(Duration::from_millis(5));
        }
        let grown = limit.limit();
        assert!(grown > 4, "grew to {grown}");
        limit.acquire().await.overloaded();
        assert_eq!(limit.limit(), grown / 2);
        limit.acquire().await.overloaded();
        assert_eq!(limit.limit(), grown / 2, "a second overload right after counts once");
        limit.acquire().await.succeeded(Duration::from_secs(5));
        assert_eq!(limit.limit(), grown / 2, "a slow answer is an overload, still within the window");
    }

    #[tokio::test]
    async fn never_more_in_flight_than_the_limit() {
        let limit = std::sync::Arc::new(AdaptiveLimit::new("t", 3, 1, 3, Duration::from_secs(1)));
        let a = limit.acquire().await;
        let _b = limit.acquire().await;
        let _c = limit.acquire().await;
        let waiting = {
            let limit = limit.clone();
            tokio::spawn(async move {
                let _d = limit.acquire().await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a fourth request waits");
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap();
    }
}
