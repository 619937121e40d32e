//! Kill -9: a switchyard process killed at any moment loses no event it
//! answered 2xx, and no downstream sees one effect under two keys.

use crate::support::*;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_event() {
    let crm = MockDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut options = HubOptions::new(
        crm_routes(&crm)
            .concurrency(4)
            .retry(r#"{ first = "20ms", max = "200ms", attempts = 50 }"#)
            .limits(r#"{ wall = "1s" }"#),
    );
    options.listen_port = Some(port);
    // Short leases so deliveries cut off by a kill come back quickly.
    options.bus_extra = "visibility_timeout = \"3s\"".into();
    options.idempotency_lease = "2s";
    let config = write_config(dir.path(), &options);

    let acknowledged: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let kills = 4;
    let mut next = 0u32;
    for round in 0..=kills {
        let mut child = spawn_hub(&config, port).await;
        // Senders run until the kill; each event is unique (its own customer).
        let senders: Vec<_> = (0..6)
            .map(|sender| {
                let (client, base) = (client.clone(), base.clone());
                let acknowledged = Arc::clone(&acknowledged);
                let first = next + sender * 10_000;
                tokio::spawn(async move {
                    for n in first..first + 10_000 {
                        let customer = format!("cus_r{round}_{n}");
                        let body = customer_event(&customer, "customer.created");
                        match post_signed(&client, &base, &body).await {
                            Some(response) if response.status().is_success() => {
                                acknowledged.lock().unwrap().insert(customer);
                            }
                            Some(_) => {}
                            None => return,
                        }
                    }
                })
            })
            .collect();
        next += 100_000;
        if round < kills {
            // Let traffic and deliveries overlap, then kill without warning.
            tokio::time::sleep(Duration::from_millis(700 + 300 * round as u64)).await;
            child.start_kill().unwrap();
            child.wait().await.unwrap();
            for sender in senders {
                sender.await.unwrap();
            }
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            for sender in senders {
                sender.abort();
            }
            let acked = acknowledged.lock().unwrap().clone();
            assert!(acked.len() > 50, "only {} events acknowledged", acked.len());
            eventually(
                Duration::from_secs(60),
                "every acknowledged event delivered",
                || async {
                    let delivered: BTreeSet<String> = crm
                        .effects()
                        .iter()
                        .map(|r| r.path.trim_start_matches("/contacts/").to_owned())
                        .collect();
                    acked.is_subset(&delivered)
                },
            )
            .await;
            child.start_kill().unwrap();
        }
    }
    assert_one_key_per_effect(&crm, |r| r.path.clone());
}

/// A bus or idempotency file that held data and is now empty or missing is
/// not taken as a new, empty store: `serve` refuses, names the file and the
/// flag, and changes nothing; `--accept-empty-store` starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_or_missing_store_is_refused_unless_accepted() {
    let crm = MockDownstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut options = HubOptions::new(crm_routes(&crm));
    options.listen_port = Some(port);
    let config = write_config(dir.path(), &options);
    let serve = |extra: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
        command
            .args(["serve", "--config"])
            .arg(&config)
            .args(extra)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true);
        command
    };
    // A first run stores an event, then dies.
    let mut first = spawn_command(serve(&[]), port).await;
    let (body, _) = numbered_event(&unique(""), 0);
    let client = reqwest::Client::new();
    let response = post_signed(&client, &format!("http://127.0.0.1:{port}"), &body)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    first.start_kill().unwrap();
    first.wait().await.unwrap();

    let bus_file = dir.path().join("data/bus/bus.redb");
    let idempotency_file = dir.path().join("data/idempotency/idempotency.redb");
    for (file, damage) in [
        (&bus_file, "empty"),
        (&idempotency_file, "empty"),
        (&bus_file, "missing"),
    ] {
        let kept = file.with_extension("redb.kept");
        std::fs::copy(file, &kept).unwrap();
        match damage {
            "empty" => std::fs::write(file, b"").unwrap(),
            _ => std::fs::remove_file(file).unwrap(),
        }
        let refused = tokio::time::timeout(
            Duration::from_secs(30),
            serve(&[]).stderr(std::process::Stdio::piped()).output(),
        )
        .await
        .expect("serve refuses at once")
        .unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{file:?} {damage}: {stderr}");
        assert!(
            stderr.contains(&format!("the store file is {damage}"))
                && stderr.contains(".redb.id")
                && stderr.contains("--accept-empty-store"),
            "{file:?} {damage}: {stderr}"
        );
        match damage {
            "empty" => assert_eq!(std::fs::metadata(file).unwrap().len(), 0, "left as it was"),
            _ => assert!(!file.exists(), "left as it was"),
        }
        std::fs::rename(&kept, file).unwrap();
    }
    // Restored from the copy: it starts again.
    let mut restored = spawn_command(serve(&[]), port).await;
    restored.start_kill().unwrap();
    restored.wait().await.unwrap();
    // The operator accepts starting afresh.
    std::fs::write(&bus_file, b"").unwrap();
    let _fresh = spawn_command(serve(&["--accept-empty-store"]), port).await;
}
