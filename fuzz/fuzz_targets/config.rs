//! The routes.toml loader (parse, then validate).
//!
//! Properties checked on every input:
//! - Loading never panics, whatever the text.
//! - A syntax or shape error points at a place in the file (`line N, column M`).
//! - A validation error lists at least one issue, and every issue names its
//!   table and key (`consumers.crm.retry.first`, `routes[1].consumers`) under
//!   one of the file's top-level tables, with a lowercase message.
//! - No error repeats the text of a literal secret written where a secret
//!   reference belongs.
//! - An accepted config is consistent: routes name existing sources and
//!   consumers, consumers name existing connections and are routed, source
//!   paths are distinct, every source has a secret.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::LazyLock;
use switchyard::config::{reference, Config, ParseError};

/// The file's top-level tables, from the schema: a new table (as `[alerts]`
/// was) needs no edit here.
static TABLES: LazyLock<Vec<String>> = LazyLock::new(reference::top_level_tables);

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        // `Config::load` reads text; bytes that are not UTF-8 fail there,
        // with the file named, before parsing.
        return;
    };
    match Config::parse(text, Path::new("/etc/switchyard")) {
        Ok(config) => check_consistent(&config),
        Err(ParseError::Syntax(message)) => {
            assert!(
                message.contains(" at line ") && message.contains(", column "),
                "syntax error without a position: {message}"
            );
            check_no_secret_echo(text, &message);
        }
        Err(ParseError::Invalid(issues)) => {
            assert!(!issues.is_empty(), "invalid with no issue");
            for issue in &issues {
                let table = TABLES.iter().find(|table| {
                    issue.at.strip_prefix(table.as_str()).is_some_and(|rest| {
                        rest.is_empty() || rest.starts_with('.') || rest.starts_with('[')
                    })
                });
                assert!(table.is_some(), "issue not under a table: {issue}");
                assert!(
                    issue.message.starts_with(|c: char| !c.is_uppercase())
                        && !issue.message.is_empty(),
                    "message not lowercase: {issue}"
                );
                check_no_secret_echo(text, &issue.message);
            }
        }
    }
});

/// Secrets belong in `env:`/`file:` references. A literal value written
/// under a secret key is an error, and that error must not repeat it.
fn check_no_secret_echo(text: &str, message: &str) {
    let Ok(doc) = text.parse::<toml::Table>() else {
        return;
    };
    let mut literals = Vec::new();
    let mut take = |value: Option<&toml::Value>| {
        if let Some(toml::Value::String(s)) = value {
            literals.push(s.clone());
        }
    };
    let table = |value: Option<&toml::Value>| value.and_then(toml::Value::as_table).cloned();
    if let Some(admin) = table(doc.get("admin")) {
        take(admin.get("token"));
    }
    if let Some(bus) = table(doc.get("bus")) {
        take(bus.get("token"));
        take(bus.get("credentials"));
    }
    for (_, source) in table(doc.get("sources")).unwrap_or_default() {
        if let Some(secrets) = source.get("secrets").and_then(toml::Value::as_array) {
            for secret in secrets {
                take(Some(secret));
            }
        }
    }
    for (_, connection) in table(doc.get("connections")).unwrap_or_default() {
        if let Some(auth) = connection.get("auth").and_then(toml::Value::as_table) {
            take(auth.get("bearer"));
            take(auth.get("basic_password"));
            take(auth.get("value"));
        }
    }
    for literal in literals {
        // Short strings or ones also written elsewhere (a name, a key) may
        // appear in a message for another reason.
        if literal.starts_with("env:") || literal.starts_with("file:") || literal.len() < 8 {
            continue;
        }
        if text.matches(literal.as_str()).count() == 1 {
            assert!(
                !message.contains(&literal),
                "a message repeats the secret `{literal}`: {message}"
            );
        }
    }
}

fn check_consistent(config: &Config) {
    for (i, route) in config.routes.iter().enumerate() {
        assert!(
            config.sources.contains_key(&route.source),
            "routes[{i}] names unknown source `{}`",
            route.source
        );
        assert!(!route.events.is_empty(), "routes[{i}] has no event pattern");
        assert!(!route.consumers.is_empty(), "routes[{i}] has no consumer");
        for consumer in &route.consumers {
            assert!(
                config.consumers.contains_key(consumer),
                "routes[{i}] names unknown consumer `{consumer}`"
            );
        }
    }
    for (name, consumer) in &config.consumers {
        for connection in &consumer.connections {
            assert!(
                config.connections.contains_key(connection),
                "consumer `{name}` names unknown connection `{connection}`"
            );
        }
        assert!(
            config.routes.iter().any(|r| r.consumers.contains(name)),
            "consumer `{name}` is in no route"
        );
        assert!(consumer.concurrency >= 1 && consumer.replay_concurrency >= 1);
        assert!(consumer.retry.attempts >= 1 && consumer.retry.first <= consumer.retry.max);
    }
    let mut paths = BTreeSet::new();
    for (name, source) in &config.sources {
        assert!(
            paths.insert(&source.path),
            "source `{name}` shares its path"
        );
        assert!(!source.secrets.is_empty(), "source `{name}` has no secret");
    }
}
