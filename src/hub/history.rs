//! Resume bookkeeping: cursors, a memory topic's ring, and what a ring can replay.
//! Pure functions over the ring; the hub calls them under the topic's lock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::event::Event;
use super::queue::Bound;

/// A memory topic's recent events.
pub(super) struct Ring {
    pub(super) events: VecDeque<Arc<Event>>,
    /// The process sequence when the topic started recording: nothing before is known.
    pub(super) since: u64,
    /// The highest sequence dropped from the ring.
    pub(super) evicted: u64,
}

/// A parsed resume cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// A memory cursor of this process.
    Memory(u64),
    /// A JetStream stream sequence.
    Stream(u64),
    /// From another process (restart) or not understood: the client must refetch.
    Foreign,
}

/// Parses a client's cursor. `epoch` is this process's; `stream` says whether the topic
/// follows a JetStream stream (its cursors are stream sequences).
pub(super) fn parse_cursor(epoch: &str, stream: bool, text: &str) -> Cursor {
    let text = text.trim();
    if stream {
        return text.parse().map_or(Cursor::Foreign, Cursor::Stream);
    }
    match text.split_once('-') {
        Some((e, seq)) if e == epoch => seq.parse().map_or(Cursor::Foreign, Cursor::Memory),
        _ => Cursor::Foreign,
    }
}

/// The outcome of a resume.
pub enum Replayed {
    /// Events to deliver before the live ones (possibly none).
    Events(Vec<Arc<Event>>),
    /// The client missed too much (or the cursor is unknown): it gets a reset.
    Reset(&'static str),
}

pub(super) fn expire(ring: &mut Ring, max_age: Duration) {
    while let Some(front) = ring.events.front() {
        if front.received.elapsed() <= max_age {
            break;
        }
        ring.evicted = ring.evicted.max(front.seq);
        ring.events.pop_front();
    }
}

/// What `ring` can replay after sequence `after`: events of at most `max_age`, within
/// `budget` (count and bytes), or a reset.
pub(super) fn replay_ring(
    ring: &mut Ring,
    after: u64,
    max_age: Duration,
    budget: Bound,
) -> Replayed {
    expire(ring, max_age);
    if after < ring.since || after < ring.evicted {
        return Replayed::Reset("cursor_too_old");
    }
    let events: Vec<Arc<Event>> = ring
        .events
        .iter()
        .filter(|e| e.seq > after)
        .cloned()
        .collect();
    if events.len() > budget.messages {
        return Replayed::Reset("too_many_to_replay");
    }
    if events.iter().map(|e| e.cost()).sum::<usize>() > budget.bytes {
        return Replayed::Reset("too_much_to_replay");
    }
    Replayed::Events(events)
}

pub(super) fn to_base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Message;

    #[test]
    fn base36() {
        assert_eq!(to_base36(0), "0");
        assert_eq!(to_base36(35), "z");
        assert_eq!(to_base36(36), "10");
    }

    #[test]
    fn cursors() {
        assert_eq!(parse_cursor("ep", false, "ep-7"), Cursor::Memory(7));
        assert_eq!(parse_cursor("ep", false, "other-7"), Cursor::Foreign);
        assert_eq!(parse_cursor("ep", false, "ep-x"), Cursor::Foreign);
        assert_eq!(parse_cursor("ep", true, " 42 "), Cursor::Stream(42));
        assert_eq!(parse_cursor("ep", true, "ep-42"), Cursor::Foreign);
    }

    #[test]
    fn ring_replays_after_the_cursor_or_resets() {
        let mut ring = Ring {
            events: (1..=5)
                .map(|s| Arc::new(Event::new(Message::new("s", "x"), s, format!("ep-{s}"))))
                .collect(),
            since: 0,
            evicted: 0,
        };
        let hour = Duration::from_secs(3600);
        let budget = |messages, bytes| Bound { messages, bytes };
        match replay_ring(&mut ring, 3, hour, budget(10, 1 << 20)) {
            Replayed::Events(e) => assert_eq!(e.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]),
            Replayed::Reset(r) => panic!("reset {r}"),
        }
        assert!(matches!(
            replay_ring(&mut ring, 0, hour, budget(2, 1 << 20)),
            Replayed::Reset("too_many_to_replay")
        ));
        // Five events of 1 + 64 bytes each: 325 bytes do not fit 300.
        assert!(matches!(
            replay_ring(&mut ring, 0, hour, budget(10, 300)),
            Replayed::Reset("too_much_to_replay")
        ));
        ring.evicted = 2;
        assert!(matches!(
            replay_ring(&mut ring, 1, hour, budget(10, 1 << 20)),
            Replayed::Reset("cursor_too_old")
        ));
    }
}
