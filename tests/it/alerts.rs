//! The anomaly watch on a live hub: a 5xx storm, forged signatures and a
//! silent source each raise the right alert — in the admin API, the metric,
//! the log and the on-call webhook — and clear after recovery, while every
//! event sent is still delivered once.
//!
//! The rules themselves are proven with a fake clock in
//! `src/alerts/tests.rs`; this test proves the wiring.

use crate::support::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);
const ONCALL_TOKEN: &str = "oncall-token-0123456789";

/// Sends a unique signed `customer.created` every 20 ms until stopped;
/// [`Traffic::stop`] returns the customers of the acknowledged ones.
struct Traffic {
    running: Arc<AtomicBool>,
    forging: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Traffic {
    fn start(hub: &TestHub, run: &str) -> Traffic {
        let running = Arc::new(AtomicBool::new(true));
        let forging = Arc::new(AtomicBool::new(false));
        let (client, base, run) = (hub.client.clone(), hub.url(""), run.to_owned());
        let task = {
            let (running, forging) = (Arc::clone(&running), Arc::clone(&forging));
            tokio::spawn(async move {
                let mut customers = Vec::new();
                let mut n = 0;
                while running.load(Ordering::Relaxed) {
                    n += 1;
                    let customer = format!("cus_{run}_{n}");
                    let body = customer_event(&customer, "customer.created");
                    if let Some(response) = post_signed(&client, &base, &body).await
                        && response.status().is_success()
                    {
                        customers.push(customer);
                    }
                    if forging.load(Ordering::Relaxed) {
                        // Signed with a secret the hub does not have: the
                        // sender rotated without telling us.
                        let header = switchyard::ingest::scheme::stripe::signature_header(
                            "whsec_the_new_secret_nobody_added",
                            now(),
                            &body,
                        );
                        let _ = client
                            .post(format!("{base}/webhooks/stripe"))
                            .header("content-type", "application/json")
                            .header("stripe-signature", header)
                            .body(body)
                            .send()
                            .await;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                customers
            })
        };
        Traffic {
            running,
            forging,
            task,
        }
    }

    async fn stop(self) -> Vec<String> {
        self.running.store(false, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

async fn alerts(hub: &TestHub) -> Value {
    let (status, body) = hub.admin_get("/v1/alerts").await;
    assert_eq!(status, 200, "{body}");
    body
}

fn find<'a>(list: &'a Value, rule: &str, subject: &str) -> Option<&'a Value> {
    list.as_array()?
        .iter()
        .find(|alert| alert["rule"] == rule && alert["subject"]["name"] == subject)
}

/// Polls `/v1/alerts` until `pick` finds something, up to [`WITHIN`].
async fn poll_alerts(hub: &TestHub, what: &str, pick: impl Fn(&Value) -> Option<Value>) -> Value {
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let body = alerts(hub).await;
        if let Some(found) = pick(&body) {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}; last answer {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `rule` about `subject` is active and returns it.
async fn raised(hub: &TestHub, rule: &str, subject: &str) -> Value {
    poll_alerts(hub, &format!("`{rule}` raised for `{subject}`"), |body| {
        find(&body["active"], rule, subject).cloned()
    })
    .await
}

/// Waits until `rule` about `subject` is no longer active and is listed as
/// cleared; returns the cleared alert.
async fn cleared(hub: &TestHub, rule: &str, subject: &str) -> Value {
    poll_alerts(hub, &format!("`{rule}` cleared for `{subject}`"), |body| {
        if find(&body["active"], rule, subject).is_some() {
            return None;
        }
        find(&body["recent"], rule, subject).cloned()
    })
    .await
}

async fn metric_line(hub: &TestHub, rule: &str, subject: &str) -> Option<String> {
    let text = hub.metrics_text().await;
    let prefix = format!("switchyard_alert_active{{rule=\"{rule}\",subject=\"{subject}\"}} ");
    text.lines()
        .find(|line| line.starts_with(&prefix))
        .map(|line| line[prefix.len()..].to_owned())
}

/// The on-call posts received for `rule`, as (status, body).
fn oncall_posts(oncall: &MockDownstream, rule: &str) -> Vec<(String, Value)> {
    oncall
        .received()
        .iter()
        .map(Received::json)
        .filter(|post| post["alert"]["rule"] == rule)
        .map(|post| (post["status"].as_str().unwrap_or("?").to_owned(), post))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storms_forgeries_and_silence_raise_alerts_that_clear_on_recovery() {
    let _ = captured_logs();
    let crm = MockDownstream::start().await;
    let oncall = MockDownstream::start().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    std::fs::write(dir.path().join("oncall_token"), ONCALL_TOKEN).unwrap();
    let consumer = "alerting_crm";
    let mut options = HubOptions::new(
        Routes::new()
            .connection("crm", &crm)
            .connection("oncall", &oncall)
            .bearer("file:oncall_token")
            .timeout("2s")
            .consumer(consumer, "crm", &["crm"])
            .retry(r#"{ first = "20ms", max = "100ms", attempts = 1000 }"#)
            // The storm must reach the watch as failed attempts, not as a
            // breaker holding work back (that has its own rule).
            .with("circuit_breaker", "{ enabled = false }")
            .route(&["customer.*"], &[consumer]),
    );
    // Floors only: band rules need a baseline warmed for an hour.
    options.extra_tables = r#"
[alerts]
interval = "100ms"
learn_for = "1m"
warmup = "1h"
sustain = "300ms"
clear_after = "1s"
min_attempts = 3
signature_failures_per_min = 60
silent_after = "2s"
webhook = "oncall"
webhook_path = "/v1/alerts"
"#
    .to_owned();
    options.admin = true;
    options.dir = Some(dir);
    let hub = TestHub::start(options).await;
    let run = unique("al");
    let traffic = Traffic::start(&hub, &run);

    // A normal flow raises nothing.
    eventually(WITHIN, "a normal flow delivered", || async {
        hub.status_of(consumer).await.stats.delivered >= 30
    })
    .await;
    let normal = alerts(&hub).await;
    assert_eq!(normal["enabled"], true);
    assert_eq!(normal["active"], json!([]), "{normal}");

    // A 5xx storm.
    crm.set_default(Answer::status(503));
    let storm = raised(&hub, "delivery_failures", consumer).await;
    assert_eq!(storm["cause"]["kind"], "downstream_errors", "{storm}");
    assert!(
        storm["cause"]["statuses"]["503"].as_u64() > Some(0),
        "{storm}"
    );
    assert!(storm["value"].as_f64() > Some(0.2), "{storm}");
    assert_eq!(storm["threshold"], 0.2, "{storm}");
    assert!(storm["started_at_ms"].as_u64() > Some(0), "{storm}");
    let subject = format!("consumer:{consumer}");
    assert_eq!(
        metric_line(&hub, "delivery_failures", &subject)
            .await
            .as_deref(),
        Some("1")
    );
    let logged = captured_logs().into_iter().any(|line| {
        let fields = &line["fields"];
        line["level"] == "WARN"
            && fields["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("alert raised:"))
            && fields["rule"] == "delivery_failures"
            && fields["subject"] == subject.as_str()
    });
    assert!(logged, "an `alert raised` warning is logged");
    eventually(WITHIN, "the on-call tool got the firing alert", || async {
        oncall_posts(&oncall, "delivery_failures")
            .iter()
            .any(|(status, _)| status == "firing")
    })
    .await;
    let post = &oncall.received()[0];
    assert_eq!(post.method, "POST");
    assert_eq!(post.path, "/v1/alerts");
    assert_eq!(
        post.header("authorization"),
        Some(format!("Bearer {ONCALL_TOKEN}").as_str())
    );

    // Recovery clears it everywhere.
    crm.set_default(Answer::status(200));
    let over = cleared(&hub, "delivery_failures", consumer).await;
    assert!(over["cleared_at_ms"].as_u64() >= over["started_at_ms"].as_u64());
    assert!(over["peak"].as_f64() >= storm["value"].as_f64(), "{over}");
    assert_eq!(
        metric_line(&hub, "delivery_failures", &subject)
            .await
            .as_deref(),
        Some("0")
    );
    eventually(WITHIN, "the on-call tool got the resolution", || async {
        oncall_posts(&oncall, "delivery_failures")
            .iter()
            .any(|(status, _)| status == "resolved")
    })
    .await;

    // Forged signatures: the sender rotated its secret and we were not told.
    traffic.forging.store(true, Ordering::Relaxed);
    let forged = raised(&hub, "signature_failures", "stripe").await;
    assert_eq!(forged["cause"]["kind"], "signature_failures", "{forged}");
    assert!(
        forged["cause"]["reasons"]["no_match"].as_u64() > Some(0),
        "{forged}"
    );
    assert!(
        forged["cause"]["hint"]
            .as_str()
            .is_some_and(|hint| hint.contains("rotated")),
        "{forged}"
    );
    traffic.forging.store(false, Ordering::Relaxed);
    cleared(&hub, "signature_failures", "stripe").await;

    // Silence: the source stops sending.
    let customers = traffic.stop().await;
    let silent = raised(&hub, "source_silent", "stripe").await;
    assert_eq!(silent["cause"]["kind"], "no_traffic", "{silent}");

    // Nothing was lost or duplicated on the way: every acknowledged event
    // reached the CRM exactly once, and nothing was dead-lettered.
    hub.drained(WITHIN).await;
    let mut effects: Vec<String> = crm.effects().iter().map(crm_effect).collect();
    effects.sort();
    let mut expected: Vec<String> = customers.iter().map(|c| format!("contact {c}")).collect();
    expected.sort();
    assert_eq!(effects, expected);
    assert_eq!(hub.status_of(consumer).await.dead_letters, 0);

    // The CLI shows what the API shows.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["alerts", "--recent", "--admin-url", &hub.admin_url("")])
        .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("source_silent"), "{printed}");
    assert!(printed.contains("delivery_failures"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_page_needs_no_token_but_its_data_does() {
    let (hub, _crm) = crm_hub(|options| options.admin = true).await;
    let page = hub
        .client
        .get(hub.admin_url("/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(html.contains("<html"), "an html page");
    assert!(!html.contains(ADMIN_TOKEN));
    for path in ["/v1/alerts", "/v1/series", "/v1/consumers"] {
        let response = hub.client.get(hub.admin_url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{path}");
        let (status, _) = hub.admin_get(path).await;
        assert_eq!(status, 200, "{path}");
    }
}
