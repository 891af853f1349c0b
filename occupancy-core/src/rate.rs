//! A token bucket with the time passed in (no clock inside, so tests drive it exactly): the one
//! both adapters use for a connection's message rate, and the axum adapter for counting
//! protocol violations before a connection is closed.

use std::time::{Duration, Instant};

/// Allows `burst` events at once and `per_second` on average: the constants of a
/// [`TokenBucket`], kept apart from it so that a bucket is only its state (a connection keeps two
/// buckets for its whole life, and their constants are the endpoint's settings).
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    per_second: f64,
    burst: f64,
}

impl Rate {
    /// `per_second` may be fractional (one strike forgiven every 2 s is 0.5); `burst` of at
    /// least 1.
    pub fn new(per_second: f64, burst: u32) -> Self {
        Rate {
            per_second: per_second.max(0.0),
            burst: f64::from(burst.max(1)),
        }
    }

    /// A full bucket at `now`.
    pub fn full(&self, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: self.burst,
            last: now,
        }
    }
}

/// The state of a token bucket; its [`Rate`] is passed in.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Takes one token if there is one. Time going backwards is treated as no time passing.
    pub fn try_take(&mut self, rate: &Rate, now: Instant) -> bool {
        let elapsed = now
            .checked_duration_since(self.last)
            .unwrap_or(Duration::ZERO);
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * rate.per_second).min(rate.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let r = Rate::new(10.0, 5);
        let mut b = r.full(t0);
        for _ in 0..5 {
            assert!(b.try_take(&r, t0));
        }
        assert!(!b.try_take(&r, t0));
        // 100 ms later: one token back.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.try_take(&r, t1));
        assert!(!b.try_take(&r, t1));
        // A long pause refills only up to the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(b.try_take(&r, t2));
        }
        assert!(!b.try_take(&r, t2));
    }

    #[test]
    fn time_going_backwards_does_not_add_tokens() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let r = Rate::new(1.0, 1);
        let mut b = r.full(t0);
        assert!(b.try_take(&r, t0));
        assert!(!b.try_take(&r, t0 - Duration::from_secs(5)));
        assert!(!b.try_take(&r, t0 + Duration::from_millis(500)));
        assert!(b.try_take(&r, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn zero_rate_never_refills() {
        let t0 = Instant::now();
        let r = Rate::new(0.0, 2);
        let mut b = r.full(t0);
        assert!(b.try_take(&r, t0));
        assert!(b.try_take(&r, t0));
        assert!(!b.try_take(&r, t0 + Duration::from_secs(3600)));
    }
}
