//! A GCRA rate limiter (governor) on tokio's clock.
//!
//! Shared by dispatch (one limiter per consumer, checked before pulling) and
//! the plugin host (one per connection, checked before each outbound call).
//! Running on tokio's clock means tests can drive it with a paused clock.

use crate::config::RateLimit;
use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter as Gcra};
use std::num::NonZeroU32;
use std::time::Duration;

/// governor's clock reading: time since the limiter was made, on tokio's clock.
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

pub struct RateLimiter {
    gcra: Gcra<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>,
    clock: TokioClock,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> RateLimiter {
        let clock = TokioClock {
            origin: tokio::time::Instant::now(),
        };
        let burst = NonZeroU32::new(limit.burst.max(1)).expect("burst is at least 1");
        let quota = Quota::with_period(limit.period.max(Duration::from_nanos(1)))
            .expect("period is not zero")
            .allow_burst(burst);
        RateLimiter {
            gcra: Gcra::direct_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// Takes a permit now, or says how long until one is free.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        self.gcra.check().map_err(|not_until| {
            let now = self.clock.now();
            not_until.earliest_possible().duration_since(now).into()
        })
    }

    /// Waits for a permit and takes it.
    pub async fn acquire(&self) {
        while let Err(wait) = self.try_acquire() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_permits_after_the_burst() {
        let limiter = RateLimiter::new(RateLimit {
            period: Duration::from_millis(50),
            burst: 3,
        });
        let start = tokio::time::Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.try_acquire(), Ok(()));
        }
        let wait = limiter.try_acquire().unwrap_err();
        assert!(
            wait <= Duration::from_millis(50) && wait > Duration::ZERO,
            "{wait:?}"
        );
        for _ in 0..10 {
            limiter.acquire().await;
        }
        // 3 at once, then 10 more at one per 50 ms.
        assert!(start.elapsed() >= Duration::from_millis(500));
        assert!(start.elapsed() < Duration::from_millis(560));
    }
}
