//! Edge hardening: per-source address allowlists (inline and from a file
//! that reloads), `X-Forwarded-For` believed only from trusted proxies, and
//! load shedding by concurrency (503) and rate (429) with `Retry-After`.
//! Whatever is refused or shed persisted nothing.

use crate::harness::*;
use reqwest::Method;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn event(id: &str) -> Vec<u8> {
    synthetic_event(
        id,
        "customer.created",
        serde_json::json!({"id": "cus_edge", "email": null, "name": null}),
    )
}

/// POSTs `body` signed, with an optional `X-Forwarded-For`.
async fn post_from(
    hub: &TestHub,
    body: &[u8],
    forwarded: Option<&str>,
) -> (u16, serde_json::Value) {
    let signature = switchyard::ingest::signature::signature_header(SECRET, now(), body);
    let mut headers = vec![("stripe-signature", signature.as_str())];
    if let Some(forwarded) = forwarded {
        headers.push(("x-forwarded-for", forwarded));
    }
    hub.post("/webhooks/stripe", body, &headers).await
}

#[tokio::test]
async fn addresses_outside_the_allowlist_get_403_and_forwarded_headers_are_ignored() {
    let mock = MockDownstream::start().await;
    let mut options = HubOptions::new(crm_routes(&mock, ""));
    options.stripe_extra = r#"allow_ips = ["192.0.2.0/24", "2001:db8::/32"]"#.into();
    let hub = TestHub::start(options).await;
    // The test client is 127.0.0.1; it is no proxy of ours, so what it
    // claims to forward for does not count.
    for forwarded in [None, Some("192.0.2.7")] {
        let (status, answer) = post_from(&hub, &event(&unique("evt_ip_")), forwarded).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (403, Some("address_not_allowed")),
            "{forwarded:?}: {answer}"
        );
    }
    assert_eq!(hub.persisted("crm", "stripe").await, 0);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_counts_and_the_list_file_reloads() {
    let mock = MockDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("ips.txt");
    std::fs::write(&list, "# test list\n192.0.2.0/24\n").unwrap();
    let mut options = HubOptions::new(crm_routes(&mock, ""));
    options.dir = Some(Arc::new(dir));
    options.admin = true;
    options.server_extra = "watch_config = false\ntrusted_proxies = [\"127.0.0.1\"]".into();
    options.stripe_extra = "allow_ips_file = \"ips.txt\"".into();
    let hub = TestHub::start(options).await;

    let (status, answer) = post_from(&hub, &event("evt_ip_ok"), Some("192.0.2.7")).await;
    assert_eq!(status, 200, "{answer}");
    // The right-most address the proxy did not add is the client: what the
    // caller wrote to the left of it is not believed.
    let (status, _) = post_from(&hub, &event("evt_ip_2"), Some("192.0.2.7, 198.51.100.1")).await;
    assert_eq!(status, 403);
    // The proxy itself is not on the list.
    let (status, _) = post_from(&hub, &event("evt_ip_3"), None).await;
    assert_eq!(status, 403);
    let (status, _) = post_from(&hub, &event("evt_ip_4"), Some("not-an-address")).await;
    assert_eq!(status, 403);
    // An allowed address is no pass: the signature still decides.
    let body = event("evt_ip_5");
    let forged = switchyard::ingest::signature::signature_header("whsec_forged", now(), &body);
    let (status, answer) = hub
        .post(
            "/webhooks/stripe",
            &body,
            &[
                ("stripe-signature", &forged),
                ("x-forwarded-for", "192.0.2.7"),
            ],
        )
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("bad_signature"))
    );
    assert_eq!(hub.persisted("crm", "stripe").await, 1);

    // The list is data: edit it, reload, and the new addresses count.
    std::fs::write(&list, "198.51.100.0/24\n").unwrap();
    let (status, answer) = hub.admin(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = post_from(&hub, &event("evt_ip_6"), Some("192.0.2.7, 198.51.100.1")).await;
    assert_eq!(status, 200);
    let (status, _) = post_from(&hub, &event("evt_ip_7"), Some("192.0.2.7")).await;
    assert_eq!(status, 403);

    // A broken list is refused with its location; the running one stays.
    std::fs::write(&list, "198.51.100.0/24\n300.1.1.1\n").unwrap();
    let (status, answer) = hub.admin(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, 422, "{answer}");
    let problems = answer["problems"].to_string();
    assert!(
        problems.contains("sources.stripe.allow_ips_file") && problems.contains("line 2"),
        "{problems}"
    );
    let (status, _) = post_from(&hub, &event("evt_ip_8"), Some("198.51.100.1")).await;
    assert_eq!(status, 200);
    assert_eq!(hub.persisted("crm", "stripe").await, 3);
}

#[tokio::test]
async fn a_source_at_its_concurrency_limit_sheds_with_503_and_persists_nothing() {
    let mut options = HubOptions::new(String::new());
    options.stripe_extra = "max_concurrency = 1".into();
    sheds_while_one_request_is_held(options, "source_concurrency").await;
}

#[tokio::test]
async fn the_hub_at_its_global_concurrency_limit_sheds_with_503_and_persists_nothing() {
    let mut options = HubOptions::new(String::new());
    options.server_extra = "max_concurrency = 1".into();
    sheds_while_one_request_is_held(options, "global_concurrency").await;
}

/// With one request slot, holds it with a slow body and checks that others
/// are shed (503, `Retry-After: 1`, counted under `reason`), persist
/// nothing, and are accepted once the slot is free.
async fn sheds_while_one_request_is_held(mut options: HubOptions, reason: &str) {
    let mock = MockDownstream::start().await;
    options.routes = crm_routes(&mock, "");
    options.admin = true;
    let hub = TestHub::start(options).await;

    // A request takes the one slot and keeps it while its body trickles in.
    let held = event("evt_held");
    let half = held.len() / 2;
    let mut head = signed_head(&held).into_bytes();
    head.extend_from_slice(&held[..half]);
    let mut slow = raw_connection(hub.hub.addr, &head).await;
    // Probes carry a bad signature, so one that got in persists nothing.
    let probe = event("evt_probe");
    eventually(Duration::from_secs(10), "the slot is taken", || async {
        let (status, _) = hub
            .post(
                "/webhooks/stripe",
                &probe,
                &[("stripe-signature", "t=1,v1=00")],
            )
            .await;
        status == 503
    })
    .await;

    let shed_body = event("evt_shed");
    let response = hub.send_response(&shed_body).await;
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["error"], "shed", "{answer}");
    assert_eq!(
        hub.persisted("crm", "stripe").await,
        0,
        "shed requests persist nothing"
    );
    let text = hub.metrics_text().await;
    assert!(
        text.lines().any(|line| line.starts_with(&format!(
            r#"switchyard_ingest_shed_requests_total{{source="stripe",reason="{reason}"}}"#
        ))),
        "{text}"
    );

    // The held request completes normally, and the slot is free again:
    // the provider's retry of the shed event is accepted.
    slow.write_all(&held[half..]).await.unwrap();
    let (status, body) = read_response(&mut slow, Duration::from_secs(10)).await;
    assert_eq!(status, 200, "{body}");
    let (status, answer) = hub.send(&shed_body).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("accepted")));
    assert_eq!(hub.persisted("crm", "stripe").await, 2);
}

#[tokio::test]
async fn a_global_rate_sheds_with_429_and_retry_after() {
    let mock = MockDownstream::start().await;
    let mut options = HubOptions::new(crm_routes(&mock, ""));
    options.server_extra = "rate_limit = { per_minute = 1, burst = 3 }".into();
    let hub = TestHub::start(options).await;
    for n in 0..3 {
        let (status, _) = hub.send(&event(&format!("evt_rate_{n}"))).await;
        assert_eq!(status, 200);
    }
    let body = event("evt_rate_over");
    let response = hub.send_response(&body).await;
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(hub.persisted("crm", "stripe").await, 3);
}

#[tokio::test]
async fn a_source_rate_limit_added_by_a_reload_applies_at_once() {
    let mock = MockDownstream::start().await;
    let mut options = HubOptions::new(crm_routes(&mock, ""));
    options.admin = true;
    options.server_extra = "watch_config = false".into();
    let hub = TestHub::start(options).await;
    for n in 0..3 {
        let (status, _) = hub.send(&event(&format!("evt_reload_rate_{n}"))).await;
        assert_eq!(status, 200);
    }
    let mut options = HubOptions::new(crm_routes(&mock, ""));
    options.admin = true;
    options.server_extra = "watch_config = false".into();
    options.stripe_extra = "rate_limit = { per_minute = 1, burst = 1 }".into();
    assert_eq!(write_config(hub.dir.path(), &options), hub.config_path);
    let (status, answer) = hub.admin(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = hub.send(&event("evt_reload_rate_a")).await;
    assert_eq!(status, 200);
    let (status, answer) = hub.send(&event("evt_reload_rate_b")).await;
    assert_eq!((status, answer["error"].as_str()), (429, Some("shed")));
    assert_eq!(hub.persisted("crm", "stripe").await, 4);
}
