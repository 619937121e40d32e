//! The admin API and CLI: auth, status, pause/resume, dead-letter and review
//! queues with filters, dry runs, replay and discard.

use crate::support::*;
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);

async fn admin_hub(crm: &MockDownstream) -> TestHub {
    let mut options = HubOptions::new(example_routes(
        crm,
        crm,
        crm,
        r#"{ first = "10ms", max = "50ms", attempts = 3 }"#,
    ));
    options.admin = true;
    TestHub::start(options).await
}

fn contact(i: usize, event_type: &str) -> Vec<u8> {
    synthetic_event(
        &unique(&format!("evt_a{i}_")),
        event_type,
        json!({"id": format!("cus_{i}"), "object": "customer", "email": null, "name": null}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_the_right_bearer_token() {
    let crm = MockDownstream::start().await;
    let hub = admin_hub(&crm).await;
    let url = hub.admin_url("/v1/consumers");
    let missing = hub.client.get(&url).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 401);
    assert_eq!(
        missing
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"switchyard-admin\""),
        "a 401 names the scheme it wants"
    );
    // The scheme is case-insensitive (RFC 9110, RFC 6750).
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let response = hub
            .client
            .get(&url)
            .header("authorization", format!("{scheme} {ADMIN_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{scheme}");
    }
    for wrong in [
        "wrong",
        "admin-token-for-tests-012345678",
        "admin-token-for-tests-0123456789x",
        "",
    ] {
        let response = hub
            .client
            .get(&url)
            .bearer_auth(wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "{wrong:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(!body.to_string().contains(ADMIN_TOKEN));
    }
    let basic = hub
        .client
        .get(&url)
        .basic_auth("admin", Some(ADMIN_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status().as_u16(), 401);
    let (status, consumers) = hub.admin_get("/v1/consumers").await;
    assert_eq!(status, 200);
    let names: Vec<_> = consumers
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["crm", "erp", "marketing"]);
    assert_eq!(consumers[0]["state"], "running");
    assert_eq!(consumers[0]["breaker"], "closed");
    // Health needs no token; unknown routes are 404 behind auth.
    assert_eq!(
        hub.client
            .get(hub.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(hub.admin_get("/v1/nothing").await.0, 404);
    assert_eq!(
        hub.admin(Method::POST, "/v1/consumers/nobody/pause", None)
            .await
            .0,
        404
    );
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_consumer_takes_nothing_and_catches_up_on_resume() {
    let crm = MockDownstream::start().await;
    let hub = admin_hub(&crm).await;
    assert_eq!(
        hub.admin(Method::POST, "/v1/consumers/crm/pause", None)
            .await
            .0,
        200
    );
    for i in 0..5 {
        assert_eq!(hub.send(&contact(i, "customer.created")).await.0, 200);
    }
    // Marketing (also routed customer.*) is not paused and handles all five.
    eventually(WITHIN, "marketing handled the events", || async {
        hub.status_of("marketing").await.stats.delivered == 5
    })
    .await;
    // Absence can only be shown over time: give the paused consumer a while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(crm.received().is_empty(), "nothing delivered while paused");
    let status = hub.status_of("crm").await;
    assert_eq!(status.backlog, 5);
    assert_eq!(serde_json::to_value(status.state).unwrap(), "paused");
    assert!(status.oldest_pending_ms.unwrap() >= 1000);

    assert_eq!(
        hub.admin(Method::POST, "/v1/consumers/crm/resume", None)
            .await
            .0,
        200
    );
    eventually(WITHIN, "crm caught up", || async {
        crm.effects().len() == 5
    })
    .await;
    hub.drained(WITHIN).await;
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_filtered_dry_run_replayed_and_discarded() {
    let crm = MockDownstream::start().await;
    crm.set_default(Answer::status(422));
    let hub = admin_hub(&crm).await;
    for i in 0..3 {
        assert_eq!(hub.send(&contact(i, "customer.created")).await.0, 200);
    }
    assert_eq!(hub.send(&contact(9, "customer.deleted")).await.0, 200);
    hub.drained(WITHIN).await;

    let (status, all) = hub.admin_get("/v1/queues/dead_letter?consumer=crm").await;
    assert_eq!(status, 200);
    assert_eq!(all.as_array().unwrap().len(), 4);
    assert!(all[0]["reason"].as_str().unwrap().contains("HTTP 422"));
    assert!(all[0].get("payload").is_none(), "lists never show payloads");
    let id = all[0]["id"].as_u64().unwrap();
    let (status, one) = hub
        .admin_get(&format!("/v1/queues/dead_letter/crm/{id}"))
        .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["event_id"], all[0]["event_id"]);
    assert_eq!(
        one["payload"]["id"], all[0]["event_id"],
        "the event as received"
    );
    let (status, _) = hub.admin_get("/v1/queues/dead_letter/crm/987654").await;
    assert_eq!(status, 404);
    let (_, created) = hub
        .admin_get("/v1/queues/dead_letter?consumer=crm&event_type=customer.created")
        .await;
    assert_eq!(created.as_array().unwrap().len(), 3);
    let (_, none) = hub.admin_get("/v1/queues/dead_letter?error=timeout").await;
    assert!(none.as_array().unwrap().is_empty());
    // Ids in a query string: comma-separated (`switchyard dlq list --ids`).
    let (first, third) = (id, all[2]["id"].as_u64().unwrap());
    let (status, picked) = hub
        .admin_get(&format!("/v1/queues/dead_letter?ids={first},{third}"))
        .await;
    assert_eq!(status, 200, "{picked}");
    let mut picked: Vec<u64> = picked
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["id"].as_u64().unwrap())
        .collect();
    picked.sort_unstable();
    let mut expected = vec![first, third];
    expected.sort_unstable();
    assert_eq!(picked, expected);
    let (status, _) = hub.admin_get("/v1/queues/dead_letter?ids=3,x").await;
    assert_eq!(status, 400);
    let (status, _) = hub
        .admin_get("/v1/queues/dead_letter?event_type=Bad%20Type")
        .await;
    assert_eq!(status, 400);

    // A dry run says what would happen and changes nothing.
    let filter = json!({"consumer": "crm", "event_type": "customer.created"});
    let (status, dry) = hub
        .admin(
            Method::POST,
            "/v1/queues/dead_letter/replay",
            Some(json!({"filter": filter, "dry_run": true})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (dry["matched"].as_u64(), dry["done"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(dry["sample"].as_array().unwrap().len(), 3);
    assert_eq!(hub.status_of("crm").await.dead_letters, 4);
    // Without `dry_run` the API still only previews: doing it is explicit.
    let (_, implicit) = hub
        .admin(
            Method::POST,
            "/v1/queues/dead_letter/replay",
            Some(json!({"filter": filter})),
        )
        .await;
    assert_eq!(implicit["dry_run"], true);

    // The downstream is fixed; replay the three for real.
    crm.set_default(Answer::status(200));
    let (status, started) = hub
        .admin(
            Method::POST,
            "/v1/queues/dead_letter/replay",
            Some(json!({"filter": filter, "dry_run": false})),
        )
        .await;
    assert_eq!(status, 202, "a replay runs in the background");
    assert_eq!(started["matched"], 3);
    let job = hub.finished_job(&started).await;
    assert_eq!(job["state"], "done");
    assert_eq!(
        (job["total"].as_u64(), job["queued"].as_u64()),
        (Some(3), Some(3))
    );
    eventually(WITHIN, "replayed events delivered", || async {
        crm.effects().len() == 3
    })
    .await;
    hub.drained(WITHIN).await;
    let crm_status = hub.status_of("crm").await;
    assert_eq!(
        crm_status.dead_letters, 1,
        "the deleted-customer event is still parked"
    );

    // Discard the last one by id.
    let (_, left) = hub.admin_get("/v1/queues/dead_letter?consumer=crm").await;
    let id = left[0]["id"].as_u64().unwrap();
    let (_, discarded) = hub
        .admin(
            Method::POST,
            "/v1/queues/dead_letter/discard",
            Some(json!({"filter": {"ids": [id]}, "dry_run": false})),
        )
        .await;
    assert_eq!(discarded["done"], 1);
    assert_eq!(hub.status_of("crm").await.dead_letters, 0);
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_consumers_and_replays_reviews() {
    let erp = MockDownstream::start().await;
    let hub = admin_hub(&erp).await;
    assert_eq!(hub.send_fixture("invoice.paid.no_order.json").await.0, 200);
    hub.drained(WITHIN).await;
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(args)
            .env("SWITCHYARD_ADMIN_URL", hub.admin_url(""))
            .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let table = cli(&["consumers"]);
    println!("{table}");
    assert!(table.starts_with("CONSUMER"), "{table}");
    assert!(table.lines().next().unwrap().contains("BREAKER"), "{table}");
    let erp_line = table.lines().find(|l| l.starts_with("erp")).unwrap();
    assert!(erp_line.contains("running"), "{erp_line}");
    assert!(
        erp_line.contains("closed"),
        "the breaker's state: {erp_line}"
    );
    assert!(erp_line.contains("has no order_id"), "{erp_line}");
    assert!(
        erp_line.contains(" ago: ") && !erp_line.contains("recovered"),
        "the last error says when it happened: {erp_line}"
    );
    // A later delivery: the error is history, and the line says so.
    assert_eq!(hub.send_fixture("invoice.paid.json").await.0, 200);
    hub.drained(WITHIN).await;
    let table = cli(&["consumers"]);
    let erp_line = table.lines().find(|l| l.starts_with("erp")).unwrap();
    assert!(erp_line.contains(" ago, recovered since: "), "{erp_line}");
    let reviews = cli(&["dlq", "list", "--review"]);
    assert!(
        reviews.contains("evt_1PgKq3LzX8bYw3NcInvPad02"),
        "{reviews}"
    );
    let dry = cli(&["dlq", "replay", "--review", "--consumer", "erp"]);
    assert!(
        dry.contains("dry run: 1 entries would be replayed"),
        "{dry}"
    );
    assert_eq!(hub.status_of("erp").await.reviews, 1);
    let history = cli(&[
        "replay",
        "erp",
        "--type",
        "invoice.*",
        "--since",
        "2000-01-01T00:00:00Z",
    ]);
    assert!(
        history.contains("dry run: 2 events would be queued for erp"),
        "{history}"
    );
    // `review` is `dlq --review`; `show` prints one entry; a real replay
    // follows its background job to the end.
    let id = hub
        .hub
        .control()
        .parked(switchyard::bus::ParkQueue::Review, &Default::default())
        .await
        .unwrap()[0]
        .id;
    let shown = cli(&["review", "show", &id.to_string(), "--consumer", "erp"]);
    assert!(
        shown.contains("\"event_id\": \"evt_1PgKq3LzX8bYw3NcInvPad02\""),
        "{shown}"
    );
    assert!(shown.contains("has no order_id"), "{shown}");
    assert!(
        shown.contains("\"payload\": {"),
        "show includes the event: {shown}"
    );
    let replayed = cli(&["review", "replay", "--consumer", "erp", "--yes"]);
    assert!(
        replayed.contains("Done, 1 of 1 entries queued again"),
        "{replayed}"
    );
    let jobs = cli(&["jobs", "list"]);
    assert!(jobs.contains("ReviewReplay"), "{jobs}");
    let wrong = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["consumers"])
        .env("SWITCHYARD_ADMIN_URL", hub.admin_url(""))
        .env("SWITCHYARD_ADMIN_TOKEN", "nope")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_known_sequence_of_events() {
    let crm = MockDownstream::start().await;
    crm.script(1, Answer::status(503));
    let hub = admin_hub(&crm).await;
    assert_eq!(hub.send_fixture("customer.created.json").await.0, 200);
    assert_eq!(hub.send_fixture("customer.created.json").await.0, 200);
    assert_eq!(hub.send_fixture("invoice.paid.no_order.json").await.0, 200);
    let bad = hub
        .post(
            "/webhooks/stripe",
            b"{}",
            &[("stripe-signature", "t=1,v1=00")],
        )
        .await;
    assert_eq!(bad.0, 400);
    hub.drained(WITHIN).await;
    let unauthorized = hub
        .client
        .get(hub.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status().as_u16(), 401);
    let text = hub.metrics_text().await;
    println!("{text}");
    for line in [
        r#"switchyard_ingest_requests_total{source="stripe",outcome="accepted"} 2"#,
        r#"switchyard_ingest_requests_total{source="stripe",outcome="duplicate"} 1"#,
        r#"switchyard_ingest_requests_total{source="stripe",outcome="bad_signature"} 1"#,
        r#"switchyard_ingest_verification_failures_total{source="stripe",reason="stale_timestamp"} 1"#,
        r#"switchyard_dispatch_deliveries_total{consumer="crm",outcome="retried"} 1"#,
        r#"switchyard_dispatch_deliveries_total{consumer="crm",outcome="delivered"} 1"#,
        r#"switchyard_dispatch_deliveries_total{consumer="erp",outcome="reviewed"} 1"#,
        r#"switchyard_consumer_reviews_events{consumer="erp"} 1"#,
        r#"switchyard_consumer_backlog_events{consumer="crm"} 0"#,
        r#"switchyard_consumer_breaker_state{consumer="crm"} 0"#,
        r#"switchyard_plugin_duration_seconds_count{consumer="crm"} 2"#,
        r#"switchyard_dispatch_attempts_total{consumer="crm"} 2"#,
        r#"switchyard_dispatch_attempts_total{consumer="erp"} 1"#,
        "switchyard_bus_append_duration_seconds_count 3",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}`");
    }
    // The bus writer's totals: 3 appends plus the dispatch bookkeeping, at
    // least one fsync, no lazy commit without a write in it, time spent > 0.
    let value = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("missing `{name}`"));
        line[name.len()..].trim().parse().unwrap()
    };
    let operations = value("switchyard_bus_writer_operations_total");
    let durable = value(r#"switchyard_bus_writer_commits_total{durability="durable"}"#);
    let lazy = value(r#"switchyard_bus_writer_commits_total{durability="lazy"}"#);
    assert!(operations >= 3.0, "{operations} writer operations");
    assert!(
        durable >= 1.0 && lazy >= 1.0,
        "{durable} durable, {lazy} lazy commits"
    );
    assert!(
        lazy <= operations,
        "{lazy} lazy commits for {operations} writes"
    );
    assert!(value("switchyard_bus_writer_busy_seconds_total") > 0.0);
    hub.hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_replays_into_a_consumer_added_later_and_respects_idempotency() {
    let crm = MockDownstream::start().await;
    let erp = MockDownstream::start().await;
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let crm_only = crm_routes(&crm);
    let mut options = HubOptions::new(crm_only.clone());
    options.admin = true;
    options.dir = Some(dir.clone());
    let first = TestHub::start(options).await;
    let before = now() as u64 * 1000 - 1000;
    for fixture in [
        "invoice.paid.json",
        "invoice.payment_succeeded.json",
        "customer.created.json",
    ] {
        assert_eq!(first.send_fixture(fixture).await.0, 200);
    }
    first.drained(WITHIN).await;
    first.hub.shutdown().await;
    assert_eq!(crm.effects().len(), 1);

    // The ERP consumer is added later; the invoices it missed are history.
    let with_erp = crm_only
        .connection("erp", &erp)
        .consumer("erp", "erp", &["erp"])
        .route(&["invoice.*"], &["erp"]);
    let mut options = HubOptions::new(with_erp);
    options.admin = true;
    options.dir = Some(dir.clone());
    let second = TestHub::start(options).await;
    let request = |dry_run: bool| json!({"source": "stripe", "event_type": "invoice.*", "since_ms": before, "dry_run": dry_run});
    let (status, dry) = second
        .admin(
            Method::POST,
            "/v1/consumers/erp/replay",
            Some(request(true)),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["matched"], 2);
    assert_eq!(
        second.status_of("erp").await.backlog,
        0,
        "a dry run queues nothing"
    );
    let (status, done) = second
        .admin(
            Method::POST,
            "/v1/consumers/erp/replay",
            Some(request(false)),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        (done["matched"].as_u64(), done["dry_run"].as_bool()),
        (Some(2), Some(false))
    );
    assert_eq!(second.finished_job(&done).await["queued"], 2);
    eventually(WITHIN, "erp received the missed invoices", || async {
        erp.effects().len() == 2
    })
    .await;

    // Replaying history the CRM already applied changes nothing downstream
    // (and only its routed types, `customer.*`, are replayed).
    let (_, again) = second
        .admin(
            Method::POST,
            "/v1/consumers/crm/replay",
            Some(json!({"source": "stripe", "since_ms": before, "dry_run": false})),
        )
        .await;
    assert_eq!(again["matched"], 1);
    assert_eq!(second.finished_job(&again).await["queued"], 1);
    second.drained(WITHIN).await;
    assert_eq!(
        crm.effects().len(),
        1,
        "idempotency keys skip effects already applied"
    );
    assert_eq!(second.status_of("crm").await.stats.skipped_done, 1);
    second.hub.shutdown().await;
}

/// Replays run in their own lane with their own worker (`replay_concurrency`,
/// 1 by default): live events overtake a long replay instead of queueing
/// behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_replay_does_not_starve_live_traffic() {
    let crm = MockDownstream::start().await;
    let mut options = HubOptions::new(
        crm_routes(&crm)
            .concurrency(4)
            .retry(r#"{ first = "10ms", max = "50ms", attempts = 1 }"#),
    );
    options.admin = true;
    let hub = TestHub::start(options).await;
    const REPLAYED: usize = 30;
    crm.set_default(Answer::status(422));
    for i in 0..REPLAYED {
        assert_eq!(hub.send(&contact(i, "customer.created")).await.0, 200);
    }
    hub.drained(WITHIN).await;
    assert_eq!(hub.status_of("crm").await.dead_letters, REPLAYED as u64);

    // The downstream recovers but is slow: the replay lane's one worker
    // needs about 3 s for the thirty.
    crm.set_default(Answer::status(200).delayed(Duration::from_millis(100)));
    let (status, done) = hub
        .admin(
            Method::POST,
            "/v1/queues/dead_letter/replay",
            Some(json!({"filter": {"consumer": "crm"}, "dry_run": false})),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(hub.finished_job(&done).await["queued"], REPLAYED);
    for i in 100..108 {
        assert_eq!(hub.send(&contact(i, "customer.updated")).await.0, 200);
    }
    let applied = |from: usize, to: usize| {
        crm.effects()
            .iter()
            .filter(|r| {
                let id: usize = r.path.trim_start_matches("/contacts/cus_").parse().unwrap();
                (from..to).contains(&id)
            })
            .count()
    };
    eventually(WITHIN, "the live events are applied", || async {
        applied(100, 108) == 8
    })
    .await;
    let replayed_so_far = applied(0, REPLAYED);
    assert!(
        replayed_so_far < REPLAYED / 2,
        "live events waited for the replay: {replayed_so_far} of {REPLAYED} replayed first"
    );
    eventually(WITHIN, "the replay finishes", || async {
        applied(0, REPLAYED) == REPLAYED
    })
    .await;
}

/// A replay job reports progress and stops between batches when cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_job_can_be_cancelled_between_batches() {
    let crm = MockDownstream::start().await;
    let hub = admin_hub(&crm).await;
    let before = now() as u64 * 1000 - 1000;
    const EVENTS: usize = 300;
    for i in 0..EVENTS {
        assert_eq!(hub.send(&contact(i, "customer.created")).await.0, 200);
    }
    hub.drained(WITHIN).await;
    // One event per batch: a long job.
    let (status, started) = hub
        .admin(
            Method::POST,
            "/v1/consumers/crm/replay",
            Some(
                json!({"source": "stripe", "since_ms": before, "dry_run": false, "batch_size": 1}),
            ),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["matched"], EVENTS);
    let id = started["job"]["id"].as_u64().unwrap();
    let (status, _) = hub
        .admin(Method::POST, &format!("/v1/jobs/{id}/cancel"), None)
        .await;
    assert_eq!(status, 200);
    let job = hub.finished_job(&started).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    let processed = job["processed"].as_u64().unwrap();
    assert!(processed < EVENTS as u64, "{job}");
    assert_eq!(job["queued"], processed);
    let (_, listed) = hub.admin_get("/v1/jobs").await;
    assert_eq!(listed[0]["id"], id);
    let (status, _) = hub.admin_get("/v1/jobs/9999").await;
    assert_eq!(status, 404);
}

/// A forced history replay applies effects again, under new idempotency
/// keys: for a downstream that lost what it had received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_history_replay_applies_effects_again() {
    let crm = MockDownstream::start().await;
    let hub = admin_hub(&crm).await;
    let before = now() as u64 * 1000 - 1000;
    assert_eq!(hub.send(&contact(1, "customer.created")).await.0, 200);
    eventually(WITHIN, "the contact is applied", || async {
        crm.effects().len() == 1
    })
    .await;
    let replay = |force: bool| json!({"source": "stripe", "since_ms": before, "dry_run": false, "force": force});
    let (_, plain) = hub
        .admin(
            Method::POST,
            "/v1/consumers/crm/replay",
            Some(replay(false)),
        )
        .await;
    assert_eq!(hub.finished_job(&plain).await["queued"], 1);
    hub.drained(WITHIN).await;
    assert_eq!(
        crm.effects().len(),
        1,
        "without force, idempotency skips it"
    );
    let (_, forced) = hub
        .admin(Method::POST, "/v1/consumers/crm/replay", Some(replay(true)))
        .await;
    assert_eq!(hub.finished_job(&forced).await["queued"], 1);
    eventually(WITHIN, "the forced replay is applied", || async {
        crm.effects().len() == 2
    })
    .await;
    let keys: Vec<String> = crm
        .effects()
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_owned())
        .collect();
    assert_ne!(
        keys[0], keys[1],
        "a forced replay is a new effect: {keys:?}"
    );
    assert_eq!(crm.effects()[0].path, crm.effects()[1].path);
}

/// A history replay without `--type` replays what the consumer's routes
/// send it, not every event of the source; `all_types` asks for the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_replay_keeps_to_the_consumers_routes_unless_all_types() {
    let crm = MockDownstream::start().await;
    let hub = admin_hub(&crm).await;
    let since_ms = now() as u64 * 1000 - 1000;
    for fixture in [
        "customer.created.json",
        "invoice.paid.json",
        "checkout.session.completed.json",
    ] {
        assert_eq!(hub.send_fixture(fixture).await.0, 200);
    }
    hub.drained(WITHIN).await;
    let matched = |all_types: bool| {
        let hub = &hub;
        async move {
            let (status, outcome) = hub
                .admin(
                    Method::POST,
                    "/v1/consumers/crm/replay",
                    Some(json!({
                        "source": "stripe",
                        "since_ms": since_ms,
                        "dry_run": true,
                        "force": true,
                        "all_types": all_types,
                    })),
                )
                .await;
            assert_eq!(status, 200, "{outcome}");
            outcome["matched"].as_u64().unwrap()
        }
    };
    // crm's routes send it `customer.*` only.
    assert_eq!(matched(false).await, 1);
    assert_eq!(matched(true).await, 3);
}
