//! Events: the recorded fixtures, synthetic and numbered Stripe-shaped
//! events with the effects they cause downstream, and an independent signer.

use super::{MockDownstream, Received, now, repo_root};
use bytes::Bytes;
use serde_json::Value;
use std::collections::BTreeSet;

pub fn fixture(name: &str) -> Bytes {
    let path = repo_root().join("tests/fixtures/events").join(name);
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// A unique event body, shaped like a Stripe event.
pub fn synthetic_event(id: &str, event_type: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": now(),
        "data": { "object": object },
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": event_type,
    }))
    .unwrap()
}

/// A `customer.*` event (`event_type`) about `customer`, whose event id is
/// `evt_<customer>`.
pub fn customer_event(customer: &str, event_type: &str) -> Vec<u8> {
    synthetic_event(
        &format!("evt_{customer}"),
        event_type,
        serde_json::json!({"id": customer, "object": "customer", "email": null, "name": null}),
    )
}

/// Event `n` of a run: even ones are new customers (an effect on the CRM),
/// odd ones paid invoices (an effect on the ERP). Returns the body and the
/// name of its effect.
pub fn numbered_event(run: &str, n: usize) -> (Vec<u8>, String) {
    if n.is_multiple_of(2) {
        let customer = format!("cus_{run}_{n}");
        let body = customer_event(&customer, "customer.created");
        (body, format!("contact {customer}"))
    } else {
        let invoice = format!("in_{run}_{n}");
        let body = synthetic_event(
            &format!("evt_{invoice}"),
            "invoice.paid",
            serde_json::json!({
                "id": invoice, "object": "invoice", "customer": "cus_1",
                "amount_paid": 1000, "currency": "usd",
                "metadata": {"order_id": format!("ord_{n}")},
            }),
        );
        (body, format!("payment {invoice}"))
    }
}

/// Every effect the CRM and ERP mocks applied (answered 2xx), named as by
/// [`numbered_event`].
pub fn applied(crm: &MockDownstream, erp: &MockDownstream) -> BTreeSet<String> {
    let mut effects: BTreeSet<String> = crm.effects().iter().map(crm_effect).collect();
    effects.extend(erp.effects().iter().map(erp_effect));
    effects
}

pub fn crm_effect(request: &Received) -> String {
    format!("contact {}", request.path.trim_start_matches("/contacts/"))
}

pub fn erp_effect(request: &Received) -> String {
    format!(
        "payment {}",
        request.json()["invoice"].as_str().unwrap_or("?")
    )
}

/// A signature header value made by an independent implementation:
/// Python's `hmac`, `hashlib` and `base64` modules, in a subprocess.
/// `scheme` is `standard-webhooks` (with `[id, timestamp]` in `extra`),
/// `github` or `shopify`.
pub fn python_signature(scheme: &str, secret: &str, body: &[u8], extra: &[&str]) -> String {
    const SIGNER: &str = r#"
import base64, hashlib, hmac, sys
scheme, secret = sys.argv[1], sys.argv[2]
body = sys.stdin.buffer.read()
def mac(key, message):
    return hmac.new(key, message, hashlib.sha256).digest()
if scheme == "standard-webhooks":
    msg_id, timestamp = sys.argv[3], sys.argv[4]
    key = base64.b64decode(secret[len("whsec_"):] if secret.startswith("whsec_") else secret)
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    print("v1," + base64.b64encode(mac(key, signed)).decode())
elif scheme == "github":
    print("sha256=" + mac(secret.encode(), body).hex())
elif scheme == "shopify":
    print(base64.b64encode(mac(secret.encode(), body)).decode())
else:
    sys.exit("unknown scheme " + scheme)
"#;
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args(["-c", SIGNER, scheme, secret])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "python signer failed");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}
