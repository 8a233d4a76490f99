//! When the fan-out may write to sockets itself, and when it must queue so clients'
//! writers batch: the hub keeps up, or it falls behind.
//!
//! Writing a lone message straight to every socket ([`super::gate`]) costs one send
//! per client and never batches. That is the cheapest way while the hub keeps up. When
//! it does not (messages one at a time but more of them than one core can send one by
//! one: 20 a second to 10,000 clients), a backlog grows where the hub cannot see it
//! (in the broker's socket, or in clients' queues whose writers wait for the CPU)
//! unless it queues: a client's writer then finds several messages and sends them
//! with one write. So after a fan-out of direct writes that ended with a message
//! already waiting, or that had to queue for many of its clients, the hub queues until
//! it has waited for a message at least as long as that fan-out took.

use std::time::Duration;

/// Past this share of clients the fan-out had to queue for, their writers are
/// behind: the next messages are queued for every client, so they batch.
const HELD_BACK: f64 = 0.25;

/// The topic task's pace: one per topic.
#[derive(Debug, Default)]
pub struct Pace {
    /// The last fan-out of direct writes ended with a message waiting, or had to
    /// queue for more than [`HELD_BACK`] of its clients.
    behind: bool,
    /// How long that fan-out took, or would have taken to every client.
    took: Duration,
}

impl Pace {
    /// Whether the next fan-out may write directly, after the topic task waited
    /// `idle` for its message (zero when one was already waiting).
    pub fn direct(&mut self, idle: Duration) -> bool {
        if self.behind && idle >= self.took {
            self.behind = false;
        }
        !self.behind
    }

    /// A fan-out that may have written directly took `took` (to every client: when
    /// the next message cut it short, what the whole would have taken); `waiting`:
    /// another message was already waiting when it ended; `held_back`: the share of
    /// clients it had to queue for instead (their writers are behind).
    pub fn wrote(&mut self, took: Duration, waiting: bool, held_back: f64) {
        self.took = took;
        self.behind = waiting || held_back > HELD_BACK;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn one_message_at_a_time_keeps_writing_directly() {
        let mut p = Pace::default();
        for _ in 0..10 {
            // Lockstep: the next message comes a little after the last fan-out.
            assert!(p.direct(2 * MS));
            p.wrote(50 * MS, false, 0.0);
        }
    }

    #[test]
    fn a_backlog_queues_until_the_hub_waited_as_long_as_a_fan_out_took() {
        let mut p = Pace::default();
        assert!(p.direct(100 * MS));
        p.wrote(50 * MS, true, 0.0);
        assert!(!p.direct(Duration::ZERO), "the waiting message is queued");
        // Messages every 49 ms against 50 ms fan-outs: still behind.
        assert!(!p.direct(49 * MS));
        assert!(!p.direct(49 * MS));
        // The rate drops: the hub waited longer than a fan-out takes.
        assert!(p.direct(60 * MS));
        p.wrote(50 * MS, false, 0.0);
        assert!(p.direct(Duration::ZERO));
    }

    #[test]
    fn clients_whose_writers_are_behind_make_the_hub_queue() {
        let mut p = Pace::default();
        assert!(p.direct(100 * MS));
        p.wrote(40 * MS, false, 0.1);
        assert!(p.direct(10 * MS), "a few held back: still direct");
        p.wrote(40 * MS, false, 0.5);
        assert!(!p.direct(10 * MS), "half held back: queue");
        assert!(p.direct(45 * MS));
    }
}
