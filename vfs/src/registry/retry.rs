//! The one retry policy of the registry client: exponential backoff with jitter until a deadline.
//! Every retrying loop in [`super::client`] (requests, cut-off bodies, resumed downloads) draws on
//! a [`Retry`], so they all give up the same way: before a sleep would cross the deadline.

use std::time::{Duration, Instant};

use rand::Rng as _;

#[derive(Debug, Clone)]
pub struct Retry {
    start: Instant,
    budget: Duration,
    attempt: u32,
    initial: Duration,
    max: Duration,
}

impl Retry {
    /// Retries within `budget` from now; the first delay is `initial`, doubling up to `max`.
    pub fn new(budget: Duration, initial: Duration, max: Duration) -> Retry {
        Retry { start: Instant::now(), budget, attempt: 0, initial, max }
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    pub fn deadline(&self) -> Instant {
        self.start + self.budget
    }

    pub fn remaining(&self) -> Duration {
        self.deadline().saturating_duration_since(Instant::now())
    }

    /// Progress was made (a resumed download received bytes): the deadline counts from now again.
    pub fn progressed(&mut self) {
        self.start = Instant::now();
        self.attempt = 0;
    }

    /// The next delay: `initial * 2^attempt`, capped, times a random factor in [0.5, 1).
    fn delay(&mut self) -> Duration {
        self.attempt += 1;
        let base = self.initial.saturating_mul(1u32 << self.attempt.min(16)).min(self.max);
        base.mul_f64(rand::thread_rng().gen_range(0.5..1.0))
    }

    /// Sleeps before the next attempt (at least `at_least`, e.g. a `Retry-After`) and returns true,
    /// or returns false at once when the sleep would end past the deadline: give up.
    pub async fn pause(&mut self, at_least: Option<Duration>) -> bool {
        let delay = self.delay().max(at_least.unwrap_or_default());
        if Instant::now() + delay >= self.deadline() {
            return false;
        }
        tokio::time::sleep(delay).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backs_off_and_gives_up_before_the_deadline() {
        let t = Instant::now();
        let mut r = Retry::new(Duration::from_millis(300), Duration::from_millis(20), Duration::from_millis(80));
        let mut n = 0;
        while r.pause(None).await {
            n += 1;
        }
        assert!(n >= 3, "retried {n} times");
        assert!(t.elapsed() < Duration::from_millis(300), "gave up at {:?}, past the deadline", t.elapsed());
        let mut r = Retry::new(Duration::from_millis(100), Duration::from_millis(1), Duration::from_millis(1));
        assert!(!r.pause(Some(Duration::from_secs(1))).await, "a Retry-After beyond the deadline ends retrying");
    }
}
