//! Routes: a typed builder for the connections, consumers, extra sources and
//! routes of a test's routes.toml, and the wirings most tests start from.

use super::{MockDownstream, Mocks};

/// The `[connections.*]`, `[consumers.*]` and `[sources.*]` tables and the
/// `[[routes]]` of a routes.toml, as [`super::HubOptions`] takes them (it
/// writes `[server]`, `[bus]`, `[idempotency]` and `[sources.stripe]`).
/// Tables come out in the order they were opened, then the routes.
///
/// ```ignore
/// Routes::new()
///     .connection("crm", &crm)
///     .consumer("crm", "crm", &["crm"])
///     .concurrency(4)
///     .route(&["customer.*"], &["crm"])
/// ```
#[derive(Clone, Debug, Default)]
pub struct Routes {
    tables: Vec<Table>,
    routes: Vec<String>,
}

#[derive(Clone, Debug)]
struct Table {
    name: String,
    keys: Vec<(String, String)>,
}

impl Routes {
    pub fn new() -> Routes {
        Routes::default()
    }

    /// `[connections.NAME]` calling `mock`.
    pub fn connection(self, name: &str, mock: &MockDownstream) -> Routes {
        self.connection_at(name, &mock.url())
    }

    /// `[connections.NAME]` with this `base_url`.
    pub fn connection_at(self, name: &str, base_url: &str) -> Routes {
        self.table(&format!("connections.{name}"))
            .with("base_url", &quoted(base_url))
    }

    /// `[consumers.NAME]` running the freshly built plugin `plugin` with
    /// `connections`.
    pub fn consumer(self, name: &str, plugin: &str, connections: &[&str]) -> Routes {
        self.table(&format!("consumers.{name}"))
            .with("plugin", &quoted(&format!("{{plugin:{plugin}}}")))
            .with("connections", &list(connections))
    }

    /// `[sources.NAME]` of `kind` (`[sources.stripe]` is the harness's).
    pub fn source(self, name: &str, kind: &str) -> Routes {
        self.table(&format!("sources.{name}"))
            .with("kind", &quoted(kind))
    }

    /// `[[routes]]`: `events` of the `stripe` source go to `consumers`.
    pub fn route(self, events: &[&str], consumers: &[&str]) -> Routes {
        self.route_from("stripe", events, consumers)
    }

    /// `[[routes]]`: `events` of `source` go to `consumers`.
    pub fn route_from(mut self, source: &str, events: &[&str], consumers: &[&str]) -> Routes {
        self.routes.push(format!(
            "[[routes]]\nsource = {}\nevents = {}\nconsumers = {}\n",
            quoted(source),
            list(events),
            list(consumers)
        ));
        self
    }

    /// `key = value` in the table opened last, `value` as TOML (`"4"`,
    /// `r#"{ wall = "1s" }"#`); it replaces an earlier value of `key`.
    pub fn with(mut self, key: &str, value: &str) -> Routes {
        let table = self.tables.last_mut().expect("open a table first");
        set(table, key, value);
        self
    }

    /// Each `(key, value)` in the table opened last, as [`Routes::with`].
    pub fn with_all(self, keys: &[(&str, &str)]) -> Routes {
        keys.iter()
            .fold(self, |routes, (key, value)| routes.with(key, value))
    }

    /// `key = value` in the table `name` (e.g. `consumers.crm`), opened
    /// earlier.
    pub fn with_in(mut self, name: &str, key: &str, value: &str) -> Routes {
        let table = self
            .tables
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no table [{name}]"));
        set(table, key, value);
        self
    }

    /// `timeout` (a duration) of the table opened last.
    pub fn timeout(self, timeout: &str) -> Routes {
        self.with("timeout", &quoted(timeout))
    }

    /// `concurrency` of the consumer opened last.
    pub fn concurrency(self, concurrency: usize) -> Routes {
        self.with("concurrency", &concurrency.to_string())
    }

    /// `retry`, an inline table, of the consumer opened last.
    pub fn retry(self, retry: &str) -> Routes {
        self.with("retry", retry)
    }

    /// `limits`, an inline table, of the consumer opened last.
    pub fn limits(self, limits: &str) -> Routes {
        self.with("limits", limits)
    }

    /// `auth` of the connection opened last: a bearer token from `secret`
    /// (a secret reference such as `file:crm_token`).
    pub fn bearer(self, secret: &str) -> Routes {
        self.with("auth", &format!("{{ bearer = {} }}", quoted(secret)))
    }

    /// The TOML text.
    pub fn build(&self) -> String {
        let mut text = String::new();
        for table in &self.tables {
            text += &format!("\n[{}]\n", table.name);
            for (key, value) in &table.keys {
                text += &format!("{key} = {value}\n");
            }
        }
        for route in &self.routes {
            text += "\n";
            text += route;
        }
        text
    }

    fn table(mut self, name: &str) -> Routes {
        assert!(self.tables.iter().all(|t| t.name != name), "[{name}] twice");
        self.tables.push(Table {
            name: name.to_owned(),
            keys: Vec::new(),
        });
        self
    }
}

impl From<Routes> for String {
    fn from(routes: Routes) -> String {
        routes.build()
    }
}

fn set(table: &mut Table, key: &str, value: &str) {
    match table.keys.iter_mut().find(|(k, _)| k == key) {
        Some((_, old)) => *old = value.to_owned(),
        None => table.keys.push((key.to_owned(), value.to_owned())),
    }
}

fn quoted(text: &str) -> String {
    format!("\"{text}\"")
}

fn list(items: &[&str]) -> String {
    let items: Vec<String> = items.iter().map(|item| quoted(item)).collect();
    format!("[{}]", items.join(", "))
}

/// The three example consumers wired as in the shipped routes.toml, against
/// mock downstreams. `retry` is the inline retry table for each.
pub fn example_routes(
    crm: &MockDownstream,
    erp: &MockDownstream,
    marketing: &MockDownstream,
    retry: &str,
) -> Routes {
    Routes::new()
        .connection("crm", crm)
        .bearer("file:crm_token")
        .timeout("5s")
        .connection("erp", erp)
        .timeout("5s")
        .connection("marketing", marketing)
        .timeout("5s")
        .consumer("crm", "crm", &["crm"])
        .retry(retry)
        .consumer("erp", "erp", &["erp"])
        .retry(retry)
        .consumer("marketing", "marketing", &["marketing"])
        .retry(retry)
        .route(&["customer.*"], &["crm", "marketing"])
        .route(
            &[
                "invoice.paid",
                "invoice.payment_succeeded",
                "charge.refunded",
            ],
            &["erp"],
        )
        .route(&["checkout.session.completed"], &["marketing"])
}

/// One consumer, `crm` (the crm plugin) on `customer.*`, calling `crm`.
/// `[consumers.crm]` is the table opened last, so `.with(…)` and the like
/// add to it.
pub fn crm_routes(crm: &MockDownstream) -> Routes {
    Routes::new()
        .connection("crm", crm)
        .consumer("crm", "crm", &["crm"])
        .route(&["customer.*"], &["crm"])
}

/// Two consumers: `crm` on `customer.*` and `erp` on `invoice.paid`, each
/// calling its own mock and each with `consumer_keys`.
pub fn crm_erp_routes(
    crm: &MockDownstream,
    erp: &MockDownstream,
    consumer_keys: &[(&str, &str)],
) -> Routes {
    Routes::new()
        .connection("crm", crm)
        .connection("erp", erp)
        .consumer("crm", "crm", &["crm"])
        .with_all(consumer_keys)
        .consumer("erp", "erp", &["erp"])
        .with_all(consumer_keys)
        .route(&["customer.*"], &["crm"])
        .route(&["invoice.paid"], &["erp"])
}

impl Mocks {
    /// [`example_routes`] against these mocks.
    pub fn example_routes(&self, retry: &str) -> Routes {
        example_routes(&self.crm, &self.erp, &self.marketing, retry)
    }
}
