//! Days at a simulated hub: what is raised, when, and when it clears.

use super::*;

#[test]
fn a_normal_day_raises_nothing() {
    let (mut detector, mut hub) = start();
    let changes = run(&mut detector, &mut hub, 2 * DAY + 12 * HOUR, |at_ms| {
        Plan::normal(daily_rhythm(at_ms))
    });
    assert!(changes.is_empty(), "raised {changes:#?}");
    assert!(detector.active().is_empty());
}

#[test]
fn a_5xx_storm_raises_delivery_failures_and_clears_after_recovery() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);

    let storm_from_ms = hub.at_ms;
    let storm = run(&mut detector, &mut hub, 10 * MINUTE, |_| Plan {
        failure_share: 0.9,
        failure_answer: "503",
        ..Plan::normal(5.0)
    });
    let alert = first_raised(&storm, Rule::DeliveryFailures).expect("delivery_failures raised");
    let sustain = ms(config().sustain);
    assert!(alert.raised_at_ms >= storm_from_ms + sustain, "{alert:?}");
    assert!(
        alert.raised_at_ms <= storm_from_ms + sustain + STEP_MS,
        "{alert:?}"
    );
    assert_eq!(alert.started_at_ms, storm_from_ms + STEP_MS);
    assert_eq!(alert.subject, Subject::Consumer("crm".to_owned()));
    assert_eq!(alert.unit, "ratio");
    assert!(alert.value > 0.7 && alert.threshold >= 0.2, "{alert:?}");
    let Cause::DownstreamErrors { statuses } = &alert.cause else {
        panic!("cause {:?}", alert.cause);
    };
    assert!(statuses.get("503").is_some_and(|count| *count > 0));
    assert!(
        alert
            .message
            .starts_with("consumer `crm`: delivery failure ratio"),
        "{}",
        alert.message
    );
    assert!(alert.message.contains("downstream answered 503 ×"));
    assert_eq!(alert.message, alert.message.to_lowercase());
    assert!(!was_cleared(&storm, Rule::DeliveryFailures));

    let active = detector.active();
    let still = active
        .iter()
        .find(|alert| alert.rule == Rule::DeliveryFailures)
        .expect("still active");
    let Cause::DownstreamErrors { statuses } = &still.cause else {
        panic!("cause {:?}", still.cause);
    };
    // the cause keeps counting while the alert is active
    assert!(statuses["503"] > 300, "{statuses:?}");
    assert!(still.peak >= still.value);

    let recovered_from_ms = hub.at_ms;
    let recovery = run(&mut detector, &mut hub, 10 * MINUTE, |_| Plan::normal(5.0));
    let gone = first_cleared(&recovery, Rule::DeliveryFailures).expect("cleared");
    let clear_after = ms(config().clear_after);
    let cleared_at_ms = gone.cleared_at_ms.unwrap_or(0);
    assert!(cleared_at_ms >= recovered_from_ms + clear_after, "{gone:?}");
    assert!(
        cleared_at_ms <= recovered_from_ms + clear_after + STEP_MS,
        "{gone:?}"
    );
    assert_eq!(gone.id, alert.id);
    assert!(raised(&recovery).next().is_none(), "{recovery:#?}");
    assert!(detector.active().is_empty());
}

#[test]
fn a_silent_source_raises_after_fifteen_minutes_and_clears_on_traffic() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    let last_event_at_ms = hub.at_ms;
    let silence = |_| Plan::normal(0.0);

    let quiet = run(&mut detector, &mut hub, 14 * MINUTE, silence);
    assert!(
        first_raised(&quiet, Rule::SourceSilent).is_none(),
        "{quiet:#?}"
    );

    let silent_after = ms(config().silent_after);
    let remaining = last_event_at_ms + silent_after + STEP_MS - hub.at_ms;
    let silent = run(&mut detector, &mut hub, remaining, silence);
    let alert = first_raised(&silent, Rule::SourceSilent).expect("source_silent raised");
    assert_eq!(alert.cause, Cause::NoTraffic);
    assert_eq!(alert.subject, Subject::Source("stripe".to_owned()));
    assert_eq!(alert.started_at_ms, last_event_at_ms);
    assert!(alert.raised_at_ms <= last_event_at_ms + silent_after + STEP_MS);

    let back = run(&mut detector, &mut hub, STEP_MS, |_| Plan::normal(5.0));
    let gone = first_cleared(&back, Rule::SourceSilent).expect("cleared on traffic");
    assert_eq!(gone.cleared_at_ms, Some(hub.at_ms));
    assert!(
        !detector
            .active()
            .iter()
            .any(|alert| alert.rule == Rule::SourceSilent)
    );
}

#[test]
fn a_hanging_downstream_leaves_the_backlog_stuck_and_growing() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    let hang_from_ms = hub.at_ms;
    let hang = run(&mut detector, &mut hub, 15 * MINUTE, |_| Plan {
        delivery: Delivery::Hangs,
        ..Plan::normal(5.0)
    });

    let stuck = first_raised(&hang, Rule::BacklogStuck).expect("backlog_stuck raised");
    let stuck_for = ms(config().stuck_for);
    assert!(stuck.raised_at_ms >= hang_from_ms + stuck_for, "{stuck:?}");
    assert!(
        stuck.raised_at_ms <= hang_from_ms + stuck_for + STEP_MS,
        "{stuck:?}"
    );
    assert!(
        matches!(stuck.cause, Cause::Timeouts { count } if count >= 30),
        "{:?}",
        stuck.cause
    );
    assert_eq!(stuck.unit, "s");

    let growing = first_raised(&hang, Rule::BacklogGrowing).expect("backlog_growing raised");
    let growing_for = ms(config().backlog_growing_for);
    // the growth streak may have begun a tick or two before the hang, on ordinary jitter
    assert!(
        growing.raised_at_ms + 3 * STEP_MS >= hang_from_ms + growing_for,
        "{growing:?}"
    );
    assert!(
        growing.raised_at_ms <= hang_from_ms + growing_for + STEP_MS,
        "{growing:?}"
    );
    assert!(growing.value > growing.threshold);
    assert!(matches!(growing.cause, Cause::Timeouts { .. }));

    let drain = run(&mut detector, &mut hub, 20 * MINUTE, |at_ms| {
        let delivery = if at_ms < hang_from_ms + 15 * MINUTE + 10 * MINUTE {
            Delivery::Drains { per_second: 30.0 }
        } else {
            Delivery::KeepsUp
        };
        Plan {
            delivery,
            failure_share: 0.0,
            ..Plan::normal(5.0)
        }
    });
    assert!(was_cleared(&drain, Rule::BacklogStuck), "{drain:#?}");
    assert!(was_cleared(&drain, Rule::BacklogGrowing), "{drain:#?}");
    assert!(raised(&drain).next().is_none(), "{drain:#?}");
    assert!(detector.active().is_empty(), "{:#?}", detector.active());
}

#[test]
fn a_burst_of_bad_signatures_names_the_rotated_secret() {
    let bad_signatures = |_| Plan {
        refused_per_tick: 10,
        refusal_reason: "no_match",
        ..Plan::normal(5.0)
    };
    let sustain = ms(config().sustain);
    let clear_after = ms(config().clear_after);

    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    let burst_from_ms = hub.at_ms;
    let burst = run(&mut detector, &mut hub, 5 * MINUTE, bad_signatures);
    let alert = first_raised(&burst, Rule::SignatureFailures).expect("signature_failures raised");
    assert!(alert.raised_at_ms >= burst_from_ms + sustain);
    assert!(alert.raised_at_ms <= burst_from_ms + sustain + STEP_MS);
    assert_eq!(alert.unit, "refusals/min");
    let Cause::SignatureFailures { reasons, hint } = &alert.cause else {
        panic!("cause {:?}", alert.cause);
    };
    assert!(reasons.get("no_match").is_some_and(|count| *count > 0));
    assert!(hint.as_deref().is_some_and(|hint| hint.contains("rotated")));
    assert!(alert.message.contains("no_match ×"), "{}", alert.message);

    let calm_from_ms = hub.at_ms;
    let calm = run(&mut detector, &mut hub, 10 * MINUTE, |_| Plan::normal(5.0));
    let gone = first_cleared(&calm, Rule::SignatureFailures).expect("cleared");
    assert!(gone.cleared_at_ms.unwrap_or(0) <= calm_from_ms + clear_after + STEP_MS);

    // right after start there is no baseline, the floor alone catches it
    let (mut detector, mut hub) = start();
    let burst = run(&mut detector, &mut hub, 5 * MINUTE, bad_signatures);
    let alert = first_raised(&burst, Rule::SignatureFailures).expect("raised cold");
    assert!(alert.raised_at_ms <= sustain + STEP_MS, "{alert:?}");
    assert_eq!(alert.baseline, None);
}

#[test]
fn stale_timestamps_point_at_clocks() {
    let (mut detector, mut hub) = start();
    let burst = run(&mut detector, &mut hub, 5 * MINUTE, |_| Plan {
        refused_per_tick: 10,
        refusal_reason: "stale_timestamp",
        ..Plan::normal(5.0)
    });
    let alert = first_raised(&burst, Rule::SignatureFailures).expect("raised");
    let Cause::SignatureFailures { hint, .. } = &alert.cause else {
        panic!("cause {:?}", alert.cause);
    };
    assert!(hint.as_deref().is_some_and(|hint| hint.contains("clock")));
}

#[test]
fn a_paused_consumer_is_stuck_because_paused() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    let paused = run(&mut detector, &mut hub, 10 * MINUTE, |_| Plan {
        paused: true,
        delivery: Delivery::Stopped,
        ..Plan::normal(5.0)
    });
    let stuck = first_raised(&paused, Rule::BacklogStuck).expect("backlog_stuck raised");
    assert_eq!(stuck.cause, Cause::Paused);
    assert!(stuck.message.contains("paused"), "{}", stuck.message);
}

#[test]
fn breaker_and_queue_growth_raise_their_rules() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    let open_from_ms = hub.at_ms;
    let open = run(&mut detector, &mut hub, 7 * MINUTE, |_| Plan {
        breaker_open: true,
        delivery: Delivery::Stopped,
        ..Plan::normal(5.0)
    });
    let breaker = first_raised(&open, Rule::BreakerOpen).expect("breaker_open raised");
    let breaker_open_for = ms(config().breaker_open_for);
    assert!(breaker.raised_at_ms >= open_from_ms + breaker_open_for);
    assert!(breaker.raised_at_ms <= open_from_ms + breaker_open_for + STEP_MS);
    assert_eq!(breaker.cause, Cause::BreakerOpen);
    let stuck = first_raised(&open, Rule::BacklogStuck).expect("backlog_stuck raised");
    assert_eq!(stuck.cause, Cause::BreakerOpen);

    let closed = run(&mut detector, &mut hub, 15 * MINUTE, |at_ms| Plan {
        delivery: if at_ms < open_from_ms + 12 * MINUTE {
            Delivery::Drains { per_second: 30.0 }
        } else {
            Delivery::KeepsUp
        },
        ..Plan::normal(5.0)
    });
    assert!(was_cleared(&closed, Rule::BreakerOpen));

    // two a tick: the tenth arrives on the fifth tick
    let filling_from_ms = hub.at_ms;
    let filling = run(&mut detector, &mut hub, 3 * MINUTE, |_| Plan {
        dead_letters_per_tick: 2,
        reviews_per_tick: 2,
        ..Plan::normal(5.0)
    });
    for rule in [Rule::DeadLetterGrowth, Rule::ReviewGrowth] {
        let alert = first_raised(&filling, rule).expect("growth raised");
        assert_eq!(
            alert.raised_at_ms,
            filling_from_ms + 5 * STEP_MS,
            "{alert:?}"
        );
        assert_eq!(alert.unit, "events");
        assert!(alert.value >= 10.0);
    }
    let stopped_from_ms = hub.at_ms;
    let settled = run(&mut detector, &mut hub, 10 * MINUTE, |_| Plan::normal(5.0));
    for rule in [Rule::DeadLetterGrowth, Rule::ReviewGrowth] {
        let gone = first_cleared(&settled, rule).expect("growth cleared");
        let cleared_at_ms = gone.cleared_at_ms.unwrap_or(0);
        assert!(cleared_at_ms <= stopped_from_ms + ms(config().clear_after) + STEP_MS);
    }
    assert!(raised(&settled).next().is_none(), "{settled:#?}");
}

#[test]
fn a_small_queue_growth_raises_nothing() {
    let (mut detector, mut hub) = start();
    let changes = run(&mut detector, &mut hub, 30 * MINUTE, |at_ms| Plan {
        // one every two minutes: 7 or 8 within any fifteen minutes
        dead_letters_per_tick: u64::from(at_ms % (2 * MINUTE) == 0),
        ..Plan::normal(5.0)
    });
    assert!(changes.is_empty(), "{changes:#?}");
}

#[test]
fn a_removed_consumer_has_its_alerts_cleared() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    let hang = run(&mut detector, &mut hub, 8 * MINUTE, |_| Plan {
        delivery: Delivery::Hangs,
        ..Plan::normal(5.0)
    });
    assert!(first_raised(&hang, Rule::BacklogStuck).is_some());
    let consumer_alerts = detector
        .active()
        .iter()
        .filter(|alert| alert.subject == Subject::Consumer("crm".to_owned()))
        .count();
    assert!(consumer_alerts > 0);

    hub.consumer_present = false;
    let removed = run(&mut detector, &mut hub, STEP_MS, |_| Plan::normal(5.0));
    assert_eq!(cleared(&removed).count(), consumer_alerts, "{removed:#?}");
    for alert in cleared(&removed) {
        assert_eq!(alert.cleared_at_ms, Some(hub.at_ms));
        assert_eq!(alert.subject.name(), "crm");
    }
    assert!(detector.active().is_empty(), "{:#?}", detector.active());

    // back after a reload, counting from zero: no stale state, no panic
    hub.consumer_present = true;
    hub.consumer = ConsumerSample {
        name: "crm".to_owned(),
        ..ConsumerSample::default()
    };
    let back = run(&mut detector, &mut hub, 10 * MINUTE, |_| Plan::normal(5.0));
    assert!(back.is_empty(), "{back:#?}");
}

#[test]
fn a_removed_source_has_its_alerts_cleared() {
    let (mut detector, mut hub) = start();
    run(&mut detector, &mut hub, 5 * MINUTE, |_| Plan {
        refused_per_tick: 10,
        ..Plan::normal(5.0)
    });
    assert!(
        detector
            .active()
            .iter()
            .any(|alert| alert.rule == Rule::SignatureFailures)
    );
    let sample = Sample {
        at_ms: hub.at_ms + STEP_MS,
        sources: Vec::new(),
        consumers: vec![hub.consumer.clone()],
    };
    let changes = detector.observe(&sample);
    assert!(first_cleared(&changes, Rule::SignatureFailures).is_some());
    assert!(detector.active().is_empty());
}

#[test]
fn a_nightly_batch_becomes_normal_for_its_hour_only() {
    let (mut detector, mut hub) = start();
    let batch_hours = |at_ms: u64| {
        let hour = (at_ms - STEP_MS) % DAY / HOUR;
        let day = at_ms / DAY;
        hour == 2 || (day == 4 && hour == 14)
    };
    let changes = run(&mut detector, &mut hub, 4 * DAY + 16 * HOUR, |at_ms| {
        let arrivals = if batch_hours(at_ms) {
            20.0
        } else {
            daily_rhythm(at_ms)
        };
        Plan {
            failure_share: 0.0,
            ..Plan::normal(arrivals)
        }
    });
    let spikes_raised_between = |from_ms: u64, to_ms: u64| {
        raised(&changes)
            .filter(|alert| alert.rule == Rule::IngestSpike)
            .filter(|alert| (from_ms..to_ms).contains(&alert.raised_at_ms))
            .count()
    };
    assert_eq!(spikes_raised_between(2 * HOUR, 3 * HOUR), 1, "night 1");
    assert_eq!(
        spikes_raised_between(4 * DAY + HOUR, 4 * DAY + 4 * HOUR),
        0,
        "night 5"
    );
    assert_eq!(
        spikes_raised_between(4 * DAY + 14 * HOUR, 4 * DAY + 15 * HOUR),
        1,
        "afternoon of day 5"
    );
    let spike = raised(&changes)
        .filter(|alert| alert.rule == Rule::IngestSpike)
        .last()
        .expect("afternoon spike");
    assert_eq!(spike.cause, Cause::TrafficSpike);
    assert_eq!(spike.unit, "events/s");
    assert!(spike.baseline.is_some_and(|mean| mean < 7.0), "{spike:?}");
    // nothing but spikes: the batch is absorbed downstream
    assert!(
        rules_raised(&changes)
            .iter()
            .all(|rule| *rule == Rule::IngestSpike),
        "{:?}",
        rules_raised(&changes)
    );
}

#[test]
fn counters_going_down_do_not_panic_or_raise() {
    // raising on the first out-of-band tick, so one bogus delta would show
    let (mut detector, mut hub) = start_with(AlertThresholds {
        sustain: Duration::ZERO,
        ..AlertThresholds::default()
    });
    warm_up(&mut detector, &mut hub);

    // a reload recreated both: every counter starts again from zero
    hub.source.received = 0;
    hub.source.signature_failures = BTreeMap::from([("no_match".to_owned(), 0)]);
    let gauges = hub.consumer.clone();
    hub.consumer = ConsumerSample {
        name: "crm".to_owned(),
        backlog: gauges.backlog,
        oldest_pending_ms: gauges.oldest_pending_ms,
        ..ConsumerSample::default()
    };
    let after = run(&mut detector, &mut hub, HOUR, |_| Plan::normal(5.0));
    assert!(after.is_empty(), "{after:#?}");

    // one counter going down on its own
    hub.consumer.plugin_micros /= 2;
    hub.consumer.failed = 0;
    let after = run(&mut detector, &mut hub, 10 * MINUTE, |_| Plan::normal(5.0));
    assert!(after.is_empty(), "{after:#?}");
}

#[test]
fn set_config_keeps_baselines_and_active_alerts() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    let storm = |_| Plan {
        failure_share: 0.9,
        failure_answer: "503",
        ..Plan::normal(5.0)
    };
    let raised_storm = run(&mut detector, &mut hub, 5 * MINUTE, storm);
    let alert = first_raised(&raised_storm, Rule::DeliveryFailures).expect("raised");

    let reloaded = AlertThresholds {
        sustain: Duration::ZERO,
        clear_after: Duration::from_secs(10 * 60),
        ..AlertThresholds::default()
    };
    detector.set_config(reloaded.clone());
    assert_eq!(detector.config(), &reloaded);
    assert_eq!(detector.active().first().map(|a| a.id), Some(alert.id));

    let more_storm = run(&mut detector, &mut hub, 2 * MINUTE, storm);
    assert!(raised(&more_storm).next().is_none(), "{more_storm:#?}");

    // a warm ingest baseline, so the spike is caught on its first tick with no sustain
    let spike_from_ms = hub.at_ms;
    let spike = run(&mut detector, &mut hub, STEP_MS, |_| Plan {
        failure_share: 0.9,
        failure_answer: "503",
        ..Plan::normal(30.0)
    });
    let spike = first_raised(&spike, Rule::IngestSpike).expect("spike raised at once");
    assert_eq!(spike.raised_at_ms, spike_from_ms + STEP_MS);

    // and clearing follows the new clear_after
    let recovered_from_ms = hub.at_ms;
    let recovery = run(&mut detector, &mut hub, 15 * MINUTE, |_| Plan::normal(5.0));
    let gone = first_cleared(&recovery, Rule::DeliveryFailures).expect("cleared");
    let cleared_at_ms = gone.cleared_at_ms.unwrap_or(0);
    assert!(cleared_at_ms >= recovered_from_ms + 10 * MINUTE, "{gone:?}");
    assert!(
        cleared_at_ms <= recovered_from_ms + 10 * MINUTE + STEP_MS,
        "{gone:?}"
    );
}

#[test]
fn samples_not_after_the_previous_are_ignored() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    let mut stale = hub.sample();
    stale.consumers[0].backlog = 1_000_000;
    stale.sources[0].received += 1_000_000;
    assert!(detector.observe(&stale).is_empty());
    stale.at_ms -= STEP_MS;
    assert!(detector.observe(&stale).is_empty());
    let next = run(&mut detector, &mut hub, 5 * MINUTE, |_| Plan::normal(5.0));
    assert!(next.is_empty(), "{next:#?}");
}

#[test]
fn alert_ids_increase_and_active_is_oldest_first() {
    let (mut detector, mut hub) = start();
    warm_up(&mut detector, &mut hub);
    run(&mut detector, &mut hub, 15 * MINUTE, |_| Plan {
        delivery: Delivery::Hangs,
        refused_per_tick: 10,
        ..Plan::normal(5.0)
    });
    let active = detector.active();
    assert!(active.len() >= 3, "{active:#?}");
    assert!(active.windows(2).all(|pair| pair[0].id < pair[1].id));
    assert!(
        active
            .windows(2)
            .all(|pair| pair[0].raised_at_ms <= pair[1].raised_at_ms)
    );
}
