//! What a deployer touches: the config reference and schema, the container
//! files, and the `SWITCHYARD_*` environment overrides.

use crate::support::{assert_success, repo_root};
use std::path::Path;
use std::process::Command;
use switchyard::config::{BusEngine, Config, IdempotencyBackend};

fn switchyard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .unwrap()
}

/// docs/CONFIG.md is what `switchyard config reference` prints: generated
/// from the config structs and their docs, so it cannot drift.
/// `SWITCHYARD_BLESS=1` rewrites it.
#[test]
fn the_config_reference_is_generated_from_the_code() {
    let output = switchyard(&["config", "reference"]);
    assert!(output.status.success());
    let generated = String::from_utf8(output.stdout).unwrap();
    let path = repo_root().join("docs/CONFIG.md");
    if std::env::var_os("SWITCHYARD_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/CONFIG.md is stale: run `SWITCHYARD_BLESS=1 cargo test --test it packaging`"
    );
    // Every key of the shipped routes.toml is documented, with a default
    // where it has one.
    let shipped: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo_root().join("routes.toml")).unwrap()).unwrap();
    for (table, value) in &shipped {
        let Some(keys) = value.as_table() else {
            continue;
        };
        for key in keys.keys() {
            if ["sources", "connections", "consumers"].contains(&table.as_str()) {
                continue; // names, not keys
            }
            assert!(
                generated.contains(&format!("| `{key}` |")),
                "`{table}.{key}` is not in the reference"
            );
        }
    }
    for documented in [
        "`[consumers.<name>.retry]`",
        "`[[routes]]`",
        "SWITCHYARD_BUS_URL",
    ] {
        assert!(generated.contains(documented), "{documented} missing");
    }
}

#[test]
fn config_schema_describes_every_table_and_refuses_unknown_keys() {
    let output = switchyard(&["config", "schema"]);
    assert!(output.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        schema["$schema"]
            .as_str()
            .unwrap()
            .contains("json-schema.org")
    );
    let properties = schema["properties"].as_object().unwrap();
    for table in [
        "server",
        "bus",
        "admin",
        "idempotency",
        "telemetry",
        "sources",
        "connections",
        "consumers",
        "routes",
    ] {
        assert!(properties.contains_key(table), "{table} missing");
    }
    assert_eq!(schema["additionalProperties"], false);
    let server = &schema["$defs"]["RawServer"];
    assert_eq!(server["additionalProperties"], false);
    // Defaults are schema values, for editors to offer.
    assert_eq!(server["properties"]["listen"]["default"], "127.0.0.1:8080");
}

fn parse_with(path: &str, env: &[(&str, &str)]) -> Result<Config, String> {
    let path = repo_root().join(path);
    let text = std::fs::read_to_string(&path).unwrap();
    Config::parse_with_env(&text, path.parent().unwrap(), |name| {
        env.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_string())
    })
    .map_err(|err| err.to_string())
}

#[test]
fn environment_overrides_replace_file_values_and_are_validated() {
    let config = parse_with(
        "routes.toml",
        &[
            ("SWITCHYARD_LISTEN", "0.0.0.0:9000"),
            ("SWITCHYARD_BUS_PATH", "/var/lib/switchyard/bus"),
            ("SWITCHYARD_ADMIN_LISTEN", "127.0.0.1:9001"),
        ],
    )
    .unwrap();
    assert_eq!(config.admin.unwrap().listen.to_string(), "127.0.0.1:9001");
    assert_eq!(config.server.listen.to_string(), "0.0.0.0:9000");
    match &config.bus.engine {
        BusEngine::Embedded { path } => assert_eq!(path, Path::new("/var/lib/switchyard/bus")),
        other => panic!("{other:?}"),
    }
    // A bad value from the environment is reported under its key.
    let err = parse_with("routes.toml", &[("SWITCHYARD_LISTEN", "everywhere")]).unwrap_err();
    assert!(err.contains("server.listen"), "{err}");
}

#[test]
fn the_container_configs_validate() {
    let image = parse_with(
        "docker/routes.toml",
        &[("SWITCHYARD_LISTEN", "0.0.0.0:8080")],
    )
    .unwrap();
    assert_eq!(image.consumers.len(), 3);
    assert!(matches!(image.bus.engine, BusEngine::Embedded { .. }));
    // Standalone: the admin API the image exposes is on, and nothing points
    // at a host that only exists under compose.
    assert_eq!(
        image.admin.as_ref().map(|admin| admin.listen.to_string()),
        Some("0.0.0.0:8081".to_owned())
    );
    for (name, connection) in &image.connections {
        assert!(
            !connection.base_url.contains("downstreams"),
            "{name}: {}",
            connection.base_url
        );
    }
    // Each API's address comes from the environment.
    let pointed = parse_with(
        "docker/routes.toml",
        &[("SWITCHYARD_CONNECTION_CRM_URL", "https://crm.acme.example/")],
    )
    .unwrap();
    assert_eq!(
        pointed.connections["crm"].base_url,
        "https://crm.acme.example"
    );
    let bad = parse_with(
        "docker/routes.toml",
        &[("SWITCHYARD_CONNECTION_ERP_URL", "ftp://erp")],
    )
    .unwrap_err();
    assert!(bad.contains("connections.erp.base_url"), "{bad}");

    let compose = parse_with(
        "docker/compose.routes.toml",
        &[
            ("SWITCHYARD_BUS_URL", "nats://nats:4222"),
            ("SWITCHYARD_REDIS_URL", "redis://redis:6379"),
            ("SWITCHYARD_LISTEN", "0.0.0.0:8080"),
        ],
    )
    .unwrap();
    match &compose.bus.engine {
        BusEngine::Nats(nats) => assert_eq!(nats.urls, ["nats://nats:4222"]),
        other => panic!("{other:?}"),
    }
    match &compose.idempotency.backend {
        IdempotencyBackend::Redis { url, .. } => assert_eq!(url, "redis://redis:6379"),
        other => panic!("{other:?}"),
    }
    // The image ships exactly the plugins its config names.
    let dockerfile = std::fs::read_to_string(repo_root().join("docker/Dockerfile")).unwrap();
    for consumer in image.consumers.values() {
        let name = consumer.plugin.file_name().unwrap().to_str().unwrap();
        assert!(
            dockerfile.contains(&format!("plugins/dist/{name}")),
            "{name}"
        );
    }
    assert!(
        dockerfile.contains("\nUSER 10001"),
        "the image must not run as root"
    );
    assert!(
        dockerfile.contains("\nHEALTHCHECK"),
        "the image needs a healthcheck"
    );
}

/// `docker compose config` validates the compose file without an engine.
/// Runs wherever a docker client exists; tests/run.sh installs Debian's
/// docker-compose beside it so CI always runs it.
#[test]
fn the_compose_file_validates() {
    let has = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    let compose: Vec<&str> = if has("docker", &["compose", "version"]) {
        vec!["docker", "compose"]
    } else if has("docker-compose", &["version"]) {
        vec!["docker-compose"]
    } else {
        // Skipped, with the reason printed: the test command must pass on a
        // machine without compose (`tests/run.sh --install-toolchain`
        // installs it, as CI does).
        if has("docker", &["--version"]) {
            eprintln!(
                "a docker client but no compose plugin or docker-compose: compose file not validated (install docker-compose, or run tests/run.sh --install-toolchain)"
            );
        } else {
            eprintln!("no docker client on this machine: compose file not validated");
        }
        return;
    };
    let file = repo_root().join("docker/compose.yaml");
    let run = |env: &[(&str, &str)]| {
        let mut command = Command::new(compose[0]);
        command
            .args(&compose[1..])
            .arg("-f")
            .arg(&file)
            .arg("config")
            .env_remove("STRIPE_WEBHOOK_SECRET")
            .env_remove("SWITCHYARD_ADMIN_TOKEN");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    };
    let ok = run(&[
        ("STRIPE_WEBHOOK_SECRET", "whsec_x"),
        ("SWITCHYARD_ADMIN_TOKEN", "t"),
    ]);
    assert_success(&ok);
    let rendered = String::from_utf8_lossy(&ok.stdout);
    for expected in [
        "service_healthy",
        "appendonly",
        "nats.conf",
        "SWITCHYARD_BUS_URL",
    ] {
        assert!(
            rendered.contains(expected),
            "{expected} missing:\n{rendered}"
        );
    }
    // Secrets come from the environment: without them the file refuses.
    let missing = run(&[]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("STRIPE_WEBHOOK_SECRET"));
}

/// The build context leaves out build outputs and local state, keeps what
/// the Dockerfile copies, and dependencies build in a layer of their own.
#[test]
fn the_image_context_is_lean_and_dependencies_are_cached() {
    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore")).unwrap();
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with('!'))
        .collect();
    for must in ["target", ".git", "plugins/target", "fuzz"] {
        assert!(ignored.contains(&must), "{must} is in the context");
    }
    let dockerfile = std::fs::read_to_string(repo_root().join("docker/Dockerfile")).unwrap();
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let sources: Vec<&str> = line.split_whitespace().skip(1).collect();
        for source in &sources[..sources.len() - 1] {
            assert!(
                !ignored.iter().any(|entry| {
                    let entry = entry.trim_end_matches("/*");
                    *source == entry || source.starts_with(&format!("{entry}/"))
                }) || ignore.contains(&format!("!{source}")),
                "the Dockerfile copies `{source}`, which .dockerignore leaves out"
            );
        }
    }
    let dependencies = dockerfile.find("cargo build --release --locked --bin switchyard");
    let sources = dockerfile.find("COPY src ./src");
    assert!(
        matches!((dependencies, sources), (Some(d), Some(s)) if d < s),
        "dependencies build before the sources are copied"
    );
    assert!(
        repo_root().join("LICENSE").exists(),
        "Cargo.toml says Apache-2.0"
    );
}

/// The image from `docker/Dockerfile`, built and started on its own
/// (`docker run`, its default config): it answers a signed webhook with 200
/// and its admin API shows the event queued. Runs wherever a docker daemon
/// answers; elsewhere it says why it skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_builds_and_runs_on_its_own() {
    let daemon = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    if !daemon.as_ref().is_ok_and(|out| out.status.success()) {
        eprintln!(
            "no docker daemon answers here (`docker info` failed): the image is not built nor started"
        );
        return;
    }
    let tag = format!("switchyard-test:{}", std::process::id());
    let built = Command::new("docker")
        .args(["build", "-f", "docker/Dockerfile", "-t", &tag, "."])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert_success(&built);
    let token = "image-test-admin-token-0123456789";
    let started = Command::new("docker")
        .args([
            "run",
            "-d",
            "-p",
            "127.0.0.1::8080",
            "-p",
            "127.0.0.1::8081",
        ])
        .args([
            "-e",
            &format!("STRIPE_WEBHOOK_SECRET={}", crate::support::SECRET),
        ])
        .args(["-e", &format!("SWITCHYARD_ADMIN_TOKEN={token}")])
        .arg(&tag)
        .output()
        .unwrap();
    assert_success(&started);
    let container = String::from_utf8(started.stdout).unwrap().trim().to_owned();
    // Removed whatever the outcome.
    struct Removed(String, String);
    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
            let _ = Command::new("docker").args(["rmi", &self.1]).output();
        }
    }
    let _removed = Removed(container.clone(), tag.clone());
    let port = |inner: &str| {
        let out = Command::new("docker")
            .args(["port", &container, inner])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().next().unwrap_or_default().trim().to_owned()
    };
    let (edge, admin) = (port("8080/tcp"), port("8081/tcp"));
    let client = reqwest::Client::new();
    let ready = format!("http://{admin}/readyz");
    crate::support::eventually(
        std::time::Duration::from_secs(60),
        "the container's hub is ready",
        || async {
            client
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    let body =
        std::fs::read(repo_root().join("tests/fixtures/events/customer.created.json")).unwrap();
    let answer = client
        .post(format!("http://{edge}/webhooks/stripe"))
        .header("content-type", "application/json")
        .header(
            "stripe-signature",
            switchyard::ingest::scheme::stripe::signature_header(
                crate::support::SECRET,
                crate::support::now(),
                &body,
            ),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let consumers: serde_json::Value = client
        .get(format!("http://{admin}/v1/consumers"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let crm = consumers
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["name"] == "crm")
        .unwrap();
    // Its placeholder API does not answer: the event waits in the bus.
    assert!(
        crm["backlog"].as_u64() >= Some(1) || crm["retried"].as_u64() >= Some(1),
        "{crm}"
    );
}
