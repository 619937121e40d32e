//! The idempotency protocol, one suite run against both backends: real Redis
//! (127.0.0.1:6379, a unique key prefix per test) and the embedded store.

use crate::support::unique;
use std::sync::Arc;
use std::time::Duration;
use switchyard::dispatch::idempotency::{Claim, EmbeddedStore, IdempotencyStore, RedisStore, key};

async fn backends() -> Vec<(&'static str, Arc<dyn IdempotencyStore>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let embedded: Arc<dyn IdempotencyStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let redis: Arc<dyn IdempotencyStore> = Arc::new(
        RedisStore::connect("redis://127.0.0.1:6379")
            .await
            .expect("Redis on 127.0.0.1:6379 (started by .ci/run)"),
    );
    vec![
        ("embedded", embedded, dir),
        ("redis", redis, tempfile::tempdir().unwrap()),
    ]
}

#[tokio::test]
async fn claim_complete_and_skip() {
    for (name, store, _dir) in backends().await {
        let key = key(&unique("test:"), "crm", "stripe", "evt_1");
        let Claim::Acquired(_lease) = store.claim(&key, Duration::from_secs(60)).await.unwrap()
        else {
            panic!("{name}: first claim must acquire");
        };
        assert_eq!(
            store.claim(&key, Duration::from_secs(60)).await.unwrap(),
            Claim::HeldElsewhere,
            "{name}: a live lease keeps others out"
        );
        store
            .complete(&key, Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(
            store.claim(&key, Duration::from_secs(60)).await.unwrap(),
            Claim::AlreadyDone,
            "{name}: done means skip"
        );
    }
}

#[tokio::test]
async fn release_frees_only_our_own_lease() {
    for (name, store, _dir) in backends().await {
        let key = key(&unique("test:"), "erp", "stripe", "evt_2");
        let Claim::Acquired(first) = store.claim(&key, Duration::from_millis(200)).await.unwrap()
        else {
            panic!("{name}: acquire");
        };
        // The lease expires; a second worker takes the key over.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Claim::Acquired(second) = store.claim(&key, Duration::from_secs(60)).await.unwrap()
        else {
            panic!("{name}: an expired lease can be taken over");
        };
        // The late first worker's release must not free the second's lease.
        store.release(&key, &first).await.unwrap();
        assert_eq!(
            store.claim(&key, Duration::from_secs(60)).await.unwrap(),
            Claim::HeldElsewhere,
            "{name}"
        );
        store.release(&key, &second).await.unwrap();
        assert!(
            matches!(
                store.claim(&key, Duration::from_secs(60)).await.unwrap(),
                Claim::Acquired(_)
            ),
            "{name}: released keys can be claimed again"
        );
    }
}

/// A holder renews its short lease while its call runs; nobody can take it
/// meanwhile. When it stops (it died), the next claim takes it over and
/// learns how long the holder had been silent. A renewal after that reports
/// the lease lost.
#[tokio::test]
async fn renewed_leases_hold_and_abandoned_ones_are_taken_over() {
    for (name, store, _dir) in backends().await {
        let key = key(&unique("test:"), "crm", "stripe", "evt_renew");
        let lease = Duration::from_millis(400);
        let Claim::Acquired(held) = store.claim(&key, lease).await.unwrap() else {
            panic!("{name}: acquire");
        };
        assert_eq!(held.taken_over_after, None, "{name}: a free key");
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(130)).await;
            assert!(store.renew(&key, &held, lease).await.unwrap(), "{name}");
            assert_eq!(
                store.claim(&key, lease).await.unwrap(),
                Claim::HeldElsewhere,
                "{name}: a renewed lease outlives its length"
            );
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        let Claim::Acquired(next) = store.claim(&key, lease).await.unwrap() else {
            panic!("{name}: an abandoned lease is taken over");
        };
        let silent = next.taken_over_after.expect("a takeover says so");
        assert!(
            silent >= Duration::from_millis(550) && silent < Duration::from_secs(5),
            "{name}: silent for {silent:?}"
        );
        assert!(
            !store.renew(&key, &held, lease).await.unwrap(),
            "{name}: the old holder's renewal finds the key taken"
        );
        assert!(store.renew(&key, &next, lease).await.unwrap(), "{name}");
    }
}

/// The embedded store belongs to one process: a lease left by a previous
/// run has no holder, so after a restart it is taken over at once.
#[tokio::test]
async fn embedded_leases_of_a_previous_run_are_taken_over_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let other = key("", "crm", "stripe", "evt_other");
    let key = key("", "crm", "stripe", "evt_previous_run");
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let Claim::Acquired(_) = store.claim(&key, Duration::from_secs(600)).await.unwrap() else {
            panic!();
        };
        // A durable write flushes the lazy lease with it, as later traffic would.
        store
            .complete(&other, Duration::from_secs(600))
            .await
            .unwrap();
    }
    let store = reopen(dir.path()).await;
    let Claim::Acquired(lease) = store.claim(&key, Duration::from_secs(600)).await.unwrap() else {
        panic!("the previous run's lease has no holder");
    };
    assert!(lease.taken_over_after.is_some(), "counted as a takeover");
}

#[tokio::test]
async fn done_expires_after_its_ttl() {
    for (name, store, _dir) in backends().await {
        let key = key(&unique("test:"), "marketing", "stripe", "evt_3");
        let Claim::Acquired(_) = store.claim(&key, Duration::from_secs(60)).await.unwrap() else {
            panic!("{name}");
        };
        store.complete(&key, Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            store.claim(&key, Duration::from_secs(60)).await.unwrap(),
            Claim::AlreadyDone
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(
            matches!(
                store.claim(&key, Duration::from_secs(60)).await.unwrap(),
                Claim::Acquired(_)
            ),
            "{name}: done is forgotten after the ttl"
        );
    }
}

#[tokio::test]
async fn concurrent_claims_have_exactly_one_winner() {
    for (name, store, _dir) in backends().await {
        let key = key(&unique("test:"), "crm", "stripe", "evt_race");
        let claims = (0..16).map(|_| {
            let store = Arc::clone(&store);
            let key = key.clone();
            tokio::spawn(async move { store.claim(&key, Duration::from_secs(60)).await.unwrap() })
        });
        let results = futures::future::join_all(claims).await;
        let winners = results
            .into_iter()
            .filter(|r| matches!(r.as_ref().unwrap(), Claim::Acquired(_)))
            .count();
        assert_eq!(winners, 1, "{name}");
    }
}

#[tokio::test]
async fn embedded_done_marks_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = key("", "crm", "stripe", "evt_restart");
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let Claim::Acquired(_) = store.claim(&key, Duration::from_secs(60)).await.unwrap() else {
            panic!();
        };
        store
            .complete(&key, Duration::from_secs(600))
            .await
            .unwrap();
    }
    // The writer thread of the first store holds the file until it notices
    // its channel closed; reopening must wait for that, not fail.
    let store = reopen(dir.path()).await;
    assert_eq!(
        store.claim(&key, Duration::from_secs(60)).await.unwrap(),
        Claim::AlreadyDone
    );
}

/// Opens the embedded store again once the previous instance let go of it.
async fn reopen(dir: &std::path::Path) -> EmbeddedStore {
    loop {
        match EmbeddedStore::open(dir) {
            Ok(store) => return store,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_on_redis_delivers_each_effect_once() {
    use crate::support::*;
    let mock = MockDownstream::start().await;
    let prefix = unique("it:");
    let mut options = HubOptions::new(example_routes(
        &mock,
        &mock,
        &mock,
        r#"{ first = "10ms", max = "50ms", attempts = 5 }"#,
    ));
    options.redis_prefix = Some(prefix.clone());
    let hub = TestHub::start(options).await;
    for _ in 0..3 {
        assert_eq!(hub.send_fixture("invoice.paid.json").await.0, 200);
    }
    hub.drained(Duration::from_secs(30)).await;
    assert_eq!(mock.effects().len(), 1);
    // The done mark is in Redis under the configured prefix.
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let value: Option<String> = redis::cmd("GET")
        .arg(format!(
            "{prefix}idem:erp:stripe:evt_1PgKq3LzX8bYw3NcInvPad01"
        ))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("done"));
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!(
            "{prefix}idem:erp:stripe:evt_1PgKq3LzX8bYw3NcInvPad01"
        ))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(ttl > 6 * 86_400, "done lives 7 days, ttl {ttl}");
    hub.hub.shutdown().await;
}

/// Two sources (two Stripe accounts) may send the same event id with
/// different bodies: each is its own effect, under its own downstream key,
/// so a downstream that honours `Idempotency-Key` applies both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_id_on_two_sources_is_two_effects_under_two_keys() {
    use crate::support::*;
    use switchyard::ingest::scheme::stripe::signature_header;
    let crm = MockDownstream::start().await;
    let hub = TestHub::start(HubOptions::new(
        crm_routes(&crm)
            .source("stripe_eu", "stripe")
            .with("path", r#""/webhooks/stripe_eu""#)
            .with("secrets", r#"["file:stripe_secret_0"]"#)
            .route_from("stripe_eu", &["customer.*"], &["crm"]),
    ))
    .await;
    let customer = |id: &str| {
        synthetic_event(
            "evt_shared_by_two_accounts",
            "customer.created",
            serde_json::json!({"id": id, "object": "customer", "email": null, "name": null}),
        )
    };
    for (path, body) in [
        ("/webhooks/stripe", customer("cus_us")),
        ("/webhooks/stripe_eu", customer("cus_eu")),
    ] {
        let signature = signature_header(SECRET, now(), &body);
        let (status, _) = hub
            .post(path, &body, &[("stripe-signature", signature.as_str())])
            .await;
        assert_eq!(status, 200, "{path}");
    }
    eventually(Duration::from_secs(30), "both effects applied", || async {
        crm.effects().len() == 2
    })
    .await;
    let mut applied: Vec<(String, String)> = crm
        .effects()
        .iter()
        .map(|r| {
            (
                r.path.clone(),
                r.header("idempotency-key").unwrap().to_owned(),
            )
        })
        .collect();
    applied.sort();
    assert_eq!(
        applied,
        [
            (
                "/contacts/cus_eu".to_owned(),
                "crm:stripe_eu:evt_shared_by_two_accounts:1".to_owned()
            ),
            (
                "/contacts/cus_us".to_owned(),
                "crm:stripe:evt_shared_by_two_accounts:1".to_owned()
            ),
        ]
    );
}

/// A worker whose key lease is taken over while its call runs (its
/// renewals came too late, or Redis lost the key) does not trust the call:
/// the verdict is a retry under the same key, and the key is left to its
/// new holder rather than marked done.
#[tokio::test]
async fn a_call_whose_key_lease_was_taken_over_is_not_trusted() {
    use bytes::Bytes;
    use switchyard::bus::{Delivery, DeliveryHandle, Envelope, KeyFormat, Lane};
    use switchyard::dispatch::{DispatchError, StackParts, Verdict, consumer_stack};
    use tower::{Service, ServiceExt};
    let store: Arc<dyn IdempotencyStore> =
        Arc::new(RedisStore::connect("redis://127.0.0.1:6379").await.unwrap());
    let prefix = unique("lost:");
    let slow = tower::service_fn(|_: Delivery| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok::<_, DispatchError>(Verdict::Delivered {
            called_downstream: true,
        })
    });
    let mut stack = consumer_stack(
        StackParts {
            idempotency: Arc::clone(&store),
            key_prefix: prefix.clone(),
            lease: Duration::from_secs(1),
            ttl: Duration::from_secs(600),
            breaker: None,
            rate_limit: None,
            rate_limit_waits: Default::default(),
            metrics: Default::default(),
        },
        slow,
    );
    let delivery = Delivery {
        consumer: Arc::from("crm"),
        lane: Lane::Live,
        envelope: Arc::new(Envelope {
            source: "stripe".into(),
            event_id: "evt_lost".into(),
            event_type: "customer.created".into(),
            created: 0,
            livemode: false,
            account: None,
            received_at_ms: 0,
            traceparent: None,
            generation: None,
            key_format: KeyFormat::SourceScoped,
            payload: Bytes::from_static(b"{}"),
        }),
        attempt: 1,
        handle: DeliveryHandle::Embedded { due_ms: 0, seq: 0 },
    };
    let call = tokio::spawn(async move {
        stack.ready().await.unwrap();
        stack.call(delivery).await
    });
    // Another worker holds the key now.
    let key = key(&prefix, "crm", "stripe", "evt_lost");
    let other = "processing:another-worker|1|600000";
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    eventually_claimed(&mut connection, &key).await;
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(other)
        .query_async(&mut connection)
        .await
        .unwrap();
    let verdict = call.await.unwrap();
    assert!(
        matches!(verdict, Err(DispatchError::LeaseLost(_))),
        "{verdict:?}"
    );
    let value: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some(other), "left to its new holder");
}

async fn eventually_claimed(connection: &mut redis::aio::MultiplexedConnection, key: &str) {
    crate::support::eventually(Duration::from_secs(10), "the call claimed its key", || {
        let mut connection = connection.clone();
        async move {
            redis::cmd("EXISTS")
                .arg(key)
                .query_async::<bool>(&mut connection)
                .await
                .unwrap()
        }
    })
    .await;
}
