//! The per-consumer policy stack (embedded idempotency keys, circuit breaker,
//! rate limiter) around a no-op service, next to the bare no-op call, per
//! call, measured in the same run. The idempotency `done` mark is durable
//! (fsync), so the stack's cost is mostly that fsync; concurrent calls share
//! it through group commit.
//!
//! `cargo bench --bench dispatch_stack`

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use switchyard::bus::{Delivery, DeliveryHandle, Envelope, Lane};
use switchyard::config::RateLimit;
use switchyard::dispatch::breaker::BreakerConfig;
use switchyard::dispatch::idempotency::EmbeddedStore;
use switchyard::dispatch::layers::BreakerHandle;
use switchyard::dispatch::{ConsumerService, DispatchError, StackParts, Verdict, consumer_stack};
use switchyard::limiter::RateLimiter;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn delivery() -> Delivery {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    Delivery {
        lane: Lane::Live,
        consumer: Arc::from("bench"),
        envelope: Arc::new(Envelope {
            source: "stripe".into(),
            event_id: format!("evt_{id}"),
            event_type: "invoice.paid".into(),
            created: 0,
            livemode: false,
            account: None,
            received_at_ms: 0,
            traceparent: None,
            generation: None,
            key_format: switchyard::bus::envelope::KeyFormat::SourceScoped,
            payload: Bytes::from_static(b"{}"),
        }),
        attempt: 1,
        handle: DeliveryHandle::Embedded { due_ms: 0, seq: id },
    }
}

fn no_op() -> ConsumerService {
    BoxCloneSyncService::new(tower::service_fn(|_: Delivery| async {
        Ok::<_, DispatchError>(Verdict::Delivered {
            called_downstream: true,
        })
    }))
}

async fn run(service: &ConsumerService, concurrency: usize) {
    let calls = (0..concurrency).map(|_| {
        let mut service = service.clone();
        async move {
            service.ready().await.unwrap();
            service.call(delivery()).await.unwrap()
        }
    });
    futures::future::join_all(calls).await;
}

fn stack(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let full = runtime.block_on(async {
        consumer_stack(
            StackParts {
                idempotency: Arc::new(EmbeddedStore::open(dir.path()).unwrap()),
                key_prefix: String::new(),
                lease: Duration::from_secs(60),
                ttl: Duration::from_secs(3600),
                breaker: Some(BreakerHandle::new("bench", BreakerConfig::default())),
                rate_limit: Some(Arc::new(RateLimiter::new(RateLimit {
                    period: Duration::from_nanos(1),
                    burst: 1_000_000,
                }))),
                rate_limit_waits: Default::default(),
                metrics: Default::default(),
            },
            no_op(),
        )
    });
    let bare = no_op();
    let mut group = c.benchmark_group("consumer_stack");
    group.sample_size(20);
    for concurrency in [1usize, 64] {
        group.throughput(Throughput::Elements(concurrency as u64));
        group.bench_with_input(
            BenchmarkId::new("baseline_bare_call", concurrency),
            &concurrency,
            |b, &n| b.iter(|| runtime.block_on(run(&bare, n))),
        );
        group.bench_with_input(
            BenchmarkId::new("full_stack", concurrency),
            &concurrency,
            |b, &n| b.iter(|| runtime.block_on(run(&full, n))),
        );
    }
    group.finish();
}

criterion_group!(benches, stack);
criterion_main!(benches);
