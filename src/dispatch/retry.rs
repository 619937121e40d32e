//! The retry schedule: capped exponential backoff with full jitter.
//!
//! `backon` computes the capped exponential ceiling for an attempt; the delay
//! is then drawn uniformly from `(0, ceiling]` ("full jitter"), which spreads a
//! burst of failures out instead of retrying them in lockstep. A downstream's
//! `Retry-After` raises the delay, never lowers it.

use crate::config::RetryConfig;
use backon::{BackoffBuilder, ExponentialBuilder};
use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct RetrySchedule {
    config: RetryConfig,
}

/// What to do after a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    RetryIn(Duration),
    GiveUp,
}

impl RetrySchedule {
    pub fn new(config: RetryConfig) -> RetrySchedule {
        RetrySchedule { config }
    }

    /// The capped exponential ceiling after delivery number `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.config.first)
            .with_max_delay(self.config.max)
            .with_factor(2.0)
            .without_max_times()
            .build();
        delays
            .nth(attempt.saturating_sub(1) as usize)
            .unwrap_or(self.config.max)
            .min(self.config.max)
    }

    /// Decides the next step after delivery number `attempt` failed.
    pub fn next(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> NextStep {
        if attempt >= self.config.attempts {
            return NextStep::GiveUp;
        }
        let ceiling = self.ceiling(attempt).as_millis().max(1) as u64;
        let jittered = Duration::from_millis(rng.random_range(1..=ceiling));
        // Capped, so a downstream cannot park events for days.
        let floor = retry_after
            .unwrap_or_default()
            .min(self.config.max_retry_after);
        NextStep::RetryIn(jittered.max(floor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn schedule(attempts: u32) -> RetrySchedule {
        RetrySchedule::new(RetryConfig {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
            attempts,
            max_retry_after: Duration::from_secs(3600),
        })
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let s = schedule(25);
        let ceilings: Vec<u64> = (1..=9).map(|a| s.ceiling(a).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn delays_are_full_jitter_under_the_ceiling() {
        let s = schedule(25);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..200)
            .map(|_| match s.next(5, None, &mut rng) {
                NextStep::RetryIn(d) => d,
                NextStep::GiveUp => panic!("attempt 5 of 25 must retry"),
            })
            .collect();
        assert!(
            delays
                .iter()
                .all(|d| *d > Duration::ZERO && *d <= Duration::from_secs(16))
        );
        // Full jitter spreads over the whole range, not just its top.
        assert!(delays.iter().any(|d| *d < Duration::from_secs(4)));
        assert!(delays.iter().any(|d| *d > Duration::from_secs(12)));
    }

    #[test]
    fn gives_up_after_the_last_attempt() {
        let s = schedule(3);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert!(matches!(s.next(2, None, &mut rng), NextStep::RetryIn(_)));
        assert_eq!(s.next(3, None, &mut rng), NextStep::GiveUp);
    }

    #[test]
    fn retry_after_raises_the_delay_up_to_a_cap() {
        let s = schedule(25);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        assert_eq!(
            s.next(1, Some(Duration::from_secs(30)), &mut rng),
            NextStep::RetryIn(Duration::from_secs(30))
        );
        assert_eq!(
            s.next(1, Some(Duration::from_secs(86_400)), &mut rng),
            NextStep::RetryIn(Duration::from_secs(3600))
        );
    }
}
