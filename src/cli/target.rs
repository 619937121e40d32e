//! Which hub an admin command talks to: the flags (or their variables)
//! first, then the `[admin]` table of the config it was given, so `-c
//! other/routes.toml` reaches the hub that config runs.

use anyhow::{Result, bail};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use switchyard::admin::client::AdminClient;
use switchyard::config::Config;

/// The config the command was given, and whether on purpose (`-c` or
/// `SWITCHYARD_CONFIG`) rather than the default `routes.toml`.
pub struct ConfigGiven {
    pub path: PathBuf,
    pub explicit: bool,
}

/// Where the admin API is and how to authenticate.
#[derive(clap::Args, Clone)]
pub struct AdminArgs {
    /// Base URL of the admin listener. Default: the `[admin] listen` of the
    /// config (`-c`), else `http://127.0.0.1:8081`.
    #[arg(long, env = "SWITCHYARD_ADMIN_URL")]
    admin_url: Option<String>,
    /// Bearer token of the admin API. Default: the `[admin] token` of the
    /// config (`-c`).
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

/// The address a client reaches a listener bound to `listen` at.
fn reachable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(v6) if v6.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

impl AdminArgs {
    /// A client of the admin API this command means. A URL and an explicit
    /// config that name different hubs are an error.
    pub fn client(&self, given: &ConfigGiven) -> Result<AdminClient> {
        let path = &given.path;
        let config = Config::load(path).ok().and_then(|config| config.admin);
        if given.explicit && config.is_none() && self.admin_url.is_none() {
            bail!(
                "`{}` has no usable [admin] table (or does not load): pass --admin-url",
                path.display()
            );
        }
        let url = match (&self.admin_url, &config) {
            (Some(url), Some(admin)) if given.explicit => {
                let named = reqwest::Url::parse(url)
                    .ok()
                    .and_then(|url| url.socket_addrs(|| None).ok())
                    .unwrap_or_default();
                let listen = reachable(admin.listen);
                if !named.iter().any(|addr| {
                    *addr == listen
                        || (addr.port() == listen.port() && admin.listen.ip().is_unspecified())
                }) {
                    bail!(
                        "--admin-url `{url}` and `{}` ([admin] listen = {}) name different hubs; drop one",
                        path.display(),
                        admin.listen
                    );
                }
                url.clone()
            }
            (Some(url), _) => url.clone(),
            (None, Some(admin)) => format!("http://{}", reachable(admin.listen)),
            (None, None) => "http://127.0.0.1:8081".to_owned(),
        };
        let token = match (&self.admin_token, &config) {
            (Some(token), _) => token.clone(),
            (None, Some(admin)) => admin
                .token
                .resolve()
                .map_err(|err| anyhow::anyhow!("admin token of `{}`: {err}", path.display()))?
                .expose()
                .to_owned(),
            (None, None) => {
                bail!("no admin token: pass --admin-token or set SWITCHYARD_ADMIN_TOKEN")
            }
        };
        Ok(AdminClient::new(&url, &token))
    }
}
