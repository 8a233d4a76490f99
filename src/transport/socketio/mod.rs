//! Socket.IO at the edge: Engine.IO v4 sessions (HTTP long-polling and WebSocket, with
//! the upgrade between them) carrying Socket.IO v5 namespaces, each namespace socket a
//! fanfare connection (subjects, queue, app callbacks, addressable by id).
//!
//! One task per Engine.IO session ([`session`]) holds the Socket.IO state. A session
//! opened over WebSocket holds its socket in that task too (one task per connection,
//! events written as frames shared by every socket of a namespace). For the others the
//! transports are thin pumps between the client and the session's [`Engine`]: what the
//! client sends goes to the session's inbox, what the session sends waits in the
//! engine's outbox until a poll or the upgraded WebSocket takes it.
//!
//! Invariants: at most one GET and one POST of a session are under way (a second one
//! closes it, as the protocol says); after an upgrade HTTP requests for the session
//! are refused; the outbox is bounded by the session, which leaves events in the
//! client queues (and their slow-consumer policy) while it is full.

pub mod polling;
pub mod relay;
pub mod session;
pub mod ws;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::auth::Authorizer;
use crate::config::SocketIoConfig;
use crate::routing::subject::Template;
use crate::wire::engineio::{Kind, Packet};

/// Packets the outbox holds before the session stops moving events into it (they
/// then wait in the client queues, under their bound and slow-consumer policy). A
/// polling client takes the outbox once per poll, so this is what a burst between
/// two polls may hold on top of the queue.
pub const OUTBOX_HIGH: usize = 1024;

/// Client packets waiting for the session at most; past it the transport waits.
pub const INBOX_MAX: usize = 64;

/// Packets the outbox holds at most, whatever their kind (events stop at
/// [`OUTBOX_HIGH`]; answers, acks and errors may go past it up to here).
pub const OUTBOX_MAX: usize = 4 * OUTBOX_HIGH;

/// A compiled namespace.
pub struct Namespace {
    /// Subjects every socket of it subscribes to (templates over claims).
    pub subjects: Vec<Template>,
    /// Event name → subject template its emits publish to.
    pub emit: HashMap<String, Template>,
}

/// What every session of a Socket.IO route shares.
pub struct SioRoute {
    /// Timings and payload bound.
    pub config: SocketIoConfig,
    /// Namespaces by name.
    pub namespaces: HashMap<String, Namespace>,
    /// The route's authorizer (run at each namespace CONNECT).
    pub auth: Arc<Authorizer>,
    /// The route's `allow_publish` patterns (templates over claims).
    pub allow_publish: Vec<Template>,
    /// Live sessions by sid.
    pub registry: Registry,
}

impl SioRoute {
    /// The open packet's JSON for session `sid`.
    pub fn open_json(&self, sid: &str, upgrades: &[&str]) -> String {
        let c = &self.config;
        crate::wire::engineio::open_json(
            sid,
            upgrades,
            c.ping_interval.0.as_millis(),
            c.ping_timeout.0.as_millis(),
            c.max_payload,
        )
    }
}

/// Live Engine.IO sessions by sid.
#[derive(Default)]
pub struct Registry(Mutex<HashMap<String, Arc<Engine>>>);

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Engine>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The session `sid`.
    pub fn get(&self, sid: &str) -> Option<Arc<Engine>> {
        self.lock().get(sid).cloned()
    }

    fn insert(&self, e: Arc<Engine>) {
        self.lock().insert(e.sid.clone(), e);
    }

    fn remove(&self, sid: &str) {
        self.lock().remove(sid);
    }

    /// Sessions live now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What reaches a session from its transports.
pub enum Inbound {
    /// A client packet.
    Packet(Packet),
    /// Answered once every packet before it is handled.
    Handled(tokio::sync::oneshot::Sender<()>),
}

/// Which transport carries the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP long-polling.
    Polling,
    /// WebSocket (from the start, or after an upgrade).
    Websocket,
}

/// How a session ended, as far as a pending poll is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client closed it: a pending poll answers `6` (noop).
    ByClient,
    /// The server closed it: a pending poll answers `1` (close).
    ByServer,
    /// The client took nothing while its outbox filled to [`OUTBOX_MAX`] (a pending
    /// poll, if any, answers `1`).
    Overflow,
}

struct State {
    out: VecDeque<Packet>,
    mode: Mode,
    get_pending: bool,
    post_pending: bool,
    /// A WebSocket has probed: an upgrade is under way.
    upgrading: bool,
    /// A WebSocket for the upgrade is open (probed or not): a second one is refused.
    ws_attached: bool,
    /// When the pong of the last ping is due (past it the session is as good as
    /// closed, even before its task notices).
    pong_due: Option<tokio::time::Instant>,
    /// The client closed the session while no poll was pending: the poll it had on
    /// its way (the protocol's "pending" one) still gets its noop.
    noop_owed: bool,
    ended: Option<Ended>,
}

/// One Engine.IO session as its transports see it.
pub struct Engine {
    /// Its id.
    pub sid: String,
    /// What the transports handed in, for the session (a `VecDeque` costs nothing
    /// until used, where a channel's first block costs about 1.4 KiB per session).
    inbox: Mutex<VecDeque<Inbound>>,
    inbox_room: Notify,
    state: Mutex<State>,
    wake: Notify,
}

impl Engine {
    fn new(sid: String, mode: Mode) -> Arc<Engine> {
        Arc::new(Engine {
            sid,
            inbox: Mutex::default(),
            inbox_room: Notify::new(),
            state: Mutex::new(State {
                out: VecDeque::new(),
                mode,
                get_pending: false,
                post_pending: false,
                upgrading: false,
                ws_attached: false,
                pong_due: None,
                noop_owed: false,
                ended: None,
            }),
            wake: Notify::new(),
        })
    }

    fn inbox(&self) -> std::sync::MutexGuard<'_, VecDeque<Inbound>> {
        // Push and pop only: a poisoned lock is still consistent.
        self.inbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands `item` to the session, waiting while [`INBOX_MAX`] are queued; `false`
    /// when the session has ended.
    async fn push_inbox(&self, item: Inbound) -> bool {
        let mut item = Some(item);
        loop {
            let room = self.inbox_room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut q = self.inbox();
                // Checked under the inbox's lock: the session's end empties the inbox
                // after marking the end, so nothing pushed here can be left behind.
                if self.has_ended() {
                    return false;
                }
                if q.len() < INBOX_MAX {
                    q.extend(item.take());
                    drop(q);
                    self.wake.notify_waiters();
                    return true;
                }
            }
            room.await;
        }
    }

    /// Drops what was handed in and not handled (the session has ended): waiting
    /// POSTs learn it.
    fn close_inbox(&self) {
        self.inbox().clear();
        self.inbox_room.notify_waiters();
    }

    /// What the session's task waits for, in one future (a held session keeps its
    /// size): the next thing handed in; else `None` once the session has ended, the
    /// outbox has room again (`full`: it had none), or holds something (`direct`: the
    /// session writes it itself).
    async fn next(&self, full: bool, direct: bool) -> Option<Inbound> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = {
                let mut q = self.inbox();
                let next = q.pop_front();
                if q.is_empty() {
                    // An idle session keeps no buffer.
                    q.shrink_to_fit();
                }
                next
            };
            if let Some(x) = next {
                self.inbox_room.notify_waiters();
                return Some(x);
            }
            {
                let s = self.lock();
                if s.ended.is_some()
                    || (full && s.out.len() < OUTBOX_HIGH)
                    || (direct && !s.out.is_empty())
                {
                    return None;
                }
            }
            notified.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update is a few field writes: a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a packet for the client.
    /// Past [`OUTBOX_MAX`] packets the client is not taking what it is sent (a poller
    /// that never polls, a socket that never reads): the session is closed instead of
    /// holding more.
    pub fn send(&self, p: Packet) {
        let mut s = self.lock();
        if s.out.len() >= OUTBOX_MAX {
            if s.ended.is_none() {
                tracing::debug!(sid = %self.sid, "Engine.IO outbox full: closing the session");
                s.ended = Some(Ended::Overflow);
            }
        } else {
            s.out.push_back(p);
        }
        drop(s);
        self.wake.notify_waiters();
    }

    /// Packets waiting for the client.
    pub fn queued(&self) -> usize {
        self.lock().out.len()
    }

    /// Takes everything queued (and wakes a session waiting for room). The outbox's
    /// buffer goes with it: an idle session keeps none.
    pub fn take(&self) -> Vec<Packet> {
        let taken = Vec::from(std::mem::take(&mut self.lock().out));
        if !taken.is_empty() {
            self.wake.notify_waiters();
        }
        taken
    }

    /// Waits until `done` holds of the state (checked on every wake-up, with the
    /// wake-up armed before the check, so none is missed).
    async fn until(&self, done: impl Fn(&State) -> bool) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.lock()) {
                return;
            }
            notified.await;
        }
    }

    /// Closes the session from the server's side: the client is told (`1`).
    pub fn close(&self) {
        self.send(Packet::bare(Kind::Close));
        self.end(Ended::ByServer);
    }

    /// Hands a client packet to the session; `false` when it has ended.
    pub async fn deliver(&self, p: Packet) -> bool {
        self.push_inbox(Inbound::Packet(p)).await
    }

    /// Waits until the session has handled every packet delivered before (a POST is
    /// answered `ok` once its packets are, so a poll that follows sees their answers).
    pub async fn handled(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.push_inbox(Inbound::Handled(tx)).await {
            let _ = rx.await;
        }
    }

    /// Ends the session (idempotent: the first reason stays).
    pub fn end(&self, how: Ended) {
        let mut s = self.lock();
        if s.ended.is_none() {
            s.ended = Some(how);
            s.noop_owed = how == Ended::ByClient && !s.get_pending && s.mode == Mode::Polling;
        }
        drop(s);
        self.wake.notify_waiters();
        self.inbox_room.notify_waiters();
    }

    /// How it ended, if it has (a pong overdue counts as the server's close).
    pub fn ended(&self) -> Option<Ended> {
        let s = self.lock();
        match (s.ended, s.pong_due) {
            (None, Some(due)) if tokio::time::Instant::now() >= due => Some(Ended::ByServer),
            (e, _) => e,
        }
    }

    /// Whether a noop is owed (without taking it).
    fn noop_owed(&self) -> bool {
        self.lock().noop_owed
    }

    /// Takes the noop owed to a poll that raced the client's own close.
    fn take_noop_owed(&self) -> bool {
        std::mem::take(&mut self.lock().noop_owed)
    }

    /// Whether the session's end has been recorded (an overdue pong aside).
    fn has_ended(&self) -> bool {
        self.lock().ended.is_some()
    }

    /// Notes when the pong of the ping just sent is due (`None`: it came).
    fn set_pong_due(&self, due: Option<tokio::time::Instant>) {
        self.lock().pong_due = due;
    }

    /// Waits until the session has ended for an overflowing outbox.
    pub async fn overflowed(&self) {
        self.until(|s| s.ended == Some(Ended::Overflow)).await;
    }

    /// The transport in use.
    pub fn mode(&self) -> Mode {
        self.lock().mode
    }

    fn set_mode(&self, mode: Mode) {
        let mut s = self.lock();
        s.mode = mode;
        s.upgrading = false;
        drop(s);
        self.wake.notify_waiters();
    }

    /// Claims the upgrade for a probing WebSocket; `false` when another one has it (or
    /// the session is not on polling any more).
    fn begin_upgrade(&self) -> bool {
        let mut s = self.lock();
        if s.upgrading || s.mode != Mode::Polling {
            return false;
        }
        s.upgrading = true;
        true
    }

    /// The probing WebSocket went away before finishing the upgrade.
    fn abandon_upgrade(&self) {
        let mut s = self.lock();
        s.upgrading = false;
        s.ws_attached = false;
        drop(s);
        self.wake.notify_waiters();
    }

    /// Claims the session for an upgrade's WebSocket; `false` when one is already
    /// open for it, or the session is not on polling any more.
    fn attach_ws(&self) -> bool {
        let mut s = self.lock();
        if s.ws_attached || s.mode != Mode::Polling {
            return false;
        }
        s.ws_attached = true;
        true
    }

    /// Whether an upgrade is under way, or a WebSocket for one is open.
    fn upgrading(&self) -> bool {
        let s = self.lock();
        s.upgrading || s.ws_attached
    }

    /// Waits until there is something to send, the session ended, or the mode changed
    /// away from `mode`.
    pub async fn wait(&self, mode: Mode) {
        self.until(|s| !s.out.is_empty() || s.ended.is_some() || s.mode != mode)
            .await;
    }

    /// Marks a GET (`get`) or POST under way; `false` if one already is (the
    /// protocol then closes the session).
    fn begin(&self, get: bool) -> bool {
        let mut s = self.lock();
        let slot = if get {
            &mut s.get_pending
        } else {
            &mut s.post_pending
        };
        if *slot {
            return false;
        }
        *slot = true;
        true
    }

    fn finish(&self, get: bool) {
        let mut s = self.lock();
        if get {
            s.get_pending = false;
        } else {
            s.post_pending = false;
        }
    }
}
