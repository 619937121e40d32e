//! A signed Stripe event travels from HTTP to the three example consumers.

use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);

/// (fixture, consumer, method, path, body) from tests/fixtures/events/README.md.
fn expected_calls() -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Value,
)> {
    let customer = "cus_QgRk8mYpD1Yw2Z";
    vec![
        (
            "customer.created.json",
            "crm",
            "PUT",
            "/contacts/cus_QgRk8mYpD1Yw2Z",
            json!({"email":"ada.lovelace@example.com","name":null,"stripe_customer_id":customer}),
        ),
        (
            "customer.updated.json",
            "crm",
            "PUT",
            "/contacts/cus_QgRk8mYpD1Yw2Z",
            json!({"email":"ada.lovelace@example.com","name":"Ada Lovelace","stripe_customer_id":customer}),
        ),
        (
            "customer.deleted.json",
            "crm",
            "DELETE",
            "/contacts/cus_QgRk8mYpD1Yw2Z",
            Value::Null,
        ),
        (
            "invoice.paid.json",
            "erp",
            "POST",
            "/payments",
            json!({"amount_paid":4900,"currency":"usd","customer":customer,"invoice":"in_1PgKq2LzX8bYw3NcInv10010","order_id":"ord_1001"}),
        ),
        (
            "invoice.payment_succeeded.json",
            "erp",
            "POST",
            "/payments",
            json!({"amount_paid":12900,"currency":"eur","customer":customer,"invoice":"in_1PgKq2LzX8bYw3NcInv10020","order_id":"ord_1002"}),
        ),
        (
            "charge.refunded.json",
            "erp",
            "POST",
            "/credit-notes",
            json!({"amount_refunded":2000,"charge":"ch_3PgKq2LzX8bYw3Nc1Chg1001","currency":"usd","customer":customer,"payment_intent":"pi_3PgKq2LzX8bYw3Nc1Pay1001"}),
        ),
        (
            "customer.subscription.created.json",
            "marketing",
            "POST",
            "/audience/members",
            json!({"customer":customer,"plan":"price_1PgKq2LzX8bYw3NcBasicMo","status":"trialing"}),
        ),
        (
            "customer.subscription.updated.json",
            "marketing",
            "POST",
            "/audience/members",
            json!({"customer":customer,"plan":"price_1PgKq2LzX8bYw3NcProMnth","status":"active"}),
        ),
        (
            "customer.subscription.deleted.json",
            "marketing",
            "POST",
            "/audience/members",
            json!({"customer":customer,"plan":"price_1PgKq2LzX8bYw3NcProMnth","status":"canceled"}),
        ),
        (
            "checkout.session.completed.json",
            "marketing",
            "POST",
            "/events",
            json!({"amount_total":8580,"currency":"usd","customer":customer,"type":"purchase"}),
        ),
    ]
}

const ALL_FIXTURES: &[&str] = &[
    "customer.created.json",
    "customer.updated.json",
    "customer.deleted.json",
    "invoice.paid.json",
    "invoice.payment_succeeded.json",
    "invoice.paid.no_order.json",
    "charge.refunded.json",
    "customer.subscription.created.json",
    "customer.subscription.updated.json",
    "customer.subscription.deleted.json",
    "checkout.session.completed.json",
    "payment_intent.created.json",
];

/// Asserts every mock saw exactly the expected effects, each once, and
/// nothing else succeeded.
fn assert_exact_effects(mocks: &Mocks) {
    for consumer in ["crm", "erp", "marketing"] {
        let mut expected: Vec<(String, String, Value)> = expected_calls()
            .into_iter()
            .filter(|(_, c, ..)| *c == consumer)
            .map(|(_, _, method, path, body)| (method.to_owned(), path.to_owned(), body))
            .collect();
        let mut got: Vec<(String, String, Value)> = mocks
            .get(consumer)
            .effects()
            .iter()
            .map(|r| (r.method.clone(), r.path.clone(), r.json()))
            .collect();
        let key = |e: &(String, String, Value)| format!("{} {} {}", e.0, e.1, e.2);
        expected.sort_by_key(key);
        got.sort_by_key(key);
        assert_eq!(got, expected, "effects seen by {consumer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_reaches_exactly_its_consumers_once_even_when_sent_three_times() {
    let mocks = Mocks::start().await;
    let hub = TestHub::start(HubOptions::new(
        mocks.example_routes(r#"{ first = "50ms", max = "200ms", attempts = 5 }"#),
    ))
    .await;
    for round in 0..3 {
        for fixture in ALL_FIXTURES {
            let (status, body) = hub.send_fixture(fixture).await;
            assert_eq!(status, 200, "{fixture}: {body}");
            let expected = if round == 0 { "accepted" } else { "duplicate" };
            assert_eq!(body["status"], expected, "{fixture} round {round}");
        }
    }
    hub.drained(WITHIN).await;
    assert_exact_effects(&mocks);

    // Host-owned headers: credentials only where the connection has them,
    // and an Idempotency-Key of `<consumer>:<event id>:<call n>`.
    let crm_call = &mocks.crm.effects()[0];
    assert_eq!(
        crm_call.header("authorization"),
        Some(format!("Bearer {CRM_TOKEN}").as_str())
    );
    assert!(
        mocks
            .erp
            .effects()
            .iter()
            .all(|r| r.header("authorization").is_none())
    );
    let created = mocks
        .crm
        .effects()
        .into_iter()
        .find(|r| r.method == "PUT" && r.json()["name"].is_null())
        .unwrap();
    assert_eq!(
        created.header("idempotency-key"),
        Some("crm:stripe:evt_1PgKq3LzX8bYw3NcCusCrt01:1")
    );
    assert_eq!(created.header("content-type"), Some("application/json"));

    // The invoice without an order id waits for a human; nothing was sent.
    let erp = hub.status_of("erp").await;
    assert_eq!(erp.reviews, 1);
    assert_eq!(erp.dead_letters, 0);
    let reviews = hub
        .hub
        .bus()
        .dead_letters("erp", switchyard::bus::ParkQueue::Review)
        .await
        .unwrap();
    assert_eq!(reviews[0].envelope.event_id, "evt_1PgKq3LzX8bYw3NcInvPad02");
    assert_eq!(
        reviews[0].reason,
        "invoice in_1PgKq2LzX8bYw3NcInv10030 has no order_id in metadata"
    );
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_failing_twice_then_succeeding_applies_each_effect_once() {
    let mocks = Mocks::start().await;
    // Each downstream fails the first two requests it gets (503, then a 500).
    for consumer in ["crm", "erp", "marketing"] {
        mocks.get(consumer).script(1, Answer::status(503));
        mocks.get(consumer).script(1, Answer::status(500));
    }
    let hub = TestHub::start(HubOptions::new(
        mocks.example_routes(r#"{ first = "20ms", max = "100ms", attempts = 10 }"#),
    ))
    .await;
    for fixture in ALL_FIXTURES {
        for _ in 0..3 {
            assert_eq!(hub.send_fixture(fixture).await.0, 200);
        }
    }
    hub.drained(WITHIN).await;
    assert_exact_effects(&mocks);
    for consumer in ["crm", "erp", "marketing"] {
        let received = mocks.get(consumer).received();
        let failed: Vec<_> = received.iter().filter(|r| r.status >= 500).collect();
        assert_eq!(failed.len(), 2, "{consumer} saw its two failures");
        // A retried call carries the same Idempotency-Key as the failed one,
        // so a downstream that honours it applies the effect once.
        for failure in failed {
            let key = failure.header("idempotency-key").unwrap();
            assert!(
                received
                    .iter()
                    .any(|r| r.status == 200 && r.header("idempotency-key") == Some(key)),
                "{consumer}: retry of {key} reused the key"
            );
        }
        let status = hub.status_of(consumer).await;
        assert_eq!(status.stats.retried, 2, "{consumer}");
        assert_eq!(status.dead_letters, 0, "{consumer}");
    }
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_4xx_dead_letters_at_once_and_persistent_5xx_after_the_last_attempt() {
    let mocks = Mocks::start().await;
    mocks.crm.set_default(Answer::status(422));
    mocks.erp.set_default(Answer::status(500));
    let hub = TestHub::start(HubOptions::new(
        mocks.example_routes(r#"{ first = "10ms", max = "50ms", attempts = 3 }"#),
    ))
    .await;
    assert_eq!(hub.send_fixture("customer.created.json").await.0, 200);
    assert_eq!(hub.send_fixture("invoice.paid.json").await.0, 200);
    hub.drained(WITHIN).await;

    let bus = hub.hub.bus();
    let crm_dead = bus
        .dead_letters("crm", switchyard::bus::ParkQueue::DeadLetter)
        .await
        .unwrap();
    assert_eq!(crm_dead.len(), 1);
    assert_eq!(crm_dead[0].attempts, 1, "a 4xx is not retried");
    assert!(
        crm_dead[0].reason.contains("HTTP 422"),
        "{}",
        crm_dead[0].reason
    );
    assert_eq!(mocks.crm.received().len(), 1);

    let erp_dead = bus
        .dead_letters("erp", switchyard::bus::ParkQueue::DeadLetter)
        .await
        .unwrap();
    assert_eq!(erp_dead.len(), 1);
    assert_eq!(erp_dead[0].attempts, 3);
    assert!(
        erp_dead[0].reason.starts_with("gave up after 3 attempts"),
        "{}",
        erp_dead[0].reason
    );
    assert_eq!(mocks.erp.received().len(), 3);
    // The dead letter keeps the event byte for byte, for replay.
    assert_eq!(erp_dead[0].envelope.payload, fixture("invoice.paid.json"));
    // Marketing was routed the customer event too and was unaffected.
    assert_eq!(
        mocks.marketing.effects().len(),
        0,
        "customer.created makes no marketing call"
    );
    assert_eq!(hub.status_of("marketing").await.stats.delivered, 1);
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_does_not_slow_the_others() {
    let mocks = Mocks::start().await;
    // The CRM answers after 3 s; the CRM consumer has 1 slot.
    mocks
        .crm
        .set_default(Answer::status(200).delayed(Duration::from_secs(3)));
    let routes = mocks
        .example_routes(r#"{ first = "1s", max = "5s", attempts = 5 }"#)
        .with_in("consumers.crm", "concurrency", "1");
    let hub = TestHub::start(HubOptions::new(routes)).await;
    let events = 20;
    for i in 0..events {
        let customer = format!("cus_{i}");
        let contact = synthetic_event(
            &unique("evt_contact_"),
            "customer.created",
            json!({
                "id": customer, "object": "customer", "email": format!("{i}@example.com"), "name": null
            }),
        );
        assert_eq!(hub.send(&contact).await.0, 200);
        let subscription = synthetic_event(
            &unique("evt_sub_"),
            "customer.subscription.created",
            json!({
                "id": format!("sub_{i}"), "object": "subscription", "customer": customer,
                "status": "active", "items": {"data": [{"price": {"id": "price_x"}}]}
            }),
        );
        assert_eq!(hub.send(&subscription).await.0, 200);
    }
    // Marketing drains all 20 while the CRM has done at most a couple.
    eventually(WITHIN, "marketing received every event", || async {
        mocks.marketing.effects().len() == events
    })
    .await;
    let crm = hub.status_of("crm").await;
    assert!(
        crm.stats.delivered <= 2,
        "crm delivered {}",
        crm.stats.delivered
    );
    assert!(
        crm.backlog >= (2 * events as u64) - 3,
        "crm backlog {}",
        crm.backlog
    );
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_retry_after_delays_the_next_attempt_at_least_that_long() {
    let mocks = Mocks::start().await;
    mocks
        .crm
        .script(1, Answer::status(503).header("retry-after", "2"));
    let hub = TestHub::start(HubOptions::new(
        mocks.example_routes(r#"{ first = "10ms", max = "50ms", attempts = 5 }"#),
    ))
    .await;
    assert_eq!(hub.send_fixture("customer.created.json").await.0, 200);
    eventually(WITHIN, "crm effect after the back-off", || async {
        mocks.crm.effects().len() == 1
    })
    .await;
    let received = mocks.crm.received();
    assert_eq!(received.len(), 2);
    let waited = received[1].at - received[0].at;
    // The schedule alone would retry within 50 ms; the downstream asked for 2 s.
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_reaches_the_downstream_as_traceparent() {
    let mocks = Mocks::start().await;
    let hub = TestHub::start(HubOptions::new(mocks.example_routes(r#"{ attempts = 3 }"#))).await;
    // A sender that traces: its trace continues downstream.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = fixture("customer.created.json");
    let header = switchyard::ingest::scheme::stripe::signature_header(SECRET, now(), &body);
    let parent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let (status, _) = hub
        .post(
            "/webhooks/stripe",
            &body,
            &[("stripe-signature", &header), ("traceparent", &parent)],
        )
        .await;
    assert_eq!(status, 200);
    // A sender that does not (Stripe): a trace starts at ingest.
    assert_eq!(hub.send_fixture("invoice.paid.json").await.0, 200);
    hub.drained(WITHIN).await;
    let crm_call = &mocks.crm.effects()[0];
    let traceparent = crm_call.header("traceparent").expect("traceparent sent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], trace_id, "same trace");
    assert_ne!(parts[2], "00f067aa0ba902b7", "a child span of its own");
    let erp_call = &mocks.erp.effects()[0];
    let started = erp_call.header("traceparent").expect("traceparent sent");
    assert_eq!(started.len(), 55);
    assert_ne!(started.split('-').nth(1), Some(trace_id));
    hub.hub.shutdown().await;
}
