//! The operations dashboard in a real browser: headless Chromium, driven by
//! `tests/dashboard/check.cjs` (playwright-core), against a live hub with a
//! known scenario. Screenshots go to `target/tmp/dashboard/`.
//!
//! Needs `/usr/bin/chromium` (Debian's `chromium`, or `CHROMIUM`) and
//! playwright-core in `tests/.sdk/node`; `tests/run.sh` installs both (the
//! browser with `--install-toolchain`).

use crate::support::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);

fn contact(customer: &str) -> Vec<u8> {
    customer_event(customer, "customer.created")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_states_and_alerts_and_replays_a_dead_letter() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let node_modules = repo_root().join("tests/.sdk/node/node_modules");
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no Chromium at `{chromium}`: run `tests/run.sh --install-toolchain` (apt-get install chromium)"
    );
    assert!(
        node_modules.join("playwright-core").exists(),
        "no playwright-core in tests/.sdk/node: run `tests/run.sh`"
    );
    let crm = MockDownstream::start().await;
    let marketing = MockDownstream::start().await;
    let mut options = HubOptions::new(
        Routes::new()
            .connection("crm", &crm)
            .connection("marketing", &marketing)
            .consumer("dash_crm", "crm", &["crm"])
            .retry(r#"{ first = "10ms", max = "20ms", attempts = 2 }"#)
            .consumer("dash_marketing", "marketing", &["marketing"])
            .route(&["customer.*"], &["dash_crm", "dash_marketing"]),
    );
    // One dead letter is news; the alert stays up while the page looks.
    options.extra_tables = r#"
[alerts]
interval = "200ms"
queue_growth = 1
clear_after = "10m"
"#
    .to_owned();
    options.admin = true;
    let hub = TestHub::start(options).await;
    let run = unique("dash");

    // The watch takes what it first sees as the starting point (a restart
    // with an old dead letter is no news): let it look once before the outage.
    eventually(WITHIN, "the watch sampled the hub", || async {
        let (_, series) = hub.admin_get("/v1/series").await;
        series["consumers"]["dash_crm"]
            .as_array()
            .is_some_and(|points| !points.is_empty())
    })
    .await;
    // A CRM outage dead-letters the first two events; three later ones
    // arrive. One dead letter is replayed from the page, the other discarded.
    let (status, _) = hub
        .admin(Method::POST, "/v1/consumers/dash_marketing/pause", None)
        .await;
    assert_eq!(status, 200);
    crm.set_default(Answer::status(503));
    let lost = format!("cus_{run}_0");
    let unwanted = format!("cus_{run}_x");
    assert_eq!(hub.send(&contact(&lost)).await.0, 200);
    assert_eq!(hub.send(&contact(&unwanted)).await.0, 200);
    eventually(WITHIN, "the first two events dead-lettered", || async {
        hub.status_of("dash_crm").await.dead_letters == 2
    })
    .await;
    crm.set_default(Answer::status(200));
    for n in 1..=3 {
        assert_eq!(hub.send(&contact(&format!("cus_{run}_{n}"))).await.0, 200);
    }
    eventually(WITHIN, "the later events delivered", || async {
        hub.status_of("dash_crm").await.stats.delivered == 3
    })
    .await;

    eventually(WITHIN, "the watch raised dead_letter_growth", || async {
        let (_, alerts) = hub.admin_get("/v1/alerts").await;
        alerts["active"]
            .as_array()
            .is_some_and(|active| active.iter().any(|a| a["rule"] == "dead_letter_growth"))
    })
    .await;

    let out = repo_root().join("target/tmp/dashboard");
    std::fs::create_dir_all(&out).unwrap();
    let expect = json!({
        "states": {"dash_crm": "running", "dash_marketing": "paused"},
        "alert": "dead_letter_growth",
        "discard": {"consumer": "dash_crm", "event_id": format!("evt_{unwanted}")},
        "replay": {"consumer": "dash_crm", "event_id": format!("evt_{lost}")},
    });
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg(repo_root().join("tests/dashboard/check.cjs"))
            .env("DASH_URL", hub.admin_url("/dashboard"))
            .env("DASH_TOKEN", ADMIN_TOKEN)
            .env("DASH_OUT", &out)
            .env("DASH_EXPECT", expect.to_string())
            .env("NODE_PATH", &node_modules)
            .env("CHROMIUM", &chromium)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser check finishes")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser check failed (screenshots in {}):\n{stderr}\n{stdout}",
        out.display()
    );
    assert!(!stdout.contains(ADMIN_TOKEN) && !stderr.contains(ADMIN_TOKEN));
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(seen["states"], expect["states"], "{seen}");
    assert!(seen["delivered_after"].as_u64() > seen["delivered_before"].as_u64());
    for shot in ["dashboard.png", "dashboard-confirm.png"] {
        assert!(out.join(shot).exists(), "{shot} saved");
    }

    // The click really replayed it: the CRM got the lost contact, the
    // dead-letter queue is empty, and the paused consumer was left alone.
    eventually(WITHIN, "the replayed event reached the CRM", || async {
        crm.effects()
            .iter()
            .any(|request| crm_effect(request) == format!("contact {lost}"))
    })
    .await;
    let crm_status = hub.status_of("dash_crm").await;
    assert_eq!(crm_status.dead_letters, 0);
    // The discarded one is gone, and was never delivered.
    assert_eq!(seen["discard_status"], "Discarded 1 entry.", "{seen}");
    assert!(
        !crm.effects()
            .iter()
            .any(|request| crm_effect(request) == format!("contact {unwanted}")),
        "a discarded dead letter reached the CRM"
    );
    assert_eq!(crm_status.stats.delivered, 4);
    assert_eq!(marketing.arrived(), 0, "dash_marketing stays paused");
    assert_eq!(hub.status_of("dash_marketing").await.backlog, 5);
}
