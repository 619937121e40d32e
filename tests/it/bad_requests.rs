//! The bad-request sweep: hostile or broken requests of every shape get the
//! right 4xx (or a closed connection), persist nothing, and leave the hub
//! serving valid events.

use crate::support::*;
use std::time::Duration;
use switchyard::ingest::scheme::stripe::signature_header;

async fn hub() -> TestHub {
    let (hub, _mock) = crm_hub(|options| {
        options.server_extra = "header_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"".into();
        // Room for 100 000 brackets.
        options.max_body = "256KiB";
    })
    .await;
    hub
}

/// The hub still takes a valid event, and the bus holds exactly `expected`
/// events: the refused ones were never persisted.
async fn still_serving(hub: &TestHub, expected: usize) {
    let body = synthetic_event(
        &unique("evt_after_"),
        "customer.created",
        serde_json::json!({"id": "cus_after", "email": null, "name": null}),
    );
    assert_eq!(hub.persisted("crm", "stripe").await, expected);
    let (status, answer) = hub.send(&body).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("accepted")));
    assert_eq!(hub.persisted("crm", "stripe").await, expected + 1);
}

fn valid_event() -> Vec<u8> {
    synthetic_event(
        &unique("evt_"),
        "customer.created",
        serde_json::json!({"id": "cus_1", "email": null, "name": null}),
    )
}

#[tokio::test]
async fn missing_repeated_and_garbled_signature_headers_get_400() {
    let hub = hub().await;
    let body = valid_event();
    let good = signature_header(SECRET, now(), &body);
    let (status, answer) = hub.post("/webhooks/stripe", &body, &[]).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("bad_signature"))
    );

    // Two headers, even two valid ones: which one was meant is not guessed.
    let (status, answer) = hub
        .post(
            "/webhooks/stripe",
            &body,
            &[("stripe-signature", &good), ("stripe-signature", &good)],
        )
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("bad_signature"))
    );
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("more than once"),
        "{answer}"
    );

    let long = "v1=00,".repeat(2000);
    for garbled in [
        "",
        ",,,",
        "t=",
        "t=abc,v1=00",
        "v1=00",
        "t=1",
        "t=1,v1=",
        &long,
    ] {
        let (status, answer) = hub
            .post("/webhooks/stripe", &body, &[("stripe-signature", garbled)])
            .await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("bad_signature")),
            "{garbled:?}: {answer}"
        );
    }
    // Bytes that are not text.
    let response = hub
        .client
        .post(hub.url("/webhooks/stripe"))
        .header("content-type", "application/json")
        .header(
            "stripe-signature",
            reqwest::header::HeaderValue::from_bytes(b"t=1,v1=\xff\xfe").unwrap(),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    // A header far beyond any sane size is refused by the HTTP layer.
    let response = hub
        .client
        .post(hub.url("/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", "v1=".repeat(300_000))
        .body(body.clone())
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status().as_u16(), 431);
    }
    still_serving(&hub, 0).await;
}

#[tokio::test]
async fn bodies_empty_oversized_not_utf8_not_objects_or_too_deep_get_4xx() {
    let hub = hub().await;
    let nested_deep = {
        let mut body = br#"{"id":"evt_deep","type":"customer.created","data":"#.to_vec();
        body.extend(std::iter::repeat_n(b'[', 100_000));
        body.extend(std::iter::repeat_n(b']', 100_000));
        body.push(b'}');
        body
    };
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("empty", Vec::new(), 400, "bad_event"),
        ("whitespace", b"  \n ".to_vec(), 400, "bad_event"),
        ("100 000 brackets", vec![b'['; 100_000], 400, "bad_event"),
        ("deeply nested inside an event", nested_deep, 400, "bad_event"),
        ("a string", br#""customer.created""#.to_vec(), 400, "bad_event"),
        ("a number", b"42".to_vec(), 400, "bad_event"),
        ("null", b"null".to_vec(), 400, "bad_event"),
        ("an array", br#"[{"id":"evt_a","type":"customer.created"}]"#.to_vec(), 400, "bad_event"),
        ("no id", br#"{"type":"customer.created","data":{}}"#.to_vec(), 400, "bad_event"),
        ("no type", br#"{"id":"evt_no_type"}"#.to_vec(), 400, "bad_event"),
        ("trailing garbage", br#"{"id":"evt_t","type":"customer.created"} x"#.to_vec(), 400, "bad_event"),
        ("truncated", br#"{"id":"evt_t","type":"customer.cr"#.to_vec(), 400, "bad_event"),
        ("invalid UTF-8 in the id", b"{\"id\":\"evt_\xff\",\"type\":\"customer.created\"}".to_vec(), 400, "bad_event"),
        (
            "invalid UTF-8 in a field ingest skips",
            b"{\"id\":\"evt_utf\",\"type\":\"customer.created\",\"data\":{\"object\":{\"name\":\"\xc3\x28\"}}}".to_vec(),
            400,
            "bad_event",
        ),
    ];
    for (name, body, status, code) in cases {
        let (got, answer) = hub.send(&body).await;
        assert_eq!(
            (got, answer["error"].as_str()),
            (status, Some(code)),
            "{name}: {answer}"
        );
    }
    // Nesting within the cap but beyond what a consumer's JSON parser takes.
    let mut deep = br#"{"id":"evt_deep2","type":"customer.created","data":"#.to_vec();
    deep.extend(std::iter::repeat_n(b'[', 1_000));
    deep.extend(std::iter::repeat_n(b']', 1_000));
    deep.push(b'}');
    let (status, answer) = hub.send(&deep).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("bad_event")),
        "{answer}"
    );
    still_serving(&hub, 0).await;
}

#[tokio::test]
async fn a_body_at_the_cap_is_taken_and_one_byte_more_is_413() {
    let hub = hub().await;
    let cap = 256 * 1024;
    let sized = |id: &str, size: usize| {
        let mut body = synthetic_event(id, "customer.created", serde_json::json!({"pad": ""}));
        let pad = size - body.len();
        let at = body.windows(8).position(|w| w == br#""pad":"""#).unwrap() + 7;
        body.splice(at..at, std::iter::repeat_n(b'x', pad));
        assert_eq!(body.len(), size);
        body
    };
    let (status, answer) = hub.send(&sized("evt_at_cap", cap)).await;
    assert_eq!(status, 200, "{answer}");
    let over = sized("evt_over_cap", cap + 1);
    let (status, answer) = hub.send(&over).await;
    assert_eq!((status, answer["error"].as_str()), (413, Some("too_large")));
    // Without a declared length (chunked), the cap holds all the same.
    let header = signature_header(SECRET, now(), &over);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        over.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let response = hub
        .client
        .post(hub.url("/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", header)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    still_serving(&hub, 1).await;
}

#[tokio::test]
async fn a_client_that_stalls_in_its_headers_is_disconnected() {
    let hub = hub().await;
    let body = valid_event();
    let head = signed_head(&body);
    // Half the head, then nothing.
    let mut stalled = raw_connection(hub.hub.addr, &head.as_bytes()[..head.len() / 2]).await;
    // And a connection that never sends a byte.
    let mut silent = raw_connection(hub.hub.addr, b"").await;
    for stream in [&mut stalled, &mut silent] {
        let received = read_until_closed(stream, Duration::from_secs(10)).await;
        let text = String::from_utf8_lossy(&received);
        assert!(
            received.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    still_serving(&hub, 0).await;
}

#[tokio::test]
async fn a_client_that_stalls_in_its_body_gets_408_and_is_disconnected() {
    let hub = hub().await;
    let body = valid_event();
    let mut request = signed_head(&body).into_bytes();
    request.extend_from_slice(&body[..body.len() / 2]);
    let mut stalled = raw_connection(hub.hub.addr, &request).await;
    let received = read_until_closed(&mut stalled, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    still_serving(&hub, 0).await;
}
