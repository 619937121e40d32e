//! Plugins are sandboxed: a plugin that loops, eats memory, recurses, traps,
//! overstays its wall clock or reaches for a connection it was not granted
//! fails only its own delivery, with a clear reason, and nobody else notices.

use crate::harness::*;
use std::time::Duration;
use switchyard::bus::DeadQueue;

/// A `good` crm consumer beside a `bad` hostile one in `mode`, both routed
/// `customer.*`. The hostile one gets 2 attempts.
fn routes(good: &MockDownstream, mode: &str, limits: &str) -> String {
    format!(
        r#"
[connections.crm]
base_url = "{crm}"

[connections.spare]
base_url = "{crm}"

[consumers.good]
plugin = "{{plugin:crm}}"
connections = ["crm"]

[consumers.bad]
plugin = "{{plugin:hostile}}"
connections = ["spare"]
retry = {{ first = "10ms", max = "20ms", attempts = 2 }}
limits = {limits}
settings = {{ mode = "{mode}" }}

[[routes]]
source = "stripe"
events = ["customer.*"]
consumers = ["good", "bad"]
"#,
        crm = good.url()
    )
}

const TIGHT: &str = r#"{ cpu = "50ms", wall = "5s", memory = "8MiB" }"#;

/// Runs one event through a hostile consumer; returns its dead-letter reason.
async fn dead_letter_reason(mode: &str, limits: &str) -> String {
    let good = MockDownstream::start().await;
    let hub = TestHub::start(HubOptions::new(routes(&good, mode, limits))).await;
    assert_eq!(hub.send_fixture("customer.created.json").await.0, 200);
    hub.drained(Duration::from_secs(60)).await;
    // The neighbour delivered its effect exactly once.
    assert_eq!(
        good.effects().len(),
        1,
        "good consumer unaffected by `{mode}`"
    );
    assert_eq!(hub.status_of("good").await.stats.delivered, 1);
    let dead = hub
        .hub
        .bus()
        .dead_letters("bad", DeadQueue::DeadLetter)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "`{mode}` ends in the dead-letter queue");
    hub.hub.shutdown().await;
    dead[0].reason.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_by_the_cpu_budget() {
    let reason = dead_letter_reason("loop", TIGHT).await;
    assert_eq!(reason, "gave up after 2 attempts: cpu budget exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_stopped_by_the_memory_cap() {
    let reason = dead_letter_reason("memory", TIGHT).await;
    assert_eq!(reason, "gave up after 2 attempts: memory limit exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_traps_only_its_own_instance() {
    let reason = dead_letter_reason("trap", TIGHT).await;
    assert!(
        reason.starts_with("gave up after 2 attempts: plugin trapped:"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_traps() {
    let reason = dead_letter_reason("recurse", TIGHT).await;
    assert!(
        reason.starts_with("gave up after 2 attempts: plugin trapped:"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_was_not_granted_cannot_be_reached() {
    let reason = dead_letter_reason("ungranted", TIGHT).await;
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
    let text = format!(
        r#"
[connections.crm]
base_url = "{slow}"
timeout = "30s"

[consumers.stuck]
plugin = "{{plugin:crm}}"
connections = ["crm"]
retry = {{ first = "10ms", max = "20ms", attempts = 1 }}
limits = {{ wall = "1s" }}

[[routes]]
source = "stripe"
events = ["customer.*"]
consumers = ["stuck"]
"#,
        slow = slow.url()
    );
    let hub = TestHub::start(HubOptions::new(text)).await;
    assert_eq!(hub.send_fixture("customer.created.json").await.0, 200);
    hub.drained(Duration::from_secs(30)).await;
    let dead = hub
        .hub
        .bus()
        .dead_letters("stuck", DeadQueue::DeadLetter)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].reason,
        "gave up after 1 attempts: wall-clock budget of 1s exceeded"
    );
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_fails_twice_succeeds_on_the_third_attempt() {
    let good = MockDownstream::start().await;
    let text = routes(&good, "flaky", TIGHT).replace("attempts = 2", "attempts = 5");
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
    let text = routes(&spare, "spoof", TIGHT).replace(
        "[connections.spare]\n",
        "[connections.spare]\nauth = { bearer = \"file:crm_token\" }\n",
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
        Some("bad:evt_1PgKq3LzX8bYw3NcCusCrt01:1")
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
        assert_eq!(hub.send_fixture("customer.created.json").await.0, 200);
        hub.drained(Duration::from_secs(30)).await;
        let dead = hub
            .hub
            .bus()
            .dead_letters("bad", DeadQueue::DeadLetter)
            .await
            .unwrap();
        hub.hub.shutdown().await;
        dead[0].reason.clone()
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
