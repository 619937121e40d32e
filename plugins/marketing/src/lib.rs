//! Marketing consumer: keeps the marketing audience in step with subscriptions
//! and reports completed checkouts as purchases.
//!
//! | Stripe event                                   | call on connection `marketing` |
//! |------------------------------------------------|--------------------------------|
//! | `customer.subscription.created/updated/deleted`| `POST /audience/members` with `{"customer","plan","status"}` |
//! | `checkout.session.completed`                   | `POST /events` with `{"type":"purchase","customer","amount_total","currency"}` |
//! | anything else                                  | nothing                        |
//!
//! Deleted subscriptions are posted too: their `status` is `canceled`, which
//! is exactly what the audience tool needs to move the member to "churned".

use switchyard_plugin::prelude::*;

const CONNECTION: &str = "marketing";

struct Marketing;

impl Consumer for Marketing {
    fn handle(event: Event) -> Result<(), Failure> {
        match event.event_type.as_str() {
            "customer.subscription.created"
            | "customer.subscription.updated"
            | "customer.subscription.deleted" => sync_member(&event),
            "checkout.session.completed" => record_purchase(&event),
            _ => Ok(()),
        }
    }
}

fn sync_member(event: &Event) -> Result<(), Failure> {
    let subscription = event.data_object();
    // The plan is the price of the first item; our products sell one price per
    // subscription. Null if Stripe ever sends a subscription without items.
    let plan = &subscription["items"]["data"][0]["price"]["id"];
    let body = json!({
        "customer": subscription["customer"],
        "plan": plan,
        "status": subscription["status"],
    });
    send_json(CONNECTION, "POST", "/audience/members", &body)?;
    switchyard_plugin::debug!("audience member synced for {}", event.id);
    Ok(())
}

fn record_purchase(event: &Event) -> Result<(), Failure> {
    let session = event.data_object();
    let body = json!({
        "type": "purchase",
        "customer": session["customer"],
        "amount_total": session["amount_total"],
        "currency": session["currency"],
    });
    send_json(CONNECTION, "POST", "/events", &body)?;
    switchyard_plugin::debug!("purchase recorded for {}", event.id);
    Ok(())
}

switchyard_plugin::export!(Marketing);
