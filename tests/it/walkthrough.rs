//! The README's five-minute walk-through, step by step, as a new user runs
//! it: the stand-in APIs from tools/mock-saas.py, `switchyard serve` with the
//! shipped routes.toml and plugins/dist, `switchyard sign --send`, and
//! `switchyard consumers`. Only the ports differ (free ones, so tests can
//! run side by side); they are set the way an operator would, through the
//! `SWITCHYARD_*` overrides and the connections' base URLs.

use crate::support::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_reaches_all_three_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let (crm, erp, marketing) = (free_port(), free_port(), free_port());
    let (listen, admin) = (free_port(), free_port());
    let root = repo_root();
    let shipped = std::fs::read_to_string(root.join("routes.toml")).unwrap();
    let routes = shipped
        .replace("127.0.0.1:9101", &format!("127.0.0.1:{crm}"))
        .replace("127.0.0.1:9102", &format!("127.0.0.1:{erp}"))
        .replace("127.0.0.1:9103", &format!("127.0.0.1:{marketing}"))
        .replace(
            "plugin = \"plugins/dist/",
            &format!("plugin = \"{}/plugins/dist/", root.display()),
        );
    let config = dir.path().join("routes.toml");
    std::fs::write(&config, routes).unwrap();

    // 1. The stand-ins, printing one line per call.
    let mut saas = Command::new("python3")
        .arg(root.join("tools/mock-saas.py"))
        .args([
            format!("crm={crm}"),
            format!("erp={erp}"),
            format!("marketing={marketing}"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let stdout = saas.stdout.take().unwrap();
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let _stop_saas = KillOnDrop(saas);

    let env = [
        ("STRIPE_WEBHOOK_SECRET", "whsec_test_secret".to_owned()),
        (
            "SWITCHYARD_ADMIN_TOKEN",
            "dev-admin-token-0123456789".to_owned(),
        ),
        ("SWITCHYARD_LISTEN", format!("127.0.0.1:{listen}")),
        ("SWITCHYARD_ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
        ("SWITCHYARD_ADMIN_URL", format!("http://127.0.0.1:{admin}")),
    ];
    let switchyard = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        command
            .current_dir(dir.path())
            .arg("--config")
            .arg(&config)
            .args(args);
        for (key, value) in &env {
            command.env(key, value);
        }
        command
    };

    // 2. The hub.
    let hub = switchyard(&["serve"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _stop_hub = KillOnDrop(hub);
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(30), "the hub is ready", || {
        let client = client.clone();
        async move {
            client
                .get(format!("http://127.0.0.1:{listen}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;

    // 3. Signed events, sent the README's way.
    for event in [
        "customer.created.json",
        "invoice.paid.json",
        "checkout.session.completed.json",
    ] {
        let path = root.join("tests/fixtures/events").join(event);
        let sent = switchyard(&["sign", "--send", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&sent.stdout);
        assert!(sent.status.success(), "{event}: {stdout} {sent:?}");
        assert!(stdout.starts_with("200"), "{event}: {stdout}");
    }

    // Terminal 1 shows the calls: customer → crm (marketing gets it too and
    // has nothing to do), invoice → erp, checkout → marketing.
    eventually(
        Duration::from_secs(30),
        "every consumer's call printed",
        || {
            let lines = lines.lock().unwrap().clone();
            async move {
                let calls = |name: &str| lines.iter().filter(|l| l.starts_with(name)).count();
                calls("crm ") >= 1 && calls("erp ") >= 1 && calls("marketing ") >= 1
            }
        },
    )
    .await;
    let printed = lines.lock().unwrap().clone();
    assert!(
        printed.iter().any(|l| l.starts_with("crm ")
            && l.contains("PUT    /contacts/cus_")
            && l.contains("idempotency-key=crm:stripe:evt_")),
        "{printed:#?}"
    );
    assert!(
        printed
            .iter()
            .any(|l| l.starts_with("erp ") && l.contains("/payments")),
        "{printed:#?}"
    );

    // And the status the README shows.
    let status = switchyard(&["consumers"]).output().unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{table} {status:?}");
    for consumer in ["crm", "erp", "marketing"] {
        assert!(table.contains(consumer), "{table}");
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Regression (issue 17, item 7): under concurrent calls the stand-ins
/// printed two calls on one line, since `print` wrote text and newline apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stand_ins_print_each_call_on_a_line_of_its_own() {
    let port = free_port();
    let mut saas = Command::new("python3")
        .arg(repo_root().join("tools/mock-saas.py"))
        .arg(format!("crm={port}"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(saas.stdout.take().unwrap());
    let _stop_saas = KillOnDrop(saas);
    let mut banner = String::new();
    stdout.read_line(&mut banner).unwrap();
    assert!(banner.starts_with("mock SaaS APIs on"), "{banner}");
    let lines = std::thread::spawn(move || {
        stdout
            .lines()
            .map_while(Result::ok)
            .take(CALLS)
            .collect::<Vec<_>>()
    });

    const CALLS: usize = 300;
    let client = reqwest::Client::new();
    let body = "x".repeat(2048);
    let calls = (0..CALLS).map(|n| {
        let request = client
            .put(format!("http://127.0.0.1:{port}/contacts/{n}"))
            .header("idempotency-key", format!("crm:evt_{n}:1"))
            .body(format!("{{\"n\":{n},\"pad\":\"{body}\"}}"));
        async move { request.send().await.unwrap().status() }
    });
    use futures::StreamExt;
    // 16 at once: the stand-in's listen backlog is small.
    let statuses: Vec<_> = futures::stream::iter(calls)
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(statuses.iter().all(|status| *status == 200));
    let lines = lines.join().unwrap();
    assert_eq!(lines.len(), CALLS);
    for line in &lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 5, "one call per line: {line}");
        let n = fields[2].trim_start_matches("/contacts/");
        assert_eq!(
            fields[3],
            format!("idempotency-key=crm:evt_{n}:1"),
            "{line}"
        );
        assert!(fields[4].starts_with(&format!("{{\"n\":{n},")), "{line}");
    }
}
