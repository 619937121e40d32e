//! Failover in seconds: with the shipped lease lengths (10 s, renewed while
//! a call runs), a SIGKILLed process's in-flight events reach a live one
//! within seconds, every acknowledged event is applied under one key, and
//! a call longer than its leases is not redelivered while it runs.

use crate::natsd::{NatsServer, TestStream};
use crate::support::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The deadline the issue sets: every queue settled this long after the kill.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);
/// The shipped `idempotency.lease` (the harness writes one explicitly).
const SHIPPED_LEASE: &str = "10s";

/// crm gets `customer.*`, erp gets `invoice.paid`; both downstreams take
/// 0.3 s a call, so deliveries are in flight whenever a process dies.
fn routes(crm: &MockDownstream, erp: &MockDownstream) -> Routes {
    crm_erp_routes(
        crm,
        erp,
        &[
            ("concurrency", "8"),
            ("retry", r#"{ first = "100ms", max = "1s", attempts = 50 }"#),
        ],
    )
}

async fn slow_downstreams() -> (MockDownstream, MockDownstream) {
    let crm = MockDownstream::start().await;
    let erp = MockDownstream::start().await;
    for mock in [&crm, &erp] {
        mock.set_default(Answer::status(200).delayed(Duration::from_millis(300)));
    }
    (crm, erp)
}

/// Writes a config listening on `port` with the admin API on `admin_port`,
/// leaving every lease at its shipped default.
fn config_for(dir: &Path, mut options: HubOptions, port: u16, admin_port: u16) -> PathBuf {
    options.admin = true;
    options.idempotency_lease = SHIPPED_LEASE;
    options.listen_port = Some(port);
    options.admin_port = Some(admin_port);
    let config = write_config(dir, &options);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(!text.contains("visibility_timeout"), "shipped bus lease");
    config
}

async fn admin_get(client: &reqwest::Client, admin_port: u16, path: &str) -> Option<String> {
    let response = client
        .get(format!("http://127.0.0.1:{admin_port}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

/// Events waiting or in flight for any consumer, as the hub reports them.
async fn unsettled(client: &reqwest::Client, admin_port: u16) -> Option<u64> {
    let text = admin_get(client, admin_port, "/v1/consumers").await?;
    let consumers: Value = serde_json::from_str(&text).ok()?;
    let consumers = consumers.as_array()?;
    Some(
        consumers
            .iter()
            .map(|c| {
                c["backlog"].as_u64().unwrap_or(u64::MAX / 4) + c["in_flight"].as_u64().unwrap_or(0)
            })
            .sum(),
    )
}

/// The sum of one metric's samples (all label sets).
fn metric_total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until every acknowledged event is applied and the survivor's
/// queues are empty, no later than [`FAILOVER_DEADLINE`] after `killed_at`;
/// returns how long after the kill that was.
async fn settled_after_kill(
    crm: &MockDownstream,
    erp: &MockDownstream,
    acknowledged: &BTreeSet<String>,
    admin_port: u16,
    killed_at: Instant,
) -> Duration {
    let client = reqwest::Client::new();
    let left = FAILOVER_DEADLINE.saturating_sub(killed_at.elapsed());
    eventually(
        left,
        "every acknowledged event applied and every queue settled, 30 s after the kill",
        || async {
            acknowledged.is_subset(&applied(crm, erp))
                && unsettled(&client, admin_port).await == Some(0)
        },
    )
    .await;
    let took = killed_at.elapsed();
    assert_one_key_per_effect(crm, crm_effect);
    assert_one_key_per_effect(erp, erp_effect);
    took
}

/// Waits until half of `events` are sent, and checks calls are in flight
/// downstream (arrived but not answered): the moment to kill.
async fn half_sent_with_calls_in_flight(
    sent: &AtomicUsize,
    events: usize,
    crm: &MockDownstream,
    erp: &MockDownstream,
) {
    eventually(Duration::from_secs(60), "half the events sent", || async {
        sent.load(Ordering::SeqCst) >= events / 2
    })
    .await;
    assert!(
        crm.arrived() > crm.effects().len() || erp.arrived() > erp.effects().len(),
        "deliveries are in flight at the kill"
    );
}

/// Sends events `range` of `run` at about 40 a second, each to `target(n)`
/// until one answers 2xx (like Stripe, re-sending what was not answered).
fn send_paced(
    bases: Vec<String>,
    run: String,
    range: std::ops::Range<usize>,
    target: Arc<dyn Fn(usize, usize) -> usize + Send + Sync>,
    acknowledged: Arc<Mutex<BTreeSet<String>>>,
    sent: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut ticks = tokio::time::interval(Duration::from_millis(25));
        for n in range {
            ticks.tick().await;
            let (body, effect) = numbered_event(&run, n);
            for attempt in 0..400 {
                let response = post_signed(&client, &bases[target(n, attempt)], &body).await;
                if response.is_some_and(|r| r.status().is_success()) {
                    acknowledged.lock().unwrap().insert(effect);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            sent.fetch_add(1, Ordering::SeqCst);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_killed_process_work_moves_to_the_survivor_within_seconds() {
    let nats = NatsServer::start().await;
    let (crm, erp) = slow_downstreams().await;
    let stream = TestStream::new();
    let redis_prefix = unique("sy-failover-");
    let mut ports = Vec::new();
    let mut configs = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let mut options = HubOptions::new(routes(&crm, &erp));
        options.bus = Some(stream.bus_keys(&[nats.url()]));
        options.redis_prefix = Some(redis_prefix.clone());
        configs.push(config_for(dir.path(), options, port, admin_port));
        ports.push((port, admin_port));
        dirs.push(dir);
    }
    let mut first = spawn_hub(&configs[0], ports[0].0).await;
    let _second = spawn_hub(&configs[1], ports[1].0).await;
    let bases: Vec<String> = ports
        .iter()
        .map(|(port, _)| format!("http://127.0.0.1:{port}"))
        .collect();

    const EVENTS: usize = 400;
    let acknowledged: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let sent = Arc::new(AtomicUsize::new(0));
    let first_killed = Arc::new(AtomicBool::new(false));
    let target: Arc<dyn Fn(usize, usize) -> usize + Send + Sync> = {
        let first_killed = Arc::clone(&first_killed);
        Arc::new(move |n, attempt| {
            if first_killed.load(Ordering::SeqCst) {
                1
            } else {
                (n + attempt) % 2
            }
        })
    };
    let sender = send_paced(
        bases,
        unique(""),
        0..EVENTS,
        target,
        Arc::clone(&acknowledged),
        Arc::clone(&sent),
    );
    half_sent_with_calls_in_flight(&sent, EVENTS, &crm, &erp).await;
    first.start_kill().unwrap();
    let killed_at = Instant::now();
    first.wait().await.unwrap();
    first_killed.store(true, Ordering::SeqCst);
    sender.await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert_eq!(acknowledged.len(), EVENTS, "every event was accepted");

    let took = settled_after_kill(&crm, &erp, &acknowledged, ports[1].1, killed_at).await;
    let metrics = admin_get(&reqwest::Client::new(), ports[1].1, "/metrics")
        .await
        .unwrap();
    let taken_over = metric_total(&metrics, "switchyard_dispatch_leases_taken_over_total");
    eprintln!(
        "nats failover: every queue settled {:.1} s after the SIGKILL; {taken_over} leases taken over",
        took.as_secs_f64()
    );
    assert!(
        metric_total(&metrics, "switchyard_dispatch_failover_seconds_count") == taken_over,
        "each takeover observed in the failover histogram"
    );
    drop(dirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_restarted_process_takes_its_own_leases_back_at_once() {
    let (crm, erp) = slow_downstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let config = config_for(
        dir.path(),
        HubOptions::new(routes(&crm, &erp)),
        port,
        admin_port,
    );
    let mut hub = spawn_hub(&config, port).await;
    let base = format!("http://127.0.0.1:{port}");

    const EVENTS: usize = 200;
    let acknowledged: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = send_paced(
        vec![base],
        unique(""),
        0..EVENTS,
        Arc::new(|_, _| 0),
        Arc::clone(&acknowledged),
        Arc::clone(&sent),
    );
    half_sent_with_calls_in_flight(&sent, EVENTS, &crm, &erp).await;
    hub.start_kill().unwrap();
    let killed_at = Instant::now();
    hub.wait().await.unwrap();
    // Events sent while it is down are re-sent until it is back.
    let _hub = spawn_hub(&config, port).await;
    sender.await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert_eq!(acknowledged.len(), EVENTS, "every event was accepted");
    let took = settled_after_kill(&crm, &erp, &acknowledged, admin_port, killed_at).await;
    eprintln!(
        "embedded restart: every queue settled {:.1} s after the SIGKILL",
        took.as_secs_f64()
    );
}

/// A call of 60 s, six times the leases: the heartbeats keep both leases,
/// so the event is called once and applied once, on both engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_longer_than_its_leases_is_not_redelivered_while_it_runs() {
    let nats = NatsServer::start().await;
    let stream = TestStream::new();
    let engines = [
        ("embedded", None, None),
        (
            "nats",
            Some(stream.bus_keys(&[nats.url()])),
            Some(unique("sy-long-")),
        ),
    ];
    let runs = engines.map(|(engine, bus, redis_prefix)| async move {
        let crm = MockDownstream::start().await;
        crm.set_default(Answer::status(200).delayed(Duration::from_secs(60)));
        let routes = crm_routes(&crm).limits(r#"{ wall = "90s" }"#).with_in(
            "connections.crm",
            "timeout",
            r#""90s""#,
        );
        let mut options = HubOptions::new(routes);
        options.bus = bus;
        options.redis_prefix = redis_prefix;
        options.idempotency_lease = SHIPPED_LEASE;
        options.admin = true;
        let hub = TestHub::start(options).await;
        let (status, _) = hub.send_fixture("customer.created.json").await;
        assert_eq!(status, 200, "{engine}");
        eventually(
            Duration::from_secs(100),
            "the long call answered and acked",
            || async { hub.status_of("crm").await.stats.delivered == 1 },
        )
        .await;
        assert_eq!(
            crm.arrived(),
            1,
            "{engine}: the event was not redelivered during its 60 s call"
        );
        let metrics = hub.metrics_text().await;
        let renewals = metric_total(&metrics, "switchyard_dispatch_lease_renewals_total");
        assert!(
            renewals >= 20.0,
            "{engine}: both leases renewed through the call ({renewals})"
        );
        assert!(
            !metrics.contains("outcome=\"lost\""),
            "{engine}: no renewal lost"
        );
        let status = hub.status_of("crm").await;
        assert_eq!((status.backlog, status.stats.in_flight), (0, 0), "{engine}");
    });
    futures::future::join_all(runs).await;
}
