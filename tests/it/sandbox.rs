//! Plugins are sandboxed: a plugin that loops, eats memory, recurses, traps,
//! overstays its wall clock, reaches for a connection it was not granted,
//! floods the logs, calls out too often or reads a huge answer fails only its
//! own delivery, with a clear reason in the logs and in
//! `switchyard_plugin_sandbox_stops_total`, and nobody else notices.
//! Connections reach no private, link-local or metadata address unless
//! allowed, and follow no redirect to another host.

use crate::support::*;
use serde_json::Value;
use std::time::{Duration, Instant};
use switchyard::app::RunningHub;
use switchyard::bus::ParkQueue;

/// A `good` crm consumer beside a `bad` hostile one in `mode`, both routed
/// `customer.*`. The hostile one gets 2 attempts.
fn routes(good: &MockDownstream, mode: &str, limits: &str) -> Routes {
    Routes::new()
        .connection("crm", good)
        .connection("spare", good)
        .consumer("good", "crm", &["crm"])
        .consumer("bad", "hostile", &["spare"])
        .retry(TWO_ATTEMPTS)
        .limits(limits)
        .with("settings", &format!(r#"{{ mode = "{mode}" }}"#))
        .route(&["customer.*"], &["good", "bad"])
}

const TWO_ATTEMPTS: &str = r#"{ first = "10ms", max = "20ms", attempts = 2 }"#;

const TIGHT: &str = r#"{ cpu = "50ms", wall = "5s", memory = "8MiB" }"#;

/// How often the sandbox stopped `consumer` for `reason`, from `/metrics`.
async fn sandbox_stops(hub: &RunningHub, consumer: &str, reason: &str) -> u64 {
    let metrics = hub.control().metrics_text().await.unwrap();
    let series = format!(
        "switchyard_plugin_sandbox_stops_total{{consumer=\"{consumer}\",reason=\"{reason}\"}} "
    );
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.trim().parse().unwrap())
}

/// The captured warnings about `consumer` with the `reason` field `reason`.
fn sandbox_log_lines(consumer: &str, reason: &str) -> Vec<Value> {
    captured_logs()
        .into_iter()
        .filter(|line| line["fields"]["consumer"] == consumer && line["fields"]["reason"] == reason)
        .collect()
}

/// The reasons in `consumer`'s dead-letter queue.
async fn dead_reasons(hub: &TestHub, consumer: &str) -> Vec<String> {
    let bus = hub.hub.bus();
    let dead = bus.dead_letters(consumer, ParkQueue::DeadLetter).await;
    dead.unwrap().into_iter().map(|d| d.reason).collect()
}

/// Sends the `customer.created` fixture, waits for every queue to drain, and
/// returns the reason `consumer` dead-lettered it for (exactly once).
async fn one_dead_letter(hub: &TestHub, consumer: &str) -> String {
    assert_eq!(hub.send_fixture("customer.created.json").await.0, 200);
    hub.drained(Duration::from_secs(60)).await;
    let reasons = dead_reasons(hub, consumer).await;
    assert_eq!(reasons.len(), 1, "`{consumer}` dead-lettered one event");
    reasons[0].clone()
}

/// Runs one event through a hostile consumer; returns its dead-letter reason.
/// The sandbox must have counted a stop for `stop`.
async fn dead_letter_reason(mode: &str, limits: &str, stop: &str) -> String {
    let good = MockDownstream::start().await;
    let hub = TestHub::start(HubOptions::new(routes(&good, mode, limits))).await;
    let reason = one_dead_letter(&hub, "bad").await;
    // The neighbour delivered its effect exactly once.
    assert_eq!(
        good.effects().len(),
        1,
        "good consumer unaffected by `{mode}`"
    );
    assert_eq!(hub.status_of("good").await.stats.delivered, 1);
    assert!(
        sandbox_stops(&hub.hub, "bad", stop).await >= 1,
        "`{mode}` counted as a `{stop}` stop"
    );
    hub.hub.shutdown().await;
    reason
}

/// Every event gets a fresh instance: statics and heap pages an earlier event
/// dirtied in the same pool slot are reset (regression guard for the
/// pooling allocator's page-reset settings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_state_survives_from_one_event_to_the_next() {
    let good = MockDownstream::start().await;
    let routes = routes(&good, "remember", TIGHT).concurrency(1);
    let hub = TestHub::start(HubOptions::new(routes)).await;
    let events = 12;
    for n in 0..events {
        let body = synthetic_event(
            &unique(&format!("evt_mem{n}_")),
            "customer.created",
            serde_json::json!({"id": format!("cus_mem{n}"), "object": "customer"}),
        );
        assert_eq!(hub.send(&body).await.0, 200);
    }
    hub.drained(Duration::from_secs(60)).await;
    let parked = hub.hub.bus().dead_letters("bad", ParkQueue::Review).await;
    let reasons: Vec<String> = parked.unwrap().into_iter().map(|d| d.reason).collect();
    assert_eq!(reasons.len(), events, "{reasons:?}");
    for reason in &reasons {
        assert!(
            reason.ends_with("1 999 0"),
            "an instance saw an earlier event's memory: {reason}"
        );
    }
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_by_the_cpu_budget() {
    let reason = dead_letter_reason("loop", TIGHT, "cpu").await;
    assert_eq!(reason, "gave up after 2 attempts: cpu budget exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_stopped_by_the_memory_cap() {
    let reason = dead_letter_reason("memory", TIGHT, "memory").await;
    assert_eq!(reason, "gave up after 2 attempts: memory limit exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_traps_only_its_own_instance() {
    let reason = dead_letter_reason("trap", TIGHT, "trap").await;
    assert!(
        reason.starts_with("gave up after 2 attempts: plugin trapped:"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_traps() {
    let reason = dead_letter_reason("recurse", TIGHT, "stack").await;
    assert_eq!(
        reason,
        "gave up after 2 attempts: plugin trapped: wasm trap: call stack exhausted"
    );
    // Big frames overrun the guest's own stack in linear memory first: to
    // the host that is an out-of-bounds access like any other.
    let reason = dead_letter_reason("recurse_frames", TIGHT, "trap").await;
    assert_eq!(
        reason,
        "gave up after 2 attempts: plugin trapped: wasm trap: out of bounds memory access"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_was_not_granted_cannot_be_reached() {
    let reason = dead_letter_reason("ungranted", TIGHT, "not_granted").await;
    assert_eq!(
        reason,
        "connection `forbidden` is not granted to consumer `bad`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_stuck_in_a_host_call_is_stopped_by_the_wall_clock() {
    // The downstream takes 10 s; the connection would wait 30 s; the plugin's
    // wall-clock budget (host calls included) is 1 s.
    let slow = MockDownstream::start().await;
    slow.set_default(Answer::status(200).delayed(Duration::from_secs(10)));
    let text = Routes::new()
        .connection("crm", &slow)
        .timeout("30s")
        .consumer("stuck", "crm", &["crm"])
        .retry(r#"{ first = "10ms", max = "20ms", attempts = 1 }"#)
        .limits(r#"{ wall = "1s" }"#)
        .route(&["customer.*"], &["stuck"]);
    let hub = TestHub::start(HubOptions::new(text)).await;
    assert_eq!(
        one_dead_letter(&hub, "stuck").await,
        "gave up after 1 attempts: wall-clock budget of 1s exceeded"
    );
    assert_eq!(sandbox_stops(&hub.hub, "stuck", "wall_clock").await, 1);
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_fails_twice_succeeds_on_the_third_attempt() {
    let good = MockDownstream::start().await;
    let text =
        routes(&good, "flaky", TIGHT).retry(r#"{ first = "10ms", max = "20ms", attempts = 5 }"#);
    let hub = TestHub::start(HubOptions::new(text)).await;
    assert_eq!(hub.send_fixture("customer.created.json").await.0, 200);
    hub.drained(Duration::from_secs(30)).await;
    let bad = hub.status_of("bad").await;
    assert_eq!(
        (bad.stats.retried, bad.stats.delivered, bad.dead_letters),
        (2, 1, 0)
    );
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_supplied_host_headers_are_dropped_and_credentials_injected() {
    let spare = MockDownstream::start().await;
    let text = routes(&spare, "spoof", TIGHT).with_in(
        "connections.spare",
        "auth",
        r#"{ bearer = "file:crm_token" }"#,
    );
    let hub = TestHub::start(HubOptions::new(text)).await;
    assert_eq!(hub.send_fixture("customer.created.json").await.0, 200);
    hub.drained(Duration::from_secs(30)).await;
    let spoofed = spare
        .received()
        .into_iter()
        .find(|r| r.path == "/spoof")
        .expect("the spoof call arrived");
    assert_eq!(
        spoofed.header("authorization"),
        Some(format!("Bearer {CRM_TOKEN}").as_str())
    );
    assert_eq!(spoofed.header("cookie"), None);
    assert_eq!(
        spoofed.header("host"),
        Some(spare.addr.to_string().as_str())
    );
    assert_eq!(
        spoofed.header("idempotency-key"),
        Some("bad:stripe:evt_1PgKq3LzX8bYw3NcCusCrt01:1")
    );
    assert_eq!(spoofed.header("x-custom"), Some("kept"));
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_calls_per_event_are_capped() {
    let spare = MockDownstream::start().await;
    let limits = r#"{ cpu = "50ms", wall = "5s", memory = "8MiB", http_calls = 3 }"#;
    let reason = {
        let hub = TestHub::start(HubOptions::new(routes(&spare, "calls", limits))).await;
        let reason = one_dead_letter(&hub, "bad").await;
        assert_eq!(sandbox_stops(&hub.hub, "bad", "http_calls").await, 1);
        hub.hub.shutdown().await;
        reason
    };
    assert_eq!(
        reason,
        "call 3: limit exceeded: at most 3 outbound calls per event"
    );
    let calls = spare
        .received()
        .iter()
        .filter(|r| r.path == "/call")
        .count();
    assert_eq!(calls, 3);
}

/// One consumer per hostile mode in `modes` beside a healthy `good` one;
/// `customer.created` goes to `good` alone (the baseline), `customer.updated`
/// to everyone. Each hostile consumer `h_<mode>` gets 2 attempts.
fn zoo_routes(good: &MockDownstream, spare: &MockDownstream, huge: &MockDownstream) -> Routes {
    let mut routes = Routes::new()
        .connection("crm", good)
        .connection("spare", spare)
        .connection("huge", huge)
        .consumer("good", "crm", &["crm"]);
    let mut everyone = vec!["good"];
    for (name, settings) in ZOO {
        // Only the loop is meant to hit the CPU budget; the others get room
        // to spare on a loaded machine, so each is stopped for its own reason.
        let cpu = if name == "h_loop" { "50ms" } else { "2s" };
        routes = routes
            .consumer(name, "hostile", &["spare", "huge"])
            .retry(TWO_ATTEMPTS)
            .with("quarantine_after", "0")
            .limits(&format!(
                r#"{{ cpu = "{cpu}", wall = "10s", memory = "8MiB", http_calls = 3, response_body = "64KiB" }}"#
            ))
            .with("settings", settings);
        everyone.push(name);
    }
    routes
        .route(&["customer.created"], &["good"])
        .route(&["customer.updated"], &everyone)
}

/// The hostile consumers of the zoo: name and settings.
const ZOO: [(&str, &str); 8] = [
    ("h_loop", r#"{ mode = "loop" }"#),
    ("h_memory", r#"{ mode = "memory" }"#),
    ("h_recurse", r#"{ mode = "recurse" }"#),
    ("h_trap", r#"{ mode = "trap" }"#),
    ("h_ungranted", r#"{ mode = "ungranted" }"#),
    ("h_logs", r#"{ mode = "logs" }"#),
    ("h_calls", r#"{ mode = "calls" }"#),
    (
        "h_huge",
        r#"{ mode = "get", connection = "huge", path = "/huge" }"#,
    ),
];

/// Sends `count` customer events of `event_type` and returns how long it
/// took until `good` had applied every one of them.
async fn good_batch(
    hub: &TestHub,
    good: &MockDownstream,
    run: &str,
    event_type: &str,
    count: usize,
) -> Duration {
    let started = Instant::now();
    let mut paths = Vec::new();
    for n in 0..count {
        let customer = format!("cus_{run}_{n}");
        let body = synthetic_event(
            &format!("evt_{customer}_{event_type}"),
            event_type,
            serde_json::json!({"id": customer, "object": "customer", "email": null, "name": null}),
        );
        assert_eq!(hub.send(&body).await.0, 200);
        paths.push(format!("/contacts/{customer}"));
    }
    eventually(
        Duration::from_secs(120),
        &format!("`good` applied every {event_type}"),
        || async {
            let effects = good.effects();
            paths
                .iter()
                .all(|path| effects.iter().any(|r| &r.path == path))
        },
    )
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_stopped_and_leave_a_healthy_neighbour_unaffected() {
    const BATCH: usize = 12;
    captured_logs();
    let good = MockDownstream::start().await;
    let spare = MockDownstream::start().await;
    let huge = MockDownstream::start().await;
    huge.set_default(Answer::status(200).body(vec![b'x'; 4 << 20]));
    let hub = TestHub::start(HubOptions::new(zoo_routes(&good, &spare, &huge))).await;

    // Baseline: the healthy consumer alone.
    let baseline = good_batch(&hub, &good, "base", "customer.created", BATCH).await;
    // The same batch size again, now with every hostile consumer at work.
    let hostile = good_batch(&hub, &good, "zoo", "customer.updated", BATCH).await;
    hub.drained(Duration::from_secs(120)).await;
    eprintln!(
        "good consumer, {BATCH} events: baseline {baseline:?}, beside 8 hostile consumers {hostile:?}"
    );

    // The neighbour: everything, once, and no slower than a generous bound
    // (the hostile ones share its two CPU cores, so some slowdown is fair;
    // starvation is not).
    assert_eq!(good.effects().len(), 2 * BATCH);
    assert_one_key_per_effect(&good, crm_effect);
    let status = hub.status_of("good").await;
    assert_eq!(
        (status.stats.delivered, status.dead_letters),
        (2 * BATCH as u64, 0)
    );
    assert!(
        hostile <= baseline * 10 + Duration::from_secs(15),
        "the healthy consumer took {hostile:?} beside hostile ones, {baseline:?} alone"
    );

    // Each hostile consumer: every event ended where its policy says, each
    // stop counted under its reason and logged with it.
    let expected = [
        ("h_loop", "cpu", 2 * BATCH),
        ("h_memory", "memory", 2 * BATCH),
        ("h_recurse", "stack", 2 * BATCH),
        ("h_trap", "trap", 2 * BATCH),
        ("h_ungranted", "not_granted", BATCH),
        ("h_logs", "log_lines", BATCH),
        ("h_calls", "http_calls", BATCH),
        ("h_huge", "response_body", BATCH),
    ];
    for (name, reason, stops) in expected {
        let status = hub.status_of(name).await;
        if name == "h_logs" {
            // Chattiness is cut off, not punished: the events are delivered.
            assert_eq!(
                (status.stats.delivered, status.dead_letters),
                (BATCH as u64, 0),
                "{name}"
            );
        } else {
            assert_eq!(
                (status.stats.delivered, status.dead_letters),
                (0, BATCH as u64),
                "{name}"
            );
        }
        assert_eq!(
            sandbox_stops(&hub.hub, name, reason).await,
            stops as u64,
            "{name} stopped for `{reason}`"
        );
        assert_eq!(
            sandbox_log_lines(name, reason).len(),
            stops,
            "{name}: one `{reason}` warning per stop"
        );
    }
    // The log flood reached the logs as 100 lines per event, not 10 000.
    let flood = captured_logs()
        .into_iter()
        .filter(|line| line["fields"]["consumer"] == "h_logs" && line["fields"]["plugin"] == true)
        .count();
    assert_eq!(flood, 100 * BATCH);
    let cut = &sandbox_log_lines("h_logs", "log_lines")[0];
    assert_eq!(
        cut["fields"]["message"],
        "plugin logs cut by its sandbox: 10000 log lines in one event, 9900 dropped (at most 100 are written)"
    );
    assert_eq!(
        dead_reasons(&hub, "h_huge").await[0],
        "huge GET /huge: limit exceeded: response body larger than 65536 bytes"
    );
    // The call cap held for every event: 3 calls each reached `spare`.
    let calls = spare
        .received()
        .iter()
        .filter(|r| r.path == "/call")
        .count();
    assert_eq!(calls, 3 * BATCH);
    hub.hub.shutdown().await;
}

/// A downstream that answers 200 with a chunked body that never ends, and
/// counts the bytes it managed to write before the client hung up.
async fn endless_body_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let written = std::sync::Arc::new(AtomicU64::new(0));
    let counter = std::sync::Arc::clone(&written);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = std::sync::Arc::clone(&counter);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 16 << 10];
                let framed = [
                    format!("{:x}\r\n", chunk.len()).into_bytes(),
                    chunk,
                    b"\r\n".to_vec(),
                ]
                .concat();
                // Stops at the first failed write: the client has gone. A
                // client reading without a cap would keep this going until
                // the plugin's wall clock ran out.
                while socket.write_all(&framed).await.is_ok() {
                    counter.fetch_add(16 << 10, Ordering::Relaxed);
                }
            });
        }
    });
    (url, written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_response_body_is_cut_off_at_the_cap() {
    let (endless, written) = endless_body_server().await;
    let good = MockDownstream::start().await;
    let text = routes(
        &good,
        "get",
        r#"{ cpu = "50ms", wall = "5s", memory = "8MiB", response_body = "64KiB" }"#,
    )
    .with_in("connections.spare", "base_url", &format!("\"{endless}\""));
    let hub = TestHub::start(HubOptions::new(text)).await;
    assert_eq!(
        one_dead_letter(&hub, "bad").await,
        "spare GET /: limit exceeded: response body larger than 65536 bytes"
    );
    assert_eq!(sandbox_stops(&hub.hub, "bad", "response_body").await, 1);
    assert_eq!(good.effects().len(), 1, "the neighbour delivered");
    hub.hub.shutdown().await;
    // The host stopped reading near the cap; what the server got written
    // beyond it sat in socket buffers.
    let written = written.load(std::sync::atomic::Ordering::Relaxed);
    assert!(written < 64 << 20, "{written} bytes written to the host");
}

/// One `get` consumer per connection in `connections` (name, base URL,
/// extra keys of the connection); `customer.*` goes to all of them.
fn address_routes(connections: &[(&str, String, Keys)]) -> Routes {
    let mut routes = Routes::new();
    let mut names = Vec::new();
    for (name, base_url, extra) in connections {
        routes = routes
            .connection_at(name, base_url)
            .timeout("2s")
            .with_all(extra)
            .consumer(name, "hostile", &[*name])
            .retry(TWO_ATTEMPTS)
            .with(
                "settings",
                &format!(r#"{{ mode = "get", connection = "{name}", path = "/probe" }}"#),
            );
        names.push(*name);
    }
    routes.route(&["customer.*"], &names)
}

/// More `key = value` pairs of a table.
type Keys = &'static [(&'static str, &'static str)];

const ALLOW_PRIVATE: Keys = &[("allow_private", "true")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_refuse_loopback_private_and_metadata_addresses_unless_allowed() {
    captured_logs();
    let target = MockDownstream::start().await;
    let port = target.addr.port();
    let hub = TestHub::start(HubOptions::new(address_routes(&[
        // The configured literal loopback address: reachable.
        ("a_configured", format!("http://127.0.0.1:{port}"), &[]),
        // The same server by a name that resolves to loopback: refused...
        ("a_localhost", format!("http://localhost:{port}"), &[]),
        // ...unless the connection allows it.
        (
            "a_localhost_allowed",
            format!("http://localhost:{port}"),
            ALLOW_PRIVATE,
        ),
        ("a_private", format!("http://10.255.255.1:{port}"), &[]),
        ("a_link_local", format!("http://169.254.10.10:{port}"), &[]),
        // Metadata stays refused even with `allow_private`.
        (
            "a_metadata",
            "http://169.254.169.254".to_owned(),
            ALLOW_PRIVATE,
        ),
        (
            "a_metadata_name",
            "http://metadata.google.internal".to_owned(),
            ALLOW_PRIVATE,
        ),
    ])))
    .await;
    assert_eq!(hub.send_fixture("customer.created.json").await.0, 200);
    hub.drained(Duration::from_secs(30)).await;

    for delivered in ["a_configured", "a_localhost_allowed"] {
        let status = hub.status_of(delivered).await;
        assert_eq!(
            (status.stats.delivered, status.dead_letters),
            (1, 0),
            "{delivered}"
        );
    }
    assert_eq!(target.received().len(), 2, "only the allowed two arrived");

    let refused = [
        (
            "a_localhost",
            "`localhost` resolves to `",
            "a loopback address: refused unless the connection sets `allow_private = true`",
        ),
        (
            "a_private",
            "`10.255.255.1` is",
            "a private address: refused unless the connection sets `allow_private = true`",
        ),
        (
            "a_link_local",
            "`169.254.10.10` is",
            "a link-local address: refused unless the connection sets `allow_private = true`",
        ),
        (
            "a_metadata",
            "`169.254.169.254` is",
            "a cloud metadata address: never reachable",
        ),
        (
            "a_metadata_name",
            "`metadata.google.internal` is",
            "a cloud metadata host: never reachable",
        ),
    ];
    for (name, what, why) in refused {
        // Refused is permanent: straight to the dead-letter queue, with the
        // reason, after one attempt.
        let status = hub.status_of(name).await;
        assert_eq!(
            (
                status.stats.delivered,
                status.stats.retried,
                status.dead_letters
            ),
            (0, 0, 1),
            "{name}"
        );
        let reason = &dead_reasons(&hub, name).await[0];
        let prefix = format!("{name} GET /probe: not granted: connection `{name}`: {what}");
        assert!(
            reason.starts_with(&prefix) && reason.ends_with(why),
            "{name}: {reason}"
        );
        assert_eq!(sandbox_stops(&hub.hub, name, "address").await, 1, "{name}");
        let logged = sandbox_log_lines(name, "address");
        assert_eq!(logged.len(), 1, "{name}");
        let message = logged[0]["fields"]["message"].as_str().unwrap();
        assert!(message.ends_with(why), "{name}: {message}");
    }
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_host_is_not_followed() {
    captured_logs();
    let elsewhere = MockDownstream::start().await;
    let redirector = MockDownstream::start().await;
    redirector.set_default(
        Answer::status(302).header("location", &format!("{}/stolen?token=abc", elsewhere.url())),
    );
    let hub = TestHub::start(HubOptions::new(address_routes(&[(
        "r_redirected",
        redirector.url(),
        ALLOW_PRIVATE,
    )])))
    .await;
    let reason = one_dead_letter(&hub, "r_redirected").await;
    assert!(elsewhere.received().is_empty(), "the redirect was followed");
    assert_eq!(redirector.received().len(), 1);
    assert_eq!(
        reason,
        format!(
            "r_redirected GET /probe: not granted: connection `r_redirected` answered HTTP 302 with a redirect to another host (`{}`); redirects are not followed",
            elsewhere.url()
        )
    );
    assert_eq!(sandbox_stops(&hub.hub, "r_redirected", "redirect").await, 1);
    assert_eq!(sandbox_log_lines("r_redirected", "redirect").len(), 1);
    hub.hub.shutdown().await;
}
