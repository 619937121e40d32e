//! The bus contract, one suite run against both engines (embedded redb and
//! NATS JetStream on a nats-server the test starts): durable appends, dedup,
//! routing to subscribed consumers only, leases that come back when their
//! holder is gone, delayed retries, releases, dead letters with replay and
//! discard, history replay into one consumer, and all of it across a reopen.
//! Engine-specific behaviour (the embedded engine's commit faults and
//! compaction) follows the shared suite.

use crate::natsd::NatsServer;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::bus::Engine as BusEngine;
use switchyard::bus::embedded::{EmbeddedBus, EmbeddedSettings};
use switchyard::bus::nats::{NatsBus, NatsSettings};
use switchyard::bus::{
    Appended, Bus, BusAdmin, Delivery, Envelope, Lane, ParkQueue, Subscriber, Subscription,
};
use switchyard::config::EventPattern;

#[derive(Clone, Copy, Debug)]
enum Engine {
    Embedded,
    Nats,
}

fn subscriptions() -> Vec<Subscription> {
    vec![
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
    ]
}

/// Where one test's bus lives, so it can be opened again (a restart).
struct Place {
    engine: Engine,
    dir: tempfile::TempDir,
    nats: Option<NatsServer>,
    stream: String,
}

impl Place {
    async fn new(engine: Engine) -> Place {
        let nats = match engine {
            Engine::Embedded => None,
            Engine::Nats => Some(NatsServer::start().await),
        };
        Place {
            engine,
            dir: tempfile::tempdir().unwrap(),
            nats,
            stream: crate::support::unique("BUS"),
        }
    }

    async fn open(&self, visibility: Duration) -> Arc<dyn BusEngine> {
        let retention = Duration::from_secs(3600);
        match self.engine {
            Engine::Embedded => Arc::new(open_embedded(self.dir.path(), visibility, retention)),
            Engine::Nats => Arc::new(
                NatsBus::connect(
                    NatsSettings {
                        urls: vec![self.nats.as_ref().unwrap().url()],
                        stream: self.stream.clone(),
                        subject_prefix: self.stream.to_lowercase(),
                        replicas: 1,
                        credentials: None,
                        token: None,
                        ack_timeout: Duration::from_secs(5),
                        visibility_timeout: visibility,
                        dedup_window: Duration::from_secs(3600),
                        retention,
                    },
                    &subscriptions()
                        .into_iter()
                        .map(|subscription| Subscriber {
                            subscription,
                            concurrency: 4,
                        })
                        .collect::<Vec<_>>(),
                )
                .await
                .unwrap(),
            ),
        }
    }
}

fn open_embedded(dir: &std::path::Path, visibility: Duration, retention: Duration) -> EmbeddedBus {
    let settings = EmbeddedSettings {
        visibility_timeout: visibility,
        dedup_window: Duration::from_secs(3600),
        retention,
        empty_store: Default::default(),
    };
    // A previous instance's writer thread may still be closing the file.
    for _ in 0..100 {
        if let Ok(bus) = EmbeddedBus::open(dir, subscriptions(), settings.clone()) {
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
        generation: None,
        key_format: switchyard::bus::envelope::KeyFormat::SourceScoped,
        payload: Bytes::from(format!(r#"{{"id":"{id}","type":"{event_type}"}}"#)),
    }
}

/// Appends events `(id, type)`, each new.
async fn store(bus: &dyn Bus, events: &[(&str, &str)]) {
    for (id, event_type) in events {
        assert_eq!(
            bus.append(&event(id, event_type)).await.unwrap(),
            Appended::Stored
        );
    }
}

/// Long enough for anything due to arrive; pulls return as soon as it does.
const ARRIVES: Duration = Duration::from_secs(5);
/// How long "nothing is due" is watched for.
const QUIET: Duration = Duration::from_millis(300);

async fn pull_from(bus: &Arc<dyn BusEngine>, consumer: &str, lane: Lane) -> Delivery {
    let mut pulled = bus.pull(consumer, lane, 1, ARRIVES).await.unwrap();
    assert_eq!(
        pulled.len(),
        1,
        "{consumer} had nothing due in its {lane:?} lane"
    );
    assert_eq!(pulled[0].lane, lane);
    pulled.remove(0)
}

/// The next delivery of the live lane.
async fn pull_one(bus: &Arc<dyn BusEngine>, consumer: &str) -> Delivery {
    pull_from(bus, consumer, Lane::Live).await
}

/// Neither lane of `consumer` has anything due.
async fn assert_nothing_due(bus: &Arc<dyn BusEngine>, consumer: &str) {
    for lane in Lane::ALL {
        let pulled = bus.pull(consumer, lane, 1, QUIET).await.unwrap();
        assert!(
            pulled.is_empty(),
            "{consumer} unexpectedly got {} in its {lane:?} lane",
            pulled[0].envelope.event_id
        );
    }
}

/// Runs one contract test against each engine.
macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name(super::Engine::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nats() {
                super::$name(super::Engine::Nats).await
            }
        }
    )*};
}

both_engines!(
    appends_route_to_subscribers_and_dedup,
    a_lease_whose_holder_is_gone_comes_back,
    a_retry_is_invisible_until_its_delay_has_passed,
    a_released_delivery_is_due_at_once_and_costs_no_attempt,
    everything_durable_survives_a_reopen,
    concurrent_appends_are_all_durable_and_deduplicated,
    dead_letters_can_be_replayed_and_discarded,
    history_replay_reaches_only_the_named_consumer,
    backlog_and_oldest_age_follow_the_queue,
    a_renewed_lease_is_kept_past_its_visibility_timeout,
    an_event_has_one_parked_entry_per_consumer,
);

/// An event parked again (after a history replay, forced or not, or a DLQ
/// replay) replaces its entry, in either queue: one entry per (consumer,
/// event), holding the latest failure.
async fn an_event_has_one_parked_entry_per_consumer(engine: Engine) {
    let (_place, bus) = two_dead_letters(engine, "first failure").await;
    let counts = || async {
        (
            bus.parked_count("crm", ParkQueue::DeadLetter)
                .await
                .unwrap(),
            bus.parked_count("crm", ParkQueue::Review).await.unwrap(),
        )
    };
    assert_eq!(counts().await, (2, 0));
    let everything = EventPattern::parse("*").unwrap();
    let first = bus
        .history("crm", "stripe", &everything, 0, u64::MAX)
        .await
        .unwrap()
        .into_iter()
        .take(1)
        .collect::<Vec<_>>();
    // A forced history replay of evt_1 fails again, into review.
    assert_eq!(bus.requeue_history("crm", &first, true).await.unwrap(), 1);
    let again = pull_from(&bus, "crm", Lane::Replay).await;
    assert_eq!(again.envelope.event_id, "evt_1");
    bus.park(&again, ParkQueue::Review, "second failure")
        .await
        .unwrap();
    assert_eq!(counts().await, (1, 1), "moved, not copied");
    let review = bus.dead_letters("crm", ParkQueue::Review).await.unwrap();
    assert_eq!(review[0].envelope.event_id, "evt_1");
    assert_eq!(review[0].reason, "second failure");
    // Replayed from review, it fails once more, into the dead-letter queue.
    assert_eq!(
        bus.requeue_dead("crm", ParkQueue::Review, &[review[0].id])
            .await
            .unwrap(),
        1
    );
    let third = pull_from(&bus, "crm", Lane::Replay).await;
    bus.park(&third, ParkQueue::DeadLetter, "third failure")
        .await
        .unwrap();
    assert_eq!(counts().await, (2, 0));
    let parked = bus
        .dead_letters("crm", ParkQueue::DeadLetter)
        .await
        .unwrap();
    let mut seen: Vec<(&str, &str)> = parked
        .iter()
        .map(|entry| (entry.envelope.event_id.as_str(), entry.reason.as_str()))
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        [("evt_1", "third failure"), ("evt_2", "first failure")]
    );
    // Each entry is addressable by its id.
    for entry in &parked {
        assert_eq!(
            bus.discard_dead("crm", ParkQueue::DeadLetter, &[entry.id])
                .await
                .unwrap(),
            1
        );
    }
    assert_eq!(counts().await, (0, 0));
}

/// A holder that is still working renews its lease (`extend`, what dispatch
/// does every third of the timeout while a call runs), so a long call is not
/// handed to a second worker; once it stops renewing, the event comes back.
async fn a_renewed_lease_is_kept_past_its_visibility_timeout(engine: Engine) {
    let place = Place::new(engine).await;
    let bus = place.open(Duration::from_secs(1)).await;
    bus.append(&event("evt_1", "customer.created"))
        .await
        .unwrap();
    let mut held = pull_one(&bus, "crm").await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert!(bus.extend(&mut held).await.unwrap(), "the lease is ours");
        let stolen = bus
            .pull("crm", Lane::Live, 1, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(stolen.is_empty(), "redelivered while its holder renewed it");
    }
    // The holder stops renewing (it died): within the timeout it is back.
    let second = bus
        .pull("crm", Lane::Live, 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(second.len(), 1, "back after the holder stopped renewing");
    assert_eq!(second[0].attempt, 2);
    if matches!(engine, Engine::Embedded) {
        assert!(
            !bus.extend(&mut held).await.unwrap(),
            "a renewal after the lease moved on reports it lost"
        );
    }
    bus.ack(&second[0]).await.unwrap();
    assert_eq!(bus.backlog("crm").await.unwrap(), 0);
}

async fn appends_route_to_subscribers_and_dedup(engine: Engine) {
    let place = Place::new(engine).await;
    let bus = place.open(Duration::from_secs(60)).await;
    let customer = event("evt_1", "customer.created");
    assert_eq!(bus.append(&customer).await.unwrap(), Appended::Stored);
    assert_eq!(bus.append(&customer).await.unwrap(), Appended::Duplicate);
    let invoice = event("evt_2", "invoice.paid");
    assert_eq!(bus.append(&invoice).await.unwrap(), Appended::Stored);
    let unrouted = event("evt_3", "payment_intent.created");
    assert_eq!(bus.append(&unrouted).await.unwrap(), Appended::Stored);
    assert_eq!(bus.backlog("crm").await.unwrap(), 1);
    assert_eq!(bus.backlog("erp").await.unwrap(), 1);
    let crm = pull_one(&bus, "crm").await;
    assert_eq!(*crm.envelope, customer, "the envelope comes back whole");
    assert_eq!(crm.attempt, 1);
    assert_nothing_due(&bus, "crm").await;
    assert_eq!(*pull_one(&bus, "erp").await.envelope, invoice);
    assert!(bus.pull("unknown", Lane::Live, 1, QUIET).await.is_err());
}

async fn a_lease_whose_holder_is_gone_comes_back(engine: Engine) {
    let place = Place::new(engine).await;
    let bus = place.open(Duration::from_secs(1)).await;
    bus.append(&event("evt_1", "customer.created"))
        .await
        .unwrap();
    let first = pull_one(&bus, "crm").await;
    assert_nothing_due(&bus, "crm").await;
    // The holder dies without settling (a crash): the lease runs out.
    drop(first);
    let second = pull_one(&bus, "crm").await;
    assert_eq!(second.envelope.event_id, "evt_1");
    assert_eq!(second.attempt, 2);
    bus.ack(&second).await.unwrap();
    assert_nothing_due(&bus, "crm").await;
}

async fn a_retry_is_invisible_until_its_delay_has_passed(engine: Engine) {
    let place = Place::new(engine).await;
    let bus = place.open(Duration::from_secs(60)).await;
    bus.append(&event("evt_1", "customer.created"))
        .await
        .unwrap();
    let delivery = pull_one(&bus, "crm").await;
    let started = Instant::now();
    bus.retry(&delivery, Duration::from_millis(800))
        .await
        .unwrap();
    let early = bus
        .pull("crm", Lane::Live, 1, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(early.is_empty(), "redelivered before its delay");
    let again = pull_one(&bus, "crm").await;
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(again.attempt, 2);
}

async fn a_released_delivery_is_due_at_once_and_costs_no_attempt(engine: Engine) {
    let place = Place::new(engine).await;
    let bus = place.open(Duration::from_secs(60)).await;
    bus.append(&event("evt_1", "customer.created"))
        .await
        .unwrap();
    let first = pull_one(&bus, "crm").await;
    bus.release(&first).await.unwrap();
    let again = pull_one(&bus, "crm").await;
    assert_eq!(again.attempt, 1);
}

async fn everything_durable_survives_a_reopen(engine: Engine) {
    let place = Place::new(engine).await;
    {
        let bus = place.open(Duration::from_secs(60)).await;
        store(
            &*bus,
            &[
                ("evt_1", "customer.created"),
                ("evt_2", "customer.updated"),
                ("evt_3", "invoice.paid"),
            ],
        )
        .await;
        let erp = pull_one(&bus, "erp").await;
        bus.park(&erp, ParkQueue::Review, "no order").await.unwrap();
    }
    let bus = place.open(Duration::from_secs(60)).await;
    assert_eq!(
        bus.append(&event("evt_1", "customer.created"))
            .await
            .unwrap(),
        Appended::Duplicate
    );
    assert_eq!(bus.backlog("crm").await.unwrap(), 2);
    assert_eq!(bus.backlog("erp").await.unwrap(), 0);
    let parked = bus.dead_letters("erp", ParkQueue::Review).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].reason, "no order");
    assert_eq!(parked[0].attempts, 1);
    assert_eq!(parked[0].envelope, event("evt_3", "invoice.paid"));
    assert!(
        bus.dead_letters("erp", ParkQueue::DeadLetter)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn concurrent_appends_are_all_durable_and_deduplicated(engine: Engine) {
    let place = Place::new(engine).await;
    let bus = place.open(Duration::from_secs(60)).await;
    let appends = (0..200).map(|i| {
        let bus = Arc::clone(&bus);
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

/// A bus whose `crm` dead-lettered evt_1 and evt_2 for `reason` (keep the
/// place alive while the bus is used).
async fn two_dead_letters(engine: Engine, reason: &str) -> (Place, Arc<dyn BusEngine>) {
    let place = Place::new(engine).await;
    let bus = place.open(Duration::from_secs(60)).await;
    store(
        &*bus,
        &[("evt_1", "customer.created"), ("evt_2", "customer.updated")],
    )
    .await;
    for _ in 0..2 {
        let delivery = pull_one(&bus, "crm").await;
        bus.park(&delivery, ParkQueue::DeadLetter, reason)
            .await
            .unwrap();
    }
    (place, bus)
}

async fn dead_letters_can_be_replayed_and_discarded(engine: Engine) {
    let (_place, bus) = two_dead_letters(engine, "gave up: 500").await;
    assert_eq!(bus.backlog("crm").await.unwrap(), 0);
    assert_eq!(
        bus.parked_count("crm", ParkQueue::DeadLetter)
            .await
            .unwrap(),
        2
    );
    assert_eq!(bus.parked_count("crm", ParkQueue::Review).await.unwrap(), 0);
    let parked = bus
        .dead_letters("crm", ParkQueue::DeadLetter)
        .await
        .unwrap();
    let ids: Vec<&str> = parked
        .iter()
        .map(|d| d.envelope.event_id.as_str())
        .collect();
    assert_eq!(ids, ["evt_1", "evt_2"], "oldest first");
    // Ids from another queue or unknown ids move nothing.
    assert_eq!(
        bus.requeue_dead("crm", ParkQueue::Review, &[parked[0].id])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        bus.requeue_dead("crm", ParkQueue::DeadLetter, &[parked[0].id, 987_654])
            .await
            .unwrap(),
        1
    );
    let replayed = pull_from(&bus, "crm", Lane::Replay).await;
    assert_eq!(replayed.envelope.event_id, "evt_1");
    assert_eq!(replayed.attempt, 1, "a replay starts its attempts again");
    bus.ack(&replayed).await.unwrap();
    assert_nothing_due(&bus, "erp").await;
    assert_eq!(
        bus.discard_dead("crm", ParkQueue::DeadLetter, &[parked[1].id])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        bus.parked_count("crm", ParkQueue::DeadLetter)
            .await
            .unwrap(),
        0
    );
    assert_nothing_due(&bus, "crm").await;
}

async fn history_replay_reaches_only_the_named_consumer(engine: Engine) {
    let place = Place::new(engine).await;
    let bus = place.open(Duration::from_secs(60)).await;
    let mut late = event("evt_3", "customer.deleted");
    late.received_at_ms = 5_000;
    for envelope in [
        event("evt_1", "customer.created"),
        event("evt_2", "invoice.paid"),
        late,
    ] {
        bus.append(&envelope).await.unwrap();
    }
    for _ in 0..2 {
        let delivery = pull_one(&bus, "crm").await;
        bus.ack(&delivery).await.unwrap();
    }
    let erp = pull_one(&bus, "erp").await;
    bus.ack(&erp).await.unwrap();
    let customers = EventPattern::parse("customer.*").unwrap();
    let ids = bus
        .history("crm", "stripe", &customers, 0, 2_000)
        .await
        .unwrap();
    assert_eq!(ids.len(), 1, "only evt_1 is inside the window");
    assert_nothing_due(&bus, "crm").await;
    assert_eq!(bus.requeue_history("crm", &ids, false).await.unwrap(), 1);
    assert_eq!(bus.backlog("crm").await.unwrap(), 1);
    let replayed = pull_from(&bus, "crm", Lane::Replay).await;
    assert_eq!(replayed.envelope.event_id, "evt_1");
    assert_eq!(replayed.envelope.generation, None);
    bus.ack(&replayed).await.unwrap();
    assert_nothing_due(&bus, "crm").await;
    assert_nothing_due(&bus, "erp").await;
    // Forced: the same event as a new generation, with its own effect id.
    assert_eq!(bus.requeue_history("crm", &ids, true).await.unwrap(), 1);
    let forced = pull_from(&bus, "crm", Lane::Replay).await;
    assert_eq!(forced.envelope.event_id, "evt_1");
    let generation = forced
        .envelope
        .generation
        .expect("a forced replay has a generation");
    assert_eq!(forced.envelope.effect_id(), format!("evt_1~{generation}"));
    assert_eq!(
        forced.envelope.payload,
        event("evt_1", "customer.created").payload
    );
    bus.ack(&forced).await.unwrap();
    // The history still holds the event as received, once.
    assert_eq!(
        bus.history("crm", "stripe", &customers, 0, 2_000)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        bus.requeue_history("crm", &[987_654], false).await.unwrap(),
        0,
        "unknown ids are skipped"
    );
}

async fn backlog_and_oldest_age_follow_the_queue(engine: Engine) {
    let place = Place::new(engine).await;
    let bus = place.open(Duration::from_secs(60)).await;
    assert_eq!(bus.oldest_pending_age("crm").await.unwrap(), None);
    let mut old = event("evt_1", "customer.created");
    old.received_at_ms = now_ms() - 60_000;
    bus.append(&old).await.unwrap();
    let mut young = event("evt_2", "customer.created");
    young.received_at_ms = now_ms();
    bus.append(&young).await.unwrap();
    let age = bus.oldest_pending_age("crm").await.unwrap().unwrap();
    assert!(age >= Duration::from_secs(60), "age {age:?}");
    let first = pull_one(&bus, "crm").await;
    bus.ack(&first).await.unwrap();
    let age = bus.oldest_pending_age("crm").await.unwrap().unwrap();
    assert!(age < Duration::from_secs(30), "age {age:?}");
    let second = pull_one(&bus, "crm").await;
    bus.ack(&second).await.unwrap();
    crate::support::eventually(Duration::from_secs(5), "crm backlog empty", || {
        let bus = Arc::clone(&bus);
        async move { bus.backlog("crm").await.unwrap() == 0 }
    })
    .await;
    assert_eq!(bus.oldest_pending_age("crm").await.unwrap(), None);
    assert!(bus.backlog("unknown").await.is_err());
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// The embedded engine only.

fn open(dir: &std::path::Path, visibility: Duration) -> EmbeddedBus {
    open_embedded(dir, visibility, Duration::from_secs(3600))
}

fn open_with_retention(
    dir: &std::path::Path,
    visibility: Duration,
    retention: Duration,
) -> EmbeddedBus {
    open_embedded(dir, visibility, retention)
}

const NO_WAIT: Duration = Duration::from_millis(0);

/// The file belongs to one process: after a restart nobody holds the
/// previous run's leases, so they are due at once, not after the timeout.
#[tokio::test]
async fn a_restart_makes_the_previous_runs_leases_due_at_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = open(dir.path(), Duration::from_secs(600));
        bus.append(&event("evt_1", "customer.created"))
            .await
            .unwrap();
        bus.append(&event("evt_2", "customer.created"))
            .await
            .unwrap();
        let leased = bus.pull("crm", Lane::Live, 1, NO_WAIT).await.unwrap();
        assert_eq!(leased.len(), 1);
        // Killed while holding it: nothing settles the lease.
    }
    let bus = open(dir.path(), Duration::from_secs(600));
    let again = bus.pull("crm", Lane::Live, 2, NO_WAIT).await.unwrap();
    let mut attempts: Vec<(String, u32)> = again
        .iter()
        .map(|d| (d.envelope.event_id.clone(), d.attempt))
        .collect();
    attempts.sort();
    assert_eq!(
        attempts,
        [("evt_1".to_owned(), 2), ("evt_2".to_owned(), 1)],
        "the leased event is due again at once, its attempt counted"
    );
}

#[tokio::test]
async fn a_stale_ack_after_the_lease_moved_on_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(dir.path(), Duration::from_millis(200));
    bus.append(&event("evt_1", "customer.created"))
        .await
        .unwrap();
    let first = bus
        .pull("crm", Lane::Live, 1, NO_WAIT)
        .await
        .unwrap()
        .remove(0);
    let second = bus
        .pull("crm", Lane::Live, 1, Duration::from_secs(5))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.attempt, 2);
    // The first holder wakes up late: its ack must not remove the new lease.
    bus.ack(&first).await.unwrap();
    assert_eq!(bus.backlog("crm").await.unwrap(), 1);
    bus.ack(&second).await.unwrap();
    assert_eq!(bus.backlog("crm").await.unwrap(), 0);
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
    store(
        &bus,
        &[
            ("evt_1", "customer.created"),
            ("evt_2", "customer.updated"),
            ("evt_3", "payment_intent.created"),
        ],
    )
    .await;
    let first = bus
        .pull("crm", Lane::Live, 1, NO_WAIT)
        .await
        .unwrap()
        .remove(0);
    bus.ack(&first).await.unwrap();
    // evt_1 is settled and evt_3 had no consumer: both go; evt_2 waits.
    assert_eq!(bus.compact(100).await.unwrap(), 2);
    assert_eq!(bus.compact(100).await.unwrap(), 0);
    let second = bus
        .pull("crm", Lane::Live, 1, NO_WAIT)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.envelope.event_id, "evt_2");
    // Dedup outlives the log: a late retry of evt_1 is still a duplicate.
    assert_eq!(
        bus.append(&event("evt_1", "customer.created"))
            .await
            .unwrap(),
        Appended::Duplicate
    );
}

/// More events wait for a paused consumer than one compaction looks at:
/// younger settled events are deleted anyway, the waiting ones kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_progresses_behind_more_pending_events_than_a_batch() {
    use switchyard::bus::embedded::COMPACT_BATCH;
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(open_with_retention(
        dir.path(),
        Duration::from_secs(60),
        Duration::ZERO,
    ));
    // The erp consumer is paused: its invoices wait, older than everything.
    let waiting = COMPACT_BATCH + 50;
    for chunk in (0..waiting).collect::<Vec<_>>().chunks(1000) {
        let appends = chunk.iter().map(|n| {
            let bus = Arc::clone(&bus);
            async move {
                bus.append(&event(&format!("evt_inv_{n}"), "invoice.paid"))
                    .await
                    .unwrap()
            }
        });
        futures::future::join_all(appends).await;
    }
    // Then crm settles some customer events.
    for n in 0..100 {
        bus.append(&event(&format!("evt_cus_{n}"), "customer.created"))
            .await
            .unwrap();
    }
    loop {
        let pulled = bus.pull("crm", Lane::Live, 64, NO_WAIT).await.unwrap();
        if pulled.is_empty() {
            break;
        }
        for delivery in &pulled {
            bus.ack(delivery).await.unwrap();
        }
    }
    assert_eq!(bus.compact(COMPACT_BATCH).await.unwrap(), 100);
    assert_eq!(bus.compact(COMPACT_BATCH).await.unwrap(), 0);
    assert_eq!(bus.backlog("erp").await.unwrap(), waiting as u64);
    // The waiting events are all still there to deliver.
    let first = bus.pull("erp", Lane::Live, 1, NO_WAIT).await.unwrap();
    assert_eq!(first[0].envelope.event_id, "evt_inv_0");
}

/// One bit flipped at rest in a stored payload (`4900` → `4800`): the event
/// is not handed out with altered bytes; it is parked in the dead-letter
/// queue with the reason, and counted (the `bus_integrity_failures` metric).
#[tokio::test]
async fn a_payload_altered_at_rest_is_parked_never_delivered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = open(dir.path(), Duration::from_secs(60));
        let mut invoice = event("evt_flip", "invoice.paid");
        invoice.payload = Bytes::from_static(
            br#"{"id":"evt_flip","type":"invoice.paid","data":{"object":{"amount_paid":4900}}}"#,
        );
        bus.append(&invoice).await.unwrap();
        bus.append(&event("evt_intact", "invoice.paid"))
            .await
            .unwrap();
    }
    // Flip one bit of the amount wherever the file holds it ('9' is 0x39,
    // '8' is 0x38).
    let file = dir.path().join("bus.redb");
    let mut bytes = std::fs::read(&file).unwrap();
    let needle = b"\"amount_paid\":4900";
    let mut flipped = 0;
    for start in 0..bytes.len().saturating_sub(needle.len()) {
        if &bytes[start..start + needle.len()] == needle {
            bytes[start + needle.len() - 3] ^= 0x01;
            flipped += 1;
        }
    }
    assert!(flipped > 0, "the payload is stored as written");
    std::fs::write(&file, bytes).unwrap();

    let bus = open(dir.path(), Duration::from_secs(60));
    let delivered = bus
        .pull("erp", Lane::Live, 10, Duration::from_millis(200))
        .await
        .unwrap();
    let ids: Vec<&str> = delivered
        .iter()
        .map(|d| d.envelope.event_id.as_str())
        .collect();
    assert_eq!(ids, ["evt_intact"], "the altered event is not handed out");
    assert!(
        delivered
            .iter()
            .all(|d| !String::from_utf8_lossy(&d.envelope.payload).contains("4800"))
    );
    let parked = bus
        .dead_letters("erp", ParkQueue::DeadLetter)
        .await
        .unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].envelope.event_id, "evt_flip");
    assert!(
        parked[0].reason.contains("failed its integrity check"),
        "{}",
        parked[0].reason
    );
    assert_eq!(bus.integrity_failures(), 1);
    // Replaying it parks it again: altered bytes are never delivered.
    assert_eq!(
        bus.requeue_dead("erp", ParkQueue::DeadLetter, &[parked[0].id])
            .await
            .unwrap(),
        1
    );
    let again = bus
        .pull("erp", Lane::Replay, 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(again.is_empty());
    assert_eq!(
        bus.dead_letters("erp", ParkQueue::DeadLetter)
            .await
            .unwrap()
            .len(),
        1
    );
}
