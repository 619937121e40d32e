//! `switchyard plugin new | build | test`: the plugin author's loop, run as
//! an author runs it, on the real host and the real SDK.

use crate::support::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn switchyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .unwrap()
}

/// `switchyard plugin test <plugin> --event <event> <rest>`.
fn plugin_test(plugin: &str, event: &str, rest: &[&str]) -> Output {
    let mut args = vec!["plugin", "test", plugin, "--event", event];
    args.extend_from_slice(rest);
    switchyard(&args)
}

fn event(name: &str) -> String {
    repo_root()
        .join("tests/fixtures/events")
        .join(name)
        .display()
        .to_string()
}

fn json_run(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "{err}: stdout {} stderr {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn plugin_test_shows_the_outcome_every_request_time_and_memory() {
    let crm = plugin_path("crm").display().to_string();
    let output = plugin_test(
        &crm,
        &event("customer.created.json"),
        &["--respond", "crm=200", "--json"],
    );
    assert!(output.status.success(), "{output:?}");
    let run = json_run(&output);
    assert_eq!(run["outcome"], "done");
    let requests = run["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "{run}");
    assert_eq!(requests[0]["connection"], "crm");
    assert_eq!(requests[0]["method"], "PUT");
    assert!(
        requests[0]["path"]
            .as_str()
            .unwrap()
            .starts_with("/contacts/cus_")
    );
    let headers = requests[0]["headers"].as_array().unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h[0] == "idempotency-key"
                && h[1].as_str().unwrap().starts_with("test:stripe:evt_")),
        "{headers:?}"
    );
    assert!(run["wall_us"].as_u64().unwrap() > 0);
    assert!(run["cpu_us"].as_u64().is_some());
    let peak = run["peak_memory_bytes"].as_u64().unwrap();
    assert!(
        peak > 0 && peak <= run["memory_limit_bytes"].as_u64().unwrap(),
        "{run}"
    );

    // The same run as text, the way an author reads it.
    let text = plugin_test(
        &crm,
        &event("customer.created.json"),
        &["--respond", "crm=200"],
    );
    let text = String::from_utf8_lossy(&text.stdout);
    for expected in [
        "outcome: done",
        "1. PUT crm /contacts/cus_",
        "time: wall",
        "memory: peak",
    ] {
        assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
    }
}

#[test]
fn plugin_test_prints_why_a_delivery_would_fail() {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("busy.json");
    std::fs::write(&body, r#"{"error":"busy"}"#).unwrap();
    // A downstream 503: the SDK asks for a retry, and the exit code says so.
    let output = plugin_test(
        &plugin_path("crm").display().to_string(),
        &event("customer.created.json"),
        &[
            "--respond",
            &format!("crm=503:{}", body.display()),
            "--json",
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let run = json_run(&output);
    assert_eq!(run["outcome"], "retry");
    assert!(run["reason"].as_str().unwrap().contains("503"), "{run}");

    // The guest's own message: an invoice without an order goes to review.
    let output = plugin_test(
        &plugin_path("erp").display().to_string(),
        &event("invoice.paid.no_order.json"),
        &["--respond", "erp=200", "--json"],
    );
    assert_eq!(output.status.code(), Some(1));
    let run = json_run(&output);
    assert_eq!(run["outcome"], "review", "{run}");
    assert!(run["reason"].as_str().unwrap().contains("order"), "{run}");
    assert_eq!(run["requests"].as_array().unwrap().len(), 0);

    // A connection the run did not grant is refused like in production.
    let output = plugin_test(
        &plugin_path("crm").display().to_string(),
        &event("customer.created.json"),
        &["--json"],
    );
    let run = json_run(&output);
    assert_eq!(run["outcome"], "reject", "{run}");
    assert!(
        run["reason"].as_str().unwrap().contains("not granted"),
        "{run}"
    );
}

#[test]
fn a_new_plugin_goes_from_template_to_a_passing_test() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().display().to_string();
    let sdk = repo_root().join("plugins/sdk").display().to_string();
    let new = [
        "plugin",
        "new",
        "ledger-sync",
        "--path",
        &parent,
        "--sdk",
        &sdk,
    ];
    let created = switchyard(&new);
    assert!(created.status.success(), "{created:?}");
    let crate_dir = dir.path().join("ledger-sync");
    assert!(crate_dir.join("src/lib.rs").is_file());
    // The SDK by a relative path: no folder of this machine in the crate.
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(!manifest.contains("path = \"/"), "{manifest}");
    assert!(
        manifest.contains("switchyard-plugin = { path = \"../"),
        "{manifest}"
    );
    // A second `new` with the same name must not overwrite the author's work.
    let again = switchyard(&new);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // The plugin workspace's target dir already holds the SDK's dependencies
    // built for wasm: the build takes seconds instead of minutes.
    let crate_path = crate_dir.display().to_string();
    let target = repo_root().join("plugins/target").display().to_string();
    let built = switchyard(&["plugin", "build", &crate_path, "--target-dir", &target]);
    assert_success(&built);
    assert!(crate_dir.join("ledger-sync.wasm").is_file());
    assert!(String::from_utf8_lossy(&built.stdout).contains("loads in this host"));

    let example = crate_dir.join("events/customer.created.json");
    let output = plugin_test(
        &crate_path,
        &example.display().to_string(),
        &["--respond", "api=200", "--json"],
    );
    assert!(output.status.success(), "{output:?}");
    let run = json_run(&output);
    assert_eq!(run["outcome"], "done");
    assert_eq!(run["requests"][0]["method"], "PUT");
    assert_eq!(run["requests"][0]["path"], "/customers/cus_test_1");
    let body: Value = serde_json::from_str(run["requests"][0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["email"], "ada@example.com");
}

#[test]
fn plugin_new_refuses_a_bad_name_and_a_missing_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().display().to_string();
    let bad = switchyard(&[
        "plugin", "new", "Bad Name", "--path", &parent, "--sdk", "/nowhere",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a crate name"));
    let no_sdk = switchyard(&[
        "plugin", "new", "ok", "--path", &parent, "--sdk", "/nowhere",
    ]);
    assert!(!no_sdk.status.success());
    assert!(String::from_utf8_lossy(&no_sdk.stderr).contains("no SDK"));
    assert!(!Path::new(&parent).join("ok").exists());
}
