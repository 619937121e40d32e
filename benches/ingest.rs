//! Ingest hot path: signature verification and durable appends.
//!
//! Each group has a baseline measured in the same run, so the figures to
//! read are ratios: verification against one bare HMAC, envelope encode and
//! decode against one copy of the payload (the least any framing costs), and
//! a group-committed append at concurrency 64 against one append alone (both
//! fsync).
//!
//! `cargo bench --bench ingest`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use switchyard::bus::embedded::{EmbeddedBus, EmbeddedSettings};
use switchyard::bus::{Bus, Envelope, Subscription};
use switchyard::config::{EventPattern, SecretRef, SourceKind};
use switchyard::ingest::scheme::stripe::signature_header;
use switchyard::ingest::scheme::{SigningKey, verify_request};

const SECRET: &str = "whsec_bench_secret";

fn body(len: usize) -> Vec<u8> {
    let mut body =
        br#"{"id":"evt_bench","object":"event","type":"invoice.paid","data":{"object":{"pad":""#
            .to_vec();
    body.resize(len - 4, b'x');
    body.extend_from_slice(br#""}}}"#);
    body
}

fn signature(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let secret = SecretRef::File(secret_file).resolve().unwrap();
    let keys = vec![SigningKey::new(SourceKind::Stripe, &secret).unwrap()];
    let payload = body(2048);
    let now = 1_700_000_000;
    let mut headers = warp::http::HeaderMap::new();
    headers.insert(
        "stripe-signature",
        signature_header(SECRET, now, &payload).parse().unwrap(),
    );
    let mut group = c.benchmark_group("signature_2KiB");
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("baseline_bare_hmac", |b| {
        b.iter(|| {
            let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
            mac.update(b"1700000000.");
            mac.update(&payload);
            mac.finalize()
        })
    });
    // What ingest runs per request: header lookup, parse, window, HMAC.
    group.bench_function("verify_stripe_request", |b| {
        b.iter(|| verify_request(SourceKind::Stripe, &headers, &payload, &keys, 300, now).unwrap())
    });
    group.finish();
}

fn envelope(c: &mut Criterion) {
    let envelope = Envelope {
        source: "stripe".into(),
        event_id: "evt_1PgBenchEnvelope0001".into(),
        event_type: "invoice.paid".into(),
        created: 1_722_470_400,
        livemode: false,
        account: Some("acct_1NxAcmeToolsTest".into()),
        received_at_ms: 1_722_470_400_123,
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        generation: None,
        key_format: switchyard::bus::envelope::KeyFormat::SourceScoped,
        payload: bytes::Bytes::from(body(2048)),
    };
    let encoded = envelope.encode();
    let mut group = c.benchmark_group("envelope_2KiB");
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("baseline_payload_copy", |b| {
        b.iter(|| bytes::Bytes::copy_from_slice(&envelope.payload))
    });
    group.bench_function("encode", |b| b.iter(|| envelope.encode()));
    group.bench_function("decode", |b| b.iter(|| Envelope::decode(&encoded).unwrap()));
    group.finish();
}

fn appends(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(
        EmbeddedBus::open(
            dir.path(),
            vec![Subscription {
                consumer: "bench".into(),
                filters: vec![("stripe".into(), EventPattern::Any)],
            }],
            EmbeddedSettings {
                visibility_timeout: Duration::from_secs(300),
                dedup_window: Duration::from_secs(86_400),
                retention: Duration::from_secs(86_400),
                empty_store: Default::default(),
            },
        )
        .unwrap(),
    );
    let payload = bytes::Bytes::from(body(2048));
    let mut next_id = 0u64;
    let mut group = c.benchmark_group("durable_append_2KiB");
    group.sample_size(20);
    for concurrency in [1usize, 16, 64, 256] {
        group.throughput(Throughput::Elements(concurrency as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(concurrency),
            &concurrency,
            |b, &n| {
                b.iter(|| {
                    let envelopes: Vec<Envelope> = (0..n)
                        .map(|_| {
                            next_id += 1;
                            Envelope {
                                source: "stripe".into(),
                                event_id: format!("evt_{next_id}"),
                                event_type: "invoice.paid".into(),
                                created: 0,
                                livemode: false,
                                account: None,
                                received_at_ms: 0,
                                traceparent: None,
                                generation: None,
                                key_format: switchyard::bus::envelope::KeyFormat::SourceScoped,
                                payload: payload.clone(),
                            }
                        })
                        .collect();
                    runtime.block_on(async {
                        let appends = envelopes.iter().map(|e| bus.append(e));
                        for result in futures::future::join_all(appends).await {
                            result.unwrap();
                        }
                    })
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, signature, envelope, appends);
criterion_main!(benches);
