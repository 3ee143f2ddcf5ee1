//! The one rate limiter: a token bucket that refills continuously at `rate` tokens per
//! second up to `burst`. Used per connection (commands, publications) and per node (new
//! connections).

use tokio::time::Instant;

/// A token bucket. A rate of 0 means unlimited.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens (at least one) refilled at `rate` per second.
    pub fn new(rate: f64, burst: f64) -> TokenBucket {
        let burst = burst.max(1.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Whether the bucket limits anything.
    pub fn is_unlimited(&self) -> bool {
        self.rate <= 0.0
    }

    /// Takes one token; `false` when there is none (the action is over the rate).
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    fn try_take_at(&mut self, now: Instant) -> bool {
        if self.is_unlimited() {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
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
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut b = TokenBucket::new(10.0, 3.0);
        let t0 = b.last;
        assert!(b.try_take_at(t0) && b.try_take_at(t0) && b.try_take_at(t0));
        assert!(!b.try_take_at(t0), "the burst is spent");
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.try_take_at(t1), "one token per 100 ms");
        assert!(!b.try_take_at(t1));
        let t2 = t1 + Duration::from_secs(10);
        let taken = (0..10).filter(|_| b.try_take_at(t2)).count();
        assert_eq!(taken, 3, "never more than the burst");
        let mut unlimited = TokenBucket::new(0.0, 0.0);
        assert!((0..10_000).all(|_| unlimited.try_take()));
    }
}
