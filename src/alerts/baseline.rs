//! What "normal" looks like for one measure: an exponentially weighted mean and spread, learned
//! overall and per hour of day (utc), so a busy afternoon or a nightly batch is not news.

use std::time::Duration;

/// How many times slower the overall baseline learns a value the rules call anomalous: a storm
/// of a few hours must not become the new normal, yet a lasting change still sinks in.
const ANOMALY_SLOWDOWN: u32 = 10;

/// An hour bucket learns only during its hour, one hour a day, so a memory of three such hours
/// averages that hour across about three days.
const HOUR_BUCKET_MEMORY: Duration = Duration::from_secs(3 * 3600);

/// An hour bucket speaks for its hour once it has samples from this many different days; one odd
/// day must not define what the hour looks like.
const HOUR_BUCKET_DAYS: u32 = 3;

const MS_PER_HOUR: u64 = 3_600_000;
const MS_PER_DAY: u64 = 24 * MS_PER_HOUR;

/// Exponentially weighted mean and variance over irregular time steps.
///
/// Each value weighs `1 - exp(-step / time_constant)`, so a sample that stands for a longer step
/// counts for more and the memory is a duration, not a number of samples (Finch, "Incremental
/// calculation of weighted mean and variance", 2009).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ewma {
    mean: f64,
    variance: f64,
    seen: Duration,
    samples: u64,
}

impl Ewma {
    pub fn new() -> Ewma {
        Ewma::default()
    }

    /// Learns `value`, which stands for the `step` of time since the previous one.
    pub fn observe(&mut self, value: f64, step: Duration, time_constant: Duration) {
        // one nan would poison the mean forever
        if !value.is_finite() {
            return;
        }
        self.seen = self.seen.saturating_add(step);
        self.samples = self.samples.saturating_add(1);
        if self.samples == 1 {
            self.mean = value;
            self.variance = 0.0;
            return;
        }
        let weight = step_weight(step, time_constant);
        let difference = value - self.mean;
        let increment = weight * difference;
        self.mean += increment;
        self.variance = (1.0 - weight) * (self.variance + difference * increment);
    }

    /// The weighted mean; 0 before the first value.
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// The weighted standard deviation; 0 before the second value.
    pub fn std_dev(&self) -> f64 {
        self.variance.max(0.0).sqrt()
    }

    /// Total time the learned values stood for.
    pub fn seen(&self) -> Duration {
        self.seen
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }
}

fn step_weight(step: Duration, time_constant: Duration) -> f64 {
    if time_constant.is_zero() {
        return 1.0;
    }
    1.0 - (-step.as_secs_f64() / time_constant.as_secs_f64()).exp()
}

/// The mean and spread a reading is judged against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expected {
    pub mean: f64,
    pub std_dev: f64,
}

impl Expected {
    fn of(ewma: &Ewma) -> Expected {
        Expected {
            mean: ewma.mean(),
            std_dev: ewma.std_dev(),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct HourBucket {
    ewma: Ewma,
    days_seen: u32,
    last_day: Option<u64>,
}

/// One overall [`Ewma`] plus one per hour of day (utc).
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    overall: Ewma,
    hours: [HourBucket; 24],
}

impl Baseline {
    pub fn new() -> Baseline {
        Baseline::default()
    }

    /// Learns `value` seen at `at_ms`, standing for `step` of time.
    ///
    /// An `anomalous` value still reaches its hour bucket at full speed, so something that recurs
    /// at the same hour every day (a nightly batch) becomes normal for that hour only.
    pub fn observe(
        &mut self,
        value: f64,
        at_ms: u64,
        step: Duration,
        learn_for: Duration,
        anomalous: bool,
    ) {
        let overall_memory = if anomalous {
            learn_for
                .checked_mul(ANOMALY_SLOWDOWN)
                .unwrap_or(Duration::MAX)
        } else {
            learn_for
        };
        self.overall.observe(value, step, overall_memory);

        let bucket = &mut self.hours[hour_of_day(at_ms)];
        bucket.ewma.observe(value, step, HOUR_BUCKET_MEMORY);
        let day = at_ms / MS_PER_DAY;
        if bucket.last_day != Some(day) {
            bucket.last_day = Some(day);
            bucket.days_seen = bucket.days_seen.saturating_add(1);
        }
    }

    /// What to expect at `at_ms`: the hour's own baseline once it has seen enough days, else the
    /// overall one once it has seen `warmup`, else nothing (too early to judge).
    pub fn expected(&self, at_ms: u64, warmup: Duration) -> Option<Expected> {
        let bucket = &self.hours[hour_of_day(at_ms)];
        if bucket.days_seen >= HOUR_BUCKET_DAYS {
            return Some(Expected::of(&bucket.ewma));
        }
        if self.overall.samples() > 0 && self.overall.seen() >= warmup {
            return Some(Expected::of(&self.overall));
        }
        None
    }

    pub fn overall(&self) -> &Ewma {
        &self.overall
    }
}

fn hour_of_day(at_ms: u64) -> usize {
    // always below 24, so the cast cannot truncate
    ((at_ms / MS_PER_HOUR) % 24) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_secs(10);
    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn ewma_settles_on_a_constant() {
        let mut ewma = Ewma::new();
        for _ in 0..1000 {
            ewma.observe(7.0, TICK, HOUR);
        }
        assert_eq!(ewma.mean(), 7.0);
        assert_eq!(ewma.std_dev(), 0.0);
        assert_eq!(ewma.samples(), 1000);
        assert_eq!(ewma.seen(), TICK * 1000);
    }

    #[test]
    fn ewma_spread_matches_alternating_values() {
        let mut ewma = Ewma::new();
        for index in 0..10_000 {
            let value = if index % 2 == 0 { 4.0 } else { 6.0 };
            ewma.observe(value, TICK, HOUR);
        }
        assert!((ewma.mean() - 5.0).abs() < 0.01, "mean {}", ewma.mean());
        assert!(
            (ewma.std_dev() - 1.0).abs() < 0.01,
            "std dev {}",
            ewma.std_dev()
        );
    }

    #[test]
    fn ewma_weighs_a_longer_step_more() {
        let mut short = Ewma::new();
        let mut long = Ewma::new();
        for ewma in [&mut short, &mut long] {
            ewma.observe(0.0, TICK, HOUR);
        }
        short.observe(100.0, TICK, HOUR);
        long.observe(100.0, HOUR, HOUR);
        assert!(short.mean() < 1.0, "short step moved to {}", short.mean());
        // one time constant covers 1 - 1/e of the way
        assert!(
            (long.mean() - 63.2).abs() < 0.1,
            "long step moved to {}",
            long.mean()
        );
    }

    #[test]
    fn ewma_ignores_values_that_are_not_numbers() {
        let mut ewma = Ewma::new();
        ewma.observe(3.0, TICK, HOUR);
        ewma.observe(f64::NAN, TICK, HOUR);
        ewma.observe(f64::INFINITY, TICK, HOUR);
        assert_eq!(ewma.mean(), 3.0);
        assert_eq!(ewma.samples(), 1);
    }

    #[test]
    fn baseline_is_silent_until_warmed_up() {
        let mut baseline = Baseline::new();
        let warmup = Duration::from_secs(1800);
        let mut at_ms = 0;
        for _ in 0..179 {
            at_ms += 10_000;
            baseline.observe(5.0, at_ms, TICK, HOUR, false);
        }
        assert_eq!(baseline.expected(at_ms, warmup), None);
        at_ms += 10_000;
        baseline.observe(5.0, at_ms, TICK, HOUR, false);
        let expected = baseline.expected(at_ms, warmup).map(|e| e.mean);
        assert_eq!(expected, Some(5.0));
    }

    #[test]
    fn anomalous_values_move_the_overall_baseline_slowly() {
        let mut calm = Baseline::new();
        let mut wary = Baseline::new();
        for baseline in [&mut calm, &mut wary] {
            baseline.observe(1.0, 10_000, TICK, HOUR, false);
        }
        calm.observe(100.0, 3_610_000, HOUR, HOUR, false);
        wary.observe(100.0, 3_610_000, HOUR, HOUR, true);
        let calm_mean = calm.overall().mean();
        let wary_mean = wary.overall().mean();
        assert!(calm_mean > 60.0, "calm mean {calm_mean}");
        assert!(wary_mean < 11.0, "wary mean {wary_mean}");
    }

    #[test]
    fn hour_bucket_takes_over_after_three_days() {
        let mut baseline = Baseline::new();
        let warmup = Duration::from_secs(1800);
        let two_am = 2 * 3_600_000;
        // quiet all day, busy at 02:00
        let mut at_ms = 0;
        for _day in 0..3 {
            for _tick in 0..8640 {
                at_ms += 10_000;
                let value = if hour_of_day(at_ms) == 2 { 20.0 } else { 2.0 };
                baseline.observe(value, at_ms, TICK, HOUR, value > 10.0);
            }
        }
        let night = baseline.expected(3 * MS_PER_DAY + two_am, warmup);
        let afternoon = baseline.expected(3 * MS_PER_DAY + 14 * MS_PER_HOUR, warmup);
        let night_mean = night.map_or(0.0, |e| e.mean);
        let afternoon_mean = afternoon.map_or(0.0, |e| e.mean);
        assert!((night_mean - 20.0).abs() < 0.5, "02:00 mean {night_mean}");
        assert!(
            (afternoon_mean - 2.0).abs() < 0.5,
            "14:00 mean {afternoon_mean}"
        );
    }

    #[test]
    fn hour_bucket_is_not_trusted_after_two_days() {
        let mut baseline = Baseline::new();
        let warmup = Duration::from_secs(1800);
        let mut at_ms = 0;
        for _tick in 0..(2 * 8640) {
            at_ms += 10_000;
            let value = if hour_of_day(at_ms) == 2 { 20.0 } else { 2.0 };
            baseline.observe(value, at_ms, TICK, HOUR, value > 10.0);
        }
        let night = baseline.expected(2 * MS_PER_DAY + 2 * MS_PER_HOUR, warmup);
        // the overall baseline, which mostly saw quiet hours
        let night_mean = night.map_or(f64::NAN, |e| e.mean);
        assert!(night_mean < 5.0, "02:00 mean {night_mean}");
    }
}
