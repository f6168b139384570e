//! When a JetStream consumer with `AckPolicy::All` may be acknowledged, and on which
//! message.
//!
//! With that policy one ack on stream sequence `S` acknowledges every message the
//! server holds as pending for the consumer at or below `S`, also messages this process
//! never received: those a crashed predecessor was delivered but never stored, or
//! deliveries lost with a dropped connection. They are only redelivered after
//! `ack_wait`, while newer messages keep arriving, so acking "the last durable message"
//! would drop them. The rule kept here:
//!
//! - The tracker is *complete* when every message the server counts as pending is one
//!   this process holds. It starts incomplete and becomes so again whenever the pull
//!   stream is reopened or a delivery (consumer) sequence is skipped: a delivery that
//!   never arrived.
//! - It becomes complete through a *probe*: the consumer's info gives the server's
//!   pending count `P` and its last delivery `D`. Once every delivery up to `D` has
//!   arrived here without a gap after `D`, the messages held here that first arrived
//!   at or before `D` are all in that pending set (nothing is acked while incomplete,
//!   and only this process acks them); if there are `P` of them, the set held nothing
//!   else. A mismatch (a predecessor's messages, a lost delivery) means another probe
//!   later: the missing messages come back after `ack_wait` and complete the set.
//! - While incomplete no ack is sent. While complete, an ack goes on the highest stream
//!   sequence below which every held message is durable; a redelivered old message in
//!   a batch not yet durable holds the ack back below it.
//! - Messages the stream drops (its `max_msgs`, `max_bytes` or `max_age` limits, or a
//!   deletion by hand, which the server takes as an ack of everything pending below
//!   it) leave the server's pending set at once and move its ack floor past them. Held
//!   copies at or below the floor are forgotten with each probe, or the counts would
//!   never agree again and acks would stay held until `max_ack_pending` stopped the
//!   consumer.

use std::collections::BTreeMap;

/// A held message: its ack handle, the first batch and delivery it arrived in.
#[derive(Debug)]
struct Held<A> {
    acker: A,
    batch: u64,
    delivery: u64,
}

/// The consumer's info at one moment: `num_ack_pending` and `delivered.consumer_seq`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Probe {
    pending: usize,
    last_delivery: u64,
}

/// Messages received and not acknowledged yet, keyed by stream sequence; `A` is
/// whatever sends the ack of one message.
#[derive(Debug)]
pub struct Cumulative<A> {
    held: BTreeMap<u64, Held<A>>,
    complete: bool,
    /// The last delivery (consumer) sequence received.
    last_delivery: Option<u64>,
    probe: Option<Probe>,
}

impl<A> Default for Cumulative<A> {
    fn default() -> Self {
        Cumulative {
            held: BTreeMap::new(),
            complete: false,
            last_delivery: None,
            probe: None,
        }
    }
}

impl<A> Cumulative<A> {
    /// Deliveries may have been lost (the pull stream was reopened): no ack until a
    /// probe taken from now on settles.
    pub fn lost_track(&mut self) {
        self.complete = false;
        self.probe = None;
    }

    /// Records a delivery that will be part of `batch`. A redelivery of a held message
    /// keeps its first batch: the message is durable once that batch is.
    pub fn received(&mut self, stream_seq: u64, delivery_seq: u64, batch: u64, acker: A) {
        let previous = self.last_delivery.or(self.probe.map(|p| p.last_delivery));
        if let Some(previous) = previous {
            if delivery_seq != previous + 1 {
                self.complete = false;
                // A delivery after the probe's that never arrived is not in its count.
                if self
                    .probe
                    .is_some_and(|p| delivery_seq <= previous || delivery_seq > p.last_delivery + 1)
                {
                    self.probe = None;
                }
            }
        }
        self.last_delivery = Some(delivery_seq);
        self.held.entry(stream_seq).or_insert(Held {
            acker,
            batch,
            delivery: delivery_seq,
        });
    }

    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Whether a new probe is wanted: incomplete, and none waiting to settle.
    pub fn wants_probe(&self) -> bool {
        !self.complete && self.probe.is_none()
    }

    /// Messages held unacknowledged.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The server's ack floor (`ack_floor.stream_seq` of the consumer's info): every
    /// message at or below it is acknowledged or gone from the stream, so none of them
    /// is pending and none will be delivered again. Held copies are forgotten; an ack
    /// for them is neither needed nor possible. Returns how many were held.
    pub fn settled_through(&mut self, ack_floor: u64) -> usize {
        let above = self.held.split_off(&(ack_floor.saturating_add(1)));
        let settled = std::mem::replace(&mut self.held, above);
        settled.len()
    }

    /// Takes the consumer's info, read while this process received nothing:
    /// `num_ack_pending` and `delivered.consumer_seq`.
    pub fn probe(&mut self, server_pending: usize, server_last_delivery: u64) {
        if self.complete {
            return;
        }
        self.probe = Some(Probe {
            pending: server_pending,
            last_delivery: server_last_delivery,
        });
        self.settle();
    }

    /// Completes the set if the waiting probe can be decided and matches.
    fn settle(&mut self) {
        let Some(probe) = self.probe else { return };
        let seen_through = self.last_delivery.unwrap_or(0);
        if seen_through >= probe.last_delivery {
            let ours = self
                .held
                .values()
                .filter(|h| h.delivery <= probe.last_delivery)
                .count();
            self.probe = None;
            self.complete = ours == probe.pending;
            if self.complete {
                self.last_delivery = Some(seen_through);
            }
        } else if probe.pending == 0 && self.held.is_empty() {
            // Deliveries up to the probe's were all acknowledged before; the next one
            // must follow it.
            self.probe = None;
            self.complete = true;
            self.last_delivery = Some(probe.last_delivery);
        }
    }

    /// Once batches up to `through` are durable: the handle to ack (its stream
    /// sequence and everything held below it are then done), or `None` when nothing
    /// may be acked yet.
    pub fn take_ack(&mut self, through: u64) -> Option<(u64, A)> {
        self.settle();
        if !self.complete {
            return None;
        }
        let upto = self
            .held
            .iter()
            .take_while(|(_, h)| h.batch <= through)
            .last()
            .map(|(seq, _)| *seq)?;
        let rest = self.held.split_off(&(upto + 1));
        let mut done = std::mem::replace(&mut self.held, rest);
        done.remove(&upto).map(|h| (upto, h.acker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_consumer_is_acked_per_durable_batch() {
        let mut c = Cumulative::default();
        c.probe(0, 0);
        assert!(c.is_complete());
        for (i, seq) in (1..=4).enumerate() {
            c.received(seq, seq, if i < 2 { 1 } else { 2 }, seq);
        }
        assert_eq!(c.take_ack(0), None, "nothing durable yet");
        assert_eq!(c.take_ack(1), Some((2, 2)));
        assert_eq!(c.held(), 2);
        assert_eq!(c.take_ack(2), Some((4, 4)));
        assert_eq!(c.take_ack(2), None);
    }

    #[test]
    fn messages_left_pending_by_a_previous_process_hold_every_ack() {
        // A crashed predecessor was delivered 5..=7 (deliveries 5..=7) and stored none.
        let mut c = Cumulative::default();
        c.probe(3, 7);
        assert!(!c.is_complete());
        c.received(8, 8, 1, 8);
        c.received(9, 9, 1, 9);
        assert_eq!(c.take_ack(1), None, "5..=7 are pending and not ours");
        assert!(c.wants_probe());
        c.probe(5, 9);
        assert_eq!(c.take_ack(1), None);
        // After ack_wait they come back to us, in a later batch.
        c.received(5, 10, 2, 5);
        c.received(6, 11, 2, 6);
        c.received(7, 12, 2, 7);
        c.probe(5, 12);
        assert!(c.is_complete());
        assert_eq!(c.take_ack(1), None, "5 is not durable yet, so 8 and 9 wait");
        assert_eq!(c.take_ack(2), Some((9, 9)));
        assert_eq!(c.held(), 0);
    }

    #[test]
    fn a_probe_taken_while_deliveries_are_in_flight_settles_when_they_arrive() {
        let mut c = Cumulative::default();
        c.probe(0, 0);
        c.lost_track();
        c.received(1, 1, 1, 1);
        // The server already delivered 2 and 3, which have not arrived yet.
        c.probe(3, 3);
        assert!(!c.is_complete());
        assert!(!c.wants_probe(), "waits for deliveries up to 3");
        c.received(2, 2, 1, 2);
        c.received(3, 3, 1, 3);
        // A delivery after the probe does not count against it.
        c.received(4, 4, 2, 4);
        assert_eq!(c.take_ack(1), Some((3, 3)));
        assert!(c.is_complete());
    }

    #[test]
    fn a_predecessor_message_counts_once_it_has_arrived() {
        // Pending: this process's 10 (delivery 1) and a predecessor's 9, whose
        // redelivery (delivery 2) is on its way when the probe is taken.
        let mut c = Cumulative::default();
        c.received(10, 1, 1, 10);
        c.probe(2, 2);
        assert_eq!(c.take_ack(1), None, "delivery 2 has not arrived");
        c.received(9, 2, 1, 9);
        assert_eq!(c.take_ack(1), Some((10, 10)), "2 of 2 pending are held");

        // The predecessor's 9 is pending and not redelivered yet: 1 held, 2 pending.
        let mut c = Cumulative::default();
        c.received(10, 1, 1, 10);
        c.probe(2, 1);
        assert_eq!(c.take_ack(1), None);
        assert!(c.wants_probe());
        // Redelivered after that probe: the next one counts it.
        c.received(9, 2, 1, 9);
        c.probe(2, 2);
        assert_eq!(c.take_ack(1), Some((10, 10)));
    }

    #[test]
    fn a_skipped_delivery_stops_acks_until_a_probe_agrees_again() {
        let mut c = Cumulative::default();
        c.probe(0, 0);
        c.received(1, 1, 1, 1);
        // Delivery 2 (stream sequence 2) was lost on the way.
        c.received(3, 3, 1, 3);
        assert!(!c.is_complete());
        assert_eq!(c.take_ack(1), None);
        // Lost or not, the server counts it, so the counts differ.
        c.probe(3, 3);
        assert!(!c.is_complete());
        c.received(2, 4, 2, 2);
        c.probe(3, 4);
        assert!(c.is_complete());
        assert_eq!(c.take_ack(1), Some((1, 1)), "2 is not durable yet");
        assert_eq!(c.take_ack(2), Some((3, 3)));
    }

    #[test]
    fn a_delivery_lost_after_the_probe_cancels_it() {
        let mut c = Cumulative::default();
        c.received(1, 1, 1, 1);
        c.probe(2, 2);
        c.received(2, 2, 1, 2);
        // Delivery 3 never arrives; the probe's count (2 of 2) cannot know about it.
        c.lost_track();
        c.probe(2, 2);
        c.received(4, 4, 1, 4);
        assert_eq!(c.take_ack(1), None, "3 is pending and not held");
        assert!(c.wants_probe());
    }

    #[test]
    fn a_reopened_stream_and_redeliveries_of_held_messages() {
        let mut c = Cumulative::default();
        c.probe(0, 0);
        c.received(1, 1, 1, 1);
        c.lost_track();
        assert_eq!(c.take_ack(1), None);
        // ack_wait passed while held: the same message again, later batch.
        c.received(1, 2, 2, 1);
        assert_eq!(c.held(), 1);
        c.probe(1, 2);
        assert_eq!(c.take_ack(1), Some((1, 1)), "durable with its first batch");
    }

    #[test]
    fn held_messages_the_stream_dropped_stop_counting_once_below_the_ack_floor() {
        // A predecessor left 1..=3 pending; this process holds 4..=6 (deliveries 4..=6).
        let mut c = Cumulative::default();
        c.probe(3, 3);
        for seq in 4..=6 {
            c.received(seq, seq, 1, seq);
        }
        c.probe(6, 6);
        assert_eq!(c.take_ack(1), None, "1..=3 are pending and not ours");
        // The stream's limits drop 1..=5: the server forgets them as pending and its
        // ack floor moves to 5; this process still holds 4 and 5.
        assert_eq!(c.settled_through(5), 2);
        c.probe(1, 6);
        assert_eq!(c.take_ack(1), Some((6, 6)), "1 of 1 pending is held");
        assert_eq!(c.held(), 0);
        // Below the floor again later: nothing held there, nothing forgotten.
        c.received(7, 7, 2, 7);
        assert_eq!(c.settled_through(6), 0);
        assert_eq!(c.take_ack(2), Some((7, 7)));
    }

    #[test]
    fn nothing_received_and_messages_pending_is_incomplete() {
        let mut c: Cumulative<u64> = Cumulative::default();
        c.probe(2, 9);
        assert!(!c.is_complete());
        assert!(!c.wants_probe(), "waits for deliveries up to 9");
        c.received(5, 10, 1, 5);
        assert_eq!(c.take_ack(1), None);
    }
}
