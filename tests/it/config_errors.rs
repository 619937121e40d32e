//! Config error snapshots: each `tests/config/bad/NAME.toml` must fail with
//! exactly the text in `NAME.err`. `SWITCHYARD_BLESS=1` rewrites the snapshots.

use crate::support::repo_root;
use std::path::Path;
use switchyard::config::{Config, ParseError, reference};

#[test]
fn bad_configs_report_every_problem_with_table_and_key() {
    let dir = repo_root().join("tests/config/bad");
    let bless = std::env::var_os("SWITCHYARD_BLESS").is_some();
    let tables = reference::top_level_tables();
    assert!(tables.iter().any(|table| table == "alerts"), "{tables:?}");
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
    {
        let text = std::fs::read_to_string(path).unwrap();
        let err = Config::parse(&text, Path::new("/etc/switchyard"))
            .expect_err(&format!("{} must be refused", path.display()));
        // The property the config fuzz target checks on every input, here on
        // the seeds it starts from: each issue sits under a top-level table.
        if let ParseError::Invalid(issues) = &err {
            for issue in issues {
                let root = issue.at.split(['.', '[']).next().unwrap_or_default();
                assert!(
                    tables.iter().any(|table| table == root),
                    "{}: issue not under a table: {issue}",
                    path.display()
                );
            }
        }
        let err = err.to_string();
        let snapshot = path.with_extension("err");
        if bless {
            std::fs::write(&snapshot, format!("{err}\n")).unwrap();
        }
        let expected = std::fs::read_to_string(&snapshot)
            .unwrap_or_else(|_| panic!("missing snapshot {}", snapshot.display()));
        assert_eq!(format!("{err}\n"), expected, "{}", path.display());
        checked += 1;
    }
    assert!(checked >= 4, "snapshots checked: {checked}");
}

#[test]
fn the_shipped_routes_toml_is_valid() {
    let config = Config::load(&repo_root().join("routes.toml")).unwrap();
    // The bus's own routing (what `append` fans out by), in name order.
    let routed = |event_type: &str| {
        switchyard::bus::Subscription::from_config(&config)
            .into_iter()
            .filter(|subscription| subscription.wants("stripe", event_type))
            .map(|subscription| subscription.consumer)
            .collect::<Vec<_>>()
    };
    assert_eq!(routed("customer.created"), vec!["crm", "marketing"]);
    assert_eq!(routed("invoice.paid"), vec!["erp"]);
    assert!(routed("payment_intent.created").is_empty());
}

#[test]
fn secrets_in_errors_are_never_echoed() {
    let text =
        std::fs::read_to_string(repo_root().join("tests/config/bad/many_problems.toml")).unwrap();
    let err = Config::parse(&text, Path::new("/etc/switchyard"))
        .unwrap_err()
        .to_string();
    assert!(!err.contains("whsec_pasted_literal_secret"), "{err}");
}
