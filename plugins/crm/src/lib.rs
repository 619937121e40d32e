//! CRM consumer: keeps the CRM's contacts in step with Stripe customers.
//!
//! | Stripe event                            | call on connection `crm`     |
//! |-----------------------------------------|------------------------------|
//! | `customer.created`, `customer.updated`  | `PUT /contacts/{customer id}` with `{"email","name","stripe_customer_id"}` |
//! | `customer.deleted`                      | `DELETE /contacts/{customer id}` (no body) |
//! | anything else                           | nothing                      |
//!
//! `PUT` rather than `POST`: the contact is keyed by the Stripe customer id, so
//! a create delivered twice, or an update arriving before its create, both
//! converge on the same contact. That makes redelivery harmless.

use switchyard_plugin::prelude::*;

/// The connection name in routes.toml; by convention the plugin's own name.
const CONNECTION: &str = "crm";

struct Crm;

impl Consumer for Crm {
    fn handle(event: Event) -> Result<(), Failure> {
        match event.event_type.as_str() {
            "customer.created" | "customer.updated" => upsert_contact(&event),
            "customer.deleted" => delete_contact(&event),
            // Routes may send us more than we care about; acknowledging is right.
            _ => Ok(()),
        }
    }
}

fn upsert_contact(event: &Event) -> Result<(), Failure> {
    let customer = event.data_object();
    let id = event.object_str("id")?;
    // Stripe sends null for an unset email or name; the CRM accepts null and
    // clears the field, which is what an update that removed them means.
    let body = json!({
        "email": customer["email"],
        "name": customer["name"],
        "stripe_customer_id": id,
    });
    send_json(CONNECTION, "PUT", &contact_path(id), &body)?;
    switchyard_plugin::info!("contact {id} upserted for {}", event.id);
    Ok(())
}

fn delete_contact(event: &Event) -> Result<(), Failure> {
    let id = event.object_str("id")?;
    send_empty(CONNECTION, "DELETE", &contact_path(id))?;
    switchyard_plugin::info!("contact {id} deleted for {}", event.id);
    Ok(())
}

/// Stripe ids are `[A-Za-z0-9_]`, so they need no escaping in a path.
fn contact_path(customer_id: &str) -> String {
    format!("/contacts/{customer_id}")
}

switchyard_plugin::export!(Crm);
