//! The circuit breaker of one consumer: an explicit state machine.
//!
//! closed ──(failure ratio over the window ≥ threshold with ≥ min calls,
//!           or N consecutive failures)──▶ open
//! open ──(after `open_for`)──▶ half-open: at most `half_open_probes` calls
//! half-open ──(every probe succeeded)──▶ closed
//! half-open ──(any probe failed)──▶ open again
//!
//! Only calls that show the downstream is unwell count as failures
//! (timeouts, connection errors, 5xx, 429); see [`CallResult`]. Time is a
//! parameter, so the machine runs on any clock (tests use a paused one).

use std::time::Duration;
use tokio::time::Instant;

pub use crate::config::settings::BreakerConfig;

/// The state, as the admin API and metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// What a finished call says about the downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// The downstream answered (2xx, or a 4xx about this one event).
    Healthy,
    /// Timeout, connection error, 5xx or 429.
    Unwell,
    /// Says nothing about the downstream (the plugin trapped, the call was
    /// cancelled, the event was skipped).
    Neutral,
}

/// May a call start now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Open: ask again at this instant.
    OpenUntil(Instant),
    /// Half-open and every probe slot is taken: ask again after a probe ends.
    ProbesBusy,
}

/// A state change, for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
}

/// Calls per slice of the rolling window.
const SLICES: u32 = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Slice {
    start: Option<Instant>,
    calls: u32,
    failures: u32,
}

#[derive(Debug, Clone)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: State,
    slices: [Slice; SLICES as usize],
    consecutive: u32,
    /// Slices are aligned on this instant (the first call recorded), so
    /// `now` always maps to the same slot within one period.
    origin: Option<Instant>,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            config,
            state: State::Closed,
            slices: [Slice::default(); SLICES as usize],
            consecutive: 0,
            origin: None,
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to start a call. An `Allowed` answer must be followed by exactly
    /// one [`CircuitBreaker::record`].
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        let mut transition = None;
        if let State::Open { until } = self.state {
            if now < until {
                return (Admission::OpenUntil(until), None);
            }
            transition = self.set(State::HalfOpen {
                in_flight: 0,
                succeeded: 0,
            });
        }
        let admission = match &mut self.state {
            State::Closed => Admission::Allowed,
            State::HalfOpen { in_flight, .. } if *in_flight < self.config.half_open_probes => {
                *in_flight += 1;
                Admission::Allowed
            }
            State::HalfOpen { .. } => Admission::ProbesBusy,
            State::Open { until } => Admission::OpenUntil(*until),
        };
        (admission, transition)
    }

    /// Records how an admitted call ended.
    pub fn record(&mut self, now: Instant, result: CallResult) -> Option<Transition> {
        match &mut self.state {
            State::HalfOpen {
                in_flight,
                succeeded,
            } => {
                *in_flight = in_flight.saturating_sub(1);
                match result {
                    CallResult::Unwell => self.trip(now),
                    CallResult::Healthy => {
                        *succeeded += 1;
                        if *succeeded >= self.config.half_open_probes {
                            self.reset_window();
                            self.set(State::Closed)
                        } else {
                            None
                        }
                    }
                    CallResult::Neutral => None,
                }
            }
            // A call admitted before the breaker opened finishes late: it
            // neither extends nor shortens the open period.
            State::Open { .. } => None,
            State::Closed => {
                if result == CallResult::Neutral {
                    return None;
                }
                let failed = result == CallResult::Unwell;
                let slice = self.slice(now);
                slice.calls += 1;
                slice.failures += u32::from(failed);
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                let (calls, failures) = self.totals(now);
                let ratio_trips = calls >= self.config.min_calls
                    && f64::from(failures) >= self.config.failure_ratio * f64::from(calls);
                let streak_trips = self.config.consecutive_failures > 0
                    && self.consecutive >= self.config.consecutive_failures;
                if failed && (ratio_trips || streak_trips) {
                    self.trip(now)
                } else {
                    None
                }
            }
        }
    }

    fn trip(&mut self, now: Instant) -> Option<Transition> {
        self.reset_window();
        self.set(State::Open {
            until: now + self.config.open_for,
        })
    }

    fn set(&mut self, state: State) -> Option<Transition> {
        let from = self.state();
        self.state = state;
        let to = self.state();
        (from != to).then_some(Transition { from, to })
    }

    fn reset_window(&mut self) {
        self.slices = [Slice::default(); SLICES as usize];
        self.consecutive = 0;
    }

    fn slice_len(&self) -> Duration {
        (self.config.window / SLICES).max(Duration::from_millis(1))
    }

    /// The slice for `now`, cleared if it last held an older period.
    fn slice(&mut self, now: Instant) -> &mut Slice {
        let len = self.slice_len();
        let origin = *self.origin.get_or_insert(now);
        let ticks = now.duration_since(origin).as_nanos() / len.as_nanos();
        let index = (ticks % u128::from(SLICES)) as usize;
        let start = origin + len * (ticks as u32);
        let slice = &mut self.slices[index];
        if slice.start != Some(start) {
            *slice = Slice {
                start: Some(start),
                calls: 0,
                failures: 0,
            };
        }
        slice
    }

    fn totals(&self, now: Instant) -> (u32, u32) {
        let oldest = now.checked_sub(self.config.window);
        self.slices
            .iter()
            .filter(|s| {
                s.start
                    .is_some_and(|start| oldest.is_none_or(|o| start + self.slice_len() > o))
            })
            .fold((0, 0), |(c, f), s| (c + s.calls, f + s.failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLICE: Duration = Duration::from_secs(1);

    fn config() -> BreakerConfig {
        BreakerConfig {
            failure_ratio: 0.5,
            min_calls: 4,
            window: SLICE * SLICES,
            consecutive_failures: 0,
            open_for: Duration::from_secs(15),
            half_open_probes: 2,
        }
    }

    fn call(b: &mut CircuitBreaker, now: Instant, result: CallResult) -> Option<Transition> {
        assert_eq!(b.admit(now).0, Admission::Allowed);
        b.record(now, result)
    }

    #[test]
    fn stays_closed_below_min_calls_then_opens_on_the_ratio() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config());
        assert_eq!(call(&mut b, t0, CallResult::Unwell), None);
        assert_eq!(call(&mut b, t0, CallResult::Unwell), None);
        assert_eq!(call(&mut b, t0, CallResult::Healthy), None);
        assert_eq!(b.state(), BreakerState::Closed, "3 calls < min 4");
        let opened = call(&mut b, t0, CallResult::Unwell);
        assert_eq!(
            opened,
            Some(Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open
            })
        );
        assert_eq!(b.admit(t0).0, Admission::OpenUntil(t0 + config().open_for));
    }

    #[test]
    fn healthy_and_neutral_calls_never_open_it() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config());
        for _ in 0..100 {
            call(&mut b, t0, CallResult::Healthy);
            call(&mut b, t0, CallResult::Neutral);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn consecutive_failures_open_it_without_the_ratio() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(BreakerConfig {
            consecutive_failures: 3,
            min_calls: 1000,
            ..config()
        });
        call(&mut b, t0, CallResult::Unwell);
        call(&mut b, t0, CallResult::Unwell);
        call(&mut b, t0, CallResult::Healthy);
        call(&mut b, t0, CallResult::Unwell);
        call(&mut b, t0, CallResult::Unwell);
        assert_eq!(b.state(), BreakerState::Closed, "the streak was broken");
        call(&mut b, t0, CallResult::Unwell);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config());
        for _ in 0..3 {
            call(&mut b, t0, CallResult::Unwell);
        }
        let later = t0 + config().window + SLICE;
        call(&mut b, later, CallResult::Unwell);
        assert_eq!(b.state(), BreakerState::Closed, "only 1 call in the window");
    }

    #[test]
    fn half_open_allows_a_bounded_number_of_probes_and_closes_when_they_succeed() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config());
        for _ in 0..4 {
            call(&mut b, t0, CallResult::Unwell);
        }
        let reopen = t0 + config().open_for;
        assert_eq!(b.admit(reopen - SLICE).0, Admission::OpenUntil(reopen));
        let (first, transition) = b.admit(reopen);
        assert_eq!(first, Admission::Allowed);
        assert_eq!(transition.unwrap().to, BreakerState::HalfOpen);
        assert_eq!(b.admit(reopen).0, Admission::Allowed);
        assert_eq!(b.admit(reopen).0, Admission::ProbesBusy, "2 probes at most");
        assert_eq!(b.record(reopen, CallResult::Healthy), None);
        assert_eq!(b.admit(reopen).0, Admission::Allowed, "a slot freed up");
        assert_eq!(b.record(reopen, CallResult::Neutral), None);
        let closed = b.record(reopen, CallResult::Healthy).unwrap();
        assert_eq!(closed.to, BreakerState::Closed);
        // A fresh window: old failures do not count against it.
        call(&mut b, reopen, CallResult::Unwell);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_opens_it_again_for_a_full_period() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config());
        for _ in 0..4 {
            call(&mut b, t0, CallResult::Unwell);
        }
        let probe_at = t0 + config().open_for + SLICE;
        assert_eq!(b.admit(probe_at).0, Admission::Allowed);
        let reopened = b.record(probe_at, CallResult::Unwell).unwrap();
        assert_eq!(reopened.to, BreakerState::Open);
        assert_eq!(
            b.admit(probe_at).0,
            Admission::OpenUntil(probe_at + config().open_for)
        );
    }

    /// A model of the specification, without slices: every call is kept with
    /// its time. Time advances in whole slices, where both must agree.
    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Advance(u32),
            Call(CallResult),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0u32..20).prop_map(Op::Advance),
                prop_oneof![
                    Just(CallResult::Healthy),
                    Just(CallResult::Unwell),
                    Just(CallResult::Neutral)
                ]
                .prop_map(Op::Call),
            ]
        }

        enum Model {
            Closed {
                calls: Vec<(Instant, bool)>,
                streak: u32,
            },
            Open {
                until: Instant,
            },
            HalfOpen {
                succeeded: u32,
            },
        }

        proptest! {
            #[test]
            fn breaker_matches_the_model(ops in proptest::collection::vec(op(), 1..200), streak_limit in 0u32..5) {
                let cfg = BreakerConfig { consecutive_failures: streak_limit, ..config() };
                let mut breaker = CircuitBreaker::new(cfg);
                let mut model = Model::Closed { calls: Vec::new(), streak: 0 };
                let mut now = Instant::now();
                for op in ops {
                    match op {
                        Op::Advance(slices) => now += SLICE * slices,
                        Op::Call(result) => {
                            if let Model::Open { until } = model
                                && now >= until
                            {
                                model = Model::HalfOpen { succeeded: 0 };
                            }
                            let (admission, _) = breaker.admit(now);
                            match &mut model {
                                Model::Open { until } => {
                                    prop_assert_eq!(admission, Admission::OpenUntil(*until));
                                    continue;
                                }
                                _ => prop_assert_eq!(admission, Admission::Allowed),
                            }
                            breaker.record(now, result);
                            model = match model {
                                Model::Closed { mut calls, streak } => {
                                    if result == CallResult::Neutral {
                                        Model::Closed { calls, streak }
                                    } else {
                                        let failed = result == CallResult::Unwell;
                                        calls.push((now, failed));
                                        calls.retain(|(t, _)| *t + cfg.window > now);
                                        let streak = if failed { streak + 1 } else { 0 };
                                        let failures = calls.iter().filter(|(_, f)| *f).count() as f64;
                                        let ratio = calls.len() as u32 >= cfg.min_calls
                                            && failures >= cfg.failure_ratio * calls.len() as f64;
                                        let streaked = streak_limit > 0 && streak >= streak_limit;
                                        if failed && (ratio || streaked) {
                                            Model::Open { until: now + cfg.open_for }
                                        } else {
                                            Model::Closed { calls, streak }
                                        }
                                    }
                                }
                                Model::HalfOpen { succeeded } => match result {
                                    CallResult::Unwell => Model::Open { until: now + cfg.open_for },
                                    CallResult::Healthy if succeeded + 1 >= cfg.half_open_probes => {
                                        Model::Closed { calls: Vec::new(), streak: 0 }
                                    }
                                    CallResult::Healthy => Model::HalfOpen { succeeded: succeeded + 1 },
                                    CallResult::Neutral => Model::HalfOpen { succeeded },
                                },
                                Model::Open { .. } => unreachable!(),
                            };
                            let expected = match model {
                                Model::Closed { .. } => BreakerState::Closed,
                                Model::Open { .. } => BreakerState::Open,
                                Model::HalfOpen { .. } => BreakerState::HalfOpen,
                            };
                            prop_assert_eq!(breaker.state(), expected);
                        }
                    }
                }
            }
        }
    }
}
