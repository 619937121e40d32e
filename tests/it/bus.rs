//! The embedded bus engine's contract: durable appends, dedup, routing to
//! subscribed consumers only, leases that come back, delayed retries, dead
//! letters, and all of it across a reopen.

use bytes::Bytes;
use std::path::Path;
use std::time::Duration;
use switchyard::bus::embedded::{EmbeddedBus, EmbeddedSettings};
use switchyard::bus::{Appended, Bus, DeadQueue, Envelope, Subscription};
use switchyard::config::EventPattern;

fn open(dir: &Path, visibility: Duration) -> EmbeddedBus {
    open_with_retention(dir, visibility, Duration::from_secs(3600))
}

fn open_with_retention(dir: &Path, visibility: Duration, retention: Duration) -> EmbeddedBus {
    let subscriptions = vec![
        Subscription {
            consumer: "crm".into(),
            filters: vec![("stripe".into(), EventPattern::parse("customer.*").unwrap())],
        },
        Subscription {
            consumer: "erp".into(),
            filters: vec![(
                "stripe".into(),
                EventPattern::parse("invoice.paid").unwrap(),
            )],
        },
    ];
    let settings = EmbeddedSettings {
        visibility_timeout: visibility,
        dedup_window: Duration::from_secs(3600),
        retention,
    };
    // A previous instance's writer thread may still be closing the file.
    for _ in 0..100 {
        if let Ok(bus) = EmbeddedBus::open(dir, subscriptions.clone(), settings.clone()) {
            return bus;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("bus did not reopen");
}

fn event(id: &str, event_type: &str) -> Envelope {
    Envelope {
        source: "stripe".into(),
        event_id: id.into(),
        event_type: event_type.into(),
        created: 1,
        livemode: false,
        account: None,
        received_at_ms: 1,
        traceparent: None,
        payload: Bytes::from(format!(r#"{{"id":"{id}","type":"{event_type}"}}"#)),
    }
}

const NO_WAIT: Duration = Duration::from_millis(0);

#[tokio::test]
async fn appends_route_to_subscribers_and_dedup() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path(), Duration::from_secs(60));
    assert_eq!(
        bus.append(&event("evt_1", "customer.created"))
            .await
            .unwrap(),
        Appended::Stored
    );
    assert_eq!(
        bus.append(&event("evt_1", "customer.created"))
            .await
            .unwrap(),
        Appended::Duplicate
    );
    assert_eq!(
        bus.append(&event("evt_2", "invoice.paid")).await.unwrap(),
        Appended::Stored
    );
    assert_eq!(
        bus.append(&event("evt_3", "payment_intent.created"))
            .await
            .unwrap(),
        Appended::Stored
    );
    assert_eq!(bus.backlog("crm").await.unwrap(), 1);
    assert_eq!(bus.backlog("erp").await.unwrap(), 1);
    let crm = bus.pull("crm", 10, NO_WAIT).await.unwrap();
    assert_eq!(crm.len(), 1);
    assert_eq!(crm[0].envelope.event_id, "evt_1");
    assert_eq!(crm[0].attempt, 1);
    assert!(bus.pull("unknown", 1, NO_WAIT).await.is_err());
}

#[tokio::test]
async fn a_lease_that_is_not_settled_comes_back_and_a_stale_ack_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path(), Duration::from_millis(200));
    bus.append(&event("evt_1", "customer.created"))
        .await
        .unwrap();
    let first = bus.pull("crm", 1, NO_WAIT).await.unwrap().remove(0);
    assert!(
        bus.pull("crm", 1, NO_WAIT).await.unwrap().is_empty(),
        "leased: invisible"
    );
    // Waits for the lease to run out, then gets the event again.
    let second = bus
        .pull("crm", 1, Duration::from_secs(5))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.envelope.event_id, "evt_1");
    assert_eq!(second.attempt, 2);
    // The first holder wakes up late: its ack must not remove the new lease.
    bus.ack(&first).await.unwrap();
    assert_eq!(bus.backlog("crm").await.unwrap(), 1);
    bus.ack(&second).await.unwrap();
    assert_eq!(bus.backlog("crm").await.unwrap(), 0);
}

#[tokio::test]
async fn a_retry_is_invisible_until_its_delay_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path(), Duration::from_secs(60));
    bus.append(&event("evt_1", "customer.created"))
        .await
        .unwrap();
    let delivery = bus.pull("crm", 1, NO_WAIT).await.unwrap().remove(0);
    let started = std::time::Instant::now();
    bus.retry(&delivery, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(bus.pull("crm", 1, NO_WAIT).await.unwrap().is_empty());
    let again = bus
        .pull("crm", 1, Duration::from_secs(5))
        .await
        .unwrap()
        .remove(0);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(again.attempt, 2);
}

#[tokio::test]
async fn everything_durable_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = open(dir.path(), Duration::from_secs(60));
        bus.append(&event("evt_1", "customer.created"))
            .await
            .unwrap();
        bus.append(&event("evt_2", "customer.updated"))
            .await
            .unwrap();
        bus.append(&event("evt_3", "invoice.paid")).await.unwrap();
        let erp = bus.pull("erp", 1, NO_WAIT).await.unwrap().remove(0);
        bus.dead_letter(&erp, DeadQueue::Review, "no order")
            .await
            .unwrap();
    }
    let bus = open(dir.path(), Duration::from_secs(60));
    assert_eq!(
        bus.append(&event("evt_1", "customer.created"))
            .await
            .unwrap(),
        Appended::Duplicate
    );
    assert_eq!(bus.backlog("crm").await.unwrap(), 2);
    let parked = bus.dead_letters("erp", DeadQueue::Review).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].reason, "no order");
    assert_eq!(parked[0].envelope, event("evt_3", "invoice.paid"));
    assert!(
        bus.dead_letters("erp", DeadQueue::DeadLetter)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn concurrent_appends_are_all_durable_and_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let bus = std::sync::Arc::new(open(dir.path(), Duration::from_secs(60)));
    let appends = (0..200).map(|i| {
        let bus = std::sync::Arc::clone(&bus);
        tokio::spawn(async move {
            bus.append(&event(&format!("evt_{}", i % 100), "customer.created"))
                .await
                .unwrap()
        })
    });
    let results = futures::future::join_all(appends).await;
    let stored = results
        .iter()
        .filter(|r| *r.as_ref().unwrap() == Appended::Stored)
        .count();
    assert_eq!(stored, 100);
    assert_eq!(bus.backlog("crm").await.unwrap(), 100);
}

#[tokio::test]
async fn failed_commits_answer_errors_and_keep_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path(), Duration::from_secs(60));
    bus.inject_commit_failures(true);
    assert!(
        bus.append(&event("evt_1", "customer.created"))
            .await
            .is_err()
    );
    bus.inject_commit_failures(false);
    assert_eq!(bus.backlog("crm").await.unwrap(), 0);
    assert_eq!(
        bus.append(&event("evt_1", "customer.created"))
            .await
            .unwrap(),
        Appended::Stored
    );
}

#[tokio::test]
async fn compaction_deletes_only_settled_events_past_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open_with_retention(dir.path(), Duration::from_secs(60), Duration::ZERO);
    bus.append(&event("evt_1", "customer.created"))
        .await
        .unwrap();
    bus.append(&event("evt_2", "customer.updated"))
        .await
        .unwrap();
    bus.append(&event("evt_3", "payment_intent.created"))
        .await
        .unwrap();
    let first = bus.pull("crm", 1, NO_WAIT).await.unwrap().remove(0);
    bus.ack(&first).await.unwrap();
    // evt_1 is settled and evt_3 had no consumer: both go; evt_2 waits.
    assert_eq!(bus.compact(100).await.unwrap(), 2);
    assert_eq!(bus.compact(100).await.unwrap(), 0);
    let second = bus.pull("crm", 1, NO_WAIT).await.unwrap().remove(0);
    assert_eq!(second.envelope.event_id, "evt_2");
    // Dedup outlives the log: a late retry of evt_1 is still a duplicate.
    assert_eq!(
        bus.append(&event("evt_1", "customer.created"))
            .await
            .unwrap(),
        Appended::Duplicate
    );
}

#[tokio::test]
async fn a_released_delivery_is_due_at_once_and_costs_no_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path(), Duration::from_secs(60));
    bus.append(&event("evt_1", "customer.created"))
        .await
        .unwrap();
    let first = bus.pull("crm", 1, NO_WAIT).await.unwrap().remove(0);
    bus.release(&first).await.unwrap();
    let again = bus.pull("crm", 1, NO_WAIT).await.unwrap().remove(0);
    assert_eq!(again.attempt, 1);
}
