//! Cross-checks with Stripe's official SDKs (installed into `tests/.sdk` by
//! `tests/run.sh`): headers made by their test helpers are accepted by the
//! hub, and headers made by `switchyard sign` pass their verifiers.

use crate::support::*;
use std::process::Command;
use switchyard::ingest::scheme::stripe::signature_header;

fn sdk_dir() -> std::path::PathBuf {
    repo_root().join("tests/.sdk")
}

fn run(mut command: Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{what}: {err} (run ./tests/run.sh to install the SDKs)"));
    assert!(
        output.status.success(),
        "{what} failed (run ./tests/run.sh to install the SDKs): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// stripe-python `WebhookSignature.generate_signature_header`.
fn python_header(payload: &[u8], secret: &str) -> String {
    let mut command = Command::new("python3");
    command
        .env("PYTHONPATH", sdk_dir().join("python"))
        .env("PAYLOAD", std::str::from_utf8(payload).unwrap())
        .env("SECRET", secret)
        .args([
            "-c",
            "import os, stripe; print(stripe.WebhookSignature.generate_signature_header(os.environ['PAYLOAD'], os.environ['SECRET']))",
        ]);
    run(command, "stripe-python")
}

/// stripe-node `webhooks.generateTestHeaderString`.
fn node_header(payload: &[u8], secret: &str) -> String {
    let mut command = Command::new("node");
    command
        .env("NODE_PATH", sdk_dir().join("node/node_modules"))
        .env("PAYLOAD", std::str::from_utf8(payload).unwrap())
        .env("SECRET", secret)
        .args([
            "-e",
            "const stripe = require('stripe')('sk_test_unused'); console.log(stripe.webhooks.generateTestHeaderString({payload: process.env.PAYLOAD, secret: process.env.SECRET}))",
        ]);
    run(command, "stripe-node")
}

fn bodies() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = [
        "customer.created.json",
        "invoice.paid.json",
        "checkout.session.completed.json",
    ]
    .iter()
    .map(|f| fixture(f).to_vec())
    .collect();
    // Non-ASCII text: both SDKs sign the UTF-8 string, we sign the bytes.
    bodies.push(synthetic_event(
        &unique("evt_utf8_"),
        "customer.created",
        serde_json::json!({"id": "cus_u", "name": "Zoë Ångström – 東京", "email": null}),
    ));
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_from_the_official_sdk_test_helpers_are_accepted() {
    let (hub, _mock) = example_hub().await;
    for body in bodies() {
        for (sdk, header) in [
            ("python", python_header(&body, SECRET)),
            ("node", node_header(&body, SECRET)),
        ] {
            let (status, answer) = hub
                .post("/webhooks/stripe", &body, &[("stripe-signature", &header)])
                .await;
            assert_eq!(status, 200, "stripe-{sdk}: {answer}");
        }
        // The same helpers with the wrong secret are refused.
        let header = python_header(&body, "whsec_wrong");
        assert_eq!(
            hub.post("/webhooks/stripe", &body, &[("stripe-signature", &header)])
                .await
                .0,
            400
        );
    }
}

#[test]
fn our_signatures_pass_the_official_verifiers() {
    for body in bodies() {
        let header = signature_header(SECRET, now(), &body);
        let mut python = Command::new("python3");
        python
            .env("PYTHONPATH", sdk_dir().join("python"))
            .env("PAYLOAD", std::str::from_utf8(&body).unwrap())
            .env("HEADER", &header)
            .env("SECRET", SECRET)
            .args([
                "-c",
                "import os, stripe; stripe.WebhookSignature.verify_header(os.environ['PAYLOAD'], os.environ['HEADER'], os.environ['SECRET'], 300); print('ok')",
            ]);
        assert_eq!(run(python, "stripe-python verify_header"), "ok");
        let mut node = Command::new("node");
        node.env("NODE_PATH", sdk_dir().join("node/node_modules"))
            .env("PAYLOAD", std::str::from_utf8(&body).unwrap())
            .env("HEADER", &header)
            .env("SECRET", SECRET)
            .args([
                "-e",
                "const stripe = require('stripe')('sk_test_unused'); const e = stripe.webhooks.constructEvent(process.env.PAYLOAD, process.env.HEADER, process.env.SECRET); console.log(e.id ? 'ok' : 'no id')",
            ]);
        assert_eq!(run(node, "stripe-node constructEvent"), "ok");
    }
}
