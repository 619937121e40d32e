//! Idempotency keys per (consumer, event): the guard that makes redelivery safe.
//!
//! Protocol, the same on every backend:
//! 1. `claim`: take the key with a fresh lease token if it is free or its
//!    holder's lease expired. A `done` value means the effect already
//!    happened: ack and skip. A live lease means another worker is on it.
//! 2. while the call runs, `renew` every third of the lease: the lease stays
//!    short (a dead worker's key is free within seconds) however long the
//!    call. A renewal that finds the key no longer ours answers `false`.
//! 3. after success, `complete`: `SET key done EX ttl`, with a TTL longer
//!    than the provider's retry window (Stripe retries for 3 days; default 7).
//! 4. after a retryable failure, `release`: delete the key, but only if it
//!    still holds our token (a late worker must not free someone else's lease).
//!
//! A lease is stored as `<token>|<renewed at ms>|<lease ms>` and outlives its
//! lease (three times as long), so the worker that takes an expired one over
//! learns how long its holder had been silent: the failover time. Redis uses
//! its own clock (`TIME`), so the hosts' clocks need not agree.
//!
//! Backends: Redis (shared by many switchyard processes) and embedded (redb,
//! one process).

use crate::bus::now_ms;
use crate::durable::{DurableError, EmptyStore, GroupCommit, Persist};
use async_trait::async_trait;
use redb::{ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const DONE: &str = "done";

/// A stored lease outlives its expiry by this factor, so a takeover can tell
/// how long the holder was silent.
const LEASE_RECORD_FACTOR: u64 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This worker holds the lease and must call the plugin.
    Acquired(Lease),
    /// The effect already happened.
    AlreadyDone,
    /// Another worker holds a live lease.
    HeldElsewhere,
}

/// Proof of holding a key, needed to renew and release it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    token: String,
    /// Set when the key was taken over from a holder whose lease had
    /// expired: how long ago that holder last renewed it.
    pub taken_over_after: Option<Duration>,
}

impl Lease {
    fn fresh(prefix: &str) -> Lease {
        Lease {
            token: format!("{prefix}{:032x}", rand::random::<u128>()),
            taken_over_after: None,
        }
    }
}

/// A stored lease: `<token>|<renewed at ms>|<lease ms>`.
struct StoredLease<'a> {
    token: &'a str,
    renewed_ms: u64,
    lease_ms: u64,
}

impl<'a> StoredLease<'a> {
    fn parse(value: &'a str) -> Option<StoredLease<'a>> {
        let mut parts = value.rsplitn(3, '|');
        let lease_ms = parts.next()?.parse().ok()?;
        let renewed_ms = parts.next()?.parse().ok()?;
        let token = parts.next()?;
        Some(StoredLease {
            token,
            renewed_ms,
            lease_ms,
        })
    }

    fn encode(token: &str, renewed_ms: u64, lease: Duration) -> String {
        format!("{token}|{renewed_ms}|{}", lease_ms(lease))
    }

    fn expires_ms(&self) -> u64 {
        self.renewed_ms + self.lease_ms
    }
}

fn lease_ms(lease: Duration) -> u64 {
    lease.as_millis().max(1) as u64
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum IdempotencyError {
    #[error("idempotency store unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    async fn claim(&self, key: &str, lease: Duration) -> Result<Claim, IdempotencyError>;
    /// Extends a lease we hold to `lease` from now. `Ok(false)`: the key is
    /// no longer ours (expired and taken over, or gone).
    async fn renew(
        &self,
        key: &str,
        held: &Lease,
        lease: Duration,
    ) -> Result<bool, IdempotencyError>;
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

/// Takes a free or expired key (Redis time, so hosts' clocks do not matter).
/// Answers `{"done"}`, `{"held"}`, or `{"acquired", silent ms or -1}`.
/// A value without the `|renewed|lease` suffix (written by a version before
/// renewals) is held until Redis expires it.
const CLAIM_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
local current = redis.call('GET', KEYS[1])
local silent = -1
if current then
  if current == 'done' then return {'done', 0} end
  local renewed, held_for = string.match(current, '|(%d+)|(%d+)$')
  if renewed == nil then return {'held', 0} end
  renewed = tonumber(renewed)
  if renewed + tonumber(held_for) > now then return {'held', 0} end
  silent = now - renewed
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. now .. '|' .. lease, 'PX', lease * tonumber(ARGV[3]))
return {'acquired', silent}
"#;

/// Renews our unexpired lease; 1 if renewed, 0 if the key is not ours.
const RENEW_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local prefix = ARGV[1] .. '|'
if string.sub(current, 1, string.len(prefix)) ~= prefix then return 0 end
local renewed, held_for = string.match(current, '|(%d+)|(%d+)$')
if tonumber(renewed) + tonumber(held_for) <= now then return 0 end
local lease = tonumber(ARGV[2])
redis.call('SET', KEYS[1], prefix .. now .. '|' .. lease, 'PX', lease * tonumber(ARGV[3]))
return 1
"#;

/// Deletes the key if it holds our lease.
const RELEASE_SCRIPT: &str = r#"
local current = redis.call('GET', KEYS[1])
local prefix = ARGV[1] .. '|'
if current and string.sub(current, 1, string.len(prefix)) == prefix then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Redis backend. The connection manager reconnects by itself; while Redis is
/// down every call fails and dispatch leaves events in the bus.
pub struct RedisStore {
    connection: redis::aio::ConnectionManager,
    claim: redis::Script,
    renew: redis::Script,
    release: redis::Script,
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
        Ok(RedisStore {
            connection,
            claim: redis::Script::new(CLAIM_SCRIPT),
            renew: redis::Script::new(RENEW_SCRIPT),
            release: redis::Script::new(RELEASE_SCRIPT),
        })
    }
}

fn redis_error(err: redis::RedisError) -> IdempotencyError {
    IdempotencyError::Unavailable(err.to_string())
}

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn claim(&self, key: &str, lease: Duration) -> Result<Claim, IdempotencyError> {
        let mut connection = self.connection.clone();
        let mut held = Lease::fresh("processing:");
        let (answer, silent_ms): (String, i64) = self
            .claim
            .key(key)
            .arg(&held.token)
            .arg(lease_ms(lease))
            .arg(LEASE_RECORD_FACTOR)
            .invoke_async(&mut connection)
            .await
            .map_err(redis_error)?;
        Ok(match answer.as_str() {
            "done" => Claim::AlreadyDone,
            "held" => Claim::HeldElsewhere,
            _ => {
                held.taken_over_after =
                    (silent_ms >= 0).then(|| Duration::from_millis(silent_ms as u64));
                Claim::Acquired(held)
            }
        })
    }

    async fn renew(
        &self,
        key: &str,
        held: &Lease,
        lease: Duration,
    ) -> Result<bool, IdempotencyError> {
        let mut connection = self.connection.clone();
        self.renew
            .key(key)
            .arg(&held.token)
            .arg(lease_ms(lease))
            .arg(LEASE_RECORD_FACTOR)
            .invoke_async::<i64>(&mut connection)
            .await
            .map(|renewed| renewed == 1)
            .map_err(redis_error)
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
        self.release
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
/// before `complete` returns; leases are lazy. The file belongs to one
/// process, so a lease left by an earlier run (its token carries that run's
/// id) has no live holder and is taken over at once after a restart.
pub struct EmbeddedStore {
    store: GroupCommit,
    /// `processing:<this run's id>:`, the start of every token we hand out.
    run_prefix: String,
}

fn durable_error(err: DurableError) -> IdempotencyError {
    IdempotencyError::Unavailable(err.to_string())
}

/// What a claim finds in a key's stored value.
enum Found {
    Done,
    Live,
    /// A lease nobody holds any more; how long since it was renewed, if known.
    Abandoned(Option<Duration>),
}

impl EmbeddedStore {
    /// Opens `<dir>/idempotency.redb`, refusing to replace a vanished one
    /// with an empty one (see [`EmptyStore`]).
    pub fn open(dir: &Path) -> Result<EmbeddedStore, IdempotencyError> {
        Self::open_with(dir, EmptyStore::Refuse)
    }

    pub fn open_with(dir: &Path, empty: EmptyStore) -> Result<EmbeddedStore, IdempotencyError> {
        let store =
            GroupCommit::open(&dir.join("idempotency.redb"), empty).map_err(durable_error)?;
        Ok(EmbeddedStore {
            store,
            run_prefix: format!("processing:{:016x}:", rand::random::<u64>()),
        })
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
                put_key(txn, &key, expires, &value)
            })
            .await
            .map_err(durable_error)
    }
}

/// Reads a stored value: a lease is live only if this run took it and it
/// has not expired.
fn found(run_prefix: &str, value: &str, now: u64) -> Found {
    if value == DONE {
        return Found::Done;
    }
    match StoredLease::parse(value) {
        Some(stored) if stored.token.starts_with(run_prefix) && stored.expires_ms() > now => {
            Found::Live
        }
        Some(stored) => Found::Abandoned(Some(Duration::from_millis(
            now.saturating_sub(stored.renewed_ms),
        ))),
        None => Found::Abandoned(None),
    }
}

/// Writes a key and its expiry index entry, replacing any earlier one.
fn put_key(
    txn: &redb::WriteTransaction,
    key: &str,
    expires: u64,
    value: &str,
) -> Result<(), redb::Error> {
    let mut keys = txn.open_table(KEYS)?;
    let mut expiry = txn.open_table(EXPIRY)?;
    let old = keys.insert(key, (expires, value))?.map(|old| old.value().0);
    if let Some(old_expires) = old {
        expiry.remove((old_expires, key))?;
    }
    expiry.insert((expires, key), ())?;
    Ok(())
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
        let run_prefix = self.run_prefix.clone();
        let mut held = Lease::fresh(&self.run_prefix);
        let token = held.token.clone();
        let found = self
            .store
            .write(Persist::Lazy, move |txn| {
                let now = now_ms();
                let found = txn
                    .open_table(KEYS)?
                    .get(key.as_str())?
                    .filter(|value| value.value().0 > now)
                    .map(|value| found(&run_prefix, value.value().1, now));
                if let None | Some(Found::Abandoned(_)) = found {
                    let value = StoredLease::encode(&token, now, lease);
                    let expires = now + lease_ms(lease) * LEASE_RECORD_FACTOR;
                    put_key(txn, &key, expires, &value)?;
                }
                Ok(found)
            })
            .await
            .map_err(durable_error)?;
        Ok(match found {
            Some(Found::Done) => Claim::AlreadyDone,
            Some(Found::Live) => Claim::HeldElsewhere,
            Some(Found::Abandoned(silent)) => {
                held.taken_over_after = silent;
                Claim::Acquired(held)
            }
            None => Claim::Acquired(held),
        })
    }

    async fn renew(
        &self,
        key: &str,
        held: &Lease,
        lease: Duration,
    ) -> Result<bool, IdempotencyError> {
        let key = key.to_owned();
        let token = held.token.clone();
        self.store
            .write(Persist::Lazy, move |txn| {
                let now = now_ms();
                let ours = txn
                    .open_table(KEYS)?
                    .get(key.as_str())?
                    .and_then(|value| {
                        StoredLease::parse(value.value().1)
                            .map(|stored| stored.token == token && stored.expires_ms() > now)
                    })
                    .unwrap_or(false);
                if ours {
                    let value = StoredLease::encode(&token, now, lease);
                    put_key(
                        txn,
                        &key,
                        now + lease_ms(lease) * LEASE_RECORD_FACTOR,
                        &value,
                    )?;
                }
                Ok(ours)
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
                let current = keys.get(key.as_str())?.map(|v| {
                    let ours =
                        StoredLease::parse(v.value().1).is_some_and(|stored| stored.token == token);
                    (v.value().0, ours)
                });
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

/// The idempotency store the config asks for, and the key prefix its
/// entries carry.
pub async fn open(
    config: &crate::config::Config,
    empty_store: crate::durable::EmptyStore,
) -> Result<(Arc<dyn IdempotencyStore>, String), IdempotencyError> {
    Ok(match &config.idempotency.backend {
        crate::config::IdempotencyBackend::Embedded { path } => (
            Arc::new(EmbeddedStore::open_with(path, empty_store)?),
            String::new(),
        ),
        crate::config::IdempotencyBackend::Redis { url, key_prefix } => (
            Arc::new(RedisStore::connect(url).await?),
            key_prefix.clone(),
        ),
    })
}
