//! The values of routes.toml written as text: durations (`"30s"`, `"7d"`),
//! sizes (`"1MiB"`), networks (`"10.0.0.0/8"`), event patterns
//! (`"invoice.*"`) and secret references (`"env:NAME"`), each with the one
//! error type the validator attaches to a key.

use std::time::Duration;

/// A value that does not read as its kind. Never echoes a secret: a literal
/// where a reference belongs is named, not quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("`{text}` is not a duration like `30s`, `5m` or `7d` ({reason})")]
    Duration { text: String, reason: String },
    #[error("`{0}` is not a size like `512KiB` or `1MiB`")]
    Size(String),
    #[error("`{0}` is not an address or CIDR like `10.0.0.0/8`")]
    Net(String),
    #[error(
        "`{0}` is not an event pattern: use `*`, `prefix.*` or an exact type like `invoice.paid`"
    )]
    EventPattern(String),
    #[error("`env:{0}` does not name an environment variable")]
    EnvName(String),
    #[error("`file:` needs a path")]
    NoPath,
    #[error("secrets are references like `env:NAME` or `file:PATH`, never literal values")]
    LiteralSecret,
}

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"1h 30m"`, `"7d"`.
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    humantime::parse_duration(text.trim()).map_err(|err| ValueError::Duration {
        text: text.to_owned(),
        reason: err.to_string(),
    })
}

/// A CIDR (`10.0.0.0/8`) or a bare address (one host).
pub fn parse_net(text: &str) -> Result<ipnet::IpNet, ValueError> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .map(|net| net.trunc())
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| ValueError::Net(text.to_owned()))
}

/// Parses `"512"`, `"64KiB"`, `"1MiB"`, `"1MB"`, `"2GiB"` into bytes.
pub fn parse_size(text: &str) -> Result<u64, ValueError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let bad = || ValueError::Size(text.to_owned());
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    number.checked_mul(multiplier).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64KiB").unwrap(), 65_536);
        assert!(parse_size("1 lots").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }
}
