//! The NATS JetStream engine end to end, on nats-server processes the tests
//! start: several switchyard processes sharing the work while one is
//! SIGKILLed, NATS itself going away and coming back, a three-node cluster
//! losing a node under load, and a plain NATS client reading the event mesh.
//! (The bus contract itself is the shared suite in `bus.rs`.)

use crate::natsd::{NatsServer, TestStream};
use crate::support::*;
use futures::StreamExt;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// crm gets `customer.*`, erp gets `invoice.paid`; short retries.
fn routes(crm: &MockDownstream, erp: &MockDownstream) -> Routes {
    crm_erp_routes(
        crm,
        erp,
        &[
            ("concurrency", "4"),
            (
                "retry",
                r#"{ first = "20ms", max = "200ms", attempts = 50 }"#,
            ),
            ("limits", r#"{ wall = "1s" }"#),
        ],
    )
}

async fn wait_until_applied(
    crm: &MockDownstream,
    erp: &MockDownstream,
    acknowledged: &BTreeSet<String>,
) {
    eventually(
        Duration::from_secs(90),
        "every acknowledged event applied downstream",
        || async { acknowledged.is_subset(&applied(crm, erp)) },
    )
    .await;
    assert_one_key_per_effect(crm, crm_effect);
    assert_one_key_per_effect(erp, erp_effect);
}

fn nats_hub_options(
    crm: &MockDownstream,
    erp: &MockDownstream,
    stream: &TestStream,
    urls: &[String],
) -> HubOptions {
    let mut options = HubOptions::new(routes(crm, erp));
    options.bus = Some(stream.bus_keys(urls));
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_the_work_and_one_can_be_killed() {
    let nats = NatsServer::start().await;
    let crm = MockDownstream::start().await;
    let erp = MockDownstream::start().await;
    let stream = TestStream::new();
    let redis_prefix = unique("sy-two-");
    let mut ports = Vec::new();
    let mut dirs = Vec::new();
    let mut configs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut options = nats_hub_options(&crm, &erp, &stream, &[nats.url()]);
        options.redis_prefix = Some(redis_prefix.clone());
        // Short leases so the killed process's deliveries come back quickly.
        options.bus_extra = "visibility_timeout = \"3s\"".into();
        options.idempotency_lease = "2s";
        options.listen_port = Some(port);
        let config = write_config(dir.path(), &options);
        ports.push(port);
        configs.push(config);
        dirs.push(dir);
    }
    let mut first = spawn_hub(&configs[0], ports[0]).await;
    let _second = spawn_hub(&configs[1], ports[1]).await;
    let bases: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();

    const EVENTS: usize = 2_000;
    let run = unique("");
    let acknowledged: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let answered = Arc::new(AtomicUsize::new(0));
    let first_killed = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::new();
    let senders: Vec<_> = (0..8)
        .map(|sender| {
            let (client, bases, run) = (client.clone(), bases.clone(), run.clone());
            let (acknowledged, answered, first_killed) = (
                Arc::clone(&acknowledged),
                Arc::clone(&answered),
                Arc::clone(&first_killed),
            );
            tokio::spawn(async move {
                for n in (sender..EVENTS).step_by(8) {
                    let (body, effect) = numbered_event(&run, n);
                    // Split across both processes; like Stripe, re-send what
                    // was not answered 2xx (to the survivor once one is dead).
                    for attempt in 0..50 {
                        let target = if first_killed.load(Ordering::SeqCst) {
                            1
                        } else {
                            (n + attempt) % 2
                        };
                        let response = post_signed(&client, &bases[target], &body).await;
                        if response.is_some_and(|r| r.status().is_success()) {
                            acknowledged.lock().unwrap().insert(effect);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    eventually(Duration::from_secs(120), "half the events sent", || async {
        answered.load(Ordering::SeqCst) >= EVENTS / 2
    })
    .await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    first_killed.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert_eq!(
        acknowledged.len(),
        EVENTS,
        "every event was accepted by a survivor"
    );
    wait_until_applied(&crm, &erp, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_ingest_answers_503_and_accepts_again_after_restart() {
    let mut nats = NatsServer::start().await;
    let crm = MockDownstream::start().await;
    let erp = MockDownstream::start().await;
    let stream = TestStream::new();
    let mut options = nats_hub_options(&crm, &erp, &stream, &[nats.url()]);
    options.bus_extra = "ack_timeout = \"2s\"".into();
    let hub = TestHub::start(options).await;
    let run = unique("");
    let base = hub.url("");

    let (body, effect) = numbered_event(&run, 0);
    let response = post_signed(&hub.client, &base, &body).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut acknowledged = BTreeSet::from([effect]);

    nats.kill();
    let outage: Vec<(Vec<u8>, String)> = (1..=10).map(|n| numbered_event(&run, n)).collect();
    for (body, _) in &outage {
        let response = post_signed(&hub.client, &base, body)
            .await
            .expect("the hub answers");
        assert_eq!(response.status(), 503, "no 2xx while NATS is down");
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after > 0);
    }
    let ready = hub.client.get(hub.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready without the bus");
    // Public: it names the part that is down, never the error's text.
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"status": "not_ready", "reason": "bus unavailable"})
    );

    nats.restart().await;
    // The same requests, re-sent as Stripe would, are accepted once the hub
    // has reconnected.
    for (body, effect) in &outage {
        eventually(
            Duration::from_secs(30),
            "the re-sent event is accepted",
            || async {
                post_signed(&hub.client, &base, body)
                    .await
                    .is_some_and(|r| r.status() == 200)
            },
        )
        .await;
        acknowledged.insert(effect.clone());
    }
    wait_until_applied(&crm, &erp, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_loses_no_acknowledged_event_when_the_leader_dies() {
    let mut nodes = NatsServer::cluster(3).await;
    let urls: Vec<String> = nodes.iter().map(NatsServer::url).collect();
    let crm = MockDownstream::start().await;
    let erp = MockDownstream::start().await;
    let stream = TestStream::new();
    let mut options = nats_hub_options(&crm, &erp, &stream, &urls);
    options.bus_extra = "replicas = 3\nack_timeout = \"3s\"\nvisibility_timeout = \"5s\"".into();
    let hub = TestHub::start(options).await;
    let run = unique("");
    let base = hub.url("");

    let acknowledged: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (client, base, run) = (hub.client.clone(), base.clone(), run.clone());
            let (acknowledged, stop, next) = (
                Arc::clone(&acknowledged),
                Arc::clone(&stop),
                Arc::clone(&next),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let (body, effect) = numbered_event(&run, next.fetch_add(1, Ordering::SeqCst));
                    let response = post_signed(&client, &base, &body).await;
                    if response.is_some_and(|r| r.status().is_success()) {
                        acknowledged.lock().unwrap().insert(effect);
                    }
                }
            })
        })
        .collect();
    let acked = || acknowledged.lock().unwrap().len();
    eventually(Duration::from_secs(60), "traffic flowing", || async {
        acked() >= 200
    })
    .await;
    // Kill the stream's leader: the hardest node to lose.
    let client = async_nats::connect(urls.clone()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut events = jetstream.get_stream(&stream.stream).await.unwrap();
    let leader = events
        .info()
        .await
        .unwrap()
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.leader.clone())
        .expect("the stream has a leader");
    let index: usize = leader.trim_start_matches('n').parse().unwrap();
    nodes[index].kill();
    let before = acked();
    eventually(
        Duration::from_secs(60),
        "traffic flowing after the loss",
        || async { acked() >= before + 300 },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    wait_until_applied(&crm, &erp, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_nats_client_reads_cloudevents_from_the_event_mesh() {
    let nats = NatsServer::start().await;
    let crm = MockDownstream::start().await;
    let erp = MockDownstream::start().await;
    let stream = TestStream::new();
    let hub = TestHub::start(nats_hub_options(&crm, &erp, &stream, &[nats.url()])).await;

    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut invoices = client
        .subscribe(format!("{}.events.stripe.invoice.>", stream.subject_prefix))
        .await
        .unwrap();
    client.flush().await.unwrap();

    assert_eq!(hub.send_fixture("customer.created.json").await.0, 200);
    let invoice = fixture("invoice.paid.json");
    assert_eq!(hub.send(&invoice).await.0, 200);
    let message = tokio::time::timeout(Duration::from_secs(10), invoices.next())
        .await
        .expect("the invoice arrives")
        .unwrap();
    let sent: serde_json::Value = serde_json::from_slice(&invoice).unwrap();
    assert_eq!(
        message.subject.as_str(),
        format!("{}.events.stripe.invoice.paid", stream.subject_prefix)
    );
    assert_eq!(message.payload, invoice, "the body is the raw Stripe JSON");
    let headers = message.headers.expect("CloudEvents headers");
    let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(header("ce-id").as_deref(), sent["id"].as_str());
    assert_eq!(header("ce-type").as_deref(), Some("invoice.paid"));
    assert_eq!(header("ce-source").as_deref(), Some("/switchyard/stripe"));
    let time = header("ce-time").expect("ce-time");
    let created = humantime::parse_rfc3339(&time).expect("ce-time is RFC 3339");
    let created = created
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(created, sent["created"].as_i64().unwrap());
    assert_eq!(
        header("Nats-Msg-Id").as_deref(),
        Some(format!("stripe:{}", sent["id"].as_str().unwrap()).as_str())
    );
    // The customer event is on another subject: this filter never sees it.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), invoices.next())
            .await
            .is_err()
    );
}
