//! One client's bounded queue.
//!
//! Invariants:
//! - the hub only ever calls [`ClientQueue::push`], which never waits: it takes a short
//!   lock, appends, enforces the bound, and wakes the writer;
//! - the queue never holds more than `max_messages` events nor (past the first event)
//!   more than `max_bytes` of them;
//! - past the bound, `drop_oldest` drops from the front and remembers the gap (the writer
//!   then sends a reset before what follows), and `disconnect` closes the queue for good.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use super::event::Event;
use super::gate::{self, FrameKind, Gate, Target, Wrote};

#[derive(Default)]
struct State {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    /// Events dropped since the writer last drained.
    dropped: u64,
    /// A reset to send before what follows (a resume that could not replay).
    reset: Option<&'static str>,
    /// After a resume: per subject, the last replayed sequence; live events at or below
    /// it are duplicates of the replay and are not queued. Boxed on purpose: most
    /// queues never resume, and an empty `Option<Box<_>>` costs 8 bytes, a map 48.
    #[allow(clippy::box_collection)]
    floor: Option<Box<std::collections::HashMap<String, u64>>>,
    closed: Option<Closed>,
    /// Live events are queued but not handed out until a resume is spliced in (a
    /// client that joins after its session started writing).
    held: bool,
    /// Events handed to the writer so far (the disconnect callback's `delivered`).
    taken: u64,
    /// The rest of a frame the hub only partly wrote, for the writer to send first.
    rest: Option<Box<Bytes>>,
}

/// A queue's bound: past either, the [`Policy`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// Events queued at most.
    pub messages: usize,
    /// Bytes of queued events at most (past the first event), by [`Event::cost`].
    pub bytes: usize,
}

/// What happens to a client whose queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Drop the oldest events; the writer sends a reset before what follows.
    DropOldest,
    /// Close the queue for good; the client reconnects and resumes from its cursor.
    Disconnect,
}

/// Why a queue was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The client fell behind under the `disconnect` policy.
    SlowConsumer,
    /// The app closed the connection (`Fanfare-Control: close`), with its reason. What
    /// was queued before is still written.
    ByApp(Arc<str>),
}

/// What one push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Queued after dropping this many older events (`drop_oldest`).
    DroppedOldest(u64),
    /// The queue overflowed and is now closed (`disconnect`).
    Disconnected,
    /// The queue was already closed; the event was not queued.
    AlreadyClosed,
    /// Written to the client's socket by the hub itself ([`ClientQueue::push_or_write`]),
    /// as this kind of frame.
    Written(FrameKind),
}

/// What the writer takes from the queue at once.
pub struct Batch {
    /// Events in order.
    pub events: VecDeque<Arc<Event>>,
    /// Events dropped before these (a gap the client must be told about).
    pub dropped: u64,
    /// A resume that could not replay: send a reset with this reason first.
    pub reset: Option<&'static str>,
    /// Set when the queue is closed: end the connection after writing `events`.
    pub closed: Option<Closed>,
}

/// An event for [`ClientQueue::push_inner`]: one to queue, or one the hub may write
/// itself (cloned only if it is queued after all).
enum Offer<'a> {
    Queue(Arc<Event>),
    Write(&'a Arc<Event>),
}

/// Asks the CPU to bring `queue` into its cache ahead of use: the fan-out touches
/// each client's queue once per message, and at 10,000 clients that first touch (the
/// lock's cache line, after the kernel's send to the client before) was a tenth of a
/// lone message's fan-out. A hint only: it changes no state a program can observe.
#[inline]
pub(super) fn prefetch(queue: &Arc<ClientQueue>) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let p = Arc::as_ptr(queue).cast::<i8>();
        #[allow(unsafe_code)] // one block, its soundness argued where it stands
        // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has (the target's
        // baseline), and it is a hint: it never faults, whatever the address, and
        // reads nothing into the program. `p` points into a live allocation
        // (`queue` is borrowed), and `wrapping_add` keeps the pointer arithmetic
        // defined for the lines after it within the same `ClientQueue`.
        unsafe {
            for line in 0..std::mem::size_of::<ClientQueue>().div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line * 64));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = queue;
}

/// A client's bounded queue, shared by the hub (producer) and the client's writer.
pub struct ClientQueue {
    state: Mutex<State>,
    /// Who may write to the client's socket when the hub can write to it itself.
    pub gate: Gate,
    ready: Notify,
    closed: Notify,
    max_messages: usize,
    max_bytes: usize,
    policy: Policy,
    /// A WebSocket client's socket the hub may write to itself ([`super::gate`]),
    /// `-1` for none. Set once; with `kind`, it sits in what would be padding.
    fd: AtomicI32,
    /// Which frames that socket takes ([`FrameKind`] as a byte).
    kind: AtomicU8,
}

impl ClientQueue {
    /// An empty queue with the route's bound and policy.
    pub fn new(bound: Bound, policy: Policy) -> ClientQueue {
        ClientQueue {
            state: Mutex::default(),
            gate: Gate::default(),
            ready: Notify::new(),
            closed: Notify::new(),
            max_messages: bound.messages,
            max_bytes: bound.bytes,
            policy,
            fd: AtomicI32::new(-1),
            kind: AtomicU8::new(0),
        }
    }

    /// The queue's bound (a replay must fit it).
    pub fn bound(&self) -> Bound {
        Bound {
            messages: self.max_messages,
            bytes: self.max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every update is a few field writes), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lets the hub write to the client's socket `fd` itself, `kind` frames
    /// ([`ClientQueue::push_or_write`]). `fd` must stay open until [`ClientQueue::gate`]
    /// is closed, and every write of the client's own must pass the gate.
    pub fn attach(&self, fd: RawFd, kind: FrameKind) {
        // Under the lock, which the hub holds when it reads them.
        let _s = self.lock();
        self.kind.store(kind as u8, Ordering::Relaxed);
        self.fd.store(fd, Ordering::Relaxed);
    }

    /// The socket the hub may write to, if any (read under the queue's lock).
    fn target(&self) -> Option<Target> {
        let fd = self.fd.load(Ordering::Relaxed);
        (fd >= 0).then(|| Target {
            fd,
            kind: FrameKind::from_u8(self.kind.load(Ordering::Relaxed)),
        })
    }

    /// Appends `event` without waiting, applying the slow-consumer policy past the bound.
    pub fn push(&self, event: Arc<Event>) -> Pushed {
        self.push_inner(Offer::Queue(event))
    }

    /// Like [`ClientQueue::push`], but when nothing is queued and the client has a
    /// socket the hub may write to ([`ClientQueue::attach`]) that is free now, writes
    /// the event's frame there instead of queueing it (one non-blocking send). For a
    /// message that arrived on its own: in a burst, queueing lets the writer batch.
    pub fn push_or_write(&self, event: &Arc<Event>) -> Pushed {
        self.push_inner(Offer::Write(event))
    }

    /// The rest of a frame the hub only partly wrote (the writer sends it first).
    pub fn take_rest(&self) -> Option<Bytes> {
        self.lock().rest.take().map(|b| *b)
    }

    /// Puts back what the writer could not send yet of [`ClientQueue::take_rest`];
    /// `None`: all of it is written.
    pub fn put_rest(&self, rest: Option<Bytes>) {
        let done = rest.is_none();
        self.lock().rest = rest.map(Box::new);
        if done {
            self.gate.rest_done();
        }
    }

    fn push_inner(&self, offer: Offer<'_>) -> Pushed {
        let (event, write) = match &offer {
            Offer::Queue(e) => (e, false),
            Offer::Write(e) => (*e, true),
        };
        let cost = event.cost();
        let mut s = self.lock();
        if s.closed.is_some() {
            return Pushed::AlreadyClosed;
        }
        if let Some(floor) = &s.floor
            && floor.get(&event.subject).is_some_and(|f| event.seq <= *f)
        {
            return Pushed::Queued;
        }
        // Written directly only in order: nothing queued, held, dropped or reset, and
        // the queue's lock held, so the writer cannot take a batch meanwhile.
        let in_order = s.events.is_empty() && !s.held && s.dropped == 0 && s.reset.is_none();
        if write
            && in_order
            && let Some(to) = self.target()
        {
            match gate::write(&self.gate, to, event) {
                Wrote::All => {
                    s.taken += 1;
                    return Pushed::Written(to.kind);
                }
                Wrote::Part(rest) => {
                    s.rest = Some(Box::new(rest));
                    // The socket's writer sends the rest before anything else.
                    s.taken += 1;
                    drop(s);
                    self.ready.notify_one();
                    return Pushed::Written(to.kind);
                }
                Wrote::Nothing => {}
            }
        }
        let over = |s: &State| {
            s.events.len() >= self.max_messages
                || (!s.events.is_empty() && s.bytes + cost > self.max_bytes)
        };
        let mut dropped = 0;
        if over(&s) {
            match self.policy {
                Policy::Disconnect => {
                    s.events.clear();
                    s.bytes = 0;
                    s.closed = Some(Closed::SlowConsumer);
                    drop(s);
                    self.ready.notify_one();
                    self.closed.notify_waiters();
                    return Pushed::Disconnected;
                }
                Policy::DropOldest => {
                    while over(&s) {
                        let Some(old) = s.events.pop_front() else {
                            break;
                        };
                        s.bytes -= old.cost();
                        dropped += 1;
                    }
                    s.dropped += dropped;
                }
            }
        }
        s.bytes += cost;
        s.events.push_back(match offer {
            Offer::Queue(e) => e,
            Offer::Write(e) => e.clone(),
        });
        drop(s);
        self.ready.notify_one();
        if dropped > 0 {
            Pushed::DroppedOldest(dropped)
        } else {
            Pushed::Queued
        }
    }

    /// Waits until there is something to take (events or a close).
    pub async fn ready(&self) {
        loop {
            {
                let s = self.lock();
                // Held events are not ready: `take` would hand out nothing, and a
                // writer woken for nothing loops without yielding. The splice wakes it.
                let waiting = self.gate.has_rest()
                    || !s.held && (!s.events.is_empty() || s.dropped > 0 || s.reset.is_some());
                if waiting || s.closed.is_some() {
                    return;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Waits until the queue is closed for a slow consumer (a write under way is then
    /// abandoned; a close by the app lets it finish).
    pub async fn closed(&self) {
        loop {
            let notified = self.closed.notified();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Takes everything queued.
    ///
    /// With a socket the hub may write to, a batch with anything to write makes the
    /// socket the writer's (the hub queues) until it releases the gate.
    pub fn take(&self) -> Batch {
        let mut s = self.lock();
        let batch = if s.held {
            Batch {
                events: VecDeque::new(),
                dropped: 0,
                reset: None,
                closed: s.closed.clone(),
            }
        } else {
            s.bytes = 0;
            s.taken += s.events.len() as u64;
            Batch {
                events: std::mem::take(&mut s.events),
                dropped: std::mem::take(&mut s.dropped),
                reset: s.reset.take(),
                closed: s.closed.clone(),
            }
        };
        if self.target().is_some()
            && (!batch.events.is_empty() || batch.dropped > 0 || batch.reset.is_some())
        {
            self.gate.own();
        }
        batch
    }

    /// Closes the queue for the app: what is queued is still handed out, then the
    /// batch says [`Closed::ByApp`]. A queue already closed stays as it was.
    pub fn close_by_app(&self, reason: &str) {
        let mut s = self.lock();
        if s.closed.is_none() {
            s.closed = Some(Closed::ByApp(reason.into()));
        }
        drop(s);
        self.ready.notify_one();
    }

    /// Events handed to the writer so far.
    pub fn delivered(&self) -> u64 {
        self.lock().taken
    }

    /// Puts a resume's outcome in front of the live events queued since the join:
    /// `replay` first, then the queued events newer than the replay's last one (older
    /// ones are duplicates of the replay and go). A `reset` is sent before everything.
    /// The replay is bounded by the route's `max_replay`, not by the queue bound.
    pub fn splice(&self, replay: Vec<Arc<Event>>, reset: Option<&'static str>) {
        let mut s = self.lock();
        s.held = false;
        if !replay.is_empty() {
            let floor = s.floor.get_or_insert_with(Default::default);
            for e in &replay {
                let f = floor.entry(e.subject.clone()).or_insert(0);
                *f = (*f).max(e.seq);
            }
            let floor = floor.clone();
            let live: VecDeque<Arc<Event>> = std::mem::take(&mut s.events)
                .into_iter()
                .filter(|e| floor.get(&e.subject).is_none_or(|f| e.seq > *f))
                .collect();
            s.events = replay.into_iter().chain(live).collect();
            s.bytes = s.events.iter().map(|e| e.cost()).sum();
        }
        if reset.is_some() {
            s.reset = reset;
        }
        let wake = !s.events.is_empty() || s.dropped > 0 || s.reset.is_some();
        drop(s);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Puts `events` in front of everything queued (the app's first events, before a
    /// replay and live events).
    pub fn prepend(&self, events: Vec<Arc<Event>>) {
        if events.is_empty() {
            return;
        }
        let mut s = self.lock();
        s.bytes += events.iter().map(|e| e.cost()).sum::<usize>();
        for e in events.into_iter().rev() {
            s.events.push_front(e);
        }
        drop(s);
        self.ready.notify_one();
    }

    /// Holds live events back (queued, bounded as usual) until the next
    /// [`ClientQueue::splice`], so that a resume done after the writer started still
    /// comes first and nothing is written twice.
    pub fn hold(&self) {
        self.lock().held = true;
    }

    /// Whether a reset is waiting to be sent.
    pub fn has_reset(&self) -> bool {
        self.lock().reset.is_some()
    }

    /// Whether the queue has been closed for a slow consumer.
    pub fn is_closed(&self) -> bool {
        self.lock().closed == Some(Closed::SlowConsumer)
    }

    /// Events and bytes queued now.
    pub fn len(&self) -> (usize, usize) {
        let s = self.lock();
        (s.events.len(), s.bytes)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len().0 == 0
    }
}

#[cfg(test)]
mod tests;
