//! OTLP trace export: one trace from the sender's request through the bus to
//! the downstream, with the same ids the downstream sees in `traceparent`,
//! sent to a collector (a local mock recording OTLP/HTTP JSON requests).

use crate::support::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// Every span the collector received, by span id.
fn spans(collector: &MockDownstream) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for request in collector.received() {
        assert_eq!(request.path, "/v1/traces");
        let body = request.json();
        for resource in body["resourceSpans"].as_array().unwrap() {
            assert_eq!(
                resource["resource"]["attributes"][0]["value"]["stringValue"],
                "switchyard-test"
            );
            for scope in resource["scopeSpans"].as_array().unwrap() {
                for span in scope["spans"].as_array().unwrap() {
                    out.insert(span["spanId"].as_str().unwrap().to_owned(), span.clone());
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_runs_from_the_sender_through_the_bus_to_the_downstream() {
    let collector = MockDownstream::start().await;
    let (hub, crm) = crm_hub(|options| {
        options.extra_tables = format!(
            "[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"switchyard-test\"\n",
            collector.url()
        );
    })
    .await;

    let trace_id = format!("{:032x}", rand::random::<u128>());
    let sender_span = "00f067aa0ba902b7";
    let body = synthetic_event(
        &unique("evt_trace_"),
        "customer.created",
        json!({"id": "cus_traced", "object": "customer", "email": "private@example.com", "name": null}),
    );
    let signature = switchyard::ingest::scheme::stripe::signature_header(SECRET, now(), &body);
    let traceparent = format!("00-{trace_id}-{sender_span}-01");
    let (status, _) = hub
        .post(
            "/webhooks/stripe",
            &body,
            &[
                ("stripe-signature", &signature),
                ("traceparent", &traceparent),
            ],
        )
        .await;
    assert_eq!(status, 200);

    // Exported within the exporter's flush interval.
    eventually(
        Duration::from_secs(20),
        "three spans of the trace",
        || async {
            spans(&collector)
                .values()
                .filter(|span| span["traceId"] == trace_id.as_str())
                .count()
                >= 3
        },
    )
    .await;
    let spans = spans(&collector);
    let of_trace: Vec<&Value> = spans
        .values()
        .filter(|span| span["traceId"] == trace_id.as_str())
        .collect();
    let named = |prefix: &str| {
        *of_trace
            .iter()
            .find(|span| span["name"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` span in {of_trace:?}"))
    };
    let ingest = named("ingest stripe");
    let deliver = named("deliver crm");
    let call = named("PUT crm");
    assert_eq!(
        ingest["parentSpanId"], sender_span,
        "ingest joins the sender's trace"
    );
    assert_eq!(ingest["kind"], 2);
    assert_eq!(deliver["parentSpanId"], ingest["spanId"], "across the bus");
    assert_eq!(call["parentSpanId"], deliver["spanId"]);
    assert_eq!(call["kind"], 3);
    let attribute = |span: &Value, key: &str| {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| a["value"]["stringValue"].clone())
    };
    assert_eq!(
        attribute(ingest, "switchyard.outcome"),
        Some(json!("accepted"))
    );
    assert_eq!(
        attribute(deliver, "switchyard.verdict"),
        Some(json!("delivered"))
    );
    assert_eq!(
        attribute(call, "http.response.status_code"),
        Some(json!("200"))
    );
    // The downstream saw the client span's ids.
    let received = &crm.effects()[0];
    assert_eq!(
        received.header("traceparent"),
        Some(format!("00-{trace_id}-{}-01", call["spanId"].as_str().unwrap()).as_str())
    );
    // Spans carry no payload field.
    for request in collector.received() {
        assert!(
            !String::from_utf8_lossy(&request.body).contains("private@example.com"),
            "a payload field reached the collector"
        );
    }
}
