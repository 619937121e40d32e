//! The `switchyard` binary as a user runs it: `check` and `sign`.

use crate::support::*;
use std::process::Command;

fn switchyard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

/// Runs `switchyard check` on `config`, which must fail (exit 1), naming
/// each of `expected` on stderr; returns stderr.
fn check_fails(config: &std::path::Path, expected: &[&str]) -> String {
    let output = switchyard()
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    for expected in expected {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    stderr
}

#[tokio::test]
async fn check_accepts_a_good_config_with_its_plugins() {
    let (hub, _mock) = example_hub().await;
    let output = switchyard()
        .args(["check", "--config"])
        .arg(&hub.config_path)
        .output()
        .unwrap();
    assert_success(&output);
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("ok (1 source(s), 3 consumer(s), 3 route(s))")
    );
}

#[test]
fn check_reports_every_validation_problem_and_fails() {
    check_fails(
        &repo_root().join("tests/config/bad/many_problems.toml"),
        &[
            "server.listen:",
            "consumers.crm.connections[1]: unknown connection `sap`",
            "routes[0].consumers[1]: unknown consumer `crm2`",
            "routes[1].source: unknown source `paypal`",
        ],
    );
}

#[test]
fn check_reports_missing_secrets_and_broken_plugins_together() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("not-a-plugin.wasm"),
        b"\0asm\x01\0\0\0garbage",
    )
    .unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        r#"
[sources.stripe]
secrets = ["env:SWITCHYARD_TEST_SECRET_THAT_IS_NOT_SET", "file:missing-secret"]

[connections.crm]
base_url = "http://127.0.0.1:9"

[consumers.crm]
plugin = "missing.wasm"
connections = ["crm"]

[consumers.erp]
plugin = "not-a-plugin.wasm"

[[routes]]
source = "stripe"
events = ["*"]
consumers = ["crm", "erp"]
"#,
    )
    .unwrap();
    check_fails(
        &config,
        &[
            "sources.stripe.secrets[0]: environment variable `SWITCHYARD_TEST_SECRET_THAT_IS_NOT_SET` is not set",
            "sources.stripe.secrets[1]: cannot read secret file",
            "consumer `crm`: cannot read plugin",
            "consumer `erp`: plugin",
            "4 problem(s)",
        ],
    );
}

#[test]
fn sign_prints_a_header_the_verifier_accepts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let event = repo_root().join("tests/fixtures/events/invoice.paid.json");
    let output = switchyard()
        .current_dir(dir.path())
        .args([
            "sign",
            "--secret",
            "file:secret",
            "--timestamp",
            "1700000000",
        ])
        .arg(&event)
        .output()
        .unwrap();
    assert_success(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let header = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Stripe-Signature: "))
        .expect("a Stripe-Signature line");
    assert!(stdout.contains("curl -sS -X POST 'http://127.0.0.1:8080/webhooks/stripe'"));
    let secret_file = dir.path().join("secret");
    let secret = switchyard::config::SecretRef::File(secret_file)
        .resolve()
        .unwrap();
    let kind = switchyard::config::SourceKind::Stripe;
    let keys = [switchyard::ingest::scheme::SigningKey::new(kind, &secret).unwrap()];
    let mut headers = warp::http::HeaderMap::new();
    headers.insert("stripe-signature", header.parse().unwrap());
    let body = std::fs::read(&event).unwrap();
    switchyard::ingest::scheme::verify_request(kind, &headers, &body, &keys, 300, 1_700_000_000)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_send_delivers_to_a_running_hub() {
    let (hub, mock) = example_hub().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .current_dir(hub.dir.path())
        .args(["sign", "--send", "--url", &hub.url("")])
        .arg(repo_root().join("tests/fixtures/events/customer.deleted.json"))
        .output()
        .await
        .unwrap();
    assert_success(&output);
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("200 "));
    eventually(
        std::time::Duration::from_secs(20),
        "crm got the DELETE",
        || async { mock.effects().iter().any(|r| r.method == "DELETE") },
    )
    .await;
}

/// `check` refuses what would fail at run time anyway: an admin token short
/// enough to guess, and connections the address policy would refuse on
/// every call (a private literal address without `allow_private`, a cloud
/// metadata host). A literal loopback base URL stays fine.
#[test]
fn check_fails_for_a_short_admin_token_and_unreachable_connections() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stripe"), "whsec_test").unwrap();
    // Surrounding whitespace is not part of a token: trimmed, it is short.
    std::fs::write(dir.path().join("admin"), "  short-token \n").unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"
token = "file:admin"

[sources.stripe]
secrets = ["file:stripe"]

[connections.crm]
base_url = "http://127.0.0.1:9"

[connections.erp]
base_url = "http://10.1.2.3:8080"

[connections.marketing]
base_url = "http://169.254.169.254/latest"
allow_private = true

[consumers.crm]
plugin = "{crm}"
connections = ["crm", "erp", "marketing"]

[[routes]]
source = "stripe"
events = ["*"]
consumers = ["crm"]
"#,
            crm = plugin_path("crm").display()
        ),
    )
    .unwrap();
    let stderr = check_fails(
        &config,
        &[
            "admin.token: 11 characters is too short",
            "connections.erp.base_url: every call would be refused: `10.1.2.3` is a private address",
            "connections.marketing.base_url: every call would be refused:",
            "3 problem(s)",
        ],
    );
    assert!(!stderr.contains("connections.crm"), "{stderr}");
}

/// The admin commands reach the hub of the config they are given (`-c`):
/// its `[admin] listen` and token, with no URL or token in the environment;
/// an explicit URL naming another hub than `-c` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_reach_the_hub_of_the_config_they_are_given() {
    let mock = MockDownstream::start().await;
    let mut hubs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let mut options = HubOptions::new(crm_routes(&mock));
        options.admin = true;
        options.listen_port = Some(port);
        options.admin_port = Some(admin_port);
        let config = write_config(dir.path(), &options);
        let child = spawn_hub(&config, port).await;
        hubs.push((dir, config, admin_port, child));
    }
    let cli = |args: &[&str], config: &std::path::Path| {
        switchyard()
            .args(args)
            .arg("-c")
            .arg(config)
            .env_remove("SWITCHYARD_ADMIN_URL")
            .env_remove("SWITCHYARD_ADMIN_TOKEN")
            .env_remove("SWITCHYARD_CONFIG")
            .output()
            .unwrap()
    };
    let state = |config: &std::path::Path| {
        let output = cli(&["consumers", "--json"], config);
        assert_success(&output);
        let consumers: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        consumers[0]["state"].as_str().unwrap().to_owned()
    };
    let (first, second) = (&hubs[0].1, &hubs[1].1);
    let paused = cli(&["pause", "crm"], second);
    assert_success(&paused);
    assert_eq!(state(first), "running");
    assert_eq!(state(second), "paused");
    let other_hub = format!("http://127.0.0.1:{}", hubs[0].2);
    let refused = cli(&["resume", "crm", "--admin-url", &other_hub], second);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("name different hubs"), "{stderr}");
    assert_eq!(state(first), "running");
    assert_eq!(state(second), "paused");
}

/// Output cut short (`switchyard … | head`) stops the command quietly, as
/// with any Unix tool, instead of a panic on the broken pipe (exit 101).
#[test]
fn a_closed_output_pipe_stops_the_cli_without_a_panic() {
    let mut child = switchyard()
        .args(["config", "reference"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(output.status.code(), Some(101), "{stderr}");
}
