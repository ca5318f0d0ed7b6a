//! Time order for audit events. The API server hands events to its backends roughly in
//! completion order: the log backend's lines interleave concurrent requests, and the
//! webhook backend's batches neither keep that order inside a batch nor arrive in
//! order (they are sent concurrently). The stateful detections — a repeat of a
//! finding, a registry's first use, an error window — depend on order, so both judge
//! events by their stage timestamp, then audit ID: `/audit` sorts each batch (`sort`),
//! `audit-scan` holds each line `HOLD_MICROS` of log time (`Reorder`). Across batches
//! `/audit` judges in arrival order; a repeat arriving before its original still
//! raises one finding (`Monitor` compares repeat times either way round).

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde::Deserialize;

use super::Event;

/// How long `Reorder` holds an event for an earlier one to arrive (event time: the
/// log backend's interleaving is milliseconds).
pub const HOLD_MICROS: i64 = 2_000_000;
/// Most bytes of events `Reorder` holds; beyond it the earliest are released regardless
/// (a busy cluster's 2 s of log, with room to spare).
pub const MAX_HELD_BYTES: usize = 64 << 20;

/// An event's place in time order: its stage timestamp in microseconds since the
/// epoch (events without a readable one first, in arrival order), then its audit ID.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    micros: i64,
    audit_id: String,
}

/// The two fields a `Stamp` reads, for a line not yet parsed whole.
#[derive(Deserialize)]
struct StampFields<'a> {
    #[serde(borrow, default, rename = "auditID")]
    audit_id: Cow<'a, str>,
    #[serde(borrow, default, rename = "stageTimestamp")]
    stage_timestamp: Option<Cow<'a, str>>,
}

impl Stamp {
    /// `event`'s place.
    pub fn of(event: &Event<'_>) -> Stamp {
        Stamp::new(event.stage_timestamp.as_deref(), &event.audit_id)
    }

    /// The place of the event on one line of a log; first when it is not an event (so
    /// that reading it whole reports the error without delay).
    pub fn of_line(line: &str) -> Stamp {
        match serde_json::from_str::<StampFields<'_>>(line) {
            Ok(fields) => Stamp::new(fields.stage_timestamp.as_deref(), &fields.audit_id),
            Err(_) => Stamp::new(None, ""),
        }
    }

    fn new(stage_timestamp: Option<&str>, audit_id: &str) -> Stamp {
        let micros = stage_timestamp
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map_or(i64::MIN, jiff::Timestamp::as_microsecond);
        Stamp {
            micros,
            audit_id: audit_id.to_owned(),
        }
    }
}

/// Sorts one batch of events into time order (stable: equal stamps keep their order).
pub fn sort(events: &mut [Event<'_>]) {
    events.sort_by_cached_key(Stamp::of);
}

/// A stream put back in time order: each item is held until an item `HOLD_MICROS`
/// later has arrived (or `MAX_HELD_BYTES` are held, or the stream ends).
#[derive(Debug)]
pub struct Reorder<T> {
    held: BinaryHeap<Reverse<Held<T>>>,
    bytes: usize,
    newest: i64,
    arrivals: u64,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Reorder {
            held: BinaryHeap::new(),
            bytes: 0,
            newest: i64::MIN,
            arrivals: 0,
        }
    }
}

#[derive(Debug)]
struct Held<T> {
    stamp: Stamp,
    arrival: u64,
    bytes: usize,
    item: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        (&self.stamp, self.arrival) == (&other.stamp, other.arrival)
    }
}
impl<T> Eq for Held<T> {}
impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Held<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.stamp, self.arrival).cmp(&(&other.stamp, other.arrival))
    }
}

impl<T> Reorder<T> {
    /// Takes `item` (of `bytes`) at `stamp`; returns the items no later arrival can
    /// precede, in time order.
    pub fn push(&mut self, stamp: Stamp, item: T, bytes: usize) -> Vec<T> {
        self.newest = self.newest.max(stamp.micros);
        self.arrivals += 1;
        self.bytes += bytes;
        self.held.push(Reverse(Held {
            stamp,
            arrival: self.arrivals,
            bytes,
            item,
        }));
        let mut ready = Vec::new();
        while let Some(Reverse(earliest)) = self.held.peek() {
            let settled = earliest.stamp.micros <= self.newest.saturating_sub(HOLD_MICROS);
            if !settled && self.bytes <= MAX_HELD_BYTES {
                break;
            }
            if let Some(Reverse(held)) = self.held.pop() {
                self.bytes -= held.bytes;
                ready.push(held.item);
            }
        }
        ready
    }

    /// The stream ended: everything still held, in time order.
    pub fn finish(&mut self) -> Vec<T> {
        self.bytes = 0;
        let mut rest = Vec::with_capacity(self.held.len());
        while let Some(Reverse(held)) = self.held.pop() {
            rest.push(held.item);
        }
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, time: &str) -> String {
        format!(r#"{{"auditID":"{id}","stage":"ResponseComplete","stageTimestamp":"{time}"}}"#)
    }

    #[test]
    fn sub_second_time_orders_first_then_the_audit_id() {
        let early = Stamp::of_line(&line("b", "2026-12-01T06:29:40.135119Z"));
        let late = Stamp::of_line(&line("a", "2026-12-01T06:29:40.138854Z"));
        let same_time = Stamp::of_line(&line("c", "2026-12-01T06:29:40.135119Z"));
        assert!(early < late, "microseconds count, not just seconds");
        assert!(early < same_time, "the audit ID breaks a tie");
        assert!(
            Stamp::of_line("not json") < early,
            "unreadable lines go first"
        );
    }

    #[test]
    fn a_batch_is_sorted_by_stage_time() {
        let body = format!(
            r#"{{"items":[{},{},{}]}}"#,
            line("late", "2026-12-01T06:29:41Z"),
            line("early", "2026-12-01T06:29:40.5Z"),
            line("middle", "2026-12-01T06:29:40.75Z"),
        );
        let mut list: super::super::EventList<'_> = serde_json::from_str(&body).unwrap();
        sort(&mut list.items);
        let ids: Vec<&str> = list.items.iter().map(|e| e.audit_id.as_ref()).collect();
        assert_eq!(ids, ["early", "middle", "late"]);
    }

    #[test]
    fn items_are_held_until_the_stream_is_past_them_by_the_hold() {
        let mut reorder = Reorder::default();
        let mut push = |s: &'static str| {
            let stamp = Stamp::of_line(&line(s, &format!("2026-12-01T06:00:{s}Z")));
            reorder.push(stamp, s, 1)
        };
        assert!(push("10.5").is_empty());
        assert!(push("10.0").is_empty(), "earlier, held too");
        assert!(push("11.9").is_empty(), "within the hold");
        assert_eq!(push("12.2"), ["10.0"]);
        assert_eq!(push("13.0"), ["10.5"]);
        assert_eq!(reorder.finish(), ["11.9", "12.2", "13.0"]);
    }

    #[test]
    fn no_more_than_the_bound_is_held() {
        let mut reorder = Reorder::default();
        let stamp = Stamp::of_line(&line("x", "2026-12-01T06:00:00Z"));
        let line_bytes = 1 << 20;
        let fit = MAX_HELD_BYTES / line_bytes;
        let released: Vec<usize> = (0..fit + 10)
            .flat_map(|i| reorder.push(stamp.clone(), i, line_bytes))
            .collect();
        assert_eq!(
            released,
            (0..10).collect::<Vec<_>>(),
            "the earliest, in order"
        );
        assert_eq!(reorder.finish().len(), fit);
    }
}
