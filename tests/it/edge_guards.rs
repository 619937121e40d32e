//! Edge hardening: per-source address allowlists (inline and from a file
//! that reloads), `X-Forwarded-For` believed only from trusted proxies, and
//! load shedding by concurrency (503) and rate (429) with `Retry-After`,
//! and the guards against slow bodies: headers checked before the body is
//! read, a cap on one client's bodies in flight, a minimum body rate.
//! Whatever is refused or shed persisted nothing.

use crate::support::*;
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
    let signature = switchyard::ingest::scheme::stripe::signature_header(SECRET, now(), body);
    let mut headers = vec![("stripe-signature", signature.as_str())];
    if let Some(forwarded) = forwarded {
        headers.push(("x-forwarded-for", forwarded));
    }
    hub.post("/webhooks/stripe", body, &headers).await
}

#[tokio::test]
async fn addresses_outside_the_allowlist_get_403_and_forwarded_headers_are_ignored() {
    let (hub, _mock) = crm_hub(|options| {
        options.stripe_extra = r#"allow_ips = ["192.0.2.0/24", "2001:db8::/32"]"#.into();
    })
    .await;
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
    let mut options = HubOptions::new(crm_routes(&mock));
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
    let forged = switchyard::ingest::scheme::stripe::signature_header("whsec_forged", now(), &body);
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
    options.routes = crm_routes(&mock).build();
    options.admin = true;
    // The held body may trickle for as long as the test needs.
    options.server_extra.push_str("\nmin_body_rate = \"1B\"");
    let hub = TestHub::start(options).await;

    // A request takes the one slot and keeps it while its body trickles in.
    let held = event("evt_held");
    let half = held.len() / 2;
    let mut head = signed_head(&held).into_bytes();
    head.extend_from_slice(&held[..half]);
    let mut slow = raw_connection(hub.hub.addr, &head).await;
    // Probes carry a bad signature (with a current timestamp, so they get
    // past the header checks to the slots), so one that got in persists
    // nothing.
    let probe = event("evt_probe");
    let bad_signature = format!("t={},v1=00", now());
    eventually(Duration::from_secs(10), "the slot is taken", || async {
        let (status, _) = hub
            .post(
                "/webhooks/stripe",
                &probe,
                &[("stripe-signature", bad_signature.as_str())],
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
    let (hub, _mock) = crm_hub(|options| {
        options.server_extra = "rate_limit = { per_minute = 1, burst = 3 }".into();
    })
    .await;
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
    let (hub, mock) = crm_hub(|options| {
        options.admin = true;
        options.server_extra = "watch_config = false".into();
    })
    .await;
    for n in 0..3 {
        let (status, _) = hub.send(&event(&format!("evt_reload_rate_{n}"))).await;
        assert_eq!(status, 200);
    }
    let mut options = HubOptions::new(crm_routes(&mock));
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

/// The head of a signed POST of `body` from `client` (via a trusted proxy),
/// signed at `timestamp`.
fn head_from(body: &[u8], client: &str, timestamp: i64) -> String {
    format!(
        "POST /webhooks/stripe HTTP/1.1\r\nHost: switchyard\r\nContent-Type: application/json\r\n\
         X-Forwarded-For: {client}\r\nStripe-Signature: {}\r\nContent-Length: {}\r\n\r\n",
        switchyard::ingest::scheme::stripe::signature_header(SECRET, timestamp, body),
        body.len()
    )
}

/// A stale signed timestamp (`t=1`) is refused from the headers alone: the
/// answer comes without a byte of the body, so such requests cannot hold
/// slots while they dribble one.
#[tokio::test]
async fn a_stale_timestamp_is_refused_before_the_body_is_read() {
    let (hub, _mock) = crm_hub(|options| {
        options.server_extra = "body_read_timeout = \"60s\"".into();
    })
    .await;
    let body = event("evt_stale");
    let mut stalled =
        raw_connection(hub.hub.addr, head_from(&body, "203.0.113.1", 1).as_bytes()).await;
    let (status, answer) = read_response(&mut stalled, Duration::from_secs(10)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("bad_signature"), "{answer}");
    assert_eq!(hub.persisted("crm", "stripe").await, 0);
}

/// One client address may be sending only its share of bodies at once;
/// past it, 503 with `Retry-After`, while other clients are served.
#[tokio::test]
async fn one_client_cannot_hold_more_than_its_share_of_body_reads() {
    let (hub, _mock) = crm_hub(|options| {
        options.server_extra =
            "max_bodies_per_client = 2\nmin_body_rate = \"1B\"\ntrusted_proxies = [\"127.0.0.1\"]"
                .into();
        options.admin = true;
    })
    .await;
    let greedy = "203.0.113.7";
    let mut held = Vec::new();
    for n in 0..2 {
        let body = event(&format!("evt_held_{n}"));
        let half = body.len() / 2;
        let mut bytes = head_from(&body, greedy, now()).into_bytes();
        bytes.extend_from_slice(&body[..half]);
        held.push((raw_connection(hub.hub.addr, &bytes).await, body, half));
    }
    let third = event("evt_third");
    eventually(
        Duration::from_secs(10),
        "the client's share is taken",
        || async {
            let mut stream = raw_connection(
                hub.hub.addr,
                &[head_from(&third, greedy, now()).as_bytes(), &third[..]].concat(),
            )
            .await;
            read_response(&mut stream, Duration::from_secs(5)).await.0 == 503
        },
    )
    .await;
    let (status, _) = post_from(&hub, &event("evt_other"), Some("198.51.100.9")).await;
    assert_eq!(status, 200, "another client is served");
    let text = hub.metrics_text().await;
    assert!(
        text.contains(
            r#"switchyard_ingest_shed_requests_total{source="stripe",reason="client_bodies"}"#
        ),
        "{text}"
    );
    for (mut stream, body, half) in held {
        stream.write_all(&body[half..]).await.unwrap();
        let (status, answer) = read_response(&mut stream, Duration::from_secs(10)).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, _) = post_from(&hub, &third, Some(greedy)).await;
    assert_eq!(status, 200, "its share is free again");
}

/// A body arriving slower than `min_body_rate` (after a 2 s grace) is cut
/// off with 408 long before `body_read_timeout`.
#[tokio::test]
async fn a_body_slower_than_the_minimum_rate_gets_408() {
    let (hub, _mock) = crm_hub(|options| {
        options.server_extra = "body_read_timeout = \"60s\"\nmin_body_rate = \"100B\"".into();
    })
    .await;
    let body = event("evt_dribble");
    let stream = raw_connection(
        hub.hub.addr,
        head_from(&body, "203.0.113.2", now()).as_bytes(),
    )
    .await;
    let (mut reader, mut writer) = stream.into_split();
    let dribble = tokio::spawn(async move {
        for byte in body {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let received = tokio::time::timeout(Duration::from_secs(15), async {
        use tokio::io::AsyncReadExt;
        let mut received = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
        }
        received
    })
    .await
    .expect("cut off well before body_read_timeout");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    dribble.abort();
    assert_eq!(hub.persisted("crm", "stripe").await, 0);
}
