//! ERP consumer: books payments and refunds against ERP orders.
//!
//! | Stripe event                                  | call on connection `erp` |
//! |-----------------------------------------------|--------------------------|
//! | `invoice.paid`, `invoice.payment_succeeded`   | `POST /payments` with `{"invoice","customer","amount_paid","currency","order_id"}` |
//! | `charge.refunded`                             | `POST /credit-notes` with `{"charge","customer","amount_refunded","currency","payment_intent"}` |
//! | anything else                                 | nothing                  |
//!
//! Stripe sends both `invoice.paid` and `invoice.payment_succeeded` for the
//! same payment; the ERP deduplicates on the invoice id, so forwarding both is
//! safe and keeps working whichever one an account has enabled.

use switchyard_plugin::prelude::*;

const CONNECTION: &str = "erp";

struct Erp;

impl Consumer for Erp {
    fn handle(event: Event) -> Result<(), Failure> {
        match event.event_type.as_str() {
            "invoice.paid" | "invoice.payment_succeeded" => book_payment(&event),
            "charge.refunded" => book_refund(&event),
            _ => Ok(()),
        }
    }
}

fn book_payment(event: &Event) -> Result<(), Failure> {
    let invoice = event.data_object();
    let id = event.object_str("id")?;
    // The checkout puts the ERP order number in the invoice metadata. Without
    // it the payment cannot be matched to an order: that is a human's job, not
    // something a retry will fix, so park the event for review.
    let order_id = match invoice["metadata"]["order_id"].as_str() {
        Some(order) if !order.is_empty() => order,
        _ => return Err(Failure::Review(format!("invoice {id} has no order_id in metadata"))),
    };
    let body = json!({
        "invoice": id,
        "customer": invoice["customer"],
        "amount_paid": invoice["amount_paid"],
        "currency": invoice["currency"],
        "order_id": order_id,
    });
    send_json(CONNECTION, "POST", "/payments", &body)?;
    switchyard_plugin::info!("payment for invoice {id} booked on order {order_id}");
    Ok(())
}

fn book_refund(event: &Event) -> Result<(), Failure> {
    let charge = event.data_object();
    let id = event.object_str("id")?;
    // `amount_refunded` is cumulative over all refunds of the charge; the ERP
    // keeps one credit note per charge and updates it to this total.
    let body = json!({
        "charge": id,
        "customer": charge["customer"],
        "amount_refunded": charge["amount_refunded"],
        "currency": charge["currency"],
        "payment_intent": charge["payment_intent"],
    });
    send_json(CONNECTION, "POST", "/credit-notes", &body)?;
    switchyard_plugin::info!("credit note for charge {id} booked");
    Ok(())
}

switchyard_plugin::export!(Erp);
