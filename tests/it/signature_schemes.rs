//! Sources of other providers, by config alone: Standard Webhooks / Svix,
//! GitHub and Shopify. Every signature here is made by an independent
//! implementation (Python's `hmac` and `base64` modules), so a shared
//! misunderstanding between our signer and our verifier cannot pass.

use crate::support::*;
use std::sync::Arc;
use std::time::Duration;
use switchyard::config::EventPattern;

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_OLD_SECRET: &str = "whsec_c2VjcmV0LWJlZm9yZS10aGUtcm90YXRpb24=";
const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const SHOPIFY_SECRET: &str = "shpss_0123456789abcdef";

/// A hub with the harness's Stripe source plus one source of each other
/// scheme, all routed to the `crm` consumer.
async fn hub() -> (TestHub, MockDownstream) {
    let mock = MockDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    for (file, secret) in [
        ("sw_secret", SW_SECRET),
        ("sw_old_secret", SW_OLD_SECRET),
        ("github_secret", GITHUB_SECRET),
        ("shopify_secret", SHOPIFY_SECRET),
    ] {
        std::fs::write(dir.path().join(file), secret).unwrap();
    }
    let mut routes = crm_routes(&mock)
        .source("svix", "standard-webhooks")
        .with("secrets", r#"["file:sw_secret", "file:sw_old_secret"]"#)
        .with("tolerance", r#""5m""#)
        .source("github", "github")
        .with("path", r#""/hooks/github""#)
        .with("secrets", r#"["file:github_secret"]"#)
        .source("shopify", "shopify")
        .with("secrets", r#"["file:shopify_secret"]"#);
    for source in ["svix", "github", "shopify"] {
        routes = routes.route_from(source, &["*"], &["crm"]);
    }
    let mut options = HubOptions::new(routes);
    options.dir = Some(Arc::new(dir));
    (TestHub::start(options).await, mock)
}

async fn persisted_of_type(hub: &TestHub, source: &str, event_type: &str) -> usize {
    hub.hub
        .bus()
        .history(
            "crm",
            source,
            &EventPattern::Exact(event_type.into()),
            0,
            u64::MAX,
        )
        .await
        .unwrap()
        .len()
}

async fn delivered_at_least(hub: &TestHub, n: u64) {
    eventually(
        Duration::from_secs(20),
        "crm delivered the events",
        || async { hub.status_of("crm").await.stats.delivered >= n },
    )
    .await;
}

fn standard_headers<'a>(
    id: &'a str,
    timestamp: &'a str,
    signature: &'a str,
) -> [(&'a str, &'a str); 3] {
    [
        ("webhook-id", id),
        ("webhook-timestamp", timestamp),
        ("webhook-signature", signature),
    ]
}

fn github_headers<'a>(
    signature: &'a str,
    delivery: &'a str,
    event: &'a str,
) -> [(&'a str, &'a str); 3] {
    [
        ("x-hub-signature-256", signature),
        ("x-github-delivery", delivery),
        ("x-github-event", event),
    ]
}

fn shopify_headers<'a>(
    signature: &'a str,
    webhook_id: &'a str,
    topic: &'a str,
) -> [(&'a str, &'a str); 3] {
    [
        ("x-shopify-hmac-sha256", signature),
        ("x-shopify-webhook-id", webhook_id),
        ("x-shopify-topic", topic),
    ]
}

#[tokio::test]
async fn standard_webhooks_events_signed_by_python_are_accepted_and_forgeries_are_not() {
    let (hub, _mock) = hub().await;
    let path = "/webhooks/svix";
    let body =
        br#"{"type":"invoice.paid","timestamp":"2026-01-01T00:00:00Z","data":{"id":"inv_1"}}"#;
    let ts = now().to_string();
    let sign = |secret: &str, id: &str, ts: &str, body: &[u8]| {
        python_signature("standard-webhooks", secret, body, &[id, ts])
    };

    let good = sign(SW_SECRET, "msg_1", &ts, body);
    let (status, answer) = hub
        .post(path, body, &standard_headers("msg_1", &ts, &good))
        .await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("accepted")),
        "{answer}"
    );
    assert_eq!(
        answer["id"], "msg_1",
        "the event id is the signed webhook-id"
    );
    // The same message again (a provider retry) is a duplicate.
    let (status, answer) = hub
        .post(path, body, &standard_headers("msg_1", &ts, &good))
        .await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("duplicate"))
    );
    // During a rotation the old key still verifies, and several signatures
    // may be sent space-separated.
    let old = sign(SW_OLD_SECRET, "msg_2", &ts, body);
    let several = format!("v1,bm90IGEgc2lnbmF0dXJl {old}");
    let (status, _) = hub
        .post(path, body, &standard_headers("msg_2", &ts, &several))
        .await;
    assert_eq!(status, 200);
    assert_eq!(persisted_of_type(&hub, "svix", "invoice.paid").await, 2);
    delivered_at_least(&hub, 2).await;

    let stale_ts = (now() - 600).to_string();
    let stale = sign(SW_SECRET, "msg_3", &stale_ts, body);
    let mut tampered = body.to_vec();
    tampered[10] = b'X';
    let wrong = sign("whsec_d3Jvbmcta2V5", "msg_3", &ts, body);
    // The id is signed: moving a signature to another id fails.
    let moved = sign(SW_SECRET, "msg_1", &ts, body);
    for (name, headers, body) in [
        (
            "wrong key",
            standard_headers("msg_3", &ts, &wrong),
            &body[..],
        ),
        (
            "tampered body",
            standard_headers("msg_3", &ts, &good),
            &tampered[..],
        ),
        (
            "stale timestamp",
            standard_headers("msg_3", &stale_ts, &stale),
            &body[..],
        ),
        (
            "another id",
            standard_headers("msg_3", &ts, &moved),
            &body[..],
        ),
    ] {
        let (status, answer) = hub.post(path, body, &headers).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("bad_signature")),
            "{name}: {answer}"
        );
    }
    let (status, answer) = hub
        .post(
            path,
            body,
            &[("webhook-id", "msg_3"), ("webhook-signature", &good)],
        )
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("bad_signature"))
    );
    // Signed correctly, but no `type` in the body: not routable.
    let untyped = br#"{"data":{"id":"inv_1"}}"#;
    let signature = sign(SW_SECRET, "msg_4", &ts, untyped);
    let (status, answer) = hub
        .post(path, untyped, &standard_headers("msg_4", &ts, &signature))
        .await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("bad_event")));
    assert_eq!(
        hub.persisted("crm", "svix").await,
        2,
        "refusals persisted nothing"
    );
}

#[tokio::test]
async fn github_deliveries_take_id_and_type_from_headers() {
    let (hub, _mock) = hub().await;
    let path = "/hooks/github";
    let body = br#"{"ref":"refs/heads/main","repository":{"id":1296269,"full_name":"octocat/Hello-World"}}"#;
    let good = python_signature("github", GITHUB_SECRET, body, &[]);
    let delivery = unique("72d3162e-cc78-11e3-81ab-");
    let (status, answer) = hub
        .post(path, body, &github_headers(&good, &delivery, "push"))
        .await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("accepted")),
        "{answer}"
    );
    assert_eq!(answer["id"], delivery.as_str());
    let (status, answer) = hub
        .post(path, body, &github_headers(&good, &delivery, "push"))
        .await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("duplicate"))
    );
    assert_eq!(persisted_of_type(&hub, "github", "push").await, 1);
    delivered_at_least(&hub, 1).await;

    let wrong = python_signature("github", "not the secret", body, &[]);
    let mut tampered = body.to_vec();
    tampered[3] = b'X';
    for (name, signature, body) in [
        ("wrong secret", wrong.as_str(), &body[..]),
        ("tampered body", good.as_str(), &tampered[..]),
        ("no prefix", good.trim_start_matches("sha256="), &body[..]),
    ] {
        let (status, answer) = hub
            .post(path, body, &github_headers(signature, "d-2", "push"))
            .await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("bad_signature")),
            "{name}: {answer}"
        );
    }
    // Signed, but without the headers that say what it is.
    for missing in ["x-github-delivery", "x-github-event"] {
        let headers: Vec<(&str, &str)> = github_headers(&good, "d-3", "push")
            .into_iter()
            .filter(|(name, _)| *name != missing)
            .collect();
        let (status, answer) = hub.post(path, body, &headers).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("bad_event")),
            "{missing}"
        );
    }
    assert_eq!(hub.persisted("crm", "github").await, 1);
}

#[tokio::test]
async fn shopify_topics_become_event_types() {
    let (hub, _mock) = hub().await;
    let path = "/webhooks/shopify";
    let body = br#"{"id":820982911946154508,"email":"jon@example.com","total_price":"10.00"}"#;
    let good = python_signature("shopify", SHOPIFY_SECRET, body, &[]);
    let webhook_id = unique("b54557e4-bdd9-4b37-8a5f-");
    let (status, answer) = hub
        .post(
            path,
            body,
            &shopify_headers(&good, &webhook_id, "orders/create"),
        )
        .await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("accepted")),
        "{answer}"
    );
    assert_eq!(persisted_of_type(&hub, "shopify", "orders.create").await, 1);
    delivered_at_least(&hub, 1).await;

    let wrong = python_signature("shopify", "shpss_wrong", body, &[]);
    let (status, answer) = hub
        .post(path, body, &shopify_headers(&wrong, "w-2", "orders/create"))
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("bad_signature"))
    );
    // A Stripe signature means nothing to a Shopify source.
    let stripe = switchyard::ingest::scheme::stripe::signature_header(SHOPIFY_SECRET, now(), body);
    let (status, _) = hub
        .post(
            path,
            body,
            &[
                ("stripe-signature", &stripe),
                ("x-shopify-webhook-id", "w-3"),
                ("x-shopify-topic", "orders/create"),
            ],
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(hub.persisted("crm", "shopify").await, 1);
}

#[tokio::test]
async fn a_standard_webhooks_secret_that_is_not_base64_fails_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sw_secret"), "whsec_***not base64***").unwrap();
    let mock = MockDownstream::start().await;
    let options = HubOptions::new(
        crm_routes(&mock)
            .source("svix", "standard-webhooks")
            .with("secrets", r#"["file:sw_secret"]"#),
    );
    let path = write_config(dir.path(), &options);
    let config = switchyard::config::Config::load(&path).unwrap();
    let problems = switchyard::app::check(&config).await;
    let line = problems
        .iter()
        .find(|p| p.starts_with("sources.svix.secrets[0]"))
        .unwrap_or_else(|| panic!("{problems:?}"));
    assert!(line.contains("Standard Webhooks key"), "{line}");
    assert!(
        !line.contains("not base64"),
        "the secret is never echoed: {line}"
    );
}
