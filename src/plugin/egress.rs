//! Where a connection may send a plugin's requests: the address policy.
//!
//! A connection reaches public addresses. Loopback, private (RFC 1918,
//! 100.64/10, fc00::/7) and link-local (169.254/16, fe80::/10) addresses are
//! refused unless the connection sets `allow_private = true`, with one
//! exception: a base URL that is itself a literal loopback address
//! (`http://127.0.0.1:9101`) may reach exactly that address. Cloud metadata
//! endpoints and the unspecified address are never reachable: no webhook
//! consumer needs them, and they are what a server-side request forgery
//! goes for.
//!
//! The check runs where the address is known: once for a literal IP in the
//! base URL, and in the connection's DNS resolver for a host name, at every
//! new connection, so a name that later resolves elsewhere (DNS rebinding)
//! is refused too. Redirects are never followed (see `host`), so the
//! connection's own origin is the only place a request can go.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Host names of cloud metadata services, refused before any lookup.
const METADATA_HOSTS: &[&str] = &["metadata.google.internal", "metadata.goog"];

/// What kind of address an IP is, for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    Loopback,
    Private,
    LinkLocal,
    /// A cloud provider's instance metadata service.
    Metadata,
    /// `0.0.0.0/8` or `::`: connecting there reaches this host.
    Unspecified,
}

impl AddressClass {
    pub fn of(ip: IpAddr) -> AddressClass {
        match ip {
            IpAddr::V4(v4) => Self::of_v4(v4),
            IpAddr::V6(v6) => Self::of_v6(v6),
        }
    }

    fn of_v4(ip: Ipv4Addr) -> AddressClass {
        let [a, b, ..] = ip.octets();
        // AWS, GCP and Azure (169.254.169.254), Alibaba (100.100.100.200).
        if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
            AddressClass::Metadata
        } else if a == 0 {
            AddressClass::Unspecified
        } else if ip.is_loopback() {
            AddressClass::Loopback
        } else if ip.is_link_local() {
            AddressClass::LinkLocal
        } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
            // 100.64/10 is carrier-grade NAT: inside someone's network too.
            AddressClass::Private
        } else {
            AddressClass::Public
        }
    }

    fn of_v6(ip: Ipv6Addr) -> AddressClass {
        // An IPv4 address in IPv6 clothes (`::ffff:10.0.0.1`, NAT64
        // `64:ff9b::a00:1`) is judged as the IPv4 address it reaches.
        if let Some(v4) = ip.to_ipv4_mapped() {
            return Self::of_v4(v4);
        }
        let segments = ip.segments();
        if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
            let [a, b, c, d] = ip.octets()[12..] else {
                unreachable!("an IPv6 address has 16 octets")
            };
            return Self::of_v4(Ipv4Addr::new(a, b, c, d));
        }
        if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
            AddressClass::Metadata
        } else if ip.is_unspecified() {
            AddressClass::Unspecified
        } else if ip.is_loopback() {
            AddressClass::Loopback
        } else if segments[0] & 0xffc0 == 0xfe80 {
            AddressClass::LinkLocal
        } else if segments[0] & 0xfe00 == 0xfc00 {
            AddressClass::Private
        } else {
            AddressClass::Public
        }
    }

    fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "a public address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::Metadata => "a cloud metadata address",
            AddressClass::Unspecified => "an unspecified address",
        }
    }
}

/// A connection's address policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPolicy {
    /// `allow_private = true`: loopback, private and link-local addresses
    /// are reachable.
    pub allow_private: bool,
}

impl AddressPolicy {
    pub fn permits(self, class: AddressClass) -> bool {
        match class {
            AddressClass::Public => true,
            AddressClass::Loopback | AddressClass::Private | AddressClass::LinkLocal => {
                self.allow_private
            }
            AddressClass::Metadata | AddressClass::Unspecified => false,
        }
    }

    /// The refusal for a literal IP written in a base URL, if any. A literal
    /// loopback address is allowed: the operator named exactly that address.
    pub fn check_literal(self, ip: IpAddr) -> Result<(), AddressRefused> {
        let class = AddressClass::of(ip);
        if class == AddressClass::Loopback || self.permits(class) {
            Ok(())
        } else {
            Err(AddressRefused::new(format!("`{ip}` is"), class))
        }
    }

    /// Keeps the addresses this policy permits; refuses when none is left.
    pub fn filter(
        self,
        host: &str,
        ips: impl IntoIterator<Item = IpAddr>,
    ) -> Result<Vec<IpAddr>, AddressRefused> {
        let mut refused = None;
        let mut kept = Vec::new();
        for ip in ips {
            let class = AddressClass::of(ip);
            if self.permits(class) {
                kept.push(ip);
            } else if refused.is_none() {
                refused = Some(AddressRefused::new(
                    format!("`{host}` resolves to `{ip}`,"),
                    class,
                ));
            }
        }
        match refused {
            Some(refused) if kept.is_empty() => Err(refused),
            _ => Ok(kept),
        }
    }
}

/// Why a connection may not reach an address. Travels through reqwest as
/// the resolver's error, so the host can tell it from an unreachable server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressRefused(String);

impl AddressRefused {
    fn new(what: String, class: AddressClass) -> AddressRefused {
        let remedy = match class {
            AddressClass::Metadata | AddressClass::Unspecified => "never reachable",
            _ => "refused unless the connection sets `allow_private = true`",
        };
        AddressRefused(format!("{what} {}: {remedy}", class.describe()))
    }

    fn metadata_host(host: &str) -> AddressRefused {
        AddressRefused(format!(
            "`{host}` is a cloud metadata host: never reachable"
        ))
    }

    /// The refusal somewhere in an error's chain of causes.
    pub fn find_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a AddressRefused> {
        let mut cause = Some(error);
        while let Some(error) = cause {
            if let Some(refused) = error.downcast_ref::<AddressRefused>() {
                return Some(refused);
            }
            cause = error.source();
        }
        None
    }
}

/// Why a base URL can never be reached under `policy`, as far as the URL
/// alone tells: a literal address the policy refuses, or a metadata host
/// name. (A host name is checked again at each connection, once resolved.)
pub fn base_url_refusal(base: &reqwest::Url, policy: AddressPolicy) -> Option<AddressRefused> {
    // The URL parser has normalised IP literals (`[::1]`, `2130706433`).
    let host = base.host_str().unwrap_or_default();
    match host.trim_start_matches('[').trim_end_matches(']').parse() {
        Ok(ip) => policy.check_literal(ip).err(),
        Err(_) => check_host_name(host).err(),
    }
}

/// Refuses a metadata host name before any lookup (whatever it would
/// resolve to).
pub fn check_host_name(host: &str) -> Result<(), AddressRefused> {
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    if METADATA_HOSTS.contains(&name.as_str()) {
        return Err(AddressRefused::metadata_host(host));
    }
    Ok(())
}

/// How names become addresses. The system resolver in production; a fixed
/// table in unit tests, which cannot count on any DNS answer.
#[derive(Clone)]
pub enum Lookup {
    System,
    #[cfg(test)]
    Fixed(std::collections::BTreeMap<String, Vec<IpAddr>>),
}

impl Lookup {
    async fn ips(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        match self {
            Lookup::System => Ok(tokio::net::lookup_host((host, 0))
                .await?
                .map(|addr| addr.ip())
                .collect()),
            #[cfg(test)]
            Lookup::Fixed(table) => table
                .get(host)
                .cloned()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such host")),
        }
    }
}

/// The DNS resolver of a connection's client: looks the name up, then
/// applies the address policy to what came back, at every new connection.
pub struct GuardedResolver {
    pub policy: AddressPolicy,
    pub lookup: Lookup,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let policy = self.policy;
        let lookup = self.lookup.clone();
        Box::pin(async move {
            check_host_name(&host)?;
            let ips = policy.filter(&host, lookup.ips(&host).await?)?;
            // Port 0: reqwest puts in the URL's port.
            let addrs: Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> AddressClass {
        AddressClass::of(text.parse().unwrap())
    }

    #[test]
    fn addresses_are_classified() {
        for (ip, expected) in [
            ("93.184.215.14", AddressClass::Public),
            ("2606:4700::1111", AddressClass::Public),
            ("127.0.0.1", AddressClass::Loopback),
            ("127.8.9.10", AddressClass::Loopback),
            ("::1", AddressClass::Loopback),
            ("10.1.2.3", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.31.255.255", AddressClass::Private),
            ("192.168.1.1", AddressClass::Private),
            ("100.64.0.1", AddressClass::Private),
            ("fd12:3456::1", AddressClass::Private),
            ("169.254.1.1", AddressClass::LinkLocal),
            ("fe80::1", AddressClass::LinkLocal),
            ("169.254.169.254", AddressClass::Metadata),
            ("fd00:ec2::254", AddressClass::Metadata),
            ("100.100.100.200", AddressClass::Metadata),
            ("0.0.0.0", AddressClass::Unspecified),
            ("::", AddressClass::Unspecified),
            ("::ffff:10.0.0.1", AddressClass::Private),
            ("::ffff:169.254.169.254", AddressClass::Metadata),
            ("64:ff9b::7f00:1", AddressClass::Loopback),
            ("172.32.0.1", AddressClass::Public),
            ("100.128.0.1", AddressClass::Public),
        ] {
            assert_eq!(class(ip), expected, "{ip}");
        }
    }

    #[test]
    fn allow_private_opens_everything_but_metadata() {
        let strict = AddressPolicy {
            allow_private: false,
        };
        let open = AddressPolicy {
            allow_private: true,
        };
        for ip in ["127.0.0.2", "10.0.0.1", "169.254.1.1", "fe80::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(strict.filter("h", [ip]).is_err(), "{ip}");
            assert!(open.filter("h", [ip]).is_ok(), "{ip}");
        }
        for ip in ["169.254.169.254", "fd00:ec2::254", "0.0.0.0"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(open.filter("h", [ip]).is_err(), "{ip}");
            assert!(open.check_literal(ip).is_err(), "{ip}");
        }
        // A literal loopback base URL names exactly what it may reach.
        assert!(strict.check_literal("127.0.0.1".parse().unwrap()).is_ok());
        assert_eq!(
            strict
                .check_literal("10.9.8.7".parse().unwrap())
                .unwrap_err()
                .to_string(),
            "`10.9.8.7` is a private address: refused unless the connection sets `allow_private = true`"
        );
    }

    #[test]
    fn a_name_keeps_only_its_permitted_addresses() {
        let strict = AddressPolicy {
            allow_private: false,
        };
        let public: IpAddr = "93.184.215.14".parse().unwrap();
        let private: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            strict.filter("mixed.test", [private, public]).unwrap(),
            vec![public]
        );
        assert_eq!(
            strict
                .filter("inside.test", [private])
                .unwrap_err()
                .to_string(),
            "`inside.test` resolves to `10.0.0.1`, a private address: refused unless the connection sets `allow_private = true`"
        );
        assert!(check_host_name("Metadata.Google.Internal.").is_err());
        assert!(check_host_name("api.example.com").is_ok());
    }
}
