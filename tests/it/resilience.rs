//! Per-consumer policies isolate consumers: a circuit breaker for an unwell
//! downstream, rate limits (per consumer and per shared connection), and
//! back-pressure from `Retry-After` and `410 Gone`.

use crate::support::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use switchyard::bus::ParkQueue;
use switchyard::dispatch::breaker::BreakerState;

const WITHIN: Duration = Duration::from_secs(60);

fn contact(i: usize) -> Vec<u8> {
    synthetic_event(
        &unique(&format!("evt_c{i}_")),
        "customer.created",
        json!({"id": format!("cus_{i}"), "object": "customer", "email": null, "name": null}),
    )
}

fn payment(i: usize) -> Vec<u8> {
    synthetic_event(
        &unique(&format!("evt_p{i}_")),
        "invoice.paid",
        json!({"id": format!("in_{i}"), "object": "invoice", "customer": "cus_1",
               "amount_paid": 100, "currency": "usd", "metadata": {"order_id": format!("ord_{i}")}}),
    )
}

fn subscription(i: usize) -> Vec<u8> {
    synthetic_event(
        &unique(&format!("evt_s{i}_")),
        "customer.subscription.created",
        json!({"id": format!("sub_{i}"), "object": "subscription", "customer": format!("cus_{i}"),
               "status": "active", "items": {"data": [{"price": {"id": "price_1"}}]}}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwell_crm_opens_its_breaker_while_erp_and_marketing_carry_on() {
    let (crm, erp, marketing) = (
        MockDownstream::start().await,
        MockDownstream::start().await,
        MockDownstream::start().await,
    );
    crm.set_default(Answer::status(500));
    let routes = example_routes(&crm, &erp, &marketing, r#"{ first = "50ms", max = "200ms", attempts = 1000 }"#)
        .with_in(
            "consumers.crm",
            "circuit_breaker",
            r#"{ failure_ratio = 0.5, min_calls = 5, window = "10s", open_for = "1s", half_open_probes = 1 }"#,
        );
    let hub = TestHub::start(HubOptions::new(routes)).await;
    let n = 30;
    for i in 0..n {
        for body in [contact(i), payment(i), subscription(i)] {
            assert_eq!(hub.send(&body).await.0, 200);
        }
    }
    eventually(WITHIN, "crm's breaker opened", || async {
        hub.status_of("crm").await.breaker_opened >= 1
    })
    .await;
    // The healthy consumers deliver everything during the outage, first try.
    eventually(WITHIN, "erp and marketing delivered everything", || async {
        erp.effects().len() == n && marketing.effects().len() == n
    })
    .await;
    for name in ["erp", "marketing"] {
        let status = hub.status_of(name).await;
        assert_eq!(
            (status.stats.retried, status.dead_letters),
            (0, 0),
            "{name}"
        );
        assert_eq!(status.breaker, Some(BreakerState::Closed), "{name}");
    }
    // While open, CRM pulls only a probe per `open_for`: over 3 s of outage
    // it makes a handful of calls, not the hundreds its retry schedule allows.
    let before = crm.received().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = crm.received().len() - before;
    assert!(during <= 8, "{during} calls while the breaker was open");
    let status = hub.status_of("crm").await;
    assert_eq!(status.dead_letters, 0, "nothing dead-lettered");
    // CRM is routed `customer.*`: the contacts (which fail) and the
    // subscriptions (no-ops for its plugin). None is lost: each was either
    // handled or still waits in the bus.
    assert_eq!(
        status.stats.delivered + status.backlog,
        2 * n as u64,
        "every CRM event handled or waiting in the bus"
    );
    assert!(status.backlog >= n as u64, "the failing contacts wait");

    // Recovery: the breaker probes, closes, and the backlog drains.
    crm.set_default(Answer::status(200));
    hub.drained(WITHIN).await;
    assert_eq!(
        hub.status_of("crm").await.breaker,
        Some(BreakerState::Closed)
    );
    let effects = crm.effects();
    let keys: BTreeSet<_> = effects
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_owned())
        .collect();
    let contacts: BTreeSet<_> = effects.iter().map(|r| r.path.clone()).collect();
    assert_eq!(effects.len(), n, "each CRM effect once");
    assert_eq!(keys.len(), n);
    assert_eq!(contacts.len(), n);
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_consumer_is_paced_while_an_unlimited_one_is_not() {
    // Both consumers call the same mock; their calls are told apart by the
    // Idempotency-Key, which starts with the consumer's name.
    let mock = MockDownstream::start().await;
    let routes = Routes::new()
        .connection("marketing", &mock)
        .consumer("limited", "marketing", &["marketing"])
        .concurrency(8)
        .with("rate_limit", "{ per_second = 20, burst = 5 }")
        .consumer("unlimited", "marketing", &["marketing"])
        .concurrency(8)
        .route(&["customer.subscription.*"], &["limited", "unlimited"]);
    let hub = TestHub::start(HubOptions::new(routes)).await;
    let n = 200;
    for i in 0..n {
        assert_eq!(hub.send(&subscription(i)).await.0, 200);
    }
    let by = |consumer: &str| {
        let prefix = format!("{consumer}:");
        let mut times: Vec<_> = mock
            .effects()
            .into_iter()
            .filter(|r| {
                r.header("idempotency-key")
                    .is_some_and(|k| k.starts_with(&prefix))
            })
            .map(|r| r.at)
            .collect();
        times.sort();
        times
    };
    eventually(WITHIN, "the unlimited consumer got all 200", || async {
        by("unlimited").len() == n
    })
    .await;
    // Still behind when the unlimited one is done: at 20/s the limited one
    // needs about 10 s for all 200, the unlimited one a fraction of that
    // (even on a loaded machine). The pacing itself is checked below.
    assert!(
        by("limited").len() < n,
        "the limited consumer kept pace with the unlimited one: {}",
        by("limited").len()
    );
    hub.drained(WITHIN).await;
    let times = by("limited");
    assert_eq!(times.len(), n);
    // GCRA at 20/s with a burst of 5: call i comes no sooner than
    // (i - 5) × 50 ms after the first (10 % tolerance for timer slack).
    for (i, at) in times.iter().enumerate().skip(5) {
        let earliest = Duration::from_millis(50).mul_f64((i - 5) as f64 * 0.9);
        assert!(
            *at - times[0] >= earliest,
            "call {i} after {:?}",
            *at - times[0]
        );
    }
    let status = hub.status_of("limited").await;
    assert_eq!(
        status.stats.retried, 0,
        "waiting for a permit is not a failed attempt (last error: {:?})",
        status.stats.last_error
    );
    let metrics = hub.hub.control().metrics_text().await.unwrap();
    let waits = |consumer: &str| -> u64 {
        let prefix = format!("switchyard_rate_limit_waits_total{{consumer=\"{consumer}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no rate-limit waits of {consumer} in\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert!(waits("limited") > 0, "the limiter made the consumer wait");
    assert_eq!(waits("unlimited"), 0);
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_sharing_a_connection_share_its_rate_limit() {
    let shared = MockDownstream::start().await;
    let routes = Routes::new()
        .connection("marketing", &shared)
        .with("rate_limit", "{ per_second = 10, burst = 1 }")
        .consumer("first", "marketing", &["marketing"])
        .consumer("second", "marketing", &["marketing"])
        .route(&["customer.subscription.*"], &["first", "second"]);
    let hub = TestHub::start(HubOptions::new(routes)).await;
    for i in 0..10 {
        assert_eq!(hub.send(&subscription(i)).await.0, 200);
    }
    hub.drained(WITHIN).await;
    let mut times: Vec<_> = shared.effects().into_iter().map(|r| r.at).collect();
    times.sort();
    assert_eq!(times.len(), 20);
    // 20 calls from two consumers at 10/s together: at least ~1.9 s.
    let spread = *times.last().unwrap() - times[0];
    assert!(
        spread >= Duration::from_millis(1700),
        "20 calls in {spread:?}"
    );
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_delays_the_next_attempt() {
    let crm = MockDownstream::start().await;
    crm.script(1, Answer::status(429).header("retry-after", "2"));
    let hub = TestHub::start(HubOptions::new(example_routes(
        &crm,
        &crm,
        &crm,
        r#"{ first = "10ms", max = "50ms", attempts = 5 }"#,
    )))
    .await;
    assert_eq!(hub.send_fixture("customer.created.json").await.0, 200);
    eventually(WITHIN, "the retry succeeded", || async {
        crm.effects().len() == 1
    })
    .await;
    let received = crm.received();
    assert_eq!(received.len(), 2);
    assert!(received[1].at - received[0].at >= Duration::from_secs(2));
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_gone_dead_letters_without_retries() {
    let crm = MockDownstream::start().await;
    crm.set_default(Answer::status(410));
    let hub = TestHub::start(HubOptions::new(example_routes(
        &crm,
        &crm,
        &crm,
        r#"{ first = "10ms", max = "50ms", attempts = 5 }"#,
    )))
    .await;
    assert_eq!(hub.send_fixture("customer.deleted.json").await.0, 200);
    hub.drained(WITHIN).await;
    let dead = hub
        .hub
        .bus()
        .dead_letters("crm", ParkQueue::DeadLetter)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(crm.received().len(), 1);
    hub.hub.shutdown().await;
}
