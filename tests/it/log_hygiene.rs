//! Logs never carry payload contents or secrets, at any level.

use crate::support::*;
use serde_json::json;
use std::process::Stdio;
use std::time::Duration;
use switchyard::ingest::scheme::stripe::signature_header;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_payload_field_and_no_secret_reaches_the_logs_even_at_trace() {
    let crm = MockDownstream::start().await;
    crm.script(1, Answer::status(503));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut options = HubOptions::new(example_routes(
        &crm,
        &crm,
        &crm,
        r#"{ first = "10ms", max = "50ms", attempts = 5 }"#,
    ));
    options.admin = true;
    options.listen_port = Some(port);
    let config = write_config(dir.path(), &options);
    let log = dir.path().join("switchyard.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        // Every level for our code and the HTTP stack; the compiler's own trace
        // output (cranelift) is only codegen noise and slows start-up for minutes.
        .env("RUST_LOG", "trace,cranelift_codegen=info,cranelift_frontend=info,regalloc2=info,wasmtime=info,wasmtime_cranelift=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        let tail = &tail[tail.len().saturating_sub(2000)..];
        assert!(
            std::time::Instant::now() < deadline,
            "hub did not come up:\n{tail}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Distinctive values in every kind of payload field.
    let body = synthetic_event(
        "evt_log_hygiene_1",
        "customer.created",
        json!({"id": "cus_LOGPROBE", "object": "customer", "email": "probe.person@leak.example",
               "name": "Probe Leakington", "phone": "+15550001234", "metadata": {"note": "secret-note-LOGPROBE"}}),
    );
    let response = post_signed(&client, &base, &body).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // A refused request too: bad signature over the same body.
    let refused = client
        .post(format!("{base}/webhooks/stripe"))
        .header("content-type", "application/json")
        .header(
            "stripe-signature",
            signature_header("whsec_wrong", now(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    eventually(
        Duration::from_secs(30),
        "crm got the contact after a retry",
        || async {
            crm.effects()
                .iter()
                .any(|r| r.path == "/contacts/cus_LOGPROBE")
        },
    )
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("evt_log_hygiene_1"),
        "event ids are logged (they are not payload)"
    );
    assert!(logs.lines().count() > 20, "trace logging was on");
    for forbidden in [
        "probe.person@leak.example",
        "Probe Leakington",
        "+15550001234",
        "secret-note-LOGPROBE",
        SECRET,
        CRM_TOKEN,
        ADMIN_TOKEN,
        "Bearer",
    ] {
        assert!(
            !logs.contains(forbidden),
            "`{forbidden}` leaked into the logs"
        );
    }
}
