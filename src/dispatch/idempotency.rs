//! Idempotency keys per (consumer, event): the guard that makes redelivery safe.
//!
//! Protocol, the same on every backend:
//! 1. `claim`: set the key to a fresh lease token if it does not exist
//!    (`SET key token NX PX lease`). A `done` value means the effect already
//!    happened: ack and skip. A live lease means another worker is on it.
//! 2. after success, `complete`: `SET key done EX ttl`, with a TTL longer
//!    than the provider's retry window (Stripe retries for 3 days; default 7).
//! 3. after a retryable failure, `release`: delete the key, but only if it
//!    still holds our token (a late worker must not free someone else's lease).
//!
//! Backends: Redis (shared by many switchyard processes) and embedded (redb,
//! one process).

use crate::bus::now_ms;
use crate::durable::{DurableError, GroupCommit, Persist};
use async_trait::async_trait;
use redb::{ReadableTable, TableDefinition};
use std::path::Path;
use std::time::Duration;

const DONE: &str = "done";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This worker holds the lease and must call the plugin.
    Acquired(Lease),
    /// The effect already happened.
    AlreadyDone,
    /// Another worker holds a live lease.
    HeldElsewhere,
}

/// Proof of holding a key, needed to release it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    token: String,
}

impl Lease {
    fn fresh() -> Lease {
        Lease {
            token: format!("processing:{:032x}", rand::random::<u128>()),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum IdempotencyError {
    #[error("idempotency store unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    async fn claim(&self, key: &str, lease: Duration) -> Result<Claim, IdempotencyError>;
    async fn complete(&self, key: &str, ttl: Duration) -> Result<(), IdempotencyError>;
    async fn release(&self, key: &str, lease: &Lease) -> Result<(), IdempotencyError>;
    /// Drops up to `limit` expired keys, where the backend does not do it
    /// itself. Returns how many.
    async fn expire(&self, limit: usize) -> Result<usize, IdempotencyError>;
    /// Checks the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), IdempotencyError>;
}

/// The key of one consumer's effect of one event.
pub fn key(prefix: &str, consumer: &str, source: &str, event_id: &str) -> String {
    format!("{prefix}idem:{consumer}:{source}:{event_id}")
}

/// Redis backend. The connection manager reconnects by itself; while Redis is
/// down every call fails and dispatch leaves events in the bus.
pub struct RedisStore {
    connection: redis::aio::ConnectionManager,
}

impl RedisStore {
    pub async fn connect(url: &str) -> Result<RedisStore, IdempotencyError> {
        let client = redis::Client::open(url)
            .map_err(|err| IdempotencyError::Unavailable(format!("bad redis url: {err}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2);
        let connection = redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .map_err(redis_error)?;
        Ok(RedisStore { connection })
    }
}

fn redis_error(err: redis::RedisError) -> IdempotencyError {
    IdempotencyError::Unavailable(err.to_string())
}

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn claim(&self, key: &str, lease: Duration) -> Result<Claim, IdempotencyError> {
        let mut connection = self.connection.clone();
        // Two rounds at most: the key can expire between SET NX and GET.
        for _ in 0..2 {
            let token = Lease::fresh();
            let set: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(&token.token)
                .arg("NX")
                .arg("PX")
                .arg(lease.as_millis().max(1) as u64)
                .query_async(&mut connection)
                .await
                .map_err(redis_error)?;
            if set.is_some() {
                return Ok(Claim::Acquired(token));
            }
            let current: Option<String> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut connection)
                .await
                .map_err(redis_error)?;
            match current.as_deref() {
                Some(DONE) => return Ok(Claim::AlreadyDone),
                Some(_) => return Ok(Claim::HeldElsewhere),
                None => continue,
            }
        }
        Ok(Claim::HeldElsewhere)
    }

    async fn complete(&self, key: &str, ttl: Duration) -> Result<(), IdempotencyError> {
        let mut connection = self.connection.clone();
        redis::cmd("SET")
            .arg(key)
            .arg(DONE)
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async::<()>(&mut connection)
            .await
            .map_err(redis_error)
    }

    async fn release(&self, key: &str, lease: &Lease) -> Result<(), IdempotencyError> {
        let mut connection = self.connection.clone();
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
        );
        script
            .key(key)
            .arg(&lease.token)
            .invoke_async::<i64>(&mut connection)
            .await
            .map(drop)
            .map_err(redis_error)
    }

    async fn ping(&self) -> Result<(), IdempotencyError> {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
            .map_err(redis_error)
    }

    /// Redis expires keys itself (`PX`/`EX`).
    async fn expire(&self, _limit: usize) -> Result<usize, IdempotencyError> {
        Ok(0)
    }
}

const KEYS: TableDefinition<&str, (u64, &str)> = TableDefinition::new("keys");
const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("expiry");

/// Embedded backend: one redb file, group-committed. `done` marks are durable
/// before `complete` returns; leases are lazy (a crash drops them with their
/// holder, which is what a lease expiry would do).
pub struct EmbeddedStore {
    store: GroupCommit,
}

fn durable_error(err: DurableError) -> IdempotencyError {
    IdempotencyError::Unavailable(err.to_string())
}

impl EmbeddedStore {
    pub fn open(dir: &Path) -> Result<EmbeddedStore, IdempotencyError> {
        let store = GroupCommit::open(&dir.join("idempotency.redb")).map_err(durable_error)?;
        Ok(EmbeddedStore { store })
    }

    async fn put(
        &self,
        sync: Persist,
        key: &str,
        value: String,
        ttl: Duration,
    ) -> Result<(), IdempotencyError> {
        let key = key.to_owned();
        self.store
            .write(sync, move |txn| {
                let expires = now_ms() + ttl.as_millis() as u64;
                let mut keys = txn.open_table(KEYS)?;
                let mut expiry = txn.open_table(EXPIRY)?;
                let old = keys
                    .insert(key.as_str(), (expires, value.as_str()))?
                    .map(|old| old.value().0);
                if let Some(old_expires) = old {
                    expiry.remove((old_expires, key.as_str()))?;
                }
                expiry.insert((expires, key.as_str()), ())?;
                Ok(())
            })
            .await
            .map_err(durable_error)
    }
}

#[async_trait]
impl IdempotencyStore for EmbeddedStore {
    async fn expire(&self, limit: usize) -> Result<usize, IdempotencyError> {
        self.store
            .write(Persist::Lazy, move |txn| {
                let now = now_ms();
                let mut keys = txn.open_table(KEYS)?;
                let mut expiry = txn.open_table(EXPIRY)?;
                let old: Vec<(u64, String)> = expiry
                    .range((0, "")..(now, ""))?
                    .take(limit)
                    .map(|row| row.map(|(k, _)| (k.value().0, k.value().1.to_owned())))
                    .collect::<Result<_, _>>()?;
                for (at, key) in &old {
                    expiry.remove((*at, key.as_str()))?;
                    keys.remove(key.as_str())?;
                }
                Ok(old.len())
            })
            .await
            .map_err(durable_error)
    }

    async fn ping(&self) -> Result<(), IdempotencyError> {
        self.store.read().map(drop).map_err(durable_error)
    }

    async fn claim(&self, key: &str, lease: Duration) -> Result<Claim, IdempotencyError> {
        let key = key.to_owned();
        self.store
            .write(Persist::Lazy, move |txn| {
                let now = now_ms();
                let mut keys = txn.open_table(KEYS)?;
                let current = keys
                    .get(key.as_str())?
                    .map(|v| (v.value().0, v.value().1.to_owned()));
                if let Some((expires, value)) = &current
                    && *expires > now
                {
                    return Ok(if value == DONE {
                        Claim::AlreadyDone
                    } else {
                        Claim::HeldElsewhere
                    });
                }
                let token = Lease::fresh();
                let expires = now + lease.as_millis() as u64;
                keys.insert(key.as_str(), (expires, token.token.as_str()))?;
                let mut expiry = txn.open_table(EXPIRY)?;
                if let Some((old_expires, _)) = current {
                    expiry.remove((old_expires, key.as_str()))?;
                }
                expiry.insert((expires, key.as_str()), ())?;
                Ok(Claim::Acquired(token))
            })
            .await
            .map_err(durable_error)
    }

    async fn complete(&self, key: &str, ttl: Duration) -> Result<(), IdempotencyError> {
        self.put(Persist::Durable, key, DONE.to_owned(), ttl).await
    }

    async fn release(&self, key: &str, lease: &Lease) -> Result<(), IdempotencyError> {
        let key = key.to_owned();
        let token = lease.token.clone();
        self.store
            .write(Persist::Lazy, move |txn| {
                let mut keys = txn.open_table(KEYS)?;
                let current = keys
                    .get(key.as_str())?
                    .map(|v| (v.value().0, v.value().1 == token));
                if let Some((expires, true)) = current {
                    keys.remove(key.as_str())?;
                    txn.open_table(EXPIRY)?.remove((expires, key.as_str()))?;
                }
                Ok(())
            })
            .await
            .map_err(durable_error)
    }
}
