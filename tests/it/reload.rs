//! Hot reload: routes.toml and plugins change under a running hub (admin
//! call, a change on disk, SIGHUP). The new config is validated and its
//! plugins compiled before anything switches; a bad one changes nothing and
//! reports every problem; in-flight deliveries finish on the old version; no
//! event is lost or delivered twice across the switch.

use crate::support::*;
use reqwest::Method;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn crm_consumer(crm: &MockDownstream, concurrency: usize) -> Routes {
    crm_routes(crm).concurrency(concurrency)
}

/// `routes` and an `erp` consumer on `invoice.paid`.
fn and_erp(routes: Routes, erp: &MockDownstream) -> Routes {
    routes
        .connection("erp", erp)
        .consumer("erp", "erp", &["erp"])
        .route(&["invoice.paid"], &["erp"])
}

/// Rewrites the hub's routes.toml with `routes` (other tables unchanged).
fn rewrite(hub: &TestHub, options: &mut HubOptions, routes: impl Into<String>) {
    options.routes = routes.into();
    let written = write_config(hub.dir.path(), options);
    assert_eq!(written, hub.config_path);
}

fn options_with_admin(routes: impl Into<String>) -> HubOptions {
    let mut options = HubOptions::new(routes);
    options.admin = true;
    // These tests reload on purpose, by the admin call; the file watch has
    // its own test.
    options.server_extra = "watch_config = false".into();
    options
}

async fn consumers_of(hub: &TestHub) -> BTreeMap<String, Value> {
    let (status, body) = hub.admin_get("/v1/consumers").await;
    assert_eq!(status, 200);
    body.as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_owned(), c.clone()))
        .collect()
}

/// How many requests each effect caused: exactly one each means nothing was
/// lost or repeated.
fn calls_per_effect(
    downstream: &MockDownstream,
    effect: fn(&Received) -> String,
) -> BTreeMap<String, usize> {
    let mut calls = BTreeMap::new();
    for request in downstream.received() {
        *calls.entry(effect(&request)).or_default() += 1;
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_loses_and_repeats_nothing() {
    let crm = MockDownstream::start().await;
    let erp = MockDownstream::start().await;
    // Slow enough that deliveries are in flight when the switch happens.
    crm.set_default(Answer::status(200).delayed(Duration::from_millis(30)));
    let mut options = options_with_admin(crm_consumer(&crm, 4));
    let hub = TestHub::start(options_with_admin(crm_consumer(&crm, 4))).await;
    let base = hub.url("");
    let run = unique("");

    // Customers go to crm throughout; invoices reach erp only once the
    // reload that adds it has answered.
    let customers: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let routed_invoices: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let reloaded = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (client, base, run) = (hub.client.clone(), base.clone(), run.clone());
            let (customers, routed_invoices, reloaded, stop, next) = (
                Arc::clone(&customers),
                Arc::clone(&routed_invoices),
                Arc::clone(&reloaded),
                Arc::clone(&stop),
                Arc::clone(&next),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let (body, effect) = numbered_event(&run, n);
                    let after_reload = reloaded.load(Ordering::SeqCst);
                    let response = post_signed(&client, &base, &body).await.unwrap();
                    assert_eq!(response.status(), 200);
                    if n.is_multiple_of(2) {
                        customers.lock().unwrap().insert(effect);
                    } else if after_reload {
                        routed_invoices.lock().unwrap().insert(effect);
                    }
                }
            })
        })
        .collect();
    let customer_count = || customers.lock().unwrap().len();
    eventually(Duration::from_secs(30), "traffic flowing", || async {
        customer_count() >= 100 && crm.received().len() >= 20
    })
    .await;

    rewrite(&hub, &mut options, and_erp(crm_consumer(&crm, 2), &erp));
    let (status, report) = hub.admin(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["added"], serde_json::json!(["erp"]));
    assert_eq!(report["consumers"], serde_json::json!(["crm", "erp"]));
    reloaded.store(true, Ordering::SeqCst);

    let before = customer_count();
    eventually(
        Duration::from_secs(30),
        "traffic after the reload",
        || async {
            customer_count() >= before + 100 && routed_invoices.lock().unwrap().len() >= 50
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.await.unwrap();
    }

    let customers = customers.lock().unwrap().clone();
    let routed_invoices = routed_invoices.lock().unwrap().clone();
    eventually(Duration::from_secs(60), "every event applied", || async {
        let crm_done: BTreeSet<String> = crm.effects().iter().map(crm_effect).collect();
        let erp_done: BTreeSet<String> = erp.effects().iter().map(erp_effect).collect();
        customers.is_subset(&crm_done) && routed_invoices.is_subset(&erp_done)
    })
    .await;
    hub.drained(Duration::from_secs(30)).await;
    for (effect, calls) in calls_per_effect(&crm, crm_effect) {
        assert_eq!(calls, 1, "{effect} was called {calls} times");
    }
    for (effect, calls) in calls_per_effect(&erp, erp_effect) {
        assert_eq!(calls, 1, "{effect} was called {calls} times");
    }
    let consumers = consumers_of(&hub).await;
    assert_eq!(consumers["crm"]["concurrency"], 2, "the new policy runs");
    let delivered = consumers["crm"]["delivered"].as_u64().unwrap();
    assert!(
        delivered >= customers.len() as u64,
        "counters carry over a reload: {delivered} < {}",
        customers.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_changes_nothing_and_reports_every_problem() {
    let crm = MockDownstream::start().await;
    let erp = MockDownstream::start().await;
    let mut options = options_with_admin(crm_consumer(&crm, 4));
    let hub = TestHub::start(options_with_admin(crm_consumer(&crm, 4))).await;

    // Invalid values and a plugin that does not exist: all reported at once.
    let broken = format!(
        "{}\n[consumers.marketing]\nplugin = \"/nonexistent/marketing.wasm\"\nretry = {{ first = \"soon\" }}\n\n[[routes]]\nsource = \"stripe\"\nevents = [\"checkout.session.completed\"]\nconsumers = [\"marketing\"]\n",
        and_erp(crm_consumer(&crm, 4), &erp).build()
    );
    rewrite(&hub, &mut options, broken);
    let (status, body) = hub.admin(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, 422, "{body}");
    let problems: Vec<&str> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("consumers.marketing.retry.first")),
        "{problems:?}"
    );

    // Valid values, but a plugin that is not there: refused after
    // validation, when plugins are compiled.
    let missing_plugin = and_erp(crm_consumer(&crm, 4), &erp).with_in(
        "consumers.erp",
        "plugin",
        r#""/nonexistent/erp.wasm""#,
    );
    rewrite(&hub, &mut options, missing_plugin);
    let (status, body) = hub.admin(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["problems"].to_string().contains("erp"), "{body}");

    // A table that takes a restart is refused as a whole.
    options.bus_extra = "visibility_timeout = \"1m\"".into();
    rewrite(&hub, &mut options, and_erp(crm_consumer(&crm, 4), &erp));
    let (status, body) = hub.admin(Method::POST, "/v1/reload", None).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["problems"],
        serde_json::json!(["bus: changed, but takes a restart to apply"])
    );

    // The old config still runs: crm only, delivering.
    assert_eq!(consumers_of(&hub).await.keys().collect::<Vec<_>>(), ["crm"]);
    assert_eq!(hub.send_fixture("customer.created.json").await.0, 200);
    assert_eq!(hub.send_fixture("invoice.paid.json").await.0, 200);
    eventually(
        Duration::from_secs(10),
        "crm applies the customer",
        || async { !crm.effects().is_empty() },
    )
    .await;
    hub.drained(Duration::from_secs(10)).await;
    assert!(erp.received().is_empty(), "erp was never added");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_disk_is_picked_up_by_the_watch() {
    let crm = MockDownstream::start().await;
    let erp = MockDownstream::start().await;
    let mut options = HubOptions::new(crm_consumer(&crm, 4));
    let hub = TestHub::start(HubOptions::new(crm_consumer(&crm, 4))).await;
    rewrite(&hub, &mut options, and_erp(crm_consumer(&crm, 4), &erp));
    eventually(Duration::from_secs(20), "erp is running", || async {
        hub.hub
            .status()
            .await
            .unwrap()
            .iter()
            .any(|c| c.name == "erp")
    })
    .await;
    assert_eq!(hub.send_fixture("invoice.paid.json").await.0, 200);
    eventually(
        Duration::from_secs(10),
        "erp applies the payment",
        || async { !erp.effects().is_empty() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_running_process() {
    let crm = MockDownstream::start().await;
    let erp = MockDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let configure = |routes: Routes| {
        let mut options = HubOptions::new(routes);
        options.admin = true;
        options.listen_port = Some(port);
        options.admin_port = Some(admin_port);
        options.server_extra = "watch_config = false".into();
        write_config(dir.path(), &options)
    };
    let config = configure(crm_consumer(&crm, 4));
    let child = spawn_hub(&config, port).await;
    configure(and_erp(crm_consumer(&crm, 4), &erp));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let client = reqwest::Client::new();
    eventually(
        Duration::from_secs(30),
        "erp is running after SIGHUP",
        || {
            let client = client.clone();
            async move {
                let Ok(response) = client
                    .get(format!("http://127.0.0.1:{admin_port}/v1/consumers"))
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .await
                else {
                    return false;
                };
                response
                    .json::<Value>()
                    .await
                    .is_ok_and(|body| body.to_string().contains("\"erp\""))
            }
        },
    )
    .await;
}
