//! What alerts say: causes, their wording, serialization, thresholds.

use super::*;

#[test]
fn causes_read_as_one_line() {
    let statuses = BTreeMap::from([("503".to_owned(), 12), ("500".to_owned(), 3)]);
    assert_eq!(
        Cause::DownstreamErrors { statuses }.summary(),
        "downstream answered 503 ×12, 500 ×3"
    );
    let reasons = BTreeMap::from([("no_match".to_owned(), 30)]);
    let cause = Cause::SignatureFailures {
        reasons,
        hint: Some("was the signing secret rotated without adding the new one?".to_owned()),
    };
    assert_eq!(
        cause.summary(),
        "signatures refused: no_match ×30 — was the signing secret rotated without adding the new one?"
    );
    assert_eq!(
        Cause::RateLimited {
            answers_429: 4,
            limiter_waits: 0
        }
        .summary(),
        "rate limited: downstream answered 429 ×4"
    );
}

#[test]
fn cause_prefers_what_was_seen_most() {
    let now = ConsumerSample::default();
    let tally = |answers: &[(&str, u64)]| Tally {
        downstream: answers
            .iter()
            .map(|(label, count)| ((*label).to_owned(), *count))
            .collect(),
        failed: answers.iter().map(|(_, count)| *count).sum(),
        ..Tally::default()
    };
    let failures = Rule::DeliveryFailures;
    assert_eq!(
        consumer_cause(failures, &tally(&[("timeout", 5), ("503", 2)]), &now),
        Cause::Timeouts { count: 5 }
    );
    assert_eq!(
        consumer_cause(failures, &tally(&[("unreachable", 5), ("503", 2)]), &now),
        Cause::Unreachable { count: 5 }
    );
    assert_eq!(
        consumer_cause(failures, &tally(&[("429", 9), ("503", 2)]), &now),
        Cause::RateLimited {
            answers_429: 9,
            limiter_waits: 0
        }
    );
    assert!(matches!(
        consumer_cause(
            failures,
            &tally(&[("429", 1), ("503", 2), ("200", 50)]),
            &now
        ),
        Cause::DownstreamErrors { .. }
    ));
    assert_eq!(
        consumer_cause(failures, &tally(&[("200", 50)]), &now),
        Cause::PluginFailures
    );
    let slow = Tally {
        delivered: 100,
        ..Tally::default()
    };
    assert_eq!(
        consumer_cause(Rule::BacklogHigh, &slow, &now),
        Cause::SlowConsumer
    );
    let limited = Tally {
        delivered: 100,
        limiter_waits: 90,
        ..Tally::default()
    };
    assert!(matches!(
        consumer_cause(Rule::BacklogGrowing, &limited, &now),
        Cause::RateLimited {
            answers_429: 0,
            limiter_waits: 90
        }
    ));
    let paused = ConsumerSample {
        paused: true,
        breaker_open: true,
        ..ConsumerSample::default()
    };
    assert_eq!(
        consumer_cause(Rule::BacklogStuck, &slow, &paused),
        Cause::Paused
    );
}

#[test]
fn alerts_serialize_in_snake_case() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    let storm = run(&mut detector, &mut hub, 5 * MINUTE, |_| Plan {
        failure_share: 0.9,
        failure_answer: "503",
        ..Plan::normal(5.0)
    });
    let alert = first_raised(&storm, Rule::DeliveryFailures).expect("raised");
    let json = serde_json::to_value(alert).expect("serializes");
    assert_eq!(json["rule"], "delivery_failures");
    assert_eq!(json["subject"]["kind"], "consumer");
    assert_eq!(json["subject"]["name"], "crm");
    assert_eq!(json["cause"]["kind"], "downstream_errors");
    assert!(json["cause"]["statuses"]["503"].as_u64().is_some());
    let back: Alert = serde_json::from_value(json).expect("deserializes");
    assert_eq!(
        (
            back.id,
            back.rule,
            &back.subject,
            &back.cause,
            &back.message
        ),
        (
            alert.id,
            alert.rule,
            &alert.subject,
            &alert.cause,
            &alert.message
        )
    );

    assert_eq!(
        Subject::Source("stripe".to_owned()).to_string(),
        "source:stripe"
    );
    for rule in Rule::ALL {
        let json = serde_json::to_value(rule).expect("serializes");
        assert_eq!(json, rule.name());
    }
}

#[test]
fn default_config_matches_the_documented_values() {
    let config = AlertThresholds::default();
    assert_eq!(config.learn_for, Duration::from_secs(3600));
    assert_eq!(config.warmup, Duration::from_secs(1800));
    assert_eq!(config.sustain, Duration::from_secs(120));
    assert_eq!(config.clear_after, Duration::from_secs(300));
    assert_eq!(config.silent_after, Duration::from_secs(900));
    assert_eq!(config.slow_plugin_floor, Duration::from_millis(250));
    assert_eq!(config.queue_growth_window, Duration::from_secs(900));
}

#[test]
fn one_dead_letter_raises_from_a_cold_start_when_one_is_news() {
    let (mut detector, mut hub) = start_with(AlertThresholds {
        queue_growth: 1,
        ..AlertThresholds::default()
    });
    let quiet = run(&mut detector, &mut hub, 3 * STEP_MS, |_| Plan::normal(5.0));
    assert!(quiet.is_empty(), "{quiet:#?}");
    let one = run(&mut detector, &mut hub, STEP_MS, |_| Plan {
        dead_letters_per_tick: 1,
        ..Plan::normal(5.0)
    });
    let alert = first_raised(&one, Rule::DeadLetterGrowth).expect("dead_letter_growth raised");
    assert_eq!(alert.value, 1.0);
}

/// Runs `ticks` ticks of normal traffic with the plugin using `cores` of guest CPU.
fn run_with_cpu(detector: &mut Detector, hub: &mut Hub, ticks: u64, cores: f64) -> Vec<Change> {
    let mut changes = Vec::new();
    for _ in 0..ticks {
        hub.consumer.cpu_micros += (cores * STEP_MS as f64 * 1000.0) as u64;
        changes.extend(run(detector, hub, STEP_MS, |_| Plan::normal(5.0)));
    }
    changes
}

#[test]
fn a_plugin_at_its_cpu_quota_raises_cpu_saturated_until_it_eases() {
    let (mut detector, mut hub) = start();
    hub.consumer.cpu_limit = 0.5;
    warm_up(&mut detector, &mut hub);
    let below = run_with_cpu(&mut detector, &mut hub, 30, 0.4);
    assert!(below.is_empty(), "{below:#?}");
    let saturated_from_ms = hub.at_ms;
    let saturated = run_with_cpu(&mut detector, &mut hub, 30, 0.49);
    let alert = first_raised(&saturated, Rule::CpuSaturated).expect("cpu_saturated raised");
    assert_eq!(alert.cause, Cause::PluginCpu);
    assert!(alert.raised_at_ms >= saturated_from_ms + ms(config().sustain));
    assert!(alert.message.contains("0.49 cores"), "{}", alert.message);
    let eased = run_with_cpu(&mut detector, &mut hub, 60, 0.1);
    assert!(was_cleared(&eased, Rule::CpuSaturated), "{eased:#?}");
}

#[test]
fn a_quarantined_plugin_raises_at_once_and_clears_when_resumed() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    hub.consumer.quarantined = true;
    let quarantined = run(&mut detector, &mut hub, STEP_MS, |_| Plan {
        paused: true,
        delivery: Delivery::Stopped,
        ..Plan::normal(5.0)
    });
    let alert = first_raised(&quarantined, Rule::PluginQuarantined).expect("raised at once");
    assert_eq!(alert.cause, Cause::Quarantined);
    assert!(alert.message.contains("quarantined"), "{}", alert.message);
    hub.consumer.quarantined = false;
    let resumed = run(&mut detector, &mut hub, 10 * MINUTE, |_| Plan::normal(5.0));
    assert!(
        was_cleared(&resumed, Rule::PluginQuarantined),
        "{resumed:#?}"
    );
}
