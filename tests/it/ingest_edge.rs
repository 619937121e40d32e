//! The HTTP edge: every refusal has its status, a small JSON body, changes
//! nothing, and 2xx only ever follows a durable append.

use crate::support::*;
use std::time::Duration;
use switchyard::ingest::scheme::stripe::signature_header;

fn one_consumer(mock: &MockDownstream) -> Routes {
    crm_routes(mock).retry(r#"{ first = "10ms", max = "50ms", attempts = 3 }"#)
}

async fn hub() -> (TestHub, MockDownstream) {
    let mock = MockDownstream::start().await;
    (
        TestHub::start(HubOptions::new(one_consumer(&mock))).await,
        mock,
    )
}

/// Asserts a refusal and that nothing was persisted for the consumer.
async fn assert_refused(hub: &TestHub, answer: (u16, serde_json::Value), status: u16, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"], code, "{}", answer.1);
    assert!(answer.1["message"].is_string());
    assert_eq!(hub.status_of("crm").await.backlog, 0, "nothing persisted");
}

#[tokio::test]
async fn bad_signatures_and_stale_timestamps_get_400_and_change_nothing() {
    let (hub, mock) = hub().await;
    let body = fixture("customer.created.json");
    let path = "/webhooks/stripe";
    let wrong_secret = signature_header("whsec_wrong", now(), &body);
    assert_refused(
        &hub,
        hub.post(path, &body, &[("stripe-signature", &wrong_secret)])
            .await,
        400,
        "bad_signature",
    )
    .await;
    let stale = signature_header(SECRET, now() - 301, &body);
    assert_refused(
        &hub,
        hub.post(path, &body, &[("stripe-signature", &stale)]).await,
        400,
        "bad_signature",
    )
    .await;
    assert_refused(&hub, hub.post(path, &body, &[]).await, 400, "bad_signature").await;
    assert_refused(
        &hub,
        hub.post(path, &body, &[("stripe-signature", "t=1,v1=zz")])
            .await,
        400,
        "bad_signature",
    )
    .await;
    // Signed correctly over a tampered body.
    let header = signature_header(SECRET, now(), &body);
    let mut tampered = body.to_vec();
    tampered.push(b' ');
    let answer = hub
        .post(path, &tampered, &[("stripe-signature", &header)])
        .await;
    assert_refused(&hub, answer.clone(), 400, "bad_signature").await;
    assert!(!answer.1.to_string().contains(SECRET));
    assert!(mock.received().is_empty());
}

#[tokio::test]
async fn bodies_that_are_not_events_get_400() {
    let (hub, _mock) = hub().await;
    for body in [
        &b"{not json"[..],
        br#"[{"id":"evt_1","type":"customer.created"}]"#,
        br#"{"type":"customer.created"}"#,
        br#"{"id":"evt_1"}"#,
        br#"{"id":"","type":"customer.created"}"#,
        br#"{"id":"evt 1","type":"customer.created"}"#,
        br#"{"id":"evt_1","type":"Customer Created"}"#,
        br#"{"id":7,"type":"customer.created"}"#,
    ] {
        let (status, answer) = hub.send(body).await;
        assert_eq!(status, 400, "{}: {answer}", String::from_utf8_lossy(body));
        assert_eq!(answer["error"], "bad_event");
    }
    assert_eq!(hub.status_of("crm").await.backlog, 0);
}

#[tokio::test]
async fn unknown_sources_wrong_types_and_huge_bodies_are_refused() {
    let (hub, _mock) = hub().await;
    let body = fixture("customer.created.json");
    let header = signature_header(SECRET, now(), &body);
    assert_refused(
        &hub,
        hub.post("/webhooks/paypal", &body, &[("stripe-signature", &header)])
            .await,
        404,
        "unknown_source",
    )
    .await;

    let response = hub
        .client
        .post(hub.url("/webhooks/stripe"))
        .header("content-type", "text/plain")
        .header("stripe-signature", &header)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);

    let response = hub
        .client
        .get(hub.url("/webhooks/stripe"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);

    // 64 KiB cap in the harness: declared length and chunked streams alike.
    let huge = synthetic_event(
        "evt_huge",
        "customer.created",
        serde_json::json!({"pad": "x".repeat(70_000)}),
    );
    let header = signature_header(SECRET, now(), &huge);
    assert_refused(
        &hub,
        hub.post("/webhooks/stripe", &huge, &[("stripe-signature", &header)])
            .await,
        413,
        "too_large",
    )
    .await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        huge.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    let response = hub
        .client
        .post(hub.url("/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", &header)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    assert_eq!(hub.status_of("crm").await.backlog, 0);

    let health = hub.client.get(hub.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let ready = hub.client.get(hub.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
}

#[tokio::test]
async fn when_the_bus_cannot_persist_the_answer_is_503_with_retry_after_and_stripe_retry_succeeds()
{
    let (hub, mock) = hub().await;
    let body = fixture("customer.created.json");
    hub.hub
        .embedded_bus()
        .expect("embedded bus")
        .inject_commit_failures(true);
    let response = hub.send_response(&body).await;
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["error"], "unavailable");

    // The disk comes back; Stripe's retry of the same event is accepted as new.
    hub.hub
        .embedded_bus()
        .expect("embedded bus")
        .inject_commit_failures(false);
    let (status, answer) = hub.send(&body).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("accepted")));
    eventually(
        Duration::from_secs(20),
        "crm received the event",
        || async { mock.effects().len() == 1 },
    )
    .await;
}

#[tokio::test]
async fn a_rotated_secret_is_accepted_alongside_the_new_one() {
    let mock = MockDownstream::start().await;
    let mut options = HubOptions::new(one_consumer(&mock));
    options.secrets = vec![SECRET.to_owned(), "whsec_old_one".to_owned()];
    let hub = TestHub::start(options).await;
    for (secret, id) in [
        (SECRET, "evt_rot_new"),
        ("whsec_old_one", "evt_rot_old"),
        ("whsec_other", "evt_rot_bad"),
    ] {
        let body = synthetic_event(
            id,
            "customer.created",
            serde_json::json!({"id": "cus_r", "email": null, "name": null}),
        );
        let header = signature_header(secret, now(), &body);
        let (status, _) = hub
            .post("/webhooks/stripe", &body, &[("stripe-signature", &header)])
            .await;
        assert_eq!(
            status,
            if secret == "whsec_other" { 400 } else { 200 },
            "{secret}"
        );
    }
}
