//! Edge guards that run before a body is read: who is calling (the client
//! address, honouring `X-Forwarded-For` only from trusted proxies), whether
//! that address may post to the source, whether there is room for one
//! more request (concurrency and rate limits that shed load early), and how
//! many bodies one address may be sending at once ([`BodyReads`]); while a
//! body is read, a minimum rate ([`BodyPace`]) cuts off slow senders.
//!
//! None of these is the security check: the signature is. They keep
//! strangers and floods from costing body reads, HMACs and bus appends.

use crate::config::RateLimit;
use crate::limiter::RateLimiter;
use ipnet::IpNet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use warp::http::HeaderMap;

/// The peer address of a connection, put into each request's extensions by
/// the listener (see `ingest::server`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

fn in_any(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|net| net.contains(&ip))
}

/// The address a request came from. The peer, unless the peer is a trusted
/// proxy: then the right-most `X-Forwarded-For` entry that is not a trusted
/// proxy (entries left of it could be forged by the client). `None` when
/// that entry is not an address: the client is unknown.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> Option<IpAddr> {
    let peer = peer.to_canonical();
    if !in_any(trusted_proxies, peer) {
        return Some(peer);
    }
    // Several headers are one list, in order (RFC 9110 field lines).
    let mut entries: Vec<&str> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return None;
        };
        entries.extend(text.split(',').map(str::trim));
    }
    let mut client = peer;
    for entry in entries.iter().rev() {
        client = entry.parse::<IpAddr>().ok()?.to_canonical();
        if !in_any(trusted_proxies, client) {
            return Some(client);
        }
    }
    // Every hop is a trusted proxy: the left-most one is the client.
    Some(client)
}

/// Networks allowed to post to one source.
#[derive(Debug, Clone)]
pub struct Allowlist(Vec<IpNet>);

/// An `allow_ips_file` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AllowlistError {
    #[error("cannot read `{}`: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{}` line {line}: {source}", path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        source: crate::config::ValueError,
    },
    /// An empty file would otherwise silently allow everyone.
    #[error("`{}` lists no address", path.display())]
    Empty { path: PathBuf },
}

impl Allowlist {
    /// `allow_ips` plus the lines of `allow_ips_file` (one CIDR or address
    /// a line, `#` starts a comment); `None` when neither is set (everyone
    /// may post).
    pub fn load(
        inline: &[IpNet],
        file: Option<&Path>,
    ) -> Result<Option<Allowlist>, AllowlistError> {
        let mut nets = inline.to_vec();
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).map_err(|source| AllowlistError::Unreadable {
                    path: path.to_owned(),
                    source,
                })?;
            for (index, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or_default().trim();
                if line.is_empty() {
                    continue;
                }
                let net =
                    crate::config::parse_net(line).map_err(|source| AllowlistError::BadLine {
                        path: path.to_owned(),
                        line: index + 1,
                        source,
                    })?;
                nets.push(net);
            }
            if nets.is_empty() {
                return Err(AllowlistError::Empty {
                    path: path.to_owned(),
                });
            }
        }
        Ok((!nets.is_empty()).then_some(Allowlist(nets)))
    }

    pub fn allows(&self, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| in_any(&self.0, ip.to_canonical()))
    }
}

/// Why a request was shed. Also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    GlobalConcurrency,
    SourceConcurrency,
    GlobalRate,
    SourceRate,
    /// One client address is already sending its share of bodies.
    ClientBodies,
}

impl ShedReason {
    pub fn label(self) -> &'static str {
        match self {
            ShedReason::GlobalConcurrency => "global_concurrency",
            ShedReason::SourceConcurrency => "source_concurrency",
            ShedReason::GlobalRate => "global_rate",
            ShedReason::SourceRate => "source_rate",
            ShedReason::ClientBodies => "client_bodies",
        }
    }

    pub fn is_rate(self) -> bool {
        matches!(self, ShedReason::GlobalRate | ShedReason::SourceRate)
    }
}

/// A refused admission: why, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    pub reason: ShedReason,
    pub retry_after: Duration,
}

/// Bodies being read, per client address: a few clients that open many
/// connections and send their bodies slowly cannot hold every slot of
/// `max_concurrency` (the signature is checked only once the body is in).
pub struct BodyReads {
    per_client: usize,
    reading: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// One body being read; frees its client's slot on drop.
pub struct BodyRead {
    reads: Arc<BodyReads>,
    client: IpAddr,
}

impl BodyReads {
    pub fn new(per_client: usize) -> Arc<BodyReads> {
        Arc::new(BodyReads {
            per_client,
            reading: Default::default(),
        })
    }

    /// A slot for one more body from `client`, or the shed if it has all
    /// of its share in flight.
    pub fn start(self: &Arc<Self>, client: IpAddr) -> Result<BodyRead, Shed> {
        let mut reading = self.reading.lock().expect("body reads lock");
        let count = reading.entry(client).or_default();
        if *count >= self.per_client {
            return Err(Shed {
                reason: ShedReason::ClientBodies,
                retry_after: CONCURRENCY_RETRY_AFTER,
            });
        }
        *count += 1;
        Ok(BodyRead {
            reads: Arc::clone(self),
            client,
        })
    }
}

impl Drop for BodyRead {
    fn drop(&mut self) {
        let mut reading = self.reads.reading.lock().expect("body reads lock");
        if let Some(count) = reading.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                reading.remove(&self.client);
            }
        }
    }
}

/// The slowest a body may arrive: after `grace`, at least `bytes_per_second`
/// on average. A client under it is cut off (408) instead of holding a
/// request slot for the whole `body_read_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPace {
    pub grace: Duration,
    pub bytes_per_second: u64,
}

impl BodyPace {
    /// The latest the next chunk may arrive, `received` bytes in, for a
    /// body whose headers arrived at `started`.
    pub fn next_chunk_by(
        self,
        started: tokio::time::Instant,
        received: u64,
    ) -> tokio::time::Instant {
        let earned = Duration::from_secs_f64(received as f64 / self.bytes_per_second.max(1) as f64);
        started + self.grace + earned
    }
}

/// The settings a [`Limits`] was built from; a reload keeps the running
/// limits (their permits and buckets) when these are unchanged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitSettings {
    pub max_concurrency: Option<usize>,
    pub rate_limit: Option<RateLimit>,
}

/// A concurrency cap and a rate, either optional.
pub struct Limits {
    pub settings: LimitSettings,
    concurrency: Option<Arc<Semaphore>>,
    rate: Option<RateLimiter>,
}

/// Held while a request is handled; frees its concurrency slots on drop.
#[derive(Debug, Default)]
pub struct Admission {
    _permits: Vec<OwnedSemaphorePermit>,
}

/// How long a request shed for concurrency is told to wait: in-flight
/// requests finish within milliseconds to a few seconds.
const CONCURRENCY_RETRY_AFTER: Duration = Duration::from_secs(1);

impl Limits {
    pub fn new(settings: LimitSettings) -> Limits {
        Limits {
            settings,
            concurrency: settings
                .max_concurrency
                .map(|n| Arc::new(Semaphore::new(n))),
            rate: settings.rate_limit.map(RateLimiter::new),
        }
    }

    /// Admits a request under `source` and then `global`, or says why not.
    /// Concurrency is checked before rate, so a request refused for
    /// concurrency spends no rate permit.
    pub fn admit(source: &Limits, global: &Limits) -> Result<Admission, Shed> {
        let mut permits = Vec::new();
        for (limits, reason) in [
            (source, ShedReason::SourceConcurrency),
            (global, ShedReason::GlobalConcurrency),
        ] {
            if let Some(semaphore) = &limits.concurrency {
                let permit = Arc::clone(semaphore)
                    .try_acquire_owned()
                    .map_err(|_| Shed {
                        reason,
                        retry_after: CONCURRENCY_RETRY_AFTER,
                    })?;
                permits.push(permit);
            }
        }
        for (limits, reason) in [
            (source, ShedReason::SourceRate),
            (global, ShedReason::GlobalRate),
        ] {
            if let Some(rate) = &limits.rate {
                rate.try_acquire().map_err(|wait| Shed {
                    reason,
                    retry_after: wait,
                })?;
            }
        }
        Ok(Admission { _permits: permits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(texts: &[&str]) -> Vec<IpNet> {
        texts
            .iter()
            .map(|t| crate::config::parse_net(t).unwrap())
            .collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append("x-forwarded-for", value.parse().unwrap());
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1"]);
        let spoof = xff(&["54.187.174.169"]);
        // A direct client cannot claim another address.
        assert_eq!(
            client_ip(ip("203.0.113.9"), &spoof, &trusted),
            Some(ip("203.0.113.9"))
        );
        // Through a trusted proxy: the right-most untrusted entry.
        let chain = xff(&["1.2.3.4, 54.187.174.169", "10.1.1.1"]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), &chain, &trusted),
            Some(ip("54.187.174.169"))
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &HeaderMap::new(), &trusted),
            Some(ip("127.0.0.1"))
        );
        // A garbled entry where the client should be: unknown.
        assert_eq!(
            client_ip(ip("10.0.0.5"), &xff(&["nonsense"]), &trusted),
            None
        );
        // IPv4-mapped IPv6 peers count as their IPv4 address.
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.5"), &xff(&["198.51.100.7"]), &trusted),
            Some(ip("198.51.100.7"))
        );
        // Nothing trusted: the header is ignored.
        assert_eq!(client_ip(ip("10.0.0.5"), &chain, &[]), Some(ip("10.0.0.5")));
    }

    #[test]
    fn allowlists_come_from_config_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ips.txt");
        std::fs::write(&file, "# stripe\n54.187.174.169\n\n2001:db8::/32 # docs\n").unwrap();
        let list = Allowlist::load(&nets(&["192.0.2.0/24"]), Some(&file))
            .unwrap()
            .unwrap();
        for allowed in [
            "54.187.174.169",
            "192.0.2.77",
            "2001:db8::1",
            "::ffff:192.0.2.1",
        ] {
            assert!(list.allows(Some(ip(allowed))), "{allowed}");
        }
        for refused in ["54.187.174.170", "10.0.0.1"] {
            assert!(!list.allows(Some(ip(refused))), "{refused}");
        }
        assert!(!list.allows(None));
        assert!(Allowlist::load(&[], None).unwrap().is_none());

        std::fs::write(&file, "54.187.174.169\nnot-an-ip\n").unwrap();
        let err = Allowlist::load(&[], Some(&file)).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("not-an-ip"), "{err}");
        std::fs::write(&file, "# nothing\n").unwrap();
        assert!(Allowlist::load(&[], Some(&file)).is_err());
        assert!(Allowlist::load(&[], Some(&dir.path().join("missing"))).is_err());
    }

    #[test]
    fn the_shipped_stripe_list_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/stripe-webhook-ips.txt");
        let list = Allowlist::load(&[], Some(&path)).unwrap().unwrap();
        assert!(list.allows(Some(ip("54.187.174.169"))));
    }

    #[tokio::test(start_paused = true)]
    async fn limits_shed_by_concurrency_then_rate() {
        let source = Limits::new(LimitSettings {
            max_concurrency: Some(1),
            rate_limit: None,
        });
        let global = Limits::new(LimitSettings {
            max_concurrency: Some(10),
            rate_limit: Some(RateLimit {
                period: Duration::from_secs(1),
                burst: 2,
            }),
        });
        let held = Limits::admit(&source, &global).unwrap();
        let shed = Limits::admit(&source, &global).unwrap_err();
        assert_eq!(shed.reason, ShedReason::SourceConcurrency);
        assert_eq!(shed.retry_after, CONCURRENCY_RETRY_AFTER);
        drop(held);
        drop(Limits::admit(&source, &global).unwrap());
        let shed = Limits::admit(&source, &global).unwrap_err();
        assert_eq!(shed.reason, ShedReason::GlobalRate);
        assert!(shed.retry_after > Duration::ZERO && shed.retry_after <= Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(Limits::admit(&source, &global).is_ok());
    }
}
