//! Row-level steps the embedded engine's transactions share: parking an
//! entry and unindexing it, the reference counts that tell when an event is
//! settled, queueing again, and the one-time index builds of older files.

use super::*;

/// Writes a dead-letter or review entry: why, and a copy of the envelope.
#[allow(clippy::too_many_arguments)]
pub(super) fn park(
    txn: &redb::WriteTransaction,
    consumer: &str,
    queue: ParkQueue,
    seq: u64,
    event: &str,
    attempts: u32,
    reason: String,
    envelope: &[u8],
) -> Result<(), redb::Error> {
    let meta = serde_json::to_vec(&DeadMeta {
        attempts,
        reason,
        at_ms: now_ms(),
    })
    .expect("dead-letter meta serializes");
    let mut value = (meta.len() as u32).to_be_bytes().to_vec();
    value.extend_from_slice(&meta);
    value.extend_from_slice(envelope);
    let mut dead = txn.open_table(DEAD)?;
    let mut by_event = txn.open_table(DEAD_BY_EVENT)?;
    // One entry per (consumer, event): a new failure replaces the old entry,
    // whichever queue and generation it was.
    let earlier = by_event.get((consumer, event))?.map(|row| row.value());
    if let Some((code, earlier_seq)) = earlier {
        dead.remove((consumer, code, earlier_seq))?;
    }
    dead.insert((consumer, queue_code(queue), seq), value.as_slice())?;
    by_event.insert((consumer, event), (queue_code(queue), seq))?;
    Ok(())
}

/// `<source>:<event id>`: the event a parked entry is of.
pub(super) fn event_key(envelope: &Envelope) -> String {
    format!("{}:{}", envelope.source, envelope.event_id)
}

/// Drops the index entry of a parked entry that leaves its queue (if the
/// index still points at it).
pub(super) fn unindex_dead(
    txn: &redb::WriteTransaction,
    consumer: &str,
    code: u8,
    seq: u64,
    value: &[u8],
) -> Result<(), redb::Error> {
    let Some(event) = dead_envelope(value)
        .and_then(|bytes| Envelope::decode_unverified(bytes).ok())
        .map(|(envelope, _)| event_key(&envelope))
    else {
        return Ok(());
    };
    let mut by_event = txn.open_table(DEAD_BY_EVENT)?;
    let points_here = by_event
        .get((consumer, event.as_str()))?
        .is_some_and(|row| row.value() == (code, seq));
    if points_here {
        by_event.remove((consumer, event.as_str()))?;
    }
    Ok(())
}

/// Builds `dead_by_event` for entries parked by a build without it. Where
/// an event already has several entries, the newest is indexed.
pub(super) fn index_dead_entries(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let mut meta = txn.open_table(META)?;
    if meta.get(DEAD_INDEXED)?.is_some() {
        return Ok(());
    }
    let dead = txn.open_table(DEAD)?;
    let mut by_event = txn.open_table(DEAD_BY_EVENT)?;
    for row in dead.iter()? {
        let (key, value) = row?;
        let (consumer, code, seq) = key.value();
        let Some((envelope, _)) =
            dead_envelope(value.value()).and_then(|bytes| Envelope::decode_unverified(bytes).ok())
        else {
            continue;
        };
        let event = event_key(&envelope);
        let newer = by_event
            .get((consumer, event.as_str()))?
            .is_none_or(|row| row.value().1 < seq);
        if newer {
            by_event.insert((consumer, event.as_str()), (code, seq))?;
        }
    }
    meta.insert(DEAD_INDEXED, 1)?;
    Ok(())
}

/// Makes every lease left by an earlier run due now. Returns how many.
pub(super) fn release_abandoned_leases(txn: &redb::WriteTransaction) -> Result<usize, redb::Error> {
    let mut schedule = txn.open_table(SCHEDULE)?;
    let now = now_ms();
    let mut abandoned = Vec::new();
    for row in schedule.iter()? {
        let (key, value) = row?;
        let value = value.value();
        if value & LEASED != 0 {
            let (queue, due, seq) = key.value();
            abandoned.push((queue.to_owned(), due, seq, value & !LEASED));
        }
    }
    for (queue, due, seq, deliveries) in &abandoned {
        schedule.remove((queue.as_str(), *due, *seq))?;
        schedule.insert((queue.as_str(), now, *seq), *deliveries)?;
    }
    Ok(abandoned.len())
}

/// Queues `seq` in `consumer`'s replay lane, due now, as a fresh delivery.
pub(super) fn enqueue_again(
    txn: &redb::WriteTransaction,
    consumer: &str,
    seq: u64,
    now: u64,
) -> Result<(), redb::Error> {
    let queue = lane_queue(consumer, Lane::Replay);
    txn.open_table(SCHEDULE)?
        .insert((queue.as_str(), now, seq), 0)?;
    let mut refs = txn.open_table(REFS)?;
    let count = refs.get(seq)?.map(|v| v.value()).unwrap_or(0);
    refs.insert(seq, count + 1)?;
    txn.open_table(SETTLED)?.remove(seq)?;
    Ok(())
}

/// Adds an encoded envelope to the log under the next sequence number.
pub(super) fn append_log(txn: &redb::WriteTransaction, bytes: &[u8]) -> Result<u64, redb::Error> {
    let mut meta = txn.open_table(META)?;
    let seq = meta.get(NEXT_SEQ)?.map(|v| v.value()).unwrap_or(0);
    meta.insert(NEXT_SEQ, seq + 1)?;
    txn.open_table(EVENTS)?.insert(seq, bytes)?;
    Ok(seq)
}

/// One fewer queue row points at `seq`.
pub(super) fn release_ref(txn: &redb::WriteTransaction, seq: u64) -> Result<(), redb::Error> {
    let mut refs = txn.open_table(REFS)?;
    let left = refs.get(seq)?.map(|v| v.value()).unwrap_or(0);
    if left > 1 {
        refs.insert(seq, left - 1)?;
    } else {
        refs.remove(seq)?;
        txn.open_table(SETTLED)?.insert(seq, ())?;
    }
    Ok(())
}

/// Builds the `settled` index of a log written before it existed: every
/// event no queue refers to. Once per file.
pub(super) fn index_settled_events(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let mut meta = txn.open_table(META)?;
    if meta.get(SETTLED_INDEXED)?.is_some() {
        return Ok(());
    }
    let events = txn.open_table(EVENTS)?;
    let refs = txn.open_table(REFS)?;
    let mut settled = txn.open_table(SETTLED)?;
    for row in events.iter()? {
        let seq = row?.0.value();
        if refs.get(seq)?.is_none() {
            settled.insert(seq, ())?;
        }
    }
    meta.insert(SETTLED_INDEXED, 1)?;
    Ok(())
}

/// A `dead` row: `[meta length u32][meta JSON][encoded envelope]`.
pub(super) fn split_dead(value: &[u8]) -> Result<(DeadMeta, &[u8]), BusError> {
    let corrupt = || BusError::Corrupt(EnvelopeError::Truncated);
    let envelope = dead_envelope(value).ok_or_else(corrupt)?;
    let meta = &value[4..value.len() - envelope.len()];
    let meta: DeadMeta = serde_json::from_slice(meta)
        .map_err(|err| BusError::Corrupt(EnvelopeError::Header(err.to_string())))?;
    Ok((meta, envelope))
}

/// The encoded envelope inside a `dead` row, if the row is well formed.
pub(super) fn dead_envelope(value: &[u8]) -> Option<&[u8]> {
    let meta_len = u32::from_be_bytes(value.get(0..4)?.try_into().ok()?) as usize;
    value.get(4usize.checked_add(meta_len)?..)
}

pub(super) enum Settle {
    Ack,
    Release,
    RetryAt(u64),
    Park(ParkQueue, String),
}
