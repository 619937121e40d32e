//! The idempotency protocol, one suite run against both backends: real Redis
//! (127.0.0.1:6379, a unique key prefix per test) and the embedded store.

use crate::harness::unique;
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
    let store = loop {
        match EmbeddedStore::open(dir.path()) {
            Ok(store) => break store,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert_eq!(
        store.claim(&key, Duration::from_secs(60)).await.unwrap(),
        Claim::AlreadyDone
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_on_redis_delivers_each_effect_once() {
    use crate::harness::*;
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
