//! The shipped plugins (`plugins/dist/`) must match the plugin sources, so
//! `cargo run -- serve` on a fresh clone runs what the code says.
//!
//! `plugins/build.sh --dist` records a hash of the sources in
//! `plugins/dist/SOURCES.sha256`; this test recomputes it (same algorithm
//! as `plugins/source-hash.sh`) and fails when someone changed a plugin, the
//! SDK or the WIT without refreshing `dist/`.

use crate::support::repo_root;
use sha2::{Digest, Sha256};
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<String>, root: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out, root);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(
                path.strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
        }
    }
}

fn source_hash(plugins: &Path) -> String {
    let mut files: Vec<String> = std::fs::read_dir(plugins.join("wit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "wit"))
        .map(|p| {
            p.strip_prefix(plugins)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    files.extend(["Cargo.toml", "Cargo.lock", ".cargo/config.toml"].map(String::from));
    for krate in ["sdk", "crm", "erp", "marketing"] {
        files.push(format!("{krate}/Cargo.toml"));
        rust_files(&plugins.join(krate).join("src"), &mut files, plugins);
    }
    files.sort();
    let mut listing = String::new();
    for file in &files {
        let digest = Sha256::digest(std::fs::read(plugins.join(file)).unwrap());
        listing.push_str(&format!("{}  {file}\n", hex::encode(digest)));
    }
    hex::encode(Sha256::digest(listing.as_bytes()))
}

#[test]
fn shipped_plugins_are_built_from_the_current_sources() {
    let plugins = repo_root().join("plugins");
    let recorded = std::fs::read_to_string(plugins.join("dist/SOURCES.sha256")).unwrap();
    assert_eq!(
        recorded.trim(),
        source_hash(&plugins),
        "plugins/dist is stale: run `plugins/build.sh --dist` and commit plugins/dist"
    );
}

#[test]
fn shipped_plugins_load_and_type_check() {
    let config = switchyard::config::Config::load(&repo_root().join("routes.toml")).unwrap();
    let host = switchyard::plugin::PluginHost::new(4, 32 << 20).unwrap();
    let connections = switchyard::plugin::build_connections(&config.connections).unwrap();
    for (name, consumer) in &config.consumers {
        host.load(name, consumer, &connections)
            .unwrap_or_else(|err| panic!("{err}"));
    }
}
