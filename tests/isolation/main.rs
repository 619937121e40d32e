//! CPU isolation between consumers: plugin code runs on its own threads, and
//! consumers share them by weight. A plugin that burns CPU (the `hostile`
//! fixture in `loop` mode, stopped by its CPU budget and retried forever)
//! neither slows a healthy neighbour's deliveries nor the webhook edge; two
//! CPU-bound consumers split the threads by `cpu_weight`; a quota holds; a
//! plugin the sandbox keeps stopping is quarantined until resumed or
//! replaced.
//!
//! A test binary of its own, its tests one at a time: cargo runs test
//! binaries one after another, so no other test loads the machine while
//! these compare latencies with their own baselines.

#[allow(dead_code, unused_imports)]
#[path = "../it/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::*;
use switchyard::admin::ConsumerState;

/// Held by every test here: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Events per phase and round, and the rate they arrive at.
const PER_ROUND: usize = 20;
const ROUNDS: usize = 3;
const ARRIVAL_GAP: Duration = Duration::from_millis(50);

/// A healthy crm consumer `good` on `customer.*`, and `hostile` looping
/// consumers on `customer.updated` and `invoice.created` only, each with concurrency 4 and the
/// default 100 ms CPU budget, never quarantined, retried (nearly) forever.
fn burner_routes(good: &MockDownstream, hostile: usize) -> Routes {
    let mut routes = Routes::new()
        .connection("crm", good)
        .consumer("good", "crm", &["crm"]);
    let names: Vec<String> = (0..hostile).map(|n| format!("burn{n}")).collect();
    for name in &names {
        routes = routes
            .consumer(name, "hostile", &[])
            .concurrency(4)
            .with("quarantine_after", "0")
            .retry(r#"{ first = "1s", max = "2s", attempts = 1000 }"#)
            .with("circuit_breaker", "{ enabled = false }")
            .with("settings", r#"{ mode = "loop" }"#);
    }
    let burners: Vec<&str> = names.iter().map(String::as_str).collect();
    routes
        .route(&["customer.*"], &["good"])
        .route(&["customer.updated", "invoice.created"], &burners)
}

/// Latencies of one phase: the edge's answer, and the time until `good`'s
/// downstream had the event's effect.
#[derive(Default)]
struct Latencies {
    ack: Vec<Duration>,
    delivery: Vec<Duration>,
}

impl Latencies {
    fn p99(samples: &[Duration]) -> Duration {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let index = ((0.99 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
    }
}

/// Sends `PER_ROUND` customer events of `event_type` at 20/s and records
/// their latencies into `into`.
async fn phase(
    hub: &TestHub,
    good: &MockDownstream,
    run: &str,
    event_type: &str,
    into: &mut Latencies,
) {
    let mut sent = Vec::new();
    for n in 0..PER_ROUND {
        let customer = format!("cus_{run}_{n}");
        let body = customer_event(&customer, event_type);
        let started = Instant::now();
        assert_eq!(hub.send(&body).await.0, 200);
        into.ack.push(started.elapsed());
        sent.push((format!("/contacts/{customer}"), started));
        tokio::time::sleep(ARRIVAL_GAP).await;
    }
    eventually(
        Duration::from_secs(60),
        "`good` applied every event of the phase",
        || async {
            let effects = good.effects();
            sent.iter()
                .all(|(path, _)| effects.iter().any(|r| &r.path == path))
        },
    )
    .await;
    let effects = good.effects();
    for (path, started) in &sent {
        let arrived = effects.iter().find(|r| &r.path == path).unwrap().at;
        into.delivery.push(arrived.duration_since(*started));
    }
}

/// Waits until none of the burners has a call in flight.
async fn burners_idle(hub: &TestHub, hostile: usize) {
    eventually(Duration::from_secs(30), "paused burners idle", || async {
        for n in 0..hostile {
            if hub.status_of(&format!("burn{n}")).await.stats.in_flight > 0 {
                return false;
            }
        }
        true
    })
    .await;
}

/// Baseline and hostile phases alternate, so a change in the machine's
/// other load during the test weighs on both alike.
async fn isolation_with(hostile: usize) {
    let good = MockDownstream::start().await;
    // The default plugin threads, as a new user has them.
    let hub = TestHub::start(HubOptions::new(burner_routes(&good, hostile))).await;
    let control = hub.hub.control();
    let run = unique("iso");
    // The burners' own backlog, which they loop on for the whole test
    // (each attempt burns its CPU budget, and is retried).
    for n in 0..8 {
        let body = synthetic_event(
            &format!("evt_{run}_inv{n}"),
            "invoice.created",
            serde_json::json!({"id": format!("in_{run}_{n}"), "object": "invoice"}),
        );
        assert_eq!(hub.send(&body).await.0, 200);
    }
    let (mut alone, mut beside) = (Latencies::default(), Latencies::default());
    for round in 0..ROUNDS {
        for n in 0..hostile {
            control.pause(&format!("burn{n}")).unwrap();
        }
        burners_idle(&hub, hostile).await;
        phase(
            &hub,
            &good,
            &format!("{run}_a{round}"),
            "customer.created",
            &mut alone,
        )
        .await;
        for n in 0..hostile {
            control.resume(&format!("burn{n}")).unwrap();
        }
        eventually(Duration::from_secs(30), "burners busy", || async {
            hub.status_of("burn0").await.stats.in_flight >= 2
        })
        .await;
        phase(
            &hub,
            &good,
            &format!("{run}_b{round}"),
            "customer.updated",
            &mut beside,
        )
        .await;
    }
    // The burners did burn while the healthy consumer was measured.
    let burned: f64 = {
        let mut total = 0.0;
        for n in 0..hostile {
            total += hub.status_of(&format!("burn{n}")).await.cpu_seconds;
        }
        total
    };
    let good_status = hub.status_of("good").await;
    eprintln!(
        "{hostile} burner(s): good delivery p99 alone {:?}, beside {:?}; ack p99 alone {:?}, beside {:?}; burners used {burned:.2} s of guest cpu, good {:.3} s",
        Latencies::p99(&alone.delivery),
        Latencies::p99(&beside.delivery),
        Latencies::p99(&alone.ack),
        Latencies::p99(&beside.ack),
        good_status.cpu_seconds,
    );
    assert!(
        burned > 0.5,
        "the burners used {burned:.2} s: nothing was contended"
    );

    // Every event once.
    let events = 2 * ROUNDS * PER_ROUND;
    assert_eq!(good.effects().len(), events);
    assert_one_key_per_effect(&good, crm_effect);
    assert_eq!(
        (good_status.stats.delivered, good_status.dead_letters),
        (events as u64, 0)
    );
    assert_eq!(good_status.quarantined, None);

    // Not starved: within 2x of its own baseline plus 100 ms, for
    // deliveries and the edge. Before the plugin threads a looping
    // neighbour took the healthy p99 from 6 ms to 6 s and the edge's ack
    // p99 from 8 to 359 ms. The issue's target, within 2x with no margin,
    // is what the `isolation` bench reports on a release build; these debug
    // builds usually reach 1.0-2.4x (benches/RESULTS.md, Run 11), but a
    // single stall of the machine lands in a p99 of 20 samples (seen once:
    // 22.8 ms alone, 102.8 ms beside eight loopers, the edge's ack alike).
    let bound = |alone: Duration| alone * 2 + Duration::from_millis(100);
    let (delivery_alone, delivery_beside) = (
        Latencies::p99(&alone.delivery),
        Latencies::p99(&beside.delivery),
    );
    assert!(
        delivery_beside <= bound(delivery_alone),
        "good's delivery p99 {delivery_beside:?} beside {hostile} burner(s), {delivery_alone:?} alone"
    );
    let (ack_alone, ack_beside) = (Latencies::p99(&alone.ack), Latencies::p99(&beside.ack));
    assert!(
        ack_beside <= bound(ack_alone),
        "ingest ack p99 {ack_beside:?} beside {hostile} burner(s), {ack_alone:?} alone"
    );
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_looping_plugin_cannot_starve_a_healthy_neighbour_or_the_edge() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    isolation_with(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_looping_plugins_cannot_starve_a_healthy_neighbour_or_the_edge() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    isolation_with(8).await;
}

/// Two looping consumers with a backlog each and weights `heavy_weight`:1,
/// plus, if given, a quota on the light one (a `key = value` pair).
fn weighted_routes(heavy_weight: f64, light_extra: &[(&str, &str)]) -> Routes {
    let looping = |routes: Routes, name: &str| {
        routes
            .consumer(name, "hostile", &[])
            .concurrency(4)
            .with("quarantine_after", "0")
            .retry(r#"{ first = "10ms", max = "20ms", attempts = 1000 }"#)
            .with("circuit_breaker", "{ enabled = false }")
            .limits(r#"{ cpu = "50ms" }"#)
            .with("settings", r#"{ mode = "loop" }"#)
    };
    let heavy = looping(Routes::new(), "heavy").with("cpu_weight", &heavy_weight.to_string());
    looping(heavy, "light")
        .with_all(light_extra)
        .route(&["customer.*"], &["heavy", "light"])
}

/// Starts the hub, gives both consumers a backlog, and returns the guest
/// CPU each used over a window of `window` once both were busy.
async fn cpu_over_window(routes: Routes, window: Duration) -> (TestHub, f64, f64, u64) {
    let mut options = HubOptions::new(routes);
    options.server_extra = "plugin_threads = 2".to_owned();
    let hub = TestHub::start(options).await;
    let run = unique("wt");
    for n in 0..16 {
        let body = synthetic_event(
            &format!("evt_{run}_{n}"),
            "customer.created",
            serde_json::json!({"id": format!("cus_{run}_{n}"), "object": "customer"}),
        );
        assert_eq!(hub.send(&body).await.0, 200);
    }
    eventually(Duration::from_secs(30), "both consumers busy", || async {
        hub.status_of("heavy").await.stats.plugin_calls >= 4
            && hub.status_of("light").await.stats.plugin_calls >= 1
    })
    .await;
    let (heavy0, light0) = (hub.status_of("heavy").await, hub.status_of("light").await);
    tokio::time::sleep(window).await;
    let (heavy1, light1) = (hub.status_of("heavy").await, hub.status_of("light").await);
    let light_calls = light1.stats.plugin_calls - light0.stats.plugin_calls;
    (
        hub,
        heavy1.cpu_seconds - heavy0.cpu_seconds,
        light1.cpu_seconds - light0.cpu_seconds,
        light_calls,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_is_shared_by_weight_and_the_lighter_still_progresses() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let (hub, heavy, light, light_calls) =
        cpu_over_window(weighted_routes(3.0, &[]), Duration::from_secs(4)).await;
    let ratio = heavy / light;
    eprintln!("weights 3:1: guest cpu {heavy:.3} s : {light:.3} s = {ratio:.2}");
    assert!(
        (2.7..=3.3).contains(&ratio),
        "guest cpu heavy {heavy:.3} s, light {light:.3} s: ratio {ratio:.2}, not within 10 % of 3"
    );
    assert!(
        light_calls >= 2,
        "the lighter consumer made {light_calls} calls"
    );
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_quota_holds_a_consumer_below_its_fair_share() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let window = Duration::from_secs(4);
    let (hub, heavy, light, light_calls) =
        cpu_over_window(weighted_routes(1.0, &[("cpu_per_second", "0.2")]), window).await;
    let light_cores = light / window.as_secs_f64();
    eprintln!("quota 0.2 cores: light used {light_cores:.3} cores, heavy {heavy:.3} s");
    // Equal weights would give it a whole thread; the quota (plus at most
    // its one-second bucket, spent before the window) allows a fifth.
    assert!(
        light_cores <= 0.2 * 1.15,
        "light used {light_cores:.3} cores"
    );
    assert!(light_calls >= 1, "the capped consumer still progresses");
    assert!(
        heavy > light * 3.0,
        "heavy {heavy:.3} s took what light left"
    );
    let metrics = hub.hub.control().metrics_text().await.unwrap();
    let throttled = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix("switchyard_plugin_cpu_throttled_total{consumer=\"light\"} ")
        })
        .map(|value| value.trim().parse::<u64>().unwrap());
    assert!(throttled > Some(0), "throttles counted: {throttled:?}");
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_the_sandbox_keeps_stopping_is_quarantined_until_resumed_or_replaced() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let text = Routes::new()
        .consumer("broken", "hostile", &[])
        .concurrency(1)
        .with("quarantine_after", "3")
        .retry(r#"{ first = "10ms", max = "20ms", attempts = 1000 }"#)
        .with("circuit_breaker", "{ enabled = false }")
        .with("settings", r#"{ mode = "trap" }"#)
        .route(&["customer.*"], &["broken"]);
    let mut options = HubOptions::new(text);
    options.admin = true;
    options.extra_tables = "[alerts]\ninterval = \"100ms\"\nclear_after = \"300ms\"\n".to_owned();
    let hub = TestHub::start(options).await;
    let run = unique("qr");
    for n in 0..4 {
        let body = synthetic_event(
            &format!("evt_{run}_{n}"),
            "customer.created",
            serde_json::json!({"id": format!("cus_{run}_{n}"), "object": "customer"}),
        );
        assert_eq!(hub.send(&body).await.0, 200);
    }
    eventually(Duration::from_secs(30), "quarantined", || async {
        hub.status_of("broken").await.state == ConsumerState::Quarantined
    })
    .await;
    let status = hub.status_of("broken").await;
    assert_eq!(
        status.quarantined.as_deref(),
        Some("quarantined: 3 consecutive calls stopped by the sandbox (last: trap)")
    );
    // Nothing dropped: every event waits in its queue, none dead-lettered.
    assert_eq!((status.backlog, status.dead_letters), (4, 0));
    let calls = status.stats.plugin_calls;
    assert_eq!(calls, 3, "no call after the third stop");
    let alert = |rule: &'static str| {
        let hub = &hub;
        async move {
            let (_, alerts) = hub.admin_get("/v1/alerts").await;
            alerts["active"]
                .as_array()
                .unwrap()
                .iter()
                .any(|alert| alert["rule"] == rule && alert["subject"]["name"] == "broken")
        }
    };
    eventually(Duration::from_secs(10), "quarantine alert raised", || {
        alert("plugin_quarantined")
    })
    .await;

    // Resumed by an operator: it runs again (and, still broken, is
    // quarantined again after three more stops).
    hub.hub.control().resume("broken").unwrap();
    assert_eq!(hub.status_of("broken").await.quarantined, None);
    eventually(Duration::from_secs(30), "quarantined again", || async {
        hub.status_of("broken").await.state == ConsumerState::Quarantined
    })
    .await;
    assert_eq!(hub.status_of("broken").await.stats.plugin_calls, 6);

    // A reload with the same plugin keeps the quarantine; a new plugin
    // version lifts it and the backlog drains.
    assert!(hub.hub.control().reload().await.is_ok());
    assert_eq!(
        hub.status_of("broken").await.state,
        ConsumerState::Quarantined
    );
    let config = std::fs::read_to_string(&hub.config_path).unwrap();
    let fixed = config.replace(
        &plugin_path("hostile").display().to_string(),
        &plugin_path("noop").display().to_string(),
    );
    std::fs::write(&hub.config_path, fixed).unwrap();
    hub.hub.control().reload().await.unwrap();
    hub.drained(Duration::from_secs(30)).await;
    let status = hub.status_of("broken").await;
    assert_eq!(status.state, ConsumerState::Running);
    assert_eq!((status.stats.delivered, status.dead_letters), (4, 0));
    eventually(
        Duration::from_secs(10),
        "quarantine alert cleared",
        || async { !alert("plugin_quarantined").await },
    )
    .await;
    hub.hub.shutdown().await;
}
