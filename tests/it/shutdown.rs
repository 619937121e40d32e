//! SIGTERM: stop taking requests, let in-flight deliveries finish within
//! `server.shutdown_grace`, leave the rest in the bus for the next start.

use crate::support::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_deliveries_and_keeps_the_rest() {
    let crm = MockDownstream::start().await;
    // Slow enough that the first delivery is surely in flight at SIGTERM,
    // well within the harness's 5 s grace.
    crm.set_default(Answer::status(200).delayed(Duration::from_millis(1500)));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut options = HubOptions::new(crm_routes(&crm).concurrency(1));
    options.listen_port = Some(port);
    let config = write_config(dir.path(), &options);

    let mut child = spawn_hub(&config, port).await;
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let customers: Vec<String> = (0..3).map(|n| unique(&format!("cus_{n}_"))).collect();
    for customer in &customers {
        let body = customer_event(customer, "customer.created");
        let answer = post_signed(&client, &base, &body).await.unwrap();
        assert_eq!(answer.status(), 200);
    }
    eventually(
        Duration::from_secs(10),
        "the first delivery is in flight",
        || {
            let crm = crm.clone();
            async move { crm.arrived() >= 1 }
        },
    )
    .await;

    let pid = child.id().unwrap().to_string();
    let signal = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(signal.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("switchyard exits within its grace period")
        .unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    // The in-flight call was answered, not cut off; nothing else started.
    assert_eq!(crm.arrived(), 1);
    assert_eq!(crm.effects().len(), 1);
    assert!(
        client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_err(),
        "no longer listening"
    );

    // The next process delivers what was left in the bus, and not the
    // finished one again.
    crm.set_default(Answer::status(200));
    let _child = spawn_hub(&config, port).await;
    eventually(
        Duration::from_secs(20),
        "all three events delivered",
        || {
            let crm = crm.clone();
            async move { crm.effects().len() >= 3 }
        },
    )
    .await;
    let mut paths: Vec<String> = crm.effects().iter().map(|r| r.path.clone()).collect();
    paths.sort();
    let mut expected: Vec<String> = customers.iter().map(|c| format!("/contacts/{c}")).collect();
    expected.sort();
    assert_eq!(paths, expected, "each event exactly once");
}
