//! Routes: the connections, consumers and routes of a test's routes.toml.

use super::MockDownstream;

/// The three example consumers wired as in the shipped routes.toml, against
/// mock downstreams. `retry` is the inline retry table for each.
pub fn example_routes(
    crm: &MockDownstream,
    erp: &MockDownstream,
    marketing: &MockDownstream,
    retry: &str,
) -> String {
    format!(
        r#"
[connections.crm]
base_url = "{crm}"
auth = {{ bearer = "file:crm_token" }}
timeout = "5s"

[connections.erp]
base_url = "{erp}"
timeout = "5s"

[connections.marketing]
base_url = "{marketing}"
timeout = "5s"

[consumers.crm]
plugin = "{{plugin:crm}}"
connections = ["crm"]
retry = {retry}

[consumers.erp]
plugin = "{{plugin:erp}}"
connections = ["erp"]
retry = {retry}

[consumers.marketing]
plugin = "{{plugin:marketing}}"
connections = ["marketing"]
retry = {retry}

[[routes]]
source = "stripe"
events = ["customer.*"]
consumers = ["crm", "marketing"]

[[routes]]
source = "stripe"
events = ["invoice.paid", "invoice.payment_succeeded", "charge.refunded"]
consumers = ["erp"]

[[routes]]
source = "stripe"
events = ["checkout.session.completed"]
consumers = ["marketing"]
"#,
        crm = crm.url(),
        erp = erp.url(),
        marketing = marketing.url(),
    )
}

/// One consumer, `crm` (the crm plugin) on `customer.*`, calling `crm`;
/// `consumer_keys` are more lines for `[consumers.crm]`.
pub fn crm_routes(crm: &MockDownstream, consumer_keys: &str) -> String {
    format!(
        r#"
[connections.crm]
base_url = "{crm}"

[consumers.crm]
plugin = "{{plugin:crm}}"
connections = ["crm"]
{consumer_keys}

[[routes]]
source = "stripe"
events = ["customer.*"]
consumers = ["crm"]
"#,
        crm = crm.url()
    )
}
